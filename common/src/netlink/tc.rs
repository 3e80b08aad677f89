//! Traffic control over rtnetlink: qdiscs (tbf as the root of a device, the ingress qdisc),
//! a u32 match-all filter whose mirred action redirects to another device, and ifb devices.
//!
//! netlink-packet-route has no TBF type: its attributes (`TCA_TBF_PARMS`, `TCA_TBF_RATE64`)
//! are encoded here, and decoded from the nested `TCA_OPTIONS` of a dump.
//!
//! Handles are `u32` in the kernel's layout: major in the high 16 bits (`1:` = `0x0001_0000`).

use super::RouteSocket;
use crate::error::{Error, Result};
use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, Nla, NlasIterator};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};

/// `TC_H_ROOT`: the parent of a device's root qdisc.
pub const TC_H_ROOT: u32 = 0xffff_ffff;
/// `TC_H_INGRESS`: the parent of the ingress qdisc.
pub const TC_H_INGRESS: u32 = 0xffff_fff1;
/// `1:`, the handle of the tbf this module puts at the root of a device.
pub const TBF_HANDLE: u32 = 0x0001_0000;
/// `ffff:`, the handle of the ingress qdisc (the only one the kernel accepts).
pub const INGRESS_HANDLE: u32 = 0xffff_0000;
/// `ETH_P_ALL`: a filter for every protocol.
pub const ETH_P_ALL: u16 = 0x0003;

/// `TCA_TBF_PARMS`: `struct tc_tbf_qopt`.
const TCA_TBF_PARMS: u16 = 1;
/// `TCA_TBF_RATE64`: the rate in bytes/s when it does not fit the u32 of `tc_ratespec`.
const TCA_TBF_RATE64: u16 = 4;
/// `TCA_OPTIONS`, as netlink-packet-route keeps it for kinds it does not know.
const TCA_OPTIONS: u16 = 2;
/// `NLA_TYPE_MASK`: the attribute type without the nested/byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `sizeof(struct tc_ratespec)`.
const RATESPEC_LEN: usize = 12;
/// `sizeof(struct tc_tbf_qopt)`: rate, peakrate, limit, buffer, mtu.
const TBF_QOPT_LEN: usize = 2 * RATESPEC_LEN + 12;
/// The link layer in the `tc_ratespec` of a tbf: 0 (`TC_LINKLAYER_UNAWARE`), as the reference
/// plugin sends it. The kernel then looks for a rate table, finds none (none is sent) and
/// shapes exactly as for Ethernet; the dump reports the link layer as sent.
const TBF_LINKLAYER: u8 = 0;
/// The kernel caps a tbf's buffer at `u32::MAX` ns when it derives from it the largest packet
/// the tbf lets through (it keeps the whole buffer as the bucket depth).
const MAX_BUFFER_NS: u64 = u32::MAX as u64;
/// Nanoseconds per psched tick in the kernel (`PSCHED_SHIFT` = 6), the unit of the buffer.
const NS_PER_TICK: u64 = 64;
/// psched time units per second (microseconds).
const USEC_PER_SEC: f64 = 1_000_000.0;
const NSEC_PER_SEC: u128 = 1_000_000_000;
/// 2^63, where int64 ends.
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

/// The kernel's psched clock as `/proc/net/psched` describes it: how many ticks make one
/// microsecond. Every kernel since 2.6.x reports 1000/64 (a tick is 64 ns).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PschedClock {
    pub ticks_per_usec: f64,
}

impl PschedClock {
    /// What every current kernel reports.
    pub const DEFAULT: PschedClock = PschedClock {
        ticks_per_usec: 1000.0 / 64.0,
    };

    /// Reads `/proc/net/psched`; falls back to [`PschedClock::DEFAULT`] (with a log line)
    /// when it cannot be read or parsed.
    pub fn read() -> PschedClock {
        match std::fs::read_to_string("/proc/net/psched") {
            Ok(text) => PschedClock::parse(&text).unwrap_or_else(|| {
                log::warn!("cannot parse /proc/net/psched ({text:?}); assuming 64 ns ticks");
                PschedClock::DEFAULT
            }),
            Err(e) => {
                log::warn!("cannot read /proc/net/psched ({e}); assuming 64 ns ticks");
                PschedClock::DEFAULT
            }
        }
    }

