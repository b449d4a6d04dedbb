//! Never lose a user's file: every command refuses to write on, inside or around its inputs,
//! refuses side files and reports that exist unless `--overwrite`, replaces only what it wrote,
//! adds datasets to an existing HDF5 file without touching the others, and refuses to resume
//! a run whose parameters changed, naming the flag.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::write_npy;

fn random_f32(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = Rng::new(seed);
    ArrayD::from_shape_fn(IxDyn(shape), |_| rng.below(1000) as f32 / 10.0)
}

/// `in.npy`, a (2, 1, 48, 48) image, in `dir`.
fn image(dir: &Path) -> PathBuf {
    let p = dir.join("in.npy");
    write_npy(&p, &random_f32(&[2, 1, 48, 48], 1)).unwrap();
    p
}

/// Patches of `image`, as `p.zarr` (with their `quilt` attribute).
fn patches(dir: &Path, blend: &str) -> PathBuf {
    let input = image(dir);
    let out = dir.join("p.zarr");
    run_io(
        "quilt unstitch",
        &input,
        &out,
        &[
            "--window",
            "16,16",
            "--step",
            "8,8",
            "--border",
            "2",
            "--blend",
            blend,
            "--overwrite",
        ],
    );
    out
}

/// crop's side files beside its output `c.npy`.
const CROP_SIDE_FILES: [&str; 5] = [
    "c_radii.npy",
    "c_retention.npy",
    "c_centers.npy",
    "c_results.json",
    "c_visualization.png",
];

/// A temporary directory with [`patches`] (border blend) of its image, and a [`snapshot`] of it.
fn border_patches() -> (tempfile::TempDir, PathBuf, Vec<(String, Vec<u8>)>) {
    let d = tempfile::tempdir().unwrap();
    let p = patches(d.path(), "border");
    let before = snapshot(d.path());
    (d, p, before)
}

/// Every file under `dir` with its bytes (to show that a refused command changed nothing).
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    tree(dir)
}

#[test]
fn outputs_on_or_inside_an_input_are_refused_and_the_input_survives() {
    let (d, p, before) = border_patches();
    let dir = d.path();
    let input = dir.join("in.npy");
    let unstitch = |out: &str, extra: &[&str]| {
        with(
            &io_line("quilt unstitch", &input, out, "--window 16,16 --step 8,8"),
            extra,
        )
    };
    // The output is the input, with and without --overwrite, spelled several ways.
    for out in [s(&input), format!("{}/./in.npy", dir.display())] {
        fails_with(unstitch(&out, &["--overwrite"]), &["is the input"]);
    }
    let stitch = |out: &str, extra: &[&str]| with(&io_args("quilt stitch", &p, out, &[]), extra);
    fails_with(
        stitch(&format!("{}/", p.display()), &["--overwrite"]),
        &["is the input"],
    );
    // Inside the input store (an array inside an array), with and without --overwrite.
    fails_with(
        stitch(&format!("{}/c", p.display()), &[]),
        &["lies inside the input"],
    );
    fails_with(
        stitch(&format!("{}/c", p.display()), &["--overwrite"]),
        &["lies inside"],
    );
    // Through a symlink to the input's directory.
    std::os::unix::fs::symlink(dir, dir.join("alias")).unwrap();
    fails_with(
        stitch(&s(&dir.join("alias/p.zarr")), &["--overwrite"]),
        &["is the input"],
    );
    std::fs::remove_file(dir.join("alias")).unwrap();
    // Positions or weights on the input, or two outputs on one path.
    fails_with(
        unstitch(
            &s(&dir.join("q.zarr")),
            &["--positions", input.to_str().unwrap(), "--overwrite"],
        ),
        &["is the input"],
    );
    fails_with(
        stitch(
            &s(&dir.join("m.zarr")),
            &["--weights", &s(&dir.join("m.zarr"))],
        ),
        &["is also"],
    );
    assert_eq!(snapshot(dir), before, "a refused command changed files");
}

#[test]
fn an_output_store_around_its_input_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let p = patches(dir, "border");
    // Stitch into a group of the store, then pyramid that array into the store's root.
    let store = new_dir(dir.join("s.zarr"));
    let a = format!("{}/a", store.display());
    run_io("quilt stitch", &p, &a, &[]);
    let before = snapshot(dir);
    fails_with(
        tessera(&io_line("pyramid", &a, &store, "--axes tcyx --overwrite")),
        &["contains the input"],
    );
    assert_eq!(snapshot(dir), before);
    // A sibling array in the same store is fine.
    run_line(
        "pyramid",
        &a,
        &format!("{}/b", store.display()),
        "--axes tcyx",
    );
}

