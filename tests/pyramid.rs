//! `tessera pyramid` end to end: hand-checked levels, equality with straightforward reference
//! implementations on random inputs (whatever the unit size), Laplacian round trip, layouts,
//! and every kind of bad input.

mod common;

use common::*;
use ndarray::{ArrayD, Dimension, IxDyn};
use ndarray_npy::write_npy;
use serde_json::Value;

fn unit_sizes() -> [&'static str; 2] {
    // Tiny units force several stages (levels read back from the staged output).
    ["2000", "67108864"]
}

/// A level `f` times coarser than `a` per axis, each voxel `voxel(its index)`.
fn coarser(a: &ArrayD<f64>, f: &[usize], voxel: impl Fn(&[usize]) -> f64) -> ArrayD<f64> {
    let shape: Vec<usize> = a
        .shape()
        .iter()
        .zip(f)
        .map(|(&d, &f)| d.div_ceil(f))
        .collect();
    ArrayD::from_shape_fn(IxDyn(&shape), |o| voxel(o.slice()))
}

/// Reference mean level: each output voxel is the f64 sum of its block in C order / count.
fn ref_mean(a: &ArrayD<f64>, f: &[usize]) -> ArrayD<f64> {
    coarser(a, f, |o| {
        let block = a.slice_each_axis(|ax| {
            let k = ax.axis.index();
            let lo = o[k] * f[k];
            ndarray::Slice::from(lo..((o[k] + 1) * f[k]).min(ax.len))
        });
        block.iter().sum::<f64>() / block.len() as f64
    })
}

/// Reference mode level (ties to the smallest).
fn ref_mode(a: &ArrayD<f64>, f: &[usize]) -> ArrayD<f64> {
    coarser(a, f, |o| {
        let mut counts = std::collections::BTreeMap::<i64, usize>::new();
        for (idx, &v) in a.indexed_iter() {
            let idx = idx.slice();
            if (0..o.len()).all(|k| o[k] * f[k] <= idx[k] && idx[k] < (o[k] + 1) * f[k]) {
                *counts.entry(v as i64).or_default() += 1;
            }
        }
        let best = counts.values().copied().max().unwrap();
        *counts.iter().find(|(_, &c)| c == best).unwrap().0 as f64
    })
}

/// Reference Gaussian level: dense product of per-axis Gaussians (sigma f/3, 4 sigma) centred
/// on the block centre, normalised over the voxels inside the array.
fn ref_gaussian(a: &ArrayD<f64>, f: &[usize]) -> ArrayD<f64> {
    coarser(a, f, |o| {
        let (mut num, mut den) = (0.0, 0.0);
        for (idx, &v) in a.indexed_iter() {
            let idx = idx.slice();
            let mut w = 1.0;
            for k in 0..o.len() {
                if f[k] == 1 {
                    if idx[k] != o[k] {
                        w = 0.0;
                    }
                    continue;
                }
                let s = f[k] as f64 / 3.0;
                let c = (f[k] * o[k]) as f64 + (f[k] as f64 - 1.0) / 2.0;
                let d = idx[k] as f64 - c;
                w *= if d.abs() <= 4.0 * s {
                    (-d * d / (2.0 * s * s)).exp()
                } else {
                    0.0
                };
            }
            num += w * v;
            den += w;
        }
        num / den
    })
}

/// `name.zarr` inside a directory per run, so runs can be compared file by file.
fn out_dir(dir: &std::path::Path, k: usize, name: &str) -> std::path::PathBuf {
    let d = dir.join(format!("run{k}"));
    std::fs::create_dir_all(&d).unwrap();
    d.join(format!("{name}.zarr"))
}

fn random(shape: &[usize], seed: u64, max: u64) -> ArrayD<f64> {
    let mut rng = Rng::new(seed);
    ArrayD::from_shape_fn(IxDyn(shape), |_| rng.below(max) as f64)
}

