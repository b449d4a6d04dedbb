//! The journal of finished units, for `--resume`.
//!
//! A directory beside the output (`<output>.journal/`) holding `plan.json` (the fingerprint
//! of the parameters) and one append-only `rank-N.done` file per rank with one unit id per
//! line. A unit is recorded only after its write returned, so a killed run redoes at most the
//! units in flight; unit ids are global, so a resumed run may use a different rank count.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;

use crate::error::{Error, IoContext, Result};

pub struct Journal {
    dir: PathBuf,
    rank: usize,
}

impl Journal {
    pub fn new(dir: PathBuf, rank: usize) -> Self {
        Journal { dir, rank }
    }

    /// Starts a fresh journal, or checks that a resumed run has the same parameters.
    /// Rank 0 only.
    ///
    /// # Errors
    /// Filesystem errors, or a resumed run whose parameters differ.
    pub fn start(&self, fingerprint: &str, resuming: bool) -> Result<()> {
        let plan = self.dir.join("plan.json");
        if resuming {
            match std::fs::read_to_string(&plan) {
                Ok(previous) if previous == fingerprint => return Ok(()),
                Ok(_) => {
                    return Err(Error::parameter(
                        "resume",
                        format!(
                            "the interrupted run used different parameters (see {}); rerun with those, or --overwrite to start over",
                            plan.display()
                        ),
                    ))
                }
                Err(_) => {
                    return Err(Error::parameter(
                        "resume",
                        format!(
                            "no journal at {}: cannot tell what finished; use --overwrite to start over",
                            self.dir.display()
                        ),
                    ))
                }
            }
        }
        std::fs::create_dir_all(&self.dir).at(&self.dir)?;
        let tmp = self.dir.join("plan.json.tmp");
        std::fs::write(&tmp, fingerprint).at(&tmp)?;
        std::fs::rename(&tmp, &plan).at(&plan)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_checks_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("j"), 1);
        j.start("{\"a\":1}", false).unwrap();
        j.record(3).unwrap();
        j.record(5).unwrap();
        std::fs::write(dir.path().join("j/rank-0.done"), "1\n2\n4").unwrap();
        let done: Vec<usize> = j.finished_units().unwrap().into_iter().collect();
        assert_eq!(done, vec![1, 2, 3, 4, 5]);
        assert!(j.start("{\"a\":1}", true).is_ok());
        assert!(j
            .start("{\"a\":2}", true)
            .unwrap_err()
            .to_string()
            .contains("different parameters"));
    }
}
