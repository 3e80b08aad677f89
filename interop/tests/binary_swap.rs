//! Swapping the plugin binaries while containers run, both ways, with libcni's `cnitool` and
//! the reference plugins (containernetworking-plugins 1.1.1 in /usr/lib/cni): a node migrates
//! by replacing its plugin directory, so containers attached by one implementation are
//! deleted by the other.
//!
//! - reference ADD (bridge with ipMasq + host-local, portmap with a host port, firewall), then
//!   the swap, then our DEL: none of the reference's chains, rules or jumps for that container
//!   remain in nf_tables (the reference's iptables are iptables-nft here); another container's
//!   reference rules are untouched and still carry its traffic (masqueraded through a
//!   forward-drop host, and through its host port).
//! - the reference's nftables backend (`ipMasqBackend`/`backend` "nftables"): 1.1.1 does not
//!   have it, so its objects are written here as the reference (HEAD) writes them, for
//!   containers our ADD attached; our DEL removes the container's and leaves the other's,
//!   which still carries its host port.
//! - our ADD, then the swap, then the reference's DEL: our elements stay (listed below) until
//!   our DEL (without prevResult, as libcni sends after its cache is gone) or our GC.
//! - our GC with valid attachments: removes the reference's masquerade and DNAT chains of the
//!   invalid containers of its network only; not the same container's chains in another
//!   network, not the valid container's, and not the firewall's accepts (which name no owner:
//!   only DEL removes them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use sha2::{Digest, Sha512};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use support::{Network, REFERENCE_DIR, Side, addresses, container_id};
use testkit::{Run, TestNs, run_args_in, tcp_peer_seen, tcp_via};

const OURS: Side = Side::Ours;
const REF: Side = Side::Reference;
/// The plugins the chains here use, swapped together as a node's plugin directory is.
const SWAPPED: [&str; 4] = ["bridge", "host-local", "portmap", "firewall"];

/// cnitool, when everything these tests need is here (see [`support::ready`]); they also need
/// the reference firewall, `nft` and `iptables-nft`.
fn ready() -> Option<PathBuf> {
    let cnitool = support::ready()?;
    let mut missing = Vec::new();
    if !Path::new(REFERENCE_DIR).join("firewall").is_file() {
        missing.push(format!("{REFERENCE_DIR}/firewall"));
    }
    for tool in ["nft", "iptables-nft"] {
        let found = std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            missing.push(tool.to_string());
        }
    }
    if missing.is_empty() {
        return Some(cnitool);
    }
    testkit::cannot_run(&format!("{missing:?} missing"));
    None
}

// ---------------------------------------------------------------------------------------
// The reference's names, computed here from its source's rules (not from our code)

fn sha512_hex(s: &str) -> String {
    Sha512::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `prefix` + sha512(network + container ID) in hex, 28 characters in all.
fn chain(prefix: &str, net: &str, cid: &str) -> String {
    let mut c = format!("{prefix}{}", sha512_hex(&format!("{net}{cid}")));
    c.truncate(28);
    c
}

/// The hash the nftables backend's masquerade comment starts with.
fn nft_masq_hash(net: &str, ifname: &str, cid: &str) -> String {
    format!(
        "{}-{}",
        &sha512_hex(net)[..16],
        &sha512_hex(&format!("{ifname}:{cid}"))[..16]
    )
}

// ---------------------------------------------------------------------------------------
// Reading the host namespace's nf_tables ruleset

/// The ruleset's objects (`chain`, `rule`, `set`, `map`...), each as (kind, body).
fn objects(ruleset: &Value) -> Vec<(String, Value)> {
    ruleset["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| {
            let (k, v) = o.as_object()?.iter().next()?;
            Some((k.clone(), v.clone()))
        })
        .collect()
}

/// A rule's statements without counters (they change with traffic), as text.
fn statements(rule: &Value) -> String {
    let exprs: Vec<&Value> = rule["expr"]
        .as_array()
        .map(|a| a.iter().filter(|e| e.get("counter").is_none()).collect())
        .unwrap_or_default();
    serde_json::to_string(&exprs).unwrap()
}

