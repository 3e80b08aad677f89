//! The plugin's host-wide lock ([`common::lock`] on [`LOCK_PATH`]), held while a listing
//! decides what a transaction does: ADD inserting the iptables hand-off rule once, and the
//! DEL of a guarded attachment, DEL without prevResult and GC removing a bridge with its last
//! member. The DEL of an open attachment, one transaction without listing, needs no lock.

use common::Result;
use common::error::IoContext;
use common::lock::LockGuard;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::Duration;

pub const LOCK_PATH: &str = "/run/cni-rs/firewall.lock";

/// How long an invocation waits for another one's listing and transaction (a few ms each).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Takes the lock, waiting at most [`LOCK_TIMEOUT`] (code 11 past it).
pub fn take() -> Result<LockGuard> {
    let path = Path::new(LOCK_PATH);
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_io_context(|| format!("creating {}", dir.display()))?;
    }
    common::lock::lock(path, LOCK_TIMEOUT, " (another firewall invocation)")
}
