//! The rtnetlink socket underneath [`super::RouteSocket`]: requests with sequence numbers,
//! acks checked, dumps walked to `NLMSG_DONE`, errno kept; and an event socket that joins
//! multicast groups only while something waits on it.

use crate::error::{Error, Result};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NlasIterator,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::io;
use std::os::fd::AsFd;
use std::time::Instant;

/// Receive buffer size; the kernel never sends dump datagrams larger than 32 KiB, and a
/// larger datagram is still read whole (the buffer grows after a peek).
const RECV_BUF: usize = 32 * 1024;
/// Error message TLVs follow the echoed request (`NLM_F_ACK_TLVS`).
const NLM_F_ACK_TLVS: u16 = 0x200;
/// Only the request's header was echoed (`NLM_F_CAPPED`).
const NLM_F_CAPPED: u16 = 0x100;
/// `NLMSGERR_ATTR_MSG`: the extended ack's text.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// How many times a dump that the kernel flagged `NLM_F_DUMP_INTR` is tried.
const DUMP_ATTEMPTS: usize = 3;
use crate::nfnetlink::{
    self, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN, NLMSG_NOOP, NLMSG_OVERRUN, align4,
};

/// Reads one datagram whole into `buf` (peeking its size first, so a reply larger than the
/// buffer is not truncated) and returns its length. Shared by every netlink family we speak.
/// `flags`: 0, or `MSG_DONTWAIT` to get `WouldBlock` at once when nothing is queued.
pub(crate) fn recv_whole(sock: &Socket, buf: &mut Vec<u8>, flags: i32) -> io::Result<usize> {
    loop {
        buf.clear();
        let peeked = match sock.recv(buf, libc::MSG_PEEK | libc::MSG_TRUNC | flags) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        buf.clear();
        if peeked > buf.capacity() {
            buf.reserve(peeked);
        }
        match sock.recv(buf, 0) {
            Ok(n) => return Ok(n.min(buf.len())),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn io_err(op: &str, e: io::Error) -> Error {
    match e.raw_os_error() {
        Some(errno) => Error::netlink(op, errno),
        None => Error::io(format!("netlink {op}"), e),
    }
}

/// Opens a NETLINK_ROUTE socket in the calling thread's namespace, bound to a kernel-chosen
/// port.
fn new_socket() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    Ok(sock)
}

/// The text of an extended ack (`NLMSGERR_ATTR_MSG`), if the kernel sent one. `payload` is
/// what follows the error code: for NLMSG_ERROR the echoed request, then TLVs; for
/// NLMSG_DONE the TLVs alone.
fn extack_text(outer_flags: u16, payload: &[u8], echoes_request: bool) -> Option<String> {
    if outer_flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let echoed = if !echoes_request {
        0
    } else if outer_flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        let len: [u8; 4] = payload.get(0..4)?.try_into().ok()?;
        u32::from_ne_bytes(len) as usize
    };
    let tlvs = payload.get(align4(echoed)..)?;
    NlasIterator::new(tlvs)
        .filter_map(|nla| nla.ok())
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            String::from_utf8_lossy(nla.value())
                .trim_end_matches('\0')
                .to_string()
        })
        .filter(|s| !s.is_empty())
}

/// A kernel error reply, errno kept, with the extended ack's text appended when present.
fn nack(op: &str, code: i32, outer_flags: u16, payload: &[u8], echoes_request: bool) -> Error {
    let mut err = Error::netlink(op, code);
    let text = extack_text(outer_flags, payload, echoes_request);
    if let (Some(text), Error::Netlink { msg, .. }) = (text, &mut err) {
        msg.push_str(&format!(" ({text})"));
    }
    err
}

/// The request side: one outstanding request at a time, replies matched by sequence number.
#[derive(Debug)]
pub(crate) struct NlSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// What a request expects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// An ack (NLMSG_ERROR with code 0) and nothing else of interest.
    Ack,
    /// One message (a `GET` without `NLM_F_DUMP`).
    One,
    /// Messages up to NLMSG_DONE.
    Dump,
}

