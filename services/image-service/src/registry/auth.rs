//! Registry authentication: credentials from the CRI `AuthConfig`, `WWW-Authenticate`
//! challenges (Bearer and Basic), and bearer-token requests to the realm.
//!
//! Credentials belong to one registry: the `AuthConfig`'s `server_address`, normalised by
//! [`registry_name`] (`https://index.docker.io/v1/` is `docker.io`), or the image's own registry
//! when it is empty. Which hosts of a pull may receive them is decided in [`super`]. Nothing
//! here prints a secret: `Credentials`' `Debug` shows the username and the registry only.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use crisp_proto::cri::AuthConfig;
use std::collections::BTreeMap;

/// What the caller gave to authenticate with.
#[derive(Clone, Default)]
pub struct Credentials {
    /// The registry these are for (normalised `server_address`); None: the image's registry.
    pub registry: Option<String>,
    pub username: String,
    pub password: String,
    pub identity_token: String,
    pub registry_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the `auth` field of the AuthConfig is not base64 of `user:password`")]
pub struct BadAuthField;

impl Credentials {
    /// The credentials in a CRI `AuthConfig`; `auth` (base64 `user:password`) fills username
    /// and password when those are empty.
    pub fn from_cri(auth: &AuthConfig) -> Result<Option<Credentials>, BadAuthField> {
        let mut creds = Credentials {
            registry: registry_name(&auth.server_address),
            username: auth.username.clone(),
            password: auth.password.clone(),
            identity_token: auth.identity_token.clone(),
            registry_token: auth.registry_token.clone(),
        };
        if !auth.auth.is_empty() && creds.username.is_empty() {
            let decoded = STANDARD.decode(auth.auth.trim()).map_err(|_| BadAuthField)?;
            let text = String::from_utf8(decoded).map_err(|_| BadAuthField)?;
            let (user, password) = text.split_once(':').ok_or(BadAuthField)?;
            creds.username = user.to_string();
            creds.password = password.to_string();
        }
        let empty = creds.username.is_empty()
            && creds.password.is_empty()
            && creds.identity_token.is_empty()
            && creds.registry_token.is_empty();
        Ok((!empty).then_some(creds))
    }

    pub fn basic(&self) -> Option<String> {
        (!self.username.is_empty() || !self.password.is_empty())
            .then(|| format!("Basic {}", STANDARD.encode(format!("{}:{}", self.username, self.password))))
    }
}

/// The registry a `server_address` names, as image references name it: the scheme, any path
/// and a trailing `/` dropped, lowercased; Docker Hub's API hosts (`index.docker.io`,
/// `registry-1.docker.io`, `registry.hub.docker.com`) are `docker.io`. None when empty.
pub fn registry_name(server_address: &str) -> Option<String> {
    let text = server_address.trim();
    let text = text.split_once("://").map_or(text, |(_, rest)| rest);
    let host = text.split('/').next().unwrap_or_default().to_ascii_lowercase();
    let host = host.strip_suffix(":443").map_or(host.clone(), str::to_string);
    match host.as_str() {
        "" => None,
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" | "docker.io" => {
            Some("docker.io".into())
        }
        _ => Some(host),
    }
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: BTreeMap<String, String>,
}

/// Parses `Scheme k="v", k2=v2`. Only the first challenge is read.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.is_empty() {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(escaped) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_string();
        }
        params.insert(key.trim().to_ascii_lowercase(), value);
    }
    Some(Challenge { scheme: scheme.to_ascii_lowercase(), params })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_is_parsed() {
        let c = parse_challenge(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#).unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:library/busybox:pull");
        let b = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(b.scheme, "basic");
        assert_eq!(b.params["realm"], "Registry Realm");
    }

    #[test]
    fn server_addresses_name_registries_as_image_references_do() {
        assert_eq!(registry_name("https://index.docker.io/v1/").as_deref(), Some("docker.io"));
        assert_eq!(registry_name("registry-1.docker.io").as_deref(), Some("docker.io"));
        assert_eq!(registry_name("docker.io").as_deref(), Some("docker.io"));
        assert_eq!(registry_name("https://Quay.io").as_deref(), Some("quay.io"));
        assert_eq!(registry_name("http://127.0.0.1:5000/").as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(registry_name("https://registry.example:443/v2/").as_deref(), Some("registry.example"));
        assert_eq!(registry_name("registry.example:5000").as_deref(), Some("registry.example:5000"));
        assert_eq!(registry_name("  "), None);
    }

    #[test]
    fn debug_shows_no_secret() {
        let auth = AuthConfig {
            username: "alice".into(),
            password: "hunter2".into(),
            identity_token: "idtok".into(),
            registry_token: "regtok".into(),
            server_address: "https://index.docker.io/v1/".into(),
            ..Default::default()
        };
        let text = format!("{:?}", Credentials::from_cri(&auth).unwrap().unwrap());
        assert!(text.contains("alice") && text.contains("docker.io"), "{text}");
        for secret in ["hunter2", "idtok", "regtok"] {
            assert!(!text.contains(secret), "{text}");
        }
    }

    #[test]
    fn auth_field_fills_user_and_password() {
        let auth = AuthConfig { auth: STANDARD.encode("alice:s3cr:et"), ..Default::default() };
        let creds = Credentials::from_cri(&auth).unwrap().unwrap();
        assert_eq!((creds.username.as_str(), creds.password.as_str()), ("alice", "s3cr:et"));
        assert!(Credentials::from_cri(&AuthConfig::default()).unwrap().is_none());
        assert!(Credentials::from_cri(&AuthConfig { auth: "!!".into(), ..Default::default() }).is_err());
    }
}
