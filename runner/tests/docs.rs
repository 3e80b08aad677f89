//! The documentation's examples are run here, so that docs/ and the README cannot drift from
//! the plugins:
//!
//! - every ```json block parses; every one that is a network list (`plugins`) or a single
//!   plugin configuration (`type`) is run as an admin would run it with `cnirun`: two
//!   containers join (with the capability arguments the list declares), exchange TCP over each
//!   address family, pass CHECK, and leave nothing behind after DEL;
//! - every `scripts/...` and `conflists/...` path and every relative link (with its anchor)
//!   exists, and every `cnirun` command line in a shell block uses flags `cnirun` has;
//! - every message the troubleshooting page quotes is produced by the scenario it describes
//!   (plugin not found, exhausted pool with STATUS 50, lock timeout, stale allocations after
//!   a "reboot" freed by `cnirun gc`, logs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use testkit::{Run, TestNs, have_root, run_args_in, tcp_exchange, tcp_via};

/// Plugins documented here whose binary is being written on another branch: their examples
/// are skipped (with a note) while the binary is missing. Once merged, they must run.
const PENDING: &[&str] = &["loopback"];

/// The chained plugins: a single-plugin snippet of one of these runs after [`head`].
const CHAINED: &[&str] = &["portmap", "bandwidth", "firewall", "tuning"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// README.md, docs/**/*.md and plugins/*/README.md, relative to the repository.
fn doc_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let root = repo();
    let mut files = vec![root.join("README.md")];
    walk(&root.join("docs"), &mut files);
    for e in std::fs::read_dir(root.join("plugins")).unwrap() {
        let p = e.unwrap().path().join("README.md");
        if p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    assert!(files.len() > 10, "docs/ is missing: {files:?}");
    files
}

fn rel(p: &Path) -> String {
    p.strip_prefix(repo()).unwrap_or(p).display().to_string()
}

/// A fenced code block of a Markdown file.
struct Block {
    file: PathBuf,
    line: usize,
    lang: String,
    text: String,
}

impl Block {
    fn place(&self) -> String {
        format!("{}:{}", rel(&self.file), self.line)
    }
}

fn blocks_of(file: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = Vec::new();
    let mut open: Option<(usize, String, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        match &mut open {
            None => {
                if let Some(info) = t.strip_prefix("```") {
                    open = Some((i + 1, info.trim().to_string(), String::new()));
                }
            }
            Some((start, lang, body)) => {
                if t.trim_end() == "```" {
                    out.push(Block {
                        file: file.to_path_buf(),
                        line: *start,
                        lang: std::mem::take(lang),
                        text: std::mem::take(body),
                    });
                    open = None;
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "{}: unclosed code block", rel(file));
    out
}

fn all_blocks() -> Vec<Block> {
    doc_files().iter().flat_map(|f| blocks_of(f)).collect()
}

fn json_blocks() -> Vec<(Block, Value)> {
    all_blocks()
        .into_iter()
        .filter(|b| b.lang == "json")
        .map(|b| {
            let v: Value = serde_json::from_str(&b.text)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}):\n{}", b.place(), b.text));
            (b, v)
        })
        .collect()
}

/// A configuration example: a network list, or a single plugin's configuration.
fn is_config(v: &Value) -> bool {
    v.get("plugins").is_some_and(Value::is_array) || v.get("type").is_some_and(Value::is_string)
}

// ---------------------------------------------------------------------------------------
// Running a configuration example

/// The bridge + host-local head a chained plugin's snippet runs after.
fn head() -> Value {
    json!({
        "type": "bridge", "bridge": "cni-dochead", "isGateway": true, "ipMasq": true,
        "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.97.0.0/24" }]],
                  "routes": [{ "dst": "0.0.0.0/0" }] }
    })
}

/// Turns an example into the network list to run.
fn as_list(v: &Value) -> Result<Value, String> {
    if v.get("plugins").is_some() {
        return Ok(v.clone());
    }
    let mut conf = v.clone();
    let obj = conf.as_object_mut().unwrap();
    let version = obj.remove("cniVersion").unwrap_or(json!("1.0.0"));
    let name = obj.remove("name").unwrap_or(json!("docs-net"));
    let ty = obj["type"].as_str().unwrap().to_string();
    let plugins = match ty.as_str() {
        "bridge" | "loopback" => vec![conf],
        "host-local" => {
            let mut h = head();
            h["ipam"] = conf;
            vec![h]
        }
        t if CHAINED.contains(&t) => vec![head(), conf],
        other => return Err(format!("no way to run an example of type {other:?}")),
    };
    Ok(json!({ "cniVersion": version, "name": name, "plugins": plugins }))
}

