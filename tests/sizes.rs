//! Sizes from the user (issue 13, item 6): every numeric flag of every command, fed the
//! extreme values 0, 1, 2^31, 2^32, 2^63 and u64::MAX (floats also -1, 0.5, NaN, inf), with
//! small valid inputs otherwise. Each run either succeeds with its output complete and nothing
//! left beside it, or is refused: exit code 1 (the library's one `error:` line) or 2 (clap's
//! usage error), never a panic, an abort, a hang or a `.lock`/`.partial`/`.journal`/temp file.
//!
//! The binary runs under an address-space limit (so a plan that allocates what it should have
//! refused fails here instead of pushing the test machine into swap) and a time limit.
//! Every table is exhaustive rather than sampled: each run takes milliseconds.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tessera::io::DType;

/// The six integer extremes of the issue.
const EXTREMES: [&str; 6] = [
    "0",
    "1",
    "2147483648",
    "4294967296",
    "9223372036854775808",
    "18446744073709551615",
];

/// Floats get the extremes and a few values only floats can have.
const FLOAT_EXTRA: [&str; 4] = ["-1", "0.5", "NaN", "inf"];

/// Address space given to each run: far above what the tiny inputs need, far below what an
/// unchecked plan would allocate.
const ADDRESS_SPACE: u64 = 8 << 30;
/// A run that takes longer than this is treated as hung (every valid one takes well under 1 s).
const TIME_LIMIT: Duration = Duration::from_secs(30);

/// One flag to vary: its name, the value forms (`{v}` is replaced by each value), and whether
/// it takes floats.
struct Flag {
    name: &'static str,
    forms: &'static [&'static str],
    float: bool,
}

const fn int(name: &'static str, forms: &'static [&'static str]) -> Flag {
    Flag {
        name,
        forms,
        float: false,
    }
}

const fn float(name: &'static str, forms: &'static [&'static str]) -> Flag {
    Flag {
        name,
        forms,
        float: true,
    }
}

/// One command: its fixed words, its default flags (each varied flag replaces its default),
/// where its output goes (`{out}` in the arguments is replaced by a fresh directory per run)
/// and what a successful run must have produced there.
struct Table {
    command: Vec<String>,
    defaults: Vec<(&'static str, String)>,
    flags: Vec<Flag>,
    produces: Vec<&'static str>,
}

enum Outcome {
    Exited {
        code: Option<i32>,
        stdout: String,
        stderr: String,
    },
    TimedOut,
}

/// Runs the binary with `args` under the address-space and time limits.
fn run_limited(args: &[String]) -> Outcome {
    let mut cmd = Command::new(&*BIN);
    cmd.args(args)
        .env("TESSERA_MPI", "0")
        .env("RAYON_NUM_THREADS", "2")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    limit_address_space(&mut cmd, ADDRESS_SPACE);
    let mut child = cmd.spawn().expect("spawn tessera");
    // Drain the pipes on threads so that a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Outcome::Exited {
                code: status.code(),
                stdout: out_reader.join().unwrap(),
                stderr: err_reader.join().unwrap(),
            };
        }
        if started.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Outcome::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Every path under `dir` (relative), files and directories.
fn listing(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if p.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn is_leftover(name: &str) -> bool {
    [".lock", ".partial", ".journal", ".tmp"]
        .iter()
        .any(|s| name.contains(s))
}

/// What is wrong with one run, if anything.
fn judge(outcome: &Outcome, out: &Path, produces: &[&str]) -> Option<String> {
    let Outcome::Exited {
        code,
        stdout,
        stderr,
    } = outcome
    else {
        return Some(format!("no exit within {TIME_LIMIT:?}"));
    };
    let files = listing(out);
    if stdout.contains("panicked") || stderr.contains("panicked") {
        return Some(format!("panicked: {}", first_lines(stderr)));
    }
    let leftovers: Vec<&String> = files.iter().filter(|f| is_leftover(f)).collect();
    if !leftovers.is_empty() {
        return Some(format!(
            "exit {code:?}, left {leftovers:?}; stderr: {}",
            first_lines(stderr)
        ));
    }
    match code {
        Some(0) => {
            let missing: Vec<&&str> = produces.iter().filter(|p| !out.join(p).exists()).collect();
            (!missing.is_empty()).then(|| format!("exit 0 but {missing:?} missing"))
        }
        Some(1) => {
            let lines: Vec<&str> = stderr.lines().collect();
            if lines.len() != 1 || !lines[0].starts_with("error: ") {
                return Some(format!(
                    "exit 1 with {} stderr lines: {}",
                    lines.len(),
                    first_lines(stderr)
                ));
            }
            (!files.is_empty()).then(|| format!("refused but left {files:?}: {}", lines[0]))
        }
        Some(2) => {
            // clap's usage error: one `error:` line, then its "For more information" tip.
            let errors = stderr.lines().filter(|l| l.starts_with("error:")).count();
            let other = stderr
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with("error:"))
                .filter(|l| !l.starts_with("For more information"))
                .count();
            if errors != 1 || other != 0 {
                return Some(format!("exit 2 with: {}", first_lines(stderr)));
            }
            (!files.is_empty()).then(|| format!("refused but left {files:?}"))
        }
        other => Some(format!(
            "exit {other:?} (killed or aborted): {}",
            first_lines(stderr)
        )),
    }
}

fn first_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut s = lines
        .iter()
        .take(3)
        .copied()
        .collect::<Vec<_>>()
        .join(" | ");
    if lines.len() > 3 {
        s.push_str(&format!(" | ... ({} lines)", lines.len()));
    }
    s
}

/// Runs every flag x form x value of `table` under `dir`; returns what failed.
fn check_table(dir: &Path, label: &str, table: &Table) -> Vec<String> {
    let mut failures = Vec::new();
    let mut runs = 0;
    for flag in &table.flags {
        let values: Vec<&str> = if flag.float {
            EXTREMES.iter().chain(&FLOAT_EXTRA).copied().collect()
        } else {
            EXTREMES.to_vec()
        };
        for form in flag.forms {
            for value in &values {
                runs += 1;
                let out = dir.join(format!("run{runs}"));
                std::fs::create_dir_all(&out).unwrap();
                let given = form.replace("{v}", value);
                let mut args = table.command.clone();
                let mut replaced = false;
                // `--flag=value`, so that clap takes `-1` as a value, not a flag.
                for (name, default) in &table.defaults {
                    if *name == flag.name {
                        args.push(format!("{name}={given}"));
                        replaced = true;
                    } else {
                        args.push((*name).to_string());
                        args.push(default.clone());
                    }
                }
                if !replaced {
                    args.push(format!("{}={given}", flag.name));
                }
                let args: Vec<String> = args
                    .into_iter()
                    .map(|a| a.replace("{out}", &s(&out)))
                    .filter(|a| !a.is_empty())
                    .collect();
                let t = Instant::now();
                let outcome = run_limited(&args);
                if t.elapsed() > Duration::from_secs(2) {
                    eprintln!("slow: {label} {} {given}: {:?}", flag.name, t.elapsed());
                }
                if let Some(why) = judge(&outcome, &out, &table.produces) {
                    failures.push(format!("{label} {} {given}: {why}", flag.name));
                }
                // Keep the disk small: a passing run's files are not needed any more.
                let _ = std::fs::remove_dir_all(&out);
            }
        }
    }
    eprintln!("{label}: {runs} runs, {} failed", failures.len());
    failures
}

/// Fails with every failure of every table of one test.
#[track_caller]
fn assert_none(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| (*s).to_string()).collect()
}

