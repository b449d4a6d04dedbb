//! `tessera quilt` end to end: against a straightforward reference on random inputs, hand
//! checks, memory-bounded stitching, and every kind of bad input.

mod common;

use common::*;
use ndarray::{ArrayD, Axis, Dimension, IxDyn, Slice};
use ndarray_npy::{read_npy, write_npy};
use tessera::grid::windows::WindowGrid;
use tessera::ops::quilt::kernel::{weights, Blend, Weighting};

fn random_f32(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = Rng::new(seed);
    ArrayD::from_shape_fn(IxDyn(shape), |_| {
        (rng.below(2_000_000) as f32 / 1_000_000.0) - 1.0
    })
}

/// [`random_f32`] saved as the `.npy` file `path`.
fn random_npy(path: impl AsRef<std::path::Path>, shape: &[usize], seed: u64) -> ArrayD<f32> {
    let img = random_f32(shape, seed);
    write_npy(path, &img).unwrap();
    img
}

/// Reference unstitch: every window of every image, by plain slicing.
fn ref_unstitch<T: Clone>(img: &ArrayD<T>, grid: &WindowGrid) -> ArrayD<T> {
    let mut patches = Vec::new();
    for n in 0..img.shape()[0] {
        for k in 0..grid.per_image() {
            let s = grid.window_start(k);
            let mut v = img.index_axis(Axis(0), n);
            for (a, (&st, &w)) in s.iter().zip(&grid.window).enumerate() {
                v.slice_axis_inplace(Axis(a + 1), Slice::from(st as usize..(st + w) as usize));
            }
            patches.push(v.to_owned());
        }
    }
    let views: Vec<_> = patches.iter().map(|p| p.view()).collect();
    ndarray::stack(Axis(0), &views).unwrap()
}

/// Reference stitch by the banded rule (kernel.rs), straightforwardly: per pixel two partial
/// sums in f64, one over the covering windows whose first row lies in the pixel's band of
/// `band_rows` rows, one over those of the band before, each in patch order (patches are
/// visited in order and each adds to its pixels' sums), added at the end. Returns the mean
/// before rounding (f64, shape N, C, ...) and the weight sums (N, ...).
fn ref_stitch<T: Copy + Into<f64>>(
    patches: &ArrayD<T>,
    shape: &[usize],
    grid: &WindowGrid,
    w: &ArrayD<f64>,
    band_rows: u64,
) -> (ArrayD<f64>, ArrayD<f64>) {
    // [0]: windows of the band before the pixel's, [1]: of the pixel's band.
    let mut num = [
        ArrayD::<f64>::zeros(IxDyn(shape)),
        ArrayD::<f64>::zeros(IxDyn(shape)),
    ];
    let mut spatial_shape = vec![shape[0]];
    spatial_shape.extend(&shape[2..]);
    let mut den = [
        ArrayD::<f64>::zeros(IxDyn(&spatial_shape)),
        ArrayD::<f64>::zeros(IxDyn(&spatial_shape)),
    ];
    let per = grid.per_image() as usize;
    for m in 0..patches.shape()[0] {
        let n = m / per;
        let s = grid.window_start((m % per) as u64);
        for (idx, &wt) in w.indexed_iter() {
            let pix: Vec<usize> = idx
                .slice()
                .iter()
                .zip(&s)
                .map(|(&i, &st)| i + st as usize)
                .collect();
            let b = usize::from(s[0] / band_rows == pix[0] as u64 / band_rows);
            let mut didx = vec![n];
            didx.extend(&pix);
            den[b][IxDyn(&didx)] += wt;
            for c in 0..shape[1] {
                let mut pi = vec![m, c];
                pi.extend(idx.slice());
                let mut oi = vec![n, c];
                oi.extend(&pix);
                num[b][IxDyn(&oi)] += wt * patches[IxDyn(&pi)].into();
            }
        }
    }
    let total = &den[0] + &den[1];
    let mut mean = ArrayD::<f64>::zeros(IxDyn(shape));
    for (idx, v) in mean.indexed_iter_mut() {
        let mut d = vec![idx[0]];
        d.extend(&idx.slice()[2..]);
        *v = (num[0][&idx] + num[1][&idx]) / total[IxDyn(&d)];
    }
    (mean, total)
}

/// Rows per band (kernel::Bands) for output chunk rows `chunk_rows` and window rows `window`.
fn band_rows(chunk_rows: u64, window: u64) -> u64 {
    chunk_rows * window.div_ceil(chunk_rows)
}

fn geometry_args(window: &str, step: &str, border: &str, blend: &str) -> Vec<String> {
    let mut a = vec![
        "--window".into(),
        window.into(),
        "--step".into(),
        step.into(),
        "--blend".into(),
        blend.into(),
    ];
    if !border.is_empty() {
        a.extend(["--border".into(), border.into()]);
    }
    a
}

/// Writes `a` as an uncompressed Zarr v3 array with `chunks`.
fn write_raw_zarr(store: &std::path::Path, a: &ArrayD<f32>, chunks: Vec<u64>) {
    use tessera::io::{zarr::ZarrWriter, ArrayWriter, Block, Codec, CreateSpec, DType};
    let spec = CreateSpec {
        flat_chunk_keys: false,
        shape: a.shape().iter().map(|&n| n as u64).collect(),
        dtype: DType::F32,
        chunks,
        shards: None,
        codec: Codec::None,
        dimension_names: None,
        attributes: Default::default(),
    };
    let w = ZarrWriter::create(store, "", &spec, &tessera::comm::Local, false).unwrap();
    let all = tessera::grid::Region::whole(&spec.shape);
    w.write_box(Some((&all, &Block::F32(a.clone())))).unwrap();
    Box::new(w).close().unwrap();
}

