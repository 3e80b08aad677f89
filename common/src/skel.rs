//! The plugin entrypoint: reads the CNI environment and stdin, checks them as the spec and
//! Go's `skel` do, dispatches the verb, and prints the result or the error object.
//!
//! Stdout carries only the result (ADD), the version answer (VERSION) or the error object.
//!
//! Around every operation skel also does the suite's observability, so plugins need no code
//! for it: it reads `logLevel`, `logFile` and `metricsFile` from the config (see
//! [`crate::logging`] and [`crate::metrics`]), names the invocation in every log record,
//! writes one logfmt line per operation (container ID, network, command, interface, IPs,
//! duration, result and error) and adds the operation to the metrics file.

use crate::error::{Error, Result};
use crate::spec::config::{validate_container_id, validate_ifname, validate_network_name};
use crate::spec::{CniResult, NetConf, Version};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

/// A CNI verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }
}

/// Everything one invocation was given.
#[derive(Debug, Clone)]
pub struct CmdArgs {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// CNI_ARGS, unparsed (`K=V;K2=V2`).
    pub args: String,
    /// CNI_PATH, unparsed (`:`-separated).
    pub path: String,
    /// stdin as received (delegated IPAM plugins get exactly these bytes).
    pub stdin: Vec<u8>,
    /// stdin parsed.
    pub conf: Value,
    /// The config's cniVersion (the result is printed in it).
    pub version: Version,
}

impl CmdArgs {
    /// Parses the config into a plugin's own type, with Go's key matching (code 6 on
    /// malformed input).
    pub fn parse_conf<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        crate::gojson::from_value(&self.conf)
            .map_err(|e| Error::Decode(format!("failed to parse network config: {e}")))
    }

    /// The keys every config has (`name`, `ipam`, `runtimeConfig`, `args`, ...).
    pub fn net_conf(&self) -> Result<NetConf> {
        self.parse_conf()
    }

    /// The prevResult in the config, typed, if any.
    pub fn prev_result(&self) -> Result<Option<CniResult>> {
        CniResult::from_prev(crate::gojson::get(&self.conf, "prevResult"), self.version)
    }

    /// CNI_PATH split into directories.
    pub fn path_dirs(&self) -> impl Iterator<Item = &str> {
        self.path.split(':').filter(|d| !d.is_empty())
    }
}

/// A CNI plugin: one method per verb. GC and STATUS default to "nothing to do".
pub trait Plugin {
    /// One line naming the plugin, printed on stderr when CNI_COMMAND is unset.
    fn about(&self) -> String;

    /// The spec versions this plugin speaks.
    fn supported_versions(&self) -> &[Version] {
        &Version::ALL
    }

    fn add(&self, args: &CmdArgs) -> Result<CniResult>;
    fn del(&self, args: &CmdArgs) -> Result<()>;
    fn check(&self, args: &CmdArgs) -> Result<()>;
    fn gc(&self, _args: &CmdArgs) -> Result<()> {
        Ok(())
    }
    fn status(&self, _args: &CmdArgs) -> Result<()> {
        Ok(())
    }
}

/// Which CNI_* variables each verb requires (Go skel's table; CNI_PATH included).
fn required_vars(cmd: Command) -> &'static [&'static str] {
    match cmd {
        Command::Add | Command::Check => {
            &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
        }
        Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
        Command::Gc | Command::Status => &["CNI_PATH"],
        Command::Version => &[],
    }
}

