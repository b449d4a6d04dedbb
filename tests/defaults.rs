//! Defaults that must work without flags: the per-format codec (`auto`: gzip for HDF5, zstd
//! for Zarr) with every command writing HDF5, h5py reading what they wrote, a refused codec
//! leaving nothing behind, and convert's warning when a float -> integer cast drops fractions.

mod common;

use std::path::Path;

use common::*;
use ndarray::{ArrayD, IxDyn};
use tessera::io::{images, Block};

/// HDF5 outputs: only in builds with HDF5.
#[cfg(feature = "hdf5")]
mod hdf5 {
    use super::*;
    use ndarray_npy::write_npy;
    use std::process::Command;
    use tessera::io::DType;

    /// Names in `dir` that start with `prefix` (an output and its .partial/.journal/.lock).
    fn leftovers(dir: &Path, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn every_command_writes_hdf5_with_its_default_codec() {
        let d = tempfile::tempdir().unwrap();
        let p = |name: &str| s(&d.path().join(name));
        u16_slices(d.path(), 3, &[8, 8], 1);
        let image = ArrayD::from_shape_fn(IxDyn(&[1, 1, 16, 16]), |i| (i[2] * 16 + i[3]) as f32);
        write_npy(d.path().join("image.npy"), &image).unwrap();
        let mut written = Vec::new();
        let mut run = |args: &[&str], outputs: &[String]| {
            ok(tessera(args));
            written.extend_from_slice(outputs);
        };
        let convert = format!("{}:/stack", p("convert.h5"));
        run(
            &io_args("convert", &p("slices"), &convert, &[]),
            std::slice::from_ref(&convert),
        );
        let patches = format!("{}:/patches", p("quilt.h5"));
        let image_npy = p("image.npy");
        run(
            &io_line(
                "quilt unstitch",
                &image_npy,
                &patches,
                "--window 8 --step 4",
            ),
            std::slice::from_ref(&patches),
        );
        let (mean, weights) = (
            format!("{}:/mean", p("stitch.h5")),
            format!("{}:/weights", p("weights.h5")),
        );
        run(
            &io_args("quilt stitch", &patches, &mean, &["--weights", &weights]),
            &[mean.clone(), weights.clone()],
        );
        let mask = format!("{}:/mask", p("mask.h5"));
        run(
            &[
                "quilt",
                "border-mask",
                "--output",
                &mask,
                "--window",
                "8,8",
                "--border",
                "2",
            ],
            std::slice::from_ref(&mask),
        );
        let crop = format!("{}:/crop", p("crop.h5"));
        run(
            &crop_test_args("4", "32", &crop, &["--no-visualization"]),
            std::slice::from_ref(&crop),
        );
        for address in &written {
            let m = meta(address);
            assert!(
                m.codecs
                    .iter()
                    .any(|c| c.contains("deflate") || c.contains("gzip")),
                "{address}: {:?}",
                m.codecs
            );
        }
        assert_eq!(
            read_all(&mean).into_array::<f32>().unwrap(),
            image,
            "the stitched HDF5 mean is the image"
        );
        let Some(python) = python_with("h5py, numpy") else {
            return;
        };
        let check = r#"
import sys, h5py, numpy as np
for address in sys.argv[1:]:
    path, name = address.split(":")
    with h5py.File(path, "r") as f:
        assert f[name].compression == "gzip", (address, f[name].compression)
        assert f[name][...].size > 0, address
"#;
        succeeds(
            Command::new(python).args(["-c", check]).args(&written),
            "h5py",
        );
    }

    #[test]
    fn a_codec_hdf5_cannot_store_is_refused_before_anything_is_written() {
        let d = tempfile::tempdir().unwrap();
        write_slices(&d.path().join("slices"), "s", 2, &[4, 4], DType::U8, 2);
        for codec in ["zstd", "blosc"] {
            let out = format!("{}:/x", s(&d.path().join("z.h5")));
            fails_with(
                tessera(&io_args(
                    "convert",
                    &d.path().join("slices"),
                    &out,
                    &["--codec", codec],
                )),
                &["--codec", codec, "HDF5", "z.h5"],
            );
            assert!(
                leftovers(d.path(), "z.h5").is_empty(),
                "{:?}",
                leftovers(d.path(), "z.h5")
            );
        }
        let image = ArrayD::<f32>::zeros(IxDyn(&[1, 1, 8, 8]));
        write_npy(d.path().join("image.npy"), &image).unwrap();
        fails_with(
            tessera(&io_line(
                "quilt unstitch",
                &d.path().join("image.npy"),
                &format!("{}:/p", s(&d.path().join("q.h5"))),
                "--window 4 --step 4 --codec zstd",
            )),
            &["--codec", "zstd", "HDF5"],
        );
        assert!(
            leftovers(d.path(), "q").is_empty(),
            "{:?}",
            leftovers(d.path(), "q")
        );
    }
}

#[test]
fn the_default_codec_follows_the_output_format() {
    let d = tempfile::tempdir().unwrap();
    let slices = u16_slices(d.path(), 2, &[4, 4], 3);
    let zarr = s(&d.path().join("o.zarr"));
    run_io("convert", &slices, &zarr, &[]);
    let codecs = meta(&zarr).codecs;
    assert!(codecs.iter().any(|c| c.contains("zstd")), "{codecs:?}");
    let npy = s(&d.path().join("o.npy"));
    run_io("convert", &slices, &npy, &[]);
    assert!(meta(&npy).codecs.is_empty());
}

/// Float slices holding 0..1 values (fractions), converted to integers.
fn fractional_slices(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for k in 0..2 {
        let slice =
            ArrayD::from_shape_fn(IxDyn(&[3, 4]), |i| (k * 12 + i[0] * 4 + i[1]) as f32 / 24.0);
        images::write_tiff(&dir.join(format!("f_{k}.tif")), &Block::F32(slice)).unwrap();
    }
}

#[test]
fn convert_warns_once_when_a_float_to_integer_cast_drops_fractions() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("floats");
    fractional_slices(&input);
    for dtype in ["i32", "u8"] {
        let out = s(&d.path().join(format!("{dtype}.zarr")));
        let log = run_io("convert", &input, &out, &["--dtype", dtype]);
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("fractional"))
            .collect();
        assert_eq!(warnings.len(), 1, "one warning per stack:\n{log}");
        // Slices are decoded in parallel: the warning names whichever slice rounded first,
        // with its first non-integral value (1/24 in f_0.tif, 0.5 in f_1.tif).
        assert!(
            (warnings[0].contains("f_0.tif") && warnings[0].contains("0.0416666"))
                || (warnings[0].contains("f_1.tif") && warnings[0].contains("0.5")),
            "{log}"
        );
    }
    // Integral floats convert silently.
    let whole = d.path().join("whole");
    std::fs::create_dir_all(&whole).unwrap();
    let slice = ArrayD::from_shape_fn(IxDyn(&[3, 4]), |i| (i[0] * 4 + i[1]) as f32);
    images::write_tiff(&whole.join("w_0.tif"), &Block::F32(slice)).unwrap();
    let log = run_line("convert", &whole, &d.path().join("w.zarr"), "--dtype u16");
    assert!(!log.contains("fractional"), "{log}");
}