/// Writes [`random`] values below 100 as a float32 `.npy` at `path`; returns the path.
fn random_npy(path: &std::path::Path, shape: &[usize], seed: u64) -> std::path::PathBuf {
    write_npy(path, &random(shape, seed, 100).mapv(|v| v as f32)).unwrap();
    path.to_path_buf()
}

fn level(store: &std::path::Path, l: usize) -> ArrayD<f64> {
    read_all(&format!("{}/{l}", store.display())).to_f64()
}

fn group_attrs(store: &std::path::Path) -> Value {
    let j: Value =
        serde_json::from_slice(&std::fs::read(store.join("zarr.json")).unwrap()).unwrap();
    j["attributes"].clone()
}

/// `tessera pyramid` of `input` to `out` with `flags`, in units of `unit` bytes.
#[track_caller]
fn pyramid_in_units(
    input: &(impl AsRef<std::path::Path> + ?Sized),
    out: &(impl AsRef<std::path::Path> + ?Sized),
    flags: &[&str],
    unit: &str,
) {
    ok(tessera_env(
        &io_args("pyramid", input, out, flags),
        &[("TESSERA_UNIT_BYTES", unit)],
    ));
}

#[test]
fn hand_checked_2d_levels_and_ome_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("a.npy");
    let a = ArrayD::from_shape_vec(
        IxDyn(&[3, 5]),
        (1..=15).map(|v| v as f32).collect::<Vec<_>>(),
    )
    .unwrap();
    write_npy(&input, &a).unwrap();
    let out = dir.path().join("p.zarr");
    run_line(
        "pyramid",
        &input,
        &out,
        "--levels 3 --voxel-size 0.5,0.25 --unit micrometer",
    );
    let l1 = level(&out, 1);
    assert_eq!(
        l1.iter().copied().collect::<Vec<_>>(),
        vec![4.0, 6.0, 7.5, 11.5, 13.5, 15.0],
        "partial edge blocks are means of what they cover"
    );
    let l2 = level(&out, 2);
    assert_eq!(l2.shape(), &[1, 2]);
    assert_eq!(l2[[0, 0]], (4.0 + 6.0 + 11.5 + 13.5) / 4.0);
    assert_eq!(l2[[0, 1]], (7.5 + 15.0) / 2.0);
    assert_eq!(level(&out, 0), a.mapv(f64::from));
    let ome = &group_attrs(&out)["ome"];
    assert_eq!(ome["version"], "0.5");
    let ms = &ome["multiscales"][0];
    assert_eq!(
        ms["axes"][0],
        serde_json::json!({"name": "y", "type": "space", "unit": "micrometer"})
    );
    let t2 = &ms["datasets"][2]["coordinateTransformations"];
    assert_eq!(t2[0]["scale"], serde_json::json!([2.0, 1.0]));
    assert_eq!(t2[1]["translation"], serde_json::json!([0.75, 0.375]));
    assert!(!dir.path().join("p.zarr.partial").exists());
}

