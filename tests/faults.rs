//! Faults a cluster job meets: one rank killed with SIGKILL in the middle of a run (every
//! operation, under real `mpirun`), and an output file system that is full or read-only.
//! Each must leave the output clearly unfinished (never published at its final path, never
//! reported as done) and, where the job can go on, `--resume` must finish it to the same bytes
//! as an uninterrupted run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
#[cfg(feature = "mpi")]
use std::time::{Duration, Instant};

use common::*;
use tessera::io::DType;

/// One operation's command line, given its output path.
#[cfg(feature = "mpi")]
type Args = Box<dyn Fn(&Path) -> Vec<String>>;

/// Runs `args(out)` on 2 ranks, SIGKILLs rank 1 once it has finished one unit, checks that the
/// job fails and leaves only a staged output, resumes on 3 ranks and compares the files named
/// by `outputs` (relative to the output's directory) with an uninterrupted 1-rank run.
#[cfg(feature = "mpi")]
fn kill_one_rank_then_resume(dir: &Path, name: &str, args: &Args, outputs: &[&str], unit: &str) {
    let env = [("TESSERA_UNIT_BYTES", unit)];
    let clean_dir = dir.join(format!("{name}-clean"));
    let cut_dir = dir.join(format!("{name}-cut"));
    std::fs::create_dir_all(&clean_dir).unwrap();
    std::fs::create_dir_all(&cut_dir).unwrap();
    let clean = clean_dir.join(outputs[0]);
    let cut = cut_dir.join(outputs[0]);
    let clean_args = args(&clean);
    ok(tessera_mpi(
        1,
        &clean_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &env,
    ));

    let pid_file = dir.join(format!("{name}.stalled-pid"));
    let cut_args = args(&cut);
    let cut_refs: Vec<&str> = cut_args.iter().map(String::as_str).collect();
    let log = dir.join(format!("{name}.killed.log"));
    let mut job = mpi_command(
        2,
        &cut_refs,
        &[
            env[0],
            ("TESSERA_STALL_AFTER_UNITS", "1:1"),
            ("TESSERA_STALL_PID_FILE", pid_file.to_str().unwrap()),
        ],
    )
    .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
    .stderr(Stdio::from(
        std::fs::File::options().append(true).open(&log).unwrap(),
    ))
    .spawn()
    .expect("spawn mpirun");
    let started = Instant::now();
    let victim = loop {
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            break pid.trim().parse::<i32>().unwrap();
        }
        if let Some(status) = job.try_wait().unwrap() {
            panic!(
                "{name}: the job ended ({status}) before rank 1 stalled:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{name}: rank 1 never reached its first unit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: sending a signal to a process id; no memory is involved.
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    let status = loop {
        if let Some(status) = job.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(180) {
            let _ = job.kill();
            panic!("{name}: mpirun did not end after rank 1 was killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!("{name}: killed rank 1 (PID {victim}); mpirun {status}:\n{log_text}");
    assert!(
        !status.success(),
        "{name}: a job with a killed rank succeeded:\n{log_text}"
    );
    assert!(
        !cut.exists(),
        "{name}: an interrupted output was published at {}:\n{log_text}",
        cut.display()
    );
    let staged: Vec<String> = std::fs::read_dir(&cut_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(
        !staged.is_empty(),
        "{name}: nothing marks the output unfinished:\n{log_text}"
    );
    assert!(
        !cut_dir.join(format!("{}.report.json", outputs[0])).exists(),
        "{name}: an interrupted run wrote a report"
    );

    // Resume on another rank count; rank 0 of the killed job may have left its lock behind
    // (mpirun kills the survivors without cleanup): it is stale and taken over.
    let resume = resumed(&cut_refs);
    ok(tessera_mpi(3, &resume, &env));
    for f in outputs {
        let (a, b) = (clean_dir.join(f), cut_dir.join(f));
        if a.join("patch_meta.json").is_file() {
            // A patch dataset: every byte but the meta's `created`; its paths are relative
            // to the data root, so they name the run's own directory.
            let relabel = |t: Vec<(String, Vec<u8>)>, from: &str| -> Vec<(String, Vec<u8>)> {
                t.into_iter()
                    .map(|(n, bytes)| {
                        if n.ends_with(".csv") || n.ends_with(".json") {
                            let text = String::from_utf8(bytes).unwrap().replace(from, "RUN");
                            (n, text.into_bytes())
                        } else {
                            (n, bytes)
                        }
                    })
                    .collect()
            };
            let ta = relabel(tree_without_created(&a), &format!("{name}-clean/"));
            let tb = relabel(tree_without_created(&b), &format!("{name}-cut/"));
            assert!(ta == tb, "{name}: {f} differs after kill -9 and --resume");
        } else if a.is_dir() {
            assert_same_tree(&a, &b);
        } else {
            assert!(
                std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
                "{name}: {f} differs after kill -9 and --resume"
            );
        }
    }
    assert!(!cut_dir.join(format!("{}.lock", outputs[0])).exists());
}

/// The arguments of `<command> --input <input> --output <out> <flags>` for any `out`.
#[cfg(feature = "mpi")]
fn io_run(command: &'static str, input: String, flags: &'static str) -> Args {
    Box::new(move |out| strs(&io_line(command, &input, out, flags)))
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_string()).collect()
}

/// `n` synthetic `size`x`size` 4D-STEM patterns (crop's test mode) in `dir`; returns the input
/// file crop wrote for them.
fn stem_patterns(dir: &Path, n: usize, size: usize) -> PathBuf {
    ok(tessera(&crop_test_args(
        &n.to_string(),
        &size.to_string(),
        &dir.join("stem.npy"),
        &["--no-visualization"],
    )));
    dir.join("stem_test_input.npy")
}

/// An all-sky archive of `brackets` brackets of 3 exposures, `size`x`size`, in `dir/sky`.
fn sky_archive(dir: &Path, brackets: usize, size: usize) -> PathBuf {
    let sky = dir.join("sky");
    ok(tessera(&synthetic_args(
        &sky,
        &brackets.to_string(),
        &["--exposures", "3", "--size", &size.to_string()],
    )));
    sky
}

#[cfg(feature = "mpi")]
#[test]
fn a_rank_killed_with_sigkill_leaves_a_resumable_output_in_every_operation() {
    let Some(d) = mpi_tempdir() else { return };
    let dir = d.path();

    // convert: 12 slices of 32x32, 2 slices per unit.
    let slices = dir.join("slices");
    write_slices(&slices, "vol", 12, &[32, 32], DType::U16, 5);
    let slices_s = s(&slices);
    let convert = io_run("convert", slices_s, "--chunks 2,32,32");
    kill_one_rank_then_resume(dir, "convert", &convert, &["o.zarr"], "2048");

    // quilt unstitch of a (2,1,16,32,32) float volume, then stitch of its patches.
    let mut rng = Rng::new(9);
    let vol = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[2, 1, 16, 32, 32]), |_| {
        rng.below(1000) as f32 / 7.0
    });
    let vol_path = dir.join("vol.npy");
    ndarray_npy::write_npy(&vol_path, &vol).unwrap();
    let vol_s = s(&vol_path);
    let unstitch = io_run(
        "quilt unstitch",
        vol_s,
        "--window 8,16,16 --step 4,8,8 --border 1,2,2 --patches-per-chunk 4",
    );
    kill_one_rank_then_resume(dir, "unstitch", &unstitch, &["p.zarr"], "8192");
    let patches = s(&dir.join("unstitch-clean/p.zarr"));
    let stitch: Args = Box::new(move |out| {
        let weights = out.with_file_name("w.npy");
        strs(&io_args(
            "quilt stitch",
            &patches,
            out,
            &["--weights", &s(&weights), "--chunks", "1,1,4,16,16"],
        ))
    });
    kill_one_rank_then_resume(dir, "stitch", &stitch, &["st.zarr", "w.npy"], "4096");

    // pyramid (gaussian) of a (24,40,40) u16 volume, in several stages.
    let mut rng = Rng::new(11);
    let cube =
        ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[24, 40, 40]), |_| rng.below(60000) as u16);
    let cube_path = dir.join("cube.npy");
    ndarray_npy::write_npy(&cube_path, &cube).unwrap();
    let cube_s = s(&cube_path);
    let pyramid = io_run("pyramid", cube_s, "--chunks 4,8,8 --method gaussian");
    kill_one_rank_then_resume(dir, "pyramid", &pyramid, &["py.zarr"], "4096");

    // crop of 40 synthetic 48x48 patterns, 4 per unit.
    let stem_input = s(&stem_patterns(dir, 40, 48));
    let crop = io_run("crop", stem_input, "--chunk-size 4 --no-visualization");
    kill_one_rank_then_resume(
        dir,
        "crop",
        &crop,
        &["c.npy", "c_radii.npy", "c_centers.npy", "c_retention.npy"],
        "1000000",
    );

    // hdr merge (Mertens, no response needed) of 6 brackets into one Zarr array.
    let sky_s = s(&sky_archive(dir, 6, 32));
    let hdr = io_run("hdr merge", sky_s, "--method mertens --format zarr");
    kill_one_rank_then_resume(dir, "hdr", &hdr, &["sky.zarr"], "1000000");

    // patches of the 12 convert slices (32x32, 9 patches of 16 each), to .npy files and to
    // Zarr chunks of 4 patches, 2 slices (or 4 chunks) per unit.
    for format in ["npy", "zarr"] {
        let slices_s = s(&slices);
        let patches: Args = Box::new(move |out| {
            let mut args = strs(&io_args(
                "patches",
                &slices_s,
                out,
                &["--patch-size", "16", "--stride", "8", "--format", format],
            ));
            if format == "zarr" {
                // Raw chunks: each streamed to its file as its patches are cut.
                args.extend(strs(&["--chunks", "4", "--codec", "none"]));
            }
            args
        });
        let name = format!("patches-{format}");
        kill_one_rank_then_resume(dir, &name, &patches, &["pt"], "18432");
    }
}

/// A file system of `size` bytes mounted on `dir` (tmpfs), if this machine lets us mount one.
/// Tests run as root in CI, where permission bits are not enforced; a real, size-limited or
/// read-only mount is the only honest way to make the disk refuse writes.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, options: &str) -> Option<Mount> {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tessera-test"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A mount, or a skip message (a failure where `TESSERA_REQUIRE_MOUNT=1`).
fn mount_or_skip(dir: &Path, options: &str) -> Option<Mount> {
    let m = Mount::tmpfs(dir, options);
    if m.is_none() {
        assert!(
            std::env::var("TESSERA_REQUIRE_MOUNT").as_deref() != Ok("1"),
            "cannot mount a tmpfs but TESSERA_REQUIRE_MOUNT=1"
        );
        eprintln!("skipping: cannot mount a tmpfs here (needs root and mount rights)");
    }
    m
}

fn big_stack(dir: &Path) -> PathBuf {
    let slices = dir.join("slices");
    write_slices(&slices, "vol", 16, &[128, 128], DType::U16, 3);
    slices
}

/// A temporary directory with [`big_stack`] in it and a tmpfs (`options`) mounted at `disk`
/// beside it, or `None` where no tmpfs can be mounted (see [`mount_or_skip`]).
fn stack_and_tmpfs(
    disk: &str,
    options: &str,
) -> Option<(tempfile::TempDir, PathBuf, PathBuf, Mount)> {
    let d = tempfile::tempdir().unwrap();
    let slices = big_stack(d.path());
    let disk = d.path().join(disk);
    let mount = mount_or_skip(&disk, options)?;
    Some((d, slices, disk, mount))
}

/// Removes everything under `dir` (the next case starts from an empty disk).
fn empty(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_nothing_is_reported_done() {
    let d = tempfile::tempdir().unwrap();
    let slices = big_stack(d.path());
    // Inputs for the other operations (outside the small disk).
    let stack = d.path().join("stack.npy");
    run_io("convert", &slices, &stack, &[]);
    let nczyx = d.path().join("nczyx.npy");
    let vol = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[1, 1, 16, 64, 64]), |i| {
        (i[2] * 4096 + i[3] * 64 + i[4]) as f32
    });
    ndarray_npy::write_npy(&nczyx, &vol).unwrap();
    let stem = stem_patterns(d.path(), 60, 48);
    let sky = sky_archive(d.path(), 6, 64);

    let disk = d.path().join("small-disk");
    // 128 KiB: room for metadata and a few chunks, not for any of the outputs below.
    let Some(_mount) = mount_or_skip(&disk, "size=128k") else {
        return;
    };
    let on_disk = |name: &str| s(&disk.join(name));
    let (slices_s, stack_s, nczyx_s, stem_s, sky_s) =
        (s(&slices), s(&stack), s(&nczyx), s(&stem), s(&sky));
    // (case, command, input, output on the small disk, flags)
    #[rustfmt::skip]
    let mut rows: Vec<(&str, &str, &str, &str, &str)> = vec![
        ("convert to Zarr", "convert", &slices_s, "o.zarr", "--codec none"),
        ("convert to .npy", "convert", &slices_s, "o.npy", ""),
        ("quilt unstitch", "quilt unstitch", &nczyx_s, "p.zarr", "--window 8,32,32 --step 4,16,16 --codec none"),
        ("pyramid", "pyramid", &stack_s, "py.zarr", "--codec none"),
        ("crop", "crop", &stem_s, "c.npy", "--target-retention 0.999 --min-retention 0.9"),
        ("hdr merge to Zarr", "hdr merge", &sky_s, "sky.zarr", "--method mertens --format zarr"),
        ("patches to .npy files", "patches", &slices_s, "pn", "--patch-size 32 --stride 32"),
        ("patches to Zarr", "patches", &slices_s, "pz", "--patch-size 32 --stride 32 --format zarr --codec none"),
        ("hdr merge to .npy files", "hdr merge", &sky_s, "sky", "--method mertens --format npy"),
    ];
    if cfg!(feature = "hdf5") {
        rows.push((
            "convert to HDF5",
            "convert",
            &slices_s,
            "o.h5:/data",
            "--codec none",
        ));
    }
    let cases: Vec<(&str, Vec<String>)> = rows
        .iter()
        .map(|&(case, command, input, output, flags)| {
            (
                case,
                strs(&io_line(command, input, &on_disk(output), flags)),
            )
        })
        .collect();
    // Outputs stored uncompressed are refused while planning (their size is known), before
    // anything is created on the disk, --dry-run too; compressed ones (zstd) only at a write.
    let planned = |name: &str| !name.starts_with("hdr merge to Zarr");
    let dry: Vec<(&str, Vec<String>)> = cases
        .iter()
        .filter(|(name, _)| planned(name))
        .map(|(name, args)| {
            let mut args = args.clone();
            args.push("--dry-run".into());
            (*name, args)
        })
        .collect();
    for (name, args) in &dry {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = fails_with(
            tessera(&refs),
            &[
                "on disk (stored uncompressed)",
                "free on the file system of",
            ],
        );
        assert!(
            std::fs::read_dir(&disk).unwrap().next().is_none(),
            "{name} --dry-run: wrote {:?}",
            std::fs::read_dir(&disk)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        );
        eprintln!("{name} --dry-run: {}", err.lines().last().unwrap_or(""));
    }
    for (name, args) in &cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = fails_with(tessera(&refs), &[]);
        eprintln!("{name}: {}", err.lines().last().unwrap_or(""));
        if planned(name) {
            assert!(
                err.contains("on disk (stored uncompressed)")
                    && err.contains("free on the file system of"),
                "{name}: not refused while planning: {err}"
            );
            let left: Vec<_> = std::fs::read_dir(&disk)
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert!(left.is_empty(), "{name}: refused but wrote {left:?}");
            continue;
        }
        assert!(
            err.contains("No space left on device")
                || err.contains("on disk (stored uncompressed)"),
            "{name}: the error does not say the disk is full: {err}"
        );
        let output = args[args.iter().position(|a| a == "--output").unwrap() + 1].clone();
        // The file behind the address (`o.h5:/data` is the file `o.h5`).
        let file = output.strip_suffix(":/data").unwrap_or(&output).to_string();
        let published = Path::new(&file);
        // hdr's per-bracket files are each published whole; a full disk may come after some.
        if *name == "hdr merge to .npy files" {
            for e in std::fs::read_dir(published).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                assert!(
                    n.ends_with(".npy")
                        || n.ends_with(".partial")
                        || n.ends_with(".tmp")
                        || n.starts_with('.'),
                    "{name}: unexpected file {n}"
                );
            }
        } else {
            assert!(
                !published.exists(),
                "{name}: a partial output was published"
            );
        }
        let report = format!("{file}.report.json");
        assert!(
            !Path::new(&report).exists(),
            "{name}: a failed run wrote a report"
        );
        empty(&disk);
    }
}

