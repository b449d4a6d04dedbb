//! `tessera pairs`, `pairs select`, `pairs extract` and `tessera tokens` through the binary:
//! every array checked against a straightforward reference computed here from the input
//! pixels (patches cut pixel by pixel, turned by numpy's rule, overlaps found by scanning the
//! image), every bad input refused with one clear line and nothing written, `--resume` giving
//! the same bytes, and zarr-python reading the group the way qlty's ZarrPatchPairDataset does.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use ndarray::{ArrayD, Dimension, IxDyn};
use tessera::io::{Address, Block, DType};
use tessera::ops::pairs::sampler::{Pair, Sampler, SamplerSpec};

/// Images whose every value says where it is: distinct per (image, channel, position).
fn images(shape: &[usize]) -> ArrayD<f32> {
    let strides = tessera::grid::row_major_strides(shape);
    ArrayD::from_shape_fn(IxDyn(shape), |ix| {
        let flat: usize = ix.slice().iter().zip(&strides).map(|(i, s)| i * s).sum();
        (flat % 4_000_000) as f32 + 0.25
    })
}

/// Entry `i` of `a` along its first axis, flattened.
fn row<T: Copy>(a: &ArrayD<T>, i: usize) -> Vec<T> {
    a.index_axis(ndarray::Axis(0), i).iter().copied().collect()
}

/// [`images`] of `shape`, and where they are written as `img.npy` in `dir`.
fn images_npy(dir: &Path, shape: &[usize]) -> (ArrayD<f32>, std::path::PathBuf) {
    let img = images(shape);
    let input = dir.join("img.npy");
    write_npy(&input, &Block::F32(img.clone()));
    (img, input)
}

fn f32s(address: &str) -> ArrayD<f32> {
    read_all(address).into_array::<f32>().expect("f32")
}

fn i64s(address: &str) -> ArrayD<i64> {
    read_all(address).into_array::<i64>().expect("int64")
}

/// numpy.rot90(a, k) of a (C, H, W) patch, pixel by pixel: out[i, j] = a[j, W - 1 - i] per turn.
fn rot90(a: &ArrayD<f32>, k: i64) -> ArrayD<f32> {
    let mut out = a.clone();
    for _ in 0..k {
        let (c, h, w) = (out.shape()[0], out.shape()[1], out.shape()[2]);
        let src = out.clone();
        out = ArrayD::from_shape_fn(IxDyn(&[c, w, h]), |ix| src[[ix[0], ix[2], w - 1 - ix[1]]]);
    }
    out
}

/// The window at `corner` of image `n` (all channels), cut pixel by pixel.
fn cut(img: &ArrayD<f32>, n: usize, corner: &[usize], window: &[usize]) -> ArrayD<f32> {
    let mut shape = vec![img.shape()[1]];
    shape.extend(window);
    ArrayD::from_shape_fn(IxDyn(&shape), |ix| {
        let mut at = vec![n, ix[0]];
        at.extend(corner.iter().enumerate().map(|(a, &c)| c + ix[a + 1]));
        img[IxDyn(&at)]
    })
}

fn sampler(
    shape: &[usize],
    window: &[u64],
    range: &[f64],
    rotations: &[u8],
    p: u64,
    seed: u64,
) -> Sampler {
    let image: Vec<u64> = shape[2..].iter().map(|&v| v as u64).collect();
    Sampler::new(&SamplerSpec {
        image: &image,
        window,
        delta_range: range,
        rotations,
        pairs_per_image: p,
        seed,
    })
    .unwrap()
}

fn usizes(v: &[u64]) -> Vec<usize> {
    v.iter().map(|&x| x as usize).collect()
}

/// Checks a pairs group against the pairs it should hold, pixel by pixel.
fn check_group(group: &Path, img: &ArrayD<f32>, pairs: &[Pair], window: &[u64]) {
    let g = s(group);
    let (p1, p2) = (
        f32s(&format!("{g}/patches1")),
        f32s(&format!("{g}/patches2")),
    );
    let deltas = f32s(&format!("{g}/deltas"));
    let rotations = i64s(&format!("{g}/rotations"));
    assert_eq!(p1.shape()[0], pairs.len());
    let w = usizes(window);
    for (i, pair) in pairs.iter().enumerate() {
        let n = pair.image as usize;
        let first = cut(img, n, &usizes(&pair.first), &w);
        let mut second = cut(img, n, &usizes(&pair.second), &w);
        if w.len() == 2 {
            second = rot90(&second, i64::from(pair.rotation));
        }
        assert_eq!(
            p1.index_axis(ndarray::Axis(0), i),
            first.view(),
            "patches1[{i}]"
        );
        assert_eq!(
            p2.index_axis(ndarray::Axis(0), i),
            second.view(),
            "patches2[{i}]"
        );
        let d: Vec<f32> = pair.delta().iter().rev().map(|&v| v as f32).collect();
        assert_eq!(row(&deltas, i), d, "deltas[{i}] x first");
        assert_eq!(rotations[i], i64::from(pair.rotation));
    }
}

