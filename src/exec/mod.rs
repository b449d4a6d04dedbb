//! The generic runner: takes any [`Operation`], splits its units among the ranks, and drives
//! compute → write rounds with progress, a journal for `--resume`, and timings for the run
//! report. Nothing here knows which operation it runs.
//!
//! Each rank gets a contiguous run of every stage's units and works through them on its own,
//! computing one while writing the one before, journaling each once written, and hearing of
//! the other ranks' progress and failures through non-blocking sums (`driver`; parallel HDF5,
//! whose writes are collective, runs in lockstep rounds instead). So one rank's error stops
//! every rank cleanly, and a killed run restarts where its journal ends.

mod driver;
mod spares;
pub use spares::Spares;
pub mod disk;
pub mod journal;
pub mod memory;
pub mod progress;
pub mod report;
pub mod threads;

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::comm::{agree, Comm};
use crate::error::{Error, Result};
use crate::grid::partition_contiguous;
use crate::io::lock::OutputLock;
use crate::io::safety::{self, Place, Written};
use crate::io::staging::Staging;
use crate::io::Address;

pub use report::{PhaseTimes, RunSummary};

/// Default largest size of one work unit: big enough to keep every core of a rank busy, small
/// enough that several ranks per node fit in memory.
pub const DEFAULT_UNIT_BYTES: u64 = 64 << 20;

/// A run is cut into at least this many units when its data allows units of at least
/// [`MIN_UNIT_BYTES`], so that every rank gets several (4 each up to 64 ranks) and a rank that
/// draws a slow unit does not hold the others up for long.
pub const MIN_UNITS: u64 = 256;

/// Units are not cut smaller than this for [`MIN_UNITS`]: below it, per-unit costs (a thread
/// hand-off, a journal line, file creates) start to show.
pub const MIN_UNIT_BYTES: u64 = 1 << 20;

