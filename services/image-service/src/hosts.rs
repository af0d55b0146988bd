//! Registry host configuration in containerd's `config_path` layout: `<dir>/<host>/hosts.toml`
//! (or `<dir>/_default/hosts.toml`) lists mirrors tried in order before the `server`, each with
//! its scheme (`http://` for plain HTTP), `skip_verify`, `ca`, `client` (TLS client
//! certificates, as containerd reads them: `"cert.pem"` holding the key too, or a list of such
//! files and `["cert", "key"]` pairs; the first is presented) and `override_path`.
//!
//! A mirror receives no PullImage credentials unless its entry says
//! `forward_credentials = true` (crisp's own key; containerd ignores it): a mirror is often run
//! by someone else than the registry the kubelet's credentials are for.
//!
//! Without a file, a registry is reached at `https://<host>` (`docker.io` at
//! `https://registry-1.docker.io`), and a loopback registry (`localhost`, `127.*`, `[::1]`) over
//! plain HTTP, as containerd does for localhost.

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{path}: host `{host}` is not a valid URL or host")]
    BadHost { path: PathBuf, host: String },
    #[error("{path}: `client` must be a file, or a list of files and [cert, key] pairs")]
    BadClient { path: PathBuf },
    #[error("{path}: header `{name}` is not a valid HTTP header name and value")]
    BadHeader { path: PathBuf, name: String },
}

/// One place a registry's content can be fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub host: String,
    /// The API root path, normally `/v2`.
    pub path: String,
    pub skip_verify: bool,
    pub ca: Vec<PathBuf>,
    /// TLS client certificates: (certificate, key); no key: the certificate's file holds it.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    /// Whether this host may resolve tags (a `pull`-only mirror is only asked for digests).
    pub resolve: bool,
    /// A mirror (not the registry itself): requests carry `?ns=<registry>`.
    pub mirror: bool,
    /// Extra headers sent with every request to this host (`[host."…".header]`).
    pub headers: Vec<(String, String)>,
    /// A mirror that may receive the credentials given for the registry it mirrors
    /// (`forward_credentials = true`).
    pub forward_credentials: bool,
}

impl RegistryHost {
    /// The base URL requests are built on: `scheme://host/v2`.
    pub fn base(&self) -> String {
        format!("{}://{}{}", self.scheme, self.host, self.path)
    }
}

/// A `hosts.toml`: the upstream `server` with its settings, and the `[host."…"]` mirrors.
#[derive(Debug, Default, Deserialize)]
struct HostsFile {
    server: Option<String>,
    #[serde(flatten)]
    settings: HostEntry,
    #[serde(default)]
    host: toml::map::Map<String, toml::Value>,
}

/// The settings a host (the server or a mirror) may have.
#[derive(Debug, Default, Deserialize)]
struct HostEntry {
    #[serde(default)]
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    skip_verify: Option<bool>,
    #[serde(default)]
    ca: Option<StringOrList>,
    #[serde(default)]
    client: Option<toml::Value>,
    #[serde(default)]
    override_path: Option<bool>,
    #[serde(default)]
    header: Option<toml::map::Map<String, toml::Value>>,
    #[serde(default)]
    forward_credentials: Option<bool>,
}

/// `name = "value"` or `name = ["v1", "v2"]` pairs, checked to be valid HTTP headers.
fn headers(
    path: &Path,
    table: Option<&toml::map::Map<String, toml::Value>>,
) -> Result<Vec<(String, String)>, HostsError> {
    let mut headers = Vec::new();
    for (name, value) in table.into_iter().flatten() {
        let values: Vec<&str> = match value {
            toml::Value::String(v) => vec![v.as_str()],
            toml::Value::Array(values) => values.iter().filter_map(|v| v.as_str()).collect(),
            _ => vec![],
        };
        for value in values {
            let valid =
                http::HeaderName::from_bytes(name.as_bytes()).is_ok() && http::HeaderValue::from_str(value).is_ok();
            if !valid {
                return Err(HostsError::BadHeader { path: path.to_path_buf(), name: name.clone() });
            }
            headers.push((name.clone(), value.to_string()));
        }
    }
    Ok(headers)
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn paths(&self, base: &Path) -> Vec<PathBuf> {
        let list = match self {
            StringOrList::One(s) => vec![s.clone()],
            StringOrList::Many(v) => v.clone(),
        };
        list.into_iter().map(|p| if Path::new(&p).is_absolute() { PathBuf::from(p) } else { base.join(p) }).collect()
    }
}