/// The overlaps by brute force: every image pixel inside both boxes, scanned in row-major
/// order, all channels.
fn brute_overlaps(img: &ArrayD<f32>, pairs: &[Pair], window: &[u64]) -> (Vec<i64>, Vec<f32>) {
    let (mut offsets, mut rows) = (vec![0i64], Vec::new());
    let spatial: Vec<usize> = img.shape()[2..].to_vec();
    let c = img.shape()[1];
    for pair in pairs {
        let inside = |corner: &[u64], at: &[usize]| {
            (0..at.len())
                .all(|a| (corner[a] as usize..(corner[a] + window[a]) as usize).contains(&at[a]))
        };
        let total: usize = spatial.iter().product();
        let mut count = 0;
        for flat in 0..total {
            let mut at = vec![0; spatial.len()];
            let mut rest = flat;
            for a in (0..spatial.len()).rev() {
                at[a] = rest % spatial[a];
                rest /= spatial[a];
            }
            if inside(&pair.first, &at) && inside(&pair.second, &at) {
                count += 1;
                for ch in 0..c {
                    let mut ix = vec![pair.image as usize, ch];
                    ix.extend(&at);
                    rows.push(img[IxDyn(&ix)]);
                }
            }
        }
        offsets.push(offsets.last().unwrap() + count);
    }
    (offsets, rows)
}

fn pairs_args<'a>(input: &'a str, output: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = io_args("pairs", input, output, &[]);
    args.extend_from_slice(extra);
    args
}

#[test]
fn pairs_2d_with_turns_positions_and_overlaps_match_a_straightforward_reference() {
    let d = tempfile::tempdir().unwrap();
    let shape = [3usize, 2, 41, 37];
    let (img, input) = images_npy(d.path(), &shape);
    let out = d.path().join("p.zarr");
    let extra = flags(
        "--window 12,12 --delta-range 3,9 --pairs-per-image 23 --seed 5 --rotations 0,1,2,3 \
        --positions --include-n --overlaps --pairs-per-chunk 4",
    );
    ok(tessera_units(
        &pairs_args(&s(&input), &s(&out), &extra),
        "3000",
    ));
    let pairs = sampler(&shape, &[12, 12], &[3.0, 9.0], &[0, 1, 2, 3], 23, 5).pairs(0..69);
    check_group(&out, &img, &pairs, &[12, 12]);
    let g = s(&out);
    let (q1, q2) = (
        i64s(&format!("{g}/positions1")),
        i64s(&format!("{g}/positions2")),
    );
    for (i, p) in pairs.iter().enumerate() {
        let image = p.image as i64;
        assert_eq!(row(&q1, i), [image, p.first[0] as i64, p.first[1] as i64]);
        assert_eq!(row(&q2, i), [image, p.second[0] as i64, p.second[1] as i64]);
    }
    let (offsets, rows) = brute_overlaps(&img, &pairs, &[12, 12]);
    assert_eq!(
        i64s(&format!("{g}/overlap_offsets"))
            .into_raw_vec_and_offset()
            .0,
        offsets
    );
    for name in ["overlap1", "overlap2"] {
        let o = f32s(&format!("{g}/{name}"));
        assert_eq!(o.shape(), &[*offsets.last().unwrap() as usize, 2]);
        assert_eq!(o.into_raw_vec_and_offset().0, rows, "{name}");
    }
    let attrs = tessera::io::zarr::group_attributes(&out, "").unwrap();
    assert_eq!(attrs["window"], serde_json::json!([12, 12]));
    assert_eq!(attrs["num_patches"], 69);
    assert_eq!(attrs["num_channels"], 2);
    assert_eq!(attrs["patch_shape"], serde_json::json!([12, 12]));
    assert_eq!(meta(&format!("{g}/patches1")).dtype, DType::F32);
}

