//! How one rank works through its units of a stage: independently, listening for the others
//! (the default), or in lockstep rounds (collective writes).
//!
//! Either way a helper thread computes a rank's next unit while the main thread writes the one
//! before (MPI and collective writes stay on the main thread), a unit is journaled once its
//! write returned, and one rank's error stops every rank with that error on the failing rank
//! and [`Error::PeerFailed`] on the others.
//!
//! **Independent** ([`Driver::independent`]): after each unit a rank looks (without waiting) at
//! the sum it last started with the others (`Comm::start_sum`: failures, finished ranks, units
//! and bytes written, for the progress line), and starts the next once that one is complete.
//! A rank that finishes, or fails, keeps taking part in these sums until one shows every rank
//! finished or any failed; all ranks see the same sums, so all stop after the same one. A
//! failure is therefore heard by every rank within about one unit of the slowest rank, and a
//! rank never waits for another except at the end of a stage (which is where a stage must
//! wait: the next reads what this one wrote).
//!
//! **Rounds** ([`Driver::rounds`]): in round r every rank computes its r-th unit and writes its
//! (r-1)-th, then all agree nobody failed. Parallel HDF5 needs this: its writes are collective,
//! so every rank must be in the same write call, with nothing when it has run out of units.

use std::time::{Duration, Instant};

use super::{journal, progress, report, stall_forever, Error, Operation, PhaseTimes, Result};
use crate::comm::{agree, Comm, PendingSum, ReduceOp};

/// A rank's state while it runs its units.
pub(super) struct Driver<'a, Op: Operation> {
    pub op: &'a Op,
    pub comm: &'a dyn Comm,
    pub journal: &'a journal::Journal,
    pub progress: progress::Progress,
    pub phases: PhaseTimes,
    pub stats: report::RankStats,
    /// Fault injection (`TESSERA_FAIL_UNIT`, `TESSERA_ABORT_AFTER_UNITS`,
    /// `TESSERA_STALL_AFTER_UNITS`).
    pub fail_unit: Option<usize>,
    pub abort_at: Option<u64>,
    pub stall_at: Option<u64>,
}

/// What one compute-while-write step returns: the write's outcome, and the computed unit.
type Step<T> = (Result<()>, Result<Option<(usize, T)>>);

/// A write that returned on a writer thread: its unit, outcome and seconds.
type Written = (usize, Result<()>, f64);

/// Computes `unit`, or fails it on purpose when it is `fail_unit` (`TESSERA_FAIL_UNIT`).
fn compute_unit<Op: Operation>(
    op: &Op,
    fail_unit: Option<usize>,
    unit: usize,
) -> Result<Op::Output> {
    if fail_unit == Some(unit) {
        return Err(Error::parameter(
            "internal",
            format!("unit {unit} failed on purpose (TESSERA_FAIL_UNIT)"),
        ));
    }
    op.compute(unit)
}