fn version_triple(v: &str) -> (u32, u32, u32) {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

/// The version `cnirun` (and libcni 1.2+) sends: the highest of `cniVersion` and `cniVersions`.
fn list_version(list: &Value) -> (u32, u32, u32) {
    let mut all: Vec<&str> = list["cniVersion"].as_str().into_iter().collect();
    if let Some(vs) = list["cniVersions"].as_array() {
        all.extend(vs.iter().filter_map(Value::as_str));
    }
    all.into_iter()
        .map(version_triple)
        .max()
        .unwrap_or((0, 1, 0))
}

fn plugins_of(list: &Value) -> Vec<Value> {
    list["plugins"].as_array().cloned().unwrap_or_default()
}

fn has_capability(list: &Value, cap: &str) -> bool {
    plugins_of(list)
        .iter()
        .any(|p| p["capabilities"][cap] == true)
}

/// Points every file-system path of the list (IPAM and tuning `dataDir`) into `tmp`.
fn redirect_state(list: &mut Value, tmp: &Path) {
    for p in list["plugins"].as_array_mut().unwrap() {
        if p.get("ipam").is_some_and(|i| i.get("type").is_some()) {
            p["ipam"]["dataDir"] = json!(tmp.join("ipam").to_str().unwrap());
        }
        if p["type"] == "tuning" {
            p["dataDir"] = json!(tmp.join("tuning").to_str().unwrap());
        }
    }
}

struct Cnirun<'a> {
    host: &'a TestNs,
    conflist: PathBuf,
    cache: PathBuf,
}

impl Cnirun<'_> {
    fn run(&self, verb: &str, extra: &[&str], env: &[(&str, &str)]) -> Run {
        let bin_dir = testkit::bin_dir();
        let mut args = vec![
            verb,
            "--conflist",
            self.conflist.to_str().unwrap(),
            "--cache-dir",
            self.cache.to_str().unwrap(),
            "--cni-path",
            bin_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run_args_in(self.host, &testkit::bin("cnirun"), &args, env, "")
    }
}

