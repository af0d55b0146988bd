//! Image references: parsing and normalising them the way the kubelet and containerd do
//! (`busybox` → `docker.io/library/busybox:latest`), and telling image ids from names.

use crate::digest::{Digest, ImageId, is_hex64};
use std::fmt;

/// The registry short names resolve to.
pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const MAX_NAME_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference `{reference}`: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: &'static str,
}

/// A fully qualified image reference: `domain/path[:tag][@digest]`, with at least a tag or a
/// digest (a reference with neither gets the tag `latest`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with port when one was given (`docker.io`, `127.0.0.1:5000`).
    pub domain: String,
    /// The repository path inside the registry (`library/busybox`).
    pub path: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalises `input`.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let err = |reason| ReferenceError { reference: input.to_string(), reason };
        if input.is_empty() {
            return Err(err("it is empty"));
        }
        if input.trim() != input {
            return Err(err("it has surrounding whitespace"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => match Digest::parse(digest) {
                Ok(digest) if digest.is_sha256() => (rest, Some(digest)),
                _ => return Err(err("the digest is not `sha256:` and 64 lowercase hex digits")),
            },
            None => (input, None),
        };
        // A tag is after the last `:` that follows the last `/` (a `:` before it is a port).
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if !is_tag(tag) {
                    return Err(err("the tag is not 1-128 of [A-Za-z0-9_.-], starting with a letter, digit or `_`"));
                }
                (&rest[..last_slash + i], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(err("the repository name is empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(err("the repository name is longer than 255 characters"));
        }
        if is_hex64(name) {
            return Err(err("a 64-character hex string is an image id, not a repository name"));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, path)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), path.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        if !is_domain(&domain) {
            return Err(err("the registry host is not a valid host[:port]"));
        }
        let domain = if domain == LEGACY_DEFAULT_DOMAIN { DEFAULT_DOMAIN.to_string() } else { domain };
        if path.split('/').any(|component| !is_path_component(component)) {
            return Err(err(
                "the repository path must be lowercase components of [a-z0-9] separated by `.`, `_`, `__` or `-`, joined by `/`",
            ));
        }
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("{OFFICIAL_REPO_PREFIX}{path}")
        } else {
            path
        };
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        Ok(Reference { domain, path, tag, digest })
    }

    /// `domain/path`, the repository without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// `domain/path:tag`, when the reference has a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|tag| format!("{}:{tag}", self.repository()))
    }

    /// `domain/path@digest` for `digest`.
    pub fn with_digest(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.repository())
    }

    /// The name containerd stores the image under for this reference: `repo@digest` when it
    /// has a digest (the tag is then dropped, as containerd's `ParseDockerRef` does), else
    /// `repo:tag`.
    pub fn record_name(&self) -> String {
        match &self.digest {
            Some(digest) => self.with_digest(digest),
            None => self.to_string(),
        }
    }

    /// What the registry is asked for: the digest when there is one, else the tag.
    pub fn object(&self) -> &str {
        self.digest.as_ref().map(Digest::as_str).or(self.tag.as_deref()).unwrap_or("latest")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repository())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// What a CRI caller names an image by: its id (`sha256:<config digest>`, or the bare hex) or
/// a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageName {
    Id(ImageId),
    Reference(Reference),
}

impl ImageName {
    pub fn parse(input: &str) -> Result<ImageName, ReferenceError> {
        let hex = input.strip_prefix("sha256:").unwrap_or(input);
        if is_hex64(hex)
            && let Ok(digest) = Digest::parse(&format!("sha256:{hex}"))
        {
            return Ok(ImageName::Id(ImageId::of_config(digest)));
        }
        Reference::parse(input).map(ImageName::Reference)
    }
}

fn is_tag(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+` joined by `.`, `_`, `__` or any run of `-`.
fn is_path_component(s: &str) -> bool {
    let bytes = s.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &s[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_domain(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || s.starts_with('[') => (host, Some(port)),
        _ => (s, None),
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if host.starts_with('[') && host.ends_with(']') {
        return host[1..host.len() - 1].parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        Reference::parse(s).map(|r| r.to_string()).unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn short_names_normalise_like_the_kubelet() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        assert_eq!(norm("index.docker.io/library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("registry.k8s.io/pause:3.10"), "registry.k8s.io/pause:3.10");
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("127.0.0.1:5000/a/b:v1"), "127.0.0.1:5000/a/b:v1");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(norm(&format!("busybox@{d}")), format!("docker.io/library/busybox@{d}"));
        assert_eq!(norm(&format!("busybox:1@{d}")), format!("docker.io/library/busybox:1@{d}"));
    }

    #[test]
    fn malformed_references_are_rejected() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox@sha256:abc",
            "a//b",
            "-a",
            "a:b:c",
            "busybox:-x",
            " busybox",
            "host:port/x",
            &"a".repeat(64),
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn ids_are_told_from_names() {
        let hex = "b".repeat(64);
        let id = ImageId::of_config(Digest::parse(&format!("sha256:{hex}")).unwrap());
        assert_eq!(ImageName::parse(&format!("sha256:{hex}")), Ok(ImageName::Id(id.clone())));
        assert_eq!(ImageName::parse(&hex), Ok(ImageName::Id(id)));
        assert!(matches!(ImageName::parse("busybox"), Ok(ImageName::Reference(_))));
    }
}
