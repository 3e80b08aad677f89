//! The network's lock: an exclusive flock on `<dataDir>/<network>/lock`, the same file the
//! reference plugin locks, waited for at most a configured time.
//!
//! The blocking flock runs on a helper thread that opens its own descriptor; the caller
//! waits on a channel with a deadline. If the deadline passes, the caller returns "try again
//! later" and the late lock, should the thread still get it, is released at once: the thread
//! unlocks and closes its descriptor when nobody takes it (or the descriptor is dropped with
//! the channel).

use common::error::IoContext;
use common::{Error, Result};
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

/// Takes the exclusive lock on `path`, waiting at most `timeout` (code 11 past it).
pub fn lock(path: &Path, timeout: Duration) -> Result<LockGuard> {
    let file = open(path).with_io_context(|| format!("opening the lock {}", path.display()))?;
    let busy = || {
        Error::TryAgainLater(format!(
            "another host-local invocation has held {} for more than {:?} (ipam.lockTimeout); try again later",
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
        .name("host-local-lock".into())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn lock_is_exclusive_and_times_out_with_code_11() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = lock(&path, Duration::from_secs(1)).unwrap();
        let t = Instant::now();
        let e = lock(&path, Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.code(), 11, "{e}");
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(lock(&path, Duration::ZERO).unwrap_err().code(), 11);
        drop(held);
        // The thread left behind by the timed-out wait got the lock late and let it go.
        let t = Instant::now();
        let again = lock(&path, Duration::from_secs(5));
        assert!(again.is_ok(), "{again:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_waiter_gets_the_lock_when_it_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = lock(&path, Duration::from_secs(1)).unwrap();
        let p2 = path.clone();
        let waiter = std::thread::spawn(move || lock(&p2, Duration::from_secs(10)).map(drop));
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        assert!(waiter.join().unwrap().is_ok());
    }
}
