//! tessera's log lines (`tracing` events) as records of Python's `logging` logger "tessera",
//! so that a notebook or script sees warnings, errors and progress where it sees its own.
//! The level is the logger's effective level, which the Python side passes in before each
//! call ([`set_log_level`]); lines below it are not formatted at all. As in the CLI, other
//! crates' events pass only from WARNING up.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Once;

use pyo3::prelude::*;
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// The `logging` level (10 DEBUG .. 50 CRITICAL) below which nothing is forwarded.
static THRESHOLD: AtomicU8 = AtomicU8::new(30);

fn python_level(level: &Level) -> u8 {
    match *level {
        Level::TRACE => 5,
        Level::DEBUG => 10,
        Level::INFO => 20,
        Level::WARN => 30,
        Level::ERROR => 40,
    }
}

fn wanted(meta: &Metadata<'_>) -> bool {
    let level = python_level(meta.level());
    let ours = meta.target().starts_with("tessera");
    level >= THRESHOLD.load(Ordering::Relaxed) && (ours || level >= 30)
}

/// The event's message and other fields as one line (`message key=value ...`).
#[derive(Default)]
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            self.0.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}

struct PythonLogging;

impl<S: Subscriber> Layer<S> for PythonLogging {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // The threshold changes at run time: ask again for every event.
        Interest::sometimes()
    }
    fn enabled(&self, meta: &Metadata<'_>, _: Context<'_, S>) -> bool {
        wanted(meta)
    }
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut line = Line::default();
        event.record(&mut line);
        let level = python_level(event.metadata().level());
        // Any thread may log (rayon's workers); each takes the GIL for its record, which the
        // calling thread released for the work.
        Python::attach(|py| {
            let logged = py
                .import("logging")
                .and_then(|l| l.call_method1("getLogger", ("tessera",)))
                .and_then(|logger| logger.call_method1("log", (level, line.0)));
            if let Err(e) = logged {
                e.write_unraisable(py, None);
            }
        });
    }
}

/// Sets the level below which tessera's lines are dropped (the "tessera" logger's effective
/// level) and, the first time, routes tessera's log lines to Python's logging.
#[pyfunction]
pub fn set_log_level(level: i64) {
    static INSTALL: Once = Once::new();
    THRESHOLD.store(level.clamp(0, 255) as u8, Ordering::Relaxed);
    INSTALL.call_once(|| {
        // Fails only if a subscriber is set already (the `tessera` command ran first in this
        // process): its lines then go where that one sends them.
        let _ = tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(PythonLogging),
        );
    });
}