/// Runs one configuration example end to end; `Ok(false)` when it was skipped (pending).
fn run_example(place: &str, example: &Value) -> Result<bool, String> {
    let mut list = as_list(example)?;
    for p in plugins_of(&list) {
        let mut types = vec![p["type"].as_str().unwrap_or_default().to_string()];
        if let Some(t) = p["ipam"]["type"].as_str() {
            types.push(t.to_string());
        }
        for t in types {
            if !testkit::bin_dir().join(&t).is_file() {
                if PENDING.contains(&t.as_str()) {
                    eprintln!("{place}: skipped until the {t} binary is merged");
                    return Ok(false);
                }
                return Err(format!("{place}: no plugin binary {t:?}"));
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    redirect_state(&mut list, tmp.path());
    let conflist = tmp.path().join("example.conflist");
    std::fs::write(&conflist, list.to_string()).unwrap();
    let host = TestNs::new();
    let cnirun = Cnirun {
        host: &host,
        conflist,
        cache: tmp.path().join("cache"),
    };
    let loopback_only = plugins_of(&list).iter().all(|p| p["type"] == "loopback");
    let ifname = if loopback_only { "lo" } else { "eth0" };
    let publishes = has_capability(&list, "portMappings");
    let shaped = has_capability(&list, "bandwidth");
    let mac = has_capability(&list, "mac");
    let isolated = plugins_of(&list)
        .iter()
        .any(|p| p["ingressPolicy"] == "isolated");
    let ctrs = [
        (
            TestNs::new(),
            "doc-one",
            "18101:8080/tcp",
            "02:00:5e:00:d0:01",
        ),
        (
            TestNs::new(),
            "doc-two",
            "18102:8080/tcp",
            "02:00:5e:00:d0:02",
        ),
    ];
    let mut results = Vec::new();
    for (ns, id, port, mac_addr) in &ctrs {
        if loopback_only {
            ns.ip(&["link", "set", "lo", "down"]);
        }
        let mut args = vec![
            "--netns",
            ns.path(),
            "--container-id",
            id,
            "--ifname",
            ifname,
        ];
        if publishes {
            args.extend(["--port-mapping", port]);
        }
        if shaped {
            args.extend([
                "--bandwidth",
                "ingressRate=100000000,ingressBurst=1000000,egressRate=100000000,egressBurst=1000000",
            ]);
        }
        if mac {
            args.extend(["--mac", mac_addr]);
        }
        let r = cnirun.run("add", &args, &[]);
        if r.code != 0 {
            return Err(format!("{place}: add {id}: {} {}", r.stdout, r.stderr));
        }
        let result = r.json();
        if mac {
            let link = ns.ip_json(&["link", "show", ifname]);
            if link[0]["address"] != *mac_addr {
                return Err(format!("{place}: {id}: MAC is {}", link[0]["address"]));
            }
        }
        results.push(result);
    }
    let (a1, a2) = (
        testkit::result_addresses(&results[0]),
        testkit::result_addresses(&results[1]),
    );
    if loopback_only {
        for (ns, id, ..) in &ctrs {
            let lo = ns.ip_json(&["link", "show", "lo"]);
            let flags = lo[0]["flags"].to_string();
            if !flags.contains("\"UP\"") {
                return Err(format!("{place}: {id}: lo is not up: {flags}"));
            }
        }
        if !a1.contains(&"127.0.0.1".parse::<IpAddr>().unwrap()) {
            return Err(format!("{place}: no 127.0.0.1 in {}", results[0]));
        }
    } else {
        if a1.is_empty() {
            return Err(format!("{place}: no address handed out: {}", results[0]));
        }
        for (i, (x, y)) in a1.iter().zip(&a2).enumerate() {
            let addr = SocketAddr::new(*x, 7100 + i as u16);
            let res = tcp_exchange(&ctrs[0].0, &ctrs[1].0, addr);
            match (isolated, res) {
                (false, Err(e)) => return Err(format!("{place}: {y} -> {x}: {e}")),
                (true, Ok(())) => {
                    return Err(format!("{place}: {y} -> {x} passed an isolated policy"));
                }
                _ => {}
            }
            if isolated {
                // The host (the gateway) still reaches an isolated container.
                tcp_exchange(&ctrs[0].0, &host, SocketAddr::new(*x, 7200 + i as u16))
                    .map_err(|e| format!("{place}: host -> {x}: {e}"))?;
            }
        }
        if publishes {
            tcp_via(
                &ctrs[0].0,
                "0.0.0.0:8080".parse().unwrap(),
                &host,
                "127.0.0.1:18101".parse().unwrap(),
            )
            .map_err(|e| format!("{place}: published port 18101: {e}"))?;
        }
    }
    for (ns, id, ..) in &ctrs {
        let base = [
            "--netns",
            ns.path(),
            "--container-id",
            id,
            "--ifname",
            ifname,
        ];
        if list_version(&list) >= (0, 4, 0) {
            let r = cnirun.run("check", &base, &[]);
            if r.code != 0 {
                return Err(format!("{place}: check {id}: {} {}", r.stdout, r.stderr));
            }
        }
        let r = cnirun.run("del", &base, &[]);
        if r.code != 0 {
            return Err(format!("{place}: del {id}: {} {}", r.stdout, r.stderr));
        }
        if loopback_only {
            let flags = ns.ip_json(&["link", "show", "lo"])[0]["flags"].to_string();
            if flags.contains("\"UP\"") {
                return Err(format!("{place}: {id}: lo still up after DEL"));
            }
        }
    }
    // Nothing of the two attachments is left.
    let links = host.ip(&["-o", "link", "show"]);
    if links.contains("veth") || links.contains("bwp") {
        return Err(format!("{place}: links left: {links}"));
    }
    let ruleset = host.nft_ruleset().to_string();
    if ruleset.contains("doc-one") || ruleset.contains("doc-two") {
        return Err(format!("{place}: nftables elements left: {ruleset}"));
    }
    let leftover = |dir: PathBuf| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<IpAddr>().is_ok() || n.ends_with(".json"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let name = list["name"].as_str().unwrap();
    for dir in [
        tmp.path().join("ipam").join(name),
        tmp.path().join("tuning"),
    ] {
        let left = leftover(dir.clone());
        if !left.is_empty() {
            return Err(format!("{place}: left in {}: {left:?}", dir.display()));
        }
    }
    let cached = std::fs::read_dir(&cnirun.cache)
        .map(|d| d.count())
        .unwrap_or(0);
    if cached != 0 {
        return Err(format!("{place}: {cached} cache files left"));
    }
    Ok(true)
}

#[test]
fn every_json_block_parses_and_the_docs_hold_examples() {
    let blocks = json_blocks();
    let configs = blocks.iter().filter(|(_, v)| is_config(v)).count();
    // Each plugin page, the runtime guides and the README hold at least one.
    assert!(configs >= 10, "only {configs} configuration examples");
    for (b, v) in &blocks {
        if is_config(v) {
            as_list(v).unwrap_or_else(|e| panic!("{}: {e}", b.place()));
        }
    }
    // Every plugin page has an example of its own type.
    for page in std::fs::read_dir(repo().join("docs/plugins")).unwrap() {
        let page = page.unwrap().path();
        let ty = page.file_stem().unwrap().to_str().unwrap().to_string();
        let has = blocks_of(&page)
            .iter()
            .filter(|b| b.lang == "json")
            .filter_map(|b| serde_json::from_str::<Value>(&b.text).ok())
            .filter_map(|v| as_list(&v).ok())
            .any(|l| {
                plugins_of(&l)
                    .iter()
                    .any(|p| p["type"] == ty.as_str() || p["ipam"]["type"] == ty.as_str())
            });
        assert!(has, "{}: no example using {ty}", rel(&page));
    }
}

#[test]
fn every_configuration_example_connects_two_containers_and_cleans_up() {
    if !have_root() {
        return;
    }
    let examples: Vec<(String, Value)> = json_blocks()
        .into_iter()
        .filter(|(_, v)| is_config(v))
        .map(|(b, v)| (b.place(), v))
        .collect();
    // Each example has its own namespaces and state directory: run them side by side.
    let outcomes: Vec<(String, Result<bool, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = examples
            .iter()
            .map(|(place, v)| (place, s.spawn(|| run_example(place, v))))
            .collect();
        handles
            .into_iter()
            .map(|(place, h)| {
                let r = h.join().unwrap_or_else(|p| {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    Err(format!("{place}: panicked: {msg}"))
                });
                (place.clone(), r)
            })
            .collect()
    });
    let ran = outcomes.iter().filter(|(_, r)| r == &Ok(true)).count();
    let failures: Vec<&String> = outcomes
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    eprintln!("{ran} of {} configuration examples ran", outcomes.len());
    assert!(failures.is_empty(), "{failures:#?}");
    let skipped = outcomes.iter().filter(|(_, r)| r == &Ok(false)).count();
    assert!(skipped <= PENDING.len(), "{skipped} examples skipped");
    assert!(ran >= 9, "only {ran} examples ran");
}

// ---------------------------------------------------------------------------------------
// Paths, links and command lines

/// The `scripts/...` and `conflists/...` paths a text mentions.
fn repo_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for prefix in ["scripts/", "conflists/"] {
        for (at, _) in text.match_indices(prefix) {
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '-') {
                continue;
            }
            let rest: String = text[at + prefix.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || "_.-".contains(*c))
                .collect();
            out.push(format!("{prefix}{}", rest.trim_end_matches('.')));
        }
    }
    out
}

/// The targets of the Markdown links `[text](target)` of a text.
fn link_targets(text: &str) -> Vec<String> {
    text.match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &text[at + 2..];
            let end = rest.find(')')?;
            let target = &rest[..end];
            (!target.contains(char::is_whitespace)).then(|| target.to_string())
        })
        .collect()
}

