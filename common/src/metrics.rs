//! Metrics without a daemon: each invocation adds itself to a Prometheus text-format file,
//! read by node_exporter's textfile collector (`--collector.textfile.directory`; name the
//! file `*.prom`).
//!
//! Enabled by the config key `metricsFile` or the environment variable `CNI_METRICS_FILE`
//! (which wins). The file holds three families, labelled by `plugin` (the binary's name) and
//! `command` (ADD, DEL, CHECK, GC, STATUS):
//!
//! - `cni_operations_total` (counter): every operation;
//! - `cni_operation_errors_total` (counter, with `code`, the CNI error code): failed ones;
//! - `cni_operation_duration_seconds` (histogram, buckets from 1 ms to 10 s): their duration.
//!
//! An update never waits for another invocation. When the flock on the sibling `<file>.lock` is
//! free, it reads the file, adds the operation (and any left in `<file>.pending/`), writes
//! `<file>.tmp` (mode 0644), fsyncs it and renames it over the file, so a reader sees either
//! the old or the new file, never a partial one. When another invocation holds the lock, the
//! operation is left as one small file in `<file>.pending/` instead, and whoever holds the
//! lock adds it: every holder looks there again after releasing the lock, so no operation
//! waits for a later one to be counted. The file is this module's own: lines of other
//! families are not kept. Metrics never fail an operation: every problem is a warning.

use crate::lock;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable naming the metrics file (wins over the `metricsFile` key).
pub const ENV_FILE: &str = "CNI_METRICS_FILE";

/// How many times one invocation goes back for operations left while it held the lock.
const MAX_ROUNDS: usize = 16;

/// The extension of an operation left in `<file>.pending/` (others there are ignored).
const PENDING_EXT: &str = "obs";

/// Upper bounds of the duration histogram's buckets, in seconds (`+Inf` is implied).
pub const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const OPS: &str = "cni_operations_total";
const ERRORS: &str = "cni_operation_errors_total";
const DURATION: &str = "cni_operation_duration_seconds";

/// One histogram series: cumulative bucket counts (`+Inf` last), sum and count.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Histogram {
    pub buckets: [u64; BUCKETS.len() + 1],
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.buckets[i] = self.buckets[i].saturating_add(1);
            }
        }
        self.buckets[BUCKETS.len()] = self.buckets[BUCKETS.len()].saturating_add(1);
        self.sum += seconds;
        self.count = self.count.saturating_add(1);
    }
}

/// `(plugin, command)`.
pub type OpKey = (String, String);

/// The whole file's content.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metrics {
    pub operations: BTreeMap<OpKey, u64>,
    /// `(plugin, command, code)`.
    pub errors: BTreeMap<(String, String, String), u64>,
    pub durations: BTreeMap<OpKey, Histogram>,
}

/// One finished operation.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    pub plugin: &'a str,
    pub command: &'a str,
    pub duration: Duration,
    /// The CNI error code, if it failed.
    pub error_code: Option<u32>,
}

impl Metrics {
    /// Adds one operation.
    pub fn record(&mut self, o: &Observation) {
        let key = (o.plugin.to_string(), o.command.to_string());
        let ops = self.operations.entry(key.clone()).or_default();
        *ops = ops.saturating_add(1);
        if let Some(code) = o.error_code {
            let ekey = (key.0.clone(), key.1.clone(), code.to_string());
            let errs = self.errors.entry(ekey).or_default();
            *errs = errs.saturating_add(1);
        }
        self.durations
            .entry(key)
            .or_default()
            .observe(o.duration.as_secs_f64());
    }