fn run(args: &[String]) -> std::process::Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    tessera(&refs)
}

#[test]
fn unstitch_and_stitch_match_the_reference_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    // (image shape, window, step, border, blend, output chunk rows: None for the default,
    // which is the whole image here, so one band)
    type Case<'a> = (&'a [usize], &'a str, &'a str, &'a str, &'a str, Option<u64>);
    let cases: &[Case] = &[
        (&[2, 3, 37, 41], "16,16", "8,8", "2", "border", Some(5)),
        (&[1, 2, 20, 17], "7,5", "3,5", "1,0", "border", Some(2)),
        (&[3, 1, 12, 12], "12,6", "4,4", "", "gaussian", None),
        (&[1, 2, 11, 13, 9], "4,5,3", "3,2,3", "1", "border", Some(1)),
        (&[2, 1, 10, 9, 8], "6", "4", "", "hann", Some(3)),
    ];
    for (case, &(shape, window, step, border, blend, chunk_rows)) in cases.iter().enumerate() {
        let input = d.path().join(format!("img{case}.npy"));
        let img = random_npy(&input, shape, case as u64);
        let spatial: Vec<u64> = shape[2..].iter().map(|&x| x as u64).collect();
        let parse = |t: &str| -> Vec<u64> {
            let v: Vec<u64> = t.split(',').map(|x| x.parse().unwrap()).collect();
            if v.len() == 1 {
                vec![v[0]; spatial.len()]
            } else {
                v
            }
        };
        let grid = WindowGrid::new(&spatial, &parse(window), &parse(step), false).unwrap();
        let patches_addr = s(&d.path().join(format!("p{case}.zarr")));
        let mut args = vec![
            "quilt".to_string(),
            "unstitch".into(),
            "--input".into(),
            s(&input),
            "--output".into(),
            patches_addr.clone(),
            "--patches-per-chunk".into(),
            "3".into(),
        ];
        args.extend(geometry_args(window, step, border, blend));
        ok(tessera_units(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            "1",
        ));
        let expected_patches = ref_unstitch(&img, &grid);
        assert_eq!(
            read_all(&patches_addr).into_array::<f32>().unwrap(),
            expected_patches,
            "case {case} patches"
        );
        let positions: ArrayD<i64> =
            read_npy(d.path().join(format!("p{case}_positions.npy"))).unwrap();
        for m in 0..positions.shape()[0] {
            let per = grid.per_image() as usize;
            assert_eq!(positions[[m, 0]] as usize, m / per);
            let s = grid.window_start((m % per) as u64);
            for (a, &st) in s.iter().enumerate() {
                assert_eq!(positions[[m, a + 1]] as u64, st);
            }
        }
        // Stitch predictions (here: the patches plus a per-patch offset, so windows disagree).
        let mut predictions = expected_patches.clone();
        for (m, mut p) in predictions.axis_iter_mut(Axis(0)).enumerate() {
            p.mapv_inplace(|x| x + (m % 7) as f32 * 0.01);
        }
        let pred_addr = s(&d.path().join(format!("pred{case}.npy")));
        write_npy(&pred_addr, &predictions).unwrap();
        let out = s(&d.path().join(format!("s{case}.npy")));
        let wout = s(&d.path().join(format!("w{case}.npy")));
        let shape_arg = shape
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec![
            "quilt".to_string(),
            "stitch".into(),
            "--input".into(),
            pred_addr.clone(),
            "--output".into(),
            out.clone(),
            "--weights".into(),
            wout.clone(),
            "--shape".into(),
            shape_arg,
        ];
        if let Some(rows) = chunk_rows {
            let mut chunks = vec![1, shape[1], rows as usize];
            chunks.extend(&shape[3..]);
            let chunks: Vec<String> = chunks.iter().map(|x| x.to_string()).collect();
            args.extend(["--chunks".into(), chunks.join(",")]);
        }
        args.extend(geometry_args(window, step, border, blend));
        ok(run(&args));
        // The same predictions as raw Zarr chunks of 3 patches (read from the chunk files
        // straight into a batch that spans several, where the .npy is summed in place): the
        // same bits.
        let pred_zarr = d.path().join(format!("pred{case}.zarr"));
        let mut chunks: Vec<u64> = predictions.shape().iter().map(|&n| n as u64).collect();
        chunks[0] = 3;
        write_raw_zarr(&pred_zarr, &predictions, chunks);
        let from_zarr = s(&d.path().join(format!("sz{case}.npy")));
        let zarr_args: Vec<String> = args
            .iter()
            .map(|a| match a {
                a if *a == pred_addr => s(&pred_zarr),
                a if *a == out => from_zarr.clone(),
                a if *a == wout => s(&d.path().join(format!("wz{case}.npy"))),
                a => a.clone(),
            })
            .collect();
        ok(run(&zarr_args));
        assert_eq!(
            std::fs::read(&from_zarr).unwrap(),
            std::fs::read(&out).unwrap(),
            "case {case}: stitched from raw Zarr chunks"
        );
        let b: Vec<u64> = if border.is_empty() {
            vec![0; spatial.len()]
        } else {
            parse(border)
        };
        let blend = match blend {
            "gaussian" => Blend::Gaussian,
            "hann" => Blend::Hann,
            _ => Blend::Border,
        };
        let w = weights(
            &grid.window,
            &Weighting {
                blend,
                border: b,
                border_weight: 0.1,
                sigma: 0.125,
            },
        );
        let rows = chunk_rows.unwrap_or(shape[2] as u64);
        let (mean, den) = ref_stitch(
            &predictions,
            shape,
            &grid,
            &w,
            band_rows(rows, grid.window[0]),
        );
        let got: ArrayD<f32> = read_npy(&out).unwrap();
        assert!(
            got.iter()
                .zip(mean.iter())
                .all(|(a, &b)| a.to_bits() == (b as f32).to_bits()),
            "case {case} stitched mean"
        );
        let got_w: ArrayD<f32> = read_npy(&wout).unwrap();
        assert!(
            got_w.iter().zip(den.iter()).all(|(a, b)| *a == *b as f32),
            "case {case} weights"
        );
        // And unstitch -> stitch of the untouched patches gives the input back.
        let back = s(&d.path().join(format!("back{case}.npy")));
        run_io("quilt stitch", &patches_addr, &back, &[]);
        let back: ArrayD<f32> = read_npy(&back).unwrap();
        assert!(
            back.iter()
                .zip(img.iter())
                .all(|(a, b)| (a - b).abs() <= 1e-6),
            "case {case} round trip"
        );
    }
}