#[test]
fn mean_equals_the_reference_on_random_volumes_at_any_unit_size() {
    let dir = tempfile::tempdir().unwrap();
    // u16 3-D with odd sizes, and f32 with a channel axis and factor 1,2 (per-axis factors).
    let a = random(&[11, 14, 9], 1, 60000).mapv(|v| v as u16);
    let b = random(&[3, 13, 10], 2, 1000).mapv(|v| (v / 7.0) as f32);
    let (ia, ib) = (dir.path().join("a.npy"), dir.path().join("b.npy"));
    write_npy(&ia, &a).unwrap();
    write_npy(&ib, &b).unwrap();
    for (k, unit) in unit_sizes().iter().enumerate() {
        let oa = out_dir(dir.path(), k, "a");
        pyramid_in_units(&ia, &oa, &["--chunks", "4,4,4"], unit);
        let mut prev = a.mapv(f64::from);
        for l in 1..3 {
            let expect = ref_mean(&prev, &[2, 2, 2]).mapv(f64::round);
            assert_eq!(level(&oa, l), expect, "u16 level {l}, unit bytes {unit}");
            prev = expect;
        }
        assert!(
            !oa.join("4").exists(),
            "11x14x9 in 4^3 chunks stops at level 3"
        );
        let ob = out_dir(dir.path(), k, "b");
        pyramid_in_units(
            &ib,
            &ob,
            &["--axes", "cyx", "--factor", "2,3", "--chunks", "1,4,4"],
            unit,
        );
        let mut prev = b.mapv(f64::from);
        for l in 1..3 {
            let expect = ref_mean(&prev, &[1, 2, 3]).mapv(|x| f64::from(x as f32));
            assert_eq!(level(&ob, l), expect, "f32 level {l}, unit bytes {unit}");
            prev = expect;
        }
    }
    assert_same_tree(&out_dir(dir.path(), 0, "a"), &out_dir(dir.path(), 1, "a"));
    assert_same_tree(&out_dir(dir.path(), 0, "b"), &out_dir(dir.path(), 1, "b"));
}

#[test]
fn gaussian_and_mode_equal_their_references() {
    let dir = tempfile::tempdir().unwrap();
    let a = random(&[9, 12, 10], 3, 1000).mapv(|v| (v / 100.0) as f32);
    let ia = dir.path().join("a.npy");
    write_npy(&ia, &a).unwrap();
    let labels = random(&[10, 9, 13], 4, 4).mapv(|v| v as u8);
    let il = dir.path().join("l.npy");
    write_npy(&il, &labels).unwrap();
    for (k, unit) in unit_sizes().iter().enumerate() {
        let og = out_dir(dir.path(), k, "g");
        pyramid_in_units(
            &ia,
            &og,
            &["--method", "gaussian", "--chunks", "4,4,4"],
            unit,
        );
        let mut prev = a.mapv(f64::from);
        for l in 1..3 {
            let expect = ref_gaussian(&prev, &[2, 2, 2]);
            let got = level(&og, l);
            let worst = got
                .iter()
                .zip(&expect)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-5, "gaussian level {l}: off by {worst}");
            prev = got;
        }
        let om = out_dir(dir.path(), k, "m");
        pyramid_in_units(&il, &om, &["--method", "mode", "--chunks", "4,4,4"], unit);
        let mut prev = labels.mapv(f64::from);
        for l in 1..3 {
            let expect = ref_mode(&prev, &[2, 2, 2]);
            assert_eq!(level(&om, l), expect, "mode level {l}");
            prev = expect;
        }
    }
    assert_same_tree(&out_dir(dir.path(), 0, "g"), &out_dir(dir.path(), 1, "g"));
    assert_same_tree(&out_dir(dir.path(), 0, "m"), &out_dir(dir.path(), 1, "m"));
    // Mode on float data works but warns.
    let out = run_line("pyramid", &ia, &dir.path().join("fm.zarr"), "--method mode");
    assert!(out.contains("label images"), "{out}");
}

