//! `NETLINK_NETFILTER` messages and socket, shared by ctnetlink ([`crate::conntrack`]) and
//! nf_tables ([`crate::nft::netlink`]).
//!
//! Messages are encoded by hand: an `nlmsghdr`, an `nfgenmsg`, then attributes. The kernel
//! answers a request in the sender's own `sendmsg` call, so every reply to a request (or to
//! a batch) is queued on the socket by the time the send returns.

use crate::error::{Error, Result};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use std::io;

pub(crate) const NLMSG_HDRLEN: usize = 16;
pub(crate) const NFGENMSG_LEN: usize = 4;
pub(crate) const NLMSG_NOOP: u16 = 1;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLMSG_OVERRUN: u16 = 4;
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
/// Set on the messages of a dump during which the dumped objects changed.
pub(crate) const NLM_F_DUMP_INTR: u16 = 0x10;
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const RECV_BUF: usize = 16 * 1024;

pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends one attribute.
pub(crate) fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align4(buf.len()), 0);
}

/// Appends a NUL-terminated string attribute.
pub(crate) fn put_str(buf: &mut Vec<u8>, kind: u16, value: &str) {
    let mut v = Vec::with_capacity(value.len() + 1);
    v.extend_from_slice(value.as_bytes());
    v.push(0);
    put_attr(buf, kind, &v);
}

/// Appends a nested attribute whose contents `f` writes.
pub(crate) fn put_nested(buf: &mut Vec<u8>, kind: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    f(buf);
    let len = (buf.len() - start) as u16;
    if let Some(slot) = buf.get_mut(start..start + 2) {
        slot.copy_from_slice(&len.to_ne_bytes());
    }
}

/// Appends one whole message to `out`: header, nfgenmsg (`family`, version 0, `res_id`
/// big endian), attributes.
pub(crate) fn put_message(
    out: &mut Vec<u8>,
    msg_type: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&msg_type.to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
    out.resize(align4(out.len()), 0);
}

/// The attributes in `buf`: (type without flags, value). Stops at the first malformed one.
pub(crate) fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(rest.get(0..2)?.try_into().ok()?));
        let kind = u16::from_ne_bytes(rest.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        let value = rest.get(4..len)?;
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some((kind, value))
    })
}

/// The first attribute of type `kind` in `buf`.
pub(crate) fn find(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

/// A u32 attribute's value (host byte order, as rtnetlink sends them).
pub(crate) fn u32_ne(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(0..4)?.try_into().ok()?))
}

/// A string attribute's value without its NUL.
pub(crate) fn as_str(v: &[u8]) -> Option<&str> {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    std::str::from_utf8(v.get(..end)?).ok()
}

/// One message read back: type, flags, sequence number and what follows the header.
#[derive(Debug)]
pub(crate) struct Reply<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    pub body: &'a [u8],
    /// The whole message, header included.
    pub raw: &'a [u8],
}

impl Reply<'_> {
    /// For `NLMSG_ERROR` and `NLMSG_DONE`: the errno (positive), 0 for an acknowledgement
    /// or a dump that completed.
    pub fn errno(&self) -> Option<i32> {
        (self.msg_type == NLMSG_ERROR || self.msg_type == NLMSG_DONE).then(|| {
            let code = self
                .body
                .get(0..4)
                .and_then(|b| b.try_into().ok())
                .map(i32::from_ne_bytes)
                .unwrap_or(0);
            -code
        })
    }

    /// The attributes after the nfgenmsg.
    pub fn attrs(&self) -> &[u8] {
        self.body.get(NFGENMSG_LEN..).unwrap_or(&[])
    }
}

/// The messages of one datagram (any netlink family: only the `nlmsghdr` is read).
pub(crate) fn replies(buf: &[u8]) -> Result<Vec<Reply<'_>>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let msg = buf.get(off..).unwrap_or(&[]);
        let field32 = |at: usize| {
            msg.get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_ne_bytes)
                .unwrap_or(0)
        };
        let field16 = |at: usize| {
            msg.get(at..at + 2)
                .and_then(|b| b.try_into().ok())
                .map(u16::from_ne_bytes)
                .unwrap_or(0)
        };
        let len = field32(0) as usize;
        if len < NLMSG_HDRLEN || len > msg.len() {
            return Err(Error::internal(format!(
                "netlink: malformed reply (message length {len})"
            )));
        }
        out.push(Reply {
            msg_type: field16(4),
            flags: field16(6),
            seq: field32(8),
            body: msg.get(NLMSG_HDRLEN..len).unwrap_or(&[]),
            raw: msg.get(..len).unwrap_or(&[]),
        });
        off += align4(len);
    }
    Ok(out)
}

/// A `NETLINK_NETFILTER` socket in the calling thread's network namespace.
#[derive(Debug)]
pub(crate) struct NfSocket {
    sock: Socket,
    seq: u32,
    pub buf: Vec<u8>,
    /// Names the subsystem in errors ("conntrack", "nftables").
    what: &'static str,
}

impl NfSocket {
    /// Opens the socket (kernel state: none).
    pub fn open(what: &'static str) -> Result<NfSocket> {
        let err = |e| io_err(what, "open socket", e);
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(err)?;
        sock.bind_auto().map_err(err)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(err)?;
        Ok(NfSocket {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
            what,
        })
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    pub fn send(&mut self, msg: &[u8], op: &str) -> Result<()> {
        loop {
            match self.sock.send(msg, 0) {
                Ok(n) if n == msg.len() => return Ok(()),
                Ok(n) => {
                    return Err(Error::internal(format!(
                        "{} {op}: sent {n} of {} bytes",
                        self.what,
                        msg.len()
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(self.what, op, e)),
            }
        }
    }

    /// Reads one datagram whole into `self.buf`; returns its length.
    pub fn recv(&mut self, op: &str) -> Result<usize> {
        crate::netlink::recv_whole(&self.sock, &mut self.buf, 0)
            .map_err(|e| io_err(self.what, op, e))
    }

    /// Like [`NfSocket::recv`], but `None` at once when nothing is queued.
    pub fn try_recv(&mut self, op: &str) -> Result<Option<usize>> {
        match crate::netlink::recv_whole(&self.sock, &mut self.buf, libc::MSG_DONTWAIT) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(io_err(self.what, op, e)),
        }
    }
}

fn io_err(what: &str, op: &str, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(errno) => Error::netlink(format!("{what} {op}"), errno),
        None => Error::io(format!("{what} {op}"), e),
    }
}
