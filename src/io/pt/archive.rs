//! The zip archive around a written `.pt`, laid out so that ranks can fill its tensor in place.
//!
//! `torch.save` writes an uncompressed zip: `archive/data.pkl` (the pickle), small records
//! (`.format_version`, `.storage_alignment`, `byteorder`), one record per storage
//! (`archive/data/0`, its bytes aligned to 64), then `archive/version` and the central
//! directory. tessera writes the same records in two steps:
//! - [`layout`]: everything up to the tensor's bytes, with the storage record's CRC left 0.
//!   The file is created at its full length, and every rank writes its boxes at
//!   `data_offset` (as for `.npy`).
//! - [`finalize`], by rank 0 once every rank is done: the storage's CRC-32 (one read of the
//!   tensor, the cost of a `.pt` output over a `.npy`), the trailing record and the central
//!   directory. It starts by cutting the file back to the tensor's end, so it can be run again
//!   on a file it has already finished (a run killed while publishing).
//!
//! Sizes and offsets past 4 GiB use the zip64 fields, which torch's reader (miniz) reads.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// The archive's folder name; torch takes it from the first record, whatever it is.
pub const FOLDER: &str = "archive";
/// Where a storage's bytes start: torch aligns them to 64 bytes (its `.storage_alignment`).
const ALIGN: u64 = 64;
const LOCAL: u32 = 0x0403_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const END: u32 = 0x0605_4b50;
const END64: u32 = 0x0606_4b50;
const LOCATOR64: u32 = 0x0706_4b50;
const ZIP64_EXTRA: u16 = 0x0001;
/// torch's own padding field ("FB"), which readers skip.
const PAD_EXTRA: u16 = 0x4246;
const MAX32: u64 = 0xffff_ffff;

/// The start of a `.pt` file up to the tensor's bytes.
#[derive(Debug)]
pub struct Layout {
    pub prefix: Vec<u8>,
    /// Where the storage record's local header starts (its CRC is at +14).
    pub storage_header: usize,
    /// Where the tensor's bytes start (a multiple of 64).
    pub data_offset: u64,
    pub data_len: u64,
}

/// The small records torch writes before the storages, as (name, contents).
fn leading_records(pickle: &[u8]) -> [(String, Vec<u8>); 4] {
    [
        (format!("{FOLDER}/data.pkl"), pickle.to_vec()),
        (format!("{FOLDER}/.format_version"), b"1".to_vec()),
        (format!("{FOLDER}/.storage_alignment"), b"64".to_vec()),
        (format!("{FOLDER}/byteorder"), b"little".to_vec()),
    ]
}

/// The record torch writes after the storages.
fn trailing_record() -> (String, Vec<u8>) {
    (format!("{FOLDER}/version"), b"3\n".to_vec())
}

fn storage_name() -> String {
    format!("{FOLDER}/data/0")
}

/// A local file header for `name` with `size` bytes, padded so its data starts at a multiple of
/// [`ALIGN`] when it starts at `at`.
fn local_header(at: u64, name: &str, size: u64, crc: u32) -> Vec<u8> {
    let zip64 = size >= MAX32;
    let mut extra = Vec::new();
    if zip64 {
        extra.extend_from_slice(&ZIP64_EXTRA.to_le_bytes());
        extra.extend_from_slice(&16u16.to_le_bytes());
        extra.extend_from_slice(&size.to_le_bytes());
        extra.extend_from_slice(&size.to_le_bytes());
    }
    let unpadded = at + 30 + name.len() as u64 + extra.len() as u64;
    if !unpadded.is_multiple_of(ALIGN) {
        // The padding field's own 4-byte header counts too.
        let pad = (ALIGN - (unpadded + 4) % ALIGN) % ALIGN;
        extra.extend_from_slice(&PAD_EXTRA.to_le_bytes());
        extra.extend_from_slice(&(pad as u16).to_le_bytes());
        extra.extend(std::iter::repeat_n(b'Z', pad as usize));
    }
    let small = if zip64 { MAX32 as u32 } else { size as u32 };
    let mut h = Vec::with_capacity(30 + name.len() + extra.len());
    h.extend_from_slice(&LOCAL.to_le_bytes());
    h.extend_from_slice(&(if zip64 { 45u16 } else { 20 }).to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes()); // flags
    h.extend_from_slice(&0u16.to_le_bytes()); // stored
    h.extend_from_slice(&0u32.to_le_bytes()); // time, date
    h.extend_from_slice(&crc.to_le_bytes());
    h.extend_from_slice(&small.to_le_bytes());
    h.extend_from_slice(&small.to_le_bytes());
    h.extend_from_slice(&(name.len() as u16).to_le_bytes());
    h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
    h.extend_from_slice(name.as_bytes());
    h.extend_from_slice(&extra);
    h
}

