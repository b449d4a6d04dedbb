//! The journal of finished units, for `--resume`.
//!
//! A directory beside the output (`<output>.journal/`) holding `plan.json` (the fingerprint
//! of the parameters) and one append-only `rank-N.done` file per rank with one unit id per
//! line. A unit is recorded only after its write returned, so a killed run redoes at most the
//! units in flight; unit ids are global, so a resumed run may use a different rank count.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;

use serde_json::Value;

use crate::error::{Error, IoContext, Result};

pub struct Journal {
    dir: PathBuf,
    rank: usize,
}

impl Journal {
    pub fn new(dir: PathBuf, rank: usize) -> Self {
        Journal { dir, rank }
    }

    /// Starts a fresh journal, or checks that a resumed run has the same identity (the job's
    /// parameters and what the plan derived from the inputs; see `Operation::parameters`).
    /// Rank 0 only.
    ///
    /// # Errors
    /// Filesystem errors, or a resumed run whose identity differs, naming every field that
    /// changed.
    pub fn start(&self, identity: &Value, resuming: bool) -> Result<()> {
        let plan = self.dir.join("plan.json");
        if resuming {
            let previous = std::fs::read(&plan).map_err(|_| {
                Error::parameter(
                    "resume",
                    format!(
                        "no journal at {}: cannot tell what finished; use --overwrite to start over",
                        self.dir.display()
                    ),
                )
            })?;
            let previous: Value = serde_json::from_slice(&previous).map_err(|_| {
                Error::parameter(
                    "resume",
                    format!(
                        "{} was written by another tessera version; use --overwrite to start over",
                        plan.display()
                    ),
                )
            })?;
            return check_same(&previous, identity);
        }
        // A fresh run's journal replaces whatever a stale one left (cleared just before).
        crate::io::safety::write_bytes(&plan, true, identity.to_string().as_bytes())
    }

    /// The identity a run recorded when it started (`plan.json`), if its journal is there.
    pub fn recorded_identity(&self) -> Option<Value> {
        let bytes = std::fs::read(self.dir.join("plan.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Every unit any rank recorded as finished.
    ///
    /// # Errors
    /// Unreadable journal files.
    pub fn finished_units(&self) -> Result<BTreeSet<usize>> {
        let mut done = BTreeSet::new();
        let entries = std::fs::read_dir(&self.dir).at(&self.dir)?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("rank-") && name.ends_with(".done") {
                let text = std::fs::read_to_string(entry.path()).at(entry.path())?;
                // A torn last line (killed mid-append) does not parse and is ignored.
                done.extend(text.lines().filter_map(|l| l.trim().parse::<usize>().ok()));
            }
        }
        Ok(done)
    }

    /// Records a finished unit (one appended line). Not fsynced, like the chunk files it
    /// vouches for: the journal holds across killed processes, not machine crashes.
    ///
    /// # Errors
    /// Filesystem errors.
    pub fn record(&self, unit: usize) -> Result<()> {
        let path = self.dir.join(format!("rank-{}.done", self.rank));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .at(&path)?;
        writeln!(f, "{unit}").at(&path)?;
        Ok(())
    }
}

/// Refuses a resume whose identity differs from the interrupted run's, naming each changed
/// parameter as its flag (`--codec: was "zstd", now "gzip"`) or, when only the plan differs,
/// saying the inputs changed.
///
/// # Errors
/// [`Error::Parameter`] (`--resume`) listing the differences.
pub fn check_same(previous: &Value, now: &Value) -> Result<()> {
    match changes(previous, now) {
        None => Ok(()),
        Some(Change::Unrecorded) => Err(Error::parameter(
            "resume",
            "the interrupted run was started by an older tessera that did not record its parameters; use --overwrite to start over",
        )),
        Some(Change::Parameters(list)) => Err(Error::parameter(
            "resume",
            format!(
                "the interrupted run used other parameters: {list}; rerun with the same ones, or --overwrite to start over"
            ),
        )),
        Some(Change::Inputs(what)) => Err(Error::parameter(
            "resume",
            format!("the inputs changed since the interrupted run ({what}); use --overwrite to start over"),
        )),
    }
}

/// How a recorded run's identity differs from this one's.
#[derive(Debug, PartialEq)]
pub enum Change {
    /// The record holds no parameters (an older tessera's).
    Unrecorded,
    /// The flags that changed: `--codec (was "zstd", now "gzip"), ...`.
    Parameters(String),
    /// The first plan fact derived from the inputs that changed: `shape: was [..], now [..]`.
    Inputs(String),
}

/// `None` when `now` is the identity recorded in `previous` (parameters and plan).
pub fn changes(previous: &Value, now: &Value) -> Option<Change> {
    if previous.get("parameters").is_none() {
        return Some(Change::Unrecorded);
    }
    let mut changed = Vec::new();
    differences(
        &previous["parameters"],
        &now["parameters"],
        "",
        &mut changed,
    );
    if !changed.is_empty() {
        let list: Vec<String> = changed
            .iter()
            .map(|(field, was, is)| format!("--{} (was {was}, now {is})", flag_name(field)))
            .collect();
        return Some(Change::Parameters(list.join(", ")));
    }
    differences(&previous["plan"], &now["plan"], "", &mut changed);
    changed
        .first()
        .map(|(field, was, is)| Change::Inputs(format!("{field}: was {was}, now {is}")))
}

/// The leaves where two JSON values differ, as (dotted path, old, new).
fn differences(a: &Value, b: &Value, at: &str, out: &mut Vec<(String, String, String)>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                differences(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    &path,
                    out,
                );
            }
        }
        _ if a != b => out.push((at.to_string(), a.to_string(), b.to_string())),
        _ => {}
    }
}

/// The command-line flag of a parameter path: flattened tables (`geometry.blend`) are
/// flags of their own (`--blend`), and snake case becomes kebab case.
fn flag_name(field: &str) -> String {
    field.rsplit('.').next().unwrap_or(field).replace('_', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_checks_identity() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("j"), 1);
        let id = |codec: &str, units: u64| serde_json::json!({"parameters": {"codec": codec, "geometry": {"blend": "hann"}}, "plan": {"units": units}});
        j.start(&id("zstd", 4), false).unwrap();
        j.record(3).unwrap();
        j.record(5).unwrap();
        std::fs::write(dir.path().join("j/rank-0.done"), "1\n2\n4").unwrap();
        let done: Vec<usize> = j.finished_units().unwrap().into_iter().collect();
        assert_eq!(done, vec![1, 2, 3, 4, 5]);
        assert!(j.start(&id("zstd", 4), true).is_ok());
        let e = j.start(&id("gzip", 4), true).unwrap_err().to_string();
        assert!(e.contains(r#"--codec (was "zstd", now "gzip")"#), "{e}");
        let e = j.start(&id("zstd", 5), true).unwrap_err().to_string();
        assert!(e.contains("inputs changed") && e.contains("units"), "{e}");
        let mut blend = id("zstd", 4);
        blend["parameters"]["geometry"]["blend"] = "border".into();
        let e = j.start(&blend, true).unwrap_err().to_string();
        assert!(e.contains("--blend (was"), "{e}");
        std::fs::write(dir.path().join("j/plan.json"), "{\"operation\":\"old\"}").unwrap();
        assert!(j
            .start(&id("zstd", 4), true)
            .unwrap_err()
            .to_string()
            .contains("older tessera"));
    }
}