#[test]
fn laplacian_reconstructs_level_zero() {
    let dir = tempfile::tempdir().unwrap();
    let a = random(&[13, 17, 11], 5, 65000).mapv(|v| v as u16);
    let b = random(&[21, 30], 6, 1 << 20).mapv(|v| (v / 1e5 - 5.0) as f32);
    let (ia, ib) = (dir.path().join("a.npy"), dir.path().join("b.npy"));
    write_npy(&ia, &a).unwrap();
    write_npy(&ib, &b).unwrap();
    for (input, chunks, name) in [(&ia, "4,4,4", "a"), (&ib, "8,8", "b")] {
        for (k, unit) in unit_sizes().iter().enumerate() {
            let out = out_dir(dir.path(), k, name);
            pyramid_in_units(
                input,
                &out,
                &["--method", "laplacian", "--chunks", chunks],
                unit,
            );
            assert!(out.join("diff_0").is_dir() && out.join("2").is_dir());
            let rec = dir.path().join(format!("{name}{k}_rec.npy"));
            run_io("pyramid reconstruct", &out, &rec, &[]);
            let got = read_all(&s(&rec)).to_f64();
            let want = read_all(&s(input)).to_f64();
            let scale = want.iter().fold(0.0f64, |m, &x| m.max(x.abs()));
            let worst = got
                .iter()
                .zip(&want)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            assert!(
                worst <= 1e-5 * scale,
                "{name}: reconstruction off by {worst} (scale {scale})"
            );
            if name == "a" {
                assert_eq!(got, want, "integer data comes back exactly");
            }
        }
        assert_same_tree(&out_dir(dir.path(), 0, name), &out_dir(dir.path(), 1, name));
    }
    // Reconstructing something that is not a Laplacian pyramid is refused.
    let mean = dir.path().join("mean.zarr");
    run_io("pyramid", &ia, &mean, &[]);
    let restored = dir.path().join("r.npy");
    fails_with(
        tessera(&io_args("pyramid reconstruct", &mean, &restored, &[])),
        &["not a Laplacian pyramid"],
    );
}

#[test]
fn pyramid_sampler_layout_puts_levels_under_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let input = random_npy(&dir.path().join("a.npy"), &[16, 16, 16], 7);
    let out = dir.path().join("store.zarr");
    run_line(
        "pyramid",
        &input,
        &format!("{}/field1", out.display()),
        "--layout pyramid-sampler --chunks 4,4,4",
    );
    for l in 0..3 {
        assert!(
            out.join(format!("field1/{l}/zarr.json")).is_file(),
            "level {l}"
        );
    }
    assert!(!out.join("field1/3").exists());
    assert!(group_attrs(&out.join("field1")).get("ome").is_none());
}

#[test]
fn bad_inputs_are_refused_with_one_clear_line_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let input = random_npy(&dir.path().join("a.npy"), &[8, 8, 8], 8);
    let four = random_npy(&dir.path().join("four.npy"), &[2, 3, 8, 8], 8);
    let empty = dir.path().join("empty.npy");
    write_npy(&empty, &ArrayD::<f32>::zeros(IxDyn(&[0, 4, 4]))).unwrap();
    let out = dir.path().join("o.zarr");
    let (i, o) = (s(&input), s(&out));
    let run = |extra: &[&str]| {
        let mut args = io_args("pyramid", &i, &o, &[]);
        args.extend_from_slice(extra);
        tessera(&args)
    };
    fails_with(run(&["--factor", "2,0,2"]), &["--factor", "0"]);
    fails_with(
        run(&["--factor", "2,2"]),
        &["--factor", "2 values for 3 spatial axes"],
    );
    fails_with(run(&["--factor", "1"]), &["--factor", "no axis is reduced"]);
    fails_with(run(&["--levels", "0"]), &["--levels", "0 levels"]);
    fails_with(run(&["--levels", "9"]), &["--levels", "already 1 voxel"]);
    fails_with(run(&["--axes", "zcyx"]), &["--axes", "names 4 axes"]);
    fails_with(
        run(&["--unit", "um"]),
        &["--unit", "not an OME-Zarr space unit"],
    );
    fails_with(run(&["--chunks", "4,4"]), &["chunk"]);
    fails_with(
        tessera(&io_args("pyramid", &four, &o, &[])),
        &["--axes", "name them"],
    );
    fails_with(
        tessera(&io_line("pyramid", &four, &o, "--axes zcyx")),
        &["--axes", "time, channel, then space"],
    );
    fails_with(tessera(&io_args("pyramid", &empty, &o, &[])), &["size 0"]);
    fails_with(
        tessera(&io_args(
            "pyramid",
            &dir.path().join("missing.npy"),
            &o,
            &[],
        )),
        &["missing.npy"],
    );
    fails_with(
        tessera(&io_args("pyramid", &i, &dir.path().join("o.npy"), &[])),
        &["--output", "not a Zarr store"],
    );
    fails_with(
        tessera(&["pyramid", "--output", &o]),
        &["--input", "required"],
    );
    assert!(!out.exists(), "nothing written by refused runs");
    // A group is not an array; an existing output is kept without --overwrite.
    ok(run(&["--chunks", "4,4,4"]));
    fails_with(
        tessera(&io_args("pyramid", &o, &dir.path().join("p.zarr"), &[])),
        &["group"],
    );
    let before = tree(&out);
    fails_with(run(&[]), &["exists"]);
    assert_eq!(tree(&out), before);
    ok(run(&["--overwrite", "--method", "gaussian"]));
    // Corrupt metadata on the input: a clear error, not a panic.
    std::fs::write(out.join("0/zarr.json"), "{ not json").unwrap();
    let level0 = format!("{o}/0");
    fails_with(
        tessera(&io_args(
            "pyramid",
            &level0,
            &dir.path().join("q.zarr"),
            &[],
        )),
        &["zarr.json"],
    );
}