/// The file's bytes up to the tensor's: the leading records and the storage's header.
pub fn layout(pickle: &[u8], data_len: u64) -> Layout {
    let mut prefix = Vec::new();
    for (name, bytes) in leading_records(pickle) {
        let h = local_header(prefix.len() as u64, &name, bytes.len() as u64, crc(&bytes));
        prefix.extend_from_slice(&h);
        prefix.extend_from_slice(&bytes);
    }
    let storage_header = prefix.len();
    let h = local_header(storage_header as u64, &storage_name(), data_len, 0);
    prefix.extend_from_slice(&h);
    Layout {
        storage_header,
        data_offset: prefix.len() as u64,
        prefix,
        data_len,
    }
}

fn crc(bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(bytes);
    h.finalize()
}

/// One record as the central directory lists it.
struct Entry {
    name: String,
    offset: u64,
    size: u64,
    crc: u32,
}

/// Reads the local headers of `layout`'s records from the start of `file` up to the storage
/// record's (the records tessera wrote, checked as they are read).
fn read_entries(file: &mut File, path: &Path) -> Result<Vec<Entry>> {
    let bad = |m: &str| Error::bad_file(path, format!("not a .pt file tessera is writing: {m}"));
    let mut entries = Vec::new();
    let mut at = 0u64;
    loop {
        let mut h = [0u8; 30];
        file.seek(SeekFrom::Start(at)).at(path)?;
        file.read_exact(&mut h)
            .map_err(|_| bad("truncated header"))?;
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        if u32_at(0) != LOCAL || u16_at(8) != 0 {
            return Err(bad("a record that is not a stored zip entry"));
        }
        let (name_len, extra_len) = (u16_at(26) as usize, u16_at(28) as usize);
        let mut rest = vec![0u8; name_len + extra_len];
        file.read_exact(&mut rest)
            .map_err(|_| bad("truncated header"))?;
        let name = String::from_utf8(rest[..name_len].to_vec()).map_err(|_| bad("bad name"))?;
        let mut size = u64::from(u32_at(22));
        if size == MAX32 {
            let extra = &rest[name_len..];
            if extra.len() < 20 || u16::from_le_bytes([extra[0], extra[1]]) != ZIP64_EXTRA {
                return Err(bad("a zip64 size without its extra field"));
            }
            size = u64::from_le_bytes(extra[4..12].try_into().expect("8 bytes"));
        }
        entries.push(Entry {
            offset: at,
            crc: u32_at(14),
            size,
            name: name.clone(),
        });
        at += 30 + (name_len + extra_len) as u64;
        if name == storage_name() {
            return Ok(entries);
        }
        at += size;
        if entries.len() > 16 {
            return Err(bad("no storage record among the first records"));
        }
    }
}

/// Completes a `.pt` whose tensor bytes are all written (see the module's documentation).
///
/// # Errors
/// A file that does not start as [`layout`] wrote it, or a read or write failure naming it.
pub fn finalize(path: &Path) -> Result<()> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .at(path)?;
    let mut entries = read_entries(&mut file, path)?;
    let storage = entries
        .last_mut()
        .expect("read_entries ends at the storage");
    let data_start = file.stream_position().at(path)?;
    let data_end = data_start + storage.size;
    if file.metadata().at(path)?.len() < data_end {
        return Err(Error::bad_file(
            path,
            "shorter than its tensor: the run that wrote it did not finish",
        ));
    }
    file.set_len(data_end).at(path)?;
    storage.crc = crc_of_range(&mut file, path, data_start, storage.size)?;
    file.seek(SeekFrom::Start(storage.offset + 14)).at(path)?;
    file.write_all(&storage.crc.to_le_bytes()).at(path)?;

    let mut tail = Vec::new();
    let (name, bytes) = trailing_record();
    let crc = crc(&bytes);
    tail.extend_from_slice(&local_header(data_end, &name, bytes.len() as u64, crc));
    tail.extend_from_slice(&bytes);
    entries.push(Entry {
        name,
        offset: data_end,
        size: bytes.len() as u64,
        crc,
    });
    let directory_at = data_end + tail.len() as u64;
    let directory = central_directory(&entries);
    tail.extend_from_slice(&directory);
    tail.extend_from_slice(&end_records(
        entries.len() as u64,
        directory_at,
        directory.len() as u64,
    ));
    file.seek(SeekFrom::Start(data_end)).at(path)?;
    file.write_all(&tail).at(path)?;
    Ok(())
}

fn crc_of_range(file: &mut File, path: &Path, start: u64, len: u64) -> Result<u32> {
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 8 << 20];
    file.seek(SeekFrom::Start(start)).at(path)?;
    let mut left = len;
    while left > 0 {
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        file.read_exact(&mut buf[..n]).at(path)?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(h.finalize())
}