#[test]
fn a_memory_bounded_stitch_gives_the_same_bits() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("v.npy");
    let img = random_npy(&input, &[1, 1, 96, 48, 48], 9); // 864 KiB of f32
    let p = s(&d.path().join("p.zarr"));
    let geometry = [
        "--window", "8", "--step", "4", "--border", "1", "--codec", "none",
    ];
    let mut args = io_args("quilt unstitch", &input, &p, &[]);
    args.extend(geometry);
    ok(tessera(&args));
    let free = s(&d.path().join("free.npy"));
    run_io("quilt stitch", &p, &free, &[]);
    // Output chunks of one row make bands of one window (8 rows). 2300K per rank, under
    // the volume's f64 accumulators (3.4 MiB): units of one band, patches read a few at a
    // time. 200K cannot hold one band and is refused, naming the band.
    let bounded = s(&d.path().join("bounded.npy"));
    fails_with(
        tessera(&io_line(
            "quilt stitch",
            &p,
            &bounded,
            "--memory-limit 200K --chunks 1,1,1,48,48",
        )),
        &["--memory-limit", "one band of 8 output rows"],
    );
    let log = run_line(
        "quilt stitch",
        &p,
        &bounded,
        "--memory-limit 2300K --chunks 1,1,1,48,48",
    );
    assert_eq!(
        std::fs::read(&free).unwrap(),
        std::fs::read(&bounded).unwrap()
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("bounded.npy.report.json")).unwrap())
            .unwrap();
    assert_eq!(
        report["runs"][0]["units_total"].as_u64().unwrap(),
        12,
        "{log}"
    );
    // On 3 threads a free stitch writes up to 3 units at once (a lane's write is logged on a
    // line of its own); under --memory-limit 2300K, which holds two units, one at a time
    // (a step computes one unit while it writes the one before): the same bits either way.
    let on_3 = |out: &str, limit: &str| {
        let mut args = vec!["-vv", "--threads", "3"];
        args.extend(io_line("quilt stitch", &p, out, limit));
        ok(tessera(&args))
    };
    let lanes = s(&d.path().join("lanes.npy"));
    let log = on_3(&lanes, "--chunks 1,1,1,48,48");
    assert!(log.lines().any(|l| l.contains("DEBUG wrote unit")), "{log}");
    assert_eq!(
        std::fs::read(&free).unwrap(),
        std::fs::read(&lanes).unwrap()
    );
    let steps = s(&d.path().join("steps.npy"));
    let log = on_3(&steps, "--memory-limit 2300K --chunks 1,1,1,48,48");
    assert!(
        !log.lines().any(|l| l.contains("DEBUG wrote unit")),
        "{log}"
    );
    assert!(log.contains(", wrote unit"), "{log}");
    assert_eq!(
        std::fs::read(&free).unwrap(),
        std::fs::read(&steps).unwrap()
    );
    let back: ArrayD<f32> = read_npy(&free).unwrap();
    assert!(back
        .iter()
        .zip(img.iter())
        .all(|(a, b)| (a - b).abs() <= 1e-6));
    let plan = run_line(
        "quilt stitch",
        &p,
        &bounded,
        "--memory-limit 2300K --chunks 1,1,1,48,48 --dry-run --overwrite",
    );
    let mib: f64 = plan
        .split("memory: about ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|t| t.parse().ok())
        .expect("memory line in the plan");
    assert!(mib * 1048576.0 <= 2300.0 * 1024.0, "{plan}");
}

