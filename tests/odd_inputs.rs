//! Job files and messages a hostile or careless user produces (issue 28, class 8): a job read
//! from a pipe, values megabytes long, dates where paths belong, flags checked only on some
//! paths, names with spaces at their ends, empty inputs, contradictory advice, HDF5 files whose
//! data lives elsewhere or that are the input under another name.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use ndarray::{ArrayD, IxDyn};

/// This file's input image (`common::small_image`).
fn image(dir: &Path) -> PathBuf {
    small_image(dir, 3)
}

/// The unstitch job table for `input` -> `output` (paths as written in the file).
fn unstitch_job(input: &str, output: &str) -> String {
    format!(
        "[unstitch]\ninput = \"{input}\"\noutput = \"{output}\"\n[unstitch.geometry]\nwindow = [16, 16]\nstep = [8, 8]\n"
    )
}

#[test]
fn a_job_read_from_a_pipe_resolves_paths_against_the_working_directory() {
    let d = tempfile::tempdir().unwrap();
    image(d.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["run", "/dev/stdin"])
        .current_dir(d.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(unstitch_job("in.npy", "o.zarr").as_bytes())
        .unwrap();
    ok(child.wait_with_output().unwrap());
    assert!(d.path().join("o.zarr/zarr.json").is_file());
    // A job file on disk still resolves against its own directory.
    let jobs = new_dir(d.path().join("jobs"));
    let job = unstitch_job("../in.npy", "o2.zarr");
    ok(run_job_file(&jobs.join("j.toml"), &job));
    assert!(jobs.join("o2.zarr/zarr.json").is_file());
}

#[test]
fn a_value_megabytes_long_is_shortened_in_the_one_line() {
    let d = tempfile::tempdir().unwrap();
    let input = image(d.path());
    // One argument may be at most 128 KiB (the kernel's limit); a job file has none.
    let long = "9".repeat(100_000);
    for window in [long.clone(), format!("{long},x"), format!("x{long}")] {
        let out = tessera(&io_args(
            "quilt unstitch",
            &input,
            &d.path().join("o.zarr"),
            &["--window", &window, "--step", "8,8"],
        ));
        assert!(!out.status.success());
        assert!(
            out.stderr.len() < 8000,
            "{} bytes of error",
            out.stderr.len()
        );
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("characters left out"), "{text}");
    }
    // The same from a job file, 10 MB long.
    let huge = "9".repeat(10 << 20);
    let job = d.path().join("j.toml");
    let out = run_job_file(&job, &unstitch_job(&huge, "o.zarr"));
    assert!(!out.status.success());
    assert!(
        out.stderr.len() < 8000,
        "{} bytes of error",
        out.stderr.len()
    );
}

#[test]
fn an_unquoted_date_where_a_path_belongs_says_so() {
    let d = tempfile::tempdir().unwrap();
    let job = d.path().join("j.toml");
    let date = "[unstitch]\ninput = 2024-01-01\noutput = \"o.zarr\"\n[unstitch.geometry]\nwindow = [16, 16]\nstep = [8, 8]\n";
    fails_with(
        run_job_file(&job, date),
        &["j.toml", "unstitch.input", "date or time", "quotes"],
    );
    let time = "[run]\nreport = 07:32:00\n[unstitch]\ninput = \"in.npy\"\noutput = \"o.zarr\"\n";
    fails_with(run_job_file(&job, time), &["run.report", "date or time"]);
}

#[test]
fn a_bad_gpu_memory_limit_is_refused_without_a_gpu_too() {
    let d = tempfile::tempdir().unwrap();
    let input = image(d.path());
    for device in ["cpu", "auto"] {
        fails_with(
            tessera(&io_args(
                "quilt unstitch",
                &input,
                &d.path().join("o.zarr"),
                &[
                    "--window",
                    "16,16",
                    "--step",
                    "8,8",
                    "--device",
                    device,
                    "--gpu-memory-limit",
                    "banana",
                ],
            )),
            &["--gpu-memory-limit", "banana", "not a size"],
        );
    }
    assert!(!d.path().join("o.zarr").exists());
}

#[test]
fn a_manifest_name_with_spaces_at_its_ends_is_quoted() {
    let d = tempfile::tempdir().unwrap();
    let slice = ArrayD::from_shape_fn(IxDyn(&[32, 32]), |i| (i[0] * 32 + i[1]) as f32);
    ndarray_npy::write_npy(d.path().join("s0.npy"), &slice).unwrap();
    let manifest = d.path().join("m.csv");
    std::fs::write(&manifest, "path\n s0.npy\n").unwrap();
    fails_with(
        tessera(&manifest_args(
            &manifest,
            d.path(),
            &d.path().join("out"),
            &["--patch-size", "16"],
        )),
        &["\" s0.npy\" (row 1)"],
    );
}

