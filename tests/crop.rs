//! `tessera crop` end to end: hand-checked radii, a straightforward reference on random
//! patterns, synthetic Airy patterns, the plot, and every kind of bad input.

mod common;

use std::path::Path;

use common::*;
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{read_npy, write_npy};
use serde_json::Value;

fn results(output: &Path) -> Value {
    let stem = output.file_stem().unwrap().to_string_lossy().into_owned();
    let path = output.with_file_name(format!("{stem}_results.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn side(output: &Path, suffix: &str) -> std::path::PathBuf {
    let stem = output.file_stem().unwrap().to_string_lossy().into_owned();
    output.with_file_name(format!("{stem}{suffix}"))
}

/// Reference radius, by the documented definition: each value in fixed point
/// (`q = round_half_even(v * 2^s)`, s from the largest |value| and B = min(50, 53 -
/// ceil(log2 H*W) - ceil(log2 max(H, W))) bits), exact i128 sums, the centroid from them, and
/// every pixel sorted by distance: the first distance whose running sum reaches
/// `ceil(target * total)`.
fn ref_radius(p: &[f64], w: usize, target: f64) -> (f64, (f64, f64)) {
    let h = p.len() / w;
    let ceil_log2 = |n: usize| (n as f64).log2().ceil() as i32;
    let bits = (53 - ceil_log2(p.len()) - ceil_log2(h.max(w))).min(50);
    let most = p.iter().fold(0.0f64, |m, &v| m.max(v.abs()));
    let e = ((most.to_bits() >> 52) & 0x7ff) as i32 - 1022;
    let scale = 2f64.powi(bits - e);
    let q: Vec<i128> = p
        .iter()
        .map(|&v| (v * scale).round_ties_even() as i128)
        .collect();
    let total: i128 = q.iter().sum();
    let (mut sy, mut sx) = (0i128, 0i128);
    for (i, &v) in q.iter().enumerate() {
        sy += v * (i / w) as i128;
        sx += v * (i % w) as i128;
    }
    let c = (sy as f64 / total as f64, sx as f64 / total as f64);
    let mut px: Vec<(f64, i128)> = q
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            (
                ((i / w) as f64 - c.0).powi(2) + ((i % w) as f64 - c.1).powi(2),
                v,
            )
        })
        .collect();
    px.sort_by(|a, b| a.0.total_cmp(&b.0));
    let goal = (target * total as f64).ceil() as i128;
    let mut sum = 0;
    for (k, &(d, v)) in px.iter().enumerate() {
        sum += v;
        let last_at_this_distance = k + 1 == px.len() || px[k + 1].0 != d;
        if last_at_this_distance && sum >= goal {
            return (d.sqrt(), c);
        }
    }
    (px.last().unwrap().0.sqrt(), c)
}

#[test]
fn a_bright_pixel_per_pattern_gives_the_margin_as_radius() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = ArrayD::<u16>::zeros(IxDyn(&[3, 15, 17]));
    a[[0, 7, 8]] = 100;
    a[[1, 3, 4]] = 50; // off centre: the window follows it
    a[[2, 14, 16]] = 7; // in a corner: the window is shifted inside
    let input = dir.path().join("p.npy");
    write_npy(&input, &a).unwrap();
    let out = dir.path().join("c.npy");
    run_line("crop", &input, &out, "--margin-pixels 2");
    let c: ArrayD<u16> = read_npy(&out).unwrap();
    assert_eq!(c.shape(), &[3, 5, 5]);
    assert_eq!(c[[0, 2, 2]], 100);
    assert_eq!(c[[1, 2, 2]], 50);
    assert_eq!(c[[2, 4, 4]], 7);
    let r = results(&out);
    assert_eq!(r["analysis"]["global_radius"], 2);
    assert_eq!(r["validation"]["min_retention"], 1.0);
    let radii: ArrayD<f64> = read_npy(side(&out, "_radii.npy")).unwrap();
    assert!(radii.iter().all(|&x| x == 0.0));
    let centres: ArrayD<f64> = read_npy(side(&out, "_centers.npy")).unwrap();
    assert_eq!(centres[[1, 0]], 3.0);
    assert_eq!(centres[[1, 1]], 4.0);
}