/// Runs a plugin against the real process environment and exits with its status.
pub fn run(plugin: &dyn Plugin) -> ! {
    crate::logging::init();
    let env = |k: &str| std::env::var(k).ok();
    // stdout and stderr are locked per write, not for the whole run: a log line from a
    // thread working in a netns (`NetNs::run`) would otherwise wait forever for the lock
    // the main thread holds while it waits for that thread.
    let code = dispatch_named(
        plugin,
        &program_name(),
        &env,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    std::process::exit(code)
}

/// The plugin's name in logs and metrics: its binary's file name (what the runtime ran, so a
/// delegated IPAM plugin is named for itself, not for the `type` of the config it was given).
fn program_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .map(Path::new)
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The whole protocol with injected environment and streams, so it can be unit tested.
/// Returns the exit status.
pub fn dispatch(
    plugin: &dyn Plugin,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    dispatch_named(plugin, &program_name(), env, stdin, stdout, stderr)
}

/// What the per-operation log line and the metrics need, filled in as dispatch learns it.
#[derive(Debug, Default)]
struct OpInfo {
    command: Option<Command>,
    container_id: String,
    ifname: String,
    netns: String,
    network: String,
    /// ADD: the result's addresses; DEL and CHECK: the prevResult's, if any.
    ips: Vec<String>,
    metrics_file: Option<String>,
}

/// [`dispatch`] for a plugin named `name` in logs and metrics.
pub fn dispatch_named(
    plugin: &dyn Plugin,
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let started = Instant::now();
    let var = |k: &str| env(k).unwrap_or_default();
    let command = var("CNI_COMMAND");
    if command.is_empty() {
        let versions: Vec<&str> = plugin
            .supported_versions()
            .iter()
            .map(|v| v.as_str())
            .collect();
        let _ = writeln!(
            stderr,
            "{}\nCNI protocol versions supported: {}",
            plugin.about(),
            versions.join(", ")
        );
        return 0;
    }
    let mut version_for_errors = Version::LATEST;
    let mut info = OpInfo {
        metrics_file: env(crate::metrics::ENV_FILE).filter(|f| !f.is_empty()),
        ..OpInfo::default()
    };
    crate::logging::set_context(name, &command, &var("CNI_CONTAINERID"));
    let outcome = dispatch_inner(
        plugin,
        &command,
        &var,
        env,
        stdin,
        &mut version_for_errors,
        &mut info,
    );
    let duration = started.elapsed();
    let (code, failure) = match outcome {
        Ok(Some(out)) => match write_json(stdout, &out) {
            Ok(()) => (0, None),
            Err(e) => {
                let _ = writeln!(stderr, "writing the result: {e}");
                (1, Some(Error::io("writing the result", e)))
            }
        },
        Ok(None) => (0, None),
        Err(e) => {
            let json = e.to_json(version_for_errors.as_str());
            let value = serde_json::to_value(&json).unwrap_or(Value::Null);
            let _ = write_json(stdout, &value);
            (1, Some(e))
        }
    };
    observe(name, &command, &info, duration, failure.as_ref());
    code
}

/// Codes of errors that are the caller's input or a transient condition (logged at warn);
/// the rest are the plugin's or the system's failures (logged at error).
fn is_input_error(code: u32) -> bool {
    use crate::error::code::*;
    matches!(
        code,
        INCOMPATIBLE_VERSION
            | UNSUPPORTED_FIELD
            | UNKNOWN_CONTAINER
            | INVALID_ENVIRONMENT
            | DECODE
            | INVALID_CONFIG
            | INVALID_NETNS
            | TRY_AGAIN_LATER
    )
}

/// The per-operation log line and the metrics update.
fn observe(
    name: &str,
    command: &str,
    info: &OpInfo,
    duration: std::time::Duration,
    failure: Option<&Error>,
) {
    let cmd = match info.command {
        Some(c) => c.as_str(),
        None => command,
    };
    let level = match (info.command, failure) {
        (_, Some(e)) if is_input_error(e.code()) => log::Level::Warn,
        (_, Some(_)) => log::Level::Error,
        (Some(Command::Version), None) => log::Level::Debug,
        _ => log::Level::Info,
    };
    if crate::logging::enabled(level) {
        let ips = info.ips.join(",");
        let ms = format!("{:.3}", duration.as_secs_f64() * 1000.0);
        let mut fields: Vec<(&str, &str)> = vec![
            ("plugin", name),
            ("command", cmd),
            ("container_id", &info.container_id),
            ("network", &info.network),
            ("ifname", &info.ifname),
            ("netns", &info.netns),
            ("ips", &ips),
            ("duration_ms", &ms),
        ];
        let (code, msg, details);
        match failure {
            None => fields.push(("result", "ok")),
            Some(e) => {
                code = e.code().to_string();
                msg = e.to_string();
                details = e.to_json("").details;
                fields.extend([("result", "error"), ("code", &code), ("error", &msg)]);
                if !details.is_empty() {
                    fields.push(("details", &details));
                }
            }
        }
        crate::logging::operation(level, &fields);
    }
    // VERSION reads no config and changes nothing: not counted.
    if let (Some(file), Some(c)) = (&info.metrics_file, info.command) {
        if c != Command::Version {
            crate::metrics::update(
                Path::new(file),
                &crate::metrics::Observation {
                    plugin: name,
                    command: c.as_str(),
                    duration,
                    error_code: failure.map(Error::code),
                },
            );
        }
    }
}

/// A string key of the config, if present; anything else present is ignored with a warning.
fn string_key<'a>(conf: &'a Value, key: &str) -> Option<&'a str> {
    match crate::gojson::get(conf, key)? {
        Value::String(s) => Some(s),
        Value::Null => None,
        other => {
            log::warn!("ignoring {key}: expected a string, got {other}");
            None
        }
    }
}

