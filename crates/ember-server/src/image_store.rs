//! Where the gallery's PNGs (and inpainting masks) live: a local folder (`<data-dir>/images/`, the default) or an
//! S3-compatible bucket (`--images s3://bucket/prefix`: AWS S3, MinIO, Ceph, R2…), so that workers on other machines
//! write where the front-end reads. Files are named by the worker; the database records the names.
//!
//! The bucket's endpoint, region and credentials come from the standard AWS environment variables
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, and
//! `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint), read by the `object_store` crate.

use anyhow::Context;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::path::PathBuf;

/// A local folder or a bucket prefix.
#[derive(Debug)]
pub enum ImageStore {
    Folder(PathBuf),
    S3 {
        store: AmazonS3,
        bucket: String,
        /// Object names start with it (no leading or trailing slash; may be empty).
        prefix: String,
    },
}

/// What `--images` names, before anything is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImagesLocation {
    Folder(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl std::str::FromStr for ImagesLocation {
    type Err = String;

    /// `s3://bucket[/prefix]`, or a folder.
    fn from_str(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix("s3://") else {
            if text.contains("://") {
                return Err(format!(
                    "'{text}' is neither a folder nor an s3://bucket/prefix address (other stores are not supported)"
                ));
            }
            return Ok(Self::Folder(PathBuf::from(text)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("'{text}' names no bucket; write s3://BUCKET/PREFIX"));
        }
        Ok(Self::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }
}

impl std::fmt::Display for ImagesLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Folder(dir) => write!(f, "{}", dir.display()),
            Self::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// A stored file's name must stay inside the folder or prefix: the names come from our own database, but a
/// separator or a leading dot would still leave it.
fn check_name(name: &str) -> std::io::Result<()> {
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("'{name}' is not a plain file name"),
        ));
    }
    Ok(())
}

impl ImageStore {
    /// Opens the store and checks that it is usable: the folder is created; the bucket must exist and be listable
    /// with the environment's credentials (checked by listing the prefix), else the error says which.
    pub async fn open(location: &ImagesLocation) -> anyhow::Result<Self> {
        match location {
            ImagesLocation::Folder(dir) => {
                tokio::fs::create_dir_all(dir)
                    .await
                    .with_context(|| format!("cannot create the images folder {}", dir.display()))?;
                Ok(Self::Folder(dir.clone()))
            }
            ImagesLocation::S3 { bucket, prefix } => {
                let store = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .with_context(|| format!("cannot use the S3 bucket '{bucket}' (check the AWS_* variables)"))?;
                let listed = tokio::time::timeout(
                    std::time::Duration::from_secs(20),
                    store.list_with_delimiter(Some(&ObjectPath::from(prefix.as_str()))),
                )
                .await;
                match listed {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => anyhow::bail!(
                        "cannot list the S3 bucket '{bucket}': {}; does the bucket exist, and do AWS_ENDPOINT_URL, \
                         AWS_REGION and the AWS credentials point at it?",
                        first_line(&e.to_string())
                    ),
                    Err(_) => anyhow::bail!(
                        "the S3 endpoint did not answer within 20 s when listing the bucket '{bucket}'; check \
                         AWS_ENDPOINT_URL"
                    ),
                }
                Ok(Self::S3 {
                    store,
                    bucket: bucket.clone(),
                    prefix: prefix.clone(),
                })
            }
        }
    }

    /// The local folder, where there is one (the SQLite queue's numbered names are picked in it).
    pub fn folder(&self) -> Option<&std::path::Path> {
        match self {
            Self::Folder(dir) => Some(dir),
            Self::S3 { .. } => None,
        }
    }

    fn object(&self, name: &str) -> ObjectPath {
        match self {
            Self::S3 { prefix, .. } if !prefix.is_empty() => ObjectPath::from(format!("{prefix}/{name}")),
            _ => ObjectPath::from(name),
        }
    }

    /// Where `name` is, for logs (`s3://bucket/prefix/name` or the file's path).
    pub fn describe(&self, name: &str) -> String {
        match self {
            Self::Folder(dir) => dir.join(name).display().to_string(),
            Self::S3 { bucket, .. } => format!("s3://{bucket}/{}", self.object(name)),
        }
    }

