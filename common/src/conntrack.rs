//! Connection tracking over netlink (`NETLINK_NETFILTER`, ctnetlink): dump the entries of
//! one protocol and destination port, and delete chosen ones. What `conntrack -L` / `-D` do,
//! without running `conntrack`.
//!
//! The dump asks the kernel to filter by protocol and original destination port
//! (`CTA_FILTER`, Linux 5.8+); older kernels ignore the filter and send everything, so every
//! entry is checked here again. Deleting names the entry by its original tuple, zone and id,
//! so a newer entry that reuses the tuple is never hit; one that vanished meanwhile counts
//! as deleted.
//!
//! Messages are encoded by hand with `crate::nfnetlink`. (The `netlink-packet-netfilter`
//! crate covers ctnetlink too, but not `CTA_FILTER`, and it would bring four more
//! dependencies for about two hundred lines.)

use crate::error::{Error, Result};
use crate::netlink::Family;
use crate::nfnetlink::{
    self, NLM_F_ACK, NLM_F_DUMP, NLMSG_DONE, NLMSG_ERROR, NfSocket, find, put_attr, put_nested,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `IPPROTO_TCP`.
pub const PROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const PROTO_UDP: u8 = 17;
/// `IPPROTO_SCTP`.
pub const PROTO_SCTP: u8 = 132;

/// `NFNL_SUBSYS_CTNETLINK << 8`.
const SUBSYS_CTNETLINK: u16 = 1 << 8;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

// enum ctattr_type
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_FILTER: u16 = 25;
// enum ctattr_tuple
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
// enum ctattr_ip
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
// enum ctattr_l4proto
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
// enum ctattr_filter and its flags
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_REPLY_FLAGS: u16 = 2;
const CTA_FILTER_F_PROTO_NUM: u32 = 1 << 3;
const CTA_FILTER_F_PROTO_DST_PORT: u32 = 1 << 5;

/// One direction of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (`PROTO_UDP`, ...).
    pub proto: u8,
    /// Ports (0 for protocols without them).
    pub sport: u16,
    pub dport: u16,
}

/// One conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// As the first packet saw it (before NAT).
    pub orig: Tuple,
    /// What replies look like (after DNAT, `reply.src` is the new destination).
    pub reply: Tuple,
    pub zone: Option<u16>,
    pub id: Option<u32>,
}

fn family_byte(family: Family) -> u8 {
    match family {
        Family::V4 => libc::AF_INET as u8,
        Family::V6 => libc::AF_INET6 as u8,
    }
}

// ---------------------------------------------------------------------------------------
// Encoding

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn put_tuple(buf: &mut Vec<u8>, kind: u16, t: &Tuple) {
    put_nested(buf, kind, |b| {
        put_nested(b, CTA_TUPLE_IP, |b| {
            let (src, dst) = if t.src.is_ipv4() {
                (CTA_IP_V4_SRC, CTA_IP_V4_DST)
            } else {
                (CTA_IP_V6_SRC, CTA_IP_V6_DST)
            };
            put_attr(b, src, &ip_bytes(t.src));
            put_attr(b, dst, &ip_bytes(t.dst));
        });
        put_nested(b, CTA_TUPLE_PROTO, |b| {
            put_attr(b, CTA_PROTO_NUM, &[t.proto]);
            put_attr(b, CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
            put_attr(b, CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
        });
    });
}

/// A whole request: header, nfgenmsg, attributes.
fn message(msg_type: u16, flags: u16, seq: u32, family: Family, attrs: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    nfnetlink::put_message(
        &mut m,
        SUBSYS_CTNETLINK | msg_type,
        flags,
        seq,
        family_byte(family),
        0,
        attrs,
    );
    m
}

/// The dump request; `filter` asks the kernel to send only `proto`/`dport` entries.
fn dump_request(seq: u32, family: Family, proto: u8, dport: u16, filter: bool) -> Vec<u8> {
    let mut attrs = Vec::new();
    if filter {
        put_nested(&mut attrs, CTA_TUPLE_ORIG, |b| {
            put_nested(b, CTA_TUPLE_PROTO, |b| {
                put_attr(b, CTA_PROTO_NUM, &[proto]);
                put_attr(b, CTA_PROTO_DST_PORT, &dport.to_be_bytes());
            });
        });
        put_nested(&mut attrs, CTA_FILTER, |b| {
            let flags = CTA_FILTER_F_PROTO_NUM | CTA_FILTER_F_PROTO_DST_PORT;
            put_attr(b, CTA_FILTER_ORIG_FLAGS, &flags.to_ne_bytes());
            put_attr(b, CTA_FILTER_REPLY_FLAGS, &0u32.to_ne_bytes());
        });
    }
    message(IPCTNL_MSG_CT_GET, NLM_F_DUMP, seq, family, &attrs)
}

/// The request deleting exactly `entry`.
fn delete_request(seq: u32, entry: &Entry) -> Vec<u8> {
    let family = if entry.orig.src.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    };
    let mut attrs = Vec::new();
    put_tuple(&mut attrs, CTA_TUPLE_ORIG, &entry.orig);
    if let Some(zone) = entry.zone {
        put_attr(&mut attrs, CTA_ZONE, &zone.to_be_bytes());
    }
    if let Some(id) = entry.id {
        put_attr(&mut attrs, CTA_ID, &id.to_be_bytes());
    }
    message(IPCTNL_MSG_CT_DELETE, NLM_F_ACK, seq, family, &attrs)
}

// ---------------------------------------------------------------------------------------
// Decoding

fn be16(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(0..2)?.try_into().ok()?))
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(0..4)?.try_into().ok()?))
}