#[test]
fn stitched_std_follows_the_mixture_formula() {
    let d = tempfile::tempdir().unwrap();
    // 1 image, 1 channel, 4x4, windows 4x2 step 2: two windows per row band... two windows total.
    let patches = ArrayD::from_shape_fn(
        IxDyn(&[2, 1, 4, 4]),
        |i| if i[0] == 0 { 1.0f32 } else { 3.0 },
    );
    let variances =
        ArrayD::from_shape_fn(
            IxDyn(&[2, 1, 4, 4]),
            |i| if i[0] == 0 { 0.0f32 } else { 2.0 },
        );
    let (p, v) = (d.path().join("p.npy"), d.path().join("v.npy"));
    write_npy(&p, &patches).unwrap();
    write_npy(&v, &variances).unwrap();
    let (mean, std) = (d.path().join("m.npy"), d.path().join("s.npy"));
    ok(tessera(&[
        "quilt",
        "stitch",
        "--input",
        &s(&p),
        "--variance",
        &s(&v),
        "--std",
        &s(&std),
        "--output",
        &s(&mean),
        "--shape",
        "1,1,4,6",
        "--window",
        "4",
        "--step",
        "2",
    ]));
    let m: ArrayD<f32> = read_npy(&mean).unwrap();
    let sd: ArrayD<f32> = read_npy(&std).unwrap();
    // Columns 2..4 are covered by both windows: mean 2, std sqrt(2); others by one window.
    assert_eq!(m[[0, 0, 1, 0]], 1.0);
    assert_eq!(m[[0, 0, 1, 3]], 2.0);
    assert_eq!(m[[0, 0, 1, 5]], 3.0);
    assert!((sd[[0, 0, 1, 3]] - 2f32.sqrt()).abs() < 1e-6);
    assert_eq!(sd[[0, 0, 1, 0]], 0.0);
    assert!((sd[[0, 0, 1, 5]] - 2f32.sqrt()).abs() < 1e-6);
}

#[test]
fn nan_in_patches_is_left_out_counted_and_warned_about() {
    let d = tempfile::tempdir().unwrap();
    let mut patches = ArrayD::from_elem(IxDyn(&[9, 1, 4, 4]), 0.5f32);
    patches[[4, 0, 1, 1]] = f32::NAN;
    let p = d.path().join("p.npy");
    write_npy(&p, &patches).unwrap();
    let out = d.path().join("o.npy");
    let log = run_line(
        "quilt stitch",
        &p,
        &out,
        "--shape 1,1,8,8 --window 4 --step 2",
    );
    assert!(log.contains("1 NaN patch values were left out"), "{log}");
    let m: ArrayD<f32> = read_npy(&out).unwrap();
    assert!(m.iter().all(|&x| x == 0.5), "no NaN spread to neighbours");
}

#[test]
fn border_mask_hand_checked() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("m.npy");
    let args = [
        "quilt",
        "border-mask",
        "--output",
        &s(&out),
        "--window",
        "4,5",
        "--border",
        "1",
    ];
    ok(tessera(&args));
    let m: ArrayD<u8> = read_npy(&out).unwrap();
    assert_eq!(m.sum(), 6);
    // The same command again: the mask is there now.
    fails_with(tessera(&args), &["--overwrite"]);
    fails_with(
        tessera(&[
            "quilt",
            "border-mask",
            "--output",
            &s(&d.path().join("x.npy")),
            "--window",
            "4,5",
            "--border",
            "2",
        ]),
        &["--border", "half the window"],
    );
}

#[test]
fn bad_geometry_and_patch_arrays_fail_clearly() {
    let d = tempfile::tempdir().unwrap();
    let input = s(&d.path().join("i.npy"));
    random_npy(&input, &[1, 1, 10, 10], 3);
    let out = s(&d.path().join("p.npy"));
    let unstitch = |extra: &[&str]| {
        let mut a = io_args("quilt unstitch", &input, &out, &[]);
        a.extend_from_slice(extra);
        tessera(&a)
    };
    fails_with(
        unstitch(&["--window", "12,4", "--step", "2"]),
        &["--window", "larger than the image"],
    );
    fails_with(
        unstitch(&["--window", "4", "--step", "0"]),
        &["--step", "positive"],
    );
    fails_with(
        unstitch(&["--window", "4", "--step", "5"]),
        &["--step", "--allow-gaps"],
    );
    fails_with(
        unstitch(&["--window", "4", "--step", "2", "--border", "2"]),
        &["--border", "half the window"],
    );
    fails_with(
        unstitch(&["--window", "4", "--step", "2", "--border-weight", "1.5"]),
        &["--border-weight", "[0, 1]"],
    );
    fails_with(
        unstitch(&["--window", "4,4,4", "--step", "2"]),
        &["--window", "3 values"],
    );
    fails_with(
        tessera(&io_line(
            "quilt unstitch",
            &d.path().join("none.npy"),
            &out,
            "--window 4 --step 2",
        )),
        &["does not exist"],
    );
    let flat = s(&d.path().join("flat.npy"));
    random_npy(&flat, &[10, 10], 4);
    fails_with(
        tessera(&io_line(
            "quilt unstitch",
            &flat,
            &out,
            "--window 4 --step 2",
        )),
        &["(N, C, Y, X)"],
    );
    assert!(!std::path::Path::new(&out).exists());
    // Gaps are allowed when asked for.
    ok(unstitch(&["--window", "4", "--step", "5", "--allow-gaps"]));
    // Stitch: no geometry attribute and no --shape; a patch count that does not match.
    let bare = s(&d.path().join("bare.npy"));
    random_npy(&bare, &[16, 1, 4, 4], 5);
    let res = s(&d.path().join("r.npy"));
    fails_with(
        tessera(&io_args("quilt stitch", &bare, &res, &[])),
        &["no `quilt` geometry", "--shape"],
    );
    fails_with(
        tessera(&io_line(
            "quilt stitch",
            &bare,
            &res,
            "--shape 1,1,10,10 --window 4 --step 3",
        )),
        &["shape", "16, 1, 4, 4"],
    );
    // A corrupt geometry attribute.
    let z = s(&d.path().join("z.zarr"));
    run_line("quilt unstitch", &input, &z, "--window 4 --step 2");
    let meta = d.path().join("z.zarr/zarr.json");
    let text = std::fs::read_to_string(&meta)
        .unwrap()
        .replace("\"step\"", "\"stride\"");
    std::fs::write(&meta, text).unwrap();
    fails_with(
        tessera(&io_args("quilt stitch", &z, &res, &[])),
        &["corrupt `quilt` attribute"],
    );
    fails_with(
        tessera(&io_line(
            "quilt stitch",
            &bare,
            &res,
            "--shape 1,1,10,10 --window 4 --step 2 --memory-limit 200",
        )),
        &["--memory-limit", "too small"],
    );
    assert!(!std::path::Path::new(&res).exists());
}

