//! Running one plugin binary: the CNI environment on top of the runner's own, the config on
//! stdin, the result (or error object) from stdout, stderr passed through, and a time limit.
//!
//! The time limit needs no polling: a helper thread owns the child and sends its output over
//! a channel when it exits; the caller waits on the channel with `recv_timeout`. The plugin
//! runs in its own process group so that, on timeout, the whole group (a shell script and its
//! `sleep`, an IPAM plugin it delegated to) is killed and the stdout pipe closes.

use crate::error::{Error, ErrorJson, Result};
use crate::skel::Command;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The `CNI_*` variables of one invocation (empty values are passed as empty variables).
#[derive(Debug, Clone, Default)]
pub struct PluginEnv {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// CNI_ARGS, already joined (`K=V;K2=V2`).
    pub args: String,
    /// CNI_PATH, already joined with `:`.
    pub path: String,
}

/// How long to wait for the killed plugin's process group to be reaped before giving up on it.
const REAP_GRACE: Duration = Duration::from_secs(2);

/// How often to retry a spawn that failed with ETXTBSY (the binary was still open for writing
/// in some process: a freshly installed plugin, as libcni also retries).
const SPAWN_ATTEMPTS: u32 = 5;

fn spawn(cmd: &mut std::process::Command, bin: &Path) -> Result<std::process::Child> {
    let mut attempt = 1;
    loop {
        match cmd.spawn() {
            Ok(child) => return Ok(child),
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < SPAWN_ATTEMPTS => {
                std::thread::sleep(Duration::from_millis(20 * u64::from(attempt)));
                attempt += 1;
            }
            Err(e) => return Err(Error::io(format!("running {}", bin.display()), e)),
        }
    }
}

/// Runs `bin` for `command` with `stdin`. Returns stdout when the plugin exits 0; its error
/// object (code kept) when it fails; a timeout error after killing it when `timeout` passes.
pub fn run_plugin(
    bin: &Path,
    command: Command,
    env: &PluginEnv,
    stdin: &[u8],
    timeout: Option<Duration>,
) -> Result<Vec<u8>> {
    let mut cmd = std::process::Command::new(bin);
    cmd.env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", &env.container_id)
        .env("CNI_NETNS", &env.netns)
        .env("CNI_IFNAME", &env.ifname)
        .env("CNI_ARGS", &env.args)
        .env("CNI_PATH", &env.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    let mut child = spawn(&mut cmd, bin)?;
    let pid = child.id();

    // stdin from its own thread: a plugin may write a lot before it reads, and one that
    // never reads must not block us (the time limit still applies).
    if let Some(mut pipe) = child.stdin.take() {
        let data = stdin.to_vec();
        std::thread::Builder::new()
            .spawn(move || {
                // A plugin that exits without reading closes the pipe: not an error here.
                let _ = pipe.write_all(&data);
            })
            .map_err(|e| Error::TryAgainLater(format!("cannot start a thread: {e}")))?;
    }
    let (tx, rx) = mpsc::channel::<std::io::Result<Output>>();
    let waiter = std::thread::Builder::new().spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    if let Err(e) = waiter {
        kill_group(pid);
        return Err(Error::TryAgainLater(format!("cannot start a thread: {e}")));
    }
    let received = match timeout {
        Some(t) => rx.recv_timeout(t),
        None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
    };
    let name = bin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = match received {
        Ok(out) => out.map_err(|e| Error::io(format!("waiting for {}", bin.display()), e))?,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            kill_group(pid);
            // Reap it (the helper thread waits for it), but do not hang on a process that
            // escaped the group and holds stdout open.
            let _ = rx.recv_timeout(REAP_GRACE);
            let secs = timeout.map(|t| t.as_secs_f64()).unwrap_or_default();
            return Err(Error::TryAgainLater(format!(
                "plugin {name} {} timed out after {secs}s and was killed",
                command.as_str()
            )));
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            return Err(Error::internal(format!(
                "lost track of plugin {name} (pid {pid})"
            )));
        }
    };
    if out.status.success() {
        return Ok(out.stdout);
    }
    match serde_json::from_slice::<ErrorJson>(&out.stdout) {
        Ok(e) => Err(Error::Delegated(e)),
        Err(_) => {
            let how = match out.status.code() {
                Some(c) => format!("exit status {c}"),
                None => "killed by a signal".to_string(),
            };
            let text = String::from_utf8_lossy(&out.stdout);
            let text = text.trim();
            Err(Error::internal(format!(
                "plugin {name} {} failed ({how}) with no error object on stdout{}",
                command.as_str(),
                if text.is_empty() {
                    String::new()
                } else {
                    format!(": {text}")
                }
            )))
        }
    }
}

/// SIGKILL to the plugin's process group (its pgid is its pid: it was spawned with
/// `process_group(0)`). The helper thread has not reaped it yet (it would have sent its
/// output), so the id cannot have been reused.
fn kill_group(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(raw),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn passes_env_and_stdin_and_returns_stdout() {
        let d = tempfile::tempdir().unwrap();
        let p = script(
            d.path(),
            "echo",
            r#"printf '%s|%s|%s|%s|%s|%s|' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_ARGS" "$CNI_PATH"; cat"#,
        );
        let env = PluginEnv {
            container_id: "c".into(),
            netns: "/n".into(),
            ifname: "eth0".into(),
            args: "A=1;B=2".into(),
            path: "/x:/y".into(),
        };
        let out = run_plugin(&p, Command::Add, &env, b"{}", None).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ADD|c|/n|eth0|A=1;B=2|/x:/y|{}"
        );
    }

    #[test]
    fn error_object_keeps_its_code() {
        let d = tempfile::tempdir().unwrap();
        let p = script(
            d.path(),
            "fail",
            r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"busy","details":"d"}'; exit 1"#,
        );
        let e = run_plugin(&p, Command::Add, &PluginEnv::default(), b"", None).unwrap_err();
        assert_eq!((e.code(), e.to_string()), (11, "busy".to_string()));
        let p = script(d.path(), "garbage", "echo oops; exit 3");
        let e = run_plugin(&p, Command::Del, &PluginEnv::default(), b"", None).unwrap_err();
        assert_eq!(e.code(), 999);
        assert!(e.to_string().contains("exit status 3") && e.to_string().contains("oops"));
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let d = tempfile::tempdir().unwrap();
        let p = script(d.path(), "hang", "sleep 30; echo never");
        let start = Instant::now();
        let e = run_plugin(
            &p,
            Command::Add,
            &PluginEnv::default(),
            b"",
            Some(Duration::from_millis(300)),
        )
        .unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        assert!(e.to_string().contains("timed out"), "{e}");
    }
}