fn ip_from(v: &[u8]) -> Option<IpAddr> {
    match v.len() {
        4 => <[u8; 4]>::try_from(v)
            .ok()
            .map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        16 => <[u8; 16]>::try_from(v)
            .ok()
            .map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    }
}

fn parse_tuple(v: &[u8]) -> Option<Tuple> {
    let ip = find(v, CTA_TUPLE_IP)?;
    let (src, dst) = match (find(ip, CTA_IP_V4_SRC), find(ip, CTA_IP_V4_DST)) {
        (Some(s), Some(d)) => (ip_from(s)?, ip_from(d)?),
        _ => (
            ip_from(find(ip, CTA_IP_V6_SRC)?)?,
            ip_from(find(ip, CTA_IP_V6_DST)?)?,
        ),
    };
    let proto = find(v, CTA_TUPLE_PROTO)?;
    Some(Tuple {
        src,
        dst,
        proto: *find(proto, CTA_PROTO_NUM)?.first()?,
        sport: find(proto, CTA_PROTO_SRC_PORT).and_then(be16).unwrap_or(0),
        dport: find(proto, CTA_PROTO_DST_PORT).and_then(be16).unwrap_or(0),
    })
}

/// An entry from the attributes of a `CT_NEW` message (after its nfgenmsg).
fn parse_entry(attrs_buf: &[u8]) -> Option<Entry> {
    Some(Entry {
        orig: parse_tuple(find(attrs_buf, CTA_TUPLE_ORIG)?)?,
        reply: parse_tuple(find(attrs_buf, CTA_TUPLE_REPLY)?)?,
        zone: find(attrs_buf, CTA_ZONE).and_then(be16),
        id: find(attrs_buf, CTA_ID).and_then(be32),
    })
}

// ---------------------------------------------------------------------------------------
// The socket

/// A ctnetlink socket in the calling thread's network namespace.
#[derive(Debug)]
pub struct Conntrack {
    nl: NfSocket,
}

/// What came back for one request.
enum Reply {
    Entries(Vec<Entry>),
    Errno(i32),
}

impl Conntrack {
    /// Opens the socket (kernel state: none).
    pub fn open() -> Result<Conntrack> {
        Ok(Conntrack {
            nl: NfSocket::open("conntrack")?,
        })
    }