#[test]
fn every_path_and_link_in_the_docs_exists() {
    let root = repo();
    let mut problems = Vec::new();
    let mut links = 0;
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for p in repo_paths(&text) {
            if !root.join(&p).exists() {
                problems.push(format!("{}: {p} does not exist", rel(&file)));
            }
        }
        for target in link_targets(&text) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            links += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let dest = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            if !dest.exists() {
                problems.push(format!("{}: link {target} is broken", rel(&file)));
                continue;
            }
            if let Some(anchor) = anchor {
                let anchors = heading_anchors(&dest);
                if !anchors.contains(anchor) {
                    problems.push(format!(
                        "{}: link {target}: no heading #{anchor} (have {anchors:?})",
                        rel(&file)
                    ));
                }
            }
        }
    }
    assert!(links >= 30, "only {links} relative links found");
    assert!(problems.is_empty(), "{problems:#?}");
}

/// GitHub's anchors for the headings of a Markdown file.
fn heading_anchors(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim().to_lowercase();
        let slug: String = title
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        out.insert(slug);
    }
    out
}

#[test]
fn every_cnirun_command_in_the_docs_uses_real_flags() {
    let cnirun = testkit::bin("cnirun");
    let mut help_of = std::collections::HashMap::new();
    let mut problems = Vec::new();
    let mut seen = 0;
    for b in all_blocks().iter().filter(|b| b.lang == "sh") {
        for line in b.text.lines() {
            let Some(pos) = line.find("cnirun ") else {
                continue;
            };
            let words: Vec<&str> = line[pos..]
                .split('#')
                .next()
                .unwrap()
                .split_whitespace()
                .collect();
            let Some(verb) = words.get(1) else { continue };
            seen += 1;
            let help: &String = help_of.entry(verb.to_string()).or_insert_with(|| {
                let out = std::process::Command::new(&cnirun)
                    .args([verb, "--help"])
                    .output()
                    .unwrap();
                if !out.status.success() {
                    String::new()
                } else {
                    String::from_utf8_lossy(&out.stdout).into_owned()
                }
            });
            if help.is_empty() {
                problems.push(format!("{}: no cnirun verb {verb:?}", b.place()));
                continue;
            }
            for w in &words[2..] {
                if w.starts_with('-') && !w.starts_with("--valid-attachment=") {
                    let flag = w.split('=').next().unwrap();
                    let known = help
                        .split(|c: char| c.is_whitespace() || c == ',' || c == '<' || c == '|')
                        .any(|t| t == flag);
                    if !known {
                        problems.push(format!("{}: cnirun {verb}: unknown flag {flag}", b.place()));
                    }
                }
            }
        }
    }
    assert!(seen >= 8, "only {seen} cnirun command lines found");
    assert!(problems.is_empty(), "{problems:#?}");
}