fn central_directory(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut extra = Vec::new();
        let big_size = e.size >= MAX32;
        let big_offset = e.offset >= MAX32;
        if big_size || big_offset {
            extra.extend_from_slice(&ZIP64_EXTRA.to_le_bytes());
            let n = 8 * (2 * usize::from(big_size) + usize::from(big_offset));
            extra.extend_from_slice(&(n as u16).to_le_bytes());
            if big_size {
                extra.extend_from_slice(&e.size.to_le_bytes());
                extra.extend_from_slice(&e.size.to_le_bytes());
            }
            if big_offset {
                extra.extend_from_slice(&e.offset.to_le_bytes());
            }
        }
        let version: u16 = if extra.is_empty() { 20 } else { 45 };
        let size = if big_size { MAX32 } else { e.size } as u32;
        let offset = if big_offset { MAX32 } else { e.offset } as u32;
        out.extend_from_slice(&CENTRAL.to_le_bytes());
        out.extend_from_slice(&version.to_le_bytes()); // made by
        out.extend_from_slice(&version.to_le_bytes()); // needed
        out.extend_from_slice(&0u16.to_le_bytes()); // flags
        out.extend_from_slice(&0u16.to_le_bytes()); // stored
        out.extend_from_slice(&0u32.to_le_bytes()); // time, date
        out.extend_from_slice(&e.crc.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0u8; 6]); // comment length, disk, internal attributes
        out.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(e.name.as_bytes());
        out.extend_from_slice(&extra);
    }
    out
}

/// The end of central directory record, preceded by the zip64 ones when an offset needs them.
fn end_records(count: u64, directory_at: u64, directory_len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let zip64 = directory_at >= MAX32 || directory_len >= MAX32;
    if zip64 {
        let end64_at = directory_at + directory_len;
        out.extend_from_slice(&END64.to_le_bytes());
        out.extend_from_slice(&44u64.to_le_bytes());
        out.extend_from_slice(&45u16.to_le_bytes());
        out.extend_from_slice(&45u16.to_le_bytes());
        out.extend_from_slice(&[0u8; 8]); // this disk, directory's disk
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&directory_len.to_le_bytes());
        out.extend_from_slice(&directory_at.to_le_bytes());
        out.extend_from_slice(&LOCATOR64.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&end64_at.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
    }
    let clip = |v: u64| if zip64 { MAX32 as u32 } else { v as u32 };
    out.extend_from_slice(&END.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]); // this disk, directory's disk
    out.extend_from_slice(&(count as u16).to_le_bytes());
    out.extend_from_slice(&(count as u16).to_le_bytes());
    out.extend_from_slice(&clip(directory_len).to_le_bytes());
    out.extend_from_slice(&clip(directory_at).to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes()); // comment
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(dir: &Path, data: &[u8]) -> std::path::PathBuf {
        let path = dir.join("t.pt");
        let l = layout(b"\x80\x02K\x07.", data.len() as u64);
        assert_eq!(l.data_offset % 64, 0);
        let mut bytes = l.prefix.clone();
        bytes.extend_from_slice(data);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_finished_file_is_a_zip_any_reader_reads() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let path = written(dir.path(), &data);
        finalize(&path).unwrap();
        let once = std::fs::read(&path).unwrap();
        // Again (a run killed after finishing, before publishing): the same bytes.
        finalize(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), once);
        let mut zip = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
        let names: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
        assert_eq!(
            names,
            [
                "archive/data.pkl",
                "archive/.format_version",
                "archive/.storage_alignment",
                "archive/byteorder",
                "archive/data/0",
                "archive/version"
            ]
        );
        // The zip crate checks each record's CRC as it reads it to the end.
        for name in &names {
            let mut got = Vec::new();
            zip.by_name(name).unwrap().read_to_end(&mut got).unwrap();
            if name == "archive/data/0" {
                assert_eq!(got, data);
            }
        }
    }

    #[test]
    fn large_sizes_get_zip64_fields() {
        let h = local_header(0, "archive/data/0", 5 << 30, 0);
        assert_eq!(&h[18..26], &[0xff; 8]);
        assert_eq!(u16::from_le_bytes([h[30 + 14], h[31 + 14]]), ZIP64_EXTRA);
        assert_eq!((h.len() as u64) % 64, 0);
        let e = end_records(6, 6 << 30, 400);
        assert_eq!(u32::from_le_bytes(e[..4].try_into().unwrap()), END64);
        let d = central_directory(&[Entry {
            name: "a".into(),
            offset: 5 << 30,
            size: 5 << 30,
            crc: 1,
        }]);
        assert_eq!(d.len(), 46 + 1 + 4 + 24);
    }

    #[test]
    fn an_unfinished_or_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = written(dir.path(), &[1, 2, 3, 4]);
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 1]).unwrap();
        assert!(finalize(&path)
            .unwrap_err()
            .to_string()
            .contains("did not finish"));
        std::fs::write(&path, b"PK\x05\x06 not ours").unwrap();
        assert!(finalize(&path)
            .unwrap_err()
            .to_string()
            .contains("not a .pt"));
    }
}