    /// Parses the four hex words of `/proc/net/psched` (ns per µs, ns per tick, clock
    /// resolution, hrtimer rate), as the Go netlink library does, so that buffers computed
    /// here equal the reference plugin's to the tick.
    pub fn parse(text: &str) -> Option<PschedClock> {
        let words: Vec<u64> = text
            .split_whitespace()
            .map(|w| u64::from_str_radix(w, 16).ok())
            .collect::<Option<_>>()?;
        let &[mut t2us, us2t, clock_res, ..] = words.as_slice() else {
            return None;
        };
        if us2t == 0 || clock_res == 0 {
            return None;
        }
        if clock_res == 1_000_000_000 {
            t2us = us2t;
        }
        let factor = clock_res as f64 / USEC_PER_SEC;
        Some(PschedClock {
            ticks_per_usec: t2us as f64 / us2t as f64 * factor,
        })
    }
}

/// How a count computed in floating point, or a sum, becomes the u32 of the kernel API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Narrowing {
    /// Truncate toward zero and saturate: a count too large for a u32 becomes `u32::MAX`.
    Saturate,
    /// What the reference plugin's Go code does on amd64: through an int64, keeping the low
    /// 32 bits (so 2^32 + 5 becomes 5), and sums wrap.
    Wrap,
}

impl Narrowing {
    fn count(self, x: f64) -> u32 {
        match self {
            // `as` truncates toward zero and saturates (NaN becomes 0).
            Narrowing::Saturate => x as u32,
            // Go converts with CVTTSD2SQ, whose answer out of the int64 range (and for NaN)
            // is i64::MIN, whose low 32 bits are 0.
            Narrowing::Wrap if !(-TWO_POW_63..TWO_POW_63).contains(&x) => 0,
            Narrowing::Wrap => x as i64 as u32,
        }
    }

    fn sum(self, a: u32, b: u32) -> u32 {
        match self {
            Narrowing::Saturate => a.saturating_add(b),
            Narrowing::Wrap => a.wrapping_add(b),
        }
    }
}

/// The parameters of a tbf qdisc, in the kernel's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tbf {
    /// Bytes per second.
    pub rate: u64,
    /// Bucket size as the time it takes to send it at `rate`, in psched ticks.
    pub buffer: u32,
    /// Bytes that may wait in the queue.
    pub limit: u32,
}

impl Tbf {
    /// tbf parameters from a rate and a burst in **bits** (per second), with the queue
    /// allowed to hold `latency_ms` worth of traffic on top of the burst: rate = bits/8
    /// bytes/s, burst = bits/8 bytes, buffer = ticks(burst·10⁶/rate µs), limit =
    /// rate·latency + burst. The arithmetic is the reference plugin's, step for step
    /// (including where it truncates), so that its qdiscs and ours compare equal; where a
    /// count does not fit the u32 of the kernel API, it is the largest one that does (the
    /// reference's Go conversions wrap there: see [`Tbf::from_bits_as_reference`]).
    ///
    /// Code 7 when the rate is below 8 bit/s, the burst below 8 bits or above 32 Gbit, or
    /// the bucket would let no byte through (the kernel refuses such a tbf).
    pub fn from_bits(
        rate_bits: u64,
        burst_bits: u64,
        latency_ms: u32,
        clock: PschedClock,
    ) -> Result<Tbf> {
        let rate = rate_bits / 8;
        let burst = burst_bits / 8;
        if rate == 0 {
            return Err(Error::config(format!(
                "rate {rate_bits} bit/s is too low (at least 8 bit/s)"
            )));
        }
        if burst == 0 {
            return Err(Error::config(format!(
                "burst {burst_bits} bits is too low (at least 8 bits)"
            )));
        }
        let burst = u32::try_from(burst)
            .ok()
            .filter(|b| *b < u32::MAX)
            .ok_or_else(|| Error::config("burst cannot be more than 4GB"))?;
        let tbf = Tbf::compute(rate, burst, latency_ms, clock, Narrowing::Saturate);
        if tbf.max_packet() == 0 {
            return Err(Error::config(format!(
                "a burst of {burst_bits} bits at {rate_bits} bit/s lasts less than the kernel's \
                 time resolution allows for one byte; raise the burst"
            )));
        }
        Ok(tbf)
    }

