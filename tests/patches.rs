//! `tessera patches` end to end: the CT notebook's examples, a reference implementation on
//! random slices (files, CSV and JSON compared), both formats, splits, `--min-std`,
//! `verify` against each corruption, every bad input (one error line, nothing written),
//! resume after a kill, 1/2/4 ranks under mpirun, and Python reading the outputs as the
//! notebook's unit-test cell does.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use ndarray::{Array2, Array3};
use tessera::io::{images, Block};

/// A slice file under `root`: `.npy` of any element type, or an image.
fn write_slice(root: &Path, rel: &str, slice: &Block) {
    let path = root.join(rel.replace('\\', "/"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    if rel.ends_with(".npy") {
        tessera::with_block!(slice, a => ndarray_npy::write_npy(&path, a)).unwrap();
    } else {
        images::write_tiff(&path, slice).unwrap();
    }
}

/// Random float32 values in [0, 1).
fn random_unit(rng: &mut Rng, h: usize, w: usize) -> Array2<f32> {
    Array2::from_shape_fn((h, w), |_| (rng.next() >> 40) as f32 / (1u64 << 24) as f32)
}

/// A data root holding `slices` (each as `rel`) and `train_manifest.csv` (`index,path,min,max`
/// as the notebook's Day-2 manifest); returns the manifest path.
fn dataset(root: &Path, slices: &[(&str, Block)]) -> PathBuf {
    let mut csv = String::from("index,path,min,max\n");
    for (i, (rel, slice)) in slices.iter().enumerate() {
        write_slice(root, rel, slice);
        csv.push_str(&format!("{i},{rel},0.0,1.0\n"));
    }
    let manifest = root.join("train_manifest.csv");
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(&manifest, csv).unwrap();
    manifest
}

/// A dataset of `n` random float32 slices of varied shapes, with paths in `/` and `\`.
fn random_dataset(root: &Path, n: usize, seed: u64) -> (PathBuf, Vec<Array2<f32>>) {
    let mut rng = Rng::new(seed);
    let shapes = [(40, 36), (24, 24), (15, 40), (33, 17), (48, 16)];
    let slices: Vec<Array2<f32>> = (0..n)
        .map(|i| {
            let (h, w) = shapes[i % shapes.len()];
            random_unit(&mut rng, h, w)
        })
        .collect();
    let names: Vec<String> = (0..n)
        .map(|i| {
            if i % 2 == 0 {
                format!("slices/s_{i:03}.npy")
            } else {
                format!("slices\\s_{i:03}.npy")
            }
        })
        .collect();
    let blocks: Vec<(&str, Block)> = names
        .iter()
        .zip(&slices)
        .map(|(n, s)| (n.as_str(), Block::F32(s.clone().into_dyn())))
        .collect();
    (dataset(root, &blocks), slices)
}

/// The documented order of the statistics' f64 sums: value k of a patch (row-major) into
/// lane k % 8, each lane in turn, the lanes added as ((0+1)+(2+3))+((4+5)+(6+7)).
fn lane_sum(terms: impl Iterator<Item = f64>) -> f64 {
    let mut lanes = [0.0f64; 8];
    for (k, t) in terms.enumerate() {
        lanes[k % 8] += t;
    }
    let l = lanes;
    ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]))
}

/// The reference patch set, written the plain way: every window r*stride (while it fits),
/// row-major; statistics summed in f64 in the documented lanes ([`lane_sum`]).
struct RefPatch {
    id: String,
    slice: usize,
    row: usize,
    col: usize,
    values: Vec<f32>,
    min: f32,
    max: f32,
    mean: f64,
    std: f64,
}

fn reference(
    split: &str,
    slices: &[Array2<f32>],
    ps: usize,
    st: usize,
    min_std: f64,
) -> Vec<RefPatch> {
    let mut out = Vec::new();
    for (i, s) in slices.iter().enumerate() {
        let (h, w) = s.dim();
        let mut r = 0;
        while r + ps <= h {
            let mut c = 0;
            while c + ps <= w {
                let mut values = Vec::new();
                for y in r..r + ps {
                    for x in c..c + ps {
                        values.push(s[[y, x]]);
                    }
                }
                let n = values.len() as f64;
                let mean = lane_sum(values.iter().map(|&v| v as f64)) / n;
                let var = lane_sum(values.iter().map(|&v| (v as f64 - mean).powi(2))) / n;
                let p = RefPatch {
                    id: format!("{split}_{i:06}_{r:03}_{c:03}"),
                    slice: i,
                    row: r,
                    col: c,
                    min: values.iter().copied().fold(f32::INFINITY, f32::min),
                    max: values.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                    values,
                    mean,
                    std: var.sqrt(),
                };
                if p.std >= min_std {
                    out.push(p);
                }
                c += st;
            }
            r += st;
        }
    }
    out
}

/// A patch manifest as rows of fields (no quoted fields in these tests).
fn read_csv(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

fn read_meta(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("patch_meta.json")).unwrap()).unwrap()
}

