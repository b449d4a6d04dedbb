//! Error lines a user can act on: a corrupt Zarr chunk named by key and file, an HDF5 filter
//! this build lacks named by id, hdr names with impossible dates, a failed run's `.partial`
//! with how to go on, and a container of the wrong kind (file for directory or back).

mod common;

use std::path::Path;

use common::*;
use tessera::io::DType;

/// A (3, 8, 8) uint16 Zarr array in (1, 4, 4) chunks: keys c/z/y/x with y, x in 0..2.
fn small_zarr(dir: &Path) -> String {
    write_stack(&dir.join("slices"), "s", &[0, 1, 2], &[8, 8], DType::U16, 7);
    let store = s(&dir.join("in.zarr"));
    run_line("convert", &dir.join("slices"), &store, "--chunks 1,4,4");
    store
}

#[test]
fn a_corrupt_zarr_chunk_is_named_by_key_and_file() {
    let d = tempfile::tempdir().unwrap();
    let store = small_zarr(d.path());
    for (codec, key) in [("zstd", "c/0/1/0"), ("none", "c/2/0/1")] {
        let store = if codec == "zstd" {
            store.clone()
        } else {
            // An uncompressed store: garbage of the wrong length is what fails there.
            let other = s(&d.path().join("raw.zarr"));
            let slices = d.path().join("slices");
            run_line("convert", &slices, &other, "--chunks 1,4,4 --codec none");
            other
        };
        let chunk = Path::new(&store).join(key);
        assert!(chunk.is_file(), "{chunk:?}");
        std::fs::write(&chunk, b"not a chunk at all").unwrap();
        let out = s(&d.path().join(format!("pyr_{codec}.zarr")));
        fails_with(
            tessera(&io_args("pyramid", &store, &out, &[])),
            &[&format!("chunk {key}"), &s(&chunk)],
        );
    }
}