#[test]
fn overwrite_replaces_only_what_tessera_writes() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let p = patches(dir, "border");
    let stitch = |out: &Path| tessera(&io_line("quilt stitch", &p, &out, "--overwrite"));
    // A directory of someone's files named like a store.
    let plain = new_dir(dir.join("plain.zarr"));
    std::fs::write(plain.join("thesis.tex"), b"years of work").unwrap();
    fails_with(stitch(&plain), &["without Zarr metadata", "plain.zarr"]);
    assert_eq!(
        std::fs::read(plain.join("thesis.tex")).unwrap(),
        b"years of work"
    );
    // A file named .npy that is not one, and a directory named .npy.
    std::fs::write(dir.join("notes.npy"), b"not numpy").unwrap();
    fails_with(stitch(&dir.join("notes.npy")), &["not a .npy file"]);
    std::fs::create_dir(dir.join("d.npy")).unwrap();
    fails_with(stitch(&dir.join("d.npy")), &["is a directory"]);
    // A file named .zarr.
    std::fs::write(dir.join("f.zarr"), b"x").unwrap();
    fails_with(
        stitch(&dir.join("f.zarr")),
        &["is a file, not a Zarr store"],
    );
    // A new array inside an existing array (not a group), without --overwrite.
    ok(stitch(&dir.join("m.zarr")));
    fails_with(
        tessera(&io_args("quilt stitch", &p, &dir.join("m.zarr/x"), &[])),
        &["is a Zarr array"],
    );
    // Its own output is replaced.
    ok(stitch(&dir.join("m.zarr")));
}

#[test]
fn reports_and_side_files_are_never_overwritten_without_asking() {
    let (d, p, before) = border_patches();
    let dir = d.path();
    let input = dir.join("in.npy");
    let stitch = |out: &Path, extra: &[&str]| with(&io_args("quilt stitch", &p, &out, &[]), extra);
    let out = dir.join("m.zarr");
    // --report on or inside an input, an existing file, the patches' report, inside the output.
    fails_with(
        stitch(&out, &["--report", &s(&p), "--overwrite"]),
        &["--report", "is the input"],
    );
    fails_with(
        stitch(&out, &["--report", &s(&p.join("zarr.json")), "--overwrite"]),
        &["--report", "lies inside the input"],
    );
    fails_with(
        stitch(&out, &["--report", input.to_str().unwrap()]),
        &["exists", "--overwrite"],
    );
    let existing = dir.join("p.zarr.report.json");
    fails_with(
        stitch(&out, &["--report", existing.to_str().unwrap()]),
        &["exists"],
    );
    fails_with(
        stitch(&out, &["--report", &format!("{}/r.json", out.display())]),
        &["--report", "lies inside output"],
    );
    assert_eq!(snapshot(dir), before, "a refused command wrote something");
    // Two arrays in one store each keep their default report.
    let store = new_dir(dir.join("s.zarr"));
    ok(stitch(&store.join("a"), &[]));
    ok(stitch(&store.join("b"), &[]));
    assert!(
        dir.join("s.zarr.a.report.json").is_file() && dir.join("s.zarr.b.report.json").is_file()
    );
    // The default report of a finished run is refused the next time unless --overwrite.
    ok(stitch(&out, &[]));
    std::fs::remove_dir_all(&out).unwrap();
    fails_with(stitch(&out, &[]), &["m.zarr.report.json", "exists"]);
    assert!(
        !out.exists(),
        "the output was written before the report was refused"
    );
    ok(stitch(&out, &["--overwrite"]));
}

#[test]
fn crop_side_files_are_refused_one_by_one() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let out = dir.join("c.npy");
    let crop = |extra: &[&str]| with(&crop_test_args("8", "32", &out, &[]), extra);
    ok(crop(&[]));
    let all = snapshot(dir);
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_file(dir.join("c.npy.report.json")).unwrap();
    std::fs::remove_file(dir.join("c_test_input.npy")).unwrap();
    for side in CROP_SIDE_FILES {
        let keep = dir.join(format!("{side}.keep"));
        // Only this one side file is present: the run is refused before writing anything.
        for other in CROP_SIDE_FILES {
            if other != side {
                let _ = std::fs::rename(dir.join(other), dir.join(format!("{other}.keep")));
            }
        }
        let _ = std::fs::rename(&keep, dir.join(side));
        let bytes = std::fs::read(dir.join(side)).unwrap();
        fails_with(crop(&[]), &[side, "exists", "--overwrite"]);
        assert_eq!(std::fs::read(dir.join(side)).unwrap(), bytes);
        assert!(!out.exists() && !dir.join("c_test_input.npy").exists());
        let _ = std::fs::rename(dir.join(side), &keep);
    }
    for side in CROP_SIDE_FILES {
        std::fs::rename(dir.join(format!("{side}.keep")), dir.join(side)).unwrap();
    }
    // With --overwrite every file is replaced, by the same bytes (the run is deterministic).
    ok(crop(&["--overwrite"]));
    let again = snapshot(dir);
    for (name, bytes) in &all {
        if name.ends_with(".npy") && !name.contains("report") {
            let now = again.iter().find(|(n, _)| n == name).unwrap();
            assert_eq!(&now.1, bytes, "{name}");
        }
    }
}

