//! The plugin's host-wide lock: an exclusive flock on [`LOCK_PATH`], held while a listing
//! decides what a transaction does (ADD inserting the iptables hand-off rule once; DEL without
//! prevResult and GC removing bridges left without members). DEL with prevResult, one
//! transaction without listing, needs no lock. The kernel drops the lock when a holder dies.

use common::error::IoContext;
use common::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

pub const LOCK_PATH: &str = "/run/cni-rs/firewall.lock";

/// How long an invocation waits for another one's listing and transaction (a few ms each).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct Guard {
    file: File,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = fs2::FileExt::unlock(&self.file);
    }
}

/// Takes the lock, waiting at most [`LOCK_TIMEOUT`] (code 11 past it).
pub fn take() -> Result<Guard> {
    let path = Path::new(LOCK_PATH);
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_io_context(|| format!("creating {}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_io_context(|| format!("opening the lock {}", path.display()))?;
    match fs2::FileExt::try_lock_exclusive(&file) {
        Ok(()) => return Ok(Guard { file }),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {}
        Err(e) => return Err(Error::io(format!("locking {}", path.display()), e)),
    }
    // Contended: a helper thread blocks in flock; we wait for it with a deadline.
    let (tx, rx) = mpsc::sync_channel::<std::io::Result<File>>(1);
    std::thread::Builder::new()
        .name("firewall-lock".into())
        .spawn(move || {
            let res = fs2::FileExt::lock_exclusive(&file).map(|()| file);
            if let Err(
                mpsc::TrySendError::Full(Ok(late)) | mpsc::TrySendError::Disconnected(Ok(late)),
            ) = tx.try_send(res)
            {
                let _ = fs2::FileExt::unlock(&late);
            }
        })
        .io_context("starting the lock thread")?;
    match rx.recv_timeout(LOCK_TIMEOUT) {
        Ok(Ok(file)) => Ok(Guard { file }),
        Ok(Err(e)) => Err(Error::io(format!("locking {}", path.display()), e)),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::TryAgainLater(format!(
            "another firewall invocation has held {} for more than {}s; try again later",
            path.display(),
            LOCK_TIMEOUT.as_secs()
        ))),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::internal(format!(
            "the thread waiting for {} ended without an answer",
            path.display()
        ))),
    }
}
