//! The OCI image and Docker v2 formats, as `oci-spec` types ([`ImageManifest`], [`ImageIndex`],
//! [`ImageConfiguration`], [`Descriptor`]; Docker's manifests and configs parse as the OCI
//! ones), the media types crisp accepts, picking this node's platform from an index, and the
//! image's `USER` as the CRI reports it.

pub use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

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

/// A platform to pick from an index, in OCI terms (`linux`, `amd64`, `v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
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
pub fn pick_platform<'a>(index: &'a ImageIndex, platform: &Platform) -> Option<&'a Descriptor> {
    let candidates = || {
        index.manifests().iter().filter(|d| is_manifest(d.media_type().as_ref())).filter(|d| {
            d.platform().as_ref().is_some_and(|p| {
                p.os().to_string() == platform.os && p.architecture().to_string() == platform.architecture
            })
        })
    };
    let variant = |d: &Descriptor| d.platform().as_ref().and_then(|p| p.variant().clone());
    candidates()
        .find(|d| variant(d) == platform.variant)
        .or_else(|| candidates().find(|d| variant(d).is_none()))
        .or_else(|| candidates().next())
}

/// The image's user as the CRI reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageUser {
    /// The uid, when the user part of `USER` is numeric (`1000`, `1000:1000`).
    pub uid: Option<i64>,
    /// Else the user name (`nobody`); empty when `USER` is unset.
    pub username: String,
}

/// The user part of `USER` (`uid[:gid]` or `name[:group]`): a uid when numeric, else a name.
pub fn image_user(config: &ImageConfiguration) -> ImageUser {
    let user = config.config().as_ref().and_then(|c| c.user().as_deref()).unwrap_or("");
    let user = user.split(':').next().unwrap_or("");
    match user.parse::<i64>() {
        Ok(uid) => ImageUser { uid: Some(uid), username: String::new() },
        Err(_) => ImageUser { uid: None, username: user.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn platform_is_picked_from_an_index() {
        let json = format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            digest('1'),
            digest('2'),
            digest('3')
        );
        let index: ImageIndex = serde_json::from_str(&json).unwrap();
        let amd64 = Platform { os: "linux".into(), architecture: "amd64".into(), variant: None };
        assert_eq!(pick_platform(&index, &amd64).unwrap().digest().to_string(), digest('2'));
        let arm64 = Platform { os: "linux".into(), architecture: "arm64".into(), variant: Some("v8".into()) };
        assert_eq!(pick_platform(&index, &arm64).unwrap().digest().to_string(), digest('3'));
        let s390 = Platform { os: "linux".into(), architecture: "s390x".into(), variant: None };
        assert!(pick_platform(&index, &s390).is_none());
    }

    #[test]
    fn user_is_uid_or_name() {
        let with = |user: &str| -> ImageConfiguration {
            let json = format!(
                r#"{{"architecture":"amd64","os":"linux","config":{{"User":"{user}"}},"rootfs":{{"type":"layers","diff_ids":[]}}}}"#
            );
            serde_json::from_str(&json).unwrap()
        };
        assert_eq!(image_user(&with("1000:1000")), ImageUser { uid: Some(1000), username: String::new() });
        assert_eq!(image_user(&with("nobody")), ImageUser { uid: None, username: "nobody".into() });
        assert_eq!(image_user(&with("")), ImageUser::default());
    }

    #[test]
    fn docker_manifests_and_configs_parse() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":3,"digest":"{}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":5,"digest":"{}"}}]}}"#,
            digest('a'),
            digest('b')
        );
        let manifest: ImageManifest = serde_json::from_str(&manifest).unwrap();
        assert_eq!(manifest.layers().len(), 1);
        assert_eq!(manifest.config().digest().to_string(), digest('a'));
    }
}
