//! Reading and writing numpy `.npz` archives that hold a camera response curve.
//!
//! An archive has two entries: `response.npy` (float array of shape `(256, C)`)
//! and `metadata.npy` (a 0-d numpy unicode string holding JSON). Files written
//! here load with `numpy.load`, and files from `numpy.savez` /
//! `numpy.savez_compressed` load here.

use ndarray::{Array2, ArrayD, ArrayView2, Axis, Ix2};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use serde_json::Value;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use zip::{result::ZipError, write::SimpleFileOptions, CompressionMethod, ZipArchive, ZipWriter};

/// Number of rows (input levels) of a response curve.
const LEVELS: usize = 256;

/// Errors from [`write_response`] and [`read_response`].
#[derive(Debug, thiserror::Error)]
pub enum NpzError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a valid .npz (zip) file: {0}")]
    NotAZip(String),
    #[error("zip error: {0}")]
    Zip(#[from] ZipError),
    #[error("missing entry '{0}' in .npz file")]
    MissingKey(String),
    #[error("entry '{key}' has shape {shape:?}, expected {expected}")]
    WrongShape {
        key: String,
        shape: Vec<usize>,
        expected: String,
    },
    #[error("entry '{key}' has dtype '{dtype}', expected {expected}")]
    WrongDtype {
        key: String,
        dtype: String,
        expected: String,
    },
    #[error("malformed .npy entry '{key}': {msg}")]
    BadNpy { key: String, msg: String },
    #[error("bad metadata: {0}")]
    BadMetadata(String),
}

/// Writes `path` as an uncompressed .npz (like `numpy.savez`) with the entries
/// `response.npy` (float64, C order, shape `(256, C)`) and `metadata.npy` (0-d
/// `<U{n}` array holding `metadata` as JSON). Written in place: callers publish it under a
/// temporary name (`io::safety::write_file`).
pub fn write_response(
    path: &Path,
    response: ArrayView2<f64>,
    metadata: &Value,
) -> Result<(), NpzError> {
    if response.nrows() != LEVELS {
        return Err(wrong_shape("response", response.shape(), "(256, C)"));
    }
    let mut resp = Vec::new();
    // `as_standard_layout` makes sure the data is written in C order.
    (response.as_standard_layout().write_npy(&mut resp)).map_err(std::io::Error::other)?;
    let json = serde_json::to_string(metadata).map_err(|e| NpzError::BadMetadata(e.to_string()))?;
    let entries = [("response.npy", resp), ("metadata.npy", unicode_npy(&json))];
    write_zip(path, &entries)
}

/// Reads a file written by [`write_response`] or by numpy (`savez` or
/// `savez_compressed`). `response` may be float32 or float64 in C or Fortran
/// order with shape `(256, C)` or `(256, 1, C)`; it is returned as a C-order
/// `(256, C)` f64 array. `metadata` may be a 0-d `<U{n}` or `|S{n}` array of
/// JSON text; when it is absent the metadata is [`Value::Null`].
pub fn read_response(path: &Path) -> Result<(Array2<f64>, Value), NpzError> {
    let file = File::open(path)?;
    let mut zip = ZipArchive::new(file).map_err(|e| NpzError::NotAZip(e.to_string()))?;
    let bytes = read_entry(&mut zip, "response")?.ok_or(NpzError::MissingKey("response".into()))?;
    let response = parse_response(&bytes)?;
    let metadata = match read_entry(&mut zip, "metadata")? {
        None => Value::Null,
        Some(bytes) => serde_json::from_str(&parse_string(&bytes, "metadata")?)
            .map_err(|e| NpzError::BadMetadata(format!("invalid JSON: {e}")))?,
    };
    Ok((response, metadata))
}

/// A [`NpzError::WrongShape`] for entry `key`.
fn wrong_shape(key: &str, shape: &[usize], expected: &str) -> NpzError {
    let (key, shape, expected) = (key.into(), shape.to_vec(), expected.into());
    NpzError::WrongShape {
        key,
        shape,
        expected,
    }
}

/// A [`NpzError::WrongDtype`] for entry `key`.
fn wrong_dtype(key: &str, dtype: &str, expected: &str) -> NpzError {
    let (key, dtype, expected) = (key.into(), dtype.into(), expected.into());
    NpzError::WrongDtype {
        key,
        dtype,
        expected,
    }
}

/// Writes `entries` (name, bytes) as a zip archive with stored (uncompressed) entries.
fn write_zip(path: &Path, entries: &[(&str, Vec<u8>)]) -> Result<(), NpzError> {
    let mut zip = ZipWriter::new(File::create(path)?);
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    for (name, bytes) in entries {
        zip.start_file(*name, options)?;
        zip.write_all(bytes)?;
    }
    zip.finish()?.sync_all()?;
    Ok(())
}