#[test]
fn pairs_3d_and_their_overlaps_match_the_reference_on_random_geometries() {
    let d = tempfile::tempdir().unwrap();
    for (case, (shape, window, range, p)) in [
        ([2usize, 1, 14, 17, 15], [6u64, 7, 5], [1.0, 5.0], 9u64),
        ([1, 2, 14, 12, 20], [8, 4, 8], [2.0, 6.0], 7),
        ([3, 1, 9, 10, 11], [4, 4, 4], [1.0, 3.0], 5),
    ]
    .into_iter()
    .enumerate()
    {
        let img = images(&shape);
        let input = d.path().join(format!("v{case}.npy"));
        write_npy(&input, &Block::F32(img.clone()));
        let out = d.path().join(format!("v{case}.zarr"));
        let (w, r) = (
            tessera::grid::join(&window),
            format!("{},{}", range[0], range[1]),
        );
        let pp = p.to_string();
        let seed = (case * 7).to_string();
        let extra = [
            "--window",
            &w,
            "--delta-range",
            &r,
            "--pairs-per-image",
            &pp,
            "--seed",
            &seed,
            "--overlaps",
        ];
        ok(tessera_units(
            &pairs_args(&s(&input), &s(&out), &extra),
            "2000",
        ));
        let pairs =
            sampler(&shape, &window, &range, &[], p, case as u64 * 7).pairs(0..shape[0] as u64 * p);
        check_group(&out, &img, &pairs, &window);
        let (offsets, rows) = brute_overlaps(&img, &pairs, &window);
        let g = s(&out);
        assert_eq!(
            i64s(&format!("{g}/overlap_offsets"))
                .into_raw_vec_and_offset()
                .0,
            offsets
        );
        assert_eq!(
            f32s(&format!("{g}/overlap1")).into_raw_vec_and_offset().0,
            rows
        );
        assert_eq!(
            f32s(&format!("{g}/overlap2")).into_raw_vec_and_offset().0,
            rows
        );
        assert_eq!(f32s(&format!("{g}/deltas")).shape(), &[pairs.len(), 3]);
    }
}

/// Mean and sample standard deviation, straightforwardly.
fn stats(p: &ArrayD<f32>) -> (f64, f64) {
    let v: Vec<f64> = p.iter().map(|&x| f64::from(x)).collect();
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    (mean, var.sqrt())
}