#[test]
fn radii_and_crops_equal_a_reference_on_random_patterns_in_any_chunking() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(11);
    // A 4D-STEM scan (Sy, Sx, H, W) of skewed random intensities.
    let a = ArrayD::from_shape_fn(IxDyn(&[3, 4, 21, 19]), |_| {
        let u = rng.below(1000) as f32 / 1000.0;
        u * u * u * 50.0
    });
    let input = dir.path().join("scan.npy");
    write_npy(&input, &a).unwrap();
    let target = 0.9;
    let mut outputs = Vec::new();
    for chunk in ["1", "5", "1000"] {
        let out = dir.path().join(format!("c{chunk}.npy"));
        run_io(
            "crop",
            &input,
            &out,
            &[
                "--target-retention",
                "0.9",
                "--min-retention",
                "0.5",
                "--chunk-size",
                chunk,
                "--no-visualization",
            ],
        );
        outputs.push(out);
    }
    let radii: ArrayD<f64> = read_npy(side(&outputs[0], "_radii.npy")).unwrap();
    let centres: ArrayD<f64> = read_npy(side(&outputs[0], "_centers.npy")).unwrap();
    let flat = a.as_slice().unwrap();
    let mut max_r: f64 = 0.0;
    for n in 0..12 {
        let p: Vec<f64> = flat[n * 21 * 19..(n + 1) * 21 * 19]
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let (r, c) = ref_radius(&p, 19, target);
        assert_eq!(radii[[n]], r, "pattern {n}");
        assert!((centres[[n, 0]] - c.0).abs() < 1e-9 && (centres[[n, 1]] - c.1).abs() < 1e-9);
        max_r = max_r.max(r);
    }
    let radius = max_r.ceil() as usize + 3;
    let r = results(&outputs[0]);
    assert_eq!(r["analysis"]["global_radius"], radius as u64);
    let sh = (2 * radius + 1).min(21);
    let sw = (2 * radius + 1).min(19);
    let c: ArrayD<f32> = read_npy(&outputs[0]).unwrap();
    assert_eq!(c.shape(), &[3, 4, sh, sw]);
    for n in 0..12 {
        let start = |cc: f64, side: usize, size: usize| {
            ((cc + 0.5).floor() as i64 - radius as i64).clamp(0, (size - side) as i64) as usize
        };
        let (y0, x0) = (
            start(centres[[n, 0]], sh, 21),
            start(centres[[n, 1]], sw, 19),
        );
        for y in 0..sh {
            for x in 0..sw {
                assert_eq!(c[[n / 4, n % 4, y, x]], a[[n / 4, n % 4, y0 + y, x0 + x]]);
            }
        }
    }
    for o in &outputs[1..] {
        assert_eq!(
            std::fs::read(o).unwrap(),
            std::fs::read(&outputs[0]).unwrap()
        );
        assert_eq!(
            std::fs::read(side(o, "_radii.npy")).unwrap(),
            std::fs::read(side(&outputs[0], "_radii.npy")).unwrap()
        );
    }
}

#[test]
fn synthetic_airy_patterns_all_keep_the_target_and_the_plot_is_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("airy.npy");
    let log = ok(tessera(&crop_test_args(
        "40",
        "96",
        &out,
        &["--chunk-size", "16"],
    )));
    assert!(log.contains("crop: radius"), "{log}");
    let retention: ArrayD<f64> = read_npy(side(&out, "_retention.npy")).unwrap();
    assert_eq!(retention.len(), 40);
    assert!(retention.iter().all(|&r| r >= 0.98), "{retention:?}");
    let r = results(&out);
    assert_eq!(r["validation"]["passes_target_threshold"], 40);
    let png = side(&out, "_visualization.png");
    let img = image::open(&png).expect("a valid PNG");
    assert_eq!((img.width(), img.height()), (1200, 900));
    // Both mean patterns are drawn: their centres (the Airy peak) are bright.
    let rgb = img.to_rgb8();
    for (x, y) in [(318, 230), (918, 230)] {
        let window: u32 = (0..9)
            .map(|k| u32::from(rgb.get_pixel(x - 4 + k % 3 * 4, y - 4 + k / 3 * 4)[0]))
            .max()
            .unwrap();
        assert!(window > 150, "dark mean pattern near ({x}, {y}): {window}");
    }
    // Same seed, same data and results; another seed, other data.
    let again = dir.path().join("again.npy");
    ok(tessera(&crop_test_args(
        "40",
        "96",
        &again,
        &["--no-visualization"],
    )));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    assert!(!side(&again, "_visualization.png").exists());
}

