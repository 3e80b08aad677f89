//! Network namespaces: opening one by path, and running work inside it on a dedicated
//! thread (setns affects only the calling thread; the main thread never leaves the host).

use crate::error::{Error, IoContext, Result};
use nix::sched::{CloneFlags, setns};
use nix::sys::statfs::{PROC_SUPER_MAGIC, fstatfs};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;

/// `NSFS_MAGIC` from linux/magic.h: what a bind-mounted or /proc netns file reports.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: String,
}

impl NetNs {
    /// Opens the namespace at `path` and checks that it is one (code 8 otherwise; a missing
    /// path keeps its ENOENT so that DEL can tell "already gone").
    pub fn open(path: &str) -> Result<NetNs> {
        let file = File::open(path).with_io_context(|| format!("opening netns {path}"))?;
        let fs_type = fstatfs(&file)
            .map_err(|e| Error::io(format!("statfs of netns {path}"), e.into()))?
            .filesystem_type()
            .0;
        if fs_type != NSFS_MAGIC && fs_type != PROC_SUPER_MAGIC.0 {
            return Err(Error::InvalidNetns(format!(
                "{path} is not a network namespace (filesystem type {fs_type:#x})"
            )));
        }
        Ok(NetNs {
            file,
            path: path.to_string(),
        })
    }

    /// Opens a container's namespace for ADD or CHECK, where it must exist: any failure is
    /// code 8 naming the path.
    pub fn open_container(path: &str) -> Result<NetNs> {
        NetNs::open(path).map_err(|e| match e {
            Error::InvalidNetns(_) => e,
            other => Error::InvalidNetns(format!("failed to open netns {path:?}: {other}")),
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Runs `f` on a new thread that has joined this namespace. The thread ends with `f`,
    /// so nothing else ever runs in the namespace by accident.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> Result<T> + Send,
    {
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name("netns".into())
                .spawn_scoped(s, || {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                        Error::InvalidNetns(format!(
                            "cannot enter {} as a network namespace: {e}",
                            self.path
                        ))
                    })?;
                    f()
                })
                .map_err(|e| Error::TryAgainLater(format!("cannot start a thread: {e}")))?;
            handle
                .join()
                .unwrap_or_else(|_| Err(Error::internal("a thread working in a netns panicked")))
        })
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// True when `path` names the network namespace this thread is in.
pub fn is_current_netns(path: &str) -> bool {
    let (Ok(ours), Ok(theirs)) = (
        std::fs::metadata("/proc/thread-self/ns/net"),
        std::fs::metadata(path),
    ) else {
        return false;
    };
    ours.dev() == theirs.dev() && ours.ino() == theirs.ino()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_rejects_what_is_not_a_netns() {
        let e = NetNs::open("/etc/hostname").unwrap_err();
        assert_eq!(e.code(), 8, "{e}");
        let e = NetNs::open("/nonexistent/netns").unwrap_err();
        assert!(e.is_not_found(), "{e}");
        let own = NetNs::open("/proc/self/ns/net").unwrap();
        assert!(
            own.run(|| Ok(is_current_netns("/proc/self/ns/net")))
                .unwrap()
        );
    }
}