#[test]
fn metadata_selection_and_extraction_reproduce_the_pairs() {
    let d = tempfile::tempdir().unwrap();
    let shape = [4usize, 3, 30, 30];
    let img = images(&shape).mapv(|v| (v * 0.37).sin() * (1.0 + v / 1000.0));
    let input = d.path().join("img.npy");
    write_npy(&input, &Block::F32(img.clone()));
    let (meta_out, full, sel, ext) = (
        d.path().join("meta.zarr"),
        d.path().join("full.zarr"),
        d.path().join("sel.npy"),
        d.path().join("ext.zarr"),
    );
    let common =
        flags("--window 10,10 --delta-range 3,7 --pairs-per-image 40 --seed 9 --rotations 0,2,3");
    let mut m = common.to_vec();
    m.push("--metadata-only");
    ok(tessera_units(
        &pairs_args(&s(&input), &s(&meta_out), &m),
        "4000",
    ));
    ok(tessera(&pairs_args(&s(&input), &s(&full), &common)));
    let pairs = sampler(&shape, &[10, 10], &[3.0, 7.0], &[0, 2, 3], 40, 9).pairs(0..160);
    let table = read_all(&s(&meta_out)).to_f64();
    assert_eq!(table.shape(), &[160, 12]);
    for (i, p) in pairs.iter().enumerate() {
        let fields = row(&table, i);
        let dl = p.delta();
        let geometry = [
            p.image as f64,
            p.first[0] as f64,
            p.first[1] as f64,
            p.second[0] as f64,
            p.second[1] as f64,
            dl[1] as f64,
            dl[0] as f64,
            f64::from(p.rotation),
        ];
        assert_eq!(fields[..8], geometry, "row {i}");
        let first = cut(&img, p.image as usize, &usizes(&p.first), &[10, 10]);
        let second = rot90(
            &cut(&img, p.image as usize, &usizes(&p.second), &[10, 10]),
            i64::from(p.rotation),
        );
        let ((m1, s1), (m2, s2)) = (stats(&first), stats(&second));
        for (got, want) in fields[8..].iter().zip([m1, s1, m2, s2]) {
            assert!(
                (got - want).abs() <= 1e-12 * want.abs().max(1.0),
                "row {i}: {got} vs {want}"
            );
        }
    }
    ok(tessera(&[
        "pairs",
        "select",
        "--metadata",
        &s(&meta_out),
        "--output",
        &s(&sel),
        "--by",
        "quantiles",
        "--bins",
        "3",
        "--per-bin",
        "4",
        "--seed",
        "2",
    ]));
    let chosen: Vec<u64> = i64s(&s(&sel)).iter().map(|&v| v as u64).collect();
    let column = |c: usize| {
        table
            .index_axis(ndarray::Axis(1), c)
            .iter()
            .copied()
            .collect::<Vec<_>>()
    };
    let expected = tessera::ops::pairs::select::stratified(
        &column(8),
        &column(9),
        tessera::ops::pairs::select::Strata::Quantiles,
        3,
        4,
        2,
    );
    assert_eq!(chosen, expected);
    assert_eq!(
        chosen.len(),
        9 * 4,
        "3 x 3 quantile cells of 160 pairs all hold 4 or more"
    );
    // `pairs extract` of the metadata's pairs into `output`, then `rest`.
    let extract = |output: &Path, rest: &[&str]| {
        let (i, m, o) = (s(&input), s(&meta_out), s(output));
        let base = [
            "pairs",
            "extract",
            "--input",
            &i,
            "--metadata",
            &m,
            "--output",
            &o,
        ];
        ok(tessera(&[&base[..], rest].concat()))
    };
    extract(&ext, &["--select", &s(&sel), "--overlaps"]);
    let picked: Vec<Pair> = chosen.iter().map(|&i| pairs[i as usize].clone()).collect();
    check_group(&ext, &img, &picked, &[10, 10]);
    let (offsets, _) = brute_overlaps(&img, &picked, &[10, 10]);
    assert_eq!(
        i64s(&format!("{}/overlap_offsets", s(&ext)))
            .into_raw_vec_and_offset()
            .0,
        offsets
    );
    // Every pair extracted is the full run, byte for byte.
    let all = d.path().join("all.zarr");
    extract(&all, &[]);
    for name in ["patches1", "patches2", "deltas", "rotations"] {
        assert_eq!(
            read_all(&format!("{}/{name}", s(&all))),
            read_all(&format!("{}/{name}", s(&full))),
            "{name}"
        );
    }
}

/// Tokens of a (C, U, V) patch, straightforwardly: corners from the flush-window rule, values
/// channel-major.
fn reference_tokens(
    patch: &ndarray::ArrayViewD<'_, f32>,
    t: usize,
    stride: usize,
) -> (Vec<[usize; 2]>, Vec<f32>) {
    let side = patch.shape()[1];
    let mut starts: Vec<usize> = (0..)
        .map(|i| i * stride)
        .take_while(|&s| s + t <= side)
        .collect();
    if *starts.last().unwrap() + t < side {
        starts.push(side - t);
    }
    let corners: Vec<[usize; 2]> = starts
        .iter()
        .flat_map(|&y| starts.iter().map(move |&x| [y, x]))
        .collect();
    let mut values = Vec::new();
    for &[y, x] in &corners {
        for c in 0..patch.shape()[0] {
            for r in y..y + t {
                for q in x..x + t {
                    values.push(patch[[c, r, q]]);
                }
            }
        }
    }
    (corners, values)
}