/// Target bytes per work unit for a run over `total_bytes`: a [`MIN_UNITS`]-th of the data,
/// at least [`MIN_UNIT_BYTES`], at most `TESSERA_UNIT_BYTES` (a tuning knob; tests set it small
/// to get many units from small data), else [`DEFAULT_UNIT_BYTES`].
///
/// It does not depend on the rank count, on purpose: unit ids are what the journal records,
/// so a killed run may resume on another rank count only if the units stay the same.
pub fn target_unit_bytes(total_bytes: u64) -> u64 {
    let cap = std::env::var("TESSERA_UNIT_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&b| b > 0)
        .unwrap_or(DEFAULT_UNIT_BYTES);
    (total_bytes / MIN_UNITS).max(MIN_UNIT_BYTES).min(cap)
}

/// Runs of whole blocks (`block` items each) over `extent` items of `item_bytes` each, about
/// [`target_unit_bytes`] per run: the units of a run that writes its output block by block.
pub fn unit_runs(extent: u64, block: u64, item_bytes: u64) -> Vec<std::ops::Range<u64>> {
    let target = target_unit_bytes(extent * item_bytes);
    let blocks = crate::grid::blocks_for_target(block * item_bytes, target);
    crate::grid::block_aligned_runs(extent, block, blocks)
}

/// Fault injection for the resume tests: with `TESSERA_ABORT_AFTER_UNITS=N`, a rank aborts
/// (no cleanup, like `kill -9`) right after recording its N-th finished unit.
fn abort_after_units() -> Option<u64> {
    std::env::var("TESSERA_ABORT_AFTER_UNITS")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// Fault injection for the failure tests: with `TESSERA_FAIL_UNIT=N`, computing unit N fails
/// (on whichever rank computes it) with an ordinary error, as a corrupt input would.
fn fail_unit() -> Option<usize> {
    std::env::var("TESSERA_FAIL_UNIT")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// Fault injection for the `kill -9` tests: with `TESSERA_STALL_AFTER_UNITS=R:N` and
/// `TESSERA_STALL_PID_FILE=F`, rank R, right after recording its N-th finished unit, writes its
/// PID to F and stops making progress (the other ranks wait for it in the next collective), so a
/// test can `kill -9` that one rank from outside at a known point of the run.
fn stall_after_units(rank: usize) -> Option<u64> {
    let spec = std::env::var("TESSERA_STALL_AFTER_UNITS").ok()?;
    let (r, n) = spec.split_once(':')?;
    (r.trim().parse::<usize>().ok()? == rank)
        .then(|| n.trim().parse().ok())
        .flatten()
}

fn stall_forever(rank: usize, units: u64) -> ! {
    eprintln!("TESSERA_STALL_AFTER_UNITS: rank {rank} stalls after {units} units");
    if let Ok(path) = std::env::var("TESSERA_STALL_PID_FILE") {
        let tmp = format!("{path}.tmp");
        if std::fs::write(&tmp, std::process::id().to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Fault injection for the concurrency tests: with `TESSERA_PAUSE_BEFORE_PUBLISH=F`, rank 0
/// writes `F.paused` once every unit is written, then waits (up to two minutes) until `F`
/// exists before it looks at the inputs again and publishes, so that a test can change an
/// input at a known moment.
fn pause_before_publishing() {
    let Ok(go) = std::env::var("TESSERA_PAUSE_BEFORE_PUBLISH") else {
        return;
    };
    // A test's marker at a path the test chose (never a user's output), so a plain write.
    let _ = std::fs::write(format!("{go}.paused"), b"");
    let started = Instant::now();
    while !std::path::Path::new(&go).exists() && started.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Options every command that writes an output takes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct RunOptions {
    /// Replace an existing output (it is removed only once the new one is complete).
    #[arg(long)]
    pub overwrite: bool,
    /// Finish an interrupted run of the same command, redoing only unfinished units.
    #[arg(long)]
    pub resume: bool,
    /// Print the plan (units per rank, bytes, memory) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Where to write the run report (JSON); default: beside the output, `<output>.report.json`
    /// (an array inside a store or HDF5 file adds its path: `s.zarr.g.a.report.json`).
    #[arg(long)]
    pub report: Option<std::path::PathBuf>,
}

/// One unit of work, as the planner sees it before any byte moves.
#[derive(Clone, Debug, Serialize)]
pub struct UnitInfo {
    /// Short human description (`slices 0..32`).
    pub label: String,
    /// Bytes read from the inputs (uncompressed).
    pub bytes_in: u64,
    /// Bytes written to the output (uncompressed).
    pub bytes_out: u64,
}

/// Writes the [`Operation`] methods that only hand back the plan's field of the same name
/// (`targets`, `units`, `memory_per_unit`, `parameters`, `fingerprint`), for the plans that
/// keep them as fields, and `name` when given first: `plan_fields!("crop"; targets, units);`
/// inside the impl. `spec` writes `planned_outputs` for a plan whose one output is the array
/// `self.spec` at `targets[0]`.
macro_rules! plan_fields {
    ($name:literal; $($field:ident),+ $(,)?) => {
        fn name(&self) -> &'static str {
            $name
        }
        $crate::exec::plan_fields!($($field),+);
    };
    (@ spec) => {
        fn planned_outputs(&self) -> Vec<$crate::exec::disk::PlannedOutput> {
            vec![$crate::exec::disk::PlannedOutput::array(&self.targets[0], &self.spec)]
        }
    };
    (@ targets) => {
        fn targets(&self) -> &[$crate::io::Address] {
            &self.targets
        }
    };
    (@ units) => {
        fn units(&self) -> &[$crate::exec::UnitInfo] {
            &self.units
        }
    };
    (@ memory_per_unit) => {
        fn memory_per_unit(&self) -> u64 {
            self.memory_per_unit
        }
    };
    (@ parameters) => {
        fn parameters(&self) -> serde_json::Value {
            self.parameters.clone()
        }
    };
    (@ fingerprint) => {
        fn fingerprint(&self) -> serde_json::Value {
            self.fingerprint.clone()
        }
    };
    ($($field:ident),+ $(,)?) => {
        $($crate::exec::plan_fields!(@ $field);)+
    };
}
pub(crate) use plan_fields;

/// What an operation tells the runner. Implemented once per operation, in `ops/<name>`.
pub trait Operation: Sync {
    /// The result of computing one unit, handed to `write`.
    type Output: Send;

    fn name(&self) -> &'static str;
    /// The output arrays this run publishes, the primary one first (its name is the run's name
    /// in reports, and its journal is the run's journal).
    fn targets(&self) -> &[Address];
    /// All units, in a fixed order (unit ids are indices into this list).
    fn units(&self) -> &[UnitInfo];
    /// Peak memory per unit in flight, bytes (two units are in flight per rank: one being
    /// computed while the previous one is written). Default: the largest unit's input and
    /// output together.
    fn memory_per_unit(&self) -> u64 {
        self.units()
            .iter()
            .map(|u| u.bytes_in + u.bytes_out)
            .max()
            .unwrap_or(0)
    }
    /// Every output this run writes, as the plan sees it (arrays from their specs, files by
    /// their bytes): the runner checks them against the free space of their file systems
    /// before anything is created, `--dry-run` too ([`disk::check_run`]).
    fn planned_outputs(&self) -> Vec<disk::PlannedOutput>;
    /// True when the plan already checked its outputs against the free disk space (with
    /// [`disk::check_planned`], before making a long list of units): the runner checks again,
    /// without repeating the warning about compressed outputs.
    fn checked_disk(&self) -> bool {
        false
    }
    /// The job's parameters, as its serde type serialises them (every field but the run
    /// options): the run's identity for `--resume`, which refuses a run whose parameters
    /// differ from the interrupted one's and names each field that changed. Derived from the
    /// job type, so a new field is covered without being listed anywhere.
    fn parameters(&self) -> serde_json::Value;
    /// What the plan derived from the inputs that must also match for `--resume` (shapes,
    /// unit count, the global crop radius): a resumed run whose inputs changed is refused.
    fn fingerprint(&self) -> serde_json::Value;
    /// Everything the run reads (arrays, image directories): no output may be, contain or
    /// lie inside one of them.
    fn inputs(&self) -> Vec<Place>;
    /// Files written beside the outputs (per-pattern `.npy`, plots, results JSON): refused if
    /// present unless `--overwrite`, checked with the outputs before the run starts, and
    /// written by the operation through [`crate::io::safety::write_file`]. Default: none.
    fn side_files(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }
    /// The device this rank runs the kernels on and its phases, for the report (operations
    /// with `--device`). Default: none.
    fn device(&self) -> Option<crate::gpu::DeviceReport> {
        None
    }
    /// Bytes this rank has read from the inputs so far, for operations that count what they
    /// really read (re-reads included); the report then uses it instead of the planned
    /// `bytes_in` of the units. Default: not counted.
    fn bytes_read(&self) -> Option<u64> {
        None
    }
    /// Where each stage's units end (ascending, the last = `units().len()`). Units of a stage
    /// may read what earlier stages wrote (a pyramid's coarse levels are built from a level
    /// written before): every rank finishes writing a stage before any computes the next.
    /// Default: one stage.
    fn stage_ends(&self) -> Vec<usize> {
        vec![self.units().len()]
    }
    /// Told, on every rank before any unit runs (collective), which units each rank runs in
    /// this run: `pending[rank][stage]`, a resumed run's finished units left out. An operation
    /// that can finish a unit only with another rank's help (stitch: the sums a band carries
    /// into the next, from the rank that computed the band before) arranges it here and
    /// reports such units through `held`. Default: nothing to arrange.
    ///
    /// # Errors
    /// A collective that failed.
    fn assign(&self, _comm: &dyn Comm, _pending: &[Vec<Vec<usize>>]) -> Result<()> {
        Ok(())
    }
    /// Whether unit `unit`'s `write` leaves part of it unwritten until `settle`: the runner
    /// journals it only when `settle` returns it. Default: never.
    fn held(&self, _unit: usize) -> bool {
        false
    }
    /// Called on every rank once each stage's units are written (collective; only when every
    /// rank succeeded): exchanges what ranks owe each other, writes the rest of the held units
    /// (every rank calls `write` once, with nothing when it holds nothing, so collective writes
    /// stay matched) and returns them, to be journaled. Default: nothing held.
    ///
    /// # Errors
    /// A missing message, or output failures.
    fn settle(&self, _comm: &dyn Comm, _stage: usize) -> Result<Vec<usize>> {
        Ok(Vec::new())
    }
    /// Creates (or with `resume` reopens) the outputs at their `staging` addresses (in the order
    /// of `targets`). Collective.
    ///
    /// # Errors
    /// Output creation failures.
    fn open_output(&self, staging: &[Address], comm: &dyn Comm, resume: bool) -> Result<()>;
    /// Reads and computes one unit. Runs on a helper thread of one rank (never MPI); may use
    /// rayon inside.
    ///
    /// # Errors
    /// Input or kernel failures, naming the file.
    fn compute(&self, unit: usize) -> Result<Self::Output>;
    /// How many of this rank's units may be written at once, each on a thread of its own
    /// (also asked by `--dry-run`, before any output exists). More than 1 only where writes
    /// of different units never touch the same bytes or wait on each other (every output
    /// takes concurrent writes, and units write whole write blocks, as they must for ranks
    /// anyway; [`lane_per_thread`]): a rank whose output is compressed a chunk per unit then
    /// compresses several at once instead of on one thread. The runner lowers it to what
    /// memory allows, and never uses it for collective writes. Default: 1 (one write at a
    /// time, on the main thread).
    fn write_lanes(&self) -> usize {
        1
    }
    /// Writes one unit's result, or takes part in a collective write with nothing; on the
    /// main thread (on a writer thread of its own when [`Operation::write_lanes`] is above 1).
    /// When it returns, the unit is journaled as finished: its bytes must be in the output
    /// (in the OS's hands; tessera does not fsync, see `io::zarr::ChunkFileStore`).
    ///
    /// # Errors
    /// Output failures.
    fn write(&self, part: Option<(usize, Self::Output)>) -> Result<()>;
    /// Final attributes and close. Collective.
    ///
    /// # Errors
    /// Output failures.
    fn finish(&self, comm: &dyn Comm) -> Result<()>;
}

/// [`Operation::write_lanes`] of an operation whose units write whole write blocks: one lane
/// per thread of the rank when every output in `targets` takes concurrent writes
/// ([`Address::takes_concurrent_writes`]), else 1.
pub fn lane_per_thread(targets: &[Address]) -> usize {
    if targets.iter().all(Address::takes_concurrent_writes) {
        rayon::current_num_threads()
    } else {
        1
    }
}

/// One job per output: [`OutputLock::acquire`] of `output` on rank 0, the outcome agreed by
/// every rank (collective); `None` on the other ranks. Held until dropped.
///
/// # Errors
/// Rank 0's failure to take the lock, on every rank.
pub fn lock_output(output: &std::path::Path, comm: &dyn Comm) -> Result<Option<OutputLock>> {
    let lock = if comm.is_root() {
        OutputLock::acquire(output).map(Some)
    } else {
        Ok(None)
    };
    agree(comm, lock)
}

/// Plans where each output is staged, refusing two outputs that would share a staging area
/// (two new arrays in one new container) and a resume that finds only some of its outputs.
fn plan_stagings(targets: &[Address], options: &RunOptions) -> Result<Vec<Staging>> {
    let stagings = targets
        .iter()
        .map(|t| Staging::plan(t, options.overwrite, options.resume))
        .collect::<Result<Vec<_>>>()?;
    for (i, a) in stagings.iter().enumerate() {
        for b in &stagings[..i] {
            if a.in_existing_file() && b.in_existing_file() {
                continue; // datasets staged side by side in one existing HDF5 file
            }
            if a.published_path().starts_with(b.published_path())
                || b.published_path().starts_with(a.published_path())
            {
                return Err(Error::parameter(
                    "output",
                    format!(
                        "{} and {} would be written into one new container; put them in different files or stores (or create the store first)",
                        b.target, a.target
                    ),
                ));
            }
        }
    }
    if stagings.iter().any(|s| s.resuming) && !stagings.iter().all(|s| s.resuming) {
        let missing: Vec<String> = stagings
            .iter()
            .filter(|s| !s.resuming)
            .map(|s| s.target.to_string())
            .collect();
        return Err(Error::parameter(
            "resume",
            format!("the interrupted run left only some of its outputs ({} missing); use --overwrite to start over", missing.join(", ")),
        ));
    }
    Ok(stagings)
}

/// Checks everything a run will write against everything it reads and against what is on
/// disk, before anything is created: no output on, inside or around an input or another
/// output ([`check_places`]); side files and the report refused if present unless
/// `--overwrite` ([`check_side_files`]).
///
/// # Errors
/// [`Error::Parameter`] or [`Error::OutputExists`] naming the path.
pub fn check_writes(
    inputs: &[Place],
    targets: &[Address],
    side_files: &[std::path::PathBuf],
    options: &RunOptions,
) -> Result<()> {
    check_places(inputs, targets, side_files, options)?;
    check_side_files(side_files, options, false)
}

/// The overlap half of [`check_writes`]: outputs, side files and the report against the inputs
/// and each other (paths only; nothing on disk is required to exist).
///
/// # Errors
/// [`Error::Parameter`] naming the two paths.
pub fn check_places(
    inputs: &[Place],
    targets: &[Address],
    side_files: &[std::path::PathBuf],
    options: &RunOptions,
) -> Result<()> {
    let mut writes: Vec<Written> = targets
        .iter()
        .map(|t| Written::new("output", Place::Array(t.clone())))
        .collect();
    writes.extend(
        side_files
            .iter()
            .map(|f| Written::new("output", Place::Path(f.clone()))),
    );
    writes.extend(
        options
            .report
            .iter()
            .map(|r| Written::new("report", Place::Path(r.clone()))),
    );
    safety::check_places(inputs, &writes)
}

/// The on-disk half of [`check_writes`]: side files and the report are refused if present,
/// unless `--overwrite`, or unless the run resumes an interrupted one (whose side files, such
/// as hdr's previews, it replaces, and whose output's report it writes).
///
/// # Errors
/// [`Error::OutputExists`] naming the path.
pub fn check_side_files(
    side_files: &[std::path::PathBuf],
    options: &RunOptions,
    resuming: bool,
) -> Result<()> {
    if resuming {
        return Ok(());
    }
    side_files
        .iter()
        .chain(&options.report)
        .try_for_each(|f| safety::check_side_file(f, options.overwrite))
}

/// Each stage's units split among the ranks on its own: `[rank][stage]` -> unit ids.
fn split_stages(stage_ends: &[usize], ranks: usize) -> Vec<Vec<Vec<usize>>> {
    let mut stage_of_rank: Vec<Vec<Vec<usize>>> = vec![Vec::new(); ranks];
    let mut begin = 0;
    for &end in stage_ends {
        for (rank, r) in partition_contiguous(end - begin, ranks)
            .into_iter()
            .enumerate()
        {
            stage_of_rank[rank].push(r.map(|u| u + begin).collect());
        }
        begin = end;
    }
    stage_of_rank
}

/// `[rank][stage]` -> the unit ids still to do (a resumed run's finished ones left out).
fn without_finished(
    stage_of_rank: &[Vec<Vec<usize>>],
    done: &std::collections::BTreeSet<usize>,
) -> Vec<Vec<Vec<usize>>> {
    stage_of_rank
        .iter()
        .map(|stages| {
            stages
                .iter()
                .map(|ids| ids.iter().copied().filter(|u| !done.contains(u)).collect())
                .collect()
        })
        .collect()
}

/// What rank 0 found on taking a run's output.
enum Found {
    /// A requeued job's output, already complete: nothing to do.
    Finished,
    /// Work to do; on rank 0, the inputs as they were before it (`io::watch`).
    ToRun(Option<crate::io::watch::InputWatch>),
}

/// Rank 0's look at the output once it holds the lock, agreed by every rank: a killed run's
/// publishing is put right (old or new output, nothing else), a requeued job's finished output
/// is recognised, and the inputs are recorded (one that another job writes is refused).
///
/// # Errors
/// Rank 0's failure, on every rank.
fn take_output<Op: Operation>(op: &Op, comm: &dyn Comm, options: &RunOptions) -> Result<Found> {
    let found = if comm.is_root() {
        crate::io::staging::recover_publish(op.targets())
            .and_then(|()| resumes_a_finished_run(op, options))
            .and_then(|finished| {
                if finished {
                    Ok(Found::Finished)
                } else {
                    watch_inputs(op, options).map(|w| Found::ToRun(Some(w)))
                }
            })
    } else {
        Ok(Found::ToRun(None))
    };
    let found = agree(comm, found)?;
    let mut finished = vec![u8::from(matches!(found, Found::Finished))];
    comm.broadcast(&mut finished, 0);
    if finished[0] == 1 {
        if comm.is_root() {
            tracing::info!(
                "{} is already complete, made by this job with these parameters: nothing to do",
                op.targets()[0]
            );
        }
        return Ok(Found::Finished);
    }
    Ok(found)
}

/// A run's identity for `--resume`: the job's parameters and what the plan derived from the
/// inputs. Recorded in the journal when a run starts and in the report's summary when it ends.
fn identity<Op: Operation>(op: &Op) -> serde_json::Value {
    serde_json::json!({
        "parameters": op.parameters(),
        "plan": op.fingerprint(),
    })
}

/// Whether every output of `op` is published and none is staged: a finished run's.
fn outputs_published(targets: &[Address]) -> Result<bool> {
    for t in targets {
        if !Staging::is_published(t)? || Staging::is_staged(t) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `--resume` of a run whose outputs are all published (a requeued job that had finished):
/// `Ok(true)` when the identity recorded for it (its journal, if a kill came between publishing
/// and removing it, else its run report) is this run's; refused, saying what differs or what
/// is missing, otherwise. `Ok(false)` when there is nothing published to recognise. Rank 0,
/// holding the lock.
fn resumes_a_finished_run<Op: Operation>(op: &Op, options: &RunOptions) -> Result<bool> {
    if !options.resume || options.overwrite || !outputs_published(op.targets())? {
        return Ok(false);
    }
    let target = &op.targets()[0];
    let journal_dir = Staging::journal_of(target);
    let recorded = journal::Journal::new(journal_dir.clone(), 0)
        .recorded_identity()
        .or_else(|| {
            let report = std::fs::read(options.report.as_ref()?).ok()?;
            let report: serde_json::Value = serde_json::from_slice(&report).ok()?;
            report["runs"]
                .as_array()?
                .iter()
                .find(|r| r["output"] == target.to_string())
                .map(|r| r["identity"].clone())
                .filter(|i| !i.is_null())
        });
    let finished = |why: String| Error::OutputExists {
        path: Staging::published_of(target),
        message: format!("is complete, but {why}; pass --overwrite to make it again"),
    };
    let Some(recorded) = recorded else {
        let report = options
            .report
            .as_ref()
            .map_or("no report".into(), |r| r.display().to_string());
        return Err(finished(format!(
            "--resume cannot tell what made it (its report {report} is missing or records no identity)"
        )));
    };
    match journal::changes(&recorded, &identity(op)) {
        None => {
            crate::io::staging::remove_any(&journal_dir)?;
            Ok(true)
        }
        Some(journal::Change::Unrecorded) => Err(finished(
            "it was made by an older tessera that did not record its parameters".into(),
        )),
        Some(journal::Change::Parameters(list)) => Err(finished(format!(
            "it was made with other parameters: {list}"
        ))),
        Some(journal::Change::Inputs(what)) => Err(finished(format!(
            "its inputs changed since it was made ({what})"
        ))),
    }
}

/// Rank 0's last look before the run changes the disk: a resumed run's identity is checked
/// first (the most useful refusal), then the side files and report; then stale staging goes
/// and a fresh journal records the run's identity.
fn start_journal<Op: Operation>(
    op: &Op,
    journal: &journal::Journal,
    stagings: &[Staging],
    side_files: &[std::path::PathBuf],
    options: &RunOptions,
) -> Result<()> {
    let identity = identity(op);
    let resuming = stagings[0].resuming;
    if resuming {
        journal.start(&identity, true)?;
    }
    check_side_files(side_files, options, resuming)?;
    for s in stagings {
        s.clear_stale()?;
    }
    if !resuming {
        journal.start(&identity, false)?;
    }
    Ok(())
}

/// Runs an operation to completion on this rank (every rank calls it).
///
/// # Errors
/// Any rank's failure; the staged output is left in place for `--resume`.
pub fn run<Op: Operation>(op: &Op, comm: &dyn Comm, options: &RunOptions) -> Result<RunSummary> {
    let started = Instant::now();
    let phases = PhaseTimes::default();
    let stage_of_rank = split_stages(&op.stage_ends(), comm.size());

    let side_files = op.side_files();
    agree(
        comm,
        check_places(&op.inputs(), op.targets(), &side_files, options),
    )?;
    agree(comm, memory::check_run(op, options))?;
    agree(comm, disk::check_run(op, options))?;
    // One job per output: rank 0 locks the primary output before anyone looks at the disk
    // (a second job must not see, resume or clear the first one's staging). Dropped, so
    // removed, when this function returns, whether the run completed or failed.
    let _lock = if options.dry_run {
        None
    } else {
        let primary = crate::io::staging::Staging::published_of(&op.targets()[0]);
        lock_output(&primary, comm)?
    };
    let watch = if options.dry_run {
        None
    } else {
        match take_output(op, comm, options)? {
            Found::Finished => return Ok(report::already_complete(op, comm)),
            Found::ToRun(watch) => watch,
        }
    };
    // Everyone looks at the disk before anyone changes it.
    let stagings = agree(comm, plan_stagings(op.targets(), options))?;
    let staging = &stagings[0];

    if options.dry_run {
        agree(
            comm,
            check_side_files(&side_files, options, stagings[0].resuming),
        )?;
        if comm.is_root() {
            let assignment: Vec<Vec<usize>> = stage_of_rank.iter().map(|s| s.concat()).collect();
            print!("{}", report::describe_plan(op, &assignment, &stagings));
        }
        return Ok(RunSummary::dry_run(
            op.name(),
            &op.targets()[0],
            comm.size(),
        ));
    }

    let journal = journal::Journal::new(staging.journal_dir(), comm.rank());
    crate::comm::on_root(comm, || {
        start_journal(op, &journal, &stagings, &side_files, options)
    })?;
    crate::io::staging::mark_started();
    let outcome = run_staged(
        op,
        comm,
        (&stagings, &journal),
        &stage_of_rank,
        phases,
        watch.as_ref(),
    );
    if comm.is_root() {
        match &outcome {
            // Made from inputs that changed: not worth resuming.
            Err(Error::InputChanged { .. }) => discard(&stagings),
            Err(_) if !staging.resuming => discard_if_nothing_done(&journal, &stagings),
            _ => {}
        }
    }
    let (mut stats, phases, done) = outcome?;
    stats.phases = phases;
    if let Some(read) = op.bytes_read() {
        stats.bytes_read = read;
    }
    stats.seconds = started.elapsed().as_secs_f64();
    stats.device = op.device();
    stats.threads = rayon::current_num_threads();
    Ok(report::summarize(op, comm, stats, &stagings, done))
}

/// A failed run that finished no unit leaves nothing worth resuming (an input it cannot read
/// will fail the same way again): its staging and journal go, so the error does not advise
/// `--resume`. Rank 0, after every rank stopped.
fn discard_if_nothing_done(journal: &journal::Journal, stagings: &[Staging]) {
    if journal.finished_units().is_ok_and(|done| done.is_empty()) {
        discard(stagings);
    }
}

/// Removes a failed run's staging and journal. Rank 0, after every rank stopped.
fn discard(stagings: &[Staging]) {
    for s in stagings {
        if let Err(e) = s.discard() {
            tracing::warn!("could not remove the failed run's staging: {e}");
        }
    }
}

/// Records the run's inputs for [`crate::io::watch::InputWatch::check`], leaving out what the
/// run itself writes (outputs and their locks, journals and staging, side files, report).
fn watch_inputs<Op: Operation>(
    op: &Op,
    options: &RunOptions,
) -> Result<crate::io::watch::InputWatch> {
    let mut writes: Vec<std::path::PathBuf> =
        op.targets().iter().map(Staging::published_of).collect();
    writes.extend(op.side_files());
    writes.extend(options.report.iter().cloned());
    crate::io::watch::InputWatch::start(&op.inputs(), &writes)
}

/// The part of [`run`] after the journal is started: opens the staged outputs, runs every
/// stage's units, finishes and publishes. Returns this rank's numbers, its phase times and how
/// many units an interrupted run had already finished.
fn run_staged<Op: Operation>(
    op: &Op,
    comm: &dyn Comm,
    (stagings, journal): (&[Staging], &journal::Journal),
    stage_of_rank: &[Vec<Vec<usize>>],
    mut phases: PhaseTimes,
    watch: Option<&crate::io::watch::InputWatch>,
) -> Result<(report::RankStats, PhaseTimes, usize)> {
    let units = op.units();
    let staging = &stagings[0];
    let t = Instant::now();
    let staged: Vec<Address> = stagings.iter().map(|s| s.staging.clone()).collect();
    agree(comm, op.open_output(&staged, comm, staging.resuming))?;
    let done = if staging.resuming {
        journal.finished_units()?
    } else {
        Default::default()
    };
    let pending = without_finished(stage_of_rank, &done);
    agree(comm, op.assign(comm, &pending))?;
    let stages = &pending[comm.rank()];
    phases.setup += t.elapsed().as_secs_f64();

    let total_bytes: u64 = units.iter().map(|u| u.bytes_out).sum();
    let already: u64 = done.iter().map(|&u| units[u].bytes_out).sum();
    let progress = progress::Progress::new(
        op.name(),
        units.len() as u64,
        done.len() as u64,
        total_bytes,
        already,
        comm.is_root(),
    );
    let mut driver = driver::Driver {
        op,
        comm,
        journal,
        progress,
        phases,
        stats: report::RankStats::default(),
        fail_unit: fail_unit(),
        abort_at: abort_after_units(),
        stall_at: stall_after_units(comm.rank()),
    };
    // Collective writes (parallel HDF5) need every rank in the same call: rounds. Anything
    // else runs its units independently and only listens for the others (see `Driver`).
    let lockstep = op
        .targets()
        .iter()
        .any(|t| matches!(t, Address::Hdf5 { .. }));
    for (stage, mine) in stages.iter().enumerate() {
        if lockstep {
            driver.rounds(mine)?;
        } else {
            driver.independent(mine)?;
        }
        let t = Instant::now();
        let settled = agree(comm, op.settle(comm, stage))?;
        driver.phases.sync += t.elapsed().as_secs_f64();
        for u in settled {
            driver.finish_unit(u)?;
        }
    }
    let driver::Driver {
        progress,
        mut phases,
        stats,
        ..
    } = driver;
    progress.finish();

    let t = Instant::now();
    agree(comm, op.finish(comm))?;
    crate::comm::on_root(comm, || {
        pause_before_publishing();
        watch
            .map_or(Ok(()), crate::io::watch::InputWatch::check)
            .and_then(|()| Staging::commit_all(stagings))
    })?;
    phases.finalize += t.elapsed().as_secs_f64();

    Ok((stats, phases, done.len()))
}