impl<Op: Operation> Driver<'_, Op> {
    /// Computes unit `next` (if any) on a helper thread while writing `pending` (if any, or
    /// taking part in a collective write with nothing when `collective`) on this one.
    fn step(
        &mut self,
        next: Option<usize>,
        pending: Option<(usize, Op::Output)>,
        collective: bool,
    ) -> Step<Op::Output> {
        let (op, fail_unit) = (self.op, self.fail_unit);
        let compute = move |u: usize| compute_unit(op, fail_unit, u).map(|out| (u, out));
        let writing = pending.as_ref().map(|(u, _)| *u);
        let (written, write_seconds, computed, compute_seconds) = std::thread::scope(|scope| {
            let helper = scope.spawn(|| {
                let t = Instant::now();
                let result = next.map(compute).transpose();
                (result, t.elapsed().as_secs_f64())
            });
            let t = Instant::now();
            let written = if pending.is_some() || collective {
                op.write(pending)
            } else {
                Ok(())
            };
            let write_seconds = t.elapsed().as_secs_f64();
            let (computed, compute_seconds) = helper.join().unwrap_or_else(|_| {
                (
                    Err(Error::parameter("internal", "a compute thread panicked")),
                    0.0,
                )
            });
            (written, write_seconds, computed, compute_seconds)
        });
        self.phases.write += write_seconds;
        self.phases.compute += compute_seconds;
        // -vv: one line per step, for finding slow units and measuring their spread
        // (docs/scaling.md's jitter).
        tracing::debug!(
            "computed unit {} in {compute_seconds:.6} s, wrote unit {} in {write_seconds:.6} s",
            next.map_or("-".into(), |u| u.to_string()),
            writing.map_or("-".into(), |u| u.to_string()),
        );
        (written, computed)
    }

    /// After a unit's write: journals it, unless the operation holds it (journaled when
    /// `settle` returns it).
    fn record(&mut self, unit: usize) -> Result<()> {
        if self.op.held(unit) {
            return Ok(());
        }
        self.finish_unit(unit)
    }

    /// Journals a finished unit and counts it (then the fault injection, if asked for).
    pub(super) fn finish_unit(&mut self, unit: usize) -> Result<()> {
        self.journal.record(unit)?;
        let info = &self.op.units()[unit];
        self.stats.units += 1;
        self.stats.bytes_read += info.bytes_in;
        self.stats.bytes_written += info.bytes_out;
        if self.abort_at == Some(self.stats.units) {
            eprintln!(
                "TESSERA_ABORT_AFTER_UNITS: rank {} aborting after {} units",
                self.comm.rank(),
                self.stats.units
            );
            std::process::abort();
        }
        if self.stall_at == Some(self.stats.units) {
            stall_forever(self.comm.rank(), self.stats.units);
        }
        Ok(())
    }

    /// Runs this rank's units of one stage without waiting for the other ranks, except at the
    /// end of the stage (module docs): one write at a time, or several when the operation
    /// allows ([`Driver::in_lanes`]).
    ///
    /// # Errors
    /// This rank's failure, or [`Error::PeerFailed`] when another rank failed.
    pub fn independent(&mut self, mine: &[usize]) -> Result<()> {
        let mut peers = Peers::new(self.comm);
        let lanes = self.write_lanes();
        let outcome = if lanes > 1 {
            self.in_lanes(mine, lanes, &mut peers)
        } else {
            self.in_steps(mine, &mut peers)
        };
        let t = Instant::now();
        peers.finish(outcome.is_err(), &mut self.progress);
        let agreed = agree(self.comm, outcome);
        self.phases.sync += t.elapsed().as_secs_f64();
        agreed
    }

    /// How many writes this rank keeps in flight: [`Operation::write_lanes`], lowered so that
    /// the units in flight (one being computed, one per lane being written) fit in the memory
    /// this process may still take.
    fn write_lanes(&self) -> usize {
        let wanted = self.op.write_lanes();
        if wanted <= 1 {
            return 1;
        }
        let room = super::memory::available_bytes() / self.op.memory_per_unit().max(1);
        wanted.min(room.saturating_sub(1) as usize).max(1)
    }

    /// [`Driver::independent`]'s units one write at a time: each step computes the next unit
    /// on a helper thread while this one writes the unit before. Returns this rank's outcome
    /// (Ok when it stopped because another rank failed).
    fn in_steps(&mut self, mine: &[usize], peers: &mut Peers<'_>) -> Result<()> {
        let mut pending: Option<(usize, Op::Output)> = None;
        for step in 0..=mine.len() {
            let next = mine.get(step).copied();
            let writing = pending.as_ref().map(|(u, _)| *u);
            let (written, computed) = self.step(next, pending.take(), false);
            let recorded = match (written, writing) {
                (Ok(()), Some(u)) => self.record(u).map(|()| Some(u)),
                (Ok(()), None) => Ok(None),
                (Err(e), _) => Err(e),
            };
            let (written, computed) = recorded.and_then(|u| computed.map(|c| (u, c)))?;
            if let Some(u) = written {
                peers.wrote(self.op.units()[u].bytes_out);
            }
            pending = computed;
            if self.listen(peers) {
                break;
            }
        }
        Ok(())
    }

    /// [`Driver::independent`]'s units with up to `lanes` writes in flight: this thread
    /// computes each unit and hands it to a writer thread of its own, waiting only while
    /// `lanes` writes are running. A unit is journaled once its write returned; on a failure
    /// no further unit starts, and the writes already running finish (and are journaled when
    /// they succeed) before this returns.
    fn in_lanes(&mut self, mine: &[usize], lanes: usize, peers: &mut Peers<'_>) -> Result<()> {
        let (op, fail_unit) = (self.op, self.fail_unit);
        std::thread::scope(|scope| {
            let (done, finished) = std::sync::mpsc::channel::<Written>();
            let mut in_flight = 0;
            let mut outcome = Ok(());
            'units: for &unit in mine {
                let t = Instant::now();
                let computed = compute_unit(op, fail_unit, unit);
                let seconds = t.elapsed().as_secs_f64();
                self.phases.compute += seconds;
                tracing::debug!("computed unit {unit} in {seconds:.6} s");
                let output = match computed {
                    Ok(output) => output,
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                };
                // Whatever finished meanwhile is journaled; a full set of lanes waits for one.
                let mut wait = in_flight >= lanes;
                while let Some(w) = if wait {
                    finished.recv().ok()
                } else {
                    finished.try_recv().ok()
                } {
                    (in_flight, wait) = (in_flight - 1, false);
                    if let Err(e) = self.written(w, peers) {
                        outcome = Err(e);
                        break 'units;
                    }
                }
                let done = done.clone();
                scope.spawn(move || {
                    let t = Instant::now();
                    let write = std::panic::AssertUnwindSafe(|| {
                        crate::io::as_write_lane(|| op.write(Some((unit, output))))
                    });
                    let result = std::panic::catch_unwind(write).unwrap_or_else(|_| {
                        Err(Error::parameter("internal", "a write thread panicked"))
                    });
                    // The receiver outlives the scope.
                    let _ = done.send((unit, result, t.elapsed().as_secs_f64()));
                });
                in_flight += 1;
                if self.listen(peers) {
                    break;
                }
            }
            for w in finished.iter().take(in_flight) {
                let recorded = self.written(w, peers);
                outcome = outcome.and(recorded);
            }
            outcome
        })
    }

    /// A write that returned (in lanes): its time counted, its unit journaled (unless held)
    /// and counted for the others.
    fn written(&mut self, (unit, result, seconds): Written, peers: &mut Peers<'_>) -> Result<()> {
        self.phases.write += seconds;
        tracing::debug!("wrote unit {unit} in {seconds:.6} s");
        result?;
        self.record(unit)?;
        peers.wrote(self.op.units()[unit].bytes_out);
        Ok(())
    }

    /// Between units: looks at the others' news (the sync phase); true when a rank failed.
    fn listen(&mut self, peers: &mut Peers<'_>) -> bool {
        let t = Instant::now();
        let heard_of_failure = peers.listen(&mut self.progress);
        self.phases.sync += t.elapsed().as_secs_f64();
        heard_of_failure
    }

    /// Runs this rank's units of one stage in rounds with every other rank (module docs).
    ///
    /// # Errors
    /// This rank's failure, or [`Error::PeerFailed`] when another rank failed.
    pub fn rounds(&mut self, mine: &[usize]) -> Result<()> {
        let units = self.op.units();
        let t = Instant::now();
        let mut rounds = [mine.len() as u64];
        self.comm.all_reduce_u64(&mut rounds, ReduceOp::Max);
        self.phases.sync += t.elapsed().as_secs_f64();
        // Round 0 writes nothing on any rank and the last round computes nothing, so every
        // rank calls `write` the same number of times.
        let mut pending: Option<(usize, Op::Output)> = None;
        for round in 0..=rounds[0] as usize {
            let next = mine.get(round).copied();
            let writing = pending.as_ref().map(|(u, _)| *u);
            let (written, computed) = self.step(next, pending.take(), round > 0);
            let t = Instant::now();
            let computed = agree(self.comm, written.and(computed))?;
            if let Some(u) = writing {
                self.record(u)?;
            }
            pending = computed;
            let mut step = [
                u64::from(writing.is_some()),
                writing.map_or(0, |u| units[u].bytes_out),
            ];
            self.comm.all_reduce_u64(&mut step, ReduceOp::Sum);
            self.phases.sync += t.elapsed().as_secs_f64();
            self.progress.advance(step[0], step[1]);
        }
        Ok(())
    }
}