#[test]
fn bad_inputs_are_refused_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.npy");
    let mut g = ArrayD::<f32>::zeros(IxDyn(&[4, 9, 9]));
    for n in 0..4 {
        g[[n, 4, 4]] = 1.0;
    }
    write_npy(&good, &g).unwrap();
    let out = dir.path().join("o.npy");
    let (i, o) = (s(&good), s(&out));
    let run = |extra: &[&str]| {
        let mut args = io_line("crop", &i, &o, "--no-visualization");
        args.extend_from_slice(extra);
        tessera(&args)
    };
    fails_with(
        run(&["--target-retention", "0"]),
        &["--target-retention", "outside (0, 1]"],
    );
    fails_with(run(&["--target-retention", "1.5"]), &["--target-retention"]);
    fails_with(
        run(&["--min-retention", "0.99"]),
        &["--min-retention", "above --target-retention"],
    );
    fails_with(run(&["--center", "manual"]), &["--manual-center"]);
    fails_with(
        run(&["--center", "manual", "--manual-center", "4,12"]),
        &["--manual-center", "outside the 9x9 pattern"],
    );
    fails_with(run(&["--percentile", "101"]), &["--percentile"]);
    let flat = dir.path().join("flat.npy");
    write_npy(&flat, &ArrayD::<f32>::zeros(IxDyn(&[9, 9]))).unwrap();
    fails_with(
        tessera(&io_args("crop", &flat, &o, &[])),
        &["2 axes", "expected patterns"],
    );
    let zeros = dir.path().join("zeros.npy");
    write_npy(&zeros, &ArrayD::<f32>::zeros(IxDyn(&[3, 9, 9]))).unwrap();
    fails_with(
        tessera(&io_args("crop", &zeros, &o, &[])),
        &["every pattern sums to zero"],
    );
    let mut nan = g.clone();
    nan[[2, 1, 1]] = f32::NAN;
    let nan_path = dir.path().join("nan.npy");
    write_npy(&nan_path, &nan).unwrap();
    fails_with(
        tessera(&io_line("crop", &nan_path, &o, "--chunk-size 1")),
        &["pattern 2", "NaN"],
    );
    fails_with(
        tessera(&io_args("crop", &dir.path().join("missing.npy"), &o, &[])),
        &["missing.npy"],
    );
    fails_with(tessera(&["crop", "--output", &o]), &["--input", "required"]);
    assert!(!out.exists(), "nothing written by refused runs");
    // A radius larger than the pattern: a warning, and the full size.
    let wide = dir.path().join("wide.npy");
    write_npy(&wide, &ArrayD::<f32>::ones(IxDyn(&[2, 6, 7]))).unwrap();
    let log = run_line("crop", &wide, &o, "--no-visualization");
    assert!(log.contains("cropping to 6x7"), "{log}");
    let c: ArrayD<f32> = read_npy(&out).unwrap();
    assert_eq!(c.shape(), &[2, 6, 7]);
    // An existing output is kept without --overwrite; --strict fails on low retention.
    fails_with(run(&[]), &["exists"]);
    // One point-like and one flat pattern, radius from the smallest (percentile 0).
    let mut mixed = ArrayD::<f32>::zeros(IxDyn(&[2, 21, 21]));
    mixed[[0, 10, 10]] = 5.0;
    mixed.index_axis_mut(ndarray::Axis(0), 1).fill(1.0);
    let mixed_path = dir.path().join("mixed.npy");
    write_npy(&mixed_path, &mixed).unwrap();
    let strict = dir.path().join("strict.npy");
    fails_with(
        tessera(&io_line(
            "crop",
            &mixed_path,
            &strict,
            "--no-visualization --margin-pixels 0 --percentile 0 --strict",
        )),
        &["--strict", "1 of 2 patterns keep less than --min-retention"],
    );
    // The results say so too.
    assert_eq!(results(&strict)["validation"]["passes_min_threshold"], 1);
}