#[test]
fn weed_drops_pairs_without_labels_inside_the_border() {
    let d = tempfile::tempdir().unwrap();
    let m = 23;
    let inputs = random_f32(&[m, 2, 6, 6], 11);
    let mut rng = Rng::new(12);
    // Label patches: -1 everywhere, except some patches get a label inside (kept) and some
    // only in the border band (dropped).
    let mut labels = ArrayD::from_elem(IxDyn(&[m, 1, 6, 6]), -1i16);
    let mut expect_keep = vec![false; m];
    for (i, keep) in expect_keep.iter_mut().enumerate() {
        match rng.below(3) {
            0 => {
                labels[[i, 0, 2 + rng.below(2) as usize, 3]] = rng.below(4) as i16;
                *keep = true;
            }
            1 => labels[[i, 0, 0, rng.below(6) as usize]] = 2,
            _ => {}
        }
    }
    let (pi, pl) = (d.path().join("in.npy"), d.path().join("lab.npy"));
    write_npy(&pi, &inputs).unwrap();
    write_npy(&pl, &labels).unwrap();
    let (oi, ol, om) = (
        d.path().join("oi.zarr"),
        d.path().join("ol.npy"),
        d.path().join("mask.npy"),
    );
    ok(tessera_units(
        &[
            "quilt",
            "weed",
            "--input",
            &s(&pi),
            "--labels",
            &s(&pl),
            "--missing-label",
            "-1",
            "--border",
            "1",
            "--output",
            &s(&oi),
            "--labels-output",
            &s(&ol),
            "--mask",
            &s(&om),
        ],
        "1",
    ));
    let kept: Vec<usize> = (0..m).filter(|&i| expect_keep[i]).collect();
    let got_inputs = read_all(&s(&oi)).into_array::<f32>().unwrap();
    assert_eq!(got_inputs.shape()[0], kept.len());
    for (row, &i) in kept.iter().enumerate() {
        assert_eq!(
            got_inputs.index_axis(Axis(0), row),
            inputs.index_axis(Axis(0), i)
        );
    }
    let got_labels: ArrayD<i16> = read_npy(&ol).unwrap();
    assert_eq!(got_labels.shape(), &[kept.len(), 1, 6, 6]);
    let mask: ArrayD<u8> = read_npy(&om).unwrap();
    assert_eq!(mask.shape(), &[m], "the mask is (M,), as --help says");
    assert_eq!(
        mask.iter().map(|&x| x == 0).collect::<Vec<_>>(),
        expect_keep
    );
    // Mismatched pairs are refused.
    let short = d.path().join("short.npy");
    write_npy(&short, &ArrayD::from_elem(IxDyn(&[m - 1, 1, 6, 6]), -1i16)).unwrap();
    fails_with(
        tessera(&[
            "quilt",
            "weed",
            "--input",
            &s(&pi),
            "--labels",
            &s(&short),
            "--output",
            &s(&d.path().join("a.npy")),
            "--labels-output",
            &s(&d.path().join("b.npy")),
            "--mask",
            &s(&d.path().join("c.npy")),
        ]),
        &["label patches", "shape"],
    );
}