/// Checks a manifest and its patches against the reference, field by field.
fn assert_matches_reference(
    out: &Path,
    patches: &[RefPatch],
    src: &dyn Fn(usize) -> String,
    place: &dyn Fn(usize, &RefPatch) -> String,
) {
    let rows = read_csv(&out.join("patch_manifest.csv"));
    assert!(["patch_path", "zarr_index"].contains(&rows[0][5].as_str()));
    assert_eq!(
        rows[0][..11].join(","),
        "patch_id,slice_index,src_path,row,col,patch_path,min,max,mean,std,dtype"
            .replace("patch_path", &rows[0][5])
    );
    assert_eq!(rows.len() - 1, patches.len());
    for (k, (row, p)) in rows[1..].iter().zip(patches).enumerate() {
        assert_eq!(row[0], p.id);
        assert_eq!(row[1], p.slice.to_string());
        assert_eq!(row[2], src(p.slice));
        assert_eq!(
            (row[3].clone(), row[4].clone()),
            (p.row.to_string(), p.col.to_string())
        );
        assert_eq!(row[5], place(k, p));
        let f = |i: usize| row[i].parse::<f64>().unwrap();
        assert_eq!((f(6), f(7)), (p.min as f64, p.max as f64), "{}", p.id);
        assert_eq!((f(8), f(9)), (p.mean, p.std), "{}", p.id);
        assert_eq!(row[10], "float32");
    }
}

fn npy_values(path: &Path) -> Array2<f32> {
    ndarray_npy::read_npy(path).unwrap()
}

/// `patches --manifest <manifest> --output <out> --patch-size 16 --stride 8 <extra>`.
fn args<'a>(manifest: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    patches_16_8(&["--manifest", manifest], out, extra)
}

/// `patches --split <train> --split <val> --output <out> --patch-size 16 --stride 8 <extra>`.
fn split_args<'a>(train: &'a str, val: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    patches_16_8(&["--split", train, "--split", val], out, extra)
}

/// `patches <inputs> --output <out> --patch-size 16 --stride 8 <extra>`.
fn patches_16_8<'a>(inputs: &[&'a str], out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["patches"];
    v.extend(inputs);
    v.extend(["--output", out, "--patch-size", "16", "--stride", "8"]);
    v.extend(extra);
    v
}

#[test]
fn the_notebooks_examples() {
    let d = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(5);
    let manifest = dataset(
        d.path(),
        &[
            (
                "a.npy",
                Block::F32(Array2::<f32>::zeros((512, 512)).into_dyn()),
            ),
            (
                "b.npy",
                Block::F32(Array2::<f32>::zeros((480, 512)).into_dyn()),
            ),
            (
                "c.npy",
                Block::F32(random_unit(&mut rng, 362, 362).into_dyn()),
            ),
        ],
    );
    let out = d.path().join("patches/train");
    ok(tessera(&manifest_args(&manifest, d.path(), &out, &[])));
    let rows = read_csv(&out.join("patch_manifest.csv"));
    let count = |slice: &str| rows[1..].iter().filter(|r| r[1] == slice).count();
    assert_eq!((count("0"), count("1"), count("2")), (49, 42, 16));
    let first: Vec<(&str, &str)> = rows[1..4]
        .iter()
        .map(|r| (r[3].as_str(), r[4].as_str()))
        .collect();
    assert_eq!(first, [("0", "0"), ("0", "64"), ("0", "128")]);
    for r in rows[1..].iter().filter(|r| r[1] != "2") {
        assert_eq!(&r[6..10], ["0.0", "0.0", "0.0", "0.0"], "{}", r[0]);
    }
    assert_eq!(rows[1][5], "patches/train/train_000000_000_000.npy");
    let meta = read_meta(&out);
    assert_eq!(meta["num_slices"], 3);
    assert_eq!(meta["num_patches"], 49 + 42 + 16);
    assert_eq!(meta["source_manifest"], "train_manifest.csv");
    assert_eq!(meta["patch_dir"], "patches/train");
    let p = npy_values(&out.join("train_000002_192_064.npy"));
    assert_eq!(p.dim(), (128, 128));
    ok(tessera(&["patches", "verify", &s(&out)]));
}