#[cfg(feature = "hdf5")]
#[test]
fn an_hdf5_scan_with_a_singleton_axis_crops_to_zarr() {
    use tessera::io::{self, Address, Block, CreateSpec, DType};
    let dir = tempfile::tempdir().unwrap();
    // (N, 1, H, W) in an EMD/py4DSTEM-style HDF5 group path.
    let mut a = ArrayD::<u16>::zeros(IxDyn(&[5, 1, 24, 24]));
    for n in 0..5 {
        for y in 9..14 {
            for x in 10..15 {
                a[[n, 0, y + n % 2, x]] = 10 + n as u16;
            }
        }
    }
    let h5 = dir.path().join("scan.emd");
    let address = format!("{}:/data/signals/patterns", h5.display());
    let spec = CreateSpec {
        flat_chunk_keys: false,
        shape: vec![5, 1, 24, 24],
        dtype: DType::U16,
        chunks: vec![1, 1, 24, 24],
        shards: None,
        codec: tessera::io::Codec::Gzip,
        dimension_names: None,
        attributes: Default::default(),
    };
    let writer = io::create(
        &Address::parse(&address).unwrap(),
        &spec,
        &tessera::comm::Local,
        false,
    )
    .unwrap();
    writer
        .write_box(Some((
            &tessera::grid::Region::whole(&[5, 1, 24, 24]),
            &Block::U16(a.clone()),
        )))
        .unwrap();
    writer.close().unwrap();
    let out = dir.path().join("cropped.zarr");
    // This process wrote the file with HDF5's locks; a `tessera` that another test thread
    // forks meanwhile inherits the descriptor and the lock, so the reader here must not
    // insist on locking (a test-harness artefact, not something users meet).
    ok(tessera_env(
        &io_line(
            "crop",
            &address,
            &out,
            "--target-retention 1.0 --min-retention 1.0 --margin-pixels 0 --no-visualization",
        ),
        &[("HDF5_USE_FILE_LOCKING", "FALSE")],
    ));
    let c = read_all(&s(&out)).into_array::<u16>().unwrap();
    // A 5x5 square: every pixel within sqrt(8) of its centre, so radius ceil(2.83) = 3.
    assert_eq!(c.shape(), &[5, 1, 7, 7]);
    for n in 0..5 {
        let kept: u64 = c
            .index_axis(ndarray::Axis(0), n)
            .iter()
            .map(|&v| u64::from(v))
            .sum();
        assert_eq!(kept, 25 * (10 + n as u64), "pattern {n} keeps everything");
    }
    assert_eq!(results(&out)["validation"]["min_retention"], 1.0);
}

#[test]
fn a_killed_crop_resumes_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(5);
    let a = ArrayD::from_shape_fn(IxDyn(&[30, 16, 16]), |_| rng.below(100) as f32);
    let input = dir.path().join("p.npy");
    write_npy(&input, &a).unwrap();
    let whole = dir.path().join("whole.npy");
    let args = |out: &Path| {
        vec![
            "crop".to_string(),
            "--input".into(),
            s(&input),
            "--output".into(),
            s(out),
            "--chunk-size".into(),
            "4".into(),
            "--target-retention".into(),
            "0.6".into(),
            "--min-retention".into(),
            "0.5".into(),
        ]
    };
    let run = |out: &Path, extra: &[&str], env: &[(&str, &str)]| {
        let mut v = args(out);
        v.extend(extra.iter().map(|x| x.to_string()));
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        tessera_env(&refs, env)
    };
    ok(run(&whole, &[], &[]));
    let cut = dir.path().join("cut.npy");
    let killed = run(&cut, &[], &[("TESSERA_ABORT_AFTER_UNITS", "3")]);
    assert!(!killed.status.success());
    assert!(!cut.exists(), "an interrupted output is not published");
    ok(run(&cut, &["--resume"], &[]));
    assert_eq!(std::fs::read(&cut).unwrap(), std::fs::read(&whole).unwrap());
    for suffix in ["_retention.npy", "_radii.npy", "_centers.npy"] {
        assert_eq!(
            std::fs::read(side(&cut, suffix)).unwrap(),
            std::fs::read(side(&whole, suffix)).unwrap(),
            "{suffix}"
        );
    }
}

