//! What a patch dataset holds besides the pixels' order: the bytes of one `.npy` patch (as
//! `np.save` writes them), a patch manifest row, and `patch_meta.json`.

use serde::{Deserialize, Serialize};

use super::kernel::{KeptPatch, PatchStats};
use super::manifest::{csv_line, python_float, FIXED_COLUMNS};

/// The Zarr array of `--format zarr`, inside the output directory.
pub const ZARR_NAME: &str = "patches.zarr";
/// The patch manifest, inside the output directory.
pub const MANIFEST_NAME: &str = "patch_manifest.csv";
/// The provenance record, inside the output directory.
pub const META_NAME: &str = "patch_meta.json";

/// The header of a C-order float32 `.npy` of `shape`, byte for byte as numpy's `np.save`
/// writes it (format 1.0, keys sorted, spare room for the first axis to grow, padded with
/// spaces to a multiple of 64 bytes, ending in a newline).
pub fn npy_header_f32(shape: &[u64]) -> Vec<u8> {
    let dims = match shape {
        [one] => format!("({one},)"),
        _ => format!("({})", crate::grid::join_with(shape, ", ")),
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // numpy's GROWTH_AXIS_MAX_DIGITS: room to rewrite the first axis in place.
    let first = shape.first().map_or(0, |d| d.to_string().len());
    if !shape.is_empty() {
        dict.push_str(&" ".repeat(21usize.saturating_sub(first)));
    }
    let unpadded = 6 + 2 + 2 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let header_len = (dict.len() + pad + 1) as u16;
    let mut out = Vec::with_capacity(unpadded + pad);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend(std::iter::repeat_n(b' ', pad));
    out.push(b'\n');
    out
}

/// A whole `.npy` patch file: header then the float32 values (little-endian).
pub fn npy_patch_bytes(header: &[u8], values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + values.len() * 4);
    out.extend_from_slice(header);
    out.extend_from_slice(&f32_le_bytes(values));
    out
}

/// The little-endian bytes of `values` (a float32 `.npy` file's data, a raw Zarr chunk's),
/// which on a little-endian machine are the values' own memory (no copy).
pub fn f32_le_bytes(values: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(values))
    } else {
        std::borrow::Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// The header line of a patch manifest: the fixed columns (`zarr_index` in place of
/// `patch_path` for Zarr) and the carried `src_<name>` columns.
pub fn manifest_header(zarr: bool, carried: &[String]) -> String {
    let mut columns: Vec<&str> = FIXED_COLUMNS.to_vec();
    if zarr {
        columns[5] = "zarr_index";
    }
    columns.extend(carried.iter().map(String::as_str));
    csv_line(&columns)
}

/// Where a patch is: its file relative to the data root, or its index in the Zarr array.
pub enum PatchPlace<'a> {
    File(&'a str),
    ZarrIndex(u64),
}

/// One patch's manifest line.
pub fn manifest_line(
    id: &str,
    slice: u64,
    src_path: &str,
    patch: &KeptPatch,
    place: PatchPlace<'_>,
    carried: &[String],
) -> String {
    let PatchStats {
        min,
        max,
        mean,
        std,
    } = patch.stats;
    let place = match place {
        PatchPlace::File(p) => p.to_string(),
        PatchPlace::ZarrIndex(i) => i.to_string(),
    };
    let mut fields = vec![
        id.to_string(),
        slice.to_string(),
        src_path.to_string(),
        patch.row.to_string(),
        patch.col.to_string(),
        place,
        python_float(f64::from(min)),
        python_float(f64::from(max)),
        python_float(mean),
        python_float(std),
        "float32".to_string(),
    ];
    fields.extend(carried.iter().cloned());
    csv_line(&fields)
}

/// Patches left out, and why.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dropped {
    /// Slices smaller than one patch (they give none).
    pub small_slices: u64,
    /// Patches whose standard deviation is below `--min-std`.
    pub low_std_patches: u64,
}

/// `patch_meta.json`: the notebook's fields first, in its order, then what tessera adds.
/// Paths are relative to the data root, with `/`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PatchMeta {
    pub num_slices: u64,
    pub num_patches: u64,
    pub patch_size: u64,
    pub stride: u64,
    /// The slice manifest (`null` when the slices came from `--input`).
    pub source_manifest: Option<String>,
    pub patch_dir: String,
    /// Local time, `YYYY-mm-dd HH:MM:SS` (the one field that differs between runs).
    pub created: String,
    pub format: String,
    pub split: String,
    /// The volume or image directory of `--input` (`null` with a manifest).
    pub source_input: Option<String>,
    /// `--format zarr`: the array, its chunk and shard length along the patch axis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zarr_array: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zarr_chunks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zarr_shards: Option<u64>,
    pub min_std: Option<f64>,
    pub dropped: Dropped,
    pub tessera_version: String,
}

impl PatchMeta {
    /// The JSON text, indented by 2 as the notebook's `json.dump(meta, f, indent=2)`.
    pub fn to_text(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain data serialises")
    }
}

/// The local time as `YYYY-mm-dd HH:MM:SS` (Python's `time.strftime("%Y-%m-%d %H:%M:%S")`).
pub fn local_time_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as libc::time_t;
    // SAFETY: localtime_r reads one time_t and fills one tm that we own; no shared state.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let filled = unsafe { !libc::localtime_r(&now, &mut tm).is_null() };
    if !filled {
        return "1970-01-01 00:00:00".into();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_numpys() {
        let h = npy_header_f32(&[128, 128]);
        assert_eq!(h.len(), 128);
        let text = String::from_utf8_lossy(&h[10..]);
        assert!(text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (128, 128), }"));
        assert!(text.ends_with(" \n"));
        assert_eq!(u16::from_le_bytes([h[8], h[9]]) as usize, 118);
        // tessera's own reader takes it.
        let bytes = npy_patch_bytes(&h, &vec![0.5f32; 128 * 128]);
        let parsed = crate::io::npy::header(&bytes).unwrap();
        assert_eq!(parsed.shape, vec![128, 128]);
        assert_eq!(parsed.descr, "<f4");
        assert_eq!(parsed.data_start, 128);
        assert_eq!(npy_header_f32(&[3]).len() % 64, 0);
    }

    #[test]
    fn manifest_lines_follow_the_notebook_columns() {
        assert_eq!(
            manifest_header(false, &["src_index".into()]),
            "patch_id,slice_index,src_path,row,col,patch_path,min,max,mean,std,dtype,src_index\n"
        );
        assert!(manifest_header(true, &[]).contains(",col,zarr_index,min,"));
        let p = KeptPatch {
            kept_index: 0,
            row: 64,
            col: 0,
            stats: PatchStats {
                min: 0.0,
                max: 0.5,
                mean: 0.25,
                std: 1e-5,
            },
        };
        let line = manifest_line(
            "train_000001_064_000",
            1,
            "a,b.npy",
            &p,
            PatchPlace::File("p/train_000001_064_000.npy"),
            &["7".into()],
        );
        assert_eq!(
            line,
            "train_000001_064_000,1,\"a,b.npy\",64,0,p/train_000001_064_000.npy,0.0,0.5,0.25,1e-05,float32,7\n"
        );
    }

    #[test]
    fn created_is_a_local_timestamp() {
        let t = local_time_now();
        assert_eq!(t.len(), 19, "{t}");
        assert_eq!(&t[4..5], "-");
        assert_eq!(&t[10..11], " ");
    }
}
