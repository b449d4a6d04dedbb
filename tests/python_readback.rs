//! zarr-python and h5py read `tessera convert` outputs and find exactly the source pixels.
//! The slices follow a formula that the Python side recomputes with numpy, so no tessera code
//! is on the checking side. Skipped (with a message) where Python lacks zarr/h5py/numpy, unless
//! `TESSERA_REQUIRE_PYTHON=1` (CI installs them and sets it).

mod common;

use std::process::Command;

use common::*;
use ndarray::{ArrayD, IxDyn};
use tessera::io::{images, Block};

/// Pixel formula shared with the Python checker: channel c of slice z at (y, x).
fn pixel(z: usize, c: usize, y: usize, x: usize) -> u16 {
    ((z * 1009 + c * 307 + y * 31 + x * 7) % 65521) as u16
}

const CHECK: &str = r#"
import sys, json, numpy as np
kind, path, order = sys.argv[1], sys.argv[2], sys.argv[3]
Z, C, Y, X = 7, 3, 19, 23
z, c, y, x = np.meshgrid(np.arange(Z), np.arange(C), np.arange(Y), np.arange(X), indexing="ij")
expected = ((z * 1009 + c * 307 + y * 31 + x * 7) % 65521).astype(np.uint16)
if order == "CZYX":
    expected = expected.transpose(1, 0, 2, 3)
if kind == "zarr":
    import zarr
    a = zarr.open_array(path, mode="r")
    data, attrs = a[...], dict(a.attrs)
else:
    import h5py
    f, d = path.split(":")
    with h5py.File(f, "r") as h:
        data, attrs = h[d][...], dict(h[d].attrs)
assert data.dtype == np.uint16, data.dtype
assert data.shape == expected.shape, (data.shape, expected.shape)
assert np.array_equal(data, expected), "pixels differ"
assert str(attrs["axis_order"]) == order, attrs["axis_order"]
print("ok", kind, data.shape)
"#;

#[test]
fn zarr_python_and_h5py_read_exactly_the_source_pixels() {
    if python_with("numpy, zarr").is_none() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let input = new_dir(d.path().join("in"));
    for z in 0..7 {
        let slice = ArrayD::from_shape_fn(IxDyn(&[3, 19, 23]), |i| pixel(z, i[0], i[1], i[2]));
        images::write_tiff(&input.join(format!("rgb_{z:02}.tif")), &Block::U16(slice)).unwrap();
    }
    let script = d.path().join("check.py");
    std::fs::write(&script, CHECK).unwrap();
    let mut cases = vec![
        (
            "zarr",
            s(&d.path().join("a.zarr")),
            "ZCYX",
            vec!["--chunks", "2,3,8,8"],
        ),
        (
            "zarr",
            s(&d.path().join("b.zarr")),
            "CZYX",
            vec![
                "--chunks",
                "1,2,8,8",
                "--shards",
                "1,4,16,16",
                "--codec",
                "blosc",
            ],
        ),
        (
            "zarr",
            s(&d.path().join("c.zarr")),
            "ZCYX",
            vec!["--codec", "gzip"],
        ),
    ];
    let h5 = cfg!(feature = "hdf5") && python_with("h5py").is_some();
    if h5 {
        cases.push((
            "h5",
            format!("{}:/data", s(&d.path().join("d.h5"))),
            "CZYX",
            vec!["--codec", "gzip", "--chunks", "1,2,8,8"],
        ));
    }
    for (kind, out, order, extra) in cases {
        let mut args = io_args("convert", &input, &out, &["--axis-order", order]);
        args.extend(extra);
        ok(tessera_units(&args, "3000"));
        succeeds(
            Command::new(python())
                .arg(&script)
                .args([kind, &out, order]),
            &format!("python check of {out}"),
        );
    }
}

/// Validates the OME-Zarr 0.5 metadata with `ome-zarr-models`, reads every level with
/// zarr-python, and recomputes level 1 and 2 with numpy as pyramid_sampler defines them (f64
/// sum of each 2x2x2 block / 8, cast to f32).
const OME_CHECK: &str = r#"
import sys, numpy as np, zarr
from ome_zarr_models.v05 import Image
path, src = sys.argv[1], sys.argv[2]
group = zarr.open_group(path, mode="r")
image = Image.from_zarr(group)
ms = image.ome_attributes.multiscales[0]
assert [a.name for a in ms.axes] == ["c", "z", "y", "x"], ms.axes
assert [d.path for d in ms.datasets] == ["0", "1", "2"], ms.datasets
scale = ms.datasets[2].coordinateTransformations[0].scale
assert list(scale) == [1.0, 4.0, 4.0, 4.0], scale
level = np.load(src)
assert np.array_equal(group["0"][...], level)
for l in (1, 2):
    c, z, y, x = level.shape
    blocks = level.astype(np.float64).reshape(c, z // 2, 2, y // 2, 2, x // 2, 2)
    expect = (blocks.sum(axis=(2, 4, 6)) / 8).astype(np.float32)
    got = group[str(l)][...]
    assert got.dtype == np.float32 and np.array_equal(got, expect), f"level {l}"
    level = got
print("ok", [group[str(l)].shape for l in range(3)])
"#;

#[test]
fn ome_zarr_models_validates_the_pyramid_and_numpy_recomputes_its_levels() {
    if python_with("numpy, zarr, ome_zarr_models").is_none() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("v.npy");
    let vol = ArrayD::from_shape_fn(IxDyn(&[2, 16, 24, 32]), |i| {
        ((i[0] * 7919 + i[1] * 131 + i[2] * 17 + i[3] * 3) % 1013) as f32 / 101.0
    });
    ndarray_npy::write_npy(&src, &vol).unwrap();
    let out = d.path().join("p.zarr");
    ok(tessera_units(
        &io_line(
            "pyramid",
            &src,
            &out,
            "--axes czyx --chunks 1,4,4,4 --shards 1,8,8,8 --levels 3",
        ),
        "20000",
    ));
    let script = d.path().join("ome.py");
    std::fs::write(&script, OME_CHECK).unwrap();
    let res = Command::new(python())
        .arg(&script)
        .args([s(&out), s(&src)])
        .output()
        .unwrap();
    assert!(res.status.success(), "python check:\n{}", text(&res));
}