#[test]
fn convert_writes_an_ome_zarr_pyramid_straight_from_a_stack() {
    let dir = tempfile::tempdir().unwrap();
    let slices = dir.path().join("slices");
    tessera::demo::write_stack(&slices).unwrap();
    let out = dir.path().join("stack.zarr");
    let pyramid = ["--pyramid-levels", "3", "--pyramid-factor", "1,2,2"];
    run_io("convert", &slices, &out, &pyramid);
    let l0 = level(&out, 0);
    assert_eq!(l0.shape(), &[64, 256, 256]);
    assert_eq!(level(&out, 1), ref_mean(&l0, &[1, 2, 2]).mapv(f64::round));
    assert_eq!(level(&out, 2).shape(), &[64, 64, 64]);
    assert!(group_attrs(&out)["ome"]["multiscales"][0]["datasets"][2].is_object());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp") || n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    fails_with(
        tessera(&io_line("convert", &slices, &out, "--pyramid-levels 2")),
        &["exists"],
    );
    fails_with(
        tessera(&io_line(
            "convert",
            &slices,
            &dir.path().join("x.npy"),
            "--pyramid-levels 2",
        )),
        &["--pyramid-levels", "not a Zarr store"],
    );
    fails_with(
        tessera(&io_line(
            "convert",
            &slices,
            &dir.path().join("y.zarr"),
            "--pyramid-levels many",
        )),
        &["--pyramid-levels", "auto"],
    );
}

