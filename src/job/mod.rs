//! What to do: the parameters of every command, as one set of types that both the command
//! line (clap) and TOML job files (serde) fill in. `tessera run job.toml` reads a file with
//! an optional `[run]` table (the run options: overwrite, resume, dry_run, report) and one
//! table naming the operation, e.g. `[convert]`, holding exactly the command's flags.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod run;
pub use run::{default_report, info, run_hdr_merge, run_job};

use crate::error::{Error, Result};
use crate::exec::RunOptions;

// Each operation's parameters live beside its code (ops/<op>/params.rs); the job list, the
// TOML reader and the dispatch are here.
pub use crate::ops::convert::params::{AxisOrder, ConvertJob, OutputFormat, DEFAULT_PATTERN};
pub use crate::ops::crop::params::{CropJob, Recenter};
pub use crate::ops::pairs::params::{PairsExtractJob, PairsJob, PairsSelectJob, TokensJob};
pub use crate::ops::patches::params::{PatchFormat, PatchesJob};
pub use crate::ops::pyramid::params::{PyramidJob, PyramidLayout, ReconstructJob};
pub use crate::ops::quilt::params::{
    GeometryArgs, StitchGeometryArgs, StitchJob, UnstitchJob, WeedJob,
};

/// A TOML job file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    #[serde(default)]
    pub run: RunOptions,
    #[serde(default)]
    pub convert: Option<ConvertJob>,
    #[serde(default)]
    pub unstitch: Option<UnstitchJob>,
    #[serde(default)]
    pub stitch: Option<StitchJob>,
    #[serde(default)]
    pub weed: Option<WeedJob>,
    #[serde(default)]
    pub pyramid: Option<PyramidJob>,
    #[serde(default)]
    pub crop: Option<CropJob>,
    #[serde(default)]
    pub pairs: Option<PairsJob>,
    #[serde(default)]
    pub pairs_extract: Option<PairsExtractJob>,
    #[serde(default)]
    pub tokens: Option<TokensJob>,
    pub patches: Option<PatchesJob>,
}

/// A job to run, whichever way it was given.
#[derive(Clone, Debug, PartialEq)]
pub enum Job {
    Convert(ConvertJob),
    Unstitch(UnstitchJob),
    Stitch(StitchJob),
    Weed(WeedJob),
    Pyramid(PyramidJob),
    Reconstruct(ReconstructJob),
    Crop(CropJob),
    Pairs(PairsJob),
    PairsExtract(PairsExtractJob),
    Tokens(TokensJob),
    Patches(PatchesJob),
}

impl Job {
    /// The output as the user named it (a report goes beside it by default).
    pub fn output(&self) -> PathBuf {
        match self {
            Job::Convert(j) => j.output.clone(),
            Job::Unstitch(j) => j.output.clone().into(),
            Job::Stitch(j) => j.output.clone().into(),
            Job::Weed(j) => j.output.clone().into(),
            Job::Pyramid(j) => j.output.clone().into(),
            Job::Reconstruct(j) => j.output.clone().into(),
            Job::Crop(j) => j.output.clone().into(),
            Job::Pairs(j) => j.output.clone().into(),
            Job::PairsExtract(j) => j.output.clone().into(),
            Job::Tokens(j) => j.output.clone().into(),
            Job::Patches(j) => j.output.clone().into(),
        }
    }

    /// The run options (`[run]` table, or the command's flags) of this job.
    pub fn run_options(&self) -> &RunOptions {
        match self {
            Job::Convert(j) => &j.run,
            Job::Unstitch(j) => &j.run,
            Job::Stitch(j) => &j.run,
            Job::Weed(j) => &j.run,
            Job::Pyramid(j) => &j.run,
            Job::Reconstruct(j) => &j.run,
            Job::Crop(j) => &j.run,
            Job::Pairs(j) => &j.run,
            Job::PairsExtract(j) => &j.run,
            Job::Tokens(j) => &j.run,
            Job::Patches(j) => &j.run,
        }
    }

    /// [`Job::run_options`], to change (`tessera run --resume` and friends).
    pub fn run_options_mut(&mut self) -> &mut RunOptions {
        match self {
            Job::Convert(j) => &mut j.run,
            Job::Unstitch(j) => &mut j.run,
            Job::Stitch(j) => &mut j.run,
            Job::Weed(j) => &mut j.run,
            Job::Pyramid(j) => &mut j.run,
            Job::Reconstruct(j) => &mut j.run,
            Job::Crop(j) => &mut j.run,
            Job::Pairs(j) => &mut j.run,
            Job::PairsExtract(j) => &mut j.run,
            Job::Tokens(j) => &mut j.run,
            Job::Patches(j) => &mut j.run,
        }
    }
}