#[test]
fn tokens_hold_each_patch_s_windows_and_their_overlaps() {
    let d = tempfile::tempdir().unwrap();
    let shape = [2usize, 2, 36, 36];
    let (_, input) = images_npy(d.path(), &shape);
    let (pairs_out, tokens_out) = (d.path().join("p.zarr"), d.path().join("t.zarr"));
    let extra =
        flags("--window 14,14 --delta-range 4,10 --pairs-per-image 9 --rotations 0,1,2,3 --seed 4");
    ok(tessera(&pairs_args(&s(&input), &s(&pairs_out), &extra)));
    ok(tessera_units(
        &io_line(
            "tokens",
            &pairs_out,
            &tokens_out,
            "--token-size 5 --token-stride 4",
        ),
        "5000",
    ));
    let (p, t) = (s(&pairs_out), s(&tokens_out));
    let coords = i64s(&format!("{t}/coords"));
    let (p1, p2) = (
        f32s(&format!("{p}/patches1")),
        f32s(&format!("{p}/patches2")),
    );
    let (t1, t2) = (f32s(&format!("{t}/tokens1")), f32s(&format!("{t}/tokens2")));
    let deltas = f32s(&format!("{p}/deltas"));
    let rotations = i64s(&format!("{p}/rotations"));
    let index = i64s(&format!("{t}/overlap_index_1to2"));
    let back = i64s(&format!("{t}/overlap_index_2to1"));
    let fraction = f32s(&format!("{t}/overlap_fraction"));
    let (mask1, mask2) = (
        read_all(&format!("{t}/overlap_mask1")),
        read_all(&format!("{t}/overlap_mask2")),
    );
    let (mask1, mask2) = (
        mask1.into_array::<u8>().unwrap(),
        mask2.into_array::<u8>().unwrap(),
    );
    for i in 0..18 {
        for (patches, tokens) in [(&p1, &t1), (&p2, &t2)] {
            let (corners, values) =
                reference_tokens(&patches.index_axis(ndarray::Axis(0), i), 5, 4);
            let flat: Vec<i64> = corners
                .iter()
                .flat_map(|c| [c[0] as i64, c[1] as i64])
                .collect();
            assert_eq!(coords.iter().copied().collect::<Vec<_>>(), flat);
            assert_eq!(row(tokens, i), values, "pair {i}");
        }
        let corners: Vec<[u64; 2]> = coords
            .outer_iter()
            .map(|c| [c[0] as u64, c[1] as u64])
            .collect();
        let dl = [deltas[[i, 1]] as i64, deltas[[i, 0]] as i64];
        let want = tessera::ops::pairs::tokens::token_overlaps(
            &corners,
            5,
            dl,
            rotations[i] as u8,
            [14, 14],
        );
        assert_eq!(row(&index, i), want.index_1to2);
        assert_eq!(row(&back, i), want.index_2to1);
        assert_eq!(row(&fraction, i), want.fraction);
        for l in 0..corners.len() {
            assert_eq!(mask1[[i, l]] == 1, want.index_1to2[l] >= 0);
            assert_eq!(mask2[[i, l]] == 1, want.index_2to1[l] >= 0);
        }
    }
    let attrs = tessera::io::zarr::group_attributes(&tokens_out, "").unwrap();
    assert_eq!(attrs["token_size"], 5);
    assert_eq!(attrs["num_tokens"], 16);
}

/// Asserts that nothing was left at `out` (nor its staging twin).
#[track_caller]
fn nothing_at(out: &Path) {
    let partial = format!("{}.partial", s(out));
    assert!(
        !out.exists() && !Path::new(&partial).exists(),
        "{} was written",
        s(out)
    );
}