impl NlSocket {
    /// Opens a request socket in the calling thread's namespace: strict checking of get
    /// requests, extended acks, capped error echoes, connected to the kernel.
    pub(crate) fn open() -> Result<NlSocket> {
        let op = "open socket";
        let sock = new_socket().map_err(|e| io_err(op, e))?;
        sock.set_netlink_get_strict_chk(true)
            .map_err(|e| io_err(op, e))?;
        // Both are optional niceties (older kernels lack them).
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| io_err(op, e))?;
        Ok(NlSocket {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Sends one request with `NLM_F_REQUEST | flags` and returns its sequence number.
    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16, op: &str) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        nl.finalize();
        let len = nl.buffer_len();
        // serialize() panics on a short buffer: size it first.
        self.buf.clear();
        self.buf.resize(len, 0);
        let out = self
            .buf
            .get_mut(..len)
            .ok_or_else(|| Error::internal(format!("netlink {op}: request buffer too short")))?;
        nl.serialize(out);
        loop {
            match self.sock.send(out, 0) {
                Ok(n) if n == len => return Ok(self.seq),
                Ok(n) => {
                    return Err(Error::internal(format!(
                        "netlink {op}: sent {n} of {len} bytes"
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(op, e)),
            }
        }
    }

    /// Reads one datagram whole into `self.buf` and returns its length.
    fn recv_datagram(&mut self, op: &str) -> Result<usize> {
        if self.buf.capacity() < RECV_BUF {
            self.buf.reserve(RECV_BUF);
        }
        recv_whole(&self.sock, &mut self.buf, 0).map_err(|e| io_err(op, e))
    }

    /// Sends a request and collects what it expects back, each reply message (header
    /// included) turned into a `T` by `decode`. The bool is true when a dump was interrupted
    /// by a concurrent change (`NLM_F_DUMP_INTR`). The control messages (ack, error, done)
    /// are read from their headers here, so a caller can decode its replies with a parser of
    /// its own (see [`NlSocket::get_raw`]).
    fn exchange_with<T>(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        reply: Reply,
        op: &str,
        decode: &mut dyn FnMut(&[u8]) -> std::result::Result<T, String>,
    ) -> Result<(Vec<T>, bool)> {
        let seq = self.send(msg, flags, op)?;
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let n = self.recv_datagram(op)?;
            let replies = nfnetlink::replies(self.buf.get(..n).unwrap_or_default())
                .map_err(|e| Error::internal(format!("{op}: {e}")))?;
            for r in replies {
                if r.seq != seq {
                    // A late reply to an earlier request, or a notification (seq 0).
                    log::debug!(
                        "netlink {op}: skipping message with sequence {} (want {seq})",
                        r.seq
                    );
                    continue;
                }
                if r.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                // NLMSG_ERROR and NLMSG_DONE start with an i32 code; an ack is error 0.
                let code = r
                    .body
                    .get(0..4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(i32::from_ne_bytes);
                let after_code = r.body.get(4..).unwrap_or_default();
                match r.msg_type {
                    NLMSG_NOOP => {}
                    NLMSG_ERROR => match code {
                        Some(0) => return Ok((out, interrupted)),
                        Some(code) => {
                            return Err(nack(op, code, r.flags, after_code, true));
                        }
                        None => {
                            return Err(Error::internal(format!(
                                "netlink {op}: malformed error reply"
                            )));
                        }
                    },
                    NLMSG_DONE => match code {
                        Some(code) if code != 0 => {
                            return Err(nack(op, code, r.flags, after_code, false));
                        }
                        _ => return Ok((out, interrupted)),
                    },
                    NLMSG_OVERRUN => {
                        return Err(Error::internal(format!("netlink {op}: overrun")));
                    }
                    _ => match decode(r.raw) {
                        Ok(m) => {
                            out.push(m);
                            if reply == Reply::One {
                                return Ok((out, interrupted));
                            }
                        }
                        Err(e) if reply != Reply::Dump => {
                            return Err(Error::internal(format!(
                                "netlink {op}: cannot decode reply: {e}"
                            )));
                        }
                        Err(e) => {
                            log::warn!(
                                "netlink {op}: skipping a message that does not decode: {e}"
                            );
                        }
                    },
                }
            }
        }
    }

    /// [`NlSocket::exchange_with`] decoding replies with netlink-packet-route.
    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        reply: Reply,
        op: &str,
    ) -> Result<(Vec<RouteNetlinkMessage>, bool)> {
        self.exchange_with(msg, flags, reply, op, &mut |raw| match NetlinkMessage::<
            RouteNetlinkMessage,
        >::deserialize(raw)
        {
            Ok(NetlinkMessage {
                payload: NetlinkPayload::InnerMessage(m),
                ..
            }) => Ok(m),
            Ok(other) => Err(format!("unexpected message {:?}", other.header)),
            Err(e) => Err(e.to_string()),
        })
    }

    /// A `GET` of one object, its reply left undecoded (header included); the kernel's
    /// ENODEV/ENOENT come back as errors.
    pub(crate) fn get_raw(&mut self, msg: RouteNetlinkMessage, op: &str) -> Result<Vec<u8>> {
        let (mut out, _) =
            self.exchange_with(msg, 0, Reply::One, op, &mut |raw| Ok(raw.to_vec()))?;
        out.pop()
            .ok_or_else(|| Error::internal(format!("netlink {op}: empty reply")))
    }

    /// A dump whose messages `decode` turns into `T` (a message it refuses is skipped),
    /// retried when the kernel says a concurrent change interrupted it.
    pub(crate) fn dump_with<T>(
        &mut self,
        msg: RouteNetlinkMessage,
        op: &str,
        decode: &mut dyn FnMut(&[u8]) -> std::result::Result<T, String>,
    ) -> Result<Vec<T>> {
        let mut last = Vec::new();
        for attempt in 1..=DUMP_ATTEMPTS {
            let (out, interrupted) =
                self.exchange_with(msg.clone(), NLM_F_DUMP, Reply::Dump, op, decode)?;
            if !interrupted {
                return Ok(out);
            }
            log::debug!("netlink {op}: dump interrupted (attempt {attempt}), retrying");
            last = out;
        }
        log::warn!("netlink {op}: dump still interrupted after {DUMP_ATTEMPTS} attempts");
        Ok(last)
    }

    /// A mutation: `NLM_F_ACK | flags`, then the ack checked.
    pub(crate) fn request_ack(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &str,
    ) -> Result<()> {
        self.exchange(msg, NLM_F_ACK | flags, Reply::Ack, op)
            .map(|_| ())
    }

    /// A dump, retried when the kernel says a concurrent change interrupted it.
    pub(crate) fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.dump_with(
            msg,
            op,
            &mut |raw| match NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw) {
                Ok(NetlinkMessage {
                    payload: NetlinkPayload::InnerMessage(m),
                    ..
                }) => Ok(m),
                Ok(other) => Err(format!("unexpected message {:?}", other.header)),
                Err(e) => Err(e.to_string()),
            },
        )
    }
}

