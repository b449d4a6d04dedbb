//! `tessera hdr` end to end: exact recovery of a known response and radiance map from brackets
//! written by the test, the NPZ format (and numpy reading it), lne-range, Mertens, EXR and Zarr
//! outputs, resume, 1/2/4-rank identity, and every kind of bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use ndarray::ArrayD;
use ndarray_npy::read_npy;
use tessera::ops::hdr::npz;

/// The camera of the synthetic brackets: g(z) = A (z - 128), so that an exposure twice as
/// long shifts values by exactly 32 levels.
const A: f64 = std::f64::consts::LN_2 / 32.0;
const SIZE: (usize, usize) = (24, 32);
/// Exposures in microseconds (x2 steps).
const EXPOSURES: [u64; 4] = [1000, 2000, 4000, 8000];

/// Base values (exposure 0) per channel and pixel, in 0..=159 so that the longest exposure
/// stays within 255.
fn base(seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..3 * SIZE.0 * SIZE.1)
        .map(|_| rng.below(160) as u8)
        .collect()
}

/// Writes one bracket of RGB PNGs `dir/<time>_<expo>.png`; returns the base values.
fn write_bracket(dir: &Path, time: &str, seed: u64) -> Vec<u8> {
    std::fs::create_dir_all(dir).unwrap();
    let b = base(seed);
    let (h, w) = SIZE;
    for (j, expo) in EXPOSURES.iter().enumerate() {
        let mut rgb = vec![0u8; 3 * h * w];
        for c in 0..3 {
            for i in 0..h * w {
                rgb[i * 3 + c] = b[c * h * w + i] + 32 * j as u8;
            }
        }
        image::save_buffer(
            dir.join(format!("{time}_{expo}.png")),
            &rgb,
            w as u32,
            h as u32,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    }
    b
}

/// The archive of the tests: three brackets at top level, one in a subdirectory.
fn archive(dir: &Path) -> Vec<(String, PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for (k, time) in ["20240601120000", "20240601120030", "20240601120100"]
        .iter()
        .enumerate()
    {
        out.push((
            time.to_string(),
            PathBuf::new(),
            write_bracket(dir, time, k as u64),
        ));
    }
    let sub = dir.join("cam2");
    out.push((
        "20240601120000".into(),
        "cam2".into(),
        write_bracket(&sub, "20240601120000", 9),
    ));
    out
}

fn calibrate(input: &Path, response: &Path, extra: &[&str]) -> String {
    let mut args = calibrate_args(&input, &response, &["--recursive"]);
    args.extend_from_slice(extra);
    ok(tessera(&args))
}

/// A temporary directory with the test [`archive`] in `sky`, and where its response goes.
fn sky_archive() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("sky");
    archive(&input);
    let response = d.path().join("response.npz");
    (d, input, response)
}

/// `hdr lne-range --input <input> --recursive --response <response>`.
fn lne_range_args<'a>(input: &'a Path, response: &'a Path) -> Vec<&'a str> {
    let (input, response) = (path_str(input), path_str(response));
    vec![
        "hdr",
        "lne-range",
        "--input",
        input,
        "--recursive",
        "--response",
        response,
    ]
}

/// `hdr merge --input <input> --recursive --response <response> --output <output> <flags>`.
fn merge_args<'a>(
    input: &'a (impl AsRef<Path> + ?Sized),
    response: &'a (impl AsRef<Path> + ?Sized),
    output: &'a (impl AsRef<Path> + ?Sized),
    flags: &'a str,
) -> Vec<&'a str> {
    let (input, response) = (path_str(input), path_str(response));
    let mut args = io_line("hdr merge", input, output, flags);
    args.extend(["--recursive", "--response", response]);
    args
}

/// A test path as the UTF-8 it is.
fn path_str(path: &(impl AsRef<Path> + ?Sized)) -> &str {
    path.as_ref().to_str().expect("test paths are UTF-8")
}