fn pairs(p: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    p.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

/// A (1, 1, 16, 16) float32 image for the quilt commands.
fn image(dir: &Path) -> PathBuf {
    let mut rng = Rng::new(3);
    let a = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[1, 1, 16, 16]), |_| {
        rng.below(1000) as f32 / 7.0
    });
    let p = dir.join("image.npy");
    ndarray_npy::write_npy(&p, &a).unwrap();
    p
}

/// Bare `.npy` patches of [`image`] (window 8,8, step 4,4: 9 patches) and labels beside them.
fn patches(dir: &Path) -> (PathBuf, PathBuf) {
    let img = image(dir);
    let p = dir.join("patches.npy");
    let geometry = ["--window", "8,8", "--step", "4,4"];
    run_io("quilt unstitch", &img, &p, &geometry);
    let mut rng = Rng::new(4);
    let labels = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[9, 1, 8, 8]), |_| {
        if rng.below(4) == 0 {
            1.0f32
        } else {
            -1.0
        }
    });
    let l = dir.join("labels.npy");
    ndarray_npy::write_npy(&l, &labels).unwrap();
    (p, l)
}

/// An (8, 16, 16) uint16 volume.
fn cube(dir: &Path) -> PathBuf {
    let mut rng = Rng::new(5);
    let a =
        ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[8, 16, 16]), |_| rng.below(60000) as u16);
    let p = dir.join("cube.npy");
    ndarray_npy::write_npy(&p, &a).unwrap();
    p
}

const ALL3: &[&str] = &["{v},{v},{v}", "{v},8,8", "4,{v},8"];
const ALL2: &[&str] = &["{v},{v}", "{v},8"];
const ONE: &[&str] = &["{v}"];