    /// The parameters the reference plugin computes for the same bits: equal to
    /// [`Tbf::from_bits`]'s wherever every count fits a u32, wrapped where one does not (a
    /// buffer of 2^32 + 5 ticks becomes 5, a limit of 2^32 + 5 bytes becomes 5). None for
    /// input it refuses before computing (a burst of 2^32−1 bytes or more) or cannot compute
    /// (no whole byte). Qdiscs it made pass CHECK through this.
    pub fn from_bits_as_reference(
        rate_bits: u64,
        burst_bits: u64,
        latency_ms: u32,
        clock: PschedClock,
    ) -> Option<Tbf> {
        let rate = rate_bits / 8;
        let burst = u32::try_from(burst_bits / 8)
            .ok()
            .filter(|b| *b < u32::MAX)?;
        (rate > 0 && burst > 0)
            .then(|| Tbf::compute(rate, burst, latency_ms, clock, Narrowing::Wrap))
    }

    /// rate in bytes/s, burst in bytes; every step in the reference's order and precision.
    fn compute(
        rate: u64,
        burst: u32,
        latency_ms: u32,
        clock: PschedClock,
        narrow: Narrowing,
    ) -> Tbf {
        let usec = narrow.count(f64::from(burst) * USEC_PER_SEC / rate as f64);
        let buffer = narrow.count(f64::from(usec) * clock.ticks_per_usec);
        let latency_usec = USEC_PER_SEC * (f64::from(latency_ms) / 1000.0);
        let latency_bytes = narrow.count(rate as f64 * latency_usec / USEC_PER_SEC);
        Tbf {
            rate,
            buffer,
            limit: narrow.sum(latency_bytes, burst),
        }
    }

    /// The largest packet, in bytes, the kernel lets through this tbf: what the buffer,
    /// capped at `u32::MAX` ns, is worth at the rate (at most `u32::MAX`). The kernel refuses
    /// a tbf where this is 0, and drops packets larger than it.
    pub fn max_packet(&self) -> u32 {
        let ns = (u64::from(self.buffer) * NS_PER_TICK).min(MAX_BUFFER_NS);
        let bytes = u128::from(ns) * u128::from(self.rate) / NSEC_PER_SEC;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    /// The bucket size in bytes that `buffer` stands for at `rate`.
    pub fn burst_bytes(&self, clock: PschedClock) -> u64 {
        let usec = f64::from(self.buffer) / clock.ticks_per_usec;
        (usec * self.rate as f64 / USEC_PER_SEC) as u64
    }

    /// The `TCA_OPTIONS` of a tbf qdisc.
    fn options(&self) -> Vec<TcOption> {
        let mut qopt = [0u8; TBF_QOPT_LEN];
        let rate32 = u32::try_from(self.rate).unwrap_or(u32::MAX);
        // struct tc_ratespec rate: cell_log u8, linklayer u8, overhead u16, cell_align i16,
        // mpu u16, rate u32. peakrate and mtu stay zero (no peak rate).
        put(&mut qopt, 1, &[TBF_LINKLAYER]);
        put(&mut qopt, 8, &rate32.to_ne_bytes());
        put(&mut qopt, 2 * RATESPEC_LEN, &self.limit.to_ne_bytes());
        put(&mut qopt, 2 * RATESPEC_LEN + 4, &self.buffer.to_ne_bytes());
        let mut opts = vec![TcOption::Other(DefaultNla::new(
            TCA_TBF_PARMS,
            qopt.to_vec(),
        ))];
        if self.rate > u64::from(u32::MAX) {
            opts.push(TcOption::Other(DefaultNla::new(
                TCA_TBF_RATE64,
                self.rate.to_ne_bytes().to_vec(),
            )));
        }
        opts
    }

    /// Reads a tbf from the attributes nested in its `TCA_OPTIONS`.
    fn parse(nested: &[u8]) -> Option<Tbf> {
        let mut qopt = None;
        let mut rate64 = None;
        for nla in NlasIterator::new(nested).filter_map(|n| n.ok()) {
            match nla.kind() & NLA_TYPE_MASK {
                TCA_TBF_PARMS => qopt = Some(nla.value().to_vec()),
                TCA_TBF_RATE64 => {
                    rate64 = nla
                        .value()
                        .get(..8)
                        .and_then(|b| <[u8; 8]>::try_from(b).ok())
                        .map(u64::from_ne_bytes);
                }
                _ => {}
            }
        }
        let qopt = qopt?;
        let rate32 = get_u32(&qopt, 8)?;
        Some(Tbf {
            rate: rate64.unwrap_or(u64::from(rate32)),
            limit: get_u32(&qopt, 2 * RATESPEC_LEN)?,
            buffer: get_u32(&qopt, 2 * RATESPEC_LEN + 4)?,
        })
    }
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(slot) = buf.get_mut(at..at + bytes.len()) {
        slot.copy_from_slice(bytes);
    }
}

fn get_u32(buf: &[u8], at: usize) -> Option<u32> {
    buf.get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_ne_bytes)
}

