//! Manifests in and out: the slice manifest a user gives (a CSV with a `path` column) and the
//! patch manifest tessera writes, in the text pandas would write for the same values.
//!
//! Paths in both stay relative to the data root: a slice path that is absolute or climbs out
//! of the root with `..` is refused, because the patch manifest must stay portable.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// The columns every patch manifest starts with (npy format; zarr has `zarr_index` in place
/// of `patch_path`); the source manifest's other columns follow as `src_<name>`.
pub const FIXED_COLUMNS: [&str; 11] = [
    "patch_id",
    "slice_index",
    "src_path",
    "row",
    "col",
    "patch_path",
    "min",
    "max",
    "mean",
    "std",
    "dtype",
];

/// A slice manifest as read: its columns and rows (every row as long as the header).
#[derive(Clone, Debug, PartialEq)]
pub struct SliceManifest {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Which column is `path`.
    pub path_column: usize,
}

impl SliceManifest {
    /// Reads and checks a slice manifest.
    ///
    /// # Errors
    /// [`Error::BadFile`] naming the file: missing, unreadable, not UTF-8, not CSV, empty, no
    /// `path` column, a repeated column name, a row of the wrong length.
    pub fn read(path: &Path) -> Result<SliceManifest> {
        let bad = |m: String| Error::bad_file(path, m);
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(bad("manifest does not exist".into()))
            }
            Err(e) => return Err(bad(format!("cannot read the manifest: {e}"))),
        };
        let text = String::from_utf8(bytes)
            .map_err(|_| bad("the manifest is not UTF-8 text (is it a CSV file?)".into()))?;
        Self::parse(&text).map_err(bad)
    }

    /// [`SliceManifest::read`] of text; the error says what is wrong, without the file.
    ///
    /// # Errors
    /// As [`SliceManifest::read`].
    pub fn parse(text: &str) -> std::result::Result<SliceManifest, String> {
        let mut records = parse_csv(text)?.into_iter();
        let header = records
            .next()
            .ok_or("the manifest is empty (expected a header with a `path` column)")?;
        if let Some(dup) = header
            .iter()
            .enumerate()
            .find(|(i, h)| header[..*i].contains(h))
        {
            return Err(format!("column {:?} appears twice in the header", dup.1));
        }
        let path_column = header.iter().position(|h| h == "path").ok_or_else(|| {
            format!(
                "no `path` column (columns: {}); the manifest needs one, relative to the data root",
                header.join(", ")
            )
        })?;
        let rows: Vec<Vec<String>> = records.collect();
        if rows.is_empty() {
            return Err("the manifest lists no slices (a header and no rows)".into());
        }
        if let Some((i, r)) = rows
            .iter()
            .enumerate()
            .find(|(_, r)| r.len() != header.len())
        {
            return Err(format!(
                "row {} has {} fields, the header {}",
                i + 1,
                r.len(),
                header.len()
            ));
        }
        Ok(SliceManifest {
            header,
            rows,
            path_column,
        })
    }

    /// Every slice's path, checked and normalised ([`relative_slice_path`]).
    ///
    /// # Errors
    /// The first path that is empty, absolute or escapes the data root, with its row.
    pub fn slice_paths(&self) -> std::result::Result<Vec<String>, String> {
        self.rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                relative_slice_path(&r[self.path_column])
                    .map_err(|m| format!("row {} (slice {i}): {m}", i + 1))
            })
            .collect()
    }

    /// The carried columns: every column but `path`, as `src_<name>`, and each row's values.
    pub fn carried(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let keep = |r: &[String]| -> Vec<String> {
            r.iter()
                .enumerate()
                .filter(|(i, _)| *i != self.path_column)
                .map(|(_, v)| v.clone())
                .collect()
        };
        let header = keep(&self.header)
            .into_iter()
            .map(|h| format!("src_{h}"))
            .collect();
        (header, self.rows.iter().map(|r| keep(r)).collect())
    }
}

/// Parses CSV text (RFC 4180: `,` between fields, `"` around fields that hold `,`, `"` or line
/// breaks, `""` for a quote inside; `\n` or `\r\n` between records; a UTF-8 BOM ignored;
/// blank lines skipped, as pandas does).
///
/// # Errors
/// A quote that is never closed, or text after a closing quote.
pub fn parse_csv(text: &str) -> std::result::Result<Vec<Vec<String>>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let (mut record, mut field) = (Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut line = 1;
    let mut quoted_field = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if field.is_empty() && !quoted_field => {
                quoted_field = true;
                loop {
                    match chars.next() {
                        None => {
                            return Err(format!("a quote opened on line {line} is never closed"))
                        }
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            field.push('"');
                        }
                        Some('"') => break,
                        Some(ch) => {
                            line += usize::from(ch == '\n');
                            field.push(ch);
                        }
                    }
                }
                if !matches!(chars.peek(), None | Some(',' | '\n' | '\r')) {
                    return Err(format!("text after a closing quote on line {line}"));
                }
            }
            ',' => {
                record.push(std::mem::take(&mut field));
                quoted_field = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                line += 1;
                end_record(&mut records, &mut record, &mut field, quoted_field);
                quoted_field = false;
            }
            other => field.push(other),
        }
    }
    end_record(&mut records, &mut record, &mut field, quoted_field);
    Ok(records)
}

