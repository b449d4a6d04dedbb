//! What to do: the parameters of every command, as one set of types that both the command
//! line (clap) and TOML job files (serde) fill in. `tessera run job.toml` reads a file with
//! an optional `[run]` table (the run options: overwrite, resume, dry_run, report) and one
//! table naming the operation, e.g. `[convert]`, holding exactly the command's flags.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::exec::RunOptions;
use crate::io::{Codec, DType};

/// The default file-name pattern: `<name>_<index>.<ext>`.
pub const DEFAULT_PATTERN: &str = r"(.+)_(\d+)\.[A-Za-z0-9]+$";

/// How channels and slices are arranged in a multi-channel stack's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum AxisOrder {
    /// (Z, C, Y, X): one slice after another, channels inside each slice.
    #[default]
    #[value(name = "ZCYX")]
    #[serde(rename = "ZCYX")]
    Zcyx,
    /// (C, Z, Y, X): one channel volume after another.
    #[value(name = "CZYX")]
    #[serde(rename = "CZYX")]
    Czyx,
}

/// Output format when `--output` names a directory (several stacks, or no suffix).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// `<dir>/<stack>.zarr`
    #[default]
    Zarr,
    /// `<dir>/<stack>.h5:/data`
    Hdf5,
    /// `<dir>/<stack>.npy`
    Npy,
}

/// `tessera convert`: a directory of image files to one array per stack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ConvertJob {
    /// Directory holding the image files.
    #[arg(long)]
    pub input: PathBuf,
    /// Regular expression matched at the start of each file name: group 1 names the stack,
    /// group 2 is the slice index (an integer).
    #[arg(long, default_value = DEFAULT_PATTERN)]
    #[serde(default = "default_pattern")]
    pub pattern: String,
    /// Output array address (`out.zarr`, `out.h5:/data`, `out.npy`), or a directory that
    /// receives `<stack>.zarr` per stack (always a directory when there are several stacks).
    #[arg(long)]
    pub output: PathBuf,
    /// Only files with this extension (e.g. `.tif`); default: every TIFF, PNG and JPEG file.
    #[arg(long)]
    #[serde(default)]
    pub extension: Option<String>,
    /// Axis order of multi-channel stacks (single-channel stacks are always Z, Y, X).
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub axis_order: AxisOrder,
    /// Chunk shape, one value per output axis; default 1 slice of up to 512x512 (all channels
    /// for ZCYX).
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub chunks: Option<Vec<u64>>,
    /// Shard shape (Zarr only), a multiple of the chunk shape on every axis.
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub shards: Option<Vec<u64>>,
    /// Chunk compression.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub codec: Codec,
    /// Output element type (default: the files' own); values that do not fit are an error.
    #[arg(long, value_enum)]
    #[serde(default)]
    pub dtype: Option<DType>,
    /// Format of the per-stack outputs when `--output` is a directory.
    #[arg(long, value_enum, default_value_t)]
    #[serde(default)]
    pub format: OutputFormat,
    #[command(flatten)]
    #[serde(skip)]
    pub run: RunOptions,
}

fn default_pattern() -> String {
    DEFAULT_PATTERN.to_string()
}

/// A TOML job file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    #[serde(default)]
    pub run: RunOptions,
    #[serde(default)]
    pub convert: Option<ConvertJob>,
}

/// A job to run, whichever way it was given.
#[derive(Clone, Debug, PartialEq)]
pub enum Job {
    Convert(ConvertJob),
}

impl JobFile {
    /// Reads and checks a TOML job file: exactly one operation table.
    ///
    /// # Errors
    /// [`Error::Config`] naming the file and what is wrong in it.
    pub fn load(path: &Path) -> Result<Job> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.into(),
            message: e.to_string(),
        })?;
        Self::parse(path, &text)
    }

    /// # Errors
    /// [`Error::Config`] naming the file and what is wrong in it.
    pub fn parse(path: &Path, text: &str) -> Result<Job> {
        let file: JobFile = toml::from_str(text).map_err(|e| Error::Config {
            path: path.into(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        match file.convert {
            Some(mut convert) => {
                convert.run = file.run;
                // Relative paths in a job file are relative to the file, not the caller.
                let base = path.parent().unwrap_or(Path::new(""));
                convert.input = base.join(&convert.input);
                convert.output = base.join(&convert.output);
                if let Some(report) = &convert.run.report {
                    convert.run.report = Some(base.join(report));
                }
                Ok(Job::Convert(convert))
            }
            None => Err(Error::Config {
                path: path.into(),
                message: "no operation table: expected [convert]".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_convert_job_relative_to_the_file() {
        let job = JobFile::parse(
            Path::new("/cfg/job.toml"),
            "[run]\noverwrite = true\n[convert]\ninput = \"in\"\noutput = \"/abs/o.zarr\"\ncodec = \"gzip\"\nchunks = [1, 64, 64]\naxis_order = \"CZYX\"\n",
        )
        .unwrap();
        let Job::Convert(c) = job;
        assert_eq!(c.input, PathBuf::from("/cfg/in"));
        assert_eq!(c.output, PathBuf::from("/abs/o.zarr"));
        assert_eq!(c.codec, Codec::Gzip);
        assert_eq!(c.chunks, Some(vec![1, 64, 64]));
        assert_eq!(c.axis_order, AxisOrder::Czyx);
        assert_eq!(c.pattern, DEFAULT_PATTERN);
        assert!(c.run.overwrite);
    }

    #[test]
    fn rejects_unknown_keys_and_missing_tables() {
        let e = JobFile::parse(
            Path::new("j.toml"),
            "[convert]\ninput=\"a\"\noutput=\"b\"\nchunk=[1]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("j.toml") && e.contains("chunk"), "{e}");
        assert!(JobFile::parse(Path::new("j.toml"), "[run]\n").is_err());
        assert!(JobFile::parse(Path::new("j.toml"), "not toml [").is_err());
    }
}