#[cfg(feature = "hdf5")]
#[test]
fn an_hdf5_output_is_closed_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = ArrayD::<f32>::zeros(IxDyn(&[3, 9, 9]));
    for n in 0..3 {
        a[[n, 4, 4 + n]] = 2.0;
    }
    let input = dir.path().join("p.npy");
    write_npy(&input, &a).unwrap();
    let out = format!("{}:/cropped", dir.path().join("c.h5").display());
    run_line(
        "crop",
        &input,
        &out,
        "--codec gzip --margin-pixels 1 --no-visualization",
    );
    let c = read_all(&out).into_array::<f32>().unwrap();
    assert_eq!(c.shape(), &[3, 3, 3]);
    assert!((0..3).all(|n| c[[n, 1, 1]] == 2.0));
}

#[test]
fn patterns_scaled_near_the_subnormals_give_the_unscaled_radius() {
    // float64 patterns times 1e-307 or 3e-308 gave radius 12 or 9 instead of the unscaled
    // one, and 1e-310 was refused as summing to zero: the fixed-point scale stopped at 2^1022.
    let dir = tempfile::tempdir().unwrap();
    let (n, h, w) = (3, 101, 97);
    let base = ArrayD::from_shape_fn(IxDyn(&[n, h, w]), |i| {
        let (y, x) = (i[1] as f64 - 50.2 - i[0] as f64, i[2] as f64 - 47.7);
        1.0 / (1.0 + (y * y + x * x) / 150.0).powf(1.6) + 1e-4
    });
    let run = |name: &str, by: f64| {
        let input = dir.path().join(format!("{name}.npy"));
        write_npy(&input, &base.mapv(|v| v * by)).unwrap();
        let out = dir.path().join(format!("{name}_crop.npy"));
        run_line("crop", &input, &out, "--no-visualization");
        let radii: ArrayD<f64> = read_npy(side(&out, "_radii.npy")).unwrap();
        let crops: ArrayD<f64> = read_npy(&out).unwrap();
        (
            results(&out)["analysis"]["global_radius"].clone(),
            radii,
            crops,
        )
    };
    let (radius, radii, crops) = run("plain", 1.0);
    assert!(radius.as_u64().unwrap() > 30, "{radius}");
    for (name, by) in [("e307", 1e-307), ("e308", 3e-308), ("e310", 1e-310)] {
        let (r, rs, c) = run(name, by);
        assert_eq!(r, radius, "{name}");
        for (a, b) in rs.iter().zip(&radii) {
            assert!((a - b).abs() < 1e-6, "{name}: radius {a} vs {b}");
        }
        assert_eq!(c.shape(), crops.shape(), "{name}");
    }
    // Values that underflow to zero stay refused, with one line, nothing written.
    let gone = dir.path().join("gone.npy");
    write_npy(&gone, &base.mapv(|v| v * 1e-300 * 1e-30)).unwrap();
    let out = dir.path().join("gone_crop.npy");
    fails_with(
        tessera(&io_args("crop", &gone, &out, &[])),
        &["every pattern sums to zero"],
    );
    assert!(!out.exists());
}

#[test]
fn crops_are_the_same_on_any_thread_count() {
    // Issue 30: the cropped patterns and the results at 1, 2 and 3 threads.
    let d = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(91);
    let patterns = ArrayD::from_shape_fn(IxDyn(&[23, 1, 31, 29]), |ix| {
        let (y, x) = (
            ix[2] as f32 - 14.0,
            ix[3] as f32 - 15.0 + (ix[0] % 5) as f32,
        );
        (1000.0 * (-(y * y + x * x) / 30.0).exp()) as u16 + rng.below(20) as u16
    });
    let input = d.path().join("p.npy");
    write_npy(&input, &patterns).unwrap();
    assert_same_on_1_2_3_threads(
        d.path(),
        &["c.npy", "c_radii.npy", "c_centers.npy", "c_retention.npy"],
        &[("TESSERA_UNIT_BYTES", "20000")],
        |at| {
            io_line("crop", &input, &at.join("c.npy"), "--no-visualization")
                .into_iter()
                .map(String::from)
                .collect()
        },
    ); // The results too, but for the time taken.
    let strip = |t: &str| {
        let mut r = results(&d.path().join(format!("threads-{t}/c.npy")));
        r.as_object_mut().unwrap().remove("processing_time");
        r
    };
    assert_eq!(strip("1"), strip("2"));
    assert_eq!(strip("1"), strip("3"));
}