/// The chain a rule jumps or goes to.
fn target(rule: &Value) -> Option<String> {
    rule["expr"].as_array()?.iter().find_map(|e| {
        e.get("jump")
            .or_else(|| e.get("goto"))
            .and_then(|j| j["target"].as_str())
            .map(str::to_string)
    })
}

/// The reference's iptables objects of one attachment in `ruleset`, one line each: its
/// masquerade and DNAT chains (both families) and the rules in them, the jumps to them, and
/// the firewall accepts in `CNI-FORWARD` naming one of its addresses.
fn reference_objects(ruleset: &Value, net: &str, cid: &str, ips: &[IpAddr]) -> Vec<String> {
    let owned = [chain("CNI-", net, cid), chain("CNI-DN-", net, cid)];
    let mut found = Vec::new();
    for (kind, o) in objects(ruleset) {
        let (family, table) = (o["family"].as_str().unwrap_or(""), o["table"].as_str());
        let name = o["name"].as_str().unwrap_or("");
        match kind.as_str() {
            "chain" if owned.iter().any(|c| c == name) => {
                found.push(format!("chain {family} {} {name}", table.unwrap_or("")));
            }
            "rule" => {
                let chain = o["chain"].as_str().unwrap_or("");
                let text = statements(&o);
                let jumps = target(&o).is_some_and(|t| owned.contains(&t));
                let accept = chain == "CNI-FORWARD"
                    && ips.iter().any(|ip| text.contains(&format!("\"{ip}\"")));
                if owned.iter().any(|c| c == chain) || jumps || accept {
                    found.push(format!("rule {family} {chain}: {text}"));
                }
            }
            _ => {}
        }
    }
    found
}

/// The reference's nftables-backend rules of one attachment: its `masq_checks` rules and
/// the `cni_hostport` rules commented with its container ID.
fn nft_backend_objects(ruleset: &Value, net: &str, cid: &str) -> Vec<String> {
    let hash = nft_masq_hash(net, "eth0", cid);
    objects(ruleset)
        .into_iter()
        .filter(|(kind, o)| {
            let comment = o["comment"].as_str().unwrap_or("");
            kind == "rule"
                && match (o["table"].as_str(), o["chain"].as_str()) {
                    (Some("cni_plugins_masquerade"), Some("masq_checks")) => {
                        comment.starts_with(&hash)
                    }
                    (Some("cni_hostport"), _) => comment == cid,
                    _ => false,
                }
        })
        .map(|(_, o)| format!("rule {} {}: {}", o["family"], o["chain"], statements(&o)))
        .collect()
}

