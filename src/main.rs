//! The `socratune` binary: parse arguments, dispatch the command to its `cli` module, print
//! one line per failure.

mod cli;

use clap::Parser;

fn main() {
    socratune::fsutil::keep_freed_memory();
    // Before any thread exists: candle would otherwise parse /proc/cpuinfo on every op.
    socratune::threads::pin_thread_count();
    // Before any thread exists, so that every compute pool inherits it (see `fpenv`).
    socratune::fpenv::flush_subnormals_everywhere();
    let cli = cli::Cli::parse();
    if let Err(e) = cli.command.run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
