//! Digests and the ids made of them, as types: a blob's [`Digest`], a layer chain's
//! [`ChainId`] (the key its snapshot is committed under), an image's [`ImageId`] (its config's
//! digest). They print the same (`sha256:<hex>`) but are not interchangeable.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a digest: {reason}")]
pub struct DigestError {
    pub value: String,
    pub reason: String,
}

/// A content digest, `algorithm:encoded` as the OCI image spec defines it (`sha256:<64 hex>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `value`; the grammar is the OCI image spec's, and `sha256` digests must be 64
    /// lowercase hex digits.
    pub fn parse(value: &str) -> Result<Digest, DigestError> {
        let err = |reason: String| DigestError { value: value.to_string(), reason };
        oci_spec::image::Digest::from_str(value).map_err(|e| err(e.to_string()))?;
        if let Some(hex) = value.strip_prefix("sha256:")
            && !is_hex64(hex)
        {
            return Err(err("a sha256 digest is 64 lowercase hex digits".into()));
        }
        Ok(Digest(value.to_string()))
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// `sha256:<64 hex>`: the only algorithm image ids and references use.
    pub fn is_sha256(&self) -> bool {
        self.0.starts_with("sha256:")
    }

    /// The encoded part, after `algorithm:`.
    pub fn encoded(&self) -> &str {
        self.0.split_once(':').map(|(_, e)| e).unwrap_or_default()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl From<&oci_spec::image::Digest> for Digest {
    fn from(digest: &oci_spec::image::Digest) -> Self {
        Digest(digest.to_string())
    }
}

/// Whether `s` is 64 lowercase hex digits.
pub fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The id of a chain of layers: containerd's key for the snapshot of a layer and its parents.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChainId(Digest);

impl ChainId {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn digest(&self) -> &Digest {
        &self.0
    }
}

impl fmt::Display for ChainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// containerd's chain ids of a layer stack from its diff ids:
/// `chain[0] = diff[0]`, `chain[n] = sha256(chain[n-1] + " " + diff[n])`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<ChainId> {
    let mut chain: Vec<ChainId> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => ChainId(diff_id.clone()),
            Some(parent) => ChainId(Digest::sha256_of(format!("{parent} {diff_id}").as_bytes())),
        };
        chain.push(next);
    }
    chain
}

/// A CRI image id: the digest of the image's config (`sha256:<hex>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(Digest);

impl ImageId {
    /// The id of the image whose config has digest `config`.
    pub fn of_config(config: Digest) -> ImageId {
        ImageId(config)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn digest(&self) -> &Digest {
        &self.0
    }

    /// The hex part, which `crictl` shortens to a prefix.
    pub fn hex(&self) -> &str {
        self.0.encoded()
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_containerd() {
        let a = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        let b = Digest::parse(&format!("sha256:{}", "b".repeat(64))).unwrap();
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0].digest(), &a);
        assert_eq!(chain[1].digest(), &Digest::sha256_of(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn digests_are_checked() {
        let hex = "c".repeat(64);
        assert_eq!(Digest::parse(&format!("sha256:{hex}")).unwrap().encoded(), hex);
        for bad in ["", "sha256", "sha256:", "sha256:abc", &format!("sha256:{}", "C".repeat(64)), "md5 x:ab"] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Digest::sha256_of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