#[test]
fn a_linear_camera_and_its_radiance_are_recovered_exactly() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("sky");
    let brackets = archive(&input);
    let response = d.path().join("cal/response.npz");
    for technique in ["random", "histogram"] {
        calibrate(
            &input,
            &response,
            &[
                "--sample-technique",
                technique,
                "--samples-per-image",
                "200",
                "--overwrite",
            ],
        );
        let (g, meta) = npz::read_response(&response).unwrap();
        assert_eq!(g.shape(), &[256, 3]);
        for c in 0..3 {
            for z in 0..256 {
                let want = A * (z as f64 - 128.0);
                assert!(
                    (g[[z, c]] - want).abs() < 1e-6,
                    "{technique} channel {c} z {z}: {} vs {want}",
                    g[[z, c]]
                );
            }
        }
        assert_eq!(meta["algorithm"], "debevec");
        assert_eq!(meta["sample_technique"], technique);
        assert_eq!(meta["groups_used"].as_array().unwrap().len(), 4);
        assert_eq!(meta["smoothness"], 50.0);
    }
    let plot = image::open(d.path().join("cal/response_curve.png")).unwrap();
    assert_eq!((plot.width(), plot.height()), (900, 600));

    // Merge: ln E = g(z0) - ln t0 for every pixel.
    let out = d.path().join("hdr");
    let log = ok(tessera(&merge_args(
        &input,
        &response,
        &out,
        "--format npy --preview png",
    )));
    assert!(log.contains("hdr merge: 4 bracket(s)"), "{log}");
    let (h, w) = SIZE;
    for (time, dir, b) in &brackets {
        let path = out.join(dir).join(format!("{time}.npy"));
        let e: ArrayD<f32> = read_npy(&path).unwrap();
        assert_eq!(e.shape(), &[h, w, 3]);
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let z0 = f64::from(b[c * h * w + y * w + x]);
                    let want = (A * (z0 - 128.0) - 1e-3f64.ln()).exp();
                    let got = f64::from(e[[y, x, c]]);
                    assert!(
                        ((got - want) / want).abs() < 2e-6,
                        "{path:?} ({y},{x},{c}): {got} vs {want}"
                    );
                }
            }
        }
        let preview = image::open(out.join(dir).join(format!("{time}.png"))).unwrap();
        assert_eq!((preview.width(), preview.height()), (w as u32, h as u32));
    }
    assert!(Path::new(&format!("{}.report.json", out.display())).exists());

    // lne-range: min g - ln t_max, max g - ln t_min.
    let range = ok(tessera(&lne_range_args(&input, &response)));
    let v: Vec<f64> = range
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    let (lo, hi) = (A * -128.0 - 8e-3f64.ln(), A * 127.0 - 1e-3f64.ln());
    assert!(
        (v[0] - lo).abs() < 1e-6 && (v[1] - hi).abs() < 1e-6,
        "{range}"
    );
}

#[test]
fn a_per_bracket_merge_reports_its_phases() {
    // Per-bracket files are written outside exec::run; the report still has exec's phases.
    let (d, input, response) = sky_archive();
    calibrate(&input, &response, &[]);
    let out = d.path().join("hdr");
    let report = d.path().join("merge.json");
    let mut merge = merge_args(&input, &response, &out, "--format npy");
    merge.extend(["--report", path_str(&report)]);
    ok(tessera(&merge));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let run = &json["runs"][0];
    assert_eq!(run["units_total"], 4, "{run}");
    let rank = &run["per_rank"][0];
    assert_eq!(rank["units"], 4, "{rank}");
    let phases = &rank["phases"];
    for phase in ["read", "compute", "write"] {
        let t = phases[phase].as_f64().unwrap();
        assert!(t > 0.0, "{phase}: {phases}");
        assert!(t <= rank["seconds"].as_f64().unwrap(), "{phase}: {rank}");
    }
    for phase in ["setup", "sync", "finalize"] {
        assert!(phases[phase].as_f64().unwrap() >= 0.0, "{phase}: {phases}");
    }
}

