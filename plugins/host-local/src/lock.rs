//! The network's lock: an exclusive flock on `<dataDir>/<network>/lock`, the same file the
//! reference plugin locks, waited for at most a configured time ([`common::lock`]).

use common::Result;
pub use common::lock::LockGuard;
use std::path::Path;
use std::time::Duration;

/// Takes the exclusive lock on `path`, waiting at most `timeout` (code 11 past it).
pub fn lock(path: &Path, timeout: Duration) -> Result<LockGuard> {
    common::lock::lock(path, timeout, " (ipam.lockTimeout)")
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