#[test]
fn every_bad_input_is_one_clear_error_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("img.npy");
    write_npy(&input, &Block::F32(images(&[2, 1, 40, 40])));
    let vol = d.path().join("vol.npy");
    write_npy(&vol, &Block::F32(images(&[1, 1, 20, 20, 20])));
    let out = d.path().join("o.zarr");
    let (i, v, o) = (s(&input), s(&vol), s(&out));
    let (npy_out, missing_in) = (s(&d.path().join("o.npy")), s(&d.path().join("missing.npy")));
    let base = ["--window", "16,16", "--delta-range", "4,12"];
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            pairs_args(&i, &o, &["--window", "16,16", "--delta-range", "3,12"]),
            vec!["--delta-range", "4 <= LOW"],
        ),
        (
            pairs_args(&i, &o, &["--window", "16,16", "--delta-range", "4,13"]),
            vec!["--delta-range", "<= 12"],
        ),
        (
            pairs_args(&i, &o, &["--window", "16,16", "--delta-range", "9,5"]),
            vec!["--delta-range", "LOW <= HIGH"],
        ),
        (
            pairs_args(&i, &o, &["--window", "32,32", "--delta-range", "8,24"]),
            vec!["--window", "fewer than window 32"],
        ),
        (
            pairs_args(&i, &o, &["--window", "16", "--delta-range", "4,12"]),
            vec!["--window", "2 spatial axes"],
        ),
        (
            pairs_args(
                &i,
                &o,
                &[base[0], base[1], base[2], base[3], "--rotations", "0,4"],
            ),
            vec!["--rotations", "4"],
        ),
        (
            pairs_args(
                &v,
                &o,
                &[
                    "--window",
                    "8,8,8",
                    "--delta-range",
                    "2,6",
                    "--rotations",
                    "1",
                ],
            ),
            vec!["--rotations", "2-D"],
        ),
        (
            pairs_args(
                &i,
                &o,
                &[
                    "--window",
                    "16,8",
                    "--delta-range",
                    "4,12",
                    "--rotations",
                    "1",
                ],
            ),
            vec!["--rotations", "square"],
        ),
        (
            pairs_args(
                &i,
                &o,
                &[base[0], base[1], base[2], base[3], "--pairs-per-image", "0"],
            ),
            vec!["--pairs-per-image"],
        ),
        (pairs_args(&i, &npy_out, &base), vec!["--output", "Zarr"]),
        (
            pairs_args(&missing_in, &o, &base),
            vec!["missing.npy", "does not exist"],
        ),
    ];
    for (args, needles) in cases {
        fails_with(tessera(&args), &needles);
        nothing_at(&out);
    }
    // A pairs group to tokenize, and broken copies of it.
    let good = d.path().join("good.zarr");
    ok(tessera(&pairs_args(&i, &s(&good), &base)));
    let tokens = |input: &str, extra: &[&str]| {
        let mut a = io_args("tokens", input, &o, &[]);
        a.extend_from_slice(extra);
        tessera(&a)
    };
    fails_with(
        tokens(&s(&good), &["--token-size", "17"]),
        &["--token-size", "17"],
    );
    fails_with(
        tokens(&s(&good), &["--token-size", "8", "--token-stride", "0"]),
        &["--token-stride"],
    );
    fails_with(
        tokens(&s(&good), &["--token-size", "8", "--token-stride", "9"]),
        &["--token-stride", "9"],
    );
    nothing_at(&out);
    let missing = d.path().join("missing.zarr");
    copy_dir(&good, &missing);
    std::fs::remove_dir_all(missing.join("rotations")).unwrap();
    fails_with(
        tokens(&s(&missing), &["--token-size", "8"]),
        &["no `rotations` array"],
    );
    let short = d.path().join("short.zarr");
    copy_dir(&good, &short);
    std::fs::remove_dir_all(short.join("deltas")).unwrap();
    let a = ArrayD::<f32>::zeros(IxDyn(&[5, 2]));
    // Left open (not closed) until the end of the test.
    let _deltas = write_one_chunk(
        &Address::parse(&format!("{}/deltas", s(&short))).unwrap(),
        &Block::F32(a),
    );
    fails_with(
        tokens(&s(&short), &["--token-size", "8"]),
        &["deltas and rotations", "(32, 2)", "[5, 2]"],
    );
    nothing_at(&out);
    // An existing output is refused, and left alone.
    fails_with(
        tessera(&pairs_args(&i, &s(&good), &base)),
        &["good.zarr", "exists", "--overwrite"],
    );
    assert!(good.join("patches1").exists());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn an_interrupted_run_resumes_to_the_same_bytes() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("img.npy");
    write_npy(&input, &Block::F32(images(&[4, 2, 30, 30])));
    let (clean, out) = (d.path().join("clean.zarr"), d.path().join("o.zarr"));
    let extra = flags(
        "--window 10,10 --delta-range 3,7 --pairs-per-image 12 --rotations 0,1 --overlaps \
        --positions --pairs-per-chunk 4",
    );
    let env = [("TESSERA_UNIT_BYTES", "3000")];
    ok(tessera_env(
        &pairs_args(&s(&input), &s(&clean), &extra),
        &env,
    ));
    let killed = tessera_env(
        &pairs_args(&s(&input), &s(&out), &extra),
        &[env[0], ("TESSERA_ABORT_AFTER_UNITS", "3")],
    );
    assert!(!killed.status.success(), "{}", text(&killed));
    assert!(!out.exists());
    let (input, out_s) = (s(&input), s(&out));
    let resume = resumed(&pairs_args(&input, &out_s, &extra));
    ok(tessera_env(&resume, &env));
    assert_same_tree(&clean, &out);
}

