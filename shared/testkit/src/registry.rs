//! A private registry for tests: Debian's `docker-registry` (registry:2) on a free loopback
//! port with its own storage directory, optionally behind htpasswd (bcrypt) basic auth, and
//! [`Throttle`], a loopback TCP relay that slows the registry's answers down (to kill a pull
//! half way, or to trickle bytes to look stalled).

use crate::images::{Blob, BuiltImage};
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The registry binary (Debian package `docker-registry`).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry; stopped and its storage removed on drop.
pub struct Registry {
    child: Child,
    addr: SocketAddr,
    /// The self-signed certificate (PEM) when the registry serves HTTPS.
    tls_cert: Option<PathBuf>,
    /// The client certificate and key (PEM) the registry requires, when it does.
    client_cert: Option<(PathBuf, PathBuf)>,
    dir: tempfile::TempDir,
    credentials: Option<(String, String)>,
    http: reqwest::Client,
}

impl Registry {
    /// An open registry (no auth).
    pub async fn start() -> anyhow::Result<Registry> {
        Registry::start_inner(None, false).await
    }

    /// A registry serving HTTPS with a self-signed certificate for 127.0.0.1 (made with
    /// `openssl`); [`Registry::ca_path`] is the certificate to trust.
    pub async fn start_tls() -> anyhow::Result<Registry> {
        Registry::start_inner(None, true).await
    }

    /// An HTTPS registry (as [`Registry::start_tls`]) that also requires a client certificate
    /// signed by its CA; [`Registry::client_cert`] is one.
    pub async fn start_tls_client_auth() -> anyhow::Result<Registry> {
        Registry::start_with(None, true, true).await
    }

    /// A registry that requires `user`/`password` (htpasswd, bcrypt) for everything.
    pub async fn start_with_auth(user: &str, password: &str) -> anyhow::Result<Registry> {
        Registry::start_inner(Some((user.to_string(), password.to_string())), false).await
    }

    async fn start_inner(credentials: Option<(String, String)>, tls: bool) -> anyhow::Result<Registry> {
        Registry::start_with(credentials, tls, false).await
    }