#[test]
fn exr_zarr_mertens_and_resume() {
    let (d, input, response) = sky_archive();
    calibrate(&input, &response, &[]);
    let merge = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "hdr",
            "merge",
            "--input",
            input.to_str().unwrap(),
            "--response",
            response.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        tessera(&args)
    };
    // A dry run prints the plan and writes nothing.
    let dry = d.path().join("dry");
    let plan = ok(merge(&dry, &["--dry-run"]));
    assert!(
        plan.contains("3 bracket(s)") && plan.contains("rank 0"),
        "{plan}"
    );
    assert!(!dry.exists() && !d.path().join("dry.report.json").exists());
    // EXR (top level only) against the .npy of the same brackets.
    let exr_dir = d.path().join("exr");
    let npy_dir = d.path().join("npy");
    ok(merge(&exr_dir, &[]));
    ok(merge(&npy_dir, &["--format", "npy"]));
    let path = exr_dir.join("20240601120030.exr");
    let img = exr::prelude::read_first_rgba_layer_from_file(
        &path,
        |res, _| vec![[0f32; 3]; res.width() * res.height()],
        |px: &mut Vec<[f32; 3]>, pos, (r, g, b, _a): (f32, f32, f32, f32)| {
            px[pos.y() * SIZE.1 + pos.x()] = [r, g, b];
        },
    )
    .unwrap();
    let e: ArrayD<f32> = read_npy(npy_dir.join("20240601120030.npy")).unwrap();
    for (i, p) in img.layer_data.channel_data.pixels.iter().enumerate() {
        for c in 0..3 {
            assert_eq!(p[c], e[[i / SIZE.1, i % SIZE.1, c]]);
        }
    }
    // An existing output is refused without --resume / --overwrite; resume redoes what is missing.
    fails_with(
        merge(&npy_dir, &["--format", "npy"]),
        &["not empty", "--resume"],
    );
    let gone = npy_dir.join("20240601120100.npy");
    let kept = npy_dir.join("20240601120000.npy");
    let before = std::fs::metadata(&kept).unwrap().modified().unwrap();
    let bytes = std::fs::read(&gone).unwrap();
    std::fs::remove_file(&gone).unwrap();
    ok(merge(&npy_dir, &["--format", "npy", "--resume"]));
    assert_eq!(std::fs::read(&gone).unwrap(), bytes);
    assert_eq!(
        std::fs::metadata(&kept).unwrap().modified().unwrap(),
        before
    );

    // Zarr: (T, Y, X, C) and the timestamps.
    let store = d.path().join("sky.zarr");
    ok(merge(&store, &["--format", "zarr"]));
    let radiance = read_all(&format!("{}/radiance", s(&store)));
    assert_eq!(radiance.shape(), &[3, SIZE.0 as u64, SIZE.1 as u64, 3]);
    let tessera::io::Block::F32(r) = radiance else {
        panic!("f32")
    };
    let e0: ArrayD<f32> = read_npy(npy_dir.join("20240601120030.npy")).unwrap();
    assert_eq!(r.index_axis(ndarray::Axis(0), 1), e0);
    let times = read_all(&format!("{}/timestamps", s(&store)));
    let tessera::io::Block::I64(t) = times else {
        panic!("i64")
    };
    let first = tessera::ops::hdr::files::parse_time("20240601120000").unwrap();
    assert_eq!(t.as_slice().unwrap(), &[first, first + 30, first + 60]);

    // Mertens needs no response; values are display values around [0, 1].
    let fused = d.path().join("fused");
    ok(tessera(&[
        "hdr",
        "merge",
        "--input",
        &s(&input),
        "--method",
        "mertens",
        "--format",
        "npy",
        "--output",
        &s(&fused),
    ]));
    let f: ArrayD<f32> = read_npy(fused.join("20240601120000.npy")).unwrap();
    assert_eq!(f.shape(), &[SIZE.0, SIZE.1, 3]);
    assert!(f.iter().all(|v| v.is_finite() && *v > -0.5 && *v < 1.5));
}

#[test]
fn numpy_reads_the_response_file() {
    // TESSERA_PYTHON or python3 (not common::python's virtual environment).
    let python = std::env::var("TESSERA_PYTHON").unwrap_or_else(|_| "python3".into());
    let Some(python) = python_importing(python, "numpy") else {
        return;
    };
    let (_d, input, response) = sky_archive();
    calibrate(&input, &response, &["--seed", "3"]);
    let script = format!(
        "import json, numpy as np\n\
         d = np.load(r'{}')\n\
         r = d['response']; m = json.loads(str(d['metadata']))\n\
         assert r.shape == (256, 3) and r.dtype == np.float64, r.shape\n\
         assert abs(r[128]).max() < 1e-6 and abs(r[160, 0] - np.log(2)) < 1e-6, (r[128], r[160])\n\
         assert m['seed'] == 3 and m['weight_type'] == 'triangle', m\n\
         print('ok')",
        response.display()
    );
    succeeds(Command::new(&python).args(["-c", &script]), "python");
}

