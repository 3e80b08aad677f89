//! Logging: logfmt lines on stderr or in a file, never on stdout (which carries the CNI
//! result).
//!
//! Every record is one `key=value` line (logfmt), e.g.
//!
//! ```text
//! ts=2025-01-02T03:04:05.678Z level=warn plugin=bridge command=ADD container_id=c1 msg="..."
//! ```
//!
//! and skel adds one line per operation ([`operation`]):
//!
//! ```text
//! ts=... level=info plugin=bridge command=ADD container_id=c1 network=podman ifname=eth0 netns=/run/netns/x ips=10.88.0.2/16 duration_ms=12.345 result=ok
//! ts=... level=warn plugin=bridge command=ADD container_id=c1 ... result=error code=7 error="..."
//! ```
//!
//! Where and how much (skel reads the keys from the plugin's config before dispatching):
//!
//! | setting | config key | environment (wins over the key) | default |
//! | --- | --- | --- | --- |
//! | level: `off`, `error`, `warn`, `info`, `debug`, `trace` | `logLevel` | `CNI_LOG_LEVEL` | `RUST_LOG` if it is a plain level, else `warn` |
//! | file (appended to, created `0600`, parent directories `0700`) | `logFile` | `CNI_LOG_FILE` | stderr |
//!
//! Successful operations are logged at `info` and failed ones at `warn` (bad input, codes
//! 1–4, 6–8, 11) or `error` (everything else), so the default level shows failures only.
//!
//! Values are quoted and escaped (`"`, `\`, control characters), so a hostile container ID or
//! message cannot start a new line or forge a key. Each line is written with a single
//! `write()`, to a file opened with `O_APPEND`: plugin processes sharing one file never
//! interleave their lines. No lock is held across the run (a thread working inside a network
//! namespace logs through the same sink while the main thread waits for it).

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::fmt::Write as _;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable overriding the `logLevel` key.
pub const ENV_LEVEL: &str = "CNI_LOG_LEVEL";
/// Environment variable overriding the `logFile` key.
pub const ENV_FILE: &str = "CNI_LOG_FILE";

struct State {
    level: LevelFilter,
    /// `None`: stderr.
    file: Option<File>,
    /// The path `file` was opened from (a second `configure` naming it again reuses it).
    file_path: Option<String>,
    plugin: String,
    command: String,
    container_id: String,
}

static STATE: Mutex<State> = Mutex::new(State {
    level: LevelFilter::Warn,
    file: None,
    file_path: None,
    plugin: String::new(),
    command: String::new(),
    container_id: String::new(),
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

struct Logger;
static LOGGER: Logger = Logger;

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let msg = record.args().to_string();
        let (plugin, command, cid) = {
            let s = state();
            (s.plugin.clone(), s.command.clone(), s.container_id.clone())
        };
        let mut fields: Vec<(&str, &str)> = Vec::with_capacity(4);
        for (k, v) in [
            ("plugin", plugin.as_str()),
            ("command", command.as_str()),
            ("container_id", cid.as_str()),
        ] {
            if !v.is_empty() {
                fields.push((k, v));
            }
        }
        fields.push(("msg", msg.as_str()));
        emit(record.level(), &fields);
    }

    fn flush(&self) {}
}

/// Parses a level name (case-insensitive; `warning` and `none` accepted too).
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    Some(match s.trim().to_ascii_lowercase().as_str() {
        "off" | "none" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warn" | "warning" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return None,
    })
}

fn env_nonempty(env: &dyn Fn(&str) -> Option<String>, key: &str) -> Option<String> {
    env(key).filter(|v| !v.trim().is_empty())
}

/// Installs the logger: stderr at `warn`, or as `CNI_LOG_LEVEL` / `RUST_LOG` (a plain level)
/// and `CNI_LOG_FILE` say. Safe to call twice.
pub fn init() {
    let _ = log::set_logger(&LOGGER);
    configure(None, None, &|k: &str| std::env::var(k).ok());
}

/// Applies the settings of one invocation: the config's `logLevel` and `logFile` (either may
/// be absent), under the environment's overrides. Never fails: an unknown level or a file
/// that cannot be opened leaves the default and says so on stderr.
pub fn configure(
    conf_level: Option<&str>,
    conf_file: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) {
    let mut warnings = Vec::new();
    let mut level = LevelFilter::Warn;
    if let Some(l) = env_nonempty(env, "RUST_LOG").and_then(|v| parse_level(&v)) {
        level = l;
    }
    for (source, value) in [
        ("logLevel", conf_level.map(str::to_string)),
        (ENV_LEVEL, env_nonempty(env, ENV_LEVEL)),
    ] {
        if let Some(v) = value {
            match parse_level(&v) {
                Some(l) => level = l,
                None => warnings.push(format!(
                    "ignoring {source} {v:?}: expected off, error, warn, info, debug or trace"
                )),
            }
        }
    }
    let path = env_nonempty(env, ENV_FILE)
        .or_else(|| conf_file.map(str::to_string))
        .filter(|p| !p.is_empty());
    {
        let mut s = state();
        s.level = level;
        // `init` opened it already when the environment names it: not again.
        if s.file.is_none() || s.file_path != path {
            s.file = match path.as_deref() {
                None => None,
                Some(p) => match open_log_file(Path::new(p)) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        warnings.push(format!("cannot open log file {p}: {e}; logging to stderr"));
                        None
                    }
                },
            };
            s.file_path = s.file.as_ref().and(path);
        }
    }
    log::set_max_level(level);
    for w in warnings {
        emit(Level::Warn, &[("msg", &w)]);
    }
}