    /// Reads this module's families from a Prometheus text file; other lines (comments,
    /// other families, malformed lines) are skipped.
    pub fn parse(text: &str) -> Metrics {
        let mut m = Metrics::default();
        for line in text.lines() {
            let Some(Sample {
                name,
                labels,
                value,
            }) = parse_sample(line)
            else {
                continue;
            };
            let get = |k: &str| {
                labels
                    .iter()
                    .find(|(lk, _)| lk == k)
                    .map(|(_, v)| v.clone())
            };
            let (Some(plugin), Some(command)) = (get("plugin"), get("command")) else {
                continue;
            };
            let int = || parse_count(&value);
            match name.as_str() {
                OPS => {
                    if let Some(n) = int() {
                        m.operations.insert((plugin, command), n);
                    }
                }
                ERRORS => {
                    if let (Some(code), Some(n)) = (get("code"), int()) {
                        m.errors.insert((plugin, command, code), n);
                    }
                }
                _ => {
                    let Some(part) = name.strip_prefix(DURATION) else {
                        continue;
                    };
                    let h = m.durations.entry((plugin, command)).or_default();
                    match part {
                        "_bucket" => {
                            let (Some(le), Some(n)) = (get("le"), int()) else {
                                continue;
                            };
                            let idx = if le == "+Inf" {
                                Some(BUCKETS.len())
                            } else {
                                le.parse::<f64>()
                                    .ok()
                                    .and_then(|le| BUCKETS.iter().position(|b| *b == le))
                            };
                            if let Some(i) = idx {
                                h.buckets[i] = n;
                            }
                        }
                        "_sum" => {
                            if let Ok(s) = value.parse::<f64>() {
                                if s.is_finite() {
                                    h.sum = s;
                                }
                            }
                        }
                        "_count" => {
                            if let Some(n) = int() {
                                h.count = n;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        m
    }

    /// The Prometheus text format, with HELP and TYPE lines.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP {OPS} CNI plugin operations, by plugin and command.\n# TYPE {OPS} counter"
        );
        for ((p, c), n) in &self.operations {
            let _ = writeln!(out, "{OPS}{} {n}", labels(&[("plugin", p), ("command", c)]));
        }
        let _ = writeln!(
            out,
            "# HELP {ERRORS} Failed CNI plugin operations, by plugin, command and CNI error code.\n# TYPE {ERRORS} counter"
        );
        for ((p, c, code), n) in &self.errors {
            let l = labels(&[("plugin", p), ("command", c), ("code", code)]);
            let _ = writeln!(out, "{ERRORS}{l} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP {DURATION} Duration of CNI plugin operations, by plugin and command.\n# TYPE {DURATION} histogram"
        );
        for ((p, c), h) in &self.durations {
            for (i, n) in h.buckets.iter().enumerate() {
                let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
                let l = labels(&[("plugin", p), ("command", c), ("le", &le)]);
                let _ = writeln!(out, "{DURATION}_bucket{l} {n}");
            }
            let l = labels(&[("plugin", p), ("command", c)]);
            let _ = writeln!(out, "{DURATION}_sum{l} {}", h.sum);
            let _ = writeln!(out, "{DURATION}_count{l} {}", h.count);
        }
        out
    }
}

fn parse_count(v: &str) -> Option<u64> {
    v.parse::<u64>().ok().or_else(|| {
        // Another writer may have printed a float ("3e+00"); accept whole numbers.
        let f = v.parse::<f64>().ok()?;
        (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 1e18).then_some(f as u64)
    })
}

/// `{k="v",...}` with `\\`, `\"` and `\n` escaped, as the text format wants.
fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// One sample line of the text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// Label pairs in order, values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value as written.
    pub value: String,
}

/// Parses a sample line; `None` for comments, blank and malformed lines. A timestamp after the
/// value is ignored.
pub fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = line[..name_end].to_string();
    if name.is_empty() {
        return None;
    }
    let mut rest = line[name_end..].chars().peekable();
    let mut labels = Vec::new();
    if rest.peek() == Some(&'{') {
        rest.next();
        loop {
            while rest.peek().is_some_and(|c| *c == ' ' || *c == ',') {
                rest.next();
            }
            if rest.peek() == Some(&'}') {
                rest.next();
                break;
            }
            let mut key = String::new();
            loop {
                match rest.next()? {
                    '=' => break,
                    c if c.is_ascii_alphanumeric() || c == '_' => key.push(c),
                    _ => return None,
                }
            }
            if rest.next()? != '"' {
                return None;
            }
            let mut val = String::new();
            loop {
                match rest.next()? {
                    '"' => break,
                    '\\' => match rest.next()? {
                        'n' => val.push('\n'),
                        c => val.push(c),
                    },
                    c => val.push(c),
                }
            }
            labels.push((key, val));
        }
    }
    let rest: String = rest.collect();
    let value = rest.split_whitespace().next()?.to_string();
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Adds `o` to the file at `path`. Never fails: problems are logged as warnings and the update
/// is skipped.
pub fn update(path: &Path, o: &Observation) {
    if let Err(e) = try_update(path, o) {
        log::warn!("metrics file {} not updated: {e}", path.display());
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// [`update`], with its error.
pub fn try_update(path: &Path, o: &Observation) -> crate::Result<()> {
    use crate::error::IoContext;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .with_io_context(|| format!("creating {}", parent.display()))?;
    }
    let lock_path = sibling(path, ".lock");
    match lock::try_lock(&lock_path)? {
        Some(guard) => write_locked(path, Some(o), guard)?,
        None => Pending::open(path, true)?.leave(o)?,
    }
    // The lock is free again (or someone else holds it and will look here after releasing
    // it): take in what was left meanwhile.
    for _ in 0..MAX_ROUNDS {
        if Pending::existing(path).names().is_empty() {
            break;
        }
        match lock::try_lock(&lock_path)? {
            Some(guard) => write_locked(path, None, guard)?,
            None => break,
        }
    }
    Ok(())
}

/// `<file>.pending/`, where operations wait for the lock's holder. Every access goes through
/// one descriptor of the directory opened without following a symlink, and files in it are
/// created exclusively and opened without following one either: whoever can write beside the
/// metrics file cannot redirect a write, a read or a removal elsewhere.
struct Pending {
    /// `None` when the directory does not exist (nothing pending).
    dir: Option<std::os::fd::OwnedFd>,
    path: PathBuf,
}

impl Pending {
    fn open(file: &Path, create: bool) -> crate::Result<Pending> {
        use nix::fcntl::{OFlag, open};
        use nix::sys::stat::Mode;
        let path = sibling(file, ".pending");
        let io = |e: nix::Error| crate::Error::io(format!("opening {}", path.display()), e.into());
        if create {
            match nix::unistd::mkdir(&path, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(nix::Error::EEXIST) => {}
                Err(e) => return Err(io(e)),
            }
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let dir = match open(&path, flags, Mode::empty()) {
            Ok(fd) => Some(fd),
            Err(nix::Error::ENOENT) if !create => None,
            Err(e) => return Err(io(e)),
        };
        Ok(Pending { dir, path })
    }

    /// The directory if it exists and is one; an unusable one (a symlink planted there) is
    /// logged and treated as empty.
    fn existing(file: &Path) -> Pending {
        Pending::open(file, false).unwrap_or_else(|e| {
            log::warn!("metrics: ignoring pending operations: {e}");
            Pending {
                dir: None,
                path: sibling(file, ".pending"),
            }
        })
    }

    /// Leaves `o` for the lock's holder: written under a hidden name and renamed, so a holder
    /// reads it whole or not at all.
    fn leave(&self, o: &Observation) -> crate::Result<()> {
        use nix::fcntl::{OFlag, openat, renameat};
        use nix::sys::stat::Mode;
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!(
            "{}-{nanos}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let tmp = format!(".{name}.tmp");
        let done = format!("{name}.{PENDING_EXT}");
        let record = serde_json::json!({
            "plugin": o.plugin,
            "command": o.command,
            "seconds": o.duration.as_secs_f64(),
            "code": o.error_code,
        });
        let write = || -> nix::Result<()> {
            let flags = OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC;
            let fd = openat(dir, tmp.as_str(), flags, Mode::from_bits_truncate(0o644))?;
            let mut file = std::fs::File::from(fd);
            file.write_all(record.to_string().as_bytes())
                .map_err(|e| nix::Error::try_from(e).unwrap_or(nix::Error::EIO))?;
            renameat(dir, tmp.as_str(), dir, done.as_str())
        };
        write().map_err(|e| {
            let _ =
                nix::unistd::unlinkat(dir, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
            crate::Error::io(format!("writing {}/{done}", self.path.display()), e.into())
        })
    }

    /// The names of the operations waiting.
    fn names(&self) -> Vec<String> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let Ok(fd) = dir.try_clone() else {
            return Vec::new();
        };
        let Ok(mut listing) = nix::dir::Dir::from_fd(fd) else {
            return Vec::new();
        };
        let suffix = format!(".{PENDING_EXT}");
        listing
            .iter()
            .flatten()
            .filter_map(|e| e.file_name().to_str().ok().map(str::to_string))
            .filter(|n| n.ends_with(&suffix) && !n.starts_with('.'))
            .collect()
    }

    /// Adds the operation `name` to `m`; false when it is unreadable.
    fn record(&self, m: &mut Metrics, name: &str) -> bool {
        use nix::fcntl::{OFlag, openat};
        use nix::sys::stat::Mode;
        use std::io::Read;
        let Some(dir) = &self.dir else {
            return false;
        };
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let Ok(fd) = openat(dir, name, flags, Mode::empty()) else {
            return false;
        };
        let mut bytes = Vec::new();
        // A record is a few dozen bytes: anything longer is not one.
        if std::fs::File::from(fd)
            .take(4096)
            .read_to_end(&mut bytes)
            .is_err()
        {
            return false;
        }
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return false;
        };
        let (Some(plugin), Some(command)) = (v["plugin"].as_str(), v["command"].as_str()) else {
            return false;
        };
        let Some(duration) = v["seconds"]
            .as_f64()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
        else {
            return false;
        };
        let error_code = v["code"].as_u64().and_then(|c| u32::try_from(c).ok());
        m.record(&Observation {
            plugin,
            command,
            duration,
            error_code,
        });
        true
    }

    fn remove(&self, name: &str) {
        if let Some(dir) = &self.dir {
            let _ = nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// With the lock held: the file plus `own` plus every pending operation, written whole; the
/// pending files taken in are removed after the file is in place.
fn write_locked(
    path: &Path,
    own: Option<&Observation>,
    guard: lock::LockGuard,
) -> crate::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(crate::Error::io(format!("reading {}", path.display()), e)),
    };
    let mut m = Metrics::parse(&text);
    let pending = Pending::existing(path);
    let names = pending.names();
    for name in &names {
        if !pending.record(&mut m, name) {
            log::warn!(
                "metrics: dropping unreadable {}/{name}",
                pending.path.display()
            );
        }
    }
    if let Some(o) = own {
        m.record(o);
    } else if names.is_empty() {
        return Ok(());
    }
    let tmp = sibling(path, ".tmp");
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        // The mode asked for at creation is cut by the umask, and an old tmp keeps its own.
        f.set_permissions(Permissions::from_mode(0o644))?;
        f.write_all(m.render().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        crate::Error::io(format!("writing {}", path.display()), e)
    })?;
    for name in &names {
        pending.remove(name);
    }
    drop(guard);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(plugin: &str, command: &str, ms: u64, code: Option<u32>) -> Observation<'static> {
        Observation {
            plugin: Box::leak(plugin.to_string().into_boxed_str()),
            command: Box::leak(command.to_string().into_boxed_str()),
            duration: Duration::from_millis(ms),
            error_code: code,
        }
    }

    #[test]
    fn record_render_parse_roundtrip() {
        let mut m = Metrics::default();
        m.record(&obs("bridge", "ADD", 3, None));
        m.record(&obs("bridge", "ADD", 700, Some(7)));
        m.record(&obs("bridge", "DEL", 20_000, None));
        m.record(&obs("host-local", "ADD", 1, None));
        let text = m.render();
        assert_eq!(Metrics::parse(&text), m, "{text}");
        assert!(text.contains("cni_operations_total{plugin=\"bridge\",command=\"ADD\"} 2\n"));
        assert!(text.contains(
            "cni_operation_errors_total{plugin=\"bridge\",command=\"ADD\",code=\"7\"} 1\n"
        ));
        let h = &m.durations[&("bridge".into(), "ADD".into())];
        // 3 ms is in every bucket from 5 ms up; 700 ms from 1 s up.
        assert_eq!(h.buckets[..3], [0, 0, 1]);
        assert_eq!(h.buckets[9..], [2, 2, 2, 2, 2]);
        assert_eq!(h.count, 2);
        assert!((h.sum - 0.703).abs() < 1e-9);
        let del = &m.durations[&("bridge".into(), "DEL".into())];
        assert_eq!(del.buckets[BUCKETS.len() - 1], 0, "20 s is past 10 s");
        assert_eq!(del.buckets[BUCKETS.len()], 1);
        assert!(text.contains("le=\"0.001\""));
        assert!(text.contains("le=\"+Inf\"} 1\n"));
        assert!(text.contains("# TYPE cni_operation_duration_seconds histogram"));
    }

    #[test]
    fn hostile_labels_are_escaped_and_foreign_lines_dropped() {
        let mut m = Metrics::default();
        m.record(&obs(
            "evil\"} 99\ncni_operations_total{x=\"\\",
            "ADD",
            1,
            None,
        ));
        let text = m.render();
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("cni_operations_total"))
                .count(),
            1,
            "{text}"
        );
        let back = Metrics::parse(&format!(
            "other_metric 5\n# comment\ngarbage {{{{\n{text}cni_operations_total{{plugin=\"x\"}} 3\n"
        ));
        assert_eq!(back, m);
    }

    #[test]
    fn update_creates_the_file_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cni.prom");
        update(&path, &obs("tuning", "ADD", 2, None));
        update(&path, &obs("tuning", "ADD", 2, Some(11)));
        let m = Metrics::parse(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(m.operations[&("tuning".into(), "ADD".into())], 2);
        assert_eq!(m.errors[&("tuning".into(), "ADD".into(), "11".into())], 1);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert!(!sibling(&path, ".tmp").exists());
    }

    #[test]
    fn a_held_lock_never_makes_an_update_wait_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.prom");
        update(&path, &obs("bridge", "ADD", 2, None));
        let held = lock::try_lock(&sibling(&path, ".lock")).unwrap().unwrap();
        let t = std::time::Instant::now();
        update(&path, &obs("loopback", "ADD", 1, None));
        update(&path, &obs("loopback", "DEL", 1, Some(7)));
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "waited {:?}",
            t.elapsed()
        );
        // Left for the holder: the file is unchanged so far.
        assert_eq!(Pending::open(&path, false).unwrap().names().len(), 2);
        let m = Metrics::parse(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(m.operations.len(), 1);
        drop(held);
        // The next update takes them in.
        update(&path, &obs("bridge", "DEL", 3, None));
        let m = Metrics::parse(&std::fs::read_to_string(&path).unwrap());
        for (p, c) in [
            ("bridge", "ADD"),
            ("loopback", "ADD"),
            ("loopback", "DEL"),
            ("bridge", "DEL"),
        ] {
            assert_eq!(m.operations[&(p.into(), c.into())], 1, "{p} {c}");
        }
        assert_eq!(m.errors[&("loopback".into(), "DEL".into(), "7".into())], 1);
        assert!(Pending::open(&path, false).unwrap().names().is_empty());
        let stray: Vec<_> = std::fs::read_dir(sibling(&path, ".pending"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
    }

    #[test]
    fn concurrent_updates_are_all_counted_once_they_are_done() {
        const THREADS: usize = 12;
        const EACH: usize = 25;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.prom");
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    for _ in 0..EACH {
                        update(&path, &obs("tuning", "ADD", 1, None));
                    }
                });
            }
        });
        let m = Metrics::parse(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(
            m.operations[&("tuning".into(), "ADD".into())],
            (THREADS * EACH) as u64
        );
        assert!(Pending::open(&path, false).unwrap().names().is_empty());
    }

