//! `cnirun`: see the crate documentation and `cnirun --help`.

use clap::Parser;

fn main() {
    common::logging::init();
    let cli = cnirun::cli::Cli::parse();
    let code = cnirun::execute(
        &cli,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    std::process::exit(code);
}