#[test]
fn npy_output_matches_a_reference_on_random_slices() {
    let d = tempfile::tempdir().unwrap();
    let (manifest, slices) = random_dataset(d.path(), 7, 11);
    let out = d.path().join("out");
    let log = ok(tessera(&args(&s(&manifest), &s(&out), &[])));
    assert!(
        log.contains("smaller than the 16x16 patch")
            || slices.iter().all(|s| s.nrows() >= 16 && s.ncols() >= 16),
        "{log}"
    );
    let patches = reference("train", &slices, 16, 8, f64::NEG_INFINITY);
    assert!(patches.len() > 20);
    let src = |i: usize| format!("slices/s_{i:03}.npy");
    // The data root defaults to the manifest's directory.
    let place = |_: usize, p: &RefPatch| format!("out/{}.npy", p.id);
    assert_matches_reference(&out, &patches, &src, &place);
    for p in &patches {
        let values = npy_values(&out.join(format!("{}.npy", p.id)));
        assert_eq!(values.as_slice().unwrap(), &p.values[..], "{}", p.id);
    }
    let files = std::fs::read_dir(&out).unwrap().count();
    assert_eq!(
        files,
        patches.len() + 2,
        "only patches, the manifest and the meta"
    );
    let rows = read_csv(&out.join("patch_manifest.csv"));
    assert_eq!(&rows[0][11..], ["src_index", "src_min", "src_max"]);
    assert_eq!(&rows[1][11..], ["0", "0.0", "1.0"]);
    let meta = read_meta(&out);
    let small = slices
        .iter()
        .filter(|s| s.nrows() < 16 || s.ncols() < 16)
        .count();
    let expected = serde_json::json!({
        "num_slices": 7, "num_patches": patches.len(), "patch_size": 16, "stride": 8,
        "source_manifest": "train_manifest.csv", "patch_dir": "out", "format": "npy",
        "split": "train", "source_input": null, "min_std": null,
        "dropped": {"small_slices": small, "low_std_patches": 0},
        "tessera_version": env!("CARGO_PKG_VERSION"),
    });
    let mut without = meta.clone();
    without.as_object_mut().unwrap().remove("created");
    assert_eq!(without, expected);
    let created = meta["created"].as_str().unwrap();
    assert!(
        created.len() == 19 && created.as_bytes()[10] == b' ',
        "{created}"
    );
    let meta_text = std::fs::read_to_string(out.join("patch_meta.json")).unwrap();
    let keys: Vec<&str> = meta_text
        .lines()
        .filter_map(|l| l.trim().strip_prefix('"')?.split('"').next())
        .take(7)
        .collect::<Vec<_>>();
    assert_eq!(
        keys,
        [
            "num_slices",
            "num_patches",
            "patch_size",
            "stride",
            "source_manifest",
            "patch_dir",
            "created"
        ]
    );
    ok(tessera(&["patches", "verify", &s(&out)]));
}

#[test]
fn zarr_output_holds_the_same_patches_in_chunks() {
    let d = tempfile::tempdir().unwrap();
    let (manifest, slices) = random_dataset(d.path(), 9, 12);
    let patches = reference("train", &slices, 16, 8, f64::NEG_INFINITY);
    // Sharded and compressed (patches cut into memory, then stored by zarrs), and raw chunks
    // of 7 (streamed to their files as they are cut; chunks straddle slices, the last is
    // short and padded).
    assert_ne!(patches.len() % 7, 0);
    let configurations = [
        ("sharded", ["--chunks", "5", "--shards", "10"], 5, Some(10)),
        ("raw", ["--chunks", "7", "--codec", "none"], 7, None),
    ];
    for (name, flags, chunks, shards) in configurations {
        let out = d.path().join(format!("prepared/zarr-{name}"));
        let extra = [&["--format", "zarr"][..], &flags].concat();
        ok(tessera(&args(&s(&manifest), &s(&out), &extra)));
        zarr_holds(&out, &patches, chunks, shards);
        let meta = read_meta(&out);
        assert_eq!(
            meta["zarr_array"],
            format!("prepared/zarr-{name}/patches.zarr")
        );
        assert_eq!(meta["zarr_chunks"], chunks);
        ok(tessera(&["patches", "verify", &s(&out)]));
    }
    let raw = d.path().join("prepared/zarr-raw/patches.zarr");
    let chunk_files = std::fs::read_dir(&raw)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("c.")
        })
        .count();
    assert_eq!(
        chunk_files,
        patches.len().div_ceil(7),
        "flat chunk keys c.N.0.0"
    );
}

/// The Zarr array of `out` holds `patches`, in chunks (and shards) of the given length.
fn zarr_holds(out: &Path, patches: &[RefPatch], chunks: u64, shards: Option<u64>) {
    let src = |i: usize| format!("slices/s_{i:03}.npy");
    let place = |k: usize, _: &RefPatch| k.to_string();
    assert_matches_reference(out, patches, &src, &place);
    let zarr = s(&out.join("patches.zarr"));
    let m = meta(&zarr);
    assert_eq!(m.shape, vec![patches.len() as u64, 16, 16]);
    assert_eq!(m.chunks.clone().unwrap()[0], chunks);
    assert_eq!(m.shards.clone().map(|v| v[0]), shards);
    let all = read_all(&zarr).into_array::<f32>().unwrap();
    for (k, p) in patches.iter().enumerate() {
        let got: Vec<f32> = all
            .index_axis(ndarray::Axis(0), k)
            .iter()
            .copied()
            .collect();
        assert_eq!(got, p.values, "{}", p.id);
    }
}