#[test]
fn convert_sizes() {
    let d = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let slices = d.path().join("slices");
    write_stack(&slices, "vol", &[0, 1, 2, 3], &[16, 16], DType::U16, 1);
    let table = Table {
        command: words(&io_args("convert", &slices, "{out}/o.zarr", &[])),
        defaults: pairs(&[("--chunks", "2,8,8")]),
        flags: vec![
            int("--chunks", ALL3),
            int("--shards", ALL3),
            int("--pyramid-levels", ONE),
            int("--pyramid-factor", &["{v}", "1,{v},{v}"]),
        ],
        produces: vec!["o.zarr"],
    };
    failures.extend(check_table(d.path(), "convert", &table));
    // The factor needs levels to matter.
    let table = Table {
        defaults: pairs(&[("--chunks", "2,8,8"), ("--pyramid-levels", "2")]),
        flags: vec![int("--pyramid-factor", &["{v}", "1,{v},{v}"])],
        ..table
    };
    failures.extend(check_table(d.path(), "convert --pyramid-levels 2", &table));
    assert_none(&failures);
}

#[test]
fn quilt_unstitch_sizes() {
    let d = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let img = image(d.path());
    let table = Table {
        command: words(&io_args("quilt unstitch", &img, "{out}/p.zarr", &[])),
        defaults: pairs(&[("--window", "8,8"), ("--step", "4,4"), ("--border", "1")]),
        flags: vec![
            int("--window", ALL2),
            int("--step", ALL2),
            int("--border", &["{v}", "{v},1"]),
            int("--patches-per-chunk", ONE),
        ],
        produces: vec!["p.zarr", "p_positions.npy"],
    };
    failures.extend(check_table(d.path(), "quilt unstitch", &table));
    assert_none(&failures);
}

#[test]
fn quilt_stitch_sizes() {
    let d = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let (p, _) = patches(d.path());
    let table = Table {
        command: words(&io_args("quilt stitch", &p, "{out}/s.zarr", &[])),
        defaults: pairs(&[
            ("--shape", "1,1,16,16"),
            ("--window", "8,8"),
            ("--step", "4,4"),
        ]),
        flags: vec![
            int(
                "--shape",
                &[
                    "{v},{v},{v},{v}",
                    "{v},1,16,16",
                    "1,{v},16,16",
                    "1,1,{v},16",
                ],
            ),
            int("--window", ALL2),
            int("--step", ALL2),
            int("--border", &["{v}"]),
            int("--chunks", &["{v},{v},{v},{v}", "1,1,{v},8"]),
            int("--memory-limit", &["{v}", "{v}K", "{v}G", "{v}T"]),
        ],
        produces: vec!["s.zarr"],
    };
    failures.extend(check_table(d.path(), "quilt stitch", &table));
    assert_none(&failures);
}

#[test]
fn quilt_weed_and_border_mask_sizes() {
    let d = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let (p, l) = patches(d.path());
    let weed = Table {
        command: words(&[
            "quilt",
            "weed",
            "--input",
            &s(&p),
            "--labels",
            &s(&l),
            "--output",
            "{out}/i.npy",
            "--labels-output",
            "{out}/l.npy",
            "--mask",
            "{out}/m.npy",
        ]),
        defaults: vec![],
        flags: vec![int("--border", &["{v}", "{v},1"])],
        produces: vec!["i.npy", "l.npy", "m.npy"],
    };
    failures.extend(check_table(d.path(), "quilt weed", &weed));
    let mask = Table {
        command: words(&["quilt", "border-mask", "--output", "{out}/m.npy"]),
        defaults: pairs(&[("--window", "8,8"), ("--border", "1")]),
        flags: vec![int("--window", ALL2), int("--border", &["{v}", "{v},1"])],
        produces: vec!["m.npy"],
    };
    failures.extend(check_table(d.path(), "quilt border-mask", &mask));
    assert_none(&failures);
}

#[test]
fn pyramid_sizes() {
    let d = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let c = cube(d.path());
    let table = Table {
        command: words(&io_args("pyramid", &c, "{out}/py.zarr", &[])),
        defaults: pairs(&[("--chunks", "4,8,8")]),
        flags: vec![
            int("--factor", &["{v}", "{v},2,2"]),
            int("--levels", ONE),
            int("--chunks", ALL3),
            int("--shards", ALL3),
        ],
        produces: vec!["py.zarr"],
    };
    failures.extend(check_table(d.path(), "pyramid", &table));

    let lap = d.path().join("lap.zarr");
    let laplacian = ["--chunks", "4,8,8", "--method", "laplacian"];
    run_io("pyramid", &c, &lap, &laplacian);
    let table = Table {
        command: words(&io_args("pyramid reconstruct", &lap, "{out}/r.zarr", &[])),
        defaults: vec![],
        flags: vec![int("--chunks", ALL3)],
        produces: vec!["r.zarr"],
    };
    failures.extend(check_table(d.path(), "pyramid reconstruct", &table));
    assert_none(&failures);
}

