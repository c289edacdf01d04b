//! Watches a file by path, not by inode, and reports when its contents change.
//!
//! Kubernetes rotates a mounted Secret by swapping a symlink, and editors and
//! deploy tools replace files by renaming: an inode watch would keep looking
//! at the old file. Opening the path afresh on every poll sees what a new
//! reader would see. The files watched are tiny, so a poll costs nothing.

use std::path::Path;
use std::time::Duration;

/// How often watched files are re-read.
pub const POLL: Duration = Duration::from_secs(1);

/// Calls `on_change` with the new contents (`None`: unreadable) each time
/// they differ from the last seen, until the task is dropped.
pub async fn watch(path: &Path, mut on_change: impl FnMut(Option<Vec<u8>>)) {
    let mut last = std::fs::read(path).ok();
    loop {
        tokio::time::sleep(POLL).await;
        let now = std::fs::read(path).ok();
        if now != last {
            last.clone_from(&now);
            on_change(now);
        }
    }
}