const DATASET: &str = r#"
import sys, numpy as np, zarr
pairs, tokens, images = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
group = zarr.open_group(pairs, mode="r")
# As qlty's ZarrPatchPairDataset: the four arrays, indexed one pair at a time.
p1, p2, dl, rot = group["patches1"], group["patches2"], group["deltas"], group["rotations"]
pos1, pos2 = group["positions1"], group["positions2"]
assert len(p1.shape) == 4 and p1.shape[0] == group.attrs["num_patches"]
assert list(group.attrs["window"]) == [12, 12] and group.attrs["num_channels"] == 3
for i in range(p1.shape[0]):
    a, b, d, r = p1[i], p2[i], dl[i], rot[i]
    (n, y, x), (_, y2, x2) = pos1[i], pos2[i]
    assert d.dtype == np.float32 and rot.dtype == np.int64
    assert (d[0], d[1]) == (x2 - x, y2 - y), (d, x, y, x2, y2)
    assert np.array_equal(a, images[n, :, y:y+12, x:x+12])
    assert np.array_equal(b, np.rot90(images[n, :, y2:y2+12, x2:x2+12], int(r), axes=(-2, -1)))
t = zarr.open_group(tokens, mode="r")
t1, coords = np.asarray(t["tokens1"][...]), np.asarray(t["coords"][...])
T = t.attrs["token_size"]
for i in range(t1.shape[0]):
    for l, (y, x) in enumerate(coords):
        assert np.array_equal(t1[i, l], p1[i][:, y:y+T, x:x+T].reshape(-1))
assert t["overlap_index_1to2"].shape == t1.shape[:2]
print("ok", p1.shape, t1.shape)
"#;

#[test]
fn zarr_python_reads_pairs_like_zarr_patch_pair_dataset_and_tokens_with_numpy() {
    if python_with("numpy, zarr").is_none() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("img.npy");
    write_npy(&input, &Block::F32(images(&[3, 3, 33, 35])));
    let (pairs_out, tokens_out) = (d.path().join("p.zarr"), d.path().join("t.zarr"));
    let extra = flags(
        "--window 12,12 --delta-range 3,9 --pairs-per-image 7 --rotations 0,1,2,3 --positions \
        --include-n",
    );
    ok(tessera(&pairs_args(&s(&input), &s(&pairs_out), &extra)));
    run_line("tokens", &pairs_out, &tokens_out, "--token-size 6");
    let script = d.path().join("check.py");
    std::fs::write(&script, DATASET).unwrap();
    let out = succeeds(
        Command::new(python())
            .arg(&script)
            .arg(&pairs_out)
            .arg(&tokens_out)
            .arg(&input),
        "python check",
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok (21, 3, 12, 12)"));
}

#[test]
fn select_and_extract_refuse_tables_that_do_not_fit() {
    let d = tempfile::tempdir().unwrap();
    let (big, small) = (d.path().join("big.npy"), d.path().join("small.npy"));
    write_npy(&big, &Block::F32(images(&[2, 1, 40, 40])));
    write_npy(&small, &Block::F32(images(&[2, 1, 20, 20])));
    let (meta_zarr, meta_npy) = (d.path().join("meta.zarr"), d.path().join("meta.npy"));
    let sampling = flags("--window 16,16 --delta-range 4,12 --metadata-only");
    ok(tessera(&pairs_args(&s(&big), &s(&meta_zarr), &sampling)));
    ok(tessera(&pairs_args(&s(&big), &s(&meta_npy), &sampling)));
    let bad_sel = d.path().join("bad.npy");
    write_npy(
        &bad_sel,
        &Block::I64(ArrayD::from_elem(IxDyn(&[2]), 1_000_000)),
    );
    let out = d.path().join("o.zarr");
    let extract = |input: &Path, table: &Path, extra: &[&str]| {
        let (i, t, o) = (s(input), s(table), s(&out));
        let mut a = vec![
            "pairs",
            "extract",
            "--input",
            &i,
            "--metadata",
            &t,
            "--output",
            &o,
        ];
        a.extend_from_slice(extra);
        tessera(&a)
    };
    fails_with(
        extract(&small, &meta_zarr, &[]),
        &["--metadata", "row 0", "does not fit"],
    );
    fails_with(extract(&big, &meta_npy, &[]), &["--window", "required"]);
    fails_with(
        extract(&big, &meta_zarr, &["--window", "8,8"]),
        &["--window", "differs"],
    );
    fails_with(extract(&big, &big, &[]), &["is no pairs metadata table"]);
    fails_with(
        extract(&big, &meta_zarr, &["--select", &s(&bad_sel)]),
        &["--select", "1000000"],
    );
    nothing_at(&out);
    let sel = d.path().join("sel.npy");
    let select = |extra: &[&str]| {
        let (t, o) = (s(&meta_zarr), s(&sel));
        let mut a = vec!["pairs", "select", "--metadata", &t, "--output", &o];
        a.extend_from_slice(extra);
        tessera(&a)
    };
    fails_with(select(&["--bins", "0"]), &["--bins"]);
    fails_with(select(&["--per-bin", "0"]), &["--per-bin"]);
    assert!(!sel.exists());
    ok(select(&[]));
    fails_with(select(&[]), &["sel.npy", "exists"]);
}

/// `tessera` under an address-space limit of `bytes` (so that the memory the plan may take is
/// the same on every machine).
fn tessera_within(bytes: u64, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(args)
        .env("TESSERA_MPI", "0")
        .env_remove("RUST_LOG");
    limit_address_space(&mut cmd, bytes);
    cmd.output().expect("run tessera")
}

#[test]
fn two_to_the_forty_pairs_per_image_are_refused_while_planning_and_nothing_is_written() {
    // 2^40 pairs per image aborted allocating the unit list while planning (--dry-run too);
    // --metadata-only planned a 384 TiB .npy and failed at its first write, leaving the lock,
    // journal and .partial behind.
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("img.npy");
    write_npy(&input, &Block::F32(images(&[4, 1, 64, 64])));
    let run = |output: &str, extra: &[&str]| {
        let out = d.path().join(output);
        let mut args = io_line(
            "pairs",
            &input,
            &out,
            "--window 8,8 --delta-range 2,4 --pairs-per-image 1099511627776",
        );
        args.extend_from_slice(extra);
        // 8 GiB of address space: more than any valid run here needs, less than the plan's
        // 67108864 units of pairs (12 GiB at most while planning).
        tessera_within(8 << 30, &args)
    };
    let nothing_written = |case: &str| {
        let left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "img.npy")
            .collect();
        assert!(left.is_empty(), "{case}: left {left:?}");
    };
    for extra in [&[][..], &["--dry-run"]] {
        let case = format!("metadata table {extra:?}");
        let mut args = vec!["--metadata-only"];
        args.extend_from_slice(extra);
        fails_with(
            run("m.npy", &args),
            &[
                "--output",
                "m.npy needs 384.0 TiB on disk",
                "free on the file system of",
            ],
        );
        nothing_written(&case);
        // The pairs group: compressed (zstd) arrays are not refused on their uncompressed
        // size, but the plan's unit list does not fit in memory.
        let case = format!("pairs group {extra:?}");
        fails_with(
            run("p.zarr", extra),
            &[
                "the plan's list of 67108864 units",
                "--pairs-per-image 1099511627776 x 4 images",
                "available",
            ],
        );
        nothing_written(&case);
        // Stored raw, the group is refused on its size before its units are listed.
        let mut args = vec!["--codec", "none"];
        args.extend_from_slice(extra);
        fails_with(
            run("p.zarr", &args),
            &[
                "p.zarr/patches1, ",
                "p.zarr/rotations need",
                "TiB on disk (stored uncompressed)",
            ],
        );
        nothing_written(&format!("raw {case}"));
        let mut args = vec!["--overlaps"];
        args.extend_from_slice(extra);
        fails_with(
            run("p.zarr", &args),
            &["the overlap offsets of 4398046511104 pairs", "--overlaps"],
        );
        nothing_written(&format!("overlaps {case}"));
    }
}