#[test]
fn a_killed_pyramid_resumes_to_the_same_bytes() {
    // Small units and several stages (levels beyond what one unit holds), killed after a few
    // units: nothing is published, and --resume finishes it to the bytes of a whole run.
    let dir = tempfile::tempdir().unwrap();
    let a = random(&[24, 20, 28], 7, 60000).mapv(|v| v as u16);
    let input = dir.path().join("v.npy");
    write_npy(&input, &a).unwrap();
    let args = |out: &std::path::Path, extra: &[&str]| {
        let mut v = vec![
            "pyramid".to_string(),
            "--input".into(),
            s(&input),
            "--output".into(),
            s(out),
            "--chunks".into(),
            "4,4,4".into(),
            "--method".into(),
            "gaussian".into(),
        ];
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let env = [("TESSERA_UNIT_BYTES", "2000")];
    let run = |out: &std::path::Path, extra: &[&str], env: &[(&str, &str)]| {
        let v = args(out, extra);
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        tessera_env(&refs, env)
    };
    let whole = dir.path().join("whole.zarr");
    ok(run(&whole, &[], &env));
    let cut = dir.path().join("cut.zarr");
    let killed = run(&cut, &[], &[env[0], ("TESSERA_ABORT_AFTER_UNITS", "5")]);
    assert!(!killed.status.success(), "{}", text(&killed));
    assert!(!cut.exists(), "an interrupted pyramid is not published");
    assert!(dir.path().join("cut.zarr.partial").exists());
    ok(run(&cut, &["--resume"], &env));
    // Equal trees, but for the multiscale's name, which is the store's own name.
    let rename = |t: Vec<(String, Vec<u8>)>| -> Vec<(String, String)> {
        t.into_iter()
            .map(|(p, b)| {
                (
                    p,
                    String::from_utf8_lossy(&b).replace("\"whole\"", "\"cut\""),
                )
            })
            .collect()
    };
    let (w, c) = (rename(tree(&whole)), rename(tree(&cut)));
    assert_eq!(w.len(), c.len());
    for (a, b) in w.iter().zip(&c) {
        assert!(a == b, "{} differs after resume", a.0);
    }
}

/// The exact mean of integers, rounded half away from zero (i128, by another formula than
/// the kernel's: floor((2|s| + n) / 2n) with the sign put back).
fn exact_mean(values: &[i128]) -> i128 {
    let (s, n) = (values.iter().sum::<i128>(), values.len() as i128);
    let m = (2 * s.abs() + n) / (2 * n);
    if s < 0 {
        -m
    } else {
        m
    }
}

/// The exact mean of each 2x2 block of `a` ([`exact_mean`]), row by row.
fn block_means<T: Copy + Into<i128>>(a: &ArrayD<T>) -> Vec<i128> {
    let blocks = blocks_2x2(a);
    blocks
        .iter()
        .map(|b| exact_mean(&b.iter().map(|&v| v.into()).collect::<Vec<_>>()))
        .collect()
}

/// The 2 x 2 blocks of a 2-D array, each as its values in C order.
fn blocks_2x2<T: Copy>(a: &ArrayD<T>) -> Vec<Vec<T>> {
    let (h, w) = (a.shape()[0], a.shape()[1]);
    let mut out = Vec::new();
    for by in 0..h.div_ceil(2) {
        for bx in 0..w.div_ceil(2) {
            let mut b = Vec::new();
            for y in 2 * by..(2 * by + 2).min(h) {
                for x in 2 * bx..(2 * bx + 2).min(w) {
                    b.push(a[[y, x]]);
                }
            }
            out.push(b);
        }
    }
    out
}

#[test]
fn sixty_four_bit_extremes_keep_their_values_in_every_method() {
    // int64/uint64 blocks at or near the maximum became 0 (mean, gaussian) and a constant
    // uint64 block of 2^53 + 1 became 2^53 (the mean went through f64).
    let dir = tempfile::tempdir().unwrap();
    let big = (1i64 << 53) + 1;
    #[rustfmt::skip]
    let signed = ArrayD::from_shape_vec(IxDyn(&[4, 6]), vec![
        i64::MAX, i64::MAX, i64::MAX - 1, i64::MAX, big, big,
        i64::MAX, i64::MAX, i64::MAX, i64::MAX, big, big,
        i64::MIN, i64::MIN, i64::MIN, i64::MAX, 7, -8,
        i64::MIN, i64::MIN + 1, i64::MAX, i64::MIN, -3, 0,
    ]).unwrap();
    let unsigned = signed.mapv(|v| (v as u64).wrapping_add(1 << 63));
    let (is, us) = (dir.path().join("i.npy"), dir.path().join("u.npy"));
    write_npy(&is, &signed).unwrap();
    write_npy(&us, &unsigned).unwrap();
    let big_u = ArrayD::from_elem(IxDyn(&[4, 4]), (1u64 << 53) + 1);
    let bs = dir.path().join("big.npy");
    write_npy(&bs, &big_u).unwrap();
    let pyramid = |input: &std::path::Path, method: &str| {
        let out = dir.path().join(format!(
            "{}_{method}.zarr",
            input.file_stem().unwrap().to_string_lossy()
        ));
        run_io(
            "pyramid",
            input,
            &out,
            &["--method", method, "--levels", "2"],
        );
        read_all(&format!("{}/1", out.display()))
    };
    // Mean: exact.
    let got = pyramid(&is, "mean").into_array::<i64>().unwrap();
    let want: Vec<i64> = block_means(&signed).iter().map(|&m| m as i64).collect();
    assert_eq!(got.iter().copied().collect::<Vec<_>>(), want);
    assert_eq!(got[[0, 0]], i64::MAX);
    assert_eq!(got[[0, 2]], big);
    let got = pyramid(&us, "mean").into_array::<u64>().unwrap();
    let want: Vec<u64> = block_means(&unsigned).iter().map(|&m| m as u64).collect();
    assert_eq!(got.iter().copied().collect::<Vec<_>>(), want);
    assert_eq!(got[[0, 0]], u64::MAX);
    let got = pyramid(&bs, "mean").into_array::<u64>().unwrap();
    assert!(got.iter().all(|&v| v == (1 << 53) + 1), "{got:?}");
    // Mode: exact (ties to the smallest).
    let got = pyramid(&is, "mode").into_array::<i64>().unwrap();
    assert_eq!(got[[0, 0]], i64::MAX);
    assert_eq!(got[[1, 0]], i64::MIN);
    // Gaussian: f64 (53 bits) by definition, saturated, never wrapped to 0.
    for (input, top) in [(&is, i64::MAX as f64), (&us, u64::MAX as f64)] {
        let got = pyramid(input, "gaussian");
        let reference = ref_gaussian(&read_all(&s(input)).to_f64(), &[2, 2]);
        for (g, r) in got.clone().to_f64().iter().zip(&reference) {
            let r = r.clamp(-top, top);
            assert!((g - r).abs() <= r.abs() * 1e-12 + 1.0, "{g} vs {r}");
        }
        drop(got);
    }
    // Constant blocks at the maximum: the f64 sum rounds to 2^64 (2^63), one past it.
    let top = ArrayD::from_elem(IxDyn(&[4, 4]), u64::MAX);
    let ts = dir.path().join("top.npy");
    write_npy(&ts, &top).unwrap();
    let got = pyramid(&ts, "gaussian").into_array::<u64>().unwrap();
    assert!(got.iter().all(|&v| v >= u64::MAX - 4096), "{got:?}");
    let got = pyramid(&bs, "gaussian").into_array::<u64>().unwrap();
    assert!(
        got.iter().all(|&v| v.abs_diff((1 << 53) + 1) <= 2),
        "{got:?}"
    );
}

#[test]
fn float_extremes_average_without_overflow_and_laplacian_refuses_what_float32_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let max = f64::MAX;
    let a = ArrayD::from_shape_vec(
        IxDyn(&[2, 6]),
        vec![
            max, max, max, -max, 1e-310, 5e-324, max, max, max, -max, 0.0, 5e-324,
        ],
    )
    .unwrap();
    let input = dir.path().join("f.npy");
    write_npy(&input, &a).unwrap();
    let run = |method: &str| {
        let out = dir.path().join(format!("{method}.zarr"));
        let args = io_args(
            "pyramid",
            &input,
            &out,
            &["--method", method, "--levels", "2"],
        );
        (out.clone(), tessera(&args))
    };
    let (out, done) = run("mean");
    ok(done);
    let l1 = level(&out, 1);
    // max x 4 overflowed the f64 sum to inf; the mean of four max is max.
    assert_eq!(l1[[0, 0]], max);
    assert_eq!(l1[[0, 1]], 0.0);
    assert_eq!(l1[[0, 2]], (1e-310 + 5e-324 + 0.0 + 5e-324) / 4.0);
    let (out, done) = run("gaussian");
    ok(done);
    assert!(level(&out, 1).iter().all(|v| v.is_finite()));
    let (out, done) = run("laplacian");
    // A unit's values are seen when it is computed: the staged output stays, unpublished.
    fails_with(
        done,
        &[
            "--method",
            "float32",
            "1.7976931348623157e308 at voxel [0, 0]",
            "--method gaussian",
        ],
    );
    assert!(!out.exists());
}

