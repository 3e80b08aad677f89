//! The release binaries as an installer ships them: statically linked (each runs alone in an
//! empty root), and easy to try by hand from a shell (the about text without CNI_COMMAND; a
//! missing or bad CNI_ variable is a code-4 error naming it).
//!
//! The static binaries come from `scripts/build-static.sh` (scripts/test.sh runs it first).
//! A missing build skips the empty-root test with the command to run, except in CI (`CI` or
//! `CNI_REQUIRE_STATIC` set; scripts/test.sh sets the latter), where it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use testkit::{Run, TestNs, bin, bin_dir, have_root, run_in};

const ALL: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// Every plugin an installer puts in /opt/cni/bin, with the spec versions it speaks.
const PLUGINS: &[(&str, &[&str])] = &[
    ("bridge", ALL),
    ("host-local", ALL),
    ("portmap", ALL),
    ("bandwidth", &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]),
    ("firewall", &["0.4.0", "1.0.0", "1.1.0"]),
    ("tuning", ALL),
    ("loopback", ALL),
];

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where scripts/build-static.sh puts the binaries: `CNI_STATIC_BIN_DIR`, else
/// `target/<arch>-unknown-linux-gnu/release` beside this test's own profile directory.
fn static_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CNI_STATIC_BIN_DIR") {
        return PathBuf::from(d);
    }
    let target = bin_dir().parent().unwrap().to_path_buf();
    target
        .join(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
        .join("release")
}

/// The `chroot` program, found on this process's PATH (the child's environment is empty).
fn chroot() -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("chroot"))
        .find(|p| p.is_file())
        .expect("chroot (coreutils) is not installed")
}

