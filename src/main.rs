//! The `tessera` binary: start MPI when launched under it, parse the command line, run, and
//! print any error on one line with a non-zero exit code.

use clap::Parser;
use tracing_subscriber::EnvFilter;

use tessera::cli::{self, Cli, LogFormat};
use tessera::comm::{self, Comm};
use tessera::Error;

fn init_logging(cli: &Cli, comm: &dyn Comm) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) if comm.is_root() => "info",
        (false, 0) => "error",
        (false, 1) => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("tessera={level},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.without_time().init(),
    }
}

fn main() {
    // MPI first: it must see the process before anything else starts threads.
    let comm = comm::init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help, --version, or a usage error: clap's text on rank 0 only.
            if comm.is_root() {
                let _ = e.print();
            }
            let code = e.exit_code();
            drop(comm);
            std::process::exit(code);
        }
    };
    init_logging(&cli, comm.as_ref());
    let rank_span = tracing::info_span!("rank", r = comm.rank());
    let code = {
        let _entered = rank_span.enter();
        match cli::dispatch(cli, comm.as_ref()) {
            Ok(()) => 0,
            Err(e) => {
                // Ranks that stopped because another failed stay quiet: that rank says why.
                if !matches!(e, Error::PeerFailed { .. }) || comm.size() == 1 {
                    eprintln!("error: {e}");
                }
                1
            }
        }
    };
    // Finalise MPI (drop) before exiting; every HDF5 handle is closed by now.
    drop(comm);
    std::process::exit(code);
}