/// Closes a record at a line break (or the end); a blank line is no record.
fn end_record(
    records: &mut Vec<Vec<String>>,
    record: &mut Vec<String>,
    field: &mut String,
    quoted: bool,
) {
    if record.is_empty() && field.is_empty() && !quoted {
        return;
    }
    record.push(std::mem::take(field));
    records.push(std::mem::take(record));
}

/// Refuses a path that is empty or absolute (`/x`, `\x`, `C:\x`, `C:x`): what the notebook's
/// `^[^:\\/].+` check on its manifest's paths refuses. `..` is allowed here (a patch path
/// leads from the data root to wherever the output went).
///
/// # Errors
/// What is wrong with the path.
pub fn check_relative(text: &str) -> std::result::Result<(), String> {
    let unified = text.replace('\\', "/");
    if unified.trim().is_empty() {
        return Err("empty path".into());
    }
    let drive = unified.len() >= 2
        && unified.as_bytes()[1] == b':'
        && unified.as_bytes()[0].is_ascii_alphabetic();
    if unified.starts_with('/') || drive {
        return Err(format!(
            "{text:?} is an absolute path; manifest paths must be relative to the data root"
        ));
    }
    Ok(())
}

/// A manifest path made portable: `\` read as `/`, `.` dropped, `a/../b` folded to `b`.
///
/// # Errors
/// An empty path, an absolute one (`/x`, `\x`, `C:\x`, `C:x`), or one whose `..` climbs out
/// of the data root.
pub fn relative_slice_path(text: &str) -> std::result::Result<String, String> {
    check_relative(text)?;
    let unified = text.replace('\\', "/");
    let mut parts: Vec<&str> = Vec::new();
    for part in unified.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(format!(
                        "{text:?} climbs out of the data root with `..`; outputs must stay relative to it"
                    ));
                }
            }
            name => parts.push(name),
        }
    }
    if parts.is_empty() {
        return Err(format!(
            "{text:?} names the data root itself, not a slice file"
        ));
    }
    Ok(parts.join("/"))
}

/// The relative path from directory `base` to `target` (both made canonical first), with `/`
/// and `..` where `target` lies outside `base`, as Python's `os.path.relpath`.
pub fn relative_to(target: &Path, base: &Path) -> String {
    let (t, b) = (
        crate::io::safety::canonical(target),
        crate::io::safety::canonical(base),
    );
    let names = |p: &Path| -> Vec<String> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect()
    };
    let (t, b) = (names(&t), names(&b));
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<String> = vec!["..".into(); b.len() - common];
    parts.extend(t[common..].iter().cloned());
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

