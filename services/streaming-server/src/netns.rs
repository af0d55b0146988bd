//! TCP connections to `localhost:<port>` inside a pod's network namespace. The socket is made
//! by a short-lived OS thread (never a tokio worker) that enters the namespace, connects and
//! exits; the connected socket keeps its namespace and is handed back to tokio. A pod on the
//! host's network is dialled directly.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpStream;

/// How long a connect may take (a port nobody listens on is refused at once; a filtered one
/// would hang).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `port` on the pod's loopback (IPv4, then IPv6), inside `netns` when given.
pub async fn connect(netns: Option<&Path>, port: u16) -> io::Result<TcpStream> {
    let Some(netns) = netns else {
        return connect_here(port).await;
    };
    let netns: PathBuf = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("crisp-netns-dial".into()).spawn(move || {
        let _ = tx.send(enter(&netns).and_then(|()| connect_here_std(port)));
    })?;
    let stream = rx.await.map_err(|_| io::Error::other("the namespace dialer thread died"))??;
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

fn enter(netns: &Path) -> io::Result<()> {
    let file = std::fs::File::open(netns)?;
    // Only this thread moves: CLONE_NEWNET is per thread, and the thread ends after the connect.
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
}

fn connect_here_std(port: u16) -> io::Result<std::net::TcpStream> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match std::net::TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(stream) => Ok(stream),
        Err(v4_err) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            std::net::TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT).map_err(|_| v4_err)
        }
    }
}

async fn connect_here(port: u16) -> io::Result<TcpStream> {
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(v4)).await.map_err(|_| timed_out())? {
        Ok(stream) => Ok(stream),
        Err(v4_err) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(v6)).await {
                Ok(Ok(stream)) => Ok(stream),
                _ => Err(v4_err),
            }
        }
    }
}