/// Returns the bytes of entry `key` (stored as `key.npy`, or plain `key` as
/// numpy also accepts), or `None` when the archive has no such entry.
fn read_entry<R: Read + std::io::Seek>(
    zip: &mut ZipArchive<R>,
    key: &str,
) -> Result<Option<Vec<u8>>, NpzError> {
    for name in [format!("{key}.npy"), key.to_string()] {
        match zip.by_name(&name) {
            Ok(mut entry) => {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes)?;
                return Ok(Some(bytes));
            }
            Err(ZipError::FileNotFound) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// Encodes `s` as a version 1.0 .npy file holding a 0-d `<U{n}` array
/// (UTF-32LE data). The header is padded with spaces and ends in '\n' so that
/// its total length is a multiple of 64, as numpy does.
fn unicode_npy(s: &str) -> Vec<u8> {
    let n = s.chars().count();
    let mut dict = format!("{{'descr': '<U{n}', 'fortran_order': False, 'shape': (), }}");
    let unpadded = 10 + dict.len() + 1; // magic + version + u16 length + dict + '\n'
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(s.chars().flat_map(|c| u32::from(c).to_le_bytes()));
    out
}

/// The shape and descr of the .npy entry `key` (parsed by [`crate::io::npy::header`]) and
/// its data bytes.
fn parse_header<'a>(
    bytes: &'a [u8],
    key: &str,
) -> Result<(crate::io::npy::Header, Vec<usize>, &'a [u8]), NpzError> {
    let h = crate::io::npy::header(bytes).map_err(|msg| NpzError::BadNpy {
        key: key.into(),
        msg,
    })?;
    let shape = h.shape.iter().map(|&n| n as usize).collect();
    let data = &bytes[h.data_start..];
    Ok((h, shape, data))
}

/// Decodes a float32/float64 `(256, C)` or `(256, 1, C)` .npy as a C-order `(256, C)` array.
fn parse_response(bytes: &[u8]) -> Result<Array2<f64>, NpzError> {
    let (header, shape, _) = parse_header(bytes, "response")?;
    if !matches!(shape[..], [LEVELS, _] | [LEVELS, 1, _]) {
        return Err(wrong_shape("response", &shape, "(256, C) or (256, 1, C)"));
    }
    let bad = |e: ndarray_npy::ReadNpyError| NpzError::BadNpy {
        key: "response".into(),
        msg: e.to_string(),
    };
    let array = match header.descr.trim_start_matches(['<', '>', '=', '|']) {
        "f8" => ArrayD::<f64>::read_npy(bytes).map_err(bad)?,
        "f4" => ArrayD::<f32>::read_npy(bytes).map_err(bad)?.mapv(f64::from),
        _ => return Err(wrong_dtype("response", &header.descr, "float32 or float64")),
    };
    let array = if array.ndim() == 3 {
        array.index_axis_move(Axis(1), 0)
    } else {
        array
    };
    let array = array
        .into_dimensionality::<Ix2>()
        .expect("2-D after shape check");
    Ok(array.as_standard_layout().into_owned())
}

/// Decodes a 0-d `<U{n}` (UTF-32LE) or `|S{n}` (bytes, read as UTF-8) .npy entry.
fn parse_string(bytes: &[u8], key: &str) -> Result<String, NpzError> {
    let (header, shape, data) = parse_header(bytes, key)?;
    if !shape.is_empty() {
        return Err(wrong_shape(key, &shape, "()"));
    }
    let descr = header.descr.as_str();
    let wrong = || wrong_dtype(key, descr, "'<U{n}' or '|S{n}'");
    let bad = |msg: &str| NpzError::BadMetadata(format!("entry '{key}': {msg}"));
    let (kind, n) = match descr.strip_prefix(['<', '|']).unwrap_or(descr) {
        s if s.starts_with(['U', 'S']) => (&s[..1], s[1..].parse::<usize>().map_err(|_| wrong())?),
        _ => return Err(wrong()),
    };
    if kind == "U" && descr.starts_with('|') {
        return Err(wrong());
    }
    let width = if kind == "U" { 4 } else { 1 };
    let data = data
        .get(..n * width)
        .ok_or_else(|| bad("string data is truncated"))?;
    let text = if kind == "U" {
        let chars = data
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()));
        chars
            .map(|c| char::from_u32(c).ok_or_else(|| bad("invalid UTF-32 code point")))
            .collect::<Result<String, _>>()?
    } else {
        String::from_utf8(data.to_vec()).map_err(|_| bad("bytes are not UTF-8"))?
    };
    Ok(text.trim_end_matches('\0').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    /// A fresh path in the system temp directory (removed first if present).
    fn temp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("npz-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    /// Test curve whose values are exactly reproducible in Python: i * (c + 1) / 7.
    fn curve(c: usize) -> Array2<f64> {
        Array2::from_shape_fn((256, c), |(i, k)| (i * (k + 1)) as f64 / 7.0)
    }

    fn meta() -> Value {
        json!({"camera": {"model": "X-1", "iso": [100, 200]}, "place": "Zürich ✓", "ok": true})
    }

    /// A float64 .npy entry of arbitrary shape, via ndarray-npy.
    fn float_npy(shape: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        ArrayD::<f64>::zeros(shape).write_npy(&mut out).unwrap();
        out
    }

    #[test]
    fn round_trip() {
        for c in [1, 3] {
            let p = temp(&format!("rt{c}.npz"));
            write_response(&p, curve(c).view(), &meta()).unwrap();
            let (r, m) = read_response(&p).unwrap();
            assert_eq!(r, curve(c));
            assert_eq!(m, meta());
            assert!(!PathBuf::from(format!("{}.tmp", p.display())).exists());
            std::fs::remove_file(p).unwrap();
        }
        // A Fortran-order (transposed) view is written in C order all the same.
        let p = temp("rt-f.npz");
        let t = curve(3).t().to_owned();
        write_response(&p, t.t(), &Value::Null).unwrap();
        assert_eq!(read_response(&p).unwrap(), (curve(3), Value::Null));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn missing_response_key() {
        let p = temp("missing.npz");
        write_zip(&p, &[("metadata.npy", unicode_npy("{}"))]).unwrap();
        let err = read_response(&p).unwrap_err();
        assert!(
            matches!(&err, NpzError::MissingKey(k) if k == "response"),
            "{err}"
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn wrong_shape_and_dtype() {
        let p = temp("shape.npz");
        assert!(matches!(
            write_response(&p, Array2::zeros((255, 3)).view(), &Value::Null),
            Err(NpzError::WrongShape { .. })
        ));
        assert!(!p.exists());
        write_zip(&p, &[("response.npy", float_npy(&[255, 3]))]).unwrap();
        let err = read_response(&p).unwrap_err();
        assert!(matches!(err, NpzError::WrongShape { .. }), "{err}");
        assert!(err.to_string().contains("[255, 3]"), "{err}");
        let mut ints = Vec::new();
        ndarray::Array2::<i64>::zeros((256, 3))
            .write_npy(&mut ints)
            .unwrap();
        write_zip(&p, &[("response.npy", ints)]).unwrap();
        let err = read_response(&p).unwrap_err();
        assert!(
            matches!(err, NpzError::WrongDtype { .. }) && err.to_string().contains("<i8"),
            "{err}"
        );
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn not_a_zip() {
        let p = temp("garbage.npz");
        std::fs::write(&p, b"this is definitely not a zip archive").unwrap();
        let err = read_response(&p).unwrap_err();
        assert!(matches!(err, NpzError::NotAZip(_)), "{err}");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn bad_json() {
        let p = temp("badjson.npz");
        let entries = [
            ("response.npy", float_npy(&[256, 3])),
            ("metadata.npy", unicode_npy("{not json")),
        ];
        write_zip(&p, &entries).unwrap();
        let err = read_response(&p).unwrap_err();
        assert!(matches!(err, NpzError::BadMetadata(_)), "{err}");
        std::fs::remove_file(p).unwrap();
    }

    /// Python with numpy: the project's pyenv if present, else `python3`.
    fn python() -> Option<String> {
        let candidates = ["/work/main/target/pyenv/bin/python", "python3"];
        candidates.into_iter().map(String::from).find(|py| {
            let out = std::process::Command::new(py)
                .args(["-c", "import numpy"])
                .output();
            out.is_ok_and(|o| o.status.success())
        })
    }

    #[test]
    fn numpy_interop() {
        let Some(py) = python() else {
            println!("skipping numpy_interop: no Python with numpy found");
            return;
        };
        let dir = temp("numpy-dir");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let ours = dir.join("ours.npz");
        write_response(&ours, curve(3).view(), &meta()).unwrap();
        let script = r#"
import json, sys, numpy as np
d, m = sys.argv[1], json.loads(sys.argv[2])
z = np.load(d + '/ours.npz')
r = np.fromfunction(lambda i, k: i * (k + 1) / 7.0, (256, 3))
assert z['response'].dtype == np.float64 and z['response'].shape == (256, 3)
assert np.array_equal(z['response'], r)
assert json.loads(str(z['metadata'])) == m
s = json.dumps(m, ensure_ascii=False)
np.savez(d + '/a.npz', response=r, metadata=s)
np.savez_compressed(d + '/b.npz', response=r.astype(np.float32).reshape(256, 1, 3), metadata=s)
np.savez(d + '/c.npz', response=np.asfortranarray(r), metadata=np.bytes_(s.encode()))
np.savez_compressed(d + '/d.npz', response=np.asfortranarray(r[:, :1]))
"#;
        let out = std::process::Command::new(&py)
            .args(["-c", script, dir.to_str().unwrap(), &meta().to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let f32s = curve(3).mapv(|v| f64::from(v as f32));
        for (name, want, meta) in [
            ("a", curve(3), meta()),
            ("b", f32s, meta()),
            ("c", curve(3), meta()),
            ("d", curve(1), Value::Null),
        ] {
            let (r, m) = read_response(&dir.join(format!("{name}.npz"))).unwrap();
            assert_eq!((r, m), (want, meta), "{name}.npz");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