#[cfg(feature = "hdf5")]
#[test]
fn an_hdf5_filter_this_build_lacks_is_named_by_id() {
    let python = std::env::var("TESSERA_PYTHON").unwrap_or_else(|_| {
        s(&Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python"))
    });
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("filtered.h5");
    // An optional filter lets h5py create the dataset without the filter's plugin; the chunk
    // is then written raw with a filter mask that says the filter was applied, so reading it
    // needs filter 32123, which nothing registers.
    let make = r#"
import sys, h5py, numpy as np
with h5py.File(sys.argv[1], "w") as f:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk((4, 4))
    dcpl.set_filter(32123, h5py.h5z.FLAG_OPTIONAL, (1, 2))
    space = h5py.h5s.create_simple((4, 4))
    ds = h5py.Dataset(h5py.h5d.create(f.id, b"x", h5py.h5t.NATIVE_UINT16, space, dcpl=dcpl))
    ds.id.write_direct_chunk((0, 0), np.arange(16, dtype=np.uint16).tobytes(), filter_mask=0)
"#;
    let made = std::process::Command::new(&python)
        .args(["-c", make, &s(&file)])
        .output();
    let Ok(made) = made.as_ref().map_err(|e| e.to_string()) else {
        eprintln!("skipping: no python with h5py at {python} (scripts/setup.sh --python)");
        return;
    };
    if !made.status.success() {
        assert!(
            std::env::var("TESSERA_REQUIRE_PYTHON").as_deref() != Ok("1"),
            "h5py could not write the test file: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        eprintln!(
            "skipping: h5py could not write a dataset with filter 32123: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        return;
    }
    let address = format!("{}:/x", s(&file));
    // Metadata reads fine; reading the data names the filter.
    ok(tessera(&["info", &address]));
    let e = fails_with(
        tessera(&io_args("pyramid", &address, &d.path().join("p.zarr"), &[])),
        &["HDF5 filter 32123", "/x", "HDF5_PLUGIN_PATH"],
    );
    // Nothing was finished, so nothing is left to resume (a resume would fail the same way).
    assert!(!e.contains("--resume"), "{e}");
    assert!(!d.path().join("p.zarr.partial").exists());
    assert!(!d.path().join("p.zarr.journal").exists());
}

#[test]
fn a_failed_run_that_left_a_partial_says_how_to_go_on() {
    let d = tempfile::tempdir().unwrap();
    let slices = u16_slices(d.path(), 8, &[32, 32], 7);
    let store = s(&d.path().join("in.zarr"));
    run_line("convert", &slices, &store, "--chunks 2,8,8");
    // The last chunk: the units before it finish (small units), so there is something to
    // resume once the input is mended.
    std::fs::write(Path::new(&store).join("c/3/3/3"), b"garbage").unwrap();
    let out = d.path().join("pyr.zarr");
    let stderr = fails_with(
        tessera_units(
            &io_line("pyramid", &store, &out, "--levels 1 --chunks 2,8,8"),
            "1",
        ),
        &[
            "chunk c/3/3/3",
            &format!("an interrupted run's output is at {}.partial", s(&out)),
            "--resume",
            "--overwrite",
        ],
    );
    assert!(
        Path::new(&format!("{}.partial", s(&out))).exists(),
        "{stderr}"
    );
    // A run that fails before finishing any unit leaves nothing to resume (it would fail the
    // same way), and says nothing of .partial.
    std::fs::write(Path::new(&store).join("c/0/0/0"), b"garbage").unwrap();
    let first = d.path().join("first.zarr");
    let stderr = fails_with(
        tessera(&io_args("pyramid", &store, &first, &[])),
        &["chunk c/0/0/0"],
    );
    assert!(!stderr.contains(".partial"), "{stderr}");
    assert!(!Path::new(&format!("{}.partial", s(&first))).exists());
    assert!(!Path::new(&format!("{}.journal", s(&first))).exists());
    // A run that fails before staging anything says nothing of .partial.
    let stderr = fails_with(
        tessera(&io_args(
            "pyramid",
            &d.path().join("missing.zarr"),
            &d.path().join("other.zarr"),
            &[],
        )),
        &["missing.zarr", "does not exist"],
    );
    assert!(!stderr.contains(".partial"), "{stderr}");
}

#[test]
fn impossible_dates_in_hdr_names_say_so() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("sky");
    std::fs::create_dir_all(&input).unwrap();
    let pixel = image::RgbImage::from_pixel(4, 4, image::Rgb([100, 100, 100]));
    for name in [
        "20231301120000_1000.png", // month 13
        "20230230120000_1000.png", // 30 February
        "20230230120000_2000.png",
        "IMG_0001.png", // not a stamp at all
    ] {
        pixel.save(input.join(name)).unwrap();
    }
    let response = d.path().join("r.npz");
    let out = tessera(&calibrate_args(&input, &response, &[]));
    let stderr = fails_with(out, &["no bracket", "3 names with impossible dates"]);
    for (name, why) in [
        ("20231301120000_1000.png", "there is no month 13"),
        ("20230230120000_1000.png", "February 2023 has no day 30"),
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("WARN") && l.contains(name) && l.contains(why)),
            "no warning for {name}:\n{stderr}"
        );
    }
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("IMG_0001.png") && l.contains("not named")),
        "{stderr}"
    );
}

#[test]
fn a_container_of_the_wrong_kind_says_what_it_found() {
    let d = tempfile::tempdir().unwrap();
    let file_zarr = d.path().join("x.zarr");
    std::fs::write(&file_zarr, b"").unwrap();
    let dir_npy = new_dir(d.path().join("d.npy"));
    let bare = new_dir(d.path().join("s.zarr"));
    std::fs::write(bare.join("notes.txt"), b"hi").unwrap();
    let mut cases = vec![
        (s(&file_zarr), "is a file, not a Zarr store"),
        (s(&dir_npy), "is a directory, not a .npy file"),
        (
            s(&bare),
            "is a directory but not a Zarr store (no zarr.json",
        ),
    ];
    if cfg!(feature = "hdf5") {
        let dir_h5 = new_dir(d.path().join("e.h5"));
        cases.push((
            format!("{}:/x", s(&dir_h5)),
            "is a directory, not an HDF5 file",
        ));
    }
    for (address, says) in &cases {
        fails_with(tessera(&["info", address]), &[address.as_str(), says]);
        // Every command opens inputs the same way.
        fails_with(
            tessera(&io_args("pyramid", address, &d.path().join("p.zarr"), &[])),
            &[says],
        );
    }
}
