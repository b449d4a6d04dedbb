//! What a hostile user or a crash leaves behind (issue 28): outputs that are not tessera's to
//! replace (devices, FIFOs, the system's trees), inputs that would block, leftovers of a job
//! killed at any step (empty locks, an old output moved aside by `--overwrite`, a staging area
//! with nothing to resume), and a requeued job resuming an output it had already finished.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// This file's input image (`common::small_image`).
fn image(dir: &Path) -> PathBuf {
    small_image(dir, 7)
}

/// A temporary directory holding [`image`], and the output `o.zarr` to be written beside it.
fn image_and_output() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let input = image(d.path());
    let out = d.path().join("o.zarr");
    (d, input, out)
}

fn unstitch(input: &Path, output: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        io_line("quilt unstitch", input, output, "--window 16,16 --step 8,8")
            .iter()
            .map(|a| a.to_string())
            .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn run(args: &[String], env: &[(&str, &str)]) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    tessera_env(&refs, env)
}

/// Runs tessera, killing it if it has not ended within `limit` (an input that blocks in
/// `open` would otherwise hang the test).
fn run_within(args: &[String], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            panic!("tessera {args:?} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false)
}

#[test]
fn devices_fifos_and_system_trees_are_never_outputs() {
    let d = tempfile::tempdir().unwrap();
    let input = image(d.path());
    let out = s(&d.path().join("o.zarr"));
    // A report that is a FIFO, or a link to /dev/null, with and without --overwrite.
    let fifo = d.path().join("report.fifo");
    mkfifo(&fifo);
    let fifo_out = d.path().join("out.npy");
    mkfifo(&fifo_out);
    let null_link = d.path().join("null.json");
    std::os::unix::fs::symlink("/dev/null", &null_link).unwrap();
    for overwrite in [&[][..], &["--overwrite"][..]] {
        let mut extra = vec!["--report", fifo.to_str().unwrap()];
        extra.extend(overwrite);
        fails_with(
            run_within(&unstitch(&input, &out, &extra), Duration::from_secs(60)),
            &["--report", "FIFO", "regular files"],
        );
        let mut extra = vec!["--report", null_link.to_str().unwrap()];
        extra.extend(overwrite);
        fails_with(
            run(&unstitch(&input, &out, &extra), &[]),
            &["--report", "character device"],
        );
        // The output itself as a FIFO.
        fails_with(
            run_within(
                &unstitch(&input, &s(&fifo_out), overwrite),
                Duration::from_secs(60),
            ),
            &["--output", "FIFO"],
        );
    }
    assert!(is_fifo(&fifo) && is_fifo(&fifo_out));
    assert!(std::fs::symlink_metadata(&null_link)
        .unwrap()
        .file_type()
        .is_symlink());
    // Anything under /dev (but /dev/shm), /proc or /sys.
    for place in [
        "/dev/tessera-28.zarr",
        "/proc/self/tessera-28.npy",
        "/sys/t.zarr",
    ] {
        fails_with(
            run(&unstitch(&input, place, &["--overwrite"]), &[]),
            &["--output", "system's device and kernel files"],
        );
        assert!(!Path::new(place).exists());
    }
    assert!(!d.path().join("o.zarr").exists());
}

#[test]
fn inputs_that_would_block_are_refused_up_front() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("in.npy");
    mkfifo(&fifo);
    let out = s(&d.path().join("o.zarr"));
    fails_with(
        run_within(&unstitch(&fifo, &out, &[]), Duration::from_secs(60)),
        &["FIFO", "reads only regular files"],
    );
    let dev = d.path().join("zero.npy");
    std::os::unix::fs::symlink("/dev/zero", &dev).unwrap();
    fails_with(
        run_within(&unstitch(&dev, &out, &[]), Duration::from_secs(60)),
        &["zero.npy", "character device"],
    );
    // info reads through the same door.
    fails_with(
        run_within(&["info".to_string(), s(&fifo)], Duration::from_secs(60)),
        &["FIFO"],
    );
    assert_eq!(names(d.path()), ["in.npy", "zero.npy"]);
}

#[test]
fn an_empty_lock_of_a_killed_job_does_not_block_the_next() {
    let (d, input, out) = image_and_output();
    // Killed between creating its lock and writing it (what older tessera could leave).
    let lock = d.path().join("o.zarr.lock");
    let f = std::fs::File::create(&lock).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    drop(f);
    // And a temporary of a lock being taken by a process of this host that is gone.
    let host = String::from_utf8(Command::new("hostname").output().unwrap().stdout).unwrap();
    let tmp = d
        .path()
        .join(format!("o.zarr.lock.tmp-{}-{}", host.trim(), i32::MAX - 3));
    std::fs::write(&tmp, b"{}").unwrap();
    let text = ok(run(&unstitch(&input, &s(&out), &[]), &[]));
    assert!(text.contains("empty lock"), "{text}");
    assert_eq!(
        names(d.path()),
        ["in.npy", "o.zarr", "o.zarr.report.json", "o_positions.npy"]
    );
    // A fresh empty lock (a job taking it this instant) is not taken over; the message says
    // which file to remove.
    std::fs::File::create(&lock).unwrap();
    let out2 = d.path().join("o.zarr");
    fails_with(
        run(&unstitch(&input, &s(&out2), &["--overwrite"]), &[]),
        &["remove", "o.zarr.lock"],
    );
}