fn write_json(out: &mut dyn Write, v: &Value) -> std::io::Result<()> {
    let mut text = serde_json::to_string_pretty(v).map_err(std::io::Error::other)?;
    // One write: a runtime reading the pipe gets the answer whole.
    text.push('\n');
    out.write_all(text.as_bytes())?;
    out.flush()
}

fn dispatch_inner(
    plugin: &dyn Plugin,
    command: &str,
    var: &dyn Fn(&str) -> String,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    version_for_errors: &mut Version,
    info: &mut OpInfo,
) -> Result<Option<Value>> {
    let cmd = Command::parse(command).ok_or_else(|| {
        Error::env(
            format!("unknown CNI_COMMAND: {command}"),
            "expected ADD, DEL, CHECK, GC, STATUS or VERSION",
        )
    })?;
    info.command = Some(cmd);
    if matches!(cmd, Command::Add | Command::Del | Command::Check) {
        info.container_id = var("CNI_CONTAINERID");
        info.ifname = var("CNI_IFNAME");
        info.netns = var("CNI_NETNS");
    }
    if cmd == Command::Version {
        return Ok(Some(version_answer(plugin)));
    }
    let missing: Vec<&str> = required_vars(cmd)
        .iter()
        .copied()
        .filter(|k| var(k).is_empty())
        .collect();
    if !missing.is_empty() {
        return Err(Error::env(
            format!("required env variables [{}] missing", missing.join(" ")),
            format!("{} needs {}", cmd.as_str(), required_vars(cmd).join(", ")),
        ));
    }

    // A network config is a few KiB: one read in the usual case.
    let mut raw = Vec::with_capacity(16 * 1024);
    stdin
        .read_to_end(&mut raw)
        .map_err(|e| Error::io("reading the network config from stdin", e))?;
    let conf: Value = serde_json::from_slice(&raw)
        .map_err(|e| Error::Decode(format!("decoding version from network config: {e}")))?;
    if !conf.is_object() {
        return Err(Error::Decode(
            "decoding version from network config: not a JSON object".into(),
        ));
    }
    // Logging and metrics settings first, so that every later failure is seen where asked.
    crate::logging::configure(
        string_key(&conf, "logLevel"),
        string_key(&conf, "logFile"),
        env,
    );
    if info.metrics_file.is_none() {
        info.metrics_file = string_key(&conf, "metricsFile")
            .filter(|f| !f.is_empty())
            .map(str::to_string);
    }
    if let Some(Value::String(n)) = crate::gojson::get(&conf, "name") {
        info.network = n.clone();
    }
    let version_str = match crate::gojson::get(&conf, "cniVersion") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(Error::Decode(format!(
                "decoding version from network config: cniVersion must be a string, got {other}"
            )));
        }
    };
    let version = Version::parse(version_str)?;
    *version_for_errors = version;
    if !plugin.supported_versions().contains(&version) {
        return Err(Error::version(
            "incompatible CNI versions",
            format!(
                "config is \"{version}\", plugin supports {:?}",
                plugin
                    .supported_versions()
                    .iter()
                    .map(|v| v.as_str())
                    .collect::<Vec<_>>()
            ),
        ));
    }
    match cmd {
        Command::Check if !version.has_check() => {
            return Err(Error::version(
                "config version does not allow CHECK",
                format!("CHECK needs cniVersion 0.4.0 or later, config is {version}"),
            ));
        }
        Command::Gc | Command::Status if !version.has_gc_and_status() => {
            return Err(Error::version(
                format!("config version does not allow {}", cmd.as_str()),
                format!(
                    "{} needs cniVersion 1.1.0 or later, config is {version}",
                    cmd.as_str()
                ),
            ));
        }
        _ => {}
    }
    validate_network_name(
        crate::gojson::get(&conf, "name")
            .and_then(Value::as_str)
            .unwrap_or(""),
    )?;

    let args = CmdArgs {
        command: cmd,
        container_id: var("CNI_CONTAINERID"),
        netns: var("CNI_NETNS"),
        ifname: var("CNI_IFNAME"),
        args: var("CNI_ARGS"),
        path: var("CNI_PATH"),
        stdin: raw,
        conf,
        version,
    };
    if matches!(cmd, Command::Add | Command::Del | Command::Check) {
        validate_container_id(&args.container_id).map_err(|e| e.context("CNI_CONTAINERID"))?;
        validate_ifname(&args.ifname).map_err(|e| e.context("CNI_IFNAME"))?;
        let override_set = matches!(
            var("CNI_NETNS_OVERRIDE").to_ascii_lowercase().as_str(),
            "1" | "true"
        );
        if !override_set && !args.netns.is_empty() && crate::netns::is_current_netns(&args.netns) {
            return Err(Error::InvalidNetns(format!(
                "CNI_NETNS {} is the plugin's own network namespace (set CNI_NETNS_OVERRIDE=1 if that is intended)",
                args.netns
            )));
        }
    }

    if matches!(cmd, Command::Del | Command::Check) {
        if let Ok(Some(prev)) = args.prev_result() {
            info.ips = prev.ips.iter().map(|ip| ip.address.to_string()).collect();
        }
    }
    match cmd {
        Command::Add => {
            let result = plugin.add(&args)?;
            info.ips = result.ips.iter().map(|ip| ip.address.to_string()).collect();
            Ok(Some(result.to_json(version)?))
        }
        Command::Del => plugin.del(&args).map(|()| None),
        Command::Check => plugin.check(&args).map(|()| None),
        Command::Gc => plugin.gc(&args).map(|()| None),
        Command::Status => plugin.status(&args).map(|()| None),
        Command::Version => Ok(Some(version_answer(plugin))),
    }
}