#[test]
fn pairs_and_tokens_are_the_same_on_any_thread_count() {
    // Issue 30: the same files at 1, 2 and 3 threads, several units in flight.
    let d = tempfile::tempdir().unwrap();
    let (_, input) = images_npy(d.path(), &[3, 2, 40, 37]);
    let units = [("TESSERA_UNIT_BYTES", "4000")];
    let here = new_dir(d.path().join("pairs"));
    assert_same_on_1_2_3_threads(&here, &["p.zarr"], &units, |at| {
        let extra = flags(
            "--window 10,10 --delta-range 3,7 --pairs-per-image 17 --seed 6 --rotations 0,1,2,3 \
            --positions --overlaps --pairs-per-chunk 5",
        );
        let (i, o) = (s(&input), s(&at.join("p.zarr")));
        pairs_args(&i, &o, &extra)
            .into_iter()
            .map(String::from)
            .collect()
    });
    let pairs = here.join("threads-1/p.zarr");
    let here = new_dir(d.path().join("tokens"));
    assert_same_on_1_2_3_threads(&here, &["t.zarr"], &units, |at| {
        io_line(
            "tokens",
            &pairs,
            &at.join("t.zarr"),
            "--token-size 4 --token-stride 3",
        )
        .into_iter()
        .map(String::from)
        .collect()
    });
}