// ---------------------------------------------------------------------------------------
// The troubleshooting page

fn troubleshooting() -> String {
    std::fs::read_to_string(repo().join("docs/troubleshooting.md")).unwrap()
}

/// A list from `conflists/bridge-host-local.conflist` (network `rs-bridge`), with `edit`
/// applied and its data directory in `tmp`.
fn shipped_list(tmp: &Path, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let file = repo().join("conflists/bridge-host-local.conflist");
    let mut list: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    edit(&mut list);
    redirect_state(&mut list, tmp);
    let path = tmp.join(format!("list-{}.conflist", testkit::unique_name("l")));
    std::fs::write(&path, list.to_string()).unwrap();
    path
}

/// Asserts that the page quotes `msg`, and that `run`'s error object contains it.
fn quoted_and_printed(page: &str, run: &Run, msg: &str, code: u64) {
    assert!(
        page.contains(msg),
        "docs/troubleshooting.md does not quote {msg:?}"
    );
    assert_eq!(run.err_code(), code, "{}", run.stdout);
    let printed = run.json()["msg"].as_str().unwrap().to_string();
    assert!(
        printed.contains(msg),
        "printed {printed:?}, documented {msg:?}"
    );
}

#[test]
fn troubleshooting_messages_are_the_ones_the_plugins_print() {
    if !have_root() {
        return;
    }
    let page = troubleshooting();
    let tmp = tempfile::tempdir().unwrap();
    let host = TestNs::new();
    let ctrs = [TestNs::new(), TestNs::new()];

    // Plugin not found.
    let list = shipped_list(tmp.path(), |_| {});
    let run = run_args_in(
        &host,
        &testkit::bin("cnirun"),
        &[
            "add",
            "--conflist",
            list.to_str().unwrap(),
            "--netns",
            ctrs[0].path(),
            "--cache-dir",
            tmp.path().join("cache").to_str().unwrap(),
            "--cni-path",
            "/nonexistent",
        ],
        &[],
        "",
    );
    quoted_and_printed(
        &page,
        &run,
        r#"failed to find plugin "bridge" in path ["/nonexistent"]"#,
        999,
    );

    // An exhausted pool: a /30 has one address besides the gateway.
    let list = shipped_list(tmp.path(), |l| {
        l["cniVersion"] = json!("1.1.0");
        l["plugins"][0]["ipam"]["ranges"] = json!([[{ "subnet": "10.99.0.0/30" }]]);
    });
    let cnirun = Cnirun {
        host: &host,
        conflist: list,
        cache: tmp.path().join("cache"),
    };
    let netns = |i: usize| ["--netns", ctrs[i].path(), "--container-id", ["c0", "c1"][i]];
    cnirun.run("add", &netns(0), &[]).ok();
    let run = cnirun.run("add", &netns(1), &[]);
    quoted_and_printed(
        &page,
        &run,
        "failed to allocate for range 0: no IP addresses available in range set: 10.99.0.1-10.99.0.2",
        999,
    );
    // The default log level shows the failure on stderr.
    assert!(
        run.stderr.contains("plugin=bridge command=ADD")
            && run.stderr.contains("result=error code=999"),
        "{}",
        run.stderr
    );
    assert!(page.contains("plugin=bridge command=ADD") && page.contains("result=error code=999"));
    let run = cnirun.run("status", &[], &[]);
    quoted_and_printed(
        &page,
        &run,
        "no IP addresses available in range set 0: 10.99.0.1-10.99.0.2",
        50,
    );
    cnirun.run("del", &netns(0), &[]).ok();
    cnirun.run("status", &[], &[]).ok();

    // RUST_LOG=debug prints the plugin invocations; the network's rules exist already, so
    // this ADD sends its elements over netlink and runs no nft (as the page says).
    let run = cnirun.run("add", &netns(0), &[("RUST_LOG", "debug")]).ok();
    assert!(run.stderr.contains("level=debug"), "{}", run.stderr);
    assert!(run.stderr.contains("ADD "), "{}", run.stderr);
    assert!(!run.stderr.contains("nft -j -f -"), "{}", run.stderr);
    assert!(page.contains("RUST_LOG=debug") && page.contains("over netlink"));
    cnirun.run("del", &netns(0), &[]).ok();
}

