//! The HTTP side: the URLs the RPCs answer lead here. `GET` or `POST /<kind>/<token>`; an
//! unknown, used or expired token is 404; the request must then upgrade (SPDY/3.1 or
//! WebSocket, see `upgrade`) and the session runs on the upgraded connection.

use crate::attach;
use crate::exec;
use crate::lookup;
use crate::metrics;
use crate::portforward;
use crate::remotecommand::{self, Options, Session};
use crate::tokens::{Issued, Tokens};
use crate::upgrade::{self, Body};
use crate::wsbytes::WsBytes;
use crisp_config::StreamingConfig;
use crisp_containerd::Containerd;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

/// What every session needs.
pub struct Sessions {
    pub containerd: Containerd,
    pub tokens: Arc<Tokens>,
    pub config: StreamingConfig,
    /// Where exec processes' FIFOs are made (one directory each).
    pub fifo_root: std::path::PathBuf,
    /// The runtime service's socket (its `ContainerIo` API, for attach).
    pub runtime_socket: std::path::PathBuf,
}

impl Sessions {
    pub fn spdy_config(&self) -> crisp_spdy::Config {
        crisp_spdy::Config { idle_timeout: Some(self.config.stream_idle_timeout), ..Default::default() }
    }
}

/// Accepts HTTP connections (over TLS when `tls` is given) until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    sessions: Arc<Sessions>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    loop {
        let (socket, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "streaming server: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let sessions = sessions.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(socket, sessions, peer).await,
                Some(acceptor) => match acceptor.accept(socket).await {
                    Ok(stream) => serve_connection(stream, sessions, peer).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "streaming TLS handshake failed"),
                },
            }
        });
    }
}

async fn serve_connection<IO>(io: IO, sessions: Arc<Sessions>, peer: std::net::SocketAddr)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let sessions = sessions.clone();
        async move { Ok::<_, Infallible>(handle(sessions, req).await) }
    });
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service).with_upgrades();
    if let Err(e) = connection.await {
        tracing::debug!(%peer, error = %e, "streaming HTTP connection ended with an error");
    }
}

/// The TLS acceptor for `cert_file` and `key_file` (PEM).
pub fn tls_acceptor(
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("reading {}: {e}", cert_file.display()))?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("reading {}: {e}", key_file.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the streaming certificate and key: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The session kind of a port-forward URL, as metrics name it.
const PORT_FORWARD: &str = "portforward";

async fn handle(sessions: Arc<Sessions>, mut req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return upgrade::text(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST");
    }
    let mut parts = req.uri().path().trim_start_matches('/').splitn(2, '/');
    let (Some(kind), Some(token)) = (parts.next(), parts.next()) else {
        return upgrade::text(StatusCode::NOT_FOUND, "not found");
    };
    let span = tracing::info_span!("stream", kind, pod = tracing::field::Empty);
    let _entered = span.enter();
    let Some(issued) = sessions.tokens.consume(kind, token) else {
        return upgrade::text(StatusCode::NOT_FOUND, "unknown or expired streaming token");
    };
    match issued {
        Issued::PortForward(request) => {
            span.record("pod", request.pod_sandbox_id.as_str());
            let pod = match lookup::ready_pod(&sessions.containerd, &request.pod_sandbox_id).await {
                Ok(pod) => pod,
                Err(e) => return upgrade::text(StatusCode::NOT_FOUND, e.to_string()),
            };
            let headers = req.headers().clone();
            let on_upgrade = hyper::upgrade::on(&mut req);
            let spdy = sessions.spdy_config();
            let creation = sessions.config.stream_creation_timeout;
            if upgrade::is_websocket(&headers) {
                let (_, response) = match upgrade::websocket(&headers, &[portforward::TUNNEL_PROTOCOL]) {
                    Ok(ok) => ok,
                    Err(refused) => return *refused,
                };
                tokio::spawn(async move {
                    let Ok(upgraded) = on_upgrade.await else { return };
                    let _session = metrics::session(PORT_FORWARD);
                    let io = metrics::Counted::new(TokioIo::new(upgraded), PORT_FORWARD);
                    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                    portforward::serve(WsBytes::new(ws), pod, spdy, creation).await;
                });
                response
            } else {
                let (_, response) = match upgrade::spdy(&headers, &[portforward::PROTOCOL]) {
                    Ok(ok) => ok,
                    Err(refused) => return *refused,
                };
                tokio::spawn(async move {
                    let Ok(upgraded) = on_upgrade.await else { return };
                    let _session = metrics::session(PORT_FORWARD);
                    portforward::serve(
                        metrics::Counted::new(TokioIo::new(upgraded), PORT_FORWARD),
                        pod,
                        spdy,
                        creation,
                    )
                    .await;
                });
                response
            }
        }
        Issued::Exec(request) => {
            let options =
                Options { stdin: request.stdin, stdout: request.stdout, stderr: request.stderr, tty: request.tty };
            let config = sessions_config(&sessions);
            let (containerd, fifo_root) = (sessions.containerd.clone(), sessions.fifo_root.clone());
            let run = move |session| exec::run(containerd, fifo_root, request, session);
            remote_command(&mut req, "exec", options, run, &config)
        }
        Issued::Attach(request) => {
            let options =
                Options { stdin: request.stdin, stdout: request.stdout, stderr: request.stderr, tty: request.tty };
            let config = sessions_config(&sessions);
            let (containerd, socket) = (sessions.containerd.clone(), sessions.runtime_socket.clone());
            let run = move |session| attach::run(containerd, socket, request, session);
            remote_command(&mut req, "attach", options, run, &config)
        }
    }
}

struct SessionConfig {
    spdy: crisp_spdy::Config,
    creation_timeout: std::time::Duration,
}

fn sessions_config(sessions: &Sessions) -> SessionConfig {
    SessionConfig { spdy: sessions.spdy_config(), creation_timeout: sessions.config.stream_creation_timeout }
}

/// Upgrades to a remote command session (SPDY or WebSocket) and runs `then` on it.
fn remote_command<F, Fut>(
    req: &mut Request<Incoming>,
    kind: &'static str,
    options: Options,
    then: F,
    config: &SessionConfig,
) -> Response<Body>
where
    F: FnOnce(Session) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let headers = req.headers().clone();
    let on_upgrade = hyper::upgrade::on(req);
    let idle = config.spdy.idle_timeout.unwrap_or(std::time::Duration::MAX);
    if upgrade::is_websocket(&headers) {
        let (protocol, response) = match upgrade::websocket(&headers, remotecommand::WEBSOCKET_PROTOCOLS) {
            Ok(ok) => ok,
            Err(refused) => return *refused,
        };
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else { return };
            let _session = metrics::session(kind);
            let io = metrics::Counted::new(TokioIo::new(upgraded), kind);
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            then(remotecommand::websocket(ws, &protocol, options, idle)).await;
        });
        response
    } else {
        let (protocol, response) = match upgrade::spdy(&headers, remotecommand::SPDY_PROTOCOLS) {
            Ok(ok) => ok,
            Err(refused) => return *refused,
        };
        let (spdy, creation) = (config.spdy.clone(), config.creation_timeout);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else { return };
            let _session = metrics::session(kind);
            let io = metrics::Counted::new(TokioIo::new(upgraded), kind);
            match remotecommand::spdy(io, &protocol, options, spdy, creation).await {
                Ok(session) => then(session).await,
                Err(e) => tracing::debug!(error = e, "remote command session not started"),
            }
        });
        response
    }
}