#[test]
fn a_refused_resume_does_not_also_advise_resuming() {
    let d = tempfile::tempdir().unwrap();
    let input = image(d.path());
    let out = s(&d.path().join("o.zarr"));
    let args = |step: &str, extra: &[&str]| {
        let mut a = io_line(
            "quilt unstitch",
            &input,
            &out,
            "--window 16,16 --patches-per-chunk 4",
        );
        a.extend(["--step", step]);
        a.extend(extra);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |v: Vec<String>, env: &[(&str, &str)]| {
        let parts: Vec<&str> = v.iter().map(String::as_str).collect();
        tessera_env(&parts, env)
    };
    let killed = run(
        args("8,8", &[]),
        &[
            ("TESSERA_UNIT_BYTES", "4096"),
            ("TESSERA_ABORT_AFTER_UNITS", "2"),
        ],
    );
    assert!(!killed.status.success());
    let e = fails_with(
        run(args("4,4", &["--resume"]), &[]),
        &["--step", "--overwrite"],
    );
    assert!(!e.contains("rerun with --resume"), "{e}");
    // Resumed with its own parameters, it finishes.
    ok(run(
        args("8,8", &["--resume"]),
        &[("TESSERA_UNIT_BYTES", "4096")],
    ));
}

/// Runs `script` (with `args`) in `dir` with a python that has `modules`, to make a test's
/// input; false when there is no such python (the test is skipped).
fn made_by_python(modules: &str, dir: &Path, script: &str, args: &[&str]) -> bool {
    let Some(py) = python_with(modules) else {
        return false;
    };
    let mut made = Command::new(&py);
    made.current_dir(dir).arg("-c").arg(script).args(args);
    succeeds(&mut made, "python (making the input)");
    true
}

/// Writes a pairs group (at argv[1]) that holds no pairs.
const EMPTY_PAIRS_GROUP: &str = "import sys, zarr, numpy as np
g = zarr.open_group(sys.argv[1], mode='w')
for n in ('patches1', 'patches2'):
    g.create_array(n, shape=(0, 1, 32, 32), chunks=(1, 1, 32, 32), dtype='float32')
g.create_array('deltas', shape=(0, 2), chunks=(1, 2), dtype='float32')
g.create_array('rotations', shape=(0,), chunks=(1,), dtype='int64')
g.attrs.update(window=32, num_patches=0, num_channels=1, patch_shape=[32, 32])
";

/// Writes `ext.h5` whose dataset `x` keeps its values in the external file `raw.bin`.
#[cfg(feature = "hdf5")]
const EXTERNAL_DATASET: &str = "import h5py, numpy as np
np.arange(2*48*48, dtype='<f4').tofile('raw.bin')
with h5py.File('ext.h5', 'w') as f:
    f.create_dataset('x', shape=(2, 1, 48, 48), dtype='<f4', external=[('raw.bin', 0, 2*48*48*4)])
";

#[test]
fn tokens_of_an_empty_pairs_group_is_one_clear_line() {
    let d = tempfile::tempdir().unwrap();
    let group = d.path().join("pairs.zarr");
    if !made_by_python("zarr", d.path(), EMPTY_PAIRS_GROUP, &[&s(&group)]) {
        return;
    }
    let out = tessera(&io_line(
        "tokens",
        &group,
        &d.path().join("t.zarr"),
        "--token-size 16",
    ));
    fails_with(out, &["holds no pairs", "nothing to tokenize"]);
    assert!(!d.path().join("t.zarr").exists());
}

#[cfg(feature = "hdf5")]
#[test]
fn hdf5_external_data_and_hard_links_are_named() {
    let d = tempfile::tempdir().unwrap();
    if !made_by_python("h5py", d.path(), EXTERNAL_DATASET, &[]) {
        return;
    }
    let file = d.path().join("ext.h5");
    let address = format!("{}:/x", s(&file));
    // Present (relative to the working directory, where HDF5 looks): readable.
    let info = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .current_dir(d.path())
        .args(["info", &address])
        .output()
        .unwrap();
    ok(info);
    std::fs::remove_file(d.path().join("raw.bin")).unwrap();
    fails_with(
        tessera(&["info", &address]),
        &["external raw file", "raw.bin", "do not exist"],
    );
    // An output that is a hard link of the input file is the input.
    let input = d.path().join("in.h5");
    let a = format!("{}:/a", s(&input));
    run_line(
        "quilt unstitch",
        &image(d.path()),
        &a,
        "--window 16,16 --step 8,8",
    );
    let link = d.path().join("link.h5");
    std::fs::hard_link(&input, &link).unwrap();
    let before = std::fs::read(&input).unwrap();
    fails_with(
        tessera(&io_line(
            "quilt unstitch",
            &a,
            &format!("{}:/b", s(&link)),
            "--window 8,8 --step 8,8",
        )),
        &["same HDF5 file"],
    );
    assert_eq!(std::fs::read(&input).unwrap(), before);
}