/// Where each rank's contribution sits in a sum.
const FAILED: usize = 0;
const FINISHED: usize = 1;
const UNITS: usize = 2;
const BYTES: usize = 3;

/// The sums a rank takes part in while it works independently: one in flight at a time.
struct Peers<'c> {
    comm: &'c dyn Comm,
    in_flight: Option<Box<dyn PendingSum>>,
    /// Units and bytes written since this rank's last contribution.
    units: u64,
    bytes: u64,
    /// A completed sum showed a failure: every rank stops after that same sum, so no further
    /// sum may be started.
    heard_failure: bool,
}

impl<'c> Peers<'c> {
    fn new(comm: &'c dyn Comm) -> Self {
        Peers {
            comm,
            in_flight: None,
            units: 0,
            bytes: 0,
            heard_failure: false,
        }
    }

    fn wrote(&mut self, bytes: u64) {
        self.units += 1;
        self.bytes += bytes;
    }

    /// Starts the next sum with this rank's news since the last one.
    fn start(&mut self, failed: bool, finished: bool) {
        let mut values = [0u64; 4];
        values[FAILED] = u64::from(failed);
        values[FINISHED] = u64::from(finished);
        values[UNITS] = std::mem::take(&mut self.units);
        values[BYTES] = std::mem::take(&mut self.bytes);
        self.in_flight = Some(self.comm.start_sum(&values));
    }

