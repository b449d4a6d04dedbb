//! Progress on rank 0: a bar when stderr is a terminal, otherwise a log line at most every
//! few seconds (batch jobs write to files, where a bar is noise).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

const LOG_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    name: &'static str,
    bar: Option<ProgressBar>,
    total_units: u64,
    units: u64,
    bytes: u64,
    started: Instant,
    last_log: Instant,
    active: bool,
}

impl Progress {
    pub fn new(
        name: &'static str,
        total_units: u64,
        done_units: u64,
        total_bytes: u64,
        done_bytes: u64,
        active: bool,
    ) -> Self {
        let bar = (active && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total_bytes);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_message(name);
            bar.set_position(done_bytes);
            bar
        });
        Progress {
            name,
            bar,
            total_units,
            units: done_units,
            bytes: done_bytes,
            started: Instant::now(),
            last_log: Instant::now(),
            active,
        }
    }

    pub fn advance(&mut self, units: u64, bytes: u64) {
        self.units += units;
        self.bytes += bytes;
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        } else if self.active && self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            let secs = self.started.elapsed().as_secs_f64();
            tracing::info!(
                "{}: {}/{} units, {:.1} MiB written ({:.1} MiB/s)",
                self.name,
                self.units,
                self.total_units,
                self.bytes as f64 / 1048576.0,
                self.bytes as f64 / 1048576.0 / secs.max(1e-9)
            );
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