/// `dir/name` with `/`, or `name` alone when `dir` is `.`.
pub fn join_relative(dir: &str, name: &str) -> String {
    if dir == "." {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// A CSV field as pandas writes it (`QUOTE_MINIMAL`): quoted only when it holds a comma, a
/// quote or a line break, quotes doubled.
pub fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

/// One CSV line (with its `\n`) of fields.
pub fn csv_line<S: AsRef<str>>(fields: &[S]) -> String {
    let mut line = fields
        .iter()
        .map(|f| csv_field(f.as_ref()))
        .collect::<Vec<_>>()
        .join(",");
    line.push('\n');
    line
}

/// A float64 as Python's `repr` (and so pandas' `to_csv`) writes it: the shortest digits
/// that read back to the same value, positional from 1e-4 up to 1e16 (`0.5`, `3.0`),
/// scientific outside (`1e-05`, `1.5e+16`).
pub fn python_float(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if v == 0.0 {
        return if v.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "d.ddde-x".
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let text = positional(&digits, exp);
        return format!("{sign}{text}");
    }
    let mantissa = if digits.len() == 1 {
        digits.clone()
    } else {
        format!("{}.{}", &digits[..1], &digits[1..])
    };
    let exp_sign = if exp < 0 { '-' } else { '+' };
    format!("{sign}{mantissa}e{exp_sign}{:02}", exp.abs())
}

/// Digits `d1 d2 ...` (value `d1.d2... x 10^exp`) written without an exponent, with at least
/// one digit after the point.
fn positional(digits: &str, exp: i32) -> String {
    if exp < 0 {
        return format!("0.{}{digits}", "0".repeat((-exp - 1) as usize));
    }
    let point = exp as usize + 1;
    if digits.len() <= point {
        format!("{digits}{}.0", "0".repeat(point - digits.len()))
    } else {
        format!("{}.{}", &digits[..point], &digits[point..])
    }
}

/// The data root a run resolves slice paths against: `--data-root`, else the default given.
pub fn data_root(given: Option<&Path>, default: &Path) -> PathBuf {
    given.map_or_else(|| default.to_path_buf(), Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_crlf_bom_and_blank_lines() {
        let rows =
            parse_csv("\u{feff}index,path\r\n0,\"a,b.npy\"\r\n\r\n1,\"say \"\"x\"\"\nnext\"\n")
                .unwrap();
        assert_eq!(
            rows,
            vec![
                vec!["index", "path"],
                vec!["0", "a,b.npy"],
                vec!["1", "say \"x\"\nnext"]
            ]
        );
        assert_eq!(parse_csv("a,,\n").unwrap(), vec![vec!["a", "", ""]]);
        assert!(parse_csv("a,\"b\n").unwrap_err().contains("never closed"));
        assert!(parse_csv("a,\"b\"c\n")
            .unwrap_err()
            .contains("after a closing quote"));
    }

    #[test]
    fn manifest_refusals_say_what_is_wrong() {
        let e = |t: &str| SliceManifest::parse(t).unwrap_err();
        assert!(e("").contains("empty"));
        assert!(e("path\n").contains("no slices"));
        assert!(e("index,file\n0,a.npy\n").contains("no `path` column (columns: index, file)"));
        assert!(e("path,x,path\na,1,b\n").contains("appears twice"));
        assert!(e("path,x\na,1\nb\n").contains("row 2 has 1 fields"));
        let m = SliceManifest::parse("index,path,min\n0,a/x.npy,0.5\n").unwrap();
        assert_eq!(m.path_column, 1);
        let (header, rows) = m.carried();
        assert_eq!(header, vec!["src_index", "src_min"]);
        assert_eq!(rows, vec![vec!["0", "0.5"]]);
    }

    #[test]
    fn slice_paths_stay_inside_the_data_root() {
        assert_eq!(relative_slice_path("a\\b\\c.npy").unwrap(), "a/b/c.npy");
        assert_eq!(relative_slice_path("./a/../b.npy").unwrap(), "b.npy");
        for bad in [
            "/abs/x.npy",
            "\\\\server\\x.npy",
            "C:\\data\\x.npy",
            "c:x.npy",
        ] {
            assert!(
                relative_slice_path(bad).unwrap_err().contains("absolute"),
                "{bad}"
            );
        }
        for bad in ["../x.npy", "a/../../x.npy", "a\\..\\..\\x.npy"] {
            assert!(
                relative_slice_path(bad).unwrap_err().contains("climbs out"),
                "{bad}"
            );
        }
        assert!(relative_slice_path("  ").unwrap_err().contains("empty"));
        assert!(relative_slice_path("a/..")
            .unwrap_err()
            .contains("data root itself"));
        let m = SliceManifest::parse("path\nok.npy\n../x.npy\n").unwrap();
        assert!(m.slice_paths().unwrap_err().starts_with("row 2 (slice 1)"));
    }

    #[test]
    fn relative_paths_like_os_path_relpath() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("data");
        assert_eq!(relative_to(&root.join("p/train"), &root), "p/train");
        assert_eq!(relative_to(&d.path().join("out"), &root), "../out");
        assert_eq!(relative_to(&root, &root), ".");
        assert_eq!(join_relative(".", "x.npy"), "x.npy");
        assert_eq!(join_relative("p/t", "x.npy"), "p/t/x.npy");
    }

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(
            csv_line(&["a", "b,c", "say \"x\""]),
            "a,\"b,c\",\"say \"\"x\"\"\"\n"
        );
    }

    #[test]
    fn floats_as_python_repr_writes_them() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.5, "0.5"),
            (100.0, "100.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e16, "1e+16"),
            (1.2345e16, "1.2345e+16"),
            (9999999999999998.0, "9999999999999998.0"),
            (-2.5e-300, "-2.5e-300"),
            (f64::from(0.369_978_13_f32), "0.369978129863739"),
            (0.1 + 0.2, "0.30000000000000004"),
            (123456.789, "123456.789"),
        ];
        for (v, want) in cases {
            assert_eq!(python_float(v), want, "{v:e}");
        }
    }
}