    async fn start_with(
        credentials: Option<(String, String)>,
        tls: bool,
        client_auth: bool,
    ) -> anyhow::Result<Registry> {
        if !Path::new(REGISTRY_BIN).is_file() {
            bail!("{REGISTRY_BIN} is missing: apt-get install docker-registry");
        }
        let dir = tempfile::Builder::new().prefix("crisp-registry-").tempdir_in("/tmp")?;
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        if let Some((user, password)) = &credentials {
            let hash = bcrypt::hash(password, 5).context("bcrypt")?;
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n"))?;
            config.push_str(&format!("auth:\n  htpasswd:\n    realm: crisp-test\n    path: {}\n", htpasswd.display()));
        }
        let mut tls_cert = None;
        let mut client_cert = None;
        if tls {
            let (ca, cert, key) = make_certificate(dir.path())?;
            config.push_str(&format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display()));
            if client_auth {
                client_cert = Some(make_client_certificate(dir.path())?);
                config.push_str(&format!("    clientcas:\n      - {}\n", ca.display()));
            }
            tls_cert = Some(ca);
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {REGISTRY_BIN}"))?;
        let mut http = reqwest::Client::builder().no_proxy();
        if let Some(cert) = &tls_cert {
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(cert)?)?);
        }
        if let Some((cert, key)) = &client_cert {
            let mut pem = std::fs::read(cert)?;
            pem.extend(std::fs::read(key)?);
            http = http.identity(reqwest::Identity::from_pem(&pem)?);
        }
        let http = http.build()?;
        let registry = Registry { child, addr, tls_cert, client_cert, dir, credentials, http };
        registry.wait_ready().await?;
        Ok(registry)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = format!("{}/v2/", self.base());
        for _ in 0..100 {
            if let Ok(response) = self.http.get(&url).send().await
                && (response.status().is_success() || response.status() == reqwest::StatusCode::UNAUTHORIZED)
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
        bail!("the registry at {} did not come up: {log}", self.addr)
    }

    /// `http://127.0.0.1:<port>` (or `https://`).
    pub fn base(&self) -> String {
        let scheme = if self.tls_cert.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The certificate to trust for a TLS registry.
    pub fn ca_path(&self) -> Option<&Path> {
        self.tls_cert.as_deref()
    }

    /// The client certificate and its key (PEM files) a client-auth registry accepts.
    pub fn client_cert(&self) -> Option<(&Path, &Path)> {
        self.client_cert.as_ref().map(|(cert, key)| (cert.as_path(), key.as_path()))
    }

    /// `127.0.0.1:<port>`: the host part of image names served here.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the registry keeps a blob's bytes (to corrupt it behind the registry's back).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir.path().join("storage/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.credentials {
            Some((user, password)) => request.basic_auth(user, Some(password)),
            None => request,
        }
    }

    /// Uploads a blob (monolithic upload) unless the registry has it.
    pub async fn push_blob(&self, repo: &str, blob: &Blob) -> anyhow::Result<()> {
        let base = format!("{}/v2/{repo}", self.base());
        let head = self.request(reqwest::Method::HEAD, &format!("{base}/blobs/{}", blob.digest)).send().await?;
        if head.status().is_success() {
            return Ok(());
        }
        let start = self.request(reqwest::Method::POST, &format!("{base}/blobs/uploads/")).send().await?;
        if start.status() != reqwest::StatusCode::ACCEPTED {
            bail!("starting an upload to {repo}: {}", start.status());
        }
        let location = start
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .context("upload without Location")?
            .to_string();
        let location = if location.starts_with('/') { format!("{}{location}", self.base()) } else { location };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = self
            .request(reqwest::Method::PUT, &format!("{location}{separator}digest={}", blob.digest))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(blob.data.clone())
            .send()
            .await?;
        if put.status() != reqwest::StatusCode::CREATED {
            bail!("uploading {} to {repo}: {} {}", blob.digest, put.status(), put.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// Puts a manifest or index under `reference` (a tag or its digest).
    pub async fn push_manifest(&self, repo: &str, reference: &str, manifest: &Blob) -> anyhow::Result<()> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.base());
        let put = self
            .request(reqwest::Method::PUT, &url)
            .header(reqwest::header::CONTENT_TYPE, &manifest.media_type)
            .body(manifest.data.clone())
            .send()
            .await?;
        if put.status() != reqwest::StatusCode::CREATED {
            bail!("putting manifest {repo}:{reference}: {} {}", put.status(), put.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// Pushes an image's blobs and manifest as `repo:tag`; answers the image's name here.
    pub async fn push(&self, repo: &str, tag: &str, image: &BuiltImage) -> anyhow::Result<String> {
        self.push_blobs(repo, image).await?;
        self.push_manifest(repo, tag, &image.manifest).await?;
        Ok(format!("{}/{repo}:{tag}", self.host()))
    }

    /// Pushes the blobs and manifest of an image without a tag (for an index to point at).
    pub async fn push_blobs(&self, repo: &str, image: &BuiltImage) -> anyhow::Result<()> {
        for layer in &image.layers {
            self.push_blob(repo, layer).await?;
        }
        self.push_blob(repo, &image.config).await?;
        Ok(())
    }

    /// Pushes several images and an index of them as `repo:tag`.
    pub async fn push_index(
        &self,
        repo: &str,
        tag: &str,
        images: &[&BuiltImage],
        index: &Blob,
    ) -> anyhow::Result<String> {
        for image in images {
            self.push_blobs(repo, image).await?;
            self.push_manifest(repo, &image.manifest.digest, &image.manifest).await?;
        }
        self.push_manifest(repo, tag, index).await?;
        Ok(format!("{}/{repo}:{tag}", self.host()))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with `openssl`: (CA
/// certificate, server certificate, server key).
fn make_certificate(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let path = |name: &str| dir.join(name).display().to_string();
    std::fs::write(dir.join("leaf.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")?;
    let steps: [Vec<String>; 3] = [
        vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=crisp test CA",
            "-keyout",
            &path("ca.key"),
            "-out",
            &path("ca.pem"),
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &path("key.pem"),
            "-out",
            &path("leaf.csr"),
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        vec![
            "x509",
            "-req",
            "-in",
            &path("leaf.csr"),
            "-CA",
            &path("ca.pem"),
            "-CAkey",
            &path("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &path("leaf.ext"),
            "-out",
            &path("cert.pem"),
        ]
        .into_iter()
        .map(String::from)
        .collect(),
    ];
    openssl(&steps)?;
    Ok((dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem")))
}

/// Runs `openssl` once per step, in order; a failed step is an error with openssl's own words.
fn openssl(steps: &[Vec<String>]) -> anyhow::Result<()> {
    for args in steps {
        let output = Command::new("openssl")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running openssl (apt-get install openssl)")?;
        if !output.status.success() {
            bail!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
        }
    }
    Ok(())
}

/// A client certificate signed by the CA [`make_certificate`] made in `dir`: (cert, key).
fn make_client_certificate(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let path = |name: &str| dir.join(name).display().to_string();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")?;
    let steps: [Vec<String>; 2] = [
        ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=crisp client"]
            .into_iter()
            .map(String::from)
            .chain(["-keyout".into(), path("client.key"), "-out".into(), path("client.csr")])
            .collect(),
        ["x509", "-req", "-CAcreateserial", "-days", "2"]
            .into_iter()
            .map(String::from)
            .chain(["-in".into(), path("client.csr"), "-CA".into(), path("ca.pem"), "-CAkey".into(), path("ca.key")])
            .chain(["-extfile".into(), path("client.ext"), "-out".into(), path("client.pem")])
            .collect(),
    ];
    openssl(&steps)?;
    Ok((dir.join("client.pem"), dir.join("client.key")))
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A loopback TCP relay in front of a server whose answers it passes on at most
/// `bytes_per_second` (0: unthrottled), adjustable while it runs; armed with
/// [`Throttle::cut_once_after`], it also breaks one connection mid-answer. Stops on drop.
pub struct Throttle {
    addr: SocketAddr,
    rate: Arc<AtomicU64>,
    relayed: Arc<AtomicU64>,
    /// Where the next connection to pass it is cut (`u64::MAX`: none).
    cut_at: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Throttle {
    pub async fn start(upstream: SocketAddr, bytes_per_second: u64) -> anyhow::Result<Throttle> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let rate = Arc::new(AtomicU64::new(bytes_per_second));
        let relayed = Arc::new(AtomicU64::new(0));
        let cut_at = Arc::new(AtomicU64::new(u64::MAX));
        let cuts = Arc::new(AtomicU64::new(0));
        let relay = Relay {
            upstream,
            rate: rate.clone(),
            relayed: relayed.clone(),
            cut_at: cut_at.clone(),
            cuts: cuts.clone(),
        };
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay.clone().serve(client));
            }
        });
        Ok(Throttle { addr, rate, relayed, cut_at, cuts, task })
    }

    /// `127.0.0.1:<port>` of the relay.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Bytes passed from the server to clients so far.
    pub fn bytes_relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }

    pub fn set_rate(&self, bytes_per_second: u64) {
        self.rate.store(bytes_per_second, Ordering::Relaxed);
    }

    /// Arms one cut: the first connection whose answer passes `bytes` is closed there, without
    /// a clean end (a download broken mid-blob). `u64::MAX` disarms.
    pub fn cut_once_after(&self, bytes: u64) {
        self.cut_at.store(bytes, Ordering::SeqCst);
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::SeqCst)
    }
}

/// What each relayed connection shares with its [`Throttle`].
#[derive(Clone)]
struct Relay {
    upstream: SocketAddr,
    rate: Arc<AtomicU64>,
    relayed: Arc<AtomicU64>,
    cut_at: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
}

impl Relay {
    async fn serve(self, client: tokio::net::TcpStream) {
        let Ok(server) = tokio::net::TcpStream::connect(self.upstream).await else { return };
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let up = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
            let _ = server_write.shutdown().await;
        });
        let mut buf = vec![0u8; 64 * 1024];
        let mut passed = 0u64;
        let mut cut = false;
        loop {
            let limit = self.rate.load(Ordering::Relaxed);
            // Ten slices a second when throttled.
            let want = if limit == 0 { buf.len() } else { ((limit / 10).max(1) as usize).min(buf.len()) };
            let n = match server_read.read(&mut buf[..want]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let at = self.cut_at.load(Ordering::SeqCst);
            if passed + n as u64 > at
                && self.cut_at.compare_exchange(at, u64::MAX, Ordering::SeqCst, Ordering::SeqCst).is_ok()
            {
                let keep = (at - passed.min(at)) as usize;
                let _ = client_write.write_all(&buf[..keep]).await;
                self.cuts.fetch_add(1, Ordering::SeqCst);
                cut = true;
                break;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
            passed += n as u64;
            self.relayed.fetch_add(n as u64, Ordering::Relaxed);
            if limit != 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // A cut drops both halves with no clean end.
        if !cut {
            let _ = client_write.shutdown().await;
        }
        up.abort();
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.task.abort();
    }
}