/// Every method, and `pyramid reconstruct`, writes the same files on 1 thread and on 3 (the
/// levels are computed in slabs on the rank's threads).
#[test]
fn levels_are_the_same_on_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("v.npy");
    let v = random(&[19, 26, 23], 9, 60000).mapv(|x| x as f32 / 7.0);
    write_npy(&input, &v).unwrap();
    for method in ["mean", "mode", "gaussian", "laplacian"] {
        let outs: Vec<std::path::PathBuf> = ["1", "3"]
            .iter()
            .map(|threads| {
                let out = out_dir(dir.path(), threads.parse().unwrap(), method);
                run_io(
                    "pyramid",
                    &input,
                    &out,
                    &[
                        "--method",
                        method,
                        "--chunks",
                        "8,8,8",
                        "--threads",
                        threads,
                    ],
                );
                out
            })
            .collect();
        assert_same_tree(&outs[0], &outs[1]);
        if method == "laplacian" {
            let recs: Vec<std::path::PathBuf> = ["1", "3"]
                .iter()
                .map(|threads| {
                    let rec = dir.path().join(format!("run{threads}/rec.npy"));
                    run_io(
                        "pyramid reconstruct",
                        &outs[usize::from(*threads == "3")],
                        &rec,
                        &["--threads", threads],
                    );
                    rec
                })
                .collect();
            assert_eq!(
                std::fs::read(&recs[0]).unwrap(),
                std::fs::read(&recs[1]).unwrap()
            );
        }
    }
}