#[test]
fn hdr_response_plot_and_synthetic_images_are_not_replaced_silently() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let sky = dir.join("sky");
    let synth = |extra: &[&str]| {
        with(
            &synthetic_args(&sky, "2", &["--exposures", "3", "--size", "32"]),
            extra,
        )
    };
    ok(synth(&[]));
    let images = snapshot(&sky);
    fails_with(synth(&["--seed", "5"]), &["exists", "--overwrite"]);
    assert_eq!(snapshot(&sky), images);
    ok(synth(&["--seed", "5", "--overwrite"]));
    assert_ne!(snapshot(&sky), images);
    // The response plot beside a new response file.
    let response = dir.join("response.npz");
    std::fs::write(dir.join("response_curve.png"), b"my plot").unwrap();
    let calibrate = |extra: &[&str]| {
        with(
            &calibrate_args(&sky, &response, &["--samples-per-image", "50"]),
            extra,
        )
    };
    fails_with(calibrate(&[]), &["response_curve.png", "exists"]);
    assert!(!response.exists());
    assert_eq!(
        std::fs::read(dir.join("response_curve.png")).unwrap(),
        b"my plot"
    );
    ok(calibrate(&["--overwrite"]));
    assert_ne!(
        std::fs::read(dir.join("response_curve.png")).unwrap(),
        b"my plot"
    );
    // The response inside the archive it calibrates from is refused (a later scan would find
    // the plot among the images).
    fails_with(
        tessera(&[
            "hdr",
            "calibrate",
            "--input",
            &s(&sky),
            "--recursive",
            "--response",
            &s(&sky.join("r.npz")),
        ]),
        &["lies inside the input"],
    );
    // A merge into the archive directory itself.
    fails_with(
        tessera(&[
            "hdr",
            "merge",
            "--input",
            &s(&sky),
            "--response",
            &s(&response),
            "--output",
            &s(&sky),
            "--format",
            "npy",
            "--overwrite",
        ]),
        &["is the input"],
    );
}