/// The event side: a socket in the same namespace that joins a multicast group only while a
/// wait is in progress.
#[derive(Debug)]
pub(crate) struct EventSocket {
    sock: Socket,
    buf: Vec<u8>,
}

impl EventSocket {
    pub(crate) fn open() -> Result<EventSocket> {
        let op = "open event socket";
        let sock = new_socket().map_err(|e| io_err(op, e))?;
        sock.set_non_blocking(true).map_err(|e| io_err(op, e))?;
        Ok(EventSocket {
            sock,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Joins `group` (an `RTNLGRP_*`), runs `f`, and leaves the group again.
    pub(crate) fn with_group<T>(
        &mut self,
        group: u32,
        f: impl FnOnce(&mut EventSocket) -> Result<T>,
    ) -> Result<T> {
        self.drain();
        self.sock
            .add_membership(group)
            .map_err(|e| io_err("subscribe to events", e))?;
        let res = f(self);
        let _ = self.sock.drop_membership(group);
        self.drain();
        res
    }

    /// Discards whatever is queued (events and overrun errors alike).
    pub(crate) fn drain(&mut self) {
        loop {
            self.buf.clear();
            if self.buf.capacity() < RECV_BUF {
                self.buf.reserve(RECV_BUF);
            }
            match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ENOBUFS: events were lost; the caller re-reads the state anyway.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(_) => return,
            }
        }
    }

    /// Blocks until an event arrives (true) or `deadline` passes (false).
    pub(crate) fn wait(&mut self, deadline: Instant) -> Result<bool> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            let left = deadline - now;
            // Round up so that a sub-millisecond remainder does not spin.
            let ms = u32::try_from(left.as_millis().saturating_add(1)).unwrap_or(u32::MAX);
            let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) => continue,
                Ok(_) => return Ok(true),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(Error::netlink("wait for events", e as i32)),
            }
        }
    }
}