#[test]
fn weed_refuses_a_missing_label_the_labels_cannot_hold() {
    let d = tempfile::tempdir().unwrap();
    let m = 4;
    let pi = d.path().join("in.npy");
    random_npy(&pi, &[m, 1, 4, 4], 31);
    let weed = |labels: &std::path::Path, missing: Option<&str>| {
        let mut args = vec![
            "quilt".to_string(),
            "weed".into(),
            "--input".into(),
            s(&pi),
            "--labels".into(),
            s(labels),
            "--output".into(),
            s(&d.path().join("oi.npy")),
            "--labels-output".into(),
            s(&d.path().join("ol.npy")),
            "--mask".into(),
            s(&d.path().join("mask.npy")),
        ];
        if let Some(v) = missing {
            args.extend(["--missing-label".into(), v.into()]);
        }
        tessera(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let u8_labels = d.path().join("u8.npy");
    write_npy(&u8_labels, &ArrayD::from_elem(IxDyn(&[m, 1, 4, 4]), 0u8)).unwrap();
    let i32_labels = d.path().join("i32.npy");
    write_npy(&i32_labels, &ArrayD::from_elem(IxDyn(&[m, 1, 4, 4]), 0i32)).unwrap();
    // The default (-1) with unsigned labels, a fraction with integer labels, out of range.
    for (labels, missing, shown, dtype) in [
        (&u8_labels, None, "-1", "uint8"),
        (&i32_labels, Some("2.5"), "2.5", "int32"),
        (&u8_labels, Some("256"), "256", "uint8"),
    ] {
        fails_with(weed(labels, missing), &["--missing-label", shown, dtype]);
        for out in ["oi.npy", "ol.npy", "mask.npy"] {
            assert!(
                !d.path().join(out).exists(),
                "{out} written by a refused run"
            );
        }
    }
    // A value the labels hold runs, and weeds every (all-zero) pair.
    ok(weed(&u8_labels, Some("0")));
    let mask: ArrayD<u8> = read_npy(d.path().join("mask.npy")).unwrap();
    assert_eq!(mask.shape(), &[m]);
    assert!(mask.iter().all(|&x| x == 1));
}

/// Unstitch keeps a write per thread in flight (`Operation::write_lanes`): on 3 threads, a
/// unit that fails mid-run is one clear error with nothing published, and a run killed with
/// writes in flight resumes to the bytes of an uninterrupted one-thread run.
#[test]
fn unstitch_with_writes_in_flight_fails_cleanly_and_resumes_to_the_same_bytes() {
    let d = tempfile::tempdir().unwrap();
    let input = s(&d.path().join("i.npy"));
    random_npy(&input, &[3, 1, 40, 36], 22);
    let run = |threads: &str, out: &str, extra: &str, env: &[(&str, &str)]| {
        let mut args = vec!["--threads", threads];
        let flags = format!("--window 8 --step 4 --patches-per-chunk 5 {extra}");
        args.extend(io_line("quilt unstitch", &input, out, &flags));
        let mut e = vec![("TESSERA_UNIT_BYTES", "1")];
        e.extend_from_slice(env);
        tessera_env(&args, &e)
    };
    let clean = s(&d.path().join("clean.zarr"));
    ok(run("1", &clean, "", &[]));
    let out = s(&d.path().join("p.zarr"));
    fails_with(
        run("3", &out, "", &[("TESSERA_FAIL_UNIT", "7")]),
        &["unit 7 failed on purpose"],
    );
    assert!(!std::path::Path::new(&out).exists());
    assert!(!run(
        "3",
        &out,
        "--overwrite",
        &[("TESSERA_ABORT_AFTER_UNITS", "5")]
    )
    .status
    .success());
    assert!(!std::path::Path::new(&out).exists());
    ok(run("3", &out, "--resume", &[]));
    assert_same_tree(std::path::Path::new(&clean), std::path::Path::new(&out));
    assert_eq!(
        std::fs::read(d.path().join("clean_positions.npy")).unwrap(),
        std::fs::read(d.path().join("p_positions.npy")).unwrap()
    );
}

#[test]
fn killed_quilt_runs_resume_to_identical_bytes() {
    let d = tempfile::tempdir().unwrap();
    let input = s(&d.path().join("i.npy"));
    random_npy(&input, &[2, 1, 40, 36], 21);
    let env = [("TESSERA_UNIT_BYTES", "1")];
    let unstitch = |out: &str, extra: &[(&str, &str)]| {
        let mut e = env.to_vec();
        e.extend_from_slice(extra);
        tessera_env(
            &io_line(
                "quilt unstitch",
                &input,
                out,
                "--window 8 --step 4 --patches-per-chunk 5",
            ),
            &e,
        )
    };
    let clean = s(&d.path().join("clean.zarr"));
    ok(unstitch(&clean, &[]));
    let out = s(&d.path().join("p.zarr"));
    assert!(!unstitch(&out, &[("TESSERA_ABORT_AFTER_UNITS", "3")])
        .status
        .success());
    assert!(!std::path::Path::new(&out).exists());
    let args = io_line(
        "quilt unstitch",
        &input,
        &out,
        "--window 8 --step 4 --patches-per-chunk 5 --resume",
    );
    ok(tessera_env(&args, &env));
    assert_same_tree(std::path::Path::new(&clean), std::path::Path::new(&out));
    assert_eq!(
        std::fs::read(d.path().join("clean_positions.npy")).unwrap(),
        std::fs::read(d.path().join("p_positions.npy")).unwrap()
    );
    // Stitch, killed and resumed, writes the same bytes as an uninterrupted stitch.
    let whole = s(&d.path().join("whole.npy"));
    let stitch = |o: &str, extra: &[&str], e: &[(&str, &str)]| {
        let mut a = io_line("quilt stitch", &clean, o, "--chunks 1,1,4,36");
        a.extend_from_slice(extra);
        tessera_env(&a, e)
    };
    ok(stitch(&whole, &[], &[]));
    let resumed = s(&d.path().join("resumed.npy"));
    assert!(!stitch(
        &resumed,
        &[],
        &[
            ("TESSERA_ABORT_AFTER_UNITS", "2"),
            ("TESSERA_UNIT_BYTES", "1")
        ]
    )
    .status
    .success());
    // The same plan (TESSERA_UNIT_BYTES sizes stitch units too, and is part of the identity).
    ok(stitch(
        &resumed,
        &["--resume"],
        &[("TESSERA_UNIT_BYTES", "1")],
    ));
    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(&resumed).unwrap()
    );
}

/// f64 patches (an f64 output shows any change of summation order) of a 3-D stitch in bands
/// of 6 rows: the banded reference's bits whatever the unit size (`--memory-limit`,
/// `TESSERA_UNIT_BYTES`), after a killed run is resumed, and each window read once on one
/// rank (the report's bytes read).
#[test]
fn stitch_bytes_do_not_depend_on_units_memory_limit_or_resume() {
    let d = tempfile::tempdir().unwrap();
    let shape = [2usize, 2, 30, 12, 10];
    let mut rng = Rng::new(77);
    let img = ArrayD::from_shape_fn(IxDyn(&shape), |_| rng.below(1 << 40) as f64 / 1e9 - 500.0);
    let grid = WindowGrid::new(&[30, 12, 10], &[6, 5, 4], &[3, 3, 3], false).unwrap();
    let mut predictions = ref_unstitch(&img, &grid);
    for (m, mut p) in predictions.axis_iter_mut(Axis(0)).enumerate() {
        p.mapv_inplace(|x| x * (1.0 + (m % 5) as f64 * 0.013));
    }
    let pred = s(&d.path().join("pred.npy"));
    write_npy(&pred, &predictions).unwrap();
    let patch_bytes = (predictions.len() * 8) as u64;
    let stitch = |out: &str, extra: &[&str], env: &[(&str, &str)]| {
        let mut args = io_line("quilt stitch", &pred, out, "--shape 2,2,30,12,10 --window 6,5,4 --step 3 --blend gaussian --sigma 0.3 --chunks 1,2,2,12,10");
        args.extend_from_slice(extra);
        tessera_env(&args, env)
    };
    let w = weights(&grid.window, &Weighting::gaussian(3, 0.3));
    // Chunks of 2 rows, windows of 6: bands of 6 rows, 5 per image.
    let (mean, _) = ref_stitch(&predictions, &shape, &grid, &w, band_rows(2, 6));
    let bits = |path: &str| -> Vec<u64> {
        let a: ArrayD<f64> = read_npy(path).unwrap();
        assert_eq!(a.shape(), &shape);
        a.iter().map(|x| x.to_bits()).collect()
    };
    let expected: Vec<u64> = mean.iter().map(|x| x.to_bits()).collect();
    // (memory limit, TESSERA_UNIT_BYTES, units expected): 160K holds one band per unit.
    let runs: &[(&str, Option<&str>, u64)] = &[
        ("2G", None, 2),
        ("2G", Some("1"), 10),
        ("2G", Some("30000"), 6),
        ("160K", None, 10),
        ("400K", None, 6),
    ];
    for (i, &(limit, unit_bytes, units)) in runs.iter().enumerate() {
        let out = s(&d.path().join(format!("s{i}.npy")));
        let env: Vec<(&str, &str)> = unit_bytes
            .map(|b| vec![("TESSERA_UNIT_BYTES", b)])
            .unwrap_or_default();
        let log = ok(stitch(&out, &["--memory-limit", limit], &env));
        assert!(
            bits(&out) == expected,
            "--memory-limit {limit}, TESSERA_UNIT_BYTES {unit_bytes:?}: not the banded reference"
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{out}.report.json")).unwrap()).unwrap();
        let run = &report["runs"][0];
        assert_eq!(
            run["units_total"].as_u64().unwrap(),
            units,
            "{limit} {unit_bytes:?} {log}"
        );
        // One rank, units in order, each band's carry kept for the next: every window once.
        let read = run["bytes_read"].as_u64().unwrap();
        assert_eq!(read, patch_bytes, "{limit} {unit_bytes:?}: bytes read");
    }
    // Killed after 3 of 10 units and resumed: the resumed run re-reads one carry.
    let resumed = s(&d.path().join("resumed.npy"));
    let env = [("TESSERA_UNIT_BYTES", "1")];
    assert!(
        !stitch(&resumed, &[], &[("TESSERA_ABORT_AFTER_UNITS", "3"), env[0]])
            .status
            .success()
    );
    ok(stitch(&resumed, &["--resume"], &env));
    assert!(bits(&resumed) == expected, "resumed run");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{resumed}.report.json")).unwrap()).unwrap();
    let read = report["runs"][0]["bytes_read"].as_u64().unwrap();
    assert!(
        read > 0 && read < patch_bytes,
        "resumed run read {read} of {patch_bytes}"
    );
}

#[test]
fn float64_patches_beyond_what_the_sums_hold_are_refused_and_the_largest_that_fit_stitch_back() {
    // Every pixel of a 2-D image under window 8 step 4 sums up to 2 x 2 windows: float64
    // patches near f64's largest made infinite means (and, squared for --std, infinite
    // stds) with no word.
    let d = tempfile::tempdir().unwrap();
    let stitch = |scale: f64, std: bool| {
        let img = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[1, 1, 16, 16]), |i| {
            (1.0 + (i[2] * 16 + i[3]) as f64 / 256.0) * scale
        });
        let input = d.path().join(format!("img{scale:e}.npy"));
        write_npy(&input, &img).unwrap();
        let p = s(&d.path().join(format!("p{scale:e}.zarr")));
        run_line("quilt unstitch", &input, &p, "--window 8,8 --step 4,4");
        let out = d.path().join(format!("back{scale:e}{std}.npy"));
        let mut args = vec!["quilt", "stitch", "--input", &p, "--output"];
        let o = s(&out);
        args.push(&o);
        let var = d.path().join(format!("var{scale:e}.zarr"));
        let sd = s(&d.path().join(format!("sd{scale:e}.npy")));
        let v = s(&var);
        if std {
            // Zero variances: the std is the spread of the overlapping windows' values.
            std::fs::remove_dir_all(&var).ok();
            let patches = read_all(&p).to_f64().mapv(|_| 0.0f64);
            tessera::io::create(
                &tessera::io::Address::parse(&v).unwrap(),
                &tessera::io::CreateSpec {
                    flat_chunk_keys: false,
                    shape: patches.shape().iter().map(|&n| n as u64).collect(),
                    dtype: tessera::io::DType::F64,
                    chunks: patches.shape().iter().map(|&n| n as u64).collect(),
                    shards: None,
                    codec: Default::default(),
                    dimension_names: None,
                    attributes: Default::default(),
                },
                &tessera::comm::Local,
                false,
            )
            .and_then(|w| {
                let shape: Vec<u64> = patches.shape().iter().map(|&n| n as u64).collect();
                w.write_box(Some((
                    &tessera::grid::Region::whole(&shape),
                    &tessera::io::Block::F64(patches),
                )))?;
                w.close()
            })
            .unwrap();
            args.extend_from_slice(&["--variance", &v, "--std", &sd]);
        }
        (tessera(&args), out, img)
    };
    // At f64's largest / 2: 4 windows times that overflowed.
    let (done, out, _) = stitch(f64::MAX / 2.0, false);
    fails_with(
        done,
        &[
            "--input",
            "patch 0 holds",
            "beyond 4.4942e307",
            "scale the patches down",
        ],
    );
    assert!(!out.exists());
    // Below the limit: the mean is the image, finite.
    let (done, out, img) = stitch(f64::MAX / 8.0, false);
    ok(done);
    let back: ArrayD<f64> = read_npy(&out).unwrap();
    for (a, b) in back.iter().zip(img.iter()) {
        assert!(
            a.is_finite() && (a - b).abs() <= b.abs() * 1e-15,
            "{a} vs {b}"
        );
    }
    // With --std the squares must fit too.
    let (done, _, _) = stitch(1e200, true);
    fails_with(done, &["--input", "(squared, for --std)"]);
    let (done, out, _) = stitch(1e150, true);
    ok(done);
    let back: ArrayD<f64> = read_npy(&out).unwrap();
    assert!(back.iter().all(|v| v.is_finite()));
}