#[test]
fn several_splits_each_get_a_dataset() {
    let d = tempfile::tempdir().unwrap();
    let (train, train_slices) = random_dataset(&d.path().join("train"), 4, 13);
    let (val, val_slices) = random_dataset(&d.path().join("val"), 3, 14);
    let out = d.path().join("out");
    let (t, v) = (format!("train={}", s(&train)), format!("val={}", s(&val)));
    ok(tessera(&split_args(&t, &v, &s(&out), &[])));
    for (name, slices) in [("train", &train_slices), ("val", &val_slices)] {
        let patches = reference(name, slices, 16, 8, f64::NEG_INFINITY);
        let src = |i: usize| format!("slices/s_{i:03}.npy");
        let place = |_: usize, p: &RefPatch| format!("../out/{name}/{}.npy", p.id);
        assert_matches_reference(&out.join(name), &patches, &src, &place);
        assert_eq!(read_meta(&out.join(name))["split"], name);
    }
    ok(tessera(&[
        "patches",
        "verify",
        &s(&out),
        "--data-root",
        &s(&d.path().join("train")),
    ]));
}

#[test]
fn min_std_drops_flat_patches_and_counts_them() {
    let d = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(15);
    let mut half = random_unit(&mut rng, 32, 48);
    half.slice_mut(ndarray::s![.., ..24]).fill(0.5);
    let manifest = dataset(d.path(), &[("h.npy", Block::F32(half.clone().into_dyn()))]);
    let out = d.path().join("out");
    ok(tessera(&args(
        &s(&manifest),
        &s(&out),
        &["--min-std", "0.01"],
    )));
    let kept = reference("train", std::slice::from_ref(&half), 16, 8, 0.01);
    let all = reference(
        "train",
        std::slice::from_ref(&half),
        16,
        8,
        f64::NEG_INFINITY,
    );
    assert!(kept.len() < all.len() && !kept.is_empty());
    let rows = read_csv(&out.join("patch_manifest.csv"));
    let ids: Vec<&str> = rows[1..].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(ids, kept.iter().map(|p| p.id.as_str()).collect::<Vec<_>>());
    let meta = read_meta(&out);
    assert_eq!(
        meta["dropped"]["low_std_patches"],
        (all.len() - kept.len()) as u64
    );
    assert_eq!(meta["min_std"], 0.01);
    assert_eq!(meta["num_patches"], kept.len());
}

#[test]
fn volumes_image_stacks_and_other_dtypes() {
    let d = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(16);
    let vol = Array3::from_shape_fn((3, 20, 24), |_| (rng.next() % 65536) as u16);
    std::fs::create_dir_all(d.path().join("data")).unwrap();
    ndarray_npy::write_npy(d.path().join("data/vol.npy"), &vol).unwrap();
    let out = d.path().join("vol-out");
    run_line(
        "patches",
        &d.path().join("data/vol.npy"),
        &out,
        "--patch-size 16 --stride 4 --split-name ct",
    );
    let slices: Vec<Array2<f32>> = vol.outer_iter().map(|s| s.mapv(|v| v as f32)).collect();
    let patches = reference("ct", &slices, 16, 4, f64::NEG_INFINITY);
    let place = |_: usize, p: &RefPatch| format!("../vol-out/{}.npy", p.id);
    assert_matches_reference(&out, &patches, &|_| "vol.npy".into(), &place);
    assert_eq!(read_meta(&out)["source_input"], "vol.npy");
    // u16 values leave [0, 1]: verify says so, and passes without a range.
    fails_with(
        tessera(&[
            "patches",
            "verify",
            &s(&out),
            "--data-root",
            &s(&d.path().join("data")),
        ]),
        &["problem(s)"],
    );
    ok(tessera(&[
        "patches",
        "verify",
        &s(&out),
        "--data-root",
        &s(&d.path().join("data")),
        "--expect-range",
        "none",
    ]));

    // A directory of TIFFs, read as convert reads a stack.
    let stack = d.path().join("data/stack");
    let slices = write_slices(&stack, "ct", 3, &[18, 18], tessera::io::DType::I16, 3);
    let out = d.path().join("data/stack-out");
    let geometry = ["--patch-size", "16", "--stride", "2"];
    run_io("patches", &stack, &out, &geometry);
    let floats: Vec<Array2<f32>> = slices
        .into_iter()
        .map(|b| {
            b.into_array::<i16>()
                .unwrap()
                .mapv(|v| v as f32)
                .into_dimensionality()
                .unwrap()
        })
        .collect();
    let patches = reference("train", &floats, 16, 2, f64::NEG_INFINITY);
    let src = |i: usize| format!("stack/ct_{i:03}.tif");
    assert_matches_reference(&out, &patches, &src, &|_, p| {
        format!("stack-out/{}.npy", p.id)
    });
    // A manifest of TIFF slices, too.
    let manifest = d.path().join("data/m.csv");
    std::fs::write(&manifest, "path\nstack/ct_000.tif\nstack/ct_002.tif\n").unwrap();
    let out = d.path().join("data/tif-out");
    ok(tessera(&[
        "patches",
        "--manifest",
        &s(&manifest),
        "--output",
        &s(&out),
        "--patch-size",
        "16",
        "--stride",
        "2",
    ]));
    assert_eq!(read_meta(&out)["num_patches"], 8);
}

