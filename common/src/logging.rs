//! Logging to stderr (never stdout, which carries the CNI result).

/// Sets up `log` to write to stderr at `warn`, or as `RUST_LOG` says. Safe to call twice.
pub fn init() {
    let _ = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .parse_env("RUST_LOG")
        .format_timestamp(None)
        .target(env_logger::Target::Stderr)
        .try_init();
}