/// Unstitch with other steps than [`unstitch`]'s: the second job of the crash tests.
fn other_steps(input: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = unstitch(input, &s(out), extra);
    a[9] = "4,4".into();
    a
}

/// What is left in `dir` besides the named outputs: leftovers of a killed run.
#[track_caller]
fn assert_only(dir: &Path, expected: &[&str]) {
    assert_eq!(names(dir), expected, "leftovers in {}", dir.display());
}

/// An `--overwrite` killed at each step of publishing (old output moved aside, new one renamed
/// in, one of two outputs published, all published but the journal): the next run finds the
/// old output or the new one, `--resume` recognises the new one as finished, and nothing else
/// is left. Killed before publishing, the old output stays and the line says what to do.
#[test]
fn an_overwrite_killed_while_publishing_loses_nothing_and_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let input = image(d.path());
    let clean_dir = new_dir(d.path().join("clean"));
    let clean = clean_dir.join("o.zarr");
    ok(run(&other_steps(&input, &clean, &[]), &[]));
    for step in ["moved-aside", "renamed", "published-one", "published"] {
        let dir = new_dir(d.path().join(step));
        let out = dir.join("o.zarr");
        ok(run(&unstitch(&input, &s(&out), &[]), &[]));
        let killed = run(
            &other_steps(&input, &out, &["--overwrite"]),
            &[("TESSERA_CRASH_AT", step)],
        );
        assert!(!killed.status.success(), "{step}: {}", text(&killed));
        let resumed = ok(run(&other_steps(&input, &out, &["--resume"]), &[]));
        assert!(resumed.contains("already complete"), "{step}: {resumed}");
        assert_same_tree(&out, &clean);
        let positions = |d: &Path| std::fs::read(d.join("o_positions.npy")).unwrap();
        assert!(
            positions(&dir) == positions(&clean_dir),
            "{step}: positions"
        );
        assert_only(&dir, &["o.zarr", "o.zarr.report.json", "o_positions.npy"]);
    }
    // Killed after its last unit, before publishing: the old output is untouched.
    let dir = new_dir(d.path().join("before"));
    let out = dir.join("o.zarr");
    ok(run(&unstitch(&input, &s(&out), &[]), &[]));
    let old = tree(&out);
    let killed = run(
        &other_steps(&input, &out, &["--overwrite"]),
        &[("TESSERA_ABORT_AFTER_UNITS", "1")],
    );
    assert!(!killed.status.success(), "{}", text(&killed));
    assert_eq!(tree(&out), old);
    fails_with(
        run(&other_steps(&input, &out, &["--resume"]), &[]),
        &["exists", "--overwrite"],
    );
    ok(run(
        &other_steps(&input, &out, &["--overwrite", "--resume"]),
        &[],
    ));
    assert_same_tree(&out, &clean);
    assert_only(&dir, &["o.zarr", "o.zarr.report.json", "o_positions.npy"]);
    // An old output moved aside by an older tessera that was killed before publishing (no
    // journal marker): put back.
    let aside = dir.join("o.zarr.replaced-999999");
    std::fs::rename(&out, &aside).unwrap();
    fails_with(
        run(&other_steps(&input, &out, &[]), &[]),
        &["exists", "--overwrite"],
    );
    assert_same_tree(&out, &clean);
    assert_only(&dir, &["o.zarr", "o.zarr.report.json", "o_positions.npy"]);
}