/// A qdisc as a dump reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    pub index: u32,
    pub handle: u32,
    pub parent: u32,
    /// "tbf", "ingress", "noqueue", ...
    pub kind: String,
    /// The parameters, when `kind` is "tbf".
    pub tbf: Option<Tbf>,
    /// `TCA_OPTIONS` as the kernel reported it (the nested attributes, every field of them),
    /// for a kind this module does not decode further than [`Qdisc::tbf`]; empty otherwise.
    pub options: Vec<u8>,
}

impl Qdisc {
    pub fn is_root(&self) -> bool {
        self.parent == TC_H_ROOT
    }
}

/// A filter as a dump reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub index: u32,
    pub parent: u32,
    pub handle: u32,
    pub prio: u16,
    /// Host byte order (`ETH_P_ALL` = 3).
    pub protocol: u16,
    /// "u32", ...
    pub kind: String,
    /// The ifindex a mirred action of this filter redirects to (egress redirect).
    pub redirect_to: Option<u32>,
}

/// An ifb device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfbLink {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub txqlen: u32,
    pub up: bool,
    pub mac: Option<super::Mac>,
    /// IFLA_IFALIAS, when set (a note of who owns the device).
    pub alias: Option<String>,
}

fn qdisc_msg(index: u32, parent: u32, handle: u32) -> Result<TcMessage> {
    let index = i32::try_from(index)
        .map_err(|_| Error::internal(format!("interface index {index} out of range")))?;
    let mut msg = TcMessage::with_index(index);
    msg.header.parent = TcHandle::from(parent);
    msg.header.handle = TcHandle::from(handle);
    Ok(msg)
}

/// `tcm_info` of a filter: priority in the high 16 bits, protocol (network order) low.
fn filter_info(prio: u16, protocol: u16) -> u32 {
    (u32::from(prio) << 16) | u32::from(protocol.to_be())
}

fn qdisc_from_msg(msg: &TcMessage) -> Qdisc {
    let mut q = Qdisc {
        index: u32::try_from(msg.header.index).unwrap_or(0),
        handle: msg.header.handle.into(),
        parent: msg.header.parent.into(),
        kind: String::new(),
        tbf: None,
        options: Vec::new(),
    };
    for attr in &msg.attributes {
        match attr {
            TcAttribute::Kind(k) => q.kind = k.clone(),
            TcAttribute::Options(opts) => {
                // A kind netlink-packet-route does not know (tbf): the whole TCA_OPTIONS
                // comes as one attribute holding the nested ones.
                if let Some(nla) = opts.iter().find_map(|o| match o {
                    TcOption::Other(nla) if nla.kind() & NLA_TYPE_MASK == TCA_OPTIONS => Some(nla),
                    _ => None,
                }) {
                    q.options = vec![0u8; nla.value_len()];
                    nla.emit_value(&mut q.options);
                }
            }
            _ => {}
        }
    }
    if q.kind == "tbf" {
        q.tbf = Tbf::parse(&q.options);
    }
    q
}

fn filter_from_msg(msg: &TcMessage) -> Filter {
    let info = msg.header.info;
    let mut f = Filter {
        index: u32::try_from(msg.header.index).unwrap_or(0),
        parent: msg.header.parent.into(),
        handle: msg.header.handle.into(),
        prio: (info >> 16) as u16,
        protocol: u16::from_be((info & 0xffff) as u16),
        kind: String::new(),
        redirect_to: None,
    };
    for attr in &msg.attributes {
        match attr {
            TcAttribute::Kind(k) => f.kind = k.clone(),
            TcAttribute::Options(opts) => {
                for opt in opts {
                    if let TcOption::U32(TcFilterU32Option::Action(actions)) = opt {
                        f.redirect_to = f.redirect_to.or_else(|| redirect_target(actions));
                    }
                }
            }
            _ => {}
        }
    }
    f
}