    /// Writes `name`. In a folder an existing file is never replaced (written aside and linked into place); in a
    /// bucket an object of that name is replaced, which is why workers name objects by job and attempt.
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> std::io::Result<()> {
        check_name(name)?;
        match self {
            Self::Folder(dir) => {
                let (dir, name) = (dir.clone(), name.to_string());
                tokio::task::spawn_blocking(move || write_new_file(&dir, &name, &bytes))
                    .await
                    .map_err(std::io::Error::other)?
            }
            Self::S3 { store, .. } => store
                .put(&self.object(name), PutPayload::from(bytes))
                .await
                .map(|_| ())
                .map_err(to_io),
        }
    }

    /// The bytes of `name`; `NotFound` when it is not there.
    pub async fn get(&self, name: &str) -> std::io::Result<Vec<u8>> {
        check_name(name)?;
        match self {
            Self::Folder(dir) => tokio::fs::read(dir.join(name)).await,
            Self::S3 { store, .. } => {
                let got = store.get(&self.object(name)).await.map_err(to_io)?;
                Ok(got.bytes().await.map_err(to_io)?.to_vec())
            }
        }
    }

    /// Removes `name`; one that is not there is not an error.
    pub async fn delete(&self, name: &str) -> std::io::Result<()> {
        check_name(name)?;
        let deleted = match self {
            Self::Folder(dir) => tokio::fs::remove_file(dir.join(name)).await,
            Self::S3 { store, .. } => store.delete(&self.object(name)).await.map_err(to_io),
        };
        match deleted {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// An object store error as an I/O error (`NotFound` kept, so callers tell a missing image from a failing store).
fn to_io(e: object_store::Error) -> std::io::Error {
    match e {
        object_store::Error::NotFound { .. } => std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string()),
        other => std::io::Error::other(first_line(&other.to_string())),
    }
}

/// Object store errors carry the whole HTTP body; the first line says what went wrong.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().chars().take(400).collect()
}

/// Writes `dir/name` without ever replacing an existing file: a hidden temporary file, linked into place.
fn write_new_file(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        match std::fs::hard_link(&tmp, &path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
            // File systems without hard links (FAT, some network shares): check, then rename.
            Err(_) if path.exists() => Err(std::io::ErrorKind::AlreadyExists.into()),
            Err(_) => std::fs::rename(&tmp, &path),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_locations_parse() {
        assert_eq!(
            "s3://gallery/ember/images/".parse::<ImagesLocation>(),
            Ok(ImagesLocation::S3 {
                bucket: "gallery".into(),
                prefix: "ember/images".into()
            })
        );
        assert_eq!(
            "s3://gallery".parse::<ImagesLocation>(),
            Ok(ImagesLocation::S3 {
                bucket: "gallery".into(),
                prefix: String::new()
            })
        );
        assert_eq!(
            "ember-data/images".parse::<ImagesLocation>(),
            Ok(ImagesLocation::Folder("ember-data/images".into()))
        );
        assert!("s3:///x".parse::<ImagesLocation>().unwrap_err().contains("no bucket"));
        assert!("gs://b/x"
            .parse::<ImagesLocation>()
            .unwrap_err()
            .contains("not supported"));
    }

    #[tokio::test]
    async fn a_folder_store_never_replaces_and_names_stay_inside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ImageStore::open(&ImagesLocation::Folder(dir.path().join("images")))
            .await
            .expect("open");
        store.put("000001-1.7.png", b"one".to_vec()).await.expect("put");
        assert_eq!(store.get("000001-1.7.png").await.expect("get"), b"one");
        let again = store.put("000001-1.7.png", b"two".to_vec()).await;
        assert_eq!(again.expect_err("exists").kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(store.get("000001-1.7.png").await.expect("get"), b"one", "kept");
        for bad in ["../x.png", ".hidden", "a/b.png", ""] {
            assert!(store.put(bad, vec![]).await.is_err(), "{bad}");
            assert!(store.get(bad).await.is_err(), "{bad}");
        }
        store.delete("000001-1.7.png").await.expect("delete");
        store
            .delete("000001-1.7.png")
            .await
            .expect("deleting a missing file is fine");
        let missing = store.get("000001-1.7.png").await.expect_err("gone");
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }
}