#[test]
fn a_held_lock_fails_with_code_11_as_documented() {
    if !have_root() {
        return;
    }
    let page = troubleshooting();
    let tmp = tempfile::tempdir().unwrap();
    let host = TestNs::new();
    let ctr = TestNs::new();
    let list = shipped_list(tmp.path(), |l| {
        l["cniVersion"] = json!("1.1.0");
        l["plugins"][0]["ipam"]["lockTimeout"] = json!(1);
    });
    let net_dir = tmp.path().join("ipam/rs-bridge");
    std::fs::create_dir_all(&net_dir).unwrap();
    let file = std::fs::File::create(net_dir.join("lock")).unwrap();
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    let cnirun = Cnirun {
        host: &host,
        conflist: list,
        cache: tmp.path().join("cache"),
    };
    let args = ["--netns", ctr.path(), "--container-id", "locked"];
    let run = cnirun.run("add", &args, &[]);
    // The page shows the default data directory.
    let printed = run.json()["msg"].as_str().unwrap().replace(
        tmp.path().join("ipam").to_str().unwrap(),
        "/var/lib/cni/networks",
    );
    let documented = "another invocation has held /var/lib/cni/networks/rs-bridge/lock for more than 1s (ipam.lockTimeout); try again later";
    assert!(page.contains(documented));
    assert!(printed.contains(documented), "{printed}");
    assert_eq!(run.err_code(), 11);
    // The error object at the top of the page is this one, with the default 30 s.
    let shown = json_blocks()
        .into_iter()
        .find(|(b, v)| b.file.ends_with("troubleshooting.md") && v["code"] == 11)
        .expect("the code 11 example")
        .1;
    assert_eq!(
        shown["msg"].as_str().unwrap(),
        printed.replace("more than 1s", "more than 30s")
    );
    // Nothing was allocated, and with the lock free the same ADD succeeds.
    drop(lock);
    assert!(!std::fs::read_dir(&net_dir).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .parse::<IpAddr>()
            .is_ok()
    }));
    cnirun.run("add", &args, &[]).ok();
    cnirun.run("del", &args, &[]).ok();
}

