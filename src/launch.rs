//! The command line as a function: [`run`] does what the `tessera` binary does with an
//! argument list (start MPI when launched under it, parse, log, run, print any error on one
//! line) and returns the exit code, so that other front ends (the Python package's `tessera`
//! command) run the same CLI in their own process.

use std::ffi::OsString;

use clap::Parser;
use tracing_subscriber::fmt::format::{self, format, FormatEvent, FormatFields};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::cli::{self, Cli, LogFormat};
use crate::comm::{self, Comm};
use crate::Error;

/// Prefixes every log line of a multi-rank run with its rank, whichever thread logs it (a span
/// would only label the main thread, not rayon's workers): `[rank 3] ...` in text, a `"rank"`
/// field in JSON (there also for one process).
struct RankTagged<F> {
    rank: Option<usize>,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for RankTagged<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some(rank) = self.rank else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, format::Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"rank\":{rank},{rest}"),
            None => write!(writer, "[rank {rank}] {line}"),
        }
    }
}

fn init_logging(cli: &Cli, comm: &dyn Comm) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) if comm.is_root() => "info",
        (false, 0) => "error",
        (false, 1) => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("tessera={level},warn")));
    let rank = (comm.size() > 1).then(|| comm.rank());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A front end that set its own subscriber first (Python's logging bridge) keeps it; the
    // binary never has one, so it always gets this one.
    let _ = match cli.log_format {
        LogFormat::Json => builder
            .event_format(RankTagged {
                // JSON is for machines: the rank is always there, also in a one-process run.
                rank: Some(comm.rank()),
                inner: format().json().with_target(false),
            })
            .fmt_fields(format::JsonFields::new())
            .try_init(),
        LogFormat::Text => builder
            .event_format(RankTagged {
                rank,
                inner: format().without_time().with_target(false),
            })
            .try_init(),
    };
}

/// Prints the job's error(s) once, on rank 0: every rank's message is gathered, ranks that
/// only stopped because another failed are left out, and identical messages (a plan error
/// every rank found) are printed once. One line each, whatever the library's message was,
/// ending with how to resume or clean up when the run left a `.partial` output.
fn report_error(error: Option<Error>, comm: &dyn Comm) {
    let own = match &error {
        Some(Error::PeerFailed { .. }) | None => String::new(),
        Some(e) => crate::error::one_line(&e.to_string()),
    };
    let messages = if comm.size() == 1 {
        vec![own.into_bytes()]
    } else {
        comm.all_gather(own.as_bytes())
    };
    if !comm.is_root() {
        return;
    }
    let hint = crate::io::staging::interrupted_run_hint()
        .map(|h| format!("; {h}"))
        .unwrap_or_default();
    let mut printed: Vec<String> = Vec::new();
    for (rank, m) in messages.iter().enumerate() {
        let m = String::from_utf8_lossy(m).into_owned();
        if m.is_empty() || printed.contains(&m) {
            continue;
        }
        let identical_on_all = messages.iter().all(|x| x == m.as_bytes());
        if comm.size() == 1 || identical_on_all {
            eprintln!("error: {m}{hint}");
        } else {
            eprintln!("error: (rank {rank}) {m}{hint}");
        }
        printed.push(m);
    }
    if printed.is_empty() {
        if let Some(Error::PeerFailed { rank }) = error {
            eprintln!("error: rank {rank} failed{hint}");
        }
    }
}

/// A line of clap's usage error, with a value too long to read shortened (its indentation
/// kept).
fn shorten_usage_line(line: &str) -> String {
    if line.chars().count() <= 200 {
        return line.to_string();
    }
    let indent = &line[..line.len() - line.trim_start().len()];
    format!("{indent}{}", crate::error::one_line(line))
}

/// Runs the command line `args` (the program name first, as `std::env::args_os` gives it)
/// in this process and returns the exit code the binary exits with: 0 on success, 1 after a
/// failed job (its error printed on one line), clap's code for `--help`, `--version` and
/// usage errors. MPI is started (when the build has it and a launcher started this
/// process) and finalised before it returns.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    // MPI first: it must see the process before anything else starts threads.
    let comm = comm::init();
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // --help, --version, or a usage error: clap's text on rank 0 only, the values
            // it quotes shortened (one may be megabytes long).
            if comm.is_root() {
                if e.use_stderr() {
                    let text = e.render().to_string();
                    let lines: Vec<String> = text.lines().map(shorten_usage_line).collect();
                    eprintln!("{}", lines.join("\n"));
                } else {
                    let _ = e.print();
                }
            }
            let code = e.exit_code();
            drop(comm);
            return code;
        }
    };
    init_logging(&cli, comm.as_ref());
    let outcome = crate::exec::threads::configure(cli.threads, comm.as_ref())
        .and_then(|_| cli::dispatch(cli, comm.as_ref()));
    let code = i32::from(outcome.is_err());
    report_error(outcome.err(), comm.as_ref());
    // Finalise MPI (drop) before exiting; every HDF5 handle is closed by now.
    drop(comm);
    code
}
