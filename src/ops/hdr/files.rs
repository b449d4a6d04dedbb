//! Exposure brackets from file names `YYYYmmddHHMMSS_<EXPO>.<ext>`.
//!
//! - The timestamp is the camera's civil time, taken as written (no time zone), counted in
//!   seconds since 1970-01-01 00:00:00 of that calendar.
//! - `EXPO` is an integer exposure time in `--exposure-unit`s (microseconds by default).
//! - A bracket is the files of one directory whose timestamps round down to the same multiple
//!   of `--round-ts-to` (`30s`, `1min`, `2h`), sorted by exposure. A bracket with fewer than two
//!   exposures or with one exposure twice is reported and skipped.
//! - Image files (JPEG, PNG, TIFF) whose names do not parse are reported; other files are
//!   ignored.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// One exposure of a bracket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    pub path: PathBuf,
    /// Seconds since 1970-01-01 00:00:00 (civil time as written in the name).
    pub time: i64,
    /// Exposure as written in the name.
    pub exposure: u64,
    /// Exposure time in seconds.
    pub seconds: f64,
}

/// Frames of one directory and rounded timestamp, shortest exposure first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bracket {
    /// The rounded timestamp (seconds, as [`Frame::time`]).
    pub time: i64,
    /// Directory relative to the input root ("" at the top).
    pub dir: PathBuf,
    pub frames: Vec<Frame>,
}

impl Bracket {
    /// `dir/YYYYmmddHHMMSS`: where this bracket's outputs go, without extension.
    pub fn stem(&self) -> PathBuf {
        self.dir.join(format_time(self.time))
    }
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    pub brackets: Vec<Bracket>,
    /// Image files whose names do not parse.
    pub unparsed: Vec<PathBuf>,
    /// Image files whose names carry a date or time that does not exist, with why.
    pub impossible: Vec<(PathBuf, String)>,
    /// Brackets left out, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Units of `--exposure-unit`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExposureUnit {
    /// Microseconds.
    #[default]
    Us,
    /// Milliseconds.
    Ms,
    /// Seconds.
    S,
}

impl ExposureUnit {
    pub fn seconds(self, value: u64) -> f64 {
        value as f64
            / match self {
                ExposureUnit::Us => 1e6,
                ExposureUnit::Ms => 1e3,
                ExposureUnit::S => 1.0,
            }
    }
}

/// Days from 1970-01-01 to the civil date (proleptic Gregorian; Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Why a file name gives no (time, exposure).
#[derive(Clone, Debug, PartialEq)]
pub enum NameError {
    /// Not `YYYYmmddHHMMSS_<EXPO>.<ext>` at all.
    NotTimestamped,
    /// The right shape, but no such date or time: the stamp and why (month 13, 30 February).
    Impossible(String),
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Parses `YYYYmmddHHMMSS` into seconds since 1970-01-01 00:00:00, telling a stamp of the
/// wrong shape from one naming a date or time that does not exist.
///
/// # Errors
/// As described by [`NameError`].
pub fn parse_stamp(text: &str) -> Result<i64, NameError> {
    if text.len() != 14 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NameError::NotTimestamped);
    }
    let n = |a: usize, b: usize| text[a..b].parse::<i64>().unwrap_or(0);
    let (y, mo, d, h, mi, s) = (n(0, 4), n(4, 6), n(6, 8), n(8, 10), n(10, 12), n(12, 14));
    let impossible = |why: String| Err(NameError::Impossible(format!("{text} ({why})")));
    if !(1..=12).contains(&mo) {
        return impossible(format!("there is no month {mo}"));
    }
    if d < 1 || d > days_in_month(y, mo) {
        let month = MONTHS[mo as usize - 1];
        return impossible(format!("{month} {y} has no day {d}"));
    }
    if h > 23 || mi > 59 || s > 59 {
        return impossible(format!("{h:02}:{mi:02}:{s:02} is not a time of day"));
    }
    Ok(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
}

/// [`parse_stamp`], for callers that only need to know whether it is a time.
pub fn parse_time(text: &str) -> Option<i64> {
    parse_stamp(text).ok()
}

