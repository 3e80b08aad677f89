//! The kernel work alone behind one container's DEL (and ADD) in the six-plugin chain, timed
//! without any process start-up: what no implementation of these plugins can go below on
//! this machine. Prints medians; run as root in a throwaway namespace (bench/compare.sh does:
//! `ip netns exec <ns> target/release/examples/kernel_floor [rounds]`).
//!
//! - veth: create a pair, delete it (bridge's DEL; the unregistration waits for an RCU
//!   grace period, `rcu_barrier` in `netdev_run_todo`).
//! - ifb: create, delete (bandwidth's DEL, the same wait).
//! - nft elements: one transaction adding an element (ADD, over netlink), then one deleting
//!   it, with the socket closed (portmap's and firewall's DEL: closing an nf_tables socket
//!   after a deleting transaction waits for the kernel's destroy work, a grace period).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use common::netlink::{RouteSocket, VethSpec};
use common::netns::NetNs;
use common::nft::{self, Batch, ChainDef, Family, Key, SetDef, TableRef};
use serde_json::json;
use std::time::{Duration, Instant};

const T: TableRef<'static> = TableRef {
    family: Family::Inet,
    name: "cnirs_floor",
};
const S: SetDef<'static> = SetDef {
    table: T,
    name: "addr4",
    key: &["ipv4_addr"],
    map: None,
    interval: false,
};

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(21);
    let ns = NetNs::open("/proc/self/ns/net").unwrap();
    let mut sock = RouteSocket::open().unwrap();
    let (mut veth_add, mut veth_del, mut ifb_add, mut ifb_del) = (vec![], vec![], vec![], vec![]);
    for i in 0..rounds {
        let (a, b) = (format!("flr{i}a"), format!("flr{i}b"));
        let t = Instant::now();
        sock.create_veth(&VethSpec {
            name: &a,
            peer_name: &b,
            peer_ns: &ns,
            mtu: 0,
            peer_mac: None,
        })
        .unwrap();
        veth_add.push(t.elapsed());
        let idx = sock.link_by_name(&a).unwrap().unwrap().index;
        let t = Instant::now();
        sock.delete_link(idx).unwrap();
        veth_del.push(t.elapsed());

        let ifb = format!("flrifb{i}");
        let t = Instant::now();
        sock.create_ifb(&ifb, 1500, None).unwrap();
        ifb_add.push(t.elapsed());
        let idx = sock.link_by_name(&ifb).unwrap().unwrap().index;
        let t = Instant::now();
        sock.delete_link(idx).unwrap();
        ifb_del.push(t.elapsed());
    }

    // The ruleset once (through nft), then element transactions over netlink.
    let chain = ChainDef {
        table: T,
        name: "c",
        hook: None,
    };
    let batch = |i: usize| {
        let mut b = Batch::new();
        b.add_table(T);
        b.add_set(&S);
        b.ensure_chain_rules(&chain, vec![vec![json!({"accept": null})]]);
        let key = Key::new(json!(format!("10.{}.{}.1", i / 250, i % 250)));
        b.add_attachment_elements(&S, "floor/c/eth0", std::slice::from_ref(&key));
        (b, key)
    };
    nft::apply_to_kernel(&batch(62_249).0).unwrap();
    let (mut el_add, mut el_del) = (vec![], vec![]);
    for i in 0..rounds {
        let (add, key) = batch(i);
        let t = Instant::now();
        nft::apply_to_kernel(&add).unwrap();
        el_add.push(t.elapsed());
        let mut del = Batch::new();
        del.delete_known_elements(&S, &[key]);
        let t = Instant::now();
        nft::apply_to_kernel(&del).unwrap();
        nft::netlink::close_kept_sockets();
        el_del.push(t.elapsed());
    }
    let mut del = Batch::new();
    del.push(json!({"delete": {"table": {"family": "inet", "name": T.name}}}));
    nft::apply_to_kernel(&del).unwrap();

    let (vd, fd, ed) = (median(veth_del), median(ifb_del), median(el_del));
    println!("veth create          {:6.2} ms", median(veth_add));
    println!("veth delete          {vd:6.2} ms");
    println!("ifb create           {:6.2} ms", median(ifb_add));
    println!("ifb delete           {fd:6.2} ms");
    println!("nft element add      {:6.2} ms", median(el_add));
    println!("nft element delete   {ed:6.2} ms  (transaction + socket close)");
    println!(
        "DEL floor            {:6.2} ms  (veth + ifb + 2 element deletes: bridge's overlaps its veth)",
        vd + fd + 2.0 * ed
    );
}