/// The dotted key of the first date or time value in a TOML table.
fn datetime_key(table: &toml::Table) -> Option<String> {
    fn within(value: &toml::Value, key: String) -> Option<String> {
        match value {
            toml::Value::Datetime(_) => Some(key),
            toml::Value::Table(t) => t.iter().find_map(|(k, v)| within(v, format!("{key}.{k}"))),
            toml::Value::Array(a) => a
                .iter()
                .enumerate()
                .find_map(|(i, v)| within(v, format!("{key}[{i}]"))),
            _ => None,
        }
    }
    table.iter().find_map(|(k, v)| within(v, k.clone()))
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
        let config = |message: String| Error::Config {
            path: path.into(),
            message,
        };
        // No job field is a date: an unquoted one is a path or name that TOML read as a
        // date (serde would only say "invalid type: map").
        if let Some(key) = text
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| datetime_key(&t))
        {
            return Err(config(format!(
                "{key}: TOML read this value as a date or time; put paths and names in quotes"
            )));
        }
        let file: JobFile =
            toml::from_str(text).map_err(|e| config(e.to_string().trim().replace('\n', " ")))?;
        let tables = file.tables();
        if tables != 1 {
            return Err(config(format!(
                "expected exactly one operation table ([convert], [unstitch], [stitch], [weed], [pyramid], [crop], [pairs], [pairs_extract], [tokens] or [patches]), found {tables}"
            )));
        }
        // Relative paths in a job file are relative to the file, not the caller; a job read
        // from a pipe or device (`/dev/stdin`) has no directory of its own: the working one.
        let special = std::fs::metadata(path).is_ok_and(|m| !m.is_file());
        let base = if special {
            PathBuf::new()
        } else {
            path.parent().unwrap_or(Path::new("")).to_path_buf()
        };
        Ok(file.into_job(&base))
    }

    /// How many operation tables the file has.
    fn tables(&self) -> usize {
        usize::from(self.convert.is_some())
            + usize::from(self.unstitch.is_some())
            + usize::from(self.stitch.is_some())
            + usize::from(self.weed.is_some())
            + usize::from(self.pyramid.is_some())
            + usize::from(self.crop.is_some())
            + usize::from(self.pairs.is_some())
            + usize::from(self.pairs_extract.is_some())
            + usize::from(self.tokens.is_some())
            + usize::from(self.patches.is_some())
    }

    /// The job of the file's one operation table, its paths taken relative to `base` and its
    /// run options the `[run]` table's.
    fn into_job(self, base: &Path) -> Job {
        let rel = |p: &str| base.join(p).to_string_lossy().into_owned();
        let mut run = self.run.clone();
        run.report = self.run.report.as_ref().map(|r| base.join(r));
        if let Some(job) = Self::pairs_job(&self, &run, &rel) {
            return job;
        }
        if let Some(mut convert) = self.convert {
            convert.run = run;
            convert.input = base.join(&convert.input);
            convert.output = base.join(&convert.output);
            return Job::Convert(convert);
        }
        if let Some(mut job) = self.unstitch {
            job.run = run;
            job.input = rel(&job.input);
            job.output = rel(&job.output);
            job.positions = job.positions.as_deref().map(rel);
            return Job::Unstitch(job);
        }
        if let Some(mut job) = self.crop {
            job.run = run;
            job.input = job.input.as_deref().map(rel);
            job.output = rel(&job.output);
            return Job::Crop(job);
        }
        if let Some(mut job) = self.patches {
            job.run = run;
            job.manifest = job.manifest.as_ref().map(|p| base.join(p));
            job.data_root = job.data_root.as_ref().map(|p| base.join(p));
            job.input = job.input.as_deref().map(rel);
            job.output = rel(&job.output);
            job.split = job
                .split
                .iter()
                .map(|s| match s.split_once('=') {
                    Some((name, path)) => format!("{name}={}", rel(path)),
                    None => s.clone(),
                })
                .collect();
            return Job::Patches(job);
        }
        if let Some(mut job) = self.pyramid {
            job.run = run;
            job.input = rel(&job.input);
            job.output = rel(&job.output);
            return Job::Pyramid(job);
        }
        if let Some(mut job) = self.weed {
            job.run = run;
            job.input = rel(&job.input);
            job.labels = rel(&job.labels);
            job.output = rel(&job.output);
            job.labels_output = rel(&job.labels_output);
            job.mask = rel(&job.mask);
            return Job::Weed(job);
        }
        let mut job = self.stitch.expect("one table is present");
        job.run = run;
        job.input = rel(&job.input);
        job.output = rel(&job.output);
        job.weights = job.weights.as_deref().map(rel);
        job.variance = job.variance.as_deref().map(rel);
        job.std = job.std.as_deref().map(rel);
        Job::Stitch(job)
    }

    /// The `[pairs]`, `[pairs_extract]` or `[tokens]` table as a job, paths made relative to
    /// the file.
    fn pairs_job(file: &JobFile, run: &RunOptions, rel: &dyn Fn(&str) -> String) -> Option<Job> {
        if let Some(job) = &file.pairs {
            let mut job = job.clone();
            job.run = run.clone();
            job.input = rel(&job.input);
            job.output = rel(&job.output);
            return Some(Job::Pairs(job));
        }
        if let Some(job) = &file.pairs_extract {
            let mut job = job.clone();
            job.run = run.clone();
            job.input = rel(&job.input);
            job.metadata = rel(&job.metadata);
            job.select = job.select.as_deref().map(rel);
            job.output = rel(&job.output);
            return Some(Job::PairsExtract(job));
        }
        let mut job = file.tokens.clone()?;
        job.run = run.clone();
        job.input = rel(&job.input);
        job.output = rel(&job.output);
        Some(Job::Tokens(job))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_files_take_a_device() {
        let job: StitchJob =
            toml::from_str("input = \"p.zarr\"\noutput = \"o.zarr\"\ndevice = \"cuda:1\"").unwrap();
        assert_eq!(job.device, crate::gpu::DeviceChoice::Cuda(Some(1)));
        let e = toml::from_str::<StitchJob>(
            "input = \"p.zarr\"\noutput = \"o.zarr\"\ndevice = \"gpu7\"",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("expected auto, cpu, cuda or cuda:N"),
            "{e}"
        );
        // Not part of the resume identity (the job's serde form).
        assert!(serde_json::to_value(&job).unwrap().get("device").is_none());
    }

    #[test]
    fn parses_a_convert_job_relative_to_the_file() {
        let job = JobFile::parse(
            Path::new("/cfg/job.toml"),
            "[run]\noverwrite = true\n[convert]\ninput = \"in\"\noutput = \"/abs/o.zarr\"\ncodec = \"gzip\"\nchunks = [1, 64, 64]\naxis_order = \"CZYX\"\n",
        )
        .unwrap();
        let Job::Convert(c) = job else {
            panic!("a convert job")
        };
        assert_eq!(c.input, PathBuf::from("/cfg/in"));
        assert_eq!(c.output, PathBuf::from("/abs/o.zarr"));
        assert_eq!(c.codec, crate::io::Codec::Gzip);
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

/// The `--resume` identity covers every flag of every resumable command: the parameters are
/// the job's serde form, so each flag must appear in it, and changing any one of them must be
/// refused with a message naming that flag.
#[cfg(test)]
mod resume_identity {
    use clap::{CommandFactory, Parser};
    use serde_json::{json, Value};

    use crate::cli::{
        Cli, Command, HdrCommand, PairsCli, PairsCommand, PatchesCli, PyramidCli, PyramidCommand,
        QuiltCommand,
    };

    /// Flags that are not parameters of the output: run options and logging.
    const NOT_PARAMETERS: [&str; 12] = [
        "threads",
        // Where the kernels run: the same bytes on every device, so a run may resume on another.
        "device",
        "gpu_memory_limit",
        "overwrite",
        "resume",
        "dry_run",
        "report",
        "verbose",
        "quiet",
        "log_format",
        "help",
        "version",
    ];

    /// (command path, a minimal command line, its job as JSON).
    fn jobs() -> Vec<(Vec<&'static str>, Value)> {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap().command;
        let value = |c: Command| -> Value {
            match c {
                Command::Convert(j) => serde_json::to_value(j),
                Command::Crop(j) => serde_json::to_value(j),
                Command::Patches(PatchesCli { which: None, job }) => serde_json::to_value(job),
                Command::Pyramid(PyramidCli { which: None, job }) => serde_json::to_value(job),
                Command::Pyramid(PyramidCli {
                    which: Some(PyramidCommand::Reconstruct(j)),
                    ..
                }) => serde_json::to_value(j),
                Command::Quilt { which } => match which {
                    QuiltCommand::Unstitch(j) => serde_json::to_value(j),
                    QuiltCommand::Stitch(j) => serde_json::to_value(j),
                    QuiltCommand::Weed(j) => serde_json::to_value(j),
                    other => panic!("not resumable: {other:?}"),
                },
                Command::Hdr {
                    which: HdrCommand::Merge(j),
                } => serde_json::to_value(j),
                Command::Pairs(PairsCli { which: None, job }) => serde_json::to_value(job),
                Command::Pairs(PairsCli {
                    which: Some(PairsCommand::Extract(j)),
                    ..
                }) => serde_json::to_value(j),
                Command::Tokens(j) => serde_json::to_value(j),
                other => panic!("not resumable: {other:?}"),
            }
            .unwrap()
        };
        let io = ["--input", "in.npy", "--output", "out.zarr"];
        let with = |path: &[&'static str], extra: &[&str]| {
            let mut args = vec!["tessera"];
            args.extend(path);
            args.extend(extra);
            (path.to_vec(), value(parse(&args)))
        };
        vec![
            with(&["convert"], &io),
            with(&["crop"], &io),
            with(&["pyramid"], &io),
            with(&["pyramid", "reconstruct"], &io),
            with(&["quilt", "unstitch"], &io),
            with(&["quilt", "stitch"], &io),
            with(
                &["quilt", "weed"],
                &[
                    "--input",
                    "i.npy",
                    "--labels",
                    "l.npy",
                    "--output",
                    "o.npy",
                    "--labels-output",
                    "lo.npy",
                    "--mask",
                    "m.npy",
                ],
            ),
            with(&["hdr", "merge"], &io),
            with(&["pairs"], &io),
            with(
                &["pairs", "extract"],
                &[
                    "--input",
                    "i.npy",
                    "--metadata",
                    "m.npy",
                    "--output",
                    "o.zarr",
                ],
            ),
            with(
                &["tokens"],
                &[
                    "--input",
                    "p.zarr",
                    "--output",
                    "t.zarr",
                    "--token-size",
                    "8",
                ],
            ),
            with(&["patches"], &["--manifest", "m.csv", "--output", "out"]),
        ]
    }

    /// Every leaf of a JSON object, by dotted path.
    fn leaves(v: &Value, at: &str, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let path = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    leaves(x, &path, out);
                }
            }
            other => out.push((at.to_string(), other.clone())),
        }
    }

    fn changed(v: &Value) -> Value {
        match v {
            Value::Null => json!("x"),
            Value::Bool(b) => json!(!b),
            Value::Number(n) => json!(n.as_f64().unwrap() + 1.0),
            Value::String(s) => json!(format!("{s}x")),
            Value::Array(a) => {
                let mut a = a.clone();
                a.push(json!(1));
                Value::Array(a)
            }
            Value::Object(_) => unreachable!("leaves are not objects"),
        }
    }

    #[test]
    fn every_flag_is_part_of_the_identity() {
        let cli = Cli::command();
        for (path, job) in jobs() {
            let mut command = &cli;
            for name in &path {
                command = command.find_subcommand(name).unwrap();
            }
            let mut keys = Vec::new();
            leaves(&job, "", &mut keys);
            let keys: Vec<String> = keys
                .into_iter()
                .map(|(k, _)| k.rsplit('.').next().unwrap().to_string())
                .collect();
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if NOT_PARAMETERS.contains(&id) || arg.is_positional() {
                    continue;
                }
                assert!(
                    keys.iter().any(|k| k == id),
                    "{path:?}: flag --{} is not in the resume identity {job}",
                    arg.get_long().unwrap_or(id)
                );
            }
        }
    }

    #[test]
    fn changing_any_parameter_is_refused_by_name() {
        let cli = Cli::command();
        for (path, job) in jobs() {
            let mut command = &cli;
            for name in &path {
                command = command.find_subcommand(name).unwrap();
            }
            let mut fields = Vec::new();
            leaves(&job, "", &mut fields);
            let before = json!({"parameters": job, "plan": {"units": 3}});
            assert!(crate::exec::journal::check_same(&before, &before).is_ok());
            for (field, value) in fields {
                let mut after = before.clone();
                let mut slot = &mut after["parameters"];
                for part in field.split('.') {
                    slot = &mut slot[part];
                }
                *slot = changed(&value);
                let e = crate::exec::journal::check_same(&before, &after)
                    .unwrap_err()
                    .to_string();
                let leaf = field.rsplit('.').next().unwrap();
                let long = command
                    .get_arguments()
                    .find(|a| a.get_id().as_str() == leaf)
                    .and_then(|a| a.get_long())
                    .unwrap_or_else(|| panic!("{path:?}: {field} is not a flag"));
                assert!(
                    e.starts_with("--resume:") && e.contains(&format!("--{long} (was ")),
                    "{path:?}: changing {field} gave: {e}"
                );
            }
        }
    }
}