#[test]
fn unstitch_stitch_and_weed_are_the_same_on_any_thread_count() {
    // Each output value computed by one thread in the one-thread order (issue 30): the same
    // files at 1, 2 and 3 threads, in small units so that several are in flight.
    let d = tempfile::tempdir().unwrap();
    let (image, volume) = (d.path().join("img.npy"), d.path().join("vol.npy"));
    random_npy(&image, &[3, 2, 37, 41], 71);
    random_npy(&volume, &[2, 1, 13, 17, 15], 72);
    let units = [("TESSERA_UNIT_BYTES", "20000")];
    let run = |dir: &str, line: &str| {
        let here = new_dir(d.path().join(dir));
        assert_same_on_1_2_3_threads(&here, &["out.zarr"], &units, |at| {
            let mut a: Vec<String> = vec!["quilt".into()];
            a.extend(line.split_whitespace().map(String::from));
            a.extend(["--output".into(), s(&at.join("out.zarr"))]);
            a
        });
        here.join("threads-1/out.zarr")
    };
    let windows = run(
        "u2",
        &format!(
            "unstitch --input {} --window 8,8 --step 5,3 --border 1 --border-weight 0.2",
            s(&image)
        ),
    );
    run(
        "u3",
        &format!(
            "unstitch --input {} --window 6,6,4 --step 3,4,3",
            s(&volume)
        ),
    );
    for blend in ["border", "gaussian"] {
        run(
            &format!("s-{blend}"),
            &format!(
                "stitch --input {} --blend {blend} --chunks 1,1,9,41",
                s(&windows)
            ),
        );
    }
    // Weeding: the window patches as inputs, labels of which about half are all missing.
    let n = meta(&s(&windows)).shape[0] as usize;
    let mut rng = Rng::new(73);
    let labels = ArrayD::from_shape_fn(IxDyn(&[n, 1, 8, 8]), |_| {
        if rng.below(40) == 0 {
            1i16
        } else {
            -1
        }
    });
    let lab = d.path().join("lab.npy");
    write_npy(&lab, &labels).unwrap();
    let here = new_dir(d.path().join("weed"));
    assert_same_on_1_2_3_threads(&here, &["oi.zarr", "ol.npy", "m.npy"], &units, |at| {
        flags("quilt weed --missing-label -1 --border 1")
            .into_iter()
            .map(String::from)
            .chain([
                "--input".into(),
                s(&windows),
                "--labels".into(),
                s(&lab),
                "--output".into(),
                s(&at.join("oi.zarr")),
                "--labels-output".into(),
                s(&at.join("ol.npy")),
                "--mask".into(),
                s(&at.join("m.npy")),
            ])
            .collect()
    });
}