/// Names the invocation in every later record (empty values are left out).
pub fn set_context(plugin: &str, command: &str, container_id: &str) {
    let mut s = state();
    s.plugin = plugin.to_string();
    s.command = command.to_string();
    s.container_id = container_id.to_string();
}

/// True when records of `level` are written.
pub fn enabled(level: Level) -> bool {
    level <= log::max_level()
}

/// Writes the per-operation line: `fields` in order after `ts` and `level`.
pub fn operation(level: Level, fields: &[(&str, &str)]) {
    if enabled(level) {
        emit(level, fields);
    }
}

fn open_log_file(path: &Path) -> std::io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// Formats and writes one record with a single `write()`.
fn emit(level: Level, fields: &[(&str, &str)]) {
    let line = format_line(SystemTime::now(), level, fields);
    let s = state();
    let res = match &s.file {
        Some(f) => write_once(f, line.as_bytes()),
        None => write_once(&std::io::stderr(), line.as_bytes()),
    };
    drop(s);
    // Logging never fails an operation; a full disk loses the line.
    let _ = res;
}

fn write_once(mut w: impl Write, line: &[u8]) -> std::io::Result<()> {
    // One write() for the whole line: O_APPEND makes it atomic against other appenders. A
    // short write (a full disk, a signal) is completed by write_all rather than lost.
    w.write_all(line)
}

/// One logfmt line, newline included.
pub fn format_line(now: SystemTime, level: Level, fields: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(160);
    out.push_str("ts=");
    out.push_str(&rfc3339(now));
    out.push_str(" level=");
    out.push_str(&level.as_str().to_ascii_lowercase());
    for (k, v) in fields {
        out.push(' ');
        out.push_str(k);
        out.push('=');
        push_value(&mut out, v);
    }
    out.push('\n');
    out
}

fn is_bare(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '"' | '=' | '\\')
}

/// Appends `v` bare when it is plain printable ASCII without `"`, `=` or `\`, else quoted with
/// `\"`, `\\`, `\n`, `\r`, `\t` and `\u{..}` for other control and line-separating characters.
pub fn push_value(out: &mut String, v: &str) {
    if !v.is_empty() && v.chars().all(is_bare) {
        out.push_str(v);
        return;
    }
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Parses one logfmt line as written by [`format_line`] (for tests and tools): the pairs in
/// order, values unescaped. `None` when it is not such a line.
pub fn parse_line(line: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut it = line.trim_end_matches('\n').chars().peekable();
    loop {
        while it.peek() == Some(&' ') {
            it.next();
        }
        if it.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        loop {
            match it.next() {
                Some('=') => break,
                Some(c) if is_bare(c) => key.push(c),
                _ => return None,
            }
        }
        let mut val = String::new();
        if it.peek() == Some(&'"') {
            it.next();
            loop {
                match it.next()? {
                    '"' => break,
                    '\\' => match it.next()? {
                        '"' => val.push('"'),
                        '\\' => val.push('\\'),
                        'n' => val.push('\n'),
                        'r' => val.push('\r'),
                        't' => val.push('\t'),
                        'u' => {
                            if it.next()? != '{' {
                                return None;
                            }
                            let hex: String = it.by_ref().take_while(|c| *c != '}').collect();
                            val.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                        }
                        _ => return None,
                    },
                    c => val.push(c),
                }
            }
            if it.peek().is_some_and(|c| *c != ' ') {
                return None;
            }
        } else {
            while let Some(c) = it.peek() {
                if *c == ' ' {
                    break;
                }
                if !is_bare(*c) {
                    return None;
                }
                val.push(*c);
                it.next();
            }
        }
        out.push((key, val));
    }
}

/// `2025-01-02T03:04:05.678Z` (UTC, milliseconds).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
        let t = UNIX_EPOCH + Duration::from_secs(4_102_444_799);
        assert_eq!(rfc3339(t), "2099-12-31T23:59:59.000Z");
    }

    #[test]
    fn hostile_values_cannot_forge_lines_or_keys() {
        let evil = "c1 result=ok\nts=0 level=info forged=\"yes\\\" \u{7}\u{2028}é";
        let line = format_line(
            UNIX_EPOCH,
            Level::Warn,
            &[("container_id", evil), ("ips", ""), ("result", "ok")],
        );
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with(" result=ok\n"), "{line}");
        let pairs = parse_line(&line).unwrap();
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["ts", "level", "container_id", "ips", "result"]);
        assert_eq!(pairs[2].1, evil);
        assert_eq!(pairs[3].1, "");
        assert_eq!(pairs[1].1, "warn");
    }

    #[test]
    fn plain_values_stay_bare() {
        let line = format_line(
            UNIX_EPOCH,
            Level::Info,
            &[("ips", "10.0.0.2/24,fd00::2/64"), ("duration_ms", "1.5")],
        );
        assert_eq!(
            line,
            "ts=1970-01-01T00:00:00.000Z level=info ips=10.0.0.2/24,fd00::2/64 duration_ms=1.5\n"
        );
        assert!(parse_line("a=\"unterminated").is_none());
        assert!(parse_line("a=b\"c").is_none());
    }

    #[test]
    fn levels() {
        assert_eq!(parse_level("WARNING"), Some(LevelFilter::Warn));
        assert_eq!(parse_level("trace"), Some(LevelFilter::Trace));
        assert_eq!(parse_level("off"), Some(LevelFilter::Off));
        assert_eq!(parse_level("loud"), None);
    }
}
