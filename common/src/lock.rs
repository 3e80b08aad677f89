//! An exclusive flock on a file, waited for at most a given time.
//!
//! The blocking flock runs on a helper thread that opens its own descriptor; the caller
//! waits on a channel with a deadline. If the deadline passes, the caller returns "try again
//! later" (code 11) and the late lock, should the thread still get it, is released at once.
//! The kernel drops the lock when its holder dies.

use crate::error::IoContext;
use crate::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// Holds the lock until dropped.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = fs2::FileExt::unlock(&self.file);
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// Takes the exclusive lock on `path` if it is free now; `Ok(None)` when another holds it.
pub fn try_lock(path: &Path) -> Result<Option<LockGuard>> {
    let file = open(path).with_io_context(|| format!("opening the lock {}", path.display()))?;
    match fs2::FileExt::try_lock_exclusive(&file) {
        Ok(()) => Ok(Some(LockGuard { file })),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
        Err(e) => Err(Error::io(format!("locking {}", path.display()), e)),
    }
}

/// Takes the exclusive lock on `path`, waiting at most `timeout` (code 11 past it; `hint`
/// is added to that message, e.g. the config key setting the timeout).
pub fn lock(path: &Path, timeout: Duration, hint: &str) -> Result<LockGuard> {
    let file = open(path).with_io_context(|| format!("opening the lock {}", path.display()))?;
    let busy = || {
        Error::TryAgainLater(format!(
            "another invocation has held {} for more than {:?}{hint}; try again later",
            path.display(),
            timeout
        ))
    };
    // Uncontended (the usual case): no thread at all.
    match fs2::FileExt::try_lock_exclusive(&file) {
        Ok(()) => return Ok(LockGuard { file }),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {}
        Err(e) => return Err(Error::io(format!("locking {}", path.display()), e)),
    }
    if timeout.is_zero() {
        return Err(busy());
    }
    let (tx, rx) = mpsc::sync_channel::<std::io::Result<File>>(1);
    std::thread::Builder::new()
        .name("cni-lock".into())
        .spawn(move || {
            let res = fs2::FileExt::lock_exclusive(&file).map(|()| file);
            if let Err(
                mpsc::TrySendError::Full(Ok(late)) | mpsc::TrySendError::Disconnected(Ok(late)),
            ) = tx.try_send(res)
            {
                // The waiter gave up: do not keep the lock.
                let _ = fs2::FileExt::unlock(&late);
            }
        })
        .io_context("starting the lock thread")?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(file)) => Ok(LockGuard { file }),
        Ok(Err(e)) => Err(Error::io(format!("locking {}", path.display()), e)),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(busy()),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::internal(format!(
            "the thread waiting for {} ended without an answer",
            path.display()
        ))),
    }
}