#[test]
fn laplacian_refuses_values_float32_cannot_difference_naming_the_first() {
    // Float data past half of float32's largest would turn into infinities in the levels or
    // difference maps: refused, the first such voxel (C order) named, nothing published. The
    // volume spans several of the scan's blocks of 65536 values; two such voxels, in later
    // blocks, and the earlier one is named, at any thread count.
    let dir = tempfile::tempdir().unwrap();
    let shape = [2, 40, 40, 50];
    let mut a = ArrayD::<f32>::from_elem(IxDyn(&shape), 1.0);
    a[[1, 30, 2, 7]] = -3.0e38;
    a[[1, 39, 0, 0]] = f32::MAX;
    a[[0, 1, 1, 1]] = f32::INFINITY; // not finite: the Laplacian keeps it as it is
    let input = dir.path().join("big.npy");
    write_npy(&input, &a).unwrap();
    for t in ["1", "2"] {
        let out = dir.path().join(format!("o{t}.zarr"));
        let mut args = io_line("pyramid", &input, &out, "--method laplacian --axes czyx");
        args.extend(["--threads", t]);
        fails_with(
            tessera(&args),
            &[
                "laplacian",
                "-3e38",
                "voxel [1, 30, 2, 7]",
                "--method gaussian",
            ],
        );
        // Nothing published (units before the one that found it stay staged, as after any
        // failure part-way).
        assert!(!out.exists(), "nothing published");
    }
    // Within the limit, and integers of any size: accepted.
    a[[1, 30, 2, 7]] = 1.0e38;
    a[[1, 39, 0, 0]] = -1.7e38;
    write_npy(&input, &a).unwrap();
    run_line(
        "pyramid",
        &input,
        &dir.path().join("ok.zarr"),
        "--method laplacian --axes czyx",
    );
    let big = dir.path().join("u64.npy");
    write_npy(&big, &ArrayD::<u64>::from_elem(IxDyn(&[4, 6, 6]), u64::MAX)).unwrap();
    run_line(
        "pyramid",
        &big,
        &dir.path().join("u.zarr"),
        "--method laplacian",
    );
}
