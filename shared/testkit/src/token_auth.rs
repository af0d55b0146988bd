//! A Bearer-token front for a test registry, as Docker Hub and most public registries work:
//! requests without a valid token get `401` with `WWW-Authenticate: Bearer realm=...,
//! service=..., scope=...`; the realm (`/token` here) issues tokens for basic credentials
//! (`GET`) or an identity token (OAuth2 `POST grant_type=refresh_token`). Requests with a token
//! are passed to the registry behind it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the token server accepts and has issued.
struct Accepts {
    basic: String,
    identity_token: String,
    /// A token valid from the start (what a CRI `registry_token` carries).
    preissued: String,
    issued: std::sync::Mutex<Vec<String>>,
    token_requests: AtomicU64,
}

/// The token-auth front; stops on drop.
pub struct TokenAuthRegistry {
    addr: SocketAddr,
    accepts: Arc<Accepts>,
    task: tokio::task::JoinHandle<()>,
}

impl TokenAuthRegistry {
    /// Fronts the registry at `upstream`; tokens are given for `user`/`password` or for
    /// `identity_token`; `preissued` is accepted as a bearer token as it is.
    pub async fn start(
        upstream: SocketAddr,
        user: &str,
        password: &str,
        identity_token: &str,
        preissued: &str,
    ) -> anyhow::Result<TokenAuthRegistry> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepts = Arc::new(Accepts {
            basic: format!("Basic {}", base64(&format!("{user}:{password}"))),
            identity_token: identity_token.to_string(),
            preissued: preissued.to_string(),
            issued: Default::default(),
            token_requests: AtomicU64::new(0),
        });
        let http = reqwest::Client::builder().no_proxy().build()?;
        let shared = accepts.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let accepts = shared.clone();
                let http = http.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let accepts = accepts.clone();
                        let http = http.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(handle(request, addr, upstream, &accepts, &http).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(TokenAuthRegistry { addr, accepts, task })
    }

    /// `127.0.0.1:<port>`: the host part of image names pulled through the front.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// How many token requests the realm answered (granted or not).
    pub fn token_requests(&self) -> u64 {
        self.accepts.token_requests.load(Ordering::Relaxed)
    }
}

impl Drop for TokenAuthRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

async fn handle(
    request: Request<Incoming>,
    addr: SocketAddr,
    upstream: SocketAddr,
    accepts: &Accepts,
    http: &reqwest::Client,
) -> Response<Full<Bytes>> {
    let header =
        |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string).unwrap_or_default();
    if request.uri().path() == "/token" {
        accepts.token_requests.fetch_add(1, Ordering::Relaxed);
        let query = request.uri().query().unwrap_or_default().to_string();
        let granted = if request.method() == hyper::Method::POST {
            let body = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            let form = String::from_utf8_lossy(&body).to_string();
            form.contains("grant_type=refresh_token")
                && form.contains(&format!("refresh_token={}", accepts.identity_token))
                && form.contains("scope=repository")
        } else {
            header("authorization") == accepts.basic && query.contains("scope=repository")
        };
        if !granted {
            return reply(
                StatusCode::UNAUTHORIZED,
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#,
            );
        }
        let token = format!("token-{}", accepts.token_requests.load(Ordering::Relaxed));
        accepts.issued.lock().unwrap_or_else(|p| p.into_inner()).push(token.clone());
        return reply(StatusCode::OK, format!(r#"{{"token":"{token}","expires_in":300}}"#));
    }
    let bearer = header("authorization");
    let token = bearer.strip_prefix("Bearer ").unwrap_or_default().to_string();
    let valid = !token.is_empty()
        && (token == accepts.preissued || accepts.issued.lock().unwrap_or_else(|p| p.into_inner()).contains(&token));
    if !valid {
        let repo = request
            .uri()
            .path()
            .trim_start_matches("/v2/")
            .split("/manifests/")
            .next()
            .and_then(|p| p.split("/blobs/").next())
            .unwrap_or_default()
            .to_string();
        let mut response = reply(
            StatusCode::UNAUTHORIZED,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        );
        let challenge =
            format!(r#"Bearer realm="http://{addr}/token",service="crisp-test",scope="repository:{repo}:pull""#);
        if let Ok(value) = challenge.parse() {
            response.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, value);
        }
        return response;
    }
    // Pass it on, without our Authorization.
    let url = format!("http://{upstream}{}", request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let mut forward = http.request(request.method().clone(), url);
    for (name, value) in request.headers() {
        if name != hyper::header::AUTHORIZATION && name != hyper::header::HOST {
            forward = forward.header(name, value);
        }
    }
    let Ok(answer) = forward.send().await else {
        return reply(StatusCode::BAD_GATEWAY, "upstream registry unreachable");
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let body = answer.bytes().await.unwrap_or_default();
    let mut response = reply(status, body);
    for (name, value) in &headers {
        if name != hyper::header::CONTENT_LENGTH && name != hyper::header::TRANSFER_ENCODING {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}

/// Standard base64 with padding (HTTP Basic credentials, the CRI `auth` field).
pub fn base64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}