#[test]
fn patches_sizes() {
    let d = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let slice =
        ndarray::Array2::from_shape_fn((20, 24), |(y, x)| ((y * 24 + x) % 97) as f32 / 97.0);
    ndarray_npy::write_npy(d.path().join("s.npy"), &slice).unwrap();
    let manifest = d.path().join("m.csv");
    std::fs::write(&manifest, "path\ns.npy\ns.npy\n").unwrap();
    let table = Table {
        command: words(&[
            "patches",
            "--manifest",
            &s(&manifest),
            "--output",
            "{out}/p",
        ]),
        defaults: pairs(&[("--patch-size", "8"), ("--stride", "4")]),
        flags: vec![
            int("--patch-size", ONE),
            int("--stride", ONE),
            float("--min-std", ONE),
        ],
        produces: vec!["p"],
    };
    failures.extend(check_table(d.path(), "patches", &table));
    let zarr = Table {
        defaults: pairs(&[
            ("--patch-size", "8"),
            ("--stride", "4"),
            ("--format", "zarr"),
            ("--chunks", "4"),
        ]),
        flags: vec![int("--chunks", ONE), int("--shards", ONE)],
        ..table
    };
    failures.extend(check_table(d.path(), "patches --format zarr", &zarr));
    assert_none(&failures);
}

#[test]
fn crop_sizes() {
    let d = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    ok(tessera(&crop_test_args(
        "8",
        "24",
        &d.path().join("stem.npy"),
        &["--no-visualization"],
    )));
    let stem = d.path().join("stem_test_input.npy");
    let table = Table {
        command: words(&io_line("crop", &stem, "{out}/c.npy", "--no-visualization")),
        defaults: vec![],
        flags: vec![
            int("--margin-pixels", ONE),
            int("--chunk-size", ONE),
            float("--percentile", ONE),
            float("--target-retention", ONE),
            float("--min-retention", ONE),
        ],
        produces: vec!["c.npy"],
    };
    failures.extend(check_table(d.path(), "crop", &table));
    let manual = Table {
        defaults: pairs(&[("--center", "manual"), ("--manual-center", "12,12")]),
        flags: vec![float("--manual-center", &["{v},{v}", "{v},12"])],
        ..table
    };
    failures.extend(check_table(d.path(), "crop --center manual", &manual));
    let test_mode = Table {
        command: words(&[
            "crop",
            "--test-mode",
            "--output",
            "{out}/c.npy",
            "--no-visualization",
        ]),
        defaults: pairs(&[("--test-patterns", "4"), ("--test-size", "24")]),
        flags: vec![
            int("--test-patterns", ONE),
            int("--test-size", ONE),
            int("--seed", ONE),
        ],
        produces: vec!["c.npy"],
    };
    failures.extend(check_table(d.path(), "crop --test-mode", &test_mode));
    assert_none(&failures);
}

#[test]
fn hdr_synthetic_sizes() {
    let d = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let synthetic = Table {
        command: words(&["hdr", "synthetic", "--output", "{out}/sky"]),
        defaults: pairs(&[("--brackets", "2"), ("--exposures", "3"), ("--size", "16")]),
        flags: vec![
            int("--brackets", ONE),
            int("--exposures", ONE),
            int("--size", ONE),
            int("--seed", ONE),
        ],
        produces: vec!["sky"],
    };
    failures.extend(check_table(d.path(), "hdr synthetic", &synthetic));
    assert_none(&failures);
}

/// Ignored by default: one calibration takes about 15 s in a debug build (the solve and the
/// plot), so the 40 runs take minutes. `cargo test --test sizes -- --ignored` runs it.
#[test]
#[ignore]
fn hdr_calibrate_sizes() {
    let d = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let sky = d.path().join("sky");
    ok(tessera(&synthetic_args(
        &sky,
        "3",
        &["--exposures", "3", "--size", "32"],
    )));
    let calibrate = Table {
        command: words(&calibrate_args(&sky, "{out}/r.npz", &[])),
        defaults: pairs(&[("--samples-per-image", "50")]),
        flags: vec![
            int("--samples-per-image", ONE),
            int("--max-processed-groups", ONE),
            float("--smoothness", ONE),
            int("--low-clip", ONE),
            int("--high-clip", ONE),
            int("--seed", ONE),
        ],
        produces: vec!["r.npz"],
    };
    failures.extend(check_table(d.path(), "hdr calibrate", &calibrate));
    assert_none(&failures);
}
