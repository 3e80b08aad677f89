//! bridge → bandwidth as a runtime runs the list: `cnirun` (libcni's behaviour: prevResult,
//! the result cache, capability arguments, DEL in reverse, GC) with `--bandwidth`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{Value, json};
use testkit::{Run, TestNs, have_root, run_args_in, unique_name};

struct Chain {
    host: TestNs,
    dir: tempfile::TempDir,
}

impl Chain {
    fn new() -> Chain {
        let dir = tempfile::tempdir().unwrap();
        let list = json!({
            "cniVersion": "1.1.0",
            "name": unique_name("chain"),
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cnibw2",
                    "isGateway": true,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": dir.path().join("ipam"),
                        "ranges": [[{"subnet": "10.90.0.0/24"}]],
                    }
                },
                {"type": "bandwidth", "capabilities": {"bandwidth": true}}
            ]
        });
        std::fs::write(dir.path().join("list.conflist"), list.to_string()).unwrap();
        Chain {
            host: TestNs::new(),
            dir,
        }
    }

    fn run(&self, verb: &str, extra: &[&str]) -> Run {
        let conflist = self.dir.path().join("list.conflist");
        let cache = self.dir.path().join("cache");
        let bin_dir = testkit::bin_dir();
        let mut args = vec![
            verb,
            "--conflist",
            conflist.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--cni-path",
            bin_dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run_args_in(&self.host, &testkit::bin("cnirun"), &args, &[], "")
    }

    fn ifbs(&self) -> usize {
        self.host
            .ip_json(&["link", "show", "type", "ifb"])
            .as_array()
            .unwrap()
            .len()
    }
}

#[test]
fn capability_through_the_runner() {
    if !have_root() {
        return;
    }
    let chain = Chain::new();
    let (c1, c2) = (TestNs::new(), TestNs::new());
    let bw = "ingressRate=16000000,ingressBurst=160000,egressRate=8000000,egressBurst=80000";
    let r = chain
        .run(
            "add",
            &[
                "--netns",
                c1.path(),
                "--container-id",
                "ctr-a",
                "--bandwidth",
                bw,
            ],
        )
        .ok();
    let result: Value = r.json();
    let ifaces = result["interfaces"].as_array().unwrap();
    assert_eq!(ifaces.len(), 4, "{result}");
    let ifb = ifaces[3]["name"].as_str().unwrap();
    assert!(ifb.starts_with("bwp"));
    let veth = ifaces[1]["name"].as_str().unwrap();
    let tc = chain.host.exec("tc", &["-j", "qdisc", "show", "dev", veth]);
    let q: Value = serde_json::from_slice(&tc.stdout).unwrap();
    assert!(
        q.as_array()
            .unwrap()
            .iter()
            .any(|q| q["kind"] == "tbf" && q["options"]["rate"] == 2_000_000),
        "{q}"
    );

    // Without the capability argument there is nothing to shape: no ifb for the second one.
    chain
        .run("add", &["--netns", c2.path(), "--container-id", "ctr-b"])
        .ok();
    assert_eq!(chain.ifbs(), 1);

    chain
        .run("check", &["--netns", c1.path(), "--container-id", "ctr-a"])
        .ok();
    // GC with ctr-a valid keeps its ifb; DEL removes it.
    chain.run("gc", &["--valid-attachment", "ctr-a:eth0"]).ok();
    assert_eq!(chain.ifbs(), 1);
    chain
        .run("del", &["--netns", c1.path(), "--container-id", "ctr-a"])
        .ok();
    assert_eq!(chain.ifbs(), 0);
    assert!(!chain.host.ip(&["-o", "link"]).contains("veth"));
    chain
        .run("del", &["--netns", c2.path(), "--container-id", "ctr-b"])
        .ok();
}