fn version_answer(plugin: &dyn Plugin) -> Value {
    serde_json::json!({
        "cniVersion": Version::LATEST.as_str(),
        "supportedVersions": plugin.supported_versions().iter().map(|v| v.as_str()).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Echo;
    impl Plugin for Echo {
        fn about(&self) -> String {
            "echo test plugin".into()
        }
        fn add(&self, args: &CmdArgs) -> Result<CniResult> {
            Ok(args.prev_result()?.unwrap_or_default())
        }
        fn del(&self, _: &CmdArgs) -> Result<()> {
            Ok(())
        }
        fn check(&self, _: &CmdArgs) -> Result<()> {
            Err(Error::config("check failed on purpose"))
        }
    }

    fn run_with(vars: &[(&str, &str)], stdin: &str) -> (i32, Value, String) {
        let mut map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // The operation lines go to the process's stderr: keep the test output quiet.
        map.entry("CNI_LOG_LEVEL".into()).or_insert("off".into());
        let env = move |k: &str| map.get(k).cloned();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = dispatch(&Echo, &env, &mut stdin.as_bytes(), &mut out, &mut err);
        let v = serde_json::from_slice(&out).unwrap_or(Value::Null);
        (code, v, String::from_utf8_lossy(&err).into_owned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/does-not-matter"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    #[test]
    fn about_without_command() {
        let (code, out, err) = run_with(&[], "");
        assert_eq!((code, out), (0, Value::Null));
        assert!(err.contains("echo test plugin") && err.contains("1.1.0"));
    }

    #[test]
    fn version_answer_is_the_library_version() {
        let (code, out, _) = run_with(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.3.1"}"#);
        assert_eq!(code, 0);
        assert_eq!(out["cniVersion"], "1.1.0");
        assert_eq!(out["supportedVersions"].as_array().unwrap().len(), 7);
    }

    #[test]
    fn add_prints_in_the_config_version() {
        let conf = r#"{"cniVersion":"0.3.1","name":"n","type":"echo",
            "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}}"#;
        let (code, out, _) = run_with(ADD, conf);
        assert_eq!(code, 0);
        assert_eq!(out["cniVersion"], "0.3.1");
        assert_eq!(out["ips"][0]["version"], "4");
    }

    #[test]
    fn env_and_input_errors_have_their_codes() {
        let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"echo"}"#;
        let (code, out, _) = run_with(&[("CNI_COMMAND", "ADD")], conf);
        assert_eq!((code, out["code"].as_u64()), (1, Some(4)));
        assert!(out["msg"].as_str().unwrap().contains("CNI_CONTAINERID"));
        let (_, out, _) = run_with(&[("CNI_COMMAND", "BOGUS")], conf);
        assert_eq!(out["code"], 4);
        let (_, out, _) = run_with(ADD, "{not json");
        assert_eq!(out["code"], 6);
        let (_, out, _) = run_with(ADD, r#"{"cniVersion":"7.0.0","name":"n"}"#);
        assert_eq!(out["code"], 1);
        let (_, out, _) = run_with(ADD, r#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(out["code"], 7);
        let (_, out, _) = run_with(ADD, r#"{"cniVersion":"1.0.0","name":"../x"}"#);
        assert_eq!(out["code"], 7);
        let mut bad_id = ADD.to_vec();
        bad_id[1] = ("CNI_CONTAINERID", "../../etc");
        let (_, out, _) = run_with(&bad_id, conf);
        assert_eq!(out["code"], 4);
        let mut bad_if = ADD.to_vec();
        bad_if[3] = ("CNI_IFNAME", "much-too-long-ifname");
        let (_, out, _) = run_with(&bad_if, conf);
        assert_eq!(out["code"], 4);
    }

    struct LogsFromAThread;
    impl Plugin for LogsFromAThread {
        fn about(&self) -> String {
            "logs from a thread".into()
        }
        fn add(&self, _: &CmdArgs) -> Result<CniResult> {
            // As NetNs::run does: the main thread waits while another one logs.
            std::thread::scope(|s| s.spawn(|| log::error!("from a worker thread")).join())
                .map_err(|_| Error::internal("worker panicked"))?;
            Ok(CniResult::default())
        }
        fn del(&self, _: &CmdArgs) -> Result<()> {
            Ok(())
        }
        fn check(&self, _: &CmdArgs) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_thread_can_log_while_the_main_thread_waits() {
        crate::logging::init();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("l.log");
        let env = |k: &str| match k {
            "CNI_LOG_FILE" => Some(log.to_string_lossy().into_owned()),
            _ => ADD
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string()),
        };
        let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = dispatch(
            &LogsFromAThread,
            &env,
            &mut conf.as_bytes(),
            &mut out,
            &mut err,
        );
        assert_eq!(code, 0);
    }

    #[test]
    fn operations_are_counted_in_the_metrics_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.prom");
        let conf = serde_json::json!({"cniVersion":"1.0.0","name":"n","type":"echo",
            "metricsFile": file})
        .to_string();
        let mut check = ADD.to_vec();
        check[0] = ("CNI_COMMAND", "CHECK");
        let mut del = ADD.to_vec();
        del[0] = ("CNI_COMMAND", "DEL");
        assert_eq!(run_with(ADD, &conf).0, 0);
        assert_eq!(run_with(&check, &conf).0, 1);
        assert_eq!(run_with(&del, &conf).0, 0);
        assert_eq!(run_with(&del, &conf).0, 0);
        // Before the config is read only the environment can name the file.
        let env_only = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_METRICS_FILE", file.to_str().unwrap()),
        ];
        assert_eq!(run_with(&env_only, &conf).0, 1);
        assert_eq!(run_with(&[("CNI_COMMAND", "VERSION")], &conf).0, 0);
        let m = crate::metrics::Metrics::parse(&std::fs::read_to_string(&file).unwrap());
        let name = program_name();
        let n = |c: &str| m.operations.get(&(name.clone(), c.to_string())).copied();
        assert_eq!(
            (n("ADD"), n("CHECK"), n("DEL")),
            (Some(2), Some(1), Some(2))
        );
        assert_eq!(n("VERSION"), None);
        let errors: Vec<_> = m
            .errors
            .iter()
            .map(|((_, c, code), n)| (c.as_str(), code.as_str(), *n))
            .collect();
        assert_eq!(errors, [("ADD", "4", 1), ("CHECK", "7", 1)]);
    }

    #[test]
    fn version_gates() {
        let mut check = ADD.to_vec();
        check[0] = ("CNI_COMMAND", "CHECK");
        let (_, out, _) = run_with(&check, r#"{"cniVersion":"0.3.1","name":"n"}"#);
        assert_eq!(out["code"], 1);
        let (code, out, _) = run_with(&check, r#"{"cniVersion":"0.4.0","name":"n"}"#);
        assert_eq!(
            (code, out["code"].as_u64()),
            (1, Some(7)),
            "reaches the plugin"
        );
        let gc = [("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")];
        let (_, out, _) = run_with(&gc, r#"{"cniVersion":"1.0.0","name":"n"}"#);
        assert_eq!(out["code"], 1);
        let (code, _, _) = run_with(&gc, r#"{"cniVersion":"1.1.0","name":"n"}"#);
        assert_eq!(code, 0);
    }
}
