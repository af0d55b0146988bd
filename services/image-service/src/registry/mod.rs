//! A registry v2 client for one pull: resolves a reference to a manifest, fetches manifests
//! and blobs, trying each configured host (mirrors first) in order, answering auth challenges.
//!
//! Where credentials go: a pull's credentials are given for one registry (`server_address`,
//! else the image's). A host of the pull receives them (preset registry token, answers to its
//! Basic challenges, the credentials at its Bearer realm) only when it is that registry: its
//! name is the credentials' registry, or it is the image registry's `server` and the
//! credentials are for the image's registry; or it is a mirror whose `hosts.toml` entry says
//! `forward_credentials = true`. Any other host is asked anonymously. A static `Authorization`
//! header from `hosts.toml` is sent as configured and never replaced. Bearer tokens are kept
//! per host and (realm, service, scope), so one host's token never reaches another. A redirect
//! to another host (or port) carries no `Authorization`: reqwest drops it, as Go's net/http
//! does for containerd.

pub mod auth;

use crate::hosts::RegistryHost;
use auth::{Challenge, Credentials, parse_challenge, registry_name};
use bytes::Bytes;
use crisp_image_model::oci;
use crisp_image_model::{Digest, Reference};
use http::{HeaderValue, Method, StatusCode, header};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The largest manifest or index accepted.
const MAX_MANIFEST_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {host} is unreachable: {source}")]
    Unreachable { host: String, source: reqwest::Error },
    #[error("{what} not found at {host}{detail}")]
    NotFound { host: String, what: String, detail: String },
    #[error("registry {host} refused the credentials ({status}){detail}")]
    Unauthenticated { host: String, status: StatusCode, detail: String },
    #[error("registry {host} denied access ({status}){detail}")]
    Denied { host: String, status: StatusCode, detail: String },
    #[error("registry {host} answered {status} for {what}{detail}")]
    Status { host: String, status: StatusCode, what: String, detail: String },
    #[error("manifest {what} from {host} is larger than 4 MiB")]
    ManifestTooLarge { host: String, what: String },
    #[error("TLS setup for {host}: {detail}")]
    Tls { host: String, detail: String },
    #[error("registry {host} ended {what} early, at {received} of {expected} bytes")]
    BodyEnded { host: String, what: String, received: i64, expected: i64 },
    #[error("token server {realm} is unreachable: {source}")]
    TokenUnreachable { realm: String, source: reqwest::Error },
    #[error("token server {realm} answered {status}{detail}")]
    TokenStatus { realm: String, status: StatusCode, detail: String },
    #[error("token request to {realm} failed: {detail}")]
    Token { realm: String, detail: String },
}

impl RegistryError {
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            RegistryError::Unreachable { .. } => Code::Unavailable,
            RegistryError::NotFound { .. } => Code::NotFound,
            RegistryError::Unauthenticated { .. } => Code::Unauthenticated,
            RegistryError::Denied { .. } => Code::PermissionDenied,
            RegistryError::Status { status, .. } | RegistryError::TokenStatus { status, .. } => status_code(*status),
            RegistryError::ManifestTooLarge { .. } => Code::InvalidArgument,
            RegistryError::Tls { .. } => Code::FailedPrecondition,
            RegistryError::BodyEnded { .. } | RegistryError::TokenUnreachable { .. } => Code::Unavailable,
            // A token answer that holds no token: the token server's fault, not the caller's.
            RegistryError::Token { .. } => Code::Unknown,
        }
    }

    /// Whether the next host may answer better (a mirror missing the image, down, or failing).
    fn try_next_host(&self) -> bool {
        !matches!(self, RegistryError::ManifestTooLarge { .. })
    }
}

/// The code for an HTTP failure status other than 401, 403 and 404: 5xx → UNAVAILABLE (try
/// again), 429 → RESOURCE_EXHAUSTED, any other 4xx → UNKNOWN.
fn status_code(status: StatusCode) -> tonic::Code {
    if status.is_server_error() {
        tonic::Code::Unavailable
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        tonic::Code::ResourceExhausted
    } else {
        tonic::Code::Unknown
    }
}

/// A TLS setting: `skip_verify`, the `ca` files and the client certificate (cert, key).
type TlsKey = (bool, Vec<PathBuf>, Option<(PathBuf, Option<PathBuf>)>);