/// Every bad input: one error line naming the problem, a non-zero exit, nothing written.
#[test]
fn bad_inputs_are_refused_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("data");
    let mut rng = Rng::new(17);
    let good = Block::F32(random_unit(&mut rng, 20, 20).into_dyn());
    write_slice(&root, "ok.npy", &good);
    write_slice(
        &root,
        "cube.npy",
        &Block::F32(ndarray::ArrayD::zeros(vec![2, 20, 20])),
    );
    let mut nan = random_unit(&mut rng, 20, 20);
    nan[[3, 4]] = f32::NAN;
    write_slice(&root, "nan.npy", &Block::F32(nan.into_dyn()));
    let mut inf = random_unit(&mut rng, 20, 20);
    inf[[5, 1]] = f32::INFINITY;
    write_slice(&root, "inf.npy", &Block::F32(inf.into_dyn()));
    write_slice(
        &root,
        "big.npy",
        &Block::F64(ndarray::ArrayD::from_elem(vec![20, 20], 1e300)),
    );
    std::fs::write(root.join("garbage.npy"), b"not a numpy file").unwrap();
    let csv = |name: &str, text: &[u8]| {
        let p = root.join(name);
        std::fs::write(&p, text).unwrap();
        s(&p)
    };
    let out = s(&d.path().join("out"));
    // `--manifest` and a manifest written as `name` with `text`, then `rest`'s words.
    let manifest = |name: &str, text: &[u8], rest: &str| -> Vec<String> {
        let mut a = vec!["--manifest".to_string(), csv(name, text)];
        a.extend(rest.split_whitespace().map(String::from));
        a
    };
    let words = |line: &str| -> Vec<String> { line.split_whitespace().map(String::from).collect() };
    let ok_csv: &[u8] = b"path\nok.npy\n";
    let absolute = format!("path\n{}\n", s(&root.join("ok.npy")));
    let missing: &[u8] = b"path\nok.npy\ngone1.npy\nok.npy\ngone2.npy\n";
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            vec!["--manifest".into(), s(&root.join("none.csv"))],
            vec!["none.csv", "does not exist"],
        ),
        (
            vec!["--manifest".into(), s(&root)],
            vec!["cannot read the manifest"],
        ),
        (manifest("bin.csv", b"\xff\xfe\x00", ""), vec!["not UTF-8"]),
        (manifest("empty.csv", b"", ""), vec!["empty"]),
        (
            manifest("header.csv", b"index,path\n", ""),
            vec!["no slices"],
        ),
        (
            manifest("nopath.csv", b"index,file\n0,ok.npy\n", ""),
            vec!["no `path` column"],
        ),
        (
            manifest("missing.csv", missing, ""),
            vec![
                "2 slice file(s) missing",
                "gone1.npy (row 2)",
                "gone2.npy (row 4)",
            ],
        ),
        (
            manifest("cube.csv", b"path\nok.npy\ncube.npy\n", ""),
            vec!["cube.npy", "not a 2-D slice (shape 2x20x20)"],
        ),
        (
            manifest("garbage.csv", b"path\ngarbage.npy\n", ""),
            vec!["garbage.npy", "not a valid .npy"],
        ),
        (
            manifest("nan.csv", b"path\nnan.npy\n", ""),
            vec!["nan.npy", "NaN or infinite", "row 3, column 4"],
        ),
        (
            manifest("inf.csv", b"path\nok.npy\ninf.npy\nnan.npy\n", ""),
            vec!["inf.npy", "row 5, column 1", "and 1 more"],
        ),
        (
            manifest("big.csv", b"path\nbig.npy\n", ""),
            vec!["big.npy", "NaN or infinite values as float32"],
        ),
        (
            manifest("abs.csv", absolute.as_bytes(), ""),
            vec!["row 1 (slice 0)", "absolute path"],
        ),
        (
            manifest("win.csv", b"path\nC:\\data\\ok.npy\n", ""),
            vec!["absolute path"],
        ),
        (
            manifest("up.csv", b"path\nok.npy\nsub\\..\\..\\ok.npy\n", ""),
            vec!["row 2 (slice 1)", "climbs out of the data root"],
        ),
        (
            manifest("m.csv", ok_csv, "--patch-size 0"),
            vec!["--patch-size", "at least 1"],
        ),
        (
            manifest("m.csv", ok_csv, "--stride 0"),
            vec!["--stride", "at least 1"],
        ),
        (
            manifest("m.csv", ok_csv, "--split-name a/b"),
            vec!["--split-name", "not a valid file-name part"],
        ),
        (
            vec!["--split".into(), format!("../x={}", csv("m.csv", ok_csv))],
            vec!["--split", "\"../x\""],
        ),
        (words("--split trainonly"), vec!["--split", "NAME=MANIFEST"]),
        (manifest("m.csv", ok_csv, "--min-std=-1"), vec!["--min-std"]),
        (
            manifest("m.csv", ok_csv, "--chunks 4"),
            vec!["--chunks", "--format zarr"],
        ),
        (vec![], vec!["exactly one of --manifest"]),
        (
            vec!["--input".into(), s(&root.join("ok.npy"))],
            vec!["ok.npy", "3-D volume"],
        ),
    ];
    let before: Vec<String> = tree(d.path()).into_iter().map(|(n, _)| n).collect();
    for (extra, needles) in cases {
        let mut a = vec!["patches".to_string(), "--output".into(), out.clone()];
        a.extend(extra);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let msg = fails_with(tessera(&a), &needles);
        assert_eq!(msg.lines().filter(|l| l.starts_with("error:")).count(), 1);
        let after: Vec<String> = tree(d.path()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(before, after, "{a:?} wrote something");
    }
    // An existing output is refused (and replaced with --overwrite only when it is one).
    let m = csv("m.csv", ok_csv);
    // `patches --manifest m.csv --output <output> --patch-size 8`, then `rest`'s words.
    let patches_of_m = |output: &str, rest: &str| {
        let mut a = vec![
            "patches",
            "--manifest",
            &m,
            "--output",
            output,
            "--patch-size",
            "8",
        ];
        a.extend(rest.split_whitespace());
        tessera(&a)
    };
    std::fs::create_dir(&out).unwrap();
    std::fs::write(d.path().join("out/mine.txt"), b"user data").unwrap();
    fails_with(patches_of_m(&out, ""), &["out", "exists", "--overwrite"]);
    fails_with(
        patches_of_m(&out, "--overwrite"),
        &["without patch_meta.json"],
    );
    std::fs::remove_dir_all(&out).unwrap();
    ok(patches_of_m(&out, ""));
    fails_with(patches_of_m(&out, ""), &["exists"]);
    ok(patches_of_m(&out, "--stride 4 --overwrite"));
    assert_eq!(read_meta(Path::new(&out))["num_patches"], 16);
    // The output may not be where the slices are read from.
    fails_with(patches_of_m(&s(&root), ""), &["input"]);
}