#[test]
fn a_read_only_output_directory_is_a_clear_error() {
    let Some((_d, slices, disk, _mount)) = stack_and_tmpfs("read-only", "size=1m,ro") else {
        return;
    };
    for out in ["o.zarr", "o.npy", "patches"] {
        let command = if out == "patches" {
            "patches"
        } else {
            "convert"
        };
        let err = fails_with(
            tessera(&[
                command,
                "--input",
                &s(&slices),
                "--output",
                &s(&disk.join(out)),
            ]),
            &[],
        );
        assert!(
            err.contains("Read-only file system") || err.contains("read-only"),
            "{out}: the error does not say the file system is read-only: {err}"
        );
        eprintln!("{out}: {err}");
        assert!(std::fs::read_dir(&disk).unwrap().next().is_none());
    }
}

/// Adding a dataset to an HDF5 file on a disk without room for the commit's copy: refused
/// before the file is touched, with one line saying how much is needed and what to do; once
/// there is room, `--resume` adds it.
#[cfg(feature = "hdf5")]
#[test]
fn adding_to_an_hdf5_file_on_a_full_disk_leaves_the_file_whole() {
    let Some((_d, slices, disk, _mount)) = stack_and_tmpfs("small-disk", "size=4m") else {
        return;
    };
    let file = disk.join("f.h5");
    let convert = |dataset: &str, extra: &[&str]| {
        let mut args = vec![
            "convert".to_string(),
            "--input".into(),
            s(&slices),
            "--output".into(),
            format!("{}:{dataset}", s(&file)),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        tessera(&refs)
    };
    ok(run(convert("/a", &[])));
    let before = std::fs::read(&file).unwrap();
    let e = fails_with(
        run(convert("/b", &[])),
        &["f.h5", "adding /b needs", "MiB free", "--resume"],
    );
    assert!(!e.contains("Segmentation"), "{e}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the file was touched"
    );
    assert!(!disk.join("f.h5.b.committing").exists());
    // Room again (the tmpfs grown), the staged dataset is added.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(grown.success());
    ok(run(convert("/b", &["--resume"])));
    assert_eq!(
        read_all(&format!("{}:/b", s(&file))),
        read_all(&format!("{}:/a", s(&file)))
    );
}

/// A disk too full to hold even the lock: one line, and no empty lock or temporary left to
/// block the next run.
#[test]
fn a_disk_too_full_for_the_lock_leaves_no_lock() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("in.npy");
    let image = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[1, 1, 32, 32]), |i| i[3] as f32);
    ndarray_npy::write_npy(&input, &image).unwrap();
    let disk = d.path().join("full-disk");
    // Out of inodes, not bytes: the plan's disk check passes, creating the lock fails.
    let Some(_mount) = mount_or_skip(&disk, "size=1m,nr_inodes=64") else {
        return;
    };
    let mut fill = Vec::new();
    for i in 0..128 {
        let f = disk.join(format!("fill{i}"));
        if std::fs::write(&f, b"").is_err() {
            break;
        }
        fill.push(f);
    }
    let out = disk.join("o.zarr");
    let args = io_line(
        "quilt unstitch",
        &input,
        &out,
        "--window 16,16 --step 16,16",
    );
    fails_with(tessera(&args), &["o.zarr.lock", "No space left on device"]);
    let left = std::fs::read_dir(&disk).unwrap().count();
    assert_eq!(left, fill.len(), "something was left beside the filling");
    // Room again: the next run goes through.
    for f in &fill {
        std::fs::remove_file(f).unwrap();
    }
    ok(tessera(&args));
}