/// HTTP clients shared by every pull, one per TLS setting.
#[derive(Default, Clone)]
pub struct Clients {
    clients: Arc<Mutex<HashMap<TlsKey, reqwest::Client>>>,
}

impl Clients {
    fn client_for(&self, host: &RegistryHost) -> Result<reqwest::Client, RegistryError> {
        // As with Go's crypto/tls given several, the first client certificate is the one offered.
        let client = host.client.first().cloned();
        let key = (host.skip_verify, host.ca.clone(), client.clone());
        let mut clients = self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let tls = |detail: String| RegistryError::Tls { host: host.host.clone(), detail };
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("crisp/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(30))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::limited(10))
            .danger_accept_invalid_certs(host.skip_verify);
        for ca in &host.ca {
            let pem = std::fs::read(ca).map_err(|e| tls(format!("reading ca {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| tls(format!("parsing ca {}: {e}", ca.display())))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = &client {
            let mut pem = std::fs::read(cert).map_err(|e| tls(format!("reading client {}: {e}", cert.display())))?;
            if let Some(key) = key {
                pem.push(b'\n');
                pem.extend(std::fs::read(key).map_err(|e| tls(format!("reading client key {}: {e}", key.display())))?);
            }
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| tls(format!("client certificate {}: {e}", cert.display())))?;
            builder = builder.identity(identity);
        }
        let client = builder.build().map_err(|e| tls(e.to_string()))?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// The manifest (or index) a reference points at.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub media_type: String,
    pub digest: Digest,
    pub bytes: Bytes,
}

/// What a `HEAD` of a manifest tells.
#[derive(Debug, Clone, Default)]
pub struct Head {
    /// `Docker-Content-Digest`, when the registry sends it.
    pub digest: Option<Digest>,
    /// `Content-Type`, without parameters.
    pub media_type: Option<String>,
}

/// A bearer token's key within one host: (realm, service, scope).
type TokenKey = (String, String, String);

struct Host {
    config: RegistryHost,
    client: reqwest::Client,
    /// The pull's credentials when this host may receive them (see the module header).
    credentials: Option<Credentials>,
    /// `hosts.toml` gives this host a static `Authorization` header: it is sent as it is.
    static_authorization: bool,
    /// The `Authorization` value that worked last on this host.
    authorization: Mutex<Option<HeaderValue>>,
    /// Bearer tokens this host's challenges were answered with.
    tokens: Mutex<HashMap<TokenKey, HeaderValue>>,
}

/// Whether `host` may receive credentials given for `registry` in a pull from `image_registry`.
fn may_receive_credentials(host: &RegistryHost, registry: &str, image_registry: &str) -> bool {
    if registry_name(&host.host).as_deref() == Some(registry) {
        return true;
    }
    registry == image_registry && (!host.mirror || host.forward_credentials)
}

/// A registry session for one repository.
pub struct Registry {
    reference: Reference,
    hosts: Vec<Host>,
}

impl Registry {
    pub fn new(
        clients: &Clients,
        reference: Reference,
        hosts: Vec<RegistryHost>,
        credentials: Option<Credentials>,
    ) -> Result<Registry, RegistryError> {
        let image_registry = registry_name(&reference.domain).unwrap_or_else(|| reference.domain.clone());
        let hosts = hosts
            .into_iter()
            .map(|config| {
                let client = clients.client_for(&config)?;
                let credentials = credentials
                    .as_ref()
                    .filter(|c| {
                        let registry = c.registry.as_deref().unwrap_or(&image_registry);
                        may_receive_credentials(&config, registry, &image_registry)
                    })
                    .cloned();
                let static_authorization =
                    config.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case(header::AUTHORIZATION.as_str()));
                let authorization = Mutex::new(
                    credentials
                        .as_ref()
                        .filter(|c| !c.registry_token.is_empty() && !static_authorization)
                        .and_then(|c| HeaderValue::from_str(&format!("Bearer {}", c.registry_token)).ok())
                        .map(sensitive),
                );
                if credentials.is_none() && !config.mirror {
                    tracing::debug!(host = %config.base(), "the pull's credentials are for another registry");
                }
                Ok(Host {
                    config,
                    client,
                    credentials,
                    static_authorization,
                    authorization,
                    tokens: Default::default(),
                })
            })
            .collect::<Result<Vec<_>, RegistryError>>()?;
        Ok(Registry { reference, hosts })
    }

    /// Fetches what the reference names (by digest if it has one, else by tag).
    pub async fn resolve(&self) -> Result<Fetched, RegistryError> {
        let by_digest = self.reference.digest.is_some();
        self.fetch_manifest(self.reference.object(), !by_digest).await
    }

    /// Asks for the manifest or index `object` (a tag or digest) with a `HEAD`: its digest and
    /// media type, when the registry answers them, without its bytes.
    pub async fn head_manifest(&self, object: &str) -> Result<Head, RegistryError> {
        let what = format!("manifest {}:{object}", self.reference.repository());
        let needs_resolve = self.reference.digest.is_none();
        self.each_host(needs_resolve, |host| {
            let what = what.clone();
            async move {
                let url = self.url(host, &format!("manifests/{object}"));
                let response = self.send_as(Method::HEAD, host, &url, Some(oci::MANIFEST_ACCEPT), None, &what).await?;
                let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
                let digest = header("docker-content-digest").and_then(|v| Digest::parse(v.trim()).ok());
                let media_type = header(header::CONTENT_TYPE.as_str())
                    .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
                    .filter(|v| !v.is_empty());
                Ok(Head { digest, media_type })
            }
        })
        .await
    }

    /// Fetches a manifest or index by tag or digest. When fetched by digest its bytes are
    /// checked against it by the caller.
    pub async fn fetch_manifest(&self, object: &str, needs_resolve: bool) -> Result<Fetched, RegistryError> {
        let what = format!("manifest {}:{object}", self.reference.repository());
        self.each_host(needs_resolve, |host| {
            let what = what.clone();
            async move {
                let url = self.url(host, &format!("manifests/{object}"));
                let response = self.send(host, &url, Some(oci::MANIFEST_ACCEPT), None, &what).await?;
                let header_type = response
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
                if response.content_length().is_some_and(|len| len as usize > MAX_MANIFEST_BYTES) {
                    return Err(RegistryError::ManifestTooLarge { host: host.config.host.clone(), what });
                }
                let bytes = read_limited(response, MAX_MANIFEST_BYTES, &host.config.host, &what).await?;
                let media_type = media_type_of(&bytes).or(header_type).unwrap_or_default();
                let digest = Digest::sha256_of(&bytes);
                Ok(Fetched { media_type, digest, bytes })
            }
        })
        .await
    }

    /// Starts a blob download at `offset`; the response's body is the rest of the blob.
    /// Returns whether the host honoured the range (else the body starts at 0).
    pub async fn fetch_blob(&self, digest: &str, offset: u64) -> Result<(reqwest::Response, bool), RegistryError> {
        let what = format!("blob {digest} of {}", self.reference.repository());
        self.each_host(false, |host| {
            let what = what.clone();
            async move {
                let url = self.url(host, &format!("blobs/{digest}"));
                let range = (offset > 0).then(|| format!("bytes={offset}-"));
                let response = self.send(host, &url, None, range.as_deref(), &what).await?;
                let ranged = response.status() == StatusCode::PARTIAL_CONTENT;
                Ok((response, ranged))
            }
        })
        .await
    }

    async fn each_host<'a, T, F, Fut>(&'a self, needs_resolve: bool, mut call: F) -> Result<T, RegistryError>
    where
        F: FnMut(&'a Host) -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let mut last = None;
        for host in self.hosts.iter().filter(|h| !needs_resolve || h.config.resolve) {
            match call(host).await {
                Ok(value) => return Ok(value),
                Err(err) if err.try_next_host() => {
                    tracing::debug!(host = %host.config.base(), error = %err, "registry host failed; trying the next");
                    last = Some(err);
                }
                Err(err) => return Err(err),
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::NotFound {
            host: self.reference.domain.clone(),
            what: "a host that may resolve tags (hosts.toml capabilities)".into(),
            detail: String::new(),
        }))
    }

    fn url(&self, host: &Host, tail: &str) -> String {
        let mut url = format!("{}/{}/{tail}", host.config.base(), self.reference.path);
        if host.config.mirror {
            url.push_str("?ns=");
            url.push_str(&self.reference.domain);
        }
        url
    }

    /// GETs `url`, answering one auth challenge, and maps failure statuses to errors.
    async fn send(
        &self,
        host: &Host,
        url: &str,
        accept: Option<&str>,
        range: Option<&str>,
        what: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        self.send_as(Method::GET, host, url, accept, range, what).await
    }

    /// [`Registry::send`] with another method (`HEAD`).
    async fn send_as(
        &self,
        method: Method,
        host: &Host,
        url: &str,
        accept: Option<&str>,
        range: Option<&str>,
        what: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let name = host.config.host.clone();
        let mut answered_challenge = false;
        loop {
            let mut request = host.client.request(method.clone(), url);
            for (name, value) in &host.config.headers {
                request = request.header(name.as_str(), value.as_str());
            }
            if let Some(accept) = accept {
                request = request.header(header::ACCEPT, accept);
            }
            if let Some(range) = range {
                request = request.header(header::RANGE, range);
            }
            let authorization = host.authorization.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(value) = authorization.filter(|_| !host.static_authorization) {
                request = request.header(header::AUTHORIZATION, value);
            }
            let response =
                request.send().await.map_err(|source| RegistryError::Unreachable { host: name.clone(), source })?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            if status == StatusCode::UNAUTHORIZED && !answered_challenge && !host.static_authorization {
                let challenge = response
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge);
                if let Some(challenge) = challenge
                    && let Some(value) = self.authorize(host, &challenge).await?
                {
                    *host.authorization.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
                    answered_challenge = true;
                    continue;
                }
            }
            let detail = error_detail(response).await;
            return Err(match status {
                StatusCode::UNAUTHORIZED => RegistryError::Unauthenticated { host: name, status, detail },
                StatusCode::FORBIDDEN => RegistryError::Denied { host: name, status, detail },
                StatusCode::NOT_FOUND => RegistryError::NotFound { host: name, what: what.to_string(), detail },
                _ => RegistryError::Status { host: name, status, what: what.to_string(), detail },
            });
        }
    }

    /// The `Authorization` header answering `challenge`, or None when there is nothing to
    /// answer with (anonymous access refused).
    async fn authorize(&self, host: &Host, challenge: &Challenge) -> Result<Option<HeaderValue>, RegistryError> {
        match challenge.scheme.as_str() {
            "basic" => Ok(host
                .credentials
                .as_ref()
                .and_then(|c| c.basic())
                .and_then(|v| HeaderValue::from_str(&v).ok())
                .map(sensitive)),
            "bearer" => {
                let Some(realm) = challenge.params.get("realm") else { return Ok(None) };
                let service = challenge.params.get("service").cloned().unwrap_or_default();
                let scope = challenge
                    .params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", self.reference.path));
                let key = (realm.clone(), service, scope);
                let sent = host.authorization.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let cached = host.tokens.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
                // A cached token the host just refused (expired) is fetched anew.
                if let Some(cached) = cached
                    && Some(&cached) != sent.as_ref()
                {
                    return Ok(Some(cached));
                }
                let token = self.bearer_token(host, &key).await?;
                let value = HeaderValue::from_str(&format!("Bearer {token}")).ok().map(sensitive);
                if let Some(value) = &value {
                    host.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(key, value.clone());
                }
                Ok(value)
            }
            _ => Ok(None),
        }
    }

    /// A token from the realm for (realm, service, scope), asked with the host's credentials
    /// when it may receive them, else anonymously.
    async fn bearer_token(&self, host: &Host, (realm, service, scope): &TokenKey) -> Result<String, RegistryError> {
        let (realm, service, scope) = (realm.as_str(), service, scope);
        let token_err = |detail: String| RegistryError::Token { realm: realm.to_string(), detail };
        let refresh = host.credentials.as_ref().filter(|c| !c.identity_token.is_empty());
        let request = if let Some(creds) = refresh {
            // OAuth2: exchange the identity (refresh) token.
            let form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", creds.identity_token.as_str()),
                ("service", service.as_str()),
                ("scope", scope.as_str()),
                ("client_id", "crisp"),
            ];
            host.client.post(realm).form(&form)
        } else {
            let mut request = host.client.get(realm).query(&[("service", service.as_str()), ("scope", scope.as_str())]);
            if let Some(basic) =
                host.credentials.as_ref().and_then(|c| c.basic()).and_then(|v| HeaderValue::from_str(&v).ok())
            {
                request = request.header(header::AUTHORIZATION, sensitive(basic));
            }
            request
        };
        let unreachable = |source| RegistryError::TokenUnreachable { realm: realm.to_string(), source };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let detail = error_detail(response).await;
            return Err(RegistryError::Unauthenticated { host: host.config.host.clone(), status, detail });
        }
        if !status.is_success() {
            let detail = error_detail(response).await;
            return Err(RegistryError::TokenStatus { realm: realm.to_string(), status, detail });
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let bytes = response.bytes().await.map_err(unreachable)?;
        let body: TokenResponse = serde_json::from_slice(&bytes).map_err(|e| token_err(e.to_string()))?;
        body.token
            .filter(|t| !t.is_empty())
            .or(body.access_token)
            .ok_or_else(|| token_err("the answer holds no token".into()))
    }
}

