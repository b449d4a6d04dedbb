//! `tessera patches verify OUT`: the notebook's unit-test cell, on every patch instead of a
//! sample. Counts (manifest rows against the meta), dtype, value range, relative paths, every
//! file present with shape (ps, ps) (or the Zarr array's), and each patch's statistics in the
//! manifest equal to those of its pixels (recomputed the way `tessera patches` computes
//! them, so equality is exact). Rows are split among the ranks; problems are gathered and
//! listed by rank 0.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use ndarray::{ArrayView2, Axis, Ix3};
use rayon::prelude::*;

use super::kernel;
use super::manifest::{check_relative, parse_csv, relative_slice_path};
use super::output::{PatchMeta, MANIFEST_NAME, META_NAME, ZARR_NAME};
use crate::comm::Comm;
use crate::error::{Error, Result};
use crate::grid::{partition_contiguous, Region};
use crate::io::{self, Address, DType};

/// Flags of `tessera patches verify`.
#[derive(Clone, Debug, clap::Args)]
pub struct VerifyArgs {
    /// A `tessera patches` output directory (or one holding a directory per split).
    pub output: PathBuf,
    /// The range every value must lie in, `LO,HI` (the notebook assumes 0,1), or `none`.
    #[arg(long, default_value = "0,1")]
    pub expect_range: String,
    /// The data root the manifest's paths are relative to; default: found from the output
    /// directory and the meta's `patch_dir`.
    #[arg(long)]
    pub data_root: Option<PathBuf>,
}

/// At most this many problems are printed (all are counted).
const LISTED: usize = 200;

/// Runs the checks on every dataset under `args.output`; rank 0 prints the problems.
///
/// # Errors
/// An unreadable meta or manifest, or (after listing them) any problem found.
pub fn run(args: &VerifyArgs, comm: &dyn Comm) -> Result<()> {
    let range = parse_range(&args.expect_range)?;
    let datasets = find_datasets(&args.output)?;
    let mut problems = Vec::new();
    let mut patches = 0;
    for dir in &datasets {
        let checked = Check::open(dir, args.data_root.as_deref(), range)?;
        patches += checked.rows.len();
        problems.extend(checked.run(comm)?);
    }
    crate::comm::on_root(comm, || {
        report(&problems, patches, datasets.len(), &args.output)
    })
}

/// Rank 0: the problems (the first [`LISTED`]) and the verdict.
fn report(problems: &[String], patches: usize, datasets: usize, output: &Path) -> Result<()> {
    for p in problems.iter().take(LISTED) {
        println!("{p}");
    }
    if problems.len() > LISTED {
        println!("... and {} more", problems.len() - LISTED);
    }
    if problems.is_empty() {
        println!(
            "verify: {datasets} dataset(s), {patches} patches: counts, dtype, range, paths, files, shapes and statistics all agree"
        );
        Ok(())
    } else {
        Err(Error::bad_file(
            output,
            format!(
                "{} problem(s) in {patches} patches (listed above)",
                problems.len()
            ),
        ))
    }
}

/// `LO,HI` or `none`.
fn parse_range(text: &str) -> Result<Option<(f64, f64)>> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let bad = || {
        Error::parameter(
            "expect-range",
            format!("{text:?} is not LO,HI (e.g. 0,1) or none"),
        )
    };
    let (lo, hi) = text.split_once(',').ok_or_else(bad)?;
    let (lo, hi): (f64, f64) = (
        lo.trim().parse().map_err(|_| bad())?,
        hi.trim().parse().map_err(|_| bad())?,
    );
    if lo.is_nan() || hi.is_nan() || lo > hi {
        return Err(bad());
    }
    Ok(Some((lo, hi)))
}

/// The directory itself when it holds `patch_meta.json`, else its subdirectories that do.
fn find_datasets(dir: &Path) -> Result<Vec<PathBuf>> {
    if dir.join(META_NAME).is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::bad_file(dir, format!("cannot list it: {e}")))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join(META_NAME).is_file())
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(Error::bad_file(
            dir,
            format!(
                "holds no {META_NAME} (nor do its subdirectories): not a tessera patches output"
            ),
        ));
    }
    Ok(found)
}

/// The data root: given, or the output directory with the meta's `patch_dir` taken off.
fn data_root(dir: &Path, patch_dir: &str, given: Option<&Path>) -> Result<PathBuf> {
    if let Some(root) = given {
        return Ok(root.to_path_buf());
    }
    let parts: Vec<&str> = patch_dir
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let canonical = crate::io::safety::canonical(dir);
    let names: Vec<String> = canonical
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let fits = !parts.contains(&"..")
        && parts.len() <= names.len()
        && names[names.len() - parts.len()..]
            .iter()
            .zip(&parts)
            .all(|(a, b)| a == b);
    if !fits {
        return Err(Error::parameter(
            "data-root",
            format!("cannot tell the data root of {} from its patch_dir {patch_dir:?}; give --data-root", dir.display()),
        ));
    }
    let mut root = canonical;
    for _ in 0..parts.len() {
        root.pop();
    }
    Ok(root)
}