/// Our set and map elements carrying `comment`, one line each: table, set, element.
fn our_elements(ruleset: &Value, comment: &str) -> Vec<String> {
    let needle = format!("\"comment\":{}", Value::from(comment));
    objects(ruleset)
        .into_iter()
        .filter(|(kind, _)| kind == "set" || kind == "map")
        .flat_map(|(_, o)| {
            let elems = o["elem"].as_array().cloned().unwrap_or_default();
            elems
                .into_iter()
                .map(|e| serde_json::to_string(&e).unwrap())
                .filter(|e| e.contains(&needle))
                .map(|e| format!("{} {}: {e}", o["table"], o["name"]))
                .collect::<Vec<_>>()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The chain, the containers, the traffic

fn plugins(bridge: &str, subnets: [&str; 2], firewall: bool) -> Value {
    let mut list = vec![
        json!({
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": subnets[0]}], [{"subnet": subnets[1]}]],
                "routes": [{"dst": "0.0.0.0/0"}]
            }
        }),
        json!({"type": "portmap", "capabilities": {"portMappings": true}}),
    ];
    if firewall {
        list.push(json!({"type": "firewall"}));
    }
    Value::Array(list)
}

fn all(side: Side) -> Vec<(&'static str, Side)> {
    SWAPPED.iter().map(|p| (*p, side)).collect()
}

fn swap_all(net: &Network, side: Side) {
    for p in SWAPPED {
        net.swap(p, side);
    }
}

/// Host port `port` to the container's port 8080.
fn caps(port: u16) -> Value {
    json!({"portMappings": [{"hostPort": port, "containerPort": 8080, "protocol": "tcp"}]})
}

/// A namespace outside the node, routed from the host through a veth (10.198.0.2; the
/// host's side is 10.198.0.1): traffic to it is forwarded, so it crosses the host's FORWARD
/// chain and the masquerade rules.
fn outside(host: &TestNs) -> (TestNs, String) {
    let out = TestNs::new();
    let veth = testkit::unique_name("swo");
    host.ip(&[
        "link",
        "add",
        &veth,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &out.tid(),
    ]);
    host.ip(&["addr", "add", "10.198.0.1/24", "dev", &veth]);
    host.ip(&["link", "set", &veth, "up"]);
    out.ip(&["addr", "add", "10.198.0.2/24", "dev", "eth0"]);
    out.ip(&["link", "set", "eth0", "up"]);
    (out, veth)
}

/// The container reaches the outside namespace masqueraded (the outside sees the host's
/// address), and the host reaches the container through `host_port` on 127.0.0.1.
fn assert_traffic(net: &Network, ctr: &TestNs, out: &TestNs, host_port: u16, what: &str) {
    let peer = tcp_peer_seen(out, ctr, "10.198.0.2:7300".parse().unwrap())
        .unwrap_or_else(|e| panic!("{}: {what}: to the outside: {e}", net.name));
    assert_eq!(
        peer.ip(),
        "10.198.0.1".parse::<IpAddr>().unwrap(),
        "{}: {what}: not masqueraded",
        net.name
    );
    tcp_via(
        ctr,
        "0.0.0.0:8080".parse().unwrap(),
        &net.host,
        SocketAddr::new("127.0.0.1".parse().unwrap(), host_port),
    )
    .unwrap_or_else(|e| panic!("{}: {what}: host port {host_port}: {e}", net.name));
}

/// The ruleset of the test's host namespace.
fn ruleset(net: &Network) -> Value {
    net.host.nft_ruleset()
}

/// A second network of `net`'s node (same host namespace, plugin directory and state
/// directories): its conflist next to the first one.
struct SecondNetwork {
    name: String,
    _cache: testkit::LibcniCache,
}

impl SecondNetwork {
    fn new(net: &Network, plugins: Value) -> SecondNetwork {
        let name = testkit::unique_name("swp2");
        let mut list = json!({"cniVersion": "1.0.0", "name": name, "plugins": plugins});
        list["plugins"][0]["ipam"]["dataDir"] = json!(net.tmp.path().join("data"));
        std::fs::write(
            net.tmp
                .path()
                .join("net.d")
                .join(format!("{name}.conflist")),
            list.to_string(),
        )
        .unwrap();
        SecondNetwork {
            _cache: testkit::LibcniCache(name.clone()),
            name,
        }
    }

    /// cnitool VERB on this network, attaching the container as `ifname`.
    fn cnitool(&self, cnitool: &Path, net: &Network, verb: &str, ctr: &TestNs, caps: &Value) {
        let netconf = net.tmp.path().join("net.d");
        let bin = net.bin_dir();
        let caps = caps.to_string();
        let env = [
            ("NETCONFPATH", netconf.to_str().unwrap()),
            ("CNI_PATH", bin.to_str().unwrap()),
            ("CAP_ARGS", caps.as_str()),
            ("CNI_IFNAME", "net1"),
        ];
        let r: Run = run_args_in(
            &net.host,
            cnitool,
            &[verb, &self.name, ctr.path()],
            &env,
            "",
        );
        assert_eq!(
            r.code, 0,
            "{}: cnitool {verb}: {} {}",
            self.name, r.stdout, r.stderr
        );
    }
}

/// GC by our bridge, portmap and firewall, as a runtime sends it (cniVersion 1.1.0), with
/// `valid` as the valid attachments.
fn our_gc(net: &Network, valid: &[(&TestNs, &str)]) {
    let valid: Vec<Value> = valid
        .iter()
        .map(|(c, ifname)| json!({"containerID": container_id(c), "ifname": ifname}))
        .collect();
    for plugin in net.list["plugins"].as_array().unwrap() {
        let mut conf = plugin.clone();
        conf["name"] = json!(net.name);
        conf["cniVersion"] = json!("1.1.0");
        conf["cni.dev/valid-attachments"] = json!(valid);
        let ty = conf["type"].as_str().unwrap().to_string();
        let bin = net.bin_dir();
        let r = testkit::cni(
            &net.host,
            &ty,
            "GC",
            "",
            "",
            "",
            &conf,
            &[("CNI_PATH", bin.to_str().unwrap())],
        );
        assert_eq!(
            r.code, 0,
            "{}: GC by our {ty}: {} {}",
            net.name, r.stdout, r.stderr
        );
    }
}

/// The reference's nftables-backend objects of containers our ADD attached, written as the
/// reference (HEAD) writes them: `inet cni_plugins_masquerade` (a `postrouting` base chain going
/// to `masq_checks`, one masquerade rule per address, commented with the owner's hashes) and
/// `ip`/`ip6 cni_hostport` (DNAT rules in `hostports` and masquerade rules in `masquerading`,
/// commented with the container ID). `owners`: (container ID, addresses, host port).
fn nft_backend_script(
    net: &str,
    subnets: [&str; 2],
    owners: &[(String, Vec<IpAddr>, u16)],
) -> String {
    let mut s = String::from(
        "add table inet cni_plugins_masquerade\n\
         add chain inet cni_plugins_masquerade masq_checks\n\
         add chain inet cni_plugins_masquerade postrouting { type nat hook postrouting priority 100; }\n\
         add rule inet cni_plugins_masquerade postrouting ip daddr 224.0.0.0/4 return\n\
         add rule inet cni_plugins_masquerade postrouting ip6 daddr ff00::/8 return\n\
         add rule inet cni_plugins_masquerade postrouting goto masq_checks\n",
    );
    for fam in ["ip", "ip6"] {
        s += &format!(
            "add table {fam} cni_hostport\n\
             add chain {fam} cni_hostport hostports\n\
             add chain {fam} cni_hostport hostip_hostports\n\
             add chain {fam} cni_hostport hostports_all\n\
             add rule {fam} cni_hostport hostports_all jump hostip_hostports\n\
             add rule {fam} cni_hostport hostports_all jump hostports\n\
             add chain {fam} cni_hostport prerouting {{ type nat hook prerouting priority -100; }}\n\
             add rule {fam} cni_hostport prerouting fib daddr type local jump hostports_all\n\
             add chain {fam} cni_hostport output {{ type nat hook output priority -100; }}\n\
             add rule {fam} cni_hostport output fib daddr type local jump hostports_all\n\
             add chain {fam} cni_hostport masquerading {{ type nat hook postrouting priority 100; }}\n"
        );
    }
    for (cid, addrs, port) in owners {
        let comment = format!(
            "{}, net: {net}, if: eth0, id: {cid}",
            nft_masq_hash(net, "eth0", cid)
        );
        for addr in addrs {
            let (fam, subnet, to) = match addr {
                IpAddr::V4(_) => ("ip", subnets[0], format!("{addr}:8080")),
                IpAddr::V6(_) => ("ip6", subnets[1], format!("[{addr}]:8080")),
            };
            s += &format!(
                "add rule inet cni_plugins_masquerade masq_checks {fam} saddr {addr} {fam} daddr != {subnet} masquerade comment \"{comment}\"\n\
                 add rule {fam} cni_hostport hostports tcp dport {port} dnat to {to} comment \"{cid}\"\n\
                 add rule {fam} cni_hostport masquerading {fam} saddr {addr} {fam} daddr {addr} masquerade comment \"{cid}\"\n"
            );
            if fam == "ip" {
                s += &format!(
                    "add rule ip cni_hostport masquerading ip saddr 127.0.0.1 ip daddr {addr} masquerade comment \"{cid}\"\n"
                );
            }
        }
    }
    s
}

fn nft_script(host: &TestNs, script: &str) {
    let path = std::env::temp_dir().join(format!("{}.nft", testkit::unique_name("swpn")));
    std::fs::write(&path, script).unwrap();
    let out = host.exec("nft", &["-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "nft -f: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------
// The scenarios

const SUBNETS_A: [&str; 2] = ["10.95.0.0/24", "fd5e:2a6c:95::/64"];

#[test]
fn reference_add_then_our_del() {
    let Some(cnitool) = ready() else {
        return;
    };
    let net = Network::new(
        &cnitool,
        "swpa",
        "1.0.0",
        plugins("cni-swpa", SUBNETS_A, true),
        &all(REF),
    );
    let (out, out_veth) = outside(&net.host);
    let (a, b) = (TestNs::new(), TestNs::new());
    let ra = net.add(&a, Some(&caps(18201)));
    let rb = net.add(&b, Some(&caps(18202)));
    let (ips_a, ips_b) = (addresses(&ra), addresses(&rb));
    let (cid_a, cid_b) = (container_id(&a), container_id(&b));
    // Forwarded traffic now needs the firewall's accepts.
    let policy = net.host.exec("iptables-nft", &["-P", "FORWARD", "DROP"]);
    assert!(policy.status.success(), "{policy:?}");
    assert_traffic(&net, &b, &out, 18202, "b, by the reference");

    let before = ruleset(&net);
    let objects_a = reference_objects(&before, &net.name, &cid_a, &ips_a);
    let objects_b = reference_objects(&before, &net.name, &cid_b, &ips_b);
    // Per family: the masquerade chain, its 2 rules and 1 jump; the DNAT chain, its rules (3
    // for IPv4: hairpin and localhost marks, the DNAT; 2 for IPv6) and 1 jump; 2 accepts.
    assert_eq!(objects_a.len(), 2 * (4 + 2 + 2) + 3 + 2, "{objects_a:#?}");
    assert_eq!(objects_b.len(), objects_a.len(), "{objects_b:#?}");

    swap_all(&net, OURS);
    net.del(&a, Some(&caps(18201)));

    let after = ruleset(&net);
    let left = reference_objects(&after, &net.name, &cid_a, &ips_a);
    assert!(
        left.is_empty(),
        "{}: the reference's objects of a remain: {left:#?}",
        net.name
    );
    assert_eq!(
        reference_objects(&after, &net.name, &cid_b, &ips_b),
        objects_b,
        "{}: b's reference objects changed",
        net.name
    );
    // The shared chains stay: other containers' jumps go through them.
    for shared in [
        "CNI-HOSTPORT-DNAT",
        "CNI-HOSTPORT-SETMARK",
        "CNI-FORWARD",
        "CNI-ADMIN",
    ] {
        assert!(
            objects(&after)
                .iter()
                .any(|(k, o)| k == "chain" && o["name"] == shared),
            "{}: {shared} is gone",
            net.name
        );
    }
    assert_traffic(&net, &b, &out, 18202, "b, after a's DEL by ours");

    // b too, by ours; then nothing of either is left.
    net.del(&b, Some(&caps(18202)));
    let after = ruleset(&net);
    assert!(reference_objects(&after, &net.name, &cid_b, &ips_b).is_empty());
    let mut ips = ips_a.clone();
    ips.extend(&ips_b);
    net.host.ip(&["link", "del", &out_veth]);
    net.assert_nothing_left(&[&a, &b], &ips);
}

#[test]
fn reference_nftables_backend_then_our_del() {
    let Some(cnitool) = ready() else {
        return;
    };
    let subnets = ["10.96.0.0/24", "fd5e:2a6c:96::/64"];
    let net = Network::new(
        &cnitool,
        "swpn",
        "1.0.0",
        plugins("cni-swpn", subnets, true),
        &all(OURS),
    );
    let (a, b) = (TestNs::new(), TestNs::new());
    let ra = net.add(&a, Some(&caps(18211)));
    let rb = net.add(&b, Some(&caps(18212)));
    let (cid_a, cid_b) = (container_id(&a), container_id(&b));
    let owners = [
        (cid_a.clone(), addresses(&ra), 18311),
        (cid_b.clone(), addresses(&rb), 18312),
    ];
    nft_script(&net.host, &nft_backend_script(&net.name, subnets, &owners));
    let before = ruleset(&net);
    let objects_a = nft_backend_objects(&before, &net.name, &cid_a);
    let objects_b = nft_backend_objects(&before, &net.name, &cid_b);
    // Per address a masquerade, a DNAT and a hairpin masquerade; IPv4 also localhost.
    assert_eq!(objects_a.len(), 7, "{objects_a:#?}");
    assert_eq!(objects_b.len(), 7, "{objects_b:#?}");
    let to_b = |port| {
        tcp_via(
            &b,
            "0.0.0.0:8080".parse().unwrap(),
            &net.host,
            SocketAddr::new("127.0.0.1".parse().unwrap(), port),
        )
    };
    to_b(18312).unwrap_or_else(|e| panic!("{}: b's nftables-backend port: {e}", net.name));

    net.del(&a, Some(&caps(18211)));
    let after = ruleset(&net);
    let left = nft_backend_objects(&after, &net.name, &cid_a);
    assert!(
        left.is_empty(),
        "{}: a's nftables-backend rules remain: {left:#?}",
        net.name
    );
    assert_eq!(nft_backend_objects(&after, &net.name, &cid_b), objects_b);
    to_b(18312).unwrap_or_else(|e| panic!("{}: b's port after a's DEL: {e}", net.name));
    to_b(18212).unwrap_or_else(|e| panic!("{}: b's own port after a's DEL: {e}", net.name));

    net.del(&b, Some(&caps(18212)));
    assert!(nft_backend_objects(&ruleset(&net), &net.name, &cid_b).is_empty());
    let mut ips = addresses(&ra);
    ips.extend(addresses(&rb));
    net.assert_nothing_left(&[&a, &b], &ips);
}

#[test]
fn our_add_then_reference_del() {
    let Some(cnitool) = ready() else {
        return;
    };
    let net = Network::new(
        &cnitool,
        "swpb",
        "1.0.0",
        plugins("cni-swpb", ["10.97.0.0/24", "fd5e:2a6c:97::/64"], true),
        &all(OURS),
    );
    let (c1, c2) = (TestNs::new(), TestNs::new());
    let r1 = net.add(&c1, Some(&caps(18221)));
    let r2 = net.add(&c2, Some(&caps(18222)));
    let comment = |c: &TestNs| format!("{}/{}/eth0", net.name, container_id(c));
    let ours_of = |c: &TestNs| our_elements(&ruleset(&net), &comment(c));
    let before = ours_of(&c1);

    swap_all(&net, REF);
    for (c, port) in [(&c1, 18221), (&c2, 18222)] {
        // The reference bridge (1.1.1, ipMasq) fails the first DEL of a container whose
        // masquerade chain it did not make: iptables-nft 1.8.9 exits with 2 for a missing
        // chain, which its iptables library does not take for "not found". By then it has
        // deleted the veth and released the address, so the runtime's retry succeeds.
        let first = net.cnitool("del", c, Some(&caps(port)));
        if first.code != 0 {
            let said = format!("{} {}", first.stdout, first.stderr);
            assert!(
                said.contains("type=\"bridge\"") && said.contains("does not exist"),
                "{}: the reference's DEL failed otherwise: {said}",
                net.name
            );
            assert!(
                !c.has_link("eth0"),
                "{}: the veth outlived the failed DEL",
                net.name
            );
        }
        net.del(c, Some(&caps(port)));
    }

    // The reference removed the veths and the allocations, and nothing of ours: every
    // element stays, in our masquerade, port-mapping and firewall tables, naming addresses
    // host-local will hand out again.
    assert!(net.allocations().is_empty(), "{:?}", net.allocations());
    let left = ours_of(&c1);
    assert_eq!(
        left, before,
        "{}: our elements after the reference's DEL",
        net.name
    );
    for table in [
        "cnirs_bridge_masq",
        &format!("cnirs_portmap_{}", net.name),
        "cnirs_firewall",
    ] {
        for c in [&c1, &c2] {
            assert!(
                ours_of(c)
                    .iter()
                    .any(|e| e.starts_with(&format!("\"{table}\""))),
                "{}: no element of {table} for {} after the reference's DEL: {left:#?}",
                net.name,
                comment(c)
            );
        }
    }

    // Back to ours: a DEL (libcni's cache is gone, so no prevResult) removes c1's, a GC with
    // no valid attachment c2's.
    swap_all(&net, OURS);
    net.del(&c1, Some(&caps(18221)));
    assert!(ours_of(&c1).is_empty(), "{:#?}", ours_of(&c1));
    assert!(!ours_of(&c2).is_empty());
    our_gc(&net, &[]);
    assert!(ours_of(&c2).is_empty(), "{:#?}", ours_of(&c2));
    let mut ips = addresses(&r1);
    ips.extend(addresses(&r2));
    net.assert_nothing_left(&[&c1, &c2], &ips);
}

#[test]
fn our_gc_removes_only_invalid_owners_reference_objects() {
    let Some(cnitool) = ready() else {
        return;
    };
    let net = Network::new(
        &cnitool,
        "swpc",
        "1.0.0",
        plugins("cni-swpc", ["10.98.0.0/24", "fd5e:2a6c:98::/64"], true),
        &all(REF),
    );
    // Container a is attached to two networks (eth0 here, net1 in the second), b to this one.
    let second = SecondNetwork::new(
        &net,
        plugins("cni-swpc2", ["10.99.0.0/24", "fd5e:2a6c:99::/64"], false),
    );
    let (a, b) = (TestNs::new(), TestNs::new());
    let ra = net.add(&a, Some(&caps(18231)));
    let rb = net.add(&b, Some(&caps(18232)));
    second.cnitool(&cnitool, &net, "add", &a, &caps(18233));
    let (cid_a, cid_b) = (container_id(&a), container_id(&b));
    let (ips_a, ips_b) = (addresses(&ra), addresses(&rb));
    nft_script(
        &net.host,
        &nft_backend_script(
            &net.name,
            ["10.98.0.0/24", "fd5e:2a6c:98::/64"],
            &[
                (cid_a.clone(), ips_a.clone(), 18331),
                (cid_b.clone(), ips_b.clone(), 18332),
            ],
        ),
    );
    let before = ruleset(&net);
    let a_here = reference_objects(&before, &net.name, &cid_a, &ips_a);
    let b_here = reference_objects(&before, &net.name, &cid_b, &ips_b);
    let a_there = reference_objects(&before, &second.name, &cid_a, &[]);
    let b_nft = nft_backend_objects(&before, &net.name, &cid_b);
    assert!(!a_here.is_empty() && !b_here.is_empty() && !a_there.is_empty());

    swap_all(&net, OURS);
    our_gc(&net, &[(&b, "eth0")]);

    let after = ruleset(&net);
    // a's masquerade and DNAT chains of this network are gone, with their jumps; its
    // firewall accepts stay (they name an address, no owner).
    let left = reference_objects(&after, &net.name, &cid_a, &ips_a);
    assert!(
        left.iter()
            .all(|o| o.starts_with("rule ip CNI-FORWARD") || o.starts_with("rule ip6 CNI-FORWARD")),
        "{left:#?}"
    );
    assert_eq!(left.len(), 4, "{left:#?}");
    // a's chains in the other network, and everything of b, are untouched.
    assert_eq!(
        reference_objects(&after, &second.name, &cid_a, &[]),
        a_there
    );
    assert_eq!(reference_objects(&after, &net.name, &cid_b, &ips_b), b_here);
    // nftables backend: a's masquerade rules go, its port rules stay (they name no network).
    let a_nft = nft_backend_objects(&after, &net.name, &cid_a);
    assert_eq!(a_nft.len(), 5, "{a_nft:#?}");
    assert!(
        a_nft
            .iter()
            .all(|o| o.contains("\"hostports\"") || o.contains("\"masquerading\""))
    );
    assert_eq!(nft_backend_objects(&after, &net.name, &cid_b), b_nft);

    // DELs by ours take the rest, accepts included.
    net.del(&a, Some(&caps(18231)));
    net.del(&b, Some(&caps(18232)));
    second.cnitool(&cnitool, &net, "del", &a, &caps(18233));
    let after = ruleset(&net);
    assert!(reference_objects(&after, &net.name, &cid_a, &ips_a).is_empty());
    assert!(reference_objects(&after, &net.name, &cid_b, &ips_b).is_empty());
    assert!(reference_objects(&after, &second.name, &cid_a, &[]).is_empty());
    assert!(nft_backend_objects(&after, &net.name, &cid_a).is_empty());
    assert!(nft_backend_objects(&after, &net.name, &cid_b).is_empty());
    let mut ips = ips_a.clone();
    ips.extend(&ips_b);
    net.assert_nothing_left(&[&a, &b], &ips);
}