/// Interrupts `args` after one unit, then resumes with `changed` added: refused, naming
/// `flag`; then resumes as it was started: finishes.
fn resume_with_a_change(args: &[String], changed: &[&str], flag: &str) {
    let env = [
        ("TESSERA_UNIT_BYTES", "4096"),
        ("TESSERA_ABORT_AFTER_UNITS", "1"),
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let killed = tessera_env(&refs, &env);
    assert!(
        !killed.status.success(),
        "the run was not interrupted:\n{}",
        text(&killed)
    );
    let resumed = resumed(&refs);
    let mut different = resumed.clone();
    different.extend(changed);
    fails_with(
        tessera_env(&different, &env[..1]),
        &["--resume", &format!("--{flag} (was ")],
    );
    ok(tessera_env(&resumed, &env[..1]));
}

/// `tessera` with a command line and some flags added to it.
fn with(base: &[&str], extra: &[&str]) -> std::process::Output {
    tessera(&[base, extra].concat())
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn resume_refuses_changed_parameters_in_every_command() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let p = patches(dir, "border");
    let input = s(&dir.join("in.npy"));
    let o = |name: &str| s(&dir.join(name));
    resume_with_a_change(
        &strings(&io_args("quilt stitch", &p, &o("st.zarr"), &[])),
        &["--codec", "gzip"],
        "codec",
    );
    resume_with_a_change(
        &strings(&io_args("quilt stitch", &p, &o("st2.zarr"), &[])),
        &["--blend", "hann"],
        "blend",
    );
    resume_with_a_change(
        &strings(&io_line(
            "quilt unstitch",
            &input,
            &o("u.zarr"),
            "--window 16,16 --step 8,8",
        )),
        &["--border", "3"],
        "border",
    );
    resume_with_a_change(
        &strings(&io_line(
            "pyramid",
            &input,
            &o("pl.zarr"),
            "--method laplacian --chunks 1,1,8,8 --axes tcyx",
        )),
        &["--codec", "none"],
        "codec",
    );
    resume_with_a_change(
        &strings(&io_line(
            "pyramid reconstruct",
            &o("pl.zarr"),
            &o("back.zarr"),
            "--chunks 1,1,8,8",
        )),
        &["--codec", "gzip"],
        "codec",
    );
    ok(tessera(&crop_test_args(
        "64",
        "32",
        &o("t.npy"),
        &["--no-visualization"],
    )));
    resume_with_a_change(
        &strings(&io_line(
            "crop",
            &o("t_test_input.npy"),
            &o("c.zarr"),
            "--chunk-size 4 --no-visualization",
        )),
        &["--codec", "gzip"],
        "codec",
    );
    let stack = dir.join("stack");
    write_slices(&stack, "s", 6, &[16, 16], tessera::io::DType::U16, 3);
    resume_with_a_change(
        &strings(&io_line(
            "convert",
            &stack,
            &o("conv.zarr"),
            "--chunks 1,16,16",
        )),
        &["--dtype", "f32"],
        "dtype",
    );
}

#[test]
fn an_interrupted_per_bracket_merge_resumes_only_with_its_parameters() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let sky = dir.join("sky");
    let synthetic = synthetic_args(&sky, "3", &["--exposures", "3", "--size", "24"]);
    let synth = |extra: &[&str]| {
        ok(with(&synthetic, extra));
    };
    synth(&[]);
    // The last bracket's first image is unreadable: the merge stops after two brackets.
    let mut names: Vec<PathBuf> = std::fs::read_dir(&sky)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    std::fs::write(names.last().unwrap(), b"broken").unwrap();
    let out = dir.join("merged");
    let merge = |extra: &[&str]| {
        with(
            &[
                "hdr",
                "merge",
                "--input",
                sky.to_str().unwrap(),
                "--method",
                "mertens",
                "--format",
                "npy",
                "--output",
                out.to_str().unwrap(),
            ],
            extra,
        )
    };
    assert!(!merge(&[]).status.success());
    synth(&["--overwrite"]);
    fails_with(
        merge(&["--resume", "--preview", "png"]),
        &["--preview (was null"],
    );
    ok(merge(&["--resume"]));
    let files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".npy")).count(),
        3,
        "{files:?}"
    );
    assert!(files.contains(&".tessera-merge.json".to_string()));
}

#[test]
fn stitch_flags_that_contradict_the_patches_are_refused_and_weighting_flags_honoured() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let p = patches(dir, "border");
    let stitch = |out: &str, extra: &[&str]| with(&io_args("quilt stitch", &p, out, &[]), extra);
    let o = |name: &str| s(&dir.join(name));
    fails_with(
        stitch(&o("a.npy"), &["--window", "32,32"]),
        &["--window", "contradicts", "16,16"],
    );
    fails_with(
        stitch(&o("a.npy"), &["--step", "4"]),
        &["--step", "contradicts"],
    );
    fails_with(
        stitch(&o("a.npy"), &["--border", "0"]),
        &["--border", "contradicts"],
    );
    fails_with(
        stitch(&o("a.npy"), &["--shape", "2,1,64,64"]),
        &["--shape", "contradicts"],
    );
    // Flags that agree with the attribute are accepted.
    ok(stitch(
        &o("same.npy"),
        &[
            "--window",
            "16",
            "--step",
            "8,8",
            "--border",
            "2",
            "--weights",
            &o("same-w.npy"),
        ],
    ));
    // --blend hann on border-cut patches = patches cut with hann, stitched with their own
    // (the weight sums show the weighting; the means are the image either way).
    ok(stitch(
        &o("hann-flag.npy"),
        &["--blend", "hann", "--weights", &o("hann-flag-w.npy")],
    ));
    let dir2 = new_dir(dir.join("hann"));
    let p2 = patches(&dir2, "hann");
    run_io(
        "quilt stitch",
        &p2,
        &o("hann-attr.npy"),
        &["--weights", &o("hann-attr-w.npy")],
    );
    let bytes = |name: &str| std::fs::read(dir.join(name)).unwrap();
    assert!(bytes("hann-flag.npy") == bytes("hann-attr.npy"));
    assert!(bytes("hann-flag-w.npy") == bytes("hann-attr-w.npy"));
    assert!(
        bytes("same-w.npy") != bytes("hann-flag-w.npy"),
        "--blend was ignored"
    );
}

#[cfg(feature = "hdf5")]
mod hdf5_files {
    use super::*;