#[test]
fn a_dry_run_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (manifest, _) = random_dataset(d.path(), 3, 18);
    let out = d.path().join("out");
    let log = ok(tessera(&args(&s(&manifest), &s(&out), &["--dry-run"])));
    assert!(log.contains("units"), "{log}");
    assert!(!out.exists() && !d.path().join("out.partial").exists());
}

#[test]
fn verify_catches_each_corruption() {
    let d = tempfile::tempdir().unwrap();
    let (manifest, _) = random_dataset(d.path(), 4, 19);
    let root = manifest.parent().unwrap().to_path_buf();
    let fresh = |name: &str, extra: &[&str]| {
        let out = root.join(name);
        ok(tessera(&args(&s(&manifest), &s(&out), extra)));
        ok(tessera(&["patches", "verify", &s(&out)]));
        out
    };
    let verify = |out: &Path, needles: &[&str]| {
        let res = tessera(&["patches", "verify", &s(out)]);
        let all = text(&res);
        fails_with(res, &["problem(s)"]);
        for n in needles {
            assert!(all.contains(n), "{n:?} not in:\n{all}");
        }
    };
    let out = fresh("deleted", &[]);
    std::fs::remove_file(out.join("train_000000_008_008.npy")).unwrap();
    verify(&out, &["train_000000_008_008.npy is missing"]);

    // A fresh output whose patch `file` has `value` at `at`.
    let with_pixel = |name: &str, file: &str, at: [usize; 2], value: f32| {
        let out = fresh(name, &[]);
        let file = out.join(file);
        let mut a = npy_values(&file);
        a[at] = value;
        ndarray_npy::write_npy(&file, &a).unwrap();
        out
    };
    let out = with_pixel("changed", "train_000001_000_000.npy", [3, 3], 0.123);
    verify(&out, &["train_000001_000_000", "differ from the pixels"]);

    let out = fresh("count", &[]);
    let meta = std::fs::read_to_string(out.join("patch_meta.json")).unwrap();
    let n = read_meta(&out)["num_patches"].as_u64().unwrap();
    std::fs::write(
        out.join("patch_meta.json"),
        meta.replace(
            &format!("\"num_patches\": {n}"),
            &format!("\"num_patches\": {}", n + 1),
        ),
    )
    .unwrap();
    verify(
        &out,
        &[&format!(
            "has {n} rows but patch_meta.json says num_patches {}",
            n + 1
        )],
    );

    let out = fresh("rows", &[]);
    let text_csv = std::fs::read_to_string(out.join("patch_manifest.csv")).unwrap();
    let mut lines: Vec<&str> = text_csv.lines().collect();
    let dropped = lines.remove(2).split(',').next().unwrap().to_string();
    std::fs::write(out.join("patch_manifest.csv"), lines.join("\n") + "\n").unwrap();
    verify(
        &out,
        &[
            "rows but patch_meta.json says",
            &format!("{dropped}.npy is not in patch_manifest.csv"),
        ],
    );

    let out = fresh("dtype", &[]);
    let text_csv = std::fs::read_to_string(out.join("patch_manifest.csv")).unwrap();
    std::fs::write(
        out.join("patch_manifest.csv"),
        text_csv.replacen(",float32,", ",float64,", 1),
    )
    .unwrap();
    verify(&out, &["dtype \"float64\", expected float32"]);

    let out = with_pixel("range", "train_000000_000_000.npy", [0, 0], 1.5);
    verify(&out, &["pixel values", "leave the expected range 0..1"]);

    let out = fresh(
        "zarr",
        &["--format", "zarr", "--chunks", "4", "--codec", "none"],
    );
    let chunk = out.join("patches.zarr/c.1.0.0");
    let mut bytes = std::fs::read(&chunk).unwrap();
    bytes[100] ^= 0x40;
    std::fs::write(&chunk, bytes).unwrap();
    verify(&out, &["differ from the pixels"]);
}