/// A dataset added to an existing HDF5 file, the run killed at each step of the commit (the
/// file copied and the dataset copied in, the copy synced and marked, renamed over the file,
/// all published but the journal): the file's other datasets are intact at every moment,
/// `--resume` finishes, and nothing is left beside the file.
#[cfg(feature = "hdf5")]
#[test]
fn adding_to_an_hdf5_file_survives_a_kill_at_every_step() {
    let d = tempfile::tempdir().unwrap();
    let input = image(d.path());
    let clean = format!("{}:/b", s(&d.path().join("clean.h5")));
    ok(run(&other_steps(&input, Path::new(&clean), &[]), &[]));
    for step in [
        "dataset-copied",
        "dataset-marked",
        "dataset-renamed",
        "published",
    ] {
        let dir = new_dir(d.path().join(step));
        let file = dir.join("f.h5");
        let a = format!("{}:/a", s(&file));
        let b = format!("{}:/b", s(&file));
        ok(run(&unstitch(&input, &a, &[]), &[]));
        let before = read_all(&a);
        let killed = run(
            &other_steps(&input, Path::new(&b), &[]),
            &[("TESSERA_CRASH_AT", step)],
        );
        assert!(!killed.status.success(), "{step}: {}", text(&killed));
        assert_eq!(read_all(&a), before, "{step}: /a after the kill");
        ok(run(&other_steps(&input, Path::new(&b), &["--resume"]), &[]));
        assert_eq!(read_all(&a), before, "{step}: /a");
        assert_eq!(read_all(&b), read_all(&clean), "{step}: /b");
        assert_only(
            &dir,
            &[
                "f.h5",
                "f.h5.a.report.json",
                "f.h5.b.report.json",
                "f_a_positions.npy",
                "f_b_positions.npy",
            ],
        );
    }
}

#[test]
fn a_run_that_failed_before_finishing_a_unit_leaves_nothing_to_resume() {
    let (d, input, out) = image_and_output();
    let e = fails_with(
        run(
            &unstitch(&input, &s(&out), &[]),
            &[("TESSERA_FAIL_UNIT", "0")],
        ),
        &[],
    );
    assert!(!e.contains("--resume"), "{e}");
    assert_eq!(names(d.path()), ["in.npy"]);
    // With units finished before the failure, the staging stays and the line says so.
    let e = fails_with(
        run(
            &unstitch(&input, &s(&out), &["--patches-per-chunk", "4"]),
            &[("TESSERA_UNIT_BYTES", "4096"), ("TESSERA_FAIL_UNIT", "3")],
        ),
        &["--resume"],
    );
    assert!(d.path().join("o.zarr.partial").exists(), "{e}");
}

#[test]
fn resuming_a_finished_output_succeeds_and_changes_nothing() {
    let (d, input, out) = image_and_output();
    let report = d.path().join("o.zarr.report.json");
    ok(run(&unstitch(&input, &s(&out), &[]), &[]));
    let before = tree(d.path());
    let text = ok(run(&unstitch(&input, &s(&out), &["--resume"]), &[]));
    assert!(text.contains("already complete"), "{text}");
    assert_eq!(tree(d.path()), before, "a finished output is left as it is");
    // Another parameter: refused, naming it.
    let mut other = unstitch(&input, &s(&out), &["--resume"]);
    other[9] = "4,4".into();
    fails_with(run(&other, &[]), &["is complete", "--step", "--overwrite"]);
    // Killed between publishing and removing its journal: the journal vouches for it.
    let journal = new_dir(d.path().join("o.zarr.journal"));
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    std::fs::write(
        journal.join("plan.json"),
        rep["runs"][0]["identity"].to_string(),
    )
    .unwrap();
    std::fs::remove_file(&report).unwrap();
    ok(run(&unstitch(&input, &s(&out), &["--resume"]), &[]));
    assert!(!journal.exists());
    // It wrote the report the killed run could not, saying that nothing ran.
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(rep["runs"][0]["already_complete"], true);
    std::fs::remove_file(&report).unwrap();
    // Neither journal nor report: it cannot be told apart from another job's output.
    fails_with(
        run(&unstitch(&input, &s(&out), &["--resume"]), &[]),
        &["is complete", "report", "--overwrite"],
    );
}