/// A header value marked sensitive: hyper and reqwest never print it.
fn sensitive(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

/// The `mediaType` field of a manifest or index, when it has one.
pub(crate) fn media_type_of(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).ok()?;
    probe.media_type.or_else(|| {
        if probe.manifests.is_some() {
            Some(oci::OCI_INDEX.to_string())
        } else if probe.config.is_some() {
            Some(oci::OCI_MANIFEST.to_string())
        } else {
            None
        }
    })
}

async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
    host: &str,
    what: &str,
) -> Result<Bytes, RegistryError> {
    let mut buf = Vec::new();
    while let Some(chunk) =
        response.chunk().await.map_err(|source| RegistryError::Unreachable { host: host.to_string(), source })?
    {
        if buf.len() + chunk.len() > limit {
            return Err(RegistryError::ManifestTooLarge { host: host.to_string(), what: what.to_string() });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(buf))
}

/// The registry's error text (`{"errors":[{"code":..,"message":..}]}`), shortened, as
/// `: CODE message`.
async fn error_detail(response: reqwest::Response) -> String {
    let text = match response.text().await {
        Ok(text) => text,
        Err(_) => return String::new(),
    };
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(errors) = serde_json::from_str::<Errors>(&text)
        && let Some(first) = errors.errors.first()
    {
        return format!(": {} {}", first.code, first.message);
    }
    let short: String = text.trim().chars().take(200).collect();
    if short.is_empty() { String::new() } else { format!(": {short}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn credentials_go_to_their_registry_and_opted_in_mirrors_only() {
        let host = |host: &str, mirror: bool, forward: bool| RegistryHost {
            scheme: "https".into(),
            host: host.into(),
            path: "/v2".into(),
            skip_verify: false,
            ca: vec![],
            client: vec![],
            resolve: true,
            mirror,
            headers: vec![],
            forward_credentials: forward,
        };
        // Docker Hub's server, credentials for docker.io (server_address or the image's).
        assert!(may_receive_credentials(&host("registry-1.docker.io", false, false), "docker.io", "docker.io"));
        // A mirror on another host: only when it opts in, and only for the image's registry.
        assert!(!may_receive_credentials(&host("mirror.local", true, false), "docker.io", "docker.io"));
        assert!(may_receive_credentials(&host("mirror.local", true, true), "docker.io", "docker.io"));
        assert!(!may_receive_credentials(&host("mirror.local", true, true), "quay.io", "docker.io"));
        // Credentials naming the mirror itself are for it.
        assert!(may_receive_credentials(&host("mirror.local", true, false), "mirror.local", "docker.io"));
        // Credentials for another registry reach neither the server nor a mirror.
        assert!(!may_receive_credentials(&host("quay.io", false, false), "docker.io", "quay.io"));
    }

    #[test]
    fn only_refusals_are_auth_failures() {
        let realm = || "http://auth.example/token".to_string();
        let token = |status: u16| {
            let status = StatusCode::from_u16(status).unwrap();
            RegistryError::TokenStatus { realm: realm(), status, detail: "".into() }.code()
        };
        assert_eq!(token(503), Code::Unavailable);
        assert_eq!(token(500), Code::Unavailable);
        assert_eq!(token(429), Code::ResourceExhausted);
        assert_eq!(token(400), Code::Unknown);
        let status = |status: u16| {
            RegistryError::Status {
                host: "r".into(),
                status: StatusCode::from_u16(status).unwrap(),
                what: "x".into(),
                detail: "".into(),
            }
            .code()
        };
        assert_eq!(status(502), Code::Unavailable);
        assert_eq!(status(400), Code::Unknown);
        let ended = RegistryError::BodyEnded { host: "r".into(), what: "layer x".into(), received: 1, expected: 2 };
        assert_eq!(ended.code(), Code::Unavailable);
        assert!(ended.to_string().contains("registry r"), "{ended}");
    }
}