/// Formats seconds since 1970-01-01 as `YYYYmmddHHMMSS`.
pub fn format_time(t: i64) -> String {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Parses a file name `YYYYmmddHHMMSS_<EXPO>.<ext>` into (time, exposure).
///
/// # Errors
/// [`NameError::NotTimestamped`] for any other name, [`NameError::Impossible`] for a
/// well-formed stamp of a date or time that does not exist.
pub fn parse_name(name: &str) -> Result<(i64, u64), NameError> {
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    let (time, expo) = stem.split_once('_').ok_or(NameError::NotTimestamped)?;
    if expo.is_empty() || !expo.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NameError::NotTimestamped);
    }
    let exposure = expo.parse().map_err(|_| NameError::NotTimestamped)?;
    Ok((parse_stamp(time)?, exposure))
}

/// Parses `--round-ts-to`: `Ns`, `Nmin` or `Nh` (N a positive integer) into seconds.
///
/// # Errors
/// Anything else.
pub fn parse_round(spec: &str) -> Result<i64> {
    let bad = || {
        Error::parameter(
            "round-ts-to",
            format!("'{spec}' is not a duration like 30s, 1min or 2h"),
        )
    };
    let digits = spec.bytes().take_while(u8::is_ascii_digit).count();
    let n: i64 = spec[..digits].parse().map_err(|_| bad())?;
    let unit = match &spec[digits..] {
        "s" => 1,
        "min" => 60,
        "h" => 3600,
        _ => return Err(bad()),
    };
    if n <= 0 {
        return Err(bad());
    }
    Ok(n * unit)
}

fn is_image(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        matches!(
            e.to_ascii_lowercase().as_str(),
            "jpg" | "jpeg" | "png" | "tif" | "tiff"
        )
    })
}

/// Lists image files under `root` (sorted; into subdirectories when `recursive`, each real
/// directory once: see [`crate::io::walk`]).
fn list(root: &Path, recursive: bool) -> Result<Vec<PathBuf>> {
    let mut files = crate::io::walk::files(root, recursive)?;
    files.retain(|p| is_image(p));
    Ok(files)
}