/// One dataset under check.
struct Check {
    dir: PathBuf,
    root: PathBuf,
    meta: PatchMeta,
    range: Option<(f64, f64)>,
    columns: HashMap<String, usize>,
    rows: Vec<Vec<String>>,
}

/// A manifest row's numbers.
struct Row<'a> {
    id: &'a str,
    stats: kernel::PatchStats,
}

impl Check {
    fn open(dir: &Path, given_root: Option<&Path>, range: Option<(f64, f64)>) -> Result<Check> {
        let meta_path = dir.join(META_NAME);
        let text = std::fs::read_to_string(&meta_path)
            .map_err(|e| Error::bad_file(&meta_path, e.to_string()))?;
        let meta: PatchMeta = serde_json::from_str(&text).map_err(|e| {
            Error::bad_file(&meta_path, format!("not a tessera patch_meta.json: {e}"))
        })?;
        let manifest = dir.join(MANIFEST_NAME);
        let text = std::fs::read_to_string(&manifest)
            .map_err(|e| Error::bad_file(&manifest, e.to_string()))?;
        let mut records = parse_csv(&text)
            .map_err(|m| Error::bad_file(&manifest, m))?
            .into_iter();
        let header = records.next().unwrap_or_default();
        let columns: HashMap<String, usize> = header
            .iter()
            .enumerate()
            .map(|(i, h)| (h.clone(), i))
            .collect();
        let place = if meta.format == "zarr" {
            "zarr_index"
        } else {
            "patch_path"
        };
        let needed = [
            "patch_id",
            "slice_index",
            "src_path",
            "row",
            "col",
            place,
            "min",
            "max",
            "mean",
            "std",
            "dtype",
        ];
        if let Some(missing) = needed.iter().find(|c| !columns.contains_key(**c)) {
            return Err(Error::bad_file(&manifest, format!("no `{missing}` column")));
        }
        Ok(Check {
            dir: dir.to_path_buf(),
            root: data_root(dir, &meta.patch_dir, given_root)?,
            meta,
            range,
            columns,
            rows: records.collect(),
        })
    }