/// Runs `program` (a path inside `root`) chrooted into `root`, with only `env`.
fn run_chrooted(root: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(chroot())
        .arg(root)
        .arg(program)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running chroot");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn versions_of(answer: &Value) -> Vec<String> {
    answer["supportedVersions"]
        .as_array()
        .unwrap_or_else(|| panic!("no supportedVersions in {answer}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn static_binaries_run_alone_in_an_empty_root() {
    if !have_root() {
        return;
    }
    let dir = static_dir();
    let names: Vec<&str> = PLUGINS.iter().map(|(n, _)| *n).chain(["cnirun"]).collect();
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !dir.join(n).is_file())
        .collect();
    if !missing.is_empty() {
        let msg = format!(
            "static binaries {missing:?} are missing from {}: build them with scripts/build-static.sh \
             (scripts/test.sh does)",
            dir.display()
        );
        if std::env::var_os("CI").is_some() || std::env::var_os("CNI_REQUIRE_STATIC").is_some() {
            panic!("{msg}");
        }
        eprintln!("skipping: {msg}");
        return;
    }
    for (name, versions) in PLUGINS {
        // An empty directory holding only the binary: no loader, no libc, no /proc.
        let root = tempfile::tempdir().unwrap();
        std::fs::copy(dir.join(name), root.path().join(name)).unwrap();
        let r = run_chrooted(
            root.path(),
            &format!("/{name}"),
            &[],
            &[("CNI_COMMAND", "VERSION")],
        );
        assert_eq!(
            r.code, 0,
            "{name} does not run alone in an empty root (is it dynamically linked? \
             scripts/build-static.sh checks): stdout={} stderr={}",
            r.stdout, r.stderr
        );
        let answer = r.json();
        assert_eq!(answer["cniVersion"], "1.1.0", "{name}: {answer}");
        assert_eq!(versions_of(&answer), *versions, "{name}");
        // The about text works there too.
        let about = run_chrooted(root.path(), &format!("/{name}"), &[], &[]);
        assert_eq!(about.code, 0, "{name}: {}", about.stderr);
        assert!(
            about.stderr.contains(&format!("{name} plugin v{VERSION}")),
            "{name}: {}",
            about.stderr
        );
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("cnirun"), root.path().join("cnirun")).unwrap();
    let r = run_chrooted(root.path(), "/cnirun", &["--version"], &[]);
    assert_eq!(r.code, 0, "cnirun in an empty root: {}", r.stderr);
    assert_eq!(r.stdout.trim(), format!("cnirun {VERSION}"));
}

/// The proof that the empty-root test can fail: a dynamic binary (this test's own plugin
/// build from `cargo build`) does not start there.
#[test]
fn a_dynamic_binary_fails_in_an_empty_root() {
    if !have_root() {
        return;
    }
    let dynamic = bin("loopback");
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(&dynamic, root.path().join("loopback")).unwrap();
    let r = run_chrooted(root.path(), "/loopback", &[], &[("CNI_COMMAND", "VERSION")]);
    assert_ne!(r.code, 0, "a dynamic binary ran without its loader?");
}

/// Without CNI_COMMAND every plugin says what it is on stderr, prints nothing on stdout and
/// exits 0; the versions it lists are those VERSION answers.
#[test]
fn about_text_names_the_plugin_its_version_and_spec_versions() {
    for (name, versions) in PLUGINS {
        let r = testkit::run(&bin(name), &[], &[], "");
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        assert_eq!(r.stdout, "", "{name}: stdout stays empty");
        let mut lines = r.stderr.lines();
        let first = lines.next().unwrap_or_default();
        assert!(
            first.starts_with(&format!("{name} plugin v{VERSION}")),
            "{name}: about line {first:?}"
        );
        let listed = format!("CNI protocol versions supported: {}", versions.join(", "));
        assert!(
            r.stderr.lines().any(|l| l == listed),
            "{name}: {:?} lacks {listed:?}",
            r.stderr
        );
        let answer = testkit::run(&bin(name), &[], &[("CNI_COMMAND", "VERSION")], "")
            .ok()
            .json();
        assert_eq!(versions_of(&answer), *versions, "{name}");
    }
}

/// A missing or bad CNI_ variable: code 4, and the error says which variable. Nothing is
/// touched (each run happens in a namespace of its own anyway).
#[test]
fn a_missing_or_bad_variable_is_a_code_4_error_naming_it() {
    if !have_root() {
        return;
    }
    let host = TestNs::new();
    let container = TestNs::new();
    let netns = container.path();
    for (name, versions) in PLUGINS {
        let version = versions.last().unwrap();
        let conf = json!({"cniVersion": version, "name": "rel", "type": name}).to_string();
        let full = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        let without = |var: &str| -> Vec<(&str, &str)> {
            full.iter().copied().filter(|(k, _)| *k != var).collect()
        };
        let with = |var: &'static str, value: &'static str| -> Vec<(&str, &str)> {
            full.iter()
                .map(|&(k, v)| if k == var { (k, value) } else { (k, v) })
                .collect()
        };
        // (environment, the variable at fault, how the error may name it)
        type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
        let cases: Vec<Case> = vec![
            (without("CNI_NETNS"), "CNI_NETNS", "CNI_NETNS"),
            (
                without("CNI_CONTAINERID"),
                "CNI_CONTAINERID",
                "CNI_CONTAINERID",
            ),
            (without("CNI_IFNAME"), "CNI_IFNAME", "CNI_IFNAME"),
            (without("CNI_PATH"), "CNI_PATH", "CNI_PATH"),
            (with("CNI_COMMAND", "BOGUS"), "CNI_COMMAND", "CNI_COMMAND"),
            // A bad value is named in skel's words until skel prefixes the variable's name.
            (
                with("CNI_IFNAME", "eth0/../x"),
                "CNI_IFNAME",
                "interface name",
            ),
            (
                with("CNI_IFNAME", "much-too-long-name"),
                "CNI_IFNAME",
                "interface name",
            ),
            (
                with("CNI_CONTAINERID", "../etc"),
                "CNI_CONTAINERID",
                "containerID",
            ),
        ];
        for (env, var, alias) in cases {
            let r = run_in(&host, &bin(name), &env, &conf);
            assert_eq!(r.err_code(), 4, "{name}, {var}: {}", r.stdout);
            let said = format!("{} {}", r.json()["msg"], r.json()["details"]);
            assert!(
                said.contains(var) && said.contains(alias),
                "{name}: the error does not name {var} and say what is wrong: {said}"
            );
        }
    }
}
