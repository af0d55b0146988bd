//! A service's unix socket.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{path}: another live process is serving this socket")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{path}: {action}: {source}")]
    Io { path: PathBuf, action: &'static str, source: std::io::Error },
}

/// A bound unix socket's file, removed when dropped.
#[derive(Debug)]
pub struct UnixSocket {
    path: PathBuf,
}

impl UnixSocket {
    /// Binds `path` with permission bits `mode`, creating its directory. A socket file left by
    /// a process that is gone is replaced; one that a live process still answers on is not.
    pub async fn bind(path: &Path, mode: u32) -> Result<(UnixListener, UnixSocket), SocketError> {
        let io = |action: &'static str| {
            let path = path.to_path_buf();
            move |source| SocketError::Io { path, action, source }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating its directory"))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if tokio::net::UnixStream::connect(path).await.is_ok() {
                    return Err(SocketError::InUse { path: path.to_path_buf() });
                }
                tracing::info!(path = %path.display(), "replacing a stale socket file");
                std::fs::remove_file(path).map_err(io("removing the stale socket"))?;
            }
            Ok(_) => return Err(SocketError::NotASocket { path: path.to_path_buf() }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io("inspecting it")(err)),
        }
        let listener = UnixListener::bind(path).map_err(io("binding"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("setting its mode"))?;
        tracing::info!(path = %path.display(), mode = format!("{mode:o}"), "listening");
        Ok((listener, UnixSocket { path: path.to_path_buf() }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
        let dir = std::env::temp_dir().join(format!("crisp-socket-test-{}", std::process::id()));
        let path = dir.join("s.sock");
        // A stale file: bound, then its listener dropped without removing the file.
        drop(
            std::os::unix::net::UnixListener::bind(&path)
                .or_else(|_| {
                    std::fs::create_dir_all(&dir).unwrap();
                    std::os::unix::net::UnixListener::bind(&path)
                })
                .unwrap(),
        );
        let live = UnixSocket::bind(&path, 0o660).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        match UnixSocket::bind(&path, 0o660).await {
            Err(SocketError::InUse { .. }) => {}
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(live);
        assert!(!path.exists());
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(UnixSocket::bind(&path, 0o660).await, Err(SocketError::NotASocket { .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