    /// Takes in a completed sum: the progress line moves; true when some rank failed.
    fn heard(&mut self, sum: &[u64], progress: &mut progress::Progress) -> bool {
        progress.advance(sum[UNITS], sum[BYTES]);
        self.heard_failure = sum[FAILED] > 0;
        self.heard_failure
    }

    /// Between units: looks at the sum in flight without waiting; once it is complete, starts
    /// the next. True when a rank failed.
    fn listen(&mut self, progress: &mut progress::Progress) -> bool {
        if let Some(pending) = self.in_flight.as_mut() {
            let Some(sum) = pending.test() else {
                return false;
            };
            self.in_flight = None;
            if self.heard(&sum, progress) {
                return true;
            }
        }
        self.start(false, false);
        false
    }

    /// After this rank's last unit (or its failure): takes part in sums until one shows every
    /// rank finished or any failed.
    fn finish(&mut self, failed: bool, progress: &mut progress::Progress) {
        while !self.heard_failure {
            if self.in_flight.is_none() {
                self.start(failed, !failed);
            }
            let mut pending = self.in_flight.take().expect("a sum in flight");
            let sum = wait_gently(pending.as_mut());
            if self.heard(&sum, progress) || sum[FINISHED] as usize == self.comm.size() {
                return;
            }
        }
    }
}

/// Waits for a sum by testing it with growing pauses (up to 2 ms), rather than in MPI's
/// spinning wait: a finished rank must not take a core from the ranks still working on it.
fn wait_gently(pending: &mut dyn PendingSum) -> Vec<u64> {
    let mut pause = Duration::from_micros(20);
    loop {
        if let Some(sum) = pending.test() {
            return sum;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}