#[test]
fn a_killed_run_resumes_to_the_same_bytes() {
    let d = tempfile::tempdir().unwrap();
    let (manifest, _) = random_dataset(d.path(), 12, 20);
    let env = [("TESSERA_UNIT_BYTES", "4096")];
    // npy files, compressed Zarr chunks (stored whole), raw ones (streamed as cut).
    for format in ["npy", "zarr", "zarr-raw"] {
        // Patch paths name the output directory: both runs write to `out`.
        let out = d.path().join("out");
        let clean = d.path().join(format!("clean-{format}"));
        let extra: &[&str] = match format {
            "zarr" => &["--format", "zarr", "--chunks", "4"],
            "zarr-raw" => &["--format", "zarr", "--chunks", "4", "--codec", "none"],
            _ => &["--format", format],
        };
        ok(tessera_env(&args(&s(&manifest), &s(&out), extra), &env));
        std::fs::rename(&out, &clean).unwrap();
        std::fs::remove_file(d.path().join("out.report.json")).unwrap();
        let (m, o) = (s(&manifest), s(&out));
        let run = args(&m, &o, extra);
        let killed = tessera_env(&run, &[env[0], ("TESSERA_ABORT_AFTER_UNITS", "3")]);
        assert!(!killed.status.success(), "{}", text(&killed));
        assert!(!out.exists());
        fails_with(tessera_env(&run, &env), &["interrupted run", "--resume"]);
        let resume = resumed(&run);
        let log = ok(tessera_env(&resume, &env));
        assert!(log.contains("wrote"), "{log}");
        assert_same_outputs(&clean, &out);
        assert!(!out.join(".manifest-parts").exists());
        std::fs::rename(&out, d.path().join(format!("resumed-{format}"))).unwrap();
        std::fs::remove_file(d.path().join("out.report.json")).unwrap();
    }
}

#[cfg(feature = "mpi")]
#[test]
fn outputs_are_identical_on_1_2_and_4_ranks() {
    let Some(d) = mpi_tempdir() else { return };
    let (train, _) = random_dataset(&d.path().join("a"), 11, 21);
    let (val, _) = random_dataset(&d.path().join("b"), 6, 22);
    let env = [("TESSERA_UNIT_BYTES", "3000")];
    for format in ["npy", "zarr", "zarr-raw"] {
        // Patch paths name the output directory: every run writes to `out`, then moves it.
        let run = |ranks: usize| {
            let out = d.path().join("out");
            let (t, v) = (format!("train={}", s(&train)), format!("val={}", s(&val)));
            let a_out = s(&out);
            let kind = &format[..format.find('-').unwrap_or(format.len())];
            let mut a = split_args(&t, &v, &a_out, &["--format", kind, "--min-std", "0.289"]);
            match format {
                "zarr" => a.extend(["--chunks", "3"]),
                "zarr-raw" => a.extend(["--chunks", "3", "--codec", "none"]),
                _ => {}
            }
            if ranks == 1 {
                ok(tessera_env(&a, &env));
            } else {
                ok(tessera_mpi(ranks, &a, &env));
            }
            let kept = d.path().join(format!("{format}-{ranks}"));
            std::fs::rename(&out, &kept).unwrap();
            std::fs::remove_file(d.path().join("out.report.json")).unwrap();
            kept
        };
        let one = run(1);
        assert!(
            read_meta(&one.join("train"))["dropped"]["low_std_patches"]
                .as_u64()
                .unwrap()
                > 0
        );
        for ranks in [2, 4] {
            assert_same_outputs(&one, &run(ranks));
        }
    }
    // A run killed on 2 ranks finishes on 4 with the same bytes.
    let out = d.path().join("out");
    let a = [
        "patches",
        "--manifest",
        &s(&train),
        "--output",
        &s(&out),
        "--patch-size",
        "16",
        "--stride",
        "8",
    ];
    let clean = d.path().join("clean");
    ok(tessera_env(&a, &env));
    std::fs::rename(&out, &clean).unwrap();
    std::fs::remove_file(d.path().join("out.report.json")).unwrap();
    let killed = tessera_mpi(2, &a, &[env[0], ("TESSERA_ABORT_AFTER_UNITS", "2")]);
    assert!(!killed.status.success());
    let resume = resumed(&a);
    ok(tessera_mpi(4, &resume, &env));
    assert_same_outputs(&clean, &out);
}