    /// Collects the replies to request `seq`: entries until NLMSG_DONE, or an error/ack.
    fn replies(&mut self, seq: u32, op: &str) -> Result<Reply> {
        let mut entries = Vec::new();
        loop {
            let n = self.nl.recv(op)?;
            for msg in nfnetlink::replies(self.nl.buf.get(..n).unwrap_or(&[]))? {
                if msg.seq != seq {
                    continue;
                }
                match msg.msg_type {
                    NLMSG_ERROR => {
                        let errno = msg.errno().unwrap_or(0);
                        return Ok(if errno == 0 {
                            Reply::Entries(entries)
                        } else {
                            Reply::Errno(errno)
                        });
                    }
                    NLMSG_DONE => return Ok(Reply::Entries(entries)),
                    t if t == SUBSYS_CTNETLINK | IPCTNL_MSG_CT_NEW => {
                        if let Some(e) = parse_entry(msg.attrs()) {
                            entries.push(e);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Kernel: the entries of `family` whose original tuple has protocol `proto` and
    /// destination port `dport`.
    pub fn list(&mut self, family: Family, proto: u8, dport: u16) -> Result<Vec<Entry>> {
        let op = "dump";
        let mut filter = true;
        loop {
            let seq = self.nl.next_seq();
            self.nl
                .send(&dump_request(seq, family, proto, dport, filter), op)?;
            match self.replies(seq, op)? {
                Reply::Entries(all) => {
                    return Ok(all
                        .into_iter()
                        .filter(|e| e.orig.proto == proto && e.orig.dport == dport)
                        .collect());
                }
                // A kernel that knows CTA_FILTER but not this use of it: filter here.
                Reply::Errno(errno) if filter && errno == libc::EOPNOTSUPP => filter = false,
                Reply::Errno(errno) => return Err(Error::netlink("conntrack dump", errno)),
            }
        }
    }

    /// Kernel: deletes one entry. False when it was already gone.
    pub fn delete(&mut self, entry: &Entry) -> Result<bool> {
        let op = "delete";
        let seq = self.nl.next_seq();
        self.nl.send(&delete_request(seq, entry), op)?;
        match self.replies(seq, op)? {
            Reply::Entries(_) => Ok(true),
            Reply::Errno(errno) if errno == libc::ENOENT => Ok(false),
            Reply::Errno(errno) => Err(Error::netlink("conntrack delete", errno)),
        }
    }

    /// Kernel: deletes the `proto`/`dport` entries of `family` that `pick` chooses; returns
    /// how many it deleted.
    pub fn delete_matching(
        &mut self,
        family: Family,
        proto: u8,
        dport: u16,
        pick: &dyn Fn(&Entry) -> bool,
    ) -> Result<usize> {
        let mut n = 0;
        for e in self.list(family, proto, dport)?.iter().filter(|e| pick(e)) {
            if self.delete(e)? {
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfnetlink::{NFGENMSG_LEN, NLA_F_NESTED, NLM_F_REQUEST, NLMSG_HDRLEN};

    fn entry() -> Entry {
        Entry {
            orig: Tuple {
                src: "192.0.2.2".parse().unwrap(),
                dst: "192.0.2.1".parse().unwrap(),
                proto: PROTO_UDP,
                sport: 40000,
                dport: 5353,
            },
            reply: Tuple {
                src: "10.0.0.5".parse().unwrap(),
                dst: "192.0.2.2".parse().unwrap(),
                proto: PROTO_UDP,
                sport: 53,
                dport: 40000,
            },
            zone: Some(3),
            id: Some(0xdead_beef),
        }
    }

    #[test]
    fn delete_request_round_trips_through_the_parser() {
        let e = entry();
        let req = delete_request(7, &e);
        assert_eq!(
            u32::from_ne_bytes(req[0..4].try_into().unwrap()) as usize,
            req.len()
        );
        assert_eq!(
            u16::from_ne_bytes(req[4..6].try_into().unwrap()),
            SUBSYS_CTNETLINK | IPCTNL_MSG_CT_DELETE
        );
        assert_eq!(req[16], libc::AF_INET as u8);
        let body = &req[NLMSG_HDRLEN + NFGENMSG_LEN..];
        let orig = parse_tuple(find(body, CTA_TUPLE_ORIG).unwrap()).unwrap();
        assert_eq!(orig, e.orig);
        assert_eq!(find(body, CTA_ZONE).and_then(be16), Some(3));
        assert_eq!(find(body, CTA_ID).and_then(be32), Some(0xdead_beef));
        // Nested attributes carry NLA_F_NESTED.
        let first_type = u16::from_ne_bytes(body[2..4].try_into().unwrap());
        assert_eq!(first_type, CTA_TUPLE_ORIG | NLA_F_NESTED);
    }

    #[test]
    fn entry_parses_with_both_tuples() {
        let e = entry();
        let mut attrs_buf = Vec::new();
        put_tuple(&mut attrs_buf, CTA_TUPLE_ORIG, &e.orig);
        put_tuple(&mut attrs_buf, CTA_TUPLE_REPLY, &e.reply);
        put_attr(&mut attrs_buf, CTA_ID, &0xdead_beefu32.to_be_bytes());
        put_attr(&mut attrs_buf, CTA_ZONE, &3u16.to_be_bytes());
        assert_eq!(parse_entry(&attrs_buf), Some(e));
        // Truncated input is no entry, and no panic.
        for cut in 0..attrs_buf.len() {
            let _ = parse_entry(&attrs_buf[..cut]);
        }
    }

    #[test]
    fn v6_tuple() {
        let t = Tuple {
            src: "2001:db8::2".parse().unwrap(),
            dst: "2001:db8::1".parse().unwrap(),
            proto: PROTO_UDP,
            sport: 1,
            dport: 2,
        };
        let mut b = Vec::new();
        put_tuple(&mut b, CTA_TUPLE_ORIG, &t);
        assert_eq!(parse_tuple(find(&b, CTA_TUPLE_ORIG).unwrap()), Some(t));
    }

    #[test]
    fn dump_filter_shape() {
        let req = dump_request(1, Family::V6, PROTO_UDP, 53, true);
        assert_eq!(
            u16::from_ne_bytes(req[6..8].try_into().unwrap()),
            NLM_F_REQUEST | NLM_F_DUMP
        );
        assert_eq!(req[16], libc::AF_INET6 as u8);
        let body = &req[NLMSG_HDRLEN + NFGENMSG_LEN..];
        let proto = find(find(body, CTA_TUPLE_ORIG).unwrap(), CTA_TUPLE_PROTO).unwrap();
        assert_eq!(find(proto, CTA_PROTO_DST_PORT).and_then(be16), Some(53));
        let filter = find(body, CTA_FILTER).unwrap();
        assert_eq!(
            find(filter, CTA_FILTER_ORIG_FLAGS).map(|v| u32::from_ne_bytes(v.try_into().unwrap())),
            Some(CTA_FILTER_F_PROTO_NUM | CTA_FILTER_F_PROTO_DST_PORT)
        );
        assert!(dump_request(1, Family::V4, PROTO_UDP, 53, false).len() == 20);
    }
}
