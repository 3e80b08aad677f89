//! Waiting for kernel state without sleeping: join the event group first, read the state,
//! then wait for events with poll(2) and re-read the state on each wake-up.

use super::{Family, RouteSocket};
use crate::error::{Error, Result};
use std::time::{Duration, Instant};

/// `IFA_F_TENTATIVE`.
const IFA_F_TENTATIVE: u32 = 0x40;
/// `IFA_F_DADFAILED`.
const IFA_F_DADFAILED: u32 = 0x08;

/// What a state check says.
enum Check {
    Done,
    NotYet,
}

impl RouteSocket {
    /// Joins `group`, then alternates `check` and waiting for an event until `check` says
    /// done (true) or `timeout` passes (false). Events only wake us; the state is always
    /// read fresh, so lost or coalesced events do no harm.
    fn wait_for(
        &mut self,
        group: u32,
        timeout: Duration,
        mut check: impl FnMut(&mut RouteSocket) -> Result<Check>,
    ) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        // Take the event socket out so that `check` can use `self` while it is subscribed.
        let mut events = self.events.take().ok_or_else(|| {
            Error::internal("waiting needs a socket opened with RouteSocket::open*_for_waits")
        })?;
        let res = events.with_group(group, |ev| {
            loop {
                if let Check::Done = check(self)? {
                    return Ok(true);
                }
                if !ev.wait(deadline)? {
                    return Ok(false);
                }
                ev.drain();
            }
        });
        self.events = Some(events);
        res
    }

    /// Waits, without polling, until link `index` is operationally up: subscribes to link
    /// events, checks the current state, then waits for the event. Ok(false) on timeout.
    pub fn wait_oper_up(&mut self, index: u32, timeout: Duration) -> Result<bool> {
        self.wait_for(libc::RTNLGRP_LINK, timeout, |s| {
            match s.link_by_index(index)? {
                None => Err(Error::netlink("wait for link up", libc::ENODEV)
                    .context(format!("link {index}"))),
                Some(l) if l.oper_up => Ok(Check::Done),
                Some(_) => Ok(Check::NotYet),
            }
        })
    }

    /// Waits, without polling, until no IPv6 address on `index` is tentative (DAD done).
    /// Ok(false) on timeout; an address that failed DAD is an error.
    pub fn wait_dad_done(&mut self, index: u32, timeout: Duration) -> Result<bool> {
        self.wait_for(libc::RTNLGRP_IPV6_IFADDR, timeout, |s| {
            let addrs = s.addresses(Some(index), Some(Family::V6))?;
            if let Some(failed) = addrs.iter().find(|a| a.flags & IFA_F_DADFAILED != 0) {
                return Err(Error::Netlink {
                    op: "wait for DAD".to_string(),
                    errno: libc::EADDRNOTAVAIL,
                    msg: format!(
                        "duplicate address detection failed for {} on link {index}",
                        failed.addr
                    ),
                });
            }
            if addrs.iter().any(|a| a.flags & IFA_F_TENTATIVE != 0) {
                Ok(Check::NotYet)
            } else {
                Ok(Check::Done)
            }
        })
    }
}