#[cfg(feature = "mpi")]
#[test]
fn ranks_agree() {
    let Some(d) = mpi_tempdir() else { return };
    let input = d.path().join("sky");
    archive(&input);
    let mut responses = Vec::new();
    for ranks in [1, 2, 4] {
        let response = d.path().join(format!("r{ranks}.npz"));
        ok(tessera_mpi(
            ranks,
            &calibrate_args(
                &input,
                &response,
                &["--recursive", "--sample-technique", "histogram"],
            ),
            &[],
        ));
        responses.push(npz::read_response(&response).unwrap().0);
        for format in ["npy", "zarr"] {
            let out = d.path().join(format!(
                "{format}{ranks}.{}",
                if format == "zarr" { "zarr" } else { "d" }
            ));
            let r1 = d.path().join("r1.npz");
            let flags = format!("--format {format}");
            ok(tessera_mpi(
                ranks,
                &merge_args(&input, &r1, &out, &flags),
                &[],
            ));
        }
    }
    assert_eq!(responses[0], responses[1]);
    assert_eq!(responses[0], responses[2]);
    for ranks in [2, 4] {
        assert_same_tree(
            &d.path().join("npy1.d"),
            &d.path().join(format!("npy{ranks}.d")),
        );
        assert_same_tree(
            &d.path().join("zarr1.zarr"),
            &d.path().join(format!("zarr{ranks}.zarr")),
        );
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let (d, input, response) = sky_archive();
    calibrate(&input, &response, &[]);
    let merge_into = |input: &Path, response: &Path, out: &Path| {
        tessera(&[
            "hdr",
            "merge",
            "--input",
            &s(input),
            "--response",
            &s(response),
            "--output",
            &s(out),
            "--format",
            "npy",
        ])
    };

    // Unparseable names are listed; a bracket of one image and repeated exposures are skipped.
    let odd = d.path().join("odd");
    write_bracket(&odd, "20240601130000", 1);
    std::fs::copy(
        input.join("20240601120000_1000.png"),
        odd.join("IMG_0001.png"),
    )
    .unwrap();
    std::fs::copy(
        input.join("20240601120000_1000.png"),
        odd.join("20240601140000_1000.png"),
    )
    .unwrap();
    let out = d.path().join("odd-out");
    let log = ok(merge_into(&odd, &response, &out));
    assert!(
        log.contains("IMG_0001.png") && log.contains("fewer than 2 exposures"),
        "{log}"
    );
    assert!(out.join("20240601130000.npy").exists());
    assert!(!out.join("20240601140000.npy").exists());

    // An empty directory; a directory of only single images.
    let empty = d.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails_with(
        merge_into(&empty, &response, &d.path().join("e")),
        &["no JPEG, PNG or TIFF"],
    );
    let single = d.path().join("single");
    std::fs::create_dir_all(&single).unwrap();
    std::fs::copy(
        input.join("20240601120000_1000.png"),
        single.join("20240601120000_1000.png"),
    )
    .unwrap();
    fails_with(
        merge_into(&single, &response, &d.path().join("s")),
        &["no bracket of 2"],
    );

    // Different sizes within a bracket.
    let sizes = d.path().join("sizes");
    write_bracket(&sizes, "20240601120000", 2);
    image::save_buffer(
        sizes.join("20240601120000_2000.png"),
        &[0u8; 3 * 4 * 4],
        4,
        4,
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
    let bad_out = d.path().join("sizes-out");
    fails_with(
        merge_into(&sizes, &response, &bad_out),
        &["differs from", "in its bracket"],
    );
    assert!(!bad_out.join("20240601120000.npy").exists());

    // 16-bit images with an 8-bit response.
    let deep = d.path().join("deep");
    std::fs::create_dir_all(&deep).unwrap();
    for expo in [1000, 2000] {
        image::save_buffer(
            deep.join(format!("20240601120000_{expo}.png")),
            &[0u8; 2 * 3 * 8 * 8],
            8,
            8,
            image::ExtendedColorType::Rgb16,
        )
        .unwrap();
    }
    fails_with(
        merge_into(&deep, &response, &d.path().join("deep-out")),
        &["16-bit", "256 levels"],
    );
    fails_with(
        calibrate_err(&deep, &d.path().join("deep.npz")),
        &["16-bit"],
    );

    // A corrupt image.
    let corrupt = d.path().join("corrupt");
    write_bracket(&corrupt, "20240601120000", 3);
    std::fs::write(
        corrupt.join("20240601120000_4000.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    fails_with(
        merge_into(&corrupt, &response, &d.path().join("c")),
        &["20240601120000_4000.png"],
    );

    // Response files: wrong shape, missing key, not a zip, missing; none for Debevec.
    let two = d.path().join("two.npz");
    npz::write_response(
        &two,
        ndarray::Array2::<f64>::zeros((256, 2)).view(),
        &serde_json::json!({}),
    )
    .unwrap();
    fails_with(
        merge_into(&input, &two, &d.path().join("w")),
        &["(256, 1) or (256, 3)"],
    );
    let garbage = d.path().join("garbage.npz");
    std::fs::write(&garbage, b"definitely not a zip").unwrap();
    fails_with(
        merge_into(&input, &garbage, &d.path().join("g")),
        &["garbage.npz"],
    );
    fails_with(
        merge_into(&input, &d.path().join("missing.npz"), &d.path().join("m")),
        &["missing.npz"],
    );
    fails_with(
        tessera(&io_args("hdr merge", &input, &d.path().join("n"), &[])),
        &["--response", "required"],
    );
    let mut grey_g = ndarray::Array2::<f64>::zeros((256, 1));
    grey_g
        .column_mut(0)
        .assign(&ndarray::Array1::from_shape_fn(256, |z| {
            A * (z as f64 - 128.0)
        }));
    let grey = d.path().join("grey.npz");
    npz::write_response(&grey, grey_g.view(), &serde_json::json!({})).unwrap();
    fails_with(
        merge_into(&input, &grey, &d.path().join("gr")),
        &["3 channel(s), but the response has 1"],
    );

    // Calibration parameters and an existing response.
    fails_with(calibrate_err(&input, &response), &["exists", "--overwrite"]);
    fails_with(
        tessera(&calibrate_args(
            &input,
            &d.path().join("x.npz"),
            &["--low-clip", "200", "--high-clip", "100"],
        )),
        &["--low-clip"],
    );
    fails_with(
        tessera(&calibrate_args(
            &input,
            &d.path().join("x.npz"),
            &["--round-ts-to", "30 seconds"],
        )),
        &["--round-ts-to"],
    );
    assert!(!d.path().join("x.npz").exists());
}

fn calibrate_err(input: &Path, response: &Path) -> std::process::Output {
    tessera(&calibrate_args(input, response, &[]))
}

#[test]
fn a_gamma_camera_is_recovered_from_the_synthetic_archive() {
    // `tessera hdr synthetic` brackets come from a gamma 2.2 camera: g(z2) - g(z1) =
    // 2.2 ln(z2 / z1) away from the ends (smoothness and 8-bit rounding limit the match).
    let d = tempfile::tempdir().unwrap();
    let sky = d.path().join("sky");
    ok(tessera(&synthetic_args(&sky, "3", &["--size", "96"])));
    let response = d.path().join("r.npz");
    run_calibrate(&sky, &response, &["--sample-technique", "histogram"]);
    let (g, _) = npz::read_response(&response).unwrap();
    for c in 0..3 {
        for (z1, z2) in [(40usize, 200usize), (60, 120), (100, 240)] {
            let got = g[[z2, c]] - g[[z1, c]];
            let want = 2.2 * (z2 as f64 / z1 as f64).ln();
            assert!(
                (got - want).abs() < 0.05 * want,
                "channel {c} {z1}->{z2}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn a_killed_zarr_merge_resumes_to_the_same_bytes() {
    let (d, input, response) = sky_archive();
    calibrate(&input, &response, &[]);
    let merge = |out: &Path, extra: &[&str], env: &[(&str, &str)]| {
        let mut args = merge_args(&input, &response, out, "--format zarr");
        args.extend_from_slice(extra);
        tessera_env(&args, env)
    };
    let whole = d.path().join("whole.zarr");
    ok(merge(&whole, &[], &[]));
    let cut = d.path().join("cut.zarr");
    let killed = merge(&cut, &[], &[("TESSERA_ABORT_AFTER_UNITS", "2")]);
    assert!(!killed.status.success(), "{}", text(&killed));
    assert!(!cut.exists(), "an interrupted merge is not published");
    ok(merge(&cut, &["--resume"], &[]));
    // The group attributes name the output-independent inputs only, so the trees are equal.
    assert_same_tree(&whole, &cut);
}

/// Runs `tessera` with `args`, killing it (and failing the test) if it runs past `limit`:
/// a walk that loops would otherwise hang the suite.
fn tessera_within(args: &[&str], limit: std::time::Duration) -> std::process::Output {
    let mut child = Command::new(&*BIN)
        .args(args)
        .env("TESSERA_MPI", "0")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            panic!("tessera {args:?} still running after {limit:?} (a symlink loop?)");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn symlink_loops_are_walked_once() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("sky");
    let brackets = archive(&input);
    // Two loops: one at the top, one from the subdirectory back to the top.
    std::os::unix::fs::symlink(&input, input.join("x")).unwrap();
    std::os::unix::fs::symlink("..", input.join("cam2/y")).unwrap();
    let limit = std::time::Duration::from_secs(120);
    let response = d.path().join("response.npz");
    let calibrated = tessera_within(&calibrate_args(&input, &response, &["--recursive"]), limit);
    let warns_of_both_links = |log: &str| {
        for link in ["sky/x", "cam2/y"] {
            assert!(
                log.lines().any(|l| l.contains("WARN") && l.contains(link)),
                "no warning naming {link}:\n{log}"
            );
        }
    };
    let log = ok(calibrated);
    assert!(log.contains("hdr calibrate: 4 bracket(s)"), "{log}");
    warns_of_both_links(&log);
    let range = ok(tessera_within(&lne_range_args(&input, &response), limit));
    warns_of_both_links(&range);
    let out = d.path().join("hdr");
    let log = ok(tessera_within(
        &merge_args(&input, &response, &out, "--format npy"),
        limit,
    ));
    assert!(log.contains("hdr merge: 4 bracket(s)"), "{log}");
    let mut written: Vec<String> = tree(&out).into_iter().map(|(name, _)| name).collect();
    written.retain(|n| n.ends_with(".npy"));
    let mut want: Vec<String> = brackets
        .iter()
        .map(|(time, dir, _)| dir.join(format!("{time}.npy")).display().to_string())
        .collect();
    want.sort();
    assert_eq!(written, want);
}

/// `tessera hdr synthetic` brackets as JPEG files (what all-sky cameras write).
fn jpeg_archive(dir: &Path, brackets: &str) {
    ok(tessera(&synthetic_args(
        dir,
        brackets,
        &["--size", "96", "--format", "jpeg"],
    )));
    assert!(names(dir).iter().all(|n| n.ends_with(".jpg")));
}

#[test]
fn calibration_and_merges_are_the_same_on_any_thread_count() {
    // Exposures decode in parallel, the next bracket while this one merges, the merges and the
    // histogram sampling in bands: the bytes must not depend on the thread count.
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("sky");
    jpeg_archive(&input, "3");
    let threads = ["1", "2", "3"];
    for technique in ["histogram", "random"] {
        let responses: Vec<_> = threads
            .iter()
            .map(|t| {
                let response = d.path().join(format!("{technique}{t}.npz"));
                calibrate(
                    &input,
                    &response,
                    &["--sample-technique", technique, "--threads", t],
                );
                let plot = std::fs::read(d.path().join(format!("{technique}{t}_curve.png")));
                (npz::read_response(&response).unwrap().0, plot.unwrap())
            })
            .collect();
        assert!(
            responses[1..].iter().all(|r| *r == responses[0]),
            "{technique}"
        );
    }
    let response = d.path().join("histogram1.npz");
    for (method, format) in [("debevec", "exr"), ("debevec", "npy"), ("mertens", "npy")] {
        let outs: Vec<PathBuf> = threads
            .iter()
            .map(|t| {
                let out = d.path().join(format!("{method}-{format}-{t}"));
                ok(tessera(&[
                    "hdr",
                    "merge",
                    "--input",
                    &s(&input),
                    "--response",
                    &s(&response),
                    "--output",
                    &s(&out),
                    "--method",
                    method,
                    "--format",
                    format,
                    "--preview",
                    "png",
                    "--threads",
                    t,
                ]));
                out
            })
            .collect();
        assert_eq!(
            names(&outs[0])
                .iter()
                .filter(|n| n.ends_with(".png"))
                .count(),
            3
        );
        for other in &outs[1..] {
            assert_same_tree(&outs[0], other);
        }
    }
}
