//! `lastlayer`: the command-line front end of the library. See `lastlayer --help`.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use lastlayer::error::Category;

/// Exit statuses: 0 success, 1 internal error, 2 usage (bad flag), 3 bad input file or data,
/// 4 network (or `--offline` without a cache), 5 integrity (checksum or manifest mismatch).
fn exit_code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<lastlayer::Error>().map(lastlayer::Error::category) {
        Some(Category::Usage) => 2,
        Some(Category::Input) => 3,
        Some(Category::Network) => 4,
        Some(Category::Integrity) => 5,
        Some(Category::Internal) | None => 1,
    }
}

fn main() -> ExitCode {
    // Before any tensor is made and any thread started (see its doc).
    lastlayer::backbone::prefer_huge_pages();
    // A bug must still end with one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("lastlayer: internal error: {info}. Please report it with the command you ran.");
    }));
    let cli = cli::args::Cli::parse();
    if let Err(e) = cli::init_logging(&cli) {
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}