/// Groups the image files under `root` into brackets (see the module docs).
///
/// # Errors
/// A missing or unreadable directory, or one without any image file.
pub fn scan(root: &Path, recursive: bool, round: i64, unit: ExposureUnit) -> Result<Scan> {
    if !root.is_dir() {
        return Err(Error::bad_file(root, "not a directory"));
    }
    let files = list(root, recursive)?;
    if files.is_empty() {
        return Err(Error::bad_file(
            root,
            format!(
                "no JPEG, PNG or TIFF files{}",
                if recursive {
                    ""
                } else {
                    " (add --recursive for subdirectories)"
                }
            ),
        ));
    }
    let mut scan = Scan::default();
    let mut keyed: std::collections::BTreeMap<(PathBuf, i64), Vec<Frame>> = Default::default();
    for path in files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let (time, exposure) = match parse_name(name) {
            Ok(parsed) => parsed,
            Err(NameError::NotTimestamped) => {
                scan.unparsed.push(path);
                continue;
            }
            Err(NameError::Impossible(why)) => {
                scan.impossible.push((path, why));
                continue;
            }
        };
        let dir = path
            .parent()
            .and_then(|p| p.strip_prefix(root).ok())
            .unwrap_or(Path::new(""))
            .to_path_buf();
        keyed
            .entry((dir, time.div_euclid(round) * round))
            .or_default()
            .push(Frame {
                seconds: unit.seconds(exposure),
                path,
                time,
                exposure,
            });
    }
    for ((dir, time), mut frames) in keyed {
        frames.sort_by(|a, b| a.exposure.cmp(&b.exposure).then(a.path.cmp(&b.path)));
        let bracket = Bracket { time, dir, frames };
        let repeated = bracket
            .frames
            .windows(2)
            .find(|w| w[0].exposure == w[1].exposure);
        let reason = if bracket.frames.len() < 2 {
            Some("fewer than 2 exposures".to_string())
        } else if bracket.frames.iter().any(|f| f.exposure == 0) {
            Some("an exposure of 0".to_string())
        } else {
            repeated.map(|w| {
                format!(
                    "exposure {} twice ({} and {})",
                    w[0].exposure,
                    w[0].path.display(),
                    w[1].path.display()
                )
            })
        };
        match reason {
            Some(r) => scan.skipped.push((bracket.stem(), r)),
            None => scan.brackets.push(bracket),
        }
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_dates_and_times_say_so() {
        for (name, why) in [
            (
                "20231301120000_10.jpg",
                "20231301120000 (there is no month 13)",
            ),
            (
                "20230230120000_10.jpg",
                "20230230120000 (February 2023 has no day 30)",
            ),
            (
                "20230229120000_10.jpg",
                "20230229120000 (February 2023 has no day 29)",
            ),
            (
                "20230000120000_10.jpg",
                "20230000120000 (there is no month 0)",
            ),
            (
                "20230431120000_10.jpg",
                "20230431120000 (April 2023 has no day 31)",
            ),
            (
                "20230101240000_10.jpg",
                "20230101240000 (24:00:00 is not a time of day)",
            ),
            (
                "20230101126000_10.jpg",
                "20230101126000 (12:60:00 is not a time of day)",
            ),
        ] {
            assert_eq!(
                parse_name(name),
                Err(NameError::Impossible(why.into())),
                "{name}"
            );
        }
        // 2024 is a leap year.
        assert!(parse_name("20240229120000_10.jpg").is_ok());
    }

    #[test]
    fn names_parse_and_times_round_trip() {
        assert_eq!(
            parse_name("20240102030405_1000.jpg"),
            Ok((parse_time("20240102030405").unwrap(), 1000))
        );
        assert_eq!(parse_time("19700101000000"), Some(0));
        assert_eq!(parse_time("19700102000001"), Some(86_401));
        assert_eq!(
            parse_time("20000229120000").map(format_time).as_deref(),
            Some("20000229120000")
        );
        for bad in [
            "2024010203040_1000.jpg",
            "20240102030405-1000.jpg",
            "20240102030405_.jpg",
            "20240102030405_1e3.jpg",
            "image.jpg",
        ] {
            assert_eq!(parse_name(bad), Err(NameError::NotTimestamped), "{bad}");
        }
        for t in [0i64, 1, 86_399, 951_782_400, 1_700_000_000, -86_400] {
            assert_eq!(parse_time(&format_time(t)), Some(t), "{t}");
        }
    }

    #[test]
    fn rounding_specs() {
        assert_eq!(parse_round("30s").unwrap(), 30);
        assert_eq!(parse_round("1min").unwrap(), 60);
        assert_eq!(parse_round("2h").unwrap(), 7200);
        for bad in ["", "0s", "30", "s", "1.5min", "-3s", "3 s"] {
            assert!(parse_round(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn brackets_group_by_rounded_time_and_directory() {
        let dir = tempfile::tempdir().unwrap();
        let touch = |p: &str| {
            let p = dir.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"").unwrap();
        };
        // 12:00:00..12:00:29 is one bracket at 30 s; 12:00:31 starts the next.
        for f in [
            "20240101120000_100.jpg",
            "20240101120010_1000.jpg",
            "20240101120029_10.jpg",
            "20240101120031_100.png",
            "20240101120040_200.png",
            "20240101120100_100.jpg",
            "20240101120130_100.jpg",
            "20240101120130_100.tif",
            "notes.txt",
            "IMG_0001.jpg",
            "sub/20240101120000_100.jpg",
            "sub/20240101120001_300.jpg",
        ] {
            touch(f);
        }
        let s = scan(dir.path(), false, 30, ExposureUnit::Us).unwrap();
        assert_eq!(s.brackets.len(), 2);
        let b = &s.brackets[0];
        assert_eq!(format_time(b.time), "20240101120000");
        assert_eq!(
            b.frames.iter().map(|f| f.exposure).collect::<Vec<_>>(),
            [10, 100, 1000]
        );
        assert_eq!(b.frames[0].seconds, 1e-5);
        assert_eq!(format_time(s.brackets[1].time), "20240101120030");
        assert_eq!(s.unparsed, [dir.path().join("IMG_0001.jpg")]);
        // 12:01:00 has one exposure; 12:01:30 has exposure 100 twice.
        assert_eq!(s.skipped.len(), 2);
        assert!(s.skipped[0].1.contains("fewer than 2"), "{:?}", s.skipped);
        assert!(s.skipped[1].1.contains("twice"), "{:?}", s.skipped);
        let r = scan(dir.path(), true, 60, ExposureUnit::Ms).unwrap();
        let sub: Vec<_> = r
            .brackets
            .iter()
            .filter(|b| b.dir == Path::new("sub"))
            .collect();
        assert_eq!(sub.len(), 1);
        assert_eq!(sub[0].stem(), Path::new("sub/20240101120000"));
        assert_eq!(sub[0].frames[1].seconds, 0.3);
        assert!(scan(&dir.path().join("missing"), false, 30, ExposureUnit::Us).is_err());
        let empty = tempfile::tempdir().unwrap();
        let e = scan(empty.path(), false, 30, ExposureUnit::Us).unwrap_err();
        assert!(e.to_string().contains("no JPEG, PNG or TIFF"), "{e}");
    }
}