#[test]
fn resuming_a_finished_output_on_two_ranks() {
    let Some(_) = mpirun() else { return };
    if !cfg!(feature = "mpi") {
        eprintln!("skipped: needs the MPI build");
        return;
    }
    let (d, input, out) = image_and_output();
    let args = unstitch(&input, &s(&out), &[]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(tessera_mpi(2, &refs, &[]));
    let before = tree(d.path());
    let args = unstitch(&input, &s(&out), &["--resume"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = ok(tessera_mpi(2, &refs, &[]));
    assert!(text.contains("already complete"), "{text}");
    assert_eq!(tree(d.path()), before);
}

/// A tessera command started in the background with `TESSERA_PAUSE_BEFORE_PUBLISH=go`: it
/// stops once every unit is written (after writing `go.paused`) until `go` exists.
fn paused(args: &[&str], go: &Path) -> std::process::Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera"));
    command.args(args);
    paused_command(command, go)
}

/// [`paused`] for any command (`mpirun -n 2 tessera ...`).
fn paused_command(mut command: Command, go: &Path) -> std::process::Child {
    let child = command
        .env("TESSERA_PAUSE_BEFORE_PUBLISH", go)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let marker = PathBuf::from(format!("{}.paused", go.display()));
    let started = Instant::now();
    while !marker.exists() {
        assert!(started.elapsed() < Duration::from_secs(120), "never paused");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// `tessera pyramid --input store --output out`.
fn pyramid(store: &str, out: &Path) -> Output {
    tessera(&io_args("pyramid", store, out, &[]))
}

/// Two stacks of slices and a Zarr store converted from the first.
fn two_stacks(dir: &Path) -> (String, String, String) {
    let a = dir.join("a");
    let b = dir.join("b");
    write_slices(&a, "s", 8, &[32, 32], tessera::io::DType::U16, 1);
    write_slices(&b, "s", 8, &[32, 32], tessera::io::DType::U16, 2);
    let store = s(&dir.join("in.zarr"));
    run_line("convert", &a, &store, "--chunks 2,8,8");
    (s(&a), s(&b), store)
}

#[test]
fn an_input_rewritten_while_a_job_reads_it_is_never_published() {
    let d = tempfile::tempdir().unwrap();
    let (_, b, store) = two_stacks(d.path());
    let out = d.path().join("pyr.zarr");
    let go = d.path().join("go");
    let reader = paused(&io_args("pyramid", &store, &out, &[]), &go);
    // Another job replaces the input under it: allowed (the reader holds no lock on it).
    ok(overwrite_input(&b, &store));
    std::fs::write(&go, b"").unwrap();
    let e = fails_with(
        reader.wait_with_output().unwrap(),
        &["in.zarr", "while this job read it"],
    );
    assert!(!e.contains("--resume"), "{e}");
    assert_no_pyramid_left(d.path());
    // A chunk rewritten in place by another program: the same.
    let go = d.path().join("go2");
    let reader = paused(&io_args("pyramid", &store, &out, &[]), &go);
    let chunk = Path::new(&store).join("c/0/0/0");
    let bytes = std::fs::read(&chunk).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&chunk, &bytes).unwrap();
    std::fs::write(&go, b"").unwrap();
    fails_with(
        reader.wait_with_output().unwrap(),
        &["c/0/0/0 was rewritten"],
    );
    assert!(!out.exists());
    // Untouched, the same job publishes.
    ok(pyramid(&store, &out));
}

/// Stack `b` converted over `store`, another job's input (allowed: a reader holds no lock).
fn overwrite_input(b: &str, store: &str) -> Output {
    tessera(&io_line("convert", b, store, "--chunks 2,8,8 --overwrite"))
}

/// Nothing of `pyr.zarr` is left in `dir`: no output, staging, journal or lock.
#[track_caller]
fn assert_no_pyramid_left(dir: &Path) {
    for left in [
        "pyr.zarr",
        "pyr.zarr.partial",
        "pyr.zarr.journal",
        "pyr.zarr.lock",
    ] {
        assert!(!dir.join(left).exists(), "{left} left behind");
    }
}

#[test]
fn an_input_another_job_is_writing_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (_, b, store) = two_stacks(d.path());
    let go = d.path().join("go");
    let writer = paused(
        &io_line("convert", &b, &store, "--chunks 2,8,8 --overwrite"),
        &go,
    );
    let out = d.path().join("pyr.zarr");
    fails_with(
        tessera(&io_args("pyramid", &store, &out, &[])),
        &[
            "in.zarr",
            "being written by another tessera job",
            "in.zarr.lock",
        ],
    );
    std::fs::write(&go, b"").unwrap();
    ok(writer.wait_with_output().unwrap());
    assert!(!out.exists());
    ok(pyramid(&store, &out));
}

#[test]
fn an_input_rewritten_under_a_two_rank_job_is_never_published() {
    if mpirun().is_none() || !cfg!(feature = "mpi") {
        eprintln!("skipped: needs mpirun and the MPI build");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (_, b, store) = two_stacks(d.path());
    let out = d.path().join("pyr.zarr");
    let go = d.path().join("go");
    let args = io_line("pyramid", &store, &out, "--levels 1 --chunks 2,8,8");
    let reader = paused_command(mpi_command(2, &args, &[("TESSERA_UNIT_BYTES", "1")]), &go);
    ok(overwrite_input(&b, &store));
    std::fs::write(&go, b"").unwrap();
    fails_with(
        reader.wait_with_output().unwrap(),
        &["while this job read it"],
    );
    assert_no_pyramid_left(d.path());
    // A device as the report on two ranks: one line, nothing written.
    let null = d.path().join("null.json");
    std::os::unix::fs::symlink("/dev/null", &null).unwrap();
    let mut with_report = args.to_vec();
    let null_s = s(&null);
    with_report.extend(["--report", &null_s, "--overwrite"]);
    fails_with(
        tessera_mpi(2, &with_report, &[]),
        &["--report", "character device"],
    );
    assert!(!out.exists());
}
