//! The health of the server's storage (`--data-dir`: the SQLite database and `images/`), so that a full disk or a
//! removed data folder makes the server say so — `503` on submit, `GET /api/health` — instead of accepting jobs it
//! will lose, and so that a fault repeated every second is logged once, not every second.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a fault that goes on is logged again.
const LOG_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// The data folder and what the server last saw of it.
#[derive(Debug)]
pub struct Storage {
    data_dir: PathBuf,
    db_path: PathBuf,
    images_dir: PathBuf,
    /// The database file's identity when it was opened: a file at the same path with another identity is not the
    /// one the server writes to (the folder was removed and made again).
    db_identity: Option<FileIdentity>,
    /// False when neither the queue nor the images are local (PostgreSQL and a bucket): there is no folder to watch.
    local: bool,
    fault: Mutex<Fault>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
}

fn identity(path: &Path) -> Option<FileIdentity> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some(FileIdentity {
            device: meta.dev(),
            inode: meta.ino(),
        })
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        Some(FileIdentity { device: 0, inode: 0 })
    }
}

/// The last write error, and when each message was last logged (with the repeats not logged since).
#[derive(Debug, Default)]
struct Fault {
    message: Option<String>,
    logged: HashMap<String, (Instant, u64)>,
}

/// Distinct messages remembered for rate limiting; past this the memory starts over (and logs them again).
const MAX_LOGGED_MESSAGES: usize = 64;

impl Storage {
    /// Call once the database is open.
    pub fn new(data_dir: &Path, db_path: &Path, images_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            db_path: db_path.to_path_buf(),
            images_dir: images_dir.to_path_buf(),
            db_identity: identity(db_path),
            local: true,
            fault: Mutex::new(Fault::default()),
        }
    }

    /// Storage the server does not hold in a folder of its own (a PostgreSQL queue, images in a folder or bucket it
    /// shares with workers): faults are still reported, but nothing is watched for removal. `images_dir`, when
    /// the images are in a folder, is what messages redact.
    pub fn shared(images_dir: Option<&Path>) -> Self {
        let dir = images_dir.map(Path::to_path_buf).unwrap_or_default();
        Self {
            data_dir: dir.clone(),
            db_path: PathBuf::new(),
            images_dir: dir,
            db_identity: None,
            local: false,
            fault: Mutex::new(Fault::default()),
        }
    }

    /// Whether the folder the server writes to is usable: still there, and no write failing now. Err: why not, for
    /// a client.
    pub fn check(&self) -> Result<(), String> {
        if let Some(removed) = self.removed() {
            return Err(removed);
        }
        match &self.lock().message {
            Some(message) => Err(message.clone()),
            None => Ok(()),
        }
    }

    /// Why the data folder is no longer the one the server opened, if it is not: then nothing written can be kept.
    pub fn removed(&self) -> Option<String> {
        if !self.local {
            return None;
        }
        (identity(&self.db_path) != self.db_identity || !self.images_dir.is_dir()).then(|| {
            "the data folder or its database was removed while the server ran; restart `ember serve` \
             (jobs queued in the removed database are lost)"
                .to_string()
        })
    }

    /// A write failed: remembered for `check` and `/api/health` until one succeeds; each message is logged at most
    /// once a minute (true when this call logged it).
    pub fn failed(&self, what: &str, error: &dyn std::fmt::Display) -> bool {
        let message = self.redact(&format!("{what}: {error}"));
        let mut fault = self.lock();
        if fault.logged.len() >= MAX_LOGGED_MESSAGES {
            fault.logged.clear();
        }
        let logged = match fault.logged.get_mut(&message) {
            Some((at, repeats)) if at.elapsed() < LOG_AGAIN_AFTER => {
                *repeats += 1;
                false
            }
            Some((at, repeats)) => {
                tracing::error!("storage fault (also {repeats} times unlogged in the last minute): {message}");
                (*at, *repeats) = (Instant::now(), 0);
                true
            }
            None => {
                tracing::error!("storage fault: {message}");
                fault.logged.insert(message.clone(), (Instant::now(), 0));
                true
            }
        };
        fault.message = Some(message);
        logged
    }

    /// A write succeeded: the fault, if any, is over.
    pub fn recovered(&self) {
        let mut fault = self.lock();
        if let Some(message) = fault.message.take() {
            tracing::info!("storage works again (after: {message})");
            *fault = Fault::default();
        }
    }

    /// `message` without the server's absolute paths: clients see `<data-dir>` instead of the folder.
    pub fn redact(&self, message: &str) -> String {
        redact_path(message, &self.data_dir)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Fault> {
        self.fault.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Replaces `dir` (as given and as an absolute path) in `message` by `<data-dir>`.
pub fn redact_path(message: &str, dir: &Path) -> String {
    let mut out = message.to_string();
    let absolute = std::fs::canonicalize(dir)
        .ok()
        .or_else(|| std::path::absolute(dir).ok());
    for form in absolute.iter().chain(std::iter::once(&dir.to_path_buf())) {
        let text = form.to_string_lossy();
        if text.len() > 1 {
            out = out.replace(text.as_ref(), "<data-dir>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_data_folder_and_a_write_fault_are_reported_until_recovered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, images) = (dir.path().join("ember.sqlite"), dir.path().join("images"));
        std::fs::create_dir_all(&images).expect("images");
        std::fs::write(&db, b"x").expect("db");
        let storage = Storage::new(dir.path(), &db, &images);
        assert_eq!(storage.check(), Ok(()));

        let path = dir.path().join("images/000001.png");
        let full = format!("{}: No space left on device", path.display());
        assert!(storage.failed("cannot write", &full), "a new fault is logged");
        assert!(storage.failed("cannot record", &"disk full"), "and another");
        // Repeated every second (the worker retries), alternating: each message is logged once a minute.
        for _ in 0..3 {
            assert!(!storage.failed("cannot write", &full));
            assert!(!storage.failed("cannot record", &"disk full"));
        }
        storage.failed("cannot write", &full);
        let message = storage.check().expect_err("fault");
        assert!(message.contains("<data-dir>/images/000001.png"), "{message}");
        assert!(!message.contains(&dir.path().display().to_string()), "{message}");
        storage.recovered();
        assert_eq!(storage.check(), Ok(()));

        // Removed and made again: another file at the same path (the old one kept alive by a second link, so the
        // file system cannot hand its inode number to the new one).
        std::fs::hard_link(&db, dir.path().join("old.sqlite")).expect("link");
        std::fs::remove_file(&db).expect("rm");
        std::fs::write(&db, b"y").expect("new db");
        assert!(storage.check().expect_err("replaced").contains("removed"));
        std::fs::remove_dir_all(dir.path()).expect("rm -r");
        assert!(storage.check().expect_err("removed").contains("restart"));
    }
}
