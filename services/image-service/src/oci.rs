//! The parts of the OCI image and Docker v2 manifest formats a pull reads: descriptors,
//! manifests, indexes (manifest lists), the image config, and picking this node's platform.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The manifest types a pull accepts, as an HTTP `Accept` header.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub manifests: Vec<Descriptor>,
}

/// The image configuration: what the CRI reports and what unpacking checks against.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContainerConfig {
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// The platform of this node, in OCI terms.
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    let variant = (architecture == "arm64").then(|| "v8".to_string());
    Platform { architecture: architecture.into(), os: std::env::consts::OS.into(), variant }
}

/// The manifest in `index` for `platform`: an exact os/architecture match, preferring the
/// same variant (a missing variant matches too), in index order.
pub fn pick_platform<'a>(index: &'a Index, platform: &Platform) -> Option<&'a Descriptor> {
    let candidates = || {
        index.manifests.iter().filter(|d| is_manifest(&d.media_type) || d.media_type.is_empty()).filter(|d| {
            d.platform.as_ref().is_some_and(|p| p.os == platform.os && p.architecture == platform.architecture)
        })
    };
    candidates()
        .find(|d| d.platform.as_ref().is_some_and(|p| p.variant == platform.variant))
        .or_else(|| candidates().find(|d| d.platform.as_ref().is_some_and(|p| p.variant.is_none())))
        .or_else(|| candidates().next())
}

/// containerd's chain ids: `chain[0] = diff[0]`, `chain[n] = sha256(chain[n-1] + " " + diff[n])`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => crate::digest::sha256_of(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

/// The user part of `User` (`uid[:gid]` or `name[:group]`), as the CRI reports it: a uid when
/// numeric, else a name.
pub fn image_user(config: &ImageConfig) -> (Option<i64>, String) {
    let user = config.config.as_ref().and_then(|c| c.user.as_deref()).unwrap_or("");
    let user = user.split(':').next().unwrap_or("");
    match user.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, user.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_containerd() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], crate::digest::sha256_of(format!("{a} {b}").as_bytes()));
    }

    #[test]
    fn platform_is_picked_from_an_index() {
        let json = r#"{"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:1","size":1,"platform":{"os":"linux","architecture":"arm","variant":"v7"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:2","size":1,"platform":{"os":"linux","architecture":"amd64"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:3","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}}]}"#;
        let index: Index = serde_json::from_str(json).unwrap();
        let amd64 = Platform { os: "linux".into(), architecture: "amd64".into(), variant: None };
        assert_eq!(pick_platform(&index, &amd64).unwrap().digest, "sha256:2");
        let arm64 = Platform { os: "linux".into(), architecture: "arm64".into(), variant: Some("v8".into()) };
        assert_eq!(pick_platform(&index, &arm64).unwrap().digest, "sha256:3");
        let s390 = Platform { os: "linux".into(), architecture: "s390x".into(), variant: None };
        assert!(pick_platform(&index, &s390).is_none());
    }

    #[test]
    fn user_is_uid_or_name() {
        let with =
            |u: &str| ImageConfig { config: Some(ContainerConfig { user: Some(u.into()) }), ..Default::default() };
        assert_eq!(image_user(&with("1000:1000")), (Some(1000), String::new()));
        assert_eq!(image_user(&with("nobody")), (None, "nobody".into()));
        assert_eq!(image_user(&with("")), (None, String::new()));
    }
}