/// The ifindex of the first mirred egress redirect among `actions`.
fn redirect_target(actions: &[TcAction]) -> Option<u32> {
    actions.iter().find_map(|a| {
        a.attributes.iter().find_map(|attr| match attr {
            TcActionAttribute::Options(opts) => opts.iter().find_map(|o| match o {
                TcActionOption::Mirror(TcActionMirrorOption::Parms(p))
                    if p.eaction == TcMirrorActionType::EgressRedir =>
                {
                    Some(p.ifindex)
                }
                _ => None,
            }),
            _ => None,
        })
    })
}

impl IfbLink {
    /// `link` as an ifb device; None when it is another kind of device.
    fn of(link: super::Link) -> Option<IfbLink> {
        (link.kind.as_deref() == Some("ifb")).then_some(IfbLink {
            index: link.index,
            name: link.name,
            mtu: link.mtu,
            txqlen: link.txqlen,
            up: link.up,
            mac: link.mac,
            alias: link.alias,
        })
    }
}

impl RouteSocket {
    /// The qdiscs of device `index` (the kernel's built-in default qdiscs included when it
    /// dumps them, e.g. "noqueue" at the root of a veth).
    pub fn qdiscs(&mut self, index: u32) -> Result<Vec<Qdisc>> {
        // The kernel ignores the index of a qdisc dump request: dump all, keep ours.
        let msg = qdisc_msg(0, 0, 0)?;
        let out = self
            .nl
            .dump(RouteNetlinkMessage::GetQueueDiscipline(msg), "dump qdiscs")?;
        Ok(out
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewQueueDiscipline(q) => Some(qdisc_from_msg(q)),
                _ => None,
            })
            .filter(|q| q.index == index)
            .collect())
    }

    /// The root qdisc of device `index`, if the dump shows one.
    pub fn root_qdisc(&mut self, index: u32) -> Result<Option<Qdisc>> {
        Ok(self.qdiscs(index)?.into_iter().find(Qdisc::is_root))
    }

    fn new_qdisc(&mut self, msg: TcMessage, flags: u16, op: &str) -> Result<()> {
        self.nl
            .request_ack(RouteNetlinkMessage::NewQueueDiscipline(msg), flags, op)
    }

    fn tbf_msg(index: u32, tbf: &Tbf) -> Result<TcMessage> {
        let mut msg = qdisc_msg(index, TC_H_ROOT, TBF_HANDLE)?;
        msg.attributes.push(TcAttribute::Kind("tbf".into()));
        msg.attributes.push(TcAttribute::Options(tbf.options()));
        Ok(msg)
    }

    /// Adds a tbf with handle `1:` at the root of device `index`. EEXIST when the device
    /// already has a root qdisc other than its built-in default.
    pub fn add_tbf(&mut self, index: u32, tbf: &Tbf) -> Result<()> {
        let msg = RouteSocket::tbf_msg(index, tbf)?;
        self.new_qdisc(
            msg,
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add tbf qdisc (link {index})"),
        )
    }

    /// Puts a tbf with handle `1:` at the root of device `index`, changing a tbf `1:` that
    /// is there in place and replacing any other root qdisc.
    pub fn replace_tbf(&mut self, index: u32, tbf: &Tbf) -> Result<()> {
        let msg = RouteSocket::tbf_msg(index, tbf)?;
        self.new_qdisc(
            msg,
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("replace tbf qdisc (link {index})"),
        )
    }

    /// Adds the ingress qdisc (`ffff:`) to device `index`; EEXIST if it has one.
    pub fn add_ingress_qdisc(&mut self, index: u32) -> Result<()> {
        let mut msg = qdisc_msg(index, TC_H_INGRESS, INGRESS_HANDLE)?;
        msg.attributes.push(TcAttribute::Kind("ingress".into()));
        self.new_qdisc(
            msg,
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add ingress qdisc (link {index})"),
        )
    }

    /// Deletes the qdisc `handle` under `parent` ([`TC_H_ROOT`] or [`TC_H_INGRESS`]) of
    /// device `index`. Ok(false) when there is no such qdisc (or no such device); an error
    /// when another qdisc sits there.
    pub fn delete_qdisc(&mut self, index: u32, parent: u32, handle: u32) -> Result<bool> {
        let present = self
            .qdiscs(index)?
            .iter()
            .any(|q| q.parent == parent && q.handle == handle);
        if !present {
            return Ok(false);
        }
        let msg = qdisc_msg(index, parent, handle)?;
        let res = self.nl.request_ack(
            RouteNetlinkMessage::DelQueueDiscipline(msg),
            0,
            &format!("delete qdisc {handle:#x} (link {index})"),
        );
        match res {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds to the qdisc `parent` of device `index` a u32 filter at priority `prio`, for
    /// every protocol, that matches every packet (one zero key) and redirects it to the
    /// egress of device `target` (mirred); its class is `1:1`.
    pub fn add_redirect_filter(
        &mut self,
        index: u32,
        parent: u32,
        prio: u16,
        target: u32,
    ) -> Result<()> {
        let mut msg = qdisc_msg(index, parent, 0)?;
        msg.header.info = filter_info(prio, ETH_P_ALL);

        let mut sel = TcU32Selector::default();
        sel.flags = TcU32SelectorFlags::Terminal;
        sel.nkeys = 1;
        sel.keys = vec![TcU32Key::default()];

        let mut generic = TcActionGeneric::default();
        generic.action = TcActionType::Stolen;
        let mut mirror = TcMirror::default();
        mirror.generic = generic;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = target;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind("mirred".into()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];

        msg.attributes.push(TcAttribute::Kind("u32".into()));
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(sel)),
            TcOption::U32(TcFilterU32Option::ClassId(TcHandle { major: 1, minor: 1 })),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]));
        self.nl.request_ack(
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("add redirect filter to link {target} (link {index})"),
        )
    }

    /// The filters attached to qdisc `parent` of device `index` (empty when there is no such
    /// qdisc). A u32 filter also reports its hash table as a filter with no action.
    pub fn filters(&mut self, index: u32, parent: u32) -> Result<Vec<Filter>> {
        let msg = qdisc_msg(index, parent, 0)?;
        let out = self
            .nl
            .dump(RouteNetlinkMessage::GetTrafficFilter(msg), "dump filters")?;
        Ok(out
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewTrafficFilter(f) => Some(filter_from_msg(f)),
                _ => None,
            })
            .filter(|f| f.index == index)
            .collect())
    }

    /// Deletes every filter at priority `prio` of qdisc `parent` on device `index`.
    /// Ok(false) when there was none.
    pub fn delete_filters(&mut self, index: u32, parent: u32, prio: u16) -> Result<bool> {
        if prio == 0 {
            // Priority 0 would flush every filter of the qdisc.
            return Err(Error::internal(
                "delete_filters: priority 0 is not a filter",
            ));
        }
        if !self.filters(index, parent)?.iter().any(|f| f.prio == prio) {
            return Ok(false);
        }
        let mut msg = qdisc_msg(index, parent, 0)?;
        msg.header.info = filter_info(prio, 0);
        let res = self.nl.request_ack(
            RouteNetlinkMessage::DelTrafficFilter(msg),
            0,
            &format!("delete filters at priority {prio} (link {index})"),
        );
        match res {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Creates an ifb device `name`, up, with `mtu` (0 = default), a transmit queue length
    /// of 0 and, if given, an alias (IFLA_IFALIAS, at most 255 bytes). EEXIST if the name is
    /// taken.
    pub fn create_ifb(&mut self, name: &str, mtu: u32, alias: Option<&str>) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        if mtu != 0 {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes.push(LinkAttribute::TxQueueLen(0));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]));
        self.nl.request_ack(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("create ifb {name}"),
        )?;
        if let Some(alias) = alias {
            // The kernel applies IFLA_IFALIAS on a change, not on creation.
            let index = self
                .ifb_by_name(name)?
                .ok_or_else(|| Error::netlink(format!("get ifb {name}"), libc::ENODEV))?
                .index;
            self.set_alias(index, alias)?;
        }
        Ok(())
    }

    /// Sets (or, with "", clears) the alias of device `index`.
    pub fn set_alias(&mut self, index: u32, alias: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes
            .push(LinkAttribute::IfAlias(alias.to_string()));
        self.nl.request_ack(
            RouteNetlinkMessage::SetLink(msg),
            0,
            &format!("set alias (link {index})"),
        )
    }

    /// The ifb device `name`; None when there is no device of that name or it is not an ifb.
    pub fn ifb_by_name(&mut self, name: &str) -> Result<Option<IfbLink>> {
        Ok(self.link_by_name(name)?.and_then(IfbLink::of))
    }

    /// Every ifb device of this namespace.
    pub fn ifb_links(&mut self) -> Result<Vec<IfbLink>> {
        Ok(self.links()?.into_iter().filter_map(IfbLink::of).collect())
    }
}

#[cfg(test)]
mod tests;