    #[test]
    fn unreadable_pending_records_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.prom");
        std::fs::create_dir_all(sibling(&path, ".pending")).unwrap();
        std::fs::write(sibling(&path, ".pending").join("x.obs"), "not json").unwrap();
        std::fs::write(
            sibling(&path, ".pending").join("y.obs"),
            r#"{"plugin":"p","command":"ADD","seconds":-1}"#,
        )
        .unwrap();
        update(&path, &obs("p", "DEL", 1, None));
        let m = Metrics::parse(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(m.operations.len(), 1);
        assert!(Pending::open(&path, false).unwrap().names().is_empty());
    }

    #[test]
    fn a_planted_symlink_redirects_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let victim = elsewhere.path().join("keep.obs");
        std::fs::write(&victim, r#"{"plugin":"p","command":"ADD","seconds":1}"#).unwrap();
        let path = dir.path().join("cni.prom");
        std::os::unix::fs::symlink(elsewhere.path(), sibling(&path, ".pending")).unwrap();
        // With the lock busy the operation cannot be left: it is dropped, not written there.
        let held = lock::try_lock(&sibling(&path, ".lock")).unwrap().unwrap();
        assert!(try_update(&path, &obs("p", "DEL", 1, None)).is_err());
        drop(held);
        // The holder's pass counts its own operation, and neither reads nor removes what the
        // link points at.
        try_update(&path, &obs("p", "DEL", 1, None)).unwrap();
        let m = Metrics::parse(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(m.operations[&("p".into(), "DEL".into())], 1);
        assert!(!m.operations.contains_key(&("p".into(), "ADD".into())));
        assert!(victim.exists());
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 1);
    }
}