/// The notebook's unit-test cell, verbatim in its checks (on every row, not a sample of
/// three), plus numpy recomputing each patch's statistics and np.save's exact bytes.
const NOTEBOOK_CHECK: &str = r#"
import sys, os, json
import numpy as np, pandas as pd
PATCH_ROOT, data_root = sys.argv[1], sys.argv[2]
df_p = pd.read_csv(os.path.join(PATCH_ROOT, "patch_manifest.csv"))
with open(os.path.join(PATCH_ROOT, "patch_meta.json"), "r") as f:
    meta_p = json.load(f)
assert len(df_p) == meta_p["num_patches"], "Mismatch: manifest vs meta.json count"
assert df_p["dtype"].nunique() == 1 and df_p["dtype"].iloc[0] == "float32", "All patches must be float32"
assert (df_p["min"] >= 0).all(), "Patch min below 0!"
assert (df_p["max"] <= 1).all(), "Patch max above 1!"
assert df_p["src_path"].str.contains(r"^[^:\\/].+").all(), "src_path should be RELATIVE"
if meta_p["format"] == "npy":
    assert df_p["patch_path"].str.contains(r"^[^:\\/].+").all(), "patch_path should be RELATIVE"
    sample_rows = df_p.sample(n=min(3, len(df_p)), random_state=42)
    for _, row in sample_rows.iterrows():
        x = np.load(os.path.normpath(os.path.join(data_root, row["patch_path"])))
        assert x.shape == (meta_p["patch_size"], meta_p["patch_size"])
    patches = [np.load(os.path.join(data_root, p)) for p in df_p["patch_path"]]
    ref = os.path.join(PATCH_ROOT, "_np_save_check.npy")
    np.save(ref, patches[0])
    assert open(ref, "rb").read() == open(os.path.join(data_root, df_p["patch_path"][0]), "rb").read(), "np.save writes other bytes"
    os.remove(ref)
else:
    import zarr
    z = zarr.open_array(os.path.join(data_root, meta_p["zarr_array"]), mode="r")
    assert z.shape == (meta_p["num_patches"], meta_p["patch_size"], meta_p["patch_size"]), z.shape
    patches = [z[i] for i in df_p["zarr_index"]]
for (_, row), x in zip(df_p.iterrows(), patches):
    assert x.dtype == np.float32, x.dtype
    assert float(x.min()) == row["min"] and float(x.max()) == row["max"], row["patch_id"]
    x64 = x.astype(np.float64)
    assert abs(x64.mean() - row["mean"]) <= 1e-12 * max(1.0, abs(row["mean"])), row["patch_id"]
    assert abs(x64.std() - row["std"]) <= 1e-12 * max(1.0, row["std"]), row["patch_id"]
    r, c = int(row["row"]), int(row["col"])
    src = np.load(os.path.join(data_root, row["src_path"])).astype(np.float32)
    assert np.array_equal(src[r:r + meta_p["patch_size"], c:c + meta_p["patch_size"]], x), row["patch_id"]
print("Unit tests passed: shapes, dtype, range all valid", len(df_p))
"#;

#[test]
fn python_reads_the_outputs_as_the_notebook_does() {
    let Some(python) = python_with("numpy, pandas") else {
        return;
    };
    let zarr = python_with("zarr").is_some();
    let d = tempfile::tempdir().unwrap();
    let (manifest, _) = random_dataset(d.path(), 6, 23);
    let root = manifest.parent().unwrap();
    for format in ["npy", "zarr"] {
        if format == "zarr" && !zarr {
            continue;
        }
        let out = root.join(format!("patches/{format}"));
        ok(tessera(&args(
            &s(&manifest),
            &s(&out),
            &["--format", format, "--min-std", "0.2"],
        )));
        let res = succeeds(
            Command::new(&python).args(["-c", NOTEBOOK_CHECK, &s(&out), &s(root)]),
            &format!("python check ({format})"),
        );
        assert!(String::from_utf8_lossy(&res.stdout).contains("Unit tests passed"));
    }
}

#[test]
fn patches_are_the_same_on_any_thread_count() {
    // Issue 30: the same dataset at 1, 2 and 3 threads (patch metas' `created` aside).
    let d = tempfile::tempdir().unwrap();
    let (manifest, _) = random_dataset(&d.path().join("data"), 9, 81);
    let here = new_dir(d.path().join("runs"));
    assert_same_on_1_2_3_threads(&here, &["out"], &[("TESSERA_UNIT_BYTES", "8000")], |at| {
        let (m, o) = (s(&manifest), s(&at.join("out")));
        args(&m, &o, &["--min-std", "0.1"])
            .into_iter()
            .map(String::from)
            .collect()
    });
}