/// `client = "c.pem"`, `client = ["c.pem", ["cert.pem", "key.pem"]]`: (cert, key) pairs,
/// relative paths from the file's directory.
fn client_pairs(
    path: &Path,
    base: &Path,
    value: Option<&toml::Value>,
) -> Result<Vec<(PathBuf, Option<PathBuf>)>, HostsError> {
    let bad = || HostsError::BadClient { path: path.to_path_buf() };
    let file = |p: &str| if Path::new(p).is_absolute() { PathBuf::from(p) } else { base.join(p) };
    let items = match value {
        None => return Ok(vec![]),
        Some(toml::Value::String(one)) => return Ok(vec![(file(one), None)]),
        Some(toml::Value::Array(items)) => items,
        Some(_) => return Err(bad()),
    };
    items
        .iter()
        .map(|item| match item {
            toml::Value::String(one) => Ok((file(one), None)),
            toml::Value::Array(pair) => match pair.as_slice() {
                [toml::Value::String(cert)] => Ok((file(cert), None)),
                [toml::Value::String(cert), toml::Value::String(key)] => Ok((file(cert), Some(file(key)))),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        })
        .collect()
}

/// The hosts to try for `registry` (a reference's domain), in order: mirrors, then the server.
pub fn hosts_for(config_path: Option<&Path>, registry: &str) -> Result<Vec<RegistryHost>, HostsError> {
    if let Some(dir) = config_path {
        for name in [host_dir_name(registry), "_default".to_string()] {
            let path = dir.join(&name).join("hosts.toml");
            match std::fs::read_to_string(&path) {
                Ok(text) => return parse_hosts(&path, &text, registry),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(HostsError::Read { path, source }),
            }
        }
    }
    Ok(vec![default_host(registry)])
}

/// The directory name of a registry: `host` or `host:port` (containerd writes `[::1]:5000`
/// as it is).
fn host_dir_name(registry: &str) -> String {
    registry.to_string()
}

fn default_host(registry: &str) -> RegistryHost {
    let host = if registry == "docker.io" { "registry-1.docker.io".to_string() } else { registry.to_string() };
    let scheme = if is_loopback(registry) { "http" } else { "https" };
    RegistryHost {
        scheme: scheme.into(),
        host,
        path: "/v2".into(),
        skip_verify: false,
        ca: vec![],
        client: vec![],
        resolve: true,
        mirror: false,
        headers: vec![],
        forward_credentials: false,
    }
}

pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn parse_hosts(path: &Path, text: &str, registry: &str) -> Result<Vec<RegistryHost>, HostsError> {
    let file: HostsFile =
        toml::from_str(text).map_err(|source| HostsError::Parse { path: path.to_path_buf(), source })?;
    let base = path.parent().unwrap_or(Path::new("/"));
    let mut hosts = Vec::new();
    for (name, value) in &file.host {
        let entry: HostEntry =
            value.clone().try_into().map_err(|source| HostsError::Parse { path: path.to_path_buf(), source })?;
        let mut host = parse_url(path, name, entry.override_path.unwrap_or(false))?;
        host.skip_verify = entry.skip_verify.unwrap_or(false);
        host.ca = entry.ca.as_ref().map(|ca| ca.paths(base)).unwrap_or_default();
        host.client = client_pairs(path, base, entry.client.as_ref())?;
        host.headers = headers(path, entry.header.as_ref())?;
        host.resolve = entry.capabilities.as_ref().is_none_or(|caps| caps.iter().any(|c| c == "resolve"));
        host.mirror = true;
        host.forward_credentials = entry.forward_credentials.unwrap_or(false);
        let pull = entry.capabilities.as_ref().is_none_or(|caps| caps.iter().any(|c| c == "pull"));
        if pull {
            hosts.push(host);
        }
    }
    let mut server = match &file.server {
        Some(server) => parse_url(path, server, file.settings.override_path.unwrap_or(false))?,
        None => default_host(registry),
    };
    let settings = &file.settings;
    if let Some(skip_verify) = settings.skip_verify {
        server.skip_verify = skip_verify;
    }
    if let Some(ca) = &settings.ca {
        server.ca = ca.paths(base);
    }
    if settings.client.is_some() {
        server.client = client_pairs(path, base, settings.client.as_ref())?;
    }
    server.headers = headers(path, settings.header.as_ref())?;
    if let Some(caps) = &settings.capabilities {
        server.resolve = caps.iter().any(|c| c == "resolve");
        if !caps.iter().any(|c| c == "pull") {
            return Ok(hosts);
        }
    }
    server.mirror = false;
    hosts.push(server);
    Ok(hosts)
}

fn parse_url(path: &Path, url: &str, override_path: bool) -> Result<RegistryHost, HostsError> {
    let bad = || HostsError::BadHost { path: path.to_path_buf(), host: url.to_string() };
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) if scheme == "http" || scheme == "https" => (scheme.to_string(), rest),
        Some(_) => return Err(bad()),
        None => ("https".to_string(), url),
    };
    let (host, url_path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    let api_path =
        if override_path || url_path.ends_with("/v2") { url_path.to_string() } else { format!("{url_path}/v2") };
    Ok(RegistryHost {
        scheme,
        host: host.to_string(),
        path: api_path,
        skip_verify: false,
        ca: vec![],
        client: vec![],
        resolve: true,
        mirror: false,
        headers: vec![],
        forward_credentials: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_come_first_in_file_order() {
        let text = r#"
server = "https://registry.k8s.io"
[host."http://127.0.0.1:5001"]
  capabilities = ["pull", "resolve"]
[host."https://mirror.example/base"]
  capabilities = ["pull"]
  forward_credentials = true
  skip_verify = true
  ca = "ca.crt"
  client = ["both.pem", ["/etc/c.pem", "c.key"]]
  [host."https://mirror.example/base".header]
    x-one = "1"
    x-two = ["a", "b"]
"#;
        let hosts =
            parse_hosts(Path::new("/etc/crisp/certs.d/registry.k8s.io/hosts.toml"), text, "registry.k8s.io").unwrap();
        assert_eq!(hosts.len(), 3);
        assert_eq!(hosts[0].base(), "http://127.0.0.1:5001/v2");
        assert!(hosts[0].resolve && hosts[0].mirror && !hosts[0].forward_credentials);
        assert!(hosts[1].forward_credentials);
        assert_eq!(hosts[1].base(), "https://mirror.example/base/v2");
        assert!(!hosts[1].resolve && hosts[1].skip_verify);
        assert_eq!(hosts[1].ca, vec![PathBuf::from("/etc/crisp/certs.d/registry.k8s.io/ca.crt")]);
        assert_eq!(
            hosts[1].client,
            vec![
                (PathBuf::from("/etc/crisp/certs.d/registry.k8s.io/both.pem"), None),
                (PathBuf::from("/etc/c.pem"), Some(PathBuf::from("/etc/crisp/certs.d/registry.k8s.io/c.key")))
            ]
        );
        assert!(hosts[0].client.is_empty());
        assert_eq!(
            hosts[1].headers,
            vec![("x-one".into(), "1".into()), ("x-two".into(), "a".into()), ("x-two".into(), "b".into())]
        );
        assert_eq!(hosts[2].base(), "https://registry.k8s.io/v2");
        assert!(!hosts[2].mirror);
    }

    #[test]
    fn the_servers_own_settings_are_read_beside_its_mirrors() {
        let text = r#"
server = "https://registry.example/api"
capabilities = ["resolve"]
skip_verify = true
ca = ["a.crt", "/etc/ssl/b.crt"]
client = "me.pem"
override_path = true
[header]
  x-server = "yes"
[host."http://127.0.0.1:5001"]
"#;
        let hosts =
            parse_hosts(Path::new("/etc/certs.d/registry.example/hosts.toml"), text, "registry.example").unwrap();
        // The server may only resolve: it is not a pull host, the mirror is.
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].base(), "http://127.0.0.1:5001/v2");

        let text = "server = \"https://registry.example/api\"\nskip_verify = true\nca = [\"a.crt\", \"/etc/ssl/b.crt\"]\noverride_path = true\n[header]\n  x-server = \"yes\"\n";
        let hosts =
            parse_hosts(Path::new("/etc/certs.d/registry.example/hosts.toml"), text, "registry.example").unwrap();
        assert_eq!(hosts.len(), 1);
        let server = &hosts[0];
        assert_eq!(server.base(), "https://registry.example/api");
        assert!(server.skip_verify && !server.mirror);
        assert_eq!(
            server.ca,
            vec![PathBuf::from("/etc/certs.d/registry.example/a.crt"), PathBuf::from("/etc/ssl/b.crt")]
        );
        assert_eq!(server.headers, vec![("x-server".into(), "yes".into())]);
    }

    #[test]
    fn defaults_without_a_file() {
        assert_eq!(hosts_for(None, "docker.io").unwrap()[0].base(), "https://registry-1.docker.io/v2");
        assert_eq!(hosts_for(None, "127.0.0.1:5000").unwrap()[0].base(), "http://127.0.0.1:5000/v2");
        assert_eq!(hosts_for(None, "quay.io").unwrap()[0].base(), "https://quay.io/v2");
    }
}