    fn field<'a>(&self, row: &'a [String], column: &str) -> &'a str {
        row.get(self.columns[column]).map_or("", String::as_str)
    }

    /// Every check, collective; the problems on rank 0 (empty elsewhere).
    fn run(&self, comm: &dyn Comm) -> Result<Vec<String>> {
        let mut mine = if comm.is_root() {
            self.table_problems()
        } else {
            Vec::new()
        };
        let share = partition_contiguous(self.rows.len(), comm.size())[comm.rank()].clone();
        let row_problems: Vec<String> = share
            .clone()
            .into_par_iter()
            .flat_map(|r| self.row_problems(r))
            .collect();
        mine.extend(row_problems);
        if self.meta.format == "zarr" {
            mine.extend(self.zarr_problems(comm)?);
        }
        let bytes = serde_json::to_vec(&mine).expect("strings serialise");
        Ok(comm
            .gather(&bytes, 0)
            .map(|parts| {
                parts
                    .iter()
                    .flat_map(|b| serde_json::from_slice::<Vec<String>>(b).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default())
    }

    fn say(&self, what: String) -> String {
        format!("{}: {what}", self.dir.display())
    }

    /// Whole-table checks: the count against the meta, repeated ids, stray `.npy` files.
    fn table_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.rows.len() as u64 != self.meta.num_patches {
            out.push(self.say(format!(
                "{MANIFEST_NAME} has {} rows but {META_NAME} says num_patches {}",
                self.rows.len(),
                self.meta.num_patches
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for row in &self.rows {
            let id = self.field(row, "patch_id");
            if !seen.insert(id) {
                out.push(self.say(format!("patch_id {id} appears more than once")));
            }
        }
        if self.meta.format != "zarr" {
            out.extend(self.stray_files(&seen));
        }
        out
    }

    /// `.npy` files in the output directory that no manifest row names.
    fn stray_files(&self, ids: &std::collections::HashSet<&str>) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return vec![self.say("cannot list the directory".into())];
        };
        let mut stray: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|n| n.strip_suffix(".npy").is_some_and(|id| !ids.contains(id)))
            .collect();
        stray.sort();
        stray
            .into_iter()
            .map(|n| self.say(format!("{n} is not in {MANIFEST_NAME}")))
            .collect()
    }

    /// One row's own checks, and for `.npy` its file's.
    fn row_problems(&self, r: usize) -> Vec<String> {
        let row = &self.rows[r];
        let mut out = Vec::new();
        let mut bad = |m: String| {
            out.push(self.say(format!(
                "row {} ({}): {m}",
                r + 1,
                self.field(row, "patch_id")
            )))
        };
        if row.len() != self.columns.len() {
            bad(format!(
                "{} fields, the header has {}",
                row.len(),
                self.columns.len()
            ));
            return out;
        }
        let parsed = match self.parse_row(row) {
            Ok(p) => p,
            Err(m) => {
                bad(m);
                return out;
            }
        };
        if self.field(row, "dtype") != "float32" {
            bad(format!(
                "dtype {:?}, expected float32",
                self.field(row, "dtype")
            ));
        }
        if let Err(m) = relative_slice_path(self.field(row, "src_path")) {
            bad(format!("src_path: {m}"));
        }
        if let Some(&c) = self.columns.get("patch_path") {
            if let Err(m) = check_relative(&row[c]) {
                bad(format!("patch_path: {m}"));
            }
        }
        if let Some(m) = self.out_of_range(parsed.stats.min, parsed.stats.max, "manifest") {
            bad(m);
        }
        if self.meta.format != "zarr" {
            if let Err(m) = self.check_file(row, &parsed) {
                bad(m);
            }
        }
        out
    }

    /// The numbers of a row, and its id against them.
    fn parse_row<'a>(&self, row: &'a [String]) -> std::result::Result<Row<'a>, String> {
        let int = |c: &str| {
            self.field(row, c)
                .parse::<u64>()
                .map_err(|_| format!("{c} {:?} is not an integer", self.field(row, c)))
        };
        let float = |c: &str| {
            self.field(row, c)
                .parse::<f64>()
                .map_err(|_| format!("{c} {:?} is not a number", self.field(row, c)))
        };
        let id = self.field(row, "patch_id");
        let expected = kernel::patch_id(
            &self.meta.split,
            int("slice_index")?,
            int("row")?,
            int("col")?,
        );
        if id != expected {
            return Err(format!(
                "patch_id does not match split, slice_index, row and col ({expected})"
            ));
        }
        Ok(Row {
            id,
            stats: kernel::PatchStats {
                min: float("min")? as f32,
                max: float("max")? as f32,
                mean: float("mean")?,
                std: float("std")?,
            },
        })
    }

    /// A problem when values from `what` leave the expected range.
    fn out_of_range(&self, min: f32, max: f32, what: &str) -> Option<String> {
        let (lo, hi) = self.range?;
        (f64::from(min) < lo || f64::from(max) > hi)
            .then(|| format!("{what} values {min}..{max} leave the expected range {lo}..{hi}"))
    }

    /// The patch's own pixels against its row: shape, dtype, range, statistics.
    fn check_pixels(
        &self,
        pixels: ArrayView2<'_, f32>,
        row: &Row<'_>,
    ) -> std::result::Result<(), String> {
        let ps = self.meta.patch_size as usize;
        if pixels.dim() != (ps, ps) {
            return Err(format!("shape {:?}, expected ({ps}, {ps})", pixels.dim()));
        }
        let standard = pixels.as_standard_layout();
        let stats = kernel::patch_stats(standard.as_slice().expect("standard layout"));
        // Pixels whose statistics match their row were range-checked through the row.
        if stats != row.stats {
            if let Some(m) = self.out_of_range(stats.min, stats.max, "pixel") {
                return Err(m);
            }
            return Err(format!(
                "statistics in the manifest (min {}, max {}, mean {}, std {}) differ from the pixels' (min {}, max {}, mean {}, std {})",
                row.stats.min, row.stats.max, row.stats.mean, row.stats.std, stats.min, stats.max, stats.mean, stats.std
            ));
        }
        Ok(())
    }

    /// A `.npy` patch: present, float32, (ps, ps), pixels agreeing with the row.
    fn check_file(&self, row: &[String], parsed: &Row<'_>) -> std::result::Result<(), String> {
        let rel = self.field(row, "patch_path");
        let path = self.root.join(rel);
        if !path.is_file() {
            return Err(format!("{} is missing", path.display()));
        }
        if path.file_name().and_then(|n| n.to_str()) != Some(&format!("{}.npy", parsed.id)) {
            return Err(format!("patch_path {rel} is not named after the patch_id"));
        }
        let reader = io::npy::NpyReader::open(&path).map_err(|e| e.to_string())?;
        let meta = io::ArrayReader::meta(&reader);
        if meta.dtype != DType::F32 {
            return Err(format!(
                "{} holds {}, not float32",
                path.display(),
                meta.dtype
            ));
        }
        let shape = meta.shape.clone();
        let block = io::ArrayReader::read_box(&reader, &Region::whole(&shape))
            .map_err(|e| e.to_string())?;
        let values = block.into_array::<f32>().expect("dtype checked");
        let view = values
            .view()
            .into_dimensionality::<ndarray::Ix2>()
            .map_err(|_| format!("shape {shape:?}, expected 2-D"))?;
        self.check_pixels(view, parsed)
    }

    /// The Zarr array: shape and dtype, each index named once, every patch against its row
    /// (chunk-aligned blocks split among the ranks).
    fn zarr_problems(&self, comm: &dyn Comm) -> Result<Vec<String>> {
        let store = self
            .meta
            .zarr_array
            .as_ref()
            .map_or_else(|| self.dir.join(ZARR_NAME), |a| self.root.join(a));
        let reader = match io::open(&Address::Zarr {
            store: store.clone(),
            node: String::new(),
        }) {
            Ok(r) => r,
            Err(e) => {
                return Ok(if comm.is_root() {
                    vec![self.say(e.to_string())]
                } else {
                    Vec::new()
                })
            }
        };
        let (m, ps) = (self.meta.num_patches, self.meta.patch_size);
        let meta = reader.meta();
        if meta.shape != [m, ps, ps] || meta.dtype != DType::F32 {
            let m = format!(
                "{} is {} {}, expected {m}x{ps}x{ps} float32",
                store.display(),
                crate::grid::join(&meta.shape),
                meta.dtype
            );
            return Ok(if comm.is_root() {
                vec![self.say(m)]
            } else {
                Vec::new()
            });
        }
        let (rows_of, mut out) = self.rows_by_index(m);
        if !comm.is_root() {
            out.clear();
        }
        let chunk = meta.chunks.as_ref().map_or(m.max(1), |c| c[0]);
        let blocks = crate::grid::block_aligned_runs(m, chunk, 1);
        let share = partition_contiguous(blocks.len(), comm.size())[comm.rank()].clone();
        for b in &blocks[share] {
            let block = reader.read_box(&Region::slab(&meta.shape, 0, b.clone()))?;
            let values = block
                .into_array::<f32>()
                .expect("dtype checked")
                .into_dimensionality::<Ix3>()
                .expect("3-D");
            for (k, patch) in values.axis_iter(Axis(0)).enumerate() {
                let index = b.start + k as u64;
                let Some(r) = rows_of[index as usize] else {
                    out.push(self.say(format!("zarr index {index} has no manifest row")));
                    continue;
                };
                let row = &self.rows[r];
                if let Ok(parsed) = self.parse_row(row) {
                    if let Err(msg) = self.check_pixels(patch, &parsed) {
                        out.push(self.say(format!("row {} ({}): {msg}", r + 1, parsed.id)));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Which row names each Zarr index, and the rows whose index is bad or repeated.
    fn rows_by_index(&self, m: u64) -> (Vec<Option<usize>>, Vec<String>) {
        let mut rows_of = vec![None; m as usize];
        let mut out = Vec::new();
        for (r, row) in self.rows.iter().enumerate() {
            match self.field(row, "zarr_index").parse::<u64>() {
                Ok(i) if i < m && rows_of[i as usize].is_none() => rows_of[i as usize] = Some(r),
                Ok(i) if i < m => {
                    out.push(self.say(format!("row {}: zarr_index {i} is named twice", r + 1)))
                }
                _ => out.push(self.say(format!(
                    "row {}: zarr_index {:?} is not an index below {m}",
                    r + 1,
                    self.field(row, "zarr_index")
                ))),
            }
        }
        (rows_of, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_or_say_why_not() {
        assert_eq!(parse_range("0,1").unwrap(), Some((0.0, 1.0)));
        assert_eq!(parse_range(" -1 , 2.5").unwrap(), Some((-1.0, 2.5)));
        assert_eq!(parse_range("none").unwrap(), None);
        for bad in ["1", "a,b", "2,1", "nan,1"] {
            assert!(
                parse_range(bad)
                    .unwrap_err()
                    .to_string()
                    .starts_with("--expect-range:"),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_data_root_is_the_output_less_its_patch_dir() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        let out = root.join("patches/train");
        std::fs::create_dir_all(&out).unwrap();
        assert_eq!(data_root(&out, "patches/train", None).unwrap(), root);
        assert_eq!(data_root(&out, ".", None).unwrap(), out);
        assert!(data_root(&out, "../x/train", None).is_err());
        assert!(data_root(&out, "other/train", None).is_err());
        assert_eq!(
            data_root(&out, "../x", Some(Path::new("/r"))).unwrap(),
            PathBuf::from("/r")
        );
    }
}
