//! File change detection shared by the CRL poller and the configuration watcher.
//!
//! Polling a stamp a few times a second is simpler and more robust than inotify for what certgate
//! watches: it sees editors' rename-and-replace and Kubernetes' symlink-swapped Secret mounts
//! (`..data` → new folder) alike, because it compares the canonical target, not the watched path.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What a file looks like now: where its path resolves to, and that file's identity and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileStamp {
    target: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

impl FileStamp {
    /// Stamps `path`, following symlinks.
    ///
    /// # Errors
    /// The path does not resolve or cannot be stat'ed.
    pub(crate) async fn of(path: &Path) -> std::io::Result<Self> {
        let target = tokio::fs::canonicalize(path).await?;
        let meta = tokio::fs::metadata(&target).await?;
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        Ok(Self {
            target,
            modified: meta.modified().ok(),
            len: meta.len(),
            dev,
            ino,
        })
    }
}