    /// An HDF5 file with two datasets of someone's, `keep` and `img`.
    fn user_file(dir: &Path) -> PathBuf {
        let f = dir.join("f.h5");
        let file = hdf5::File::create(&f).unwrap();
        file.new_dataset_builder()
            .with_data(&[1i64, 2, 3])
            .create("keep")
            .unwrap();
        let img = random_f32(&[2, 1, 48, 48], 9);
        file.new_dataset_builder()
            .with_data(img.view())
            .create("img")
            .unwrap();
        file.close().unwrap();
        f
    }

    fn read_keep(f: &Path) -> Vec<i64> {
        hdf5::File::open(f)
            .unwrap()
            .dataset("keep")
            .unwrap()
            .read_raw()
            .unwrap()
    }

    #[test]
    fn a_dataset_is_added_to_an_existing_file_and_replaced_alone() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let f = user_file(dir);
        let input = image(dir);
        let out = format!("{}:/patches", f.display());
        let pos = s(&dir.join("pos.npy"));
        let unstitch = |window: &str, extra: &[&str]| {
            with(
                &io_args(
                    "quilt unstitch",
                    &input,
                    &out,
                    &[
                        "--window",
                        window,
                        "--step",
                        window,
                        "--codec",
                        "gzip",
                        "--positions",
                        &pos,
                    ],
                ),
                extra,
            )
        };
        ok(unstitch("16", &[]));
        assert_eq!(read_keep(&f), [1, 2, 3]);
        assert_eq!(
            meta(&format!("{}:/patches", f.display())).shape,
            [18, 1, 16, 16]
        );
        fails_with(
            unstitch("8", &[]),
            &["dataset /patches", "exists", "--overwrite"],
        );
        ok(unstitch("8", &["--overwrite"]));
        assert_eq!(
            meta(&format!("{}:/patches", f.display())).shape,
            [72, 1, 8, 8]
        );
        assert_eq!(read_keep(&f), [1, 2, 3]);
        let names = hdf5::File::open(&f).unwrap().member_names().unwrap();
        assert_eq!(names, ["img", "keep", "patches"]);
        // Reading from and writing to one file in one run is refused, the file untouched.
        let bytes = std::fs::read(&f).unwrap();
        fails_with(
            tessera(&io_args(
                "quilt stitch",
                &format!("{}:/patches", f.display()),
                &format!("{}:/mean", f.display()),
                &[],
            )),
            &["same HDF5 file"],
        );
        assert_eq!(std::fs::read(&f).unwrap(), bytes);
    }

    #[test]
    fn an_interrupted_dataset_in_an_existing_file_resumes_to_the_same_bytes() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let f = user_file(dir);
        let p = patches(dir, "border");
        let args = |out: &str| strings(&io_line("quilt stitch", &p, out, "--codec gzip"));
        let clean = s(&dir.join("clean.npy"));
        ok(tessera(
            &args(&clean).iter().map(String::as_str).collect::<Vec<_>>(),
        ));
        let target = format!("{}:/mean", f.display());
        resume_with_a_change(&args(&target), &["--sigma", "0.2"], "sigma");
        assert_eq!(read_keep(&f), [1, 2, 3]);
        let names = hdf5::File::open(&f).unwrap().member_names().unwrap();
        assert_eq!(names, ["img", "keep", "mean"]);
        let a = read_all(&clean);
        let b = read_all(&target);
        assert_eq!(a, b);
    }

    #[cfg(feature = "mpi")]
    #[test]
    fn two_ranks_add_a_dataset_to_an_existing_file() {
        let Some(d) = mpi_tempdir() else { return };
        let dir = d.path();
        let f = user_file(dir);
        let p = patches(dir, "border");
        let target = format!("{}:/g/mean", f.display());
        ok(tessera_mpi(
            2,
            &io_line("quilt stitch", &p, &target, "--codec gzip"),
            &[("TESSERA_UNIT_BYTES", "4096")],
        ));
        ok(tessera_mpi(
            2,
            &io_line("quilt stitch", &p, &target, "--codec gzip --overwrite"),
            &[("TESSERA_UNIT_BYTES", "4096")],
        ));
        assert_eq!(read_keep(&f), [1, 2, 3]);
        let clean = s(&dir.join("clean.npy"));
        run_io("quilt stitch", &p, &clean, &[]);
        assert_eq!(read_all(&clean), read_all(&target));
        // A refusal on two ranks is still one line.
        fails_with(
            tessera_mpi(
                2,
                &io_args("quilt stitch", &p, &format!("{}/c", p.display()), &[]),
                &[],
            ),
            &["lies inside the input"],
        );
    }
}