/// The "reboot" scenario: containers vanish with their namespaces and the host's network
/// state, no DEL is sent, the allocations stay on disk; `cnirun gc` with the attachments that
/// exist frees the others, through the cache (DEL) and through plugin GC (1.1.0).
#[test]
fn stale_allocations_after_a_reboot_are_freed_by_gc() {
    if !have_root() {
        return;
    }
    let page = troubleshooting();
    for needle in ["--valid-attachment", "--none-valid", "plugins#252", "1.1.0"] {
        assert!(page.contains(needle), "the page does not mention {needle}");
    }
    let tmp = tempfile::tempdir().unwrap();
    // A list at 1.0.0, as most nodes have, and a copy at 1.1.0 for GC.
    let list = shipped_list(tmp.path(), |_| {});
    let list_11 = shipped_list(tmp.path(), |l| l["cniVersion"] = json!("1.1.0"));
    let ipam = tmp.path().join("ipam/rs-bridge");
    let allocations = || -> BTreeSet<String> {
        std::fs::read_dir(&ipam)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<IpAddr>().is_ok())
            .collect()
    };
    let owners = || -> BTreeSet<String> {
        allocations()
            .iter()
            .map(|a| {
                let s = std::fs::read_to_string(ipam.join(a)).unwrap();
                s.split("\r\n").next().unwrap().to_string()
            })
            .collect()
    };
    {
        // Before the reboot: three containers; the runtime's cache is lost for one of them.
        let host = TestNs::new();
        let cnirun = Cnirun {
            host: &host,
            conflist: list.clone(),
            cache: tmp.path().join("cache"),
        };
        let ctrs: Vec<TestNs> = (0..3).map(|_| TestNs::new()).collect();
        for (ns, id) in ctrs.iter().zip(["old-a", "old-b", "old-c"]) {
            cnirun
                .run("add", &["--netns", ns.path(), "--container-id", id], &[])
                .ok();
        }
        std::fs::remove_file(tmp.path().join("cache/rs-bridge-old-c-eth0")).unwrap();
        // The reboot: every namespace goes, nothing sends DEL.
    }
    assert_eq!(allocations().len(), 3);
    let host = TestNs::new();
    let new = TestNs::new();
    let cnirun = Cnirun {
        host: &host,
        conflist: list,
        cache: tmp.path().join("cache"),
    };
    cnirun
        .run(
            "add",
            &["--netns", new.path(), "--container-id", "new"],
            &[],
        )
        .ok();
    assert_eq!(owners().len(), 4);

    // A bare `cnirun gc` is refused.
    let run = cnirun.run("gc", &[], &[]);
    assert_ne!(run.code, 0);
    // At 1.0.0 only the cached attachments are DELed: old-c, not in the cache, stays.
    cnirun
        .run("gc", &["--valid-attachment", "new:eth0"], &[])
        .ok();
    let expected: BTreeSet<String> = ["new", "old-c"].iter().map(|s| s.to_string()).collect();
    assert_eq!(owners(), expected);
    // The copy at 1.1.0 has host-local collect the rest, by attachment.
    let gc = Cnirun {
        host: &host,
        conflist: list_11,
        cache: tmp.path().join("cache"),
    };
    gc.run("gc", &["--valid-attachment", "new:eth0"], &[]).ok();
    assert_eq!(owners(), BTreeSet::from(["new".to_string()]));
    // The live container still works, and its DEL frees the last one.
    cnirun
        .run(
            "check",
            &["--netns", new.path(), "--container-id", "new"],
            &[],
        )
        .ok();
    cnirun
        .run(
            "del",
            &["--netns", new.path(), "--container-id", "new"],
            &[],
        )
        .ok();
    assert!(allocations().is_empty());
}
