//! Parsers never panic, on any input: a bounded property test over random bytes (and over
//! mutations of valid inputs, which reach deeper than noise) for the TOML job file, the
//! `.npy` header, Zarr `zarr.json` metadata, the HDR `.npz` response, the grouping of file
//! names, the image decoders and the patch manifests (CSV, paths, Python-repr floats). Each must return Ok or a clear error. Bounded (a few hundred
//! cases each) so that CI stays fast; `PROPTEST_CASES` raises it.

use std::path::Path;

use proptest::prelude::*;

/// Valid inputs whose mutations the tests explore.
const JOB: &str = "[convert]\ninput = \"in\"\noutput = \"out.zarr\"\nchunks = [1, 64, 64]\ncodec = \"zstd\"\n\n[run]\nresume = true\n";
const MANIFEST: &str = "index,path,min\n0,\"a,b/s.npy\",0.5\n1,sub\\s.npy,\"x\"\"y\"\n";
const ZARR_JSON: &str = r#"{"zarr_format":3,"node_type":"array","shape":[4,6],"data_type":"uint16","chunk_grid":{"name":"regular","configuration":{"chunk_shape":[2,3]}},"chunk_key_encoding":{"name":"default","configuration":{"separator":"/"}},"fill_value":0,"codecs":[{"name":"bytes","configuration":{"endian":"little"}}],"attributes":{},"dimension_names":["y","x"]}"#;

fn npy_bytes() -> Vec<u8> {
    let mut v = Vec::new();
    use ndarray_npy::WriteNpyExt;
    ndarray::Array2::<u16>::zeros((3, 5))
        .write_npy(&mut v)
        .unwrap();
    v
}

/// Flips, inserts or deletes bytes of `base` at positions taken from `edits`.
fn mutate(base: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut v = base.to_vec();
    for &(at, kind, byte) in edits {
        if v.is_empty() {
            v.push(byte);
            continue;
        }
        let at = at % v.len();
        match kind % 3 {
            0 => v[at] = byte,
            1 => v.insert(at, byte),
            _ => {
                v.remove(at);
            }
        }
    }
    v
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn job_files(noise in proptest::collection::vec(any::<u8>(), 0..200), e in edits()) {
        let path = Path::new("/tmp/job.toml");
        let _ = tessera::job::JobFile::parse(path, &String::from_utf8_lossy(&noise));
        let _ = tessera::job::JobFile::parse(path, &String::from_utf8_lossy(&mutate(JOB.as_bytes(), &e)));
    }

    #[test]
    fn npy_headers(noise in proptest::collection::vec(any::<u8>(), 0..200), e in edits()) {
        let d = tempfile::tempdir().unwrap();
        for bytes in [noise, mutate(&npy_bytes(), &e)] {
            let p = write(d.path(), "a.npy", &bytes);
            if let Ok(r) = tessera::io::npy::NpyReader::open(&p) {
                use tessera::io::ArrayReader;
                let shape = r.meta().shape.clone();
                let region = tessera::grid::Region { start: vec![0; shape.len()], shape };
                let _ = r.read_box(&region);
            }
        }
    }

    #[test]
    fn zarr_metadata(e in edits()) {
        let d = tempfile::tempdir().unwrap();
        let store = d.path().join("s.zarr");
        std::fs::create_dir_all(&store).unwrap();
        write(&store, "zarr.json", &mutate(ZARR_JSON.as_bytes(), &e));
        if let Ok(r) = tessera::io::zarr::ZarrReader::open(&store, "") {
            use tessera::io::ArrayReader;
            let shape = r.meta().shape.clone();
            if shape.iter().product::<u64>() <= 1 << 16 {
                let region = tessera::grid::Region { start: vec![0; shape.len()], shape };
                let _ = r.read_box(&region);
            }
        }
    }

    #[test]
    fn npz_responses(noise in proptest::collection::vec(any::<u8>(), 0..300), e in edits()) {
        let d = tempfile::tempdir().unwrap();
        let good = d.path().join("good.npz");
        tessera::ops::hdr::npz::write_response(
            &good,
            ndarray::Array2::<f64>::zeros((256, 3)).view(),
            &serde_json::json!({"a": 1}),
        )
        .unwrap();
        let base = std::fs::read(&good).unwrap();
        for bytes in [noise, mutate(&base, &e)] {
            let p = write(d.path(), "r.npz", &bytes);
            let _ = tessera::ops::hdr::read_response(&p);
        }
    }

    #[test]
    fn file_names(name in "[0-9_.a-zA-Z]{0,30}", round in "[0-9]{0,4}(s|min|h|x)?") {
        let _ = tessera::ops::hdr::files::parse_name(&name);
        let _ = tessera::ops::hdr::files::parse_round(&round);
    }

    #[test]
    fn images(noise in proptest::collection::vec(any::<u8>(), 0..300), e in edits(), ext in 0usize..3) {
        let d = tempfile::tempdir().unwrap();
        let mut png = Vec::new();
        image::write_buffer_with_format(
            &mut std::io::Cursor::new(&mut png),
            &[7u8; 4 * 5 * 3],
            4,
            5,
            image::ExtendedColorType::Rgb8,
            image::ImageFormat::Png,
        )
        .unwrap();
        let name = ["a.png", "a.jpg", "a.tif"][ext];
        for bytes in [noise, mutate(&png, &e)] {
            let p = write(d.path(), name, &bytes);
            let _ = tessera::ops::hdr::load(&p);
        }
    }

    #[test]
    fn patch_manifests(noise in proptest::collection::vec(any::<u8>(), 0..200), e in edits()) {
        use tessera::ops::patches::manifest::{relative_slice_path, SliceManifest};
        for bytes in [noise, mutate(MANIFEST.as_bytes(), &e)] {
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(m) = SliceManifest::parse(&text) {
                // Every accepted path stays relative and inside the root.
                for p in m.slice_paths().unwrap_or_default() {
                    prop_assert!(!p.starts_with('/') && !p.split('/').any(|c| c == ".." || c.is_empty()), "{p}");
                    prop_assert_eq!(relative_slice_path(&p), Ok(p.clone()));
                }
            }
        }
    }

    #[test]
    fn python_floats_read_back_exactly(bits in any::<u64>()) {
        let v = f64::from_bits(bits);
        let text = tessera::ops::patches::manifest::python_float(v);
        let back: f64 = text.parse().unwrap();
        prop_assert!(back == v || (v.is_nan() && back.is_nan()), "{v:e} -> {text}");
        prop_assert!(!v.is_finite() || text.contains('.') || text.contains('e'), "{text}");
    }
}
