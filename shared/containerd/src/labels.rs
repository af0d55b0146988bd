//! The label names containerd, its CRI plugin and crisp put on containerd's objects, in one
//! place: a label is an interface (containerd's garbage collector, `ctr`, the CRI plugin and
//! other crisp services read them), so a name is written once.

/// containerd's garbage collector: a blob or snapshot labelled so references the named object.
pub mod gc {
    /// On a lease: when containerd deletes the lease by itself (RFC 3339, UTC).
    pub const EXPIRE: &str = "containerd.io/gc.expire";
    /// Prefix of a content reference: `containerd.io/gc.ref.content.<name>` = a digest.
    pub const REF_CONTENT_PREFIX: &str = "containerd.io/gc.ref.content.";
    /// Prefix of a snapshot reference: `containerd.io/gc.ref.snapshot.<snapshotter>` = a key.
    pub const REF_SNAPSHOT_PREFIX: &str = "containerd.io/gc.ref.snapshot.";

    /// A manifest's reference to its config.
    pub fn ref_config() -> String {
        format!("{REF_CONTENT_PREFIX}config")
    }

    /// A manifest's reference to its layer `index`.
    pub fn ref_layer(index: usize) -> String {
        format!("{REF_CONTENT_PREFIX}l.{index}")
    }

    /// An index's reference to its manifest `index`.
    pub fn ref_manifest(index: usize) -> String {
        format!("{REF_CONTENT_PREFIX}m.{index}")
    }

    /// A config's reference to the top snapshot of its unpacked chain in `snapshotter`.
    pub fn ref_snapshot(snapshotter: &str) -> String {
        format!("{REF_SNAPSHOT_PREFIX}{snapshotter}")
    }
}

/// On a layer blob: its uncompressed digest (diff id), set once an unpack verified it.
pub const UNCOMPRESSED: &str = "containerd.io/uncompressed";

/// Prefix of the label naming where a blob came from:
/// `containerd.io/distribution.source.<registry host>` = the repository path.
pub const DISTRIBUTION_SOURCE_PREFIX: &str = "containerd.io/distribution.source.";

/// The distribution source label for a blob from `repository` at `registry`.
pub fn distribution_source(registry: &str, repository: &str) -> (String, String) {
    (format!("{DISTRIBUTION_SOURCE_PREFIX}{registry}"), repository.to_string())
}

/// containerd's CRI plugin's labels, which crisp keeps the same so either can read the images.
pub mod cri {
    /// On an image record: the image is the CRI's.
    pub const IMAGE: &str = "io.cri-containerd.image";
    pub const IMAGE_MANAGED: &str = "managed";
    /// On an image record: the image is pinned (the sandbox image) and never garbage collected
    /// by the kubelet.
    pub const PINNED: &str = "io.cri-containerd.pinned";
    pub const PINNED_VALUE: &str = "pinned";
}

/// crisp's own labels.
pub mod crisp {
    /// On a pull's lease: the image service replica (by its socket) whose pull holds it.
    pub const PULL_OWNER: &str = "crisp.io/pull-owner";
    /// On a lease: what it is for (for a pull, the image reference).
    pub const PURPOSE: &str = "crisp.io/purpose";

    /// On a container record: what crisp keeps in it ([`KIND_SANDBOX`] for a pod sandbox).
    pub const KIND: &str = "crisp.io/kind";
    pub const KIND_SANDBOX: &str = "sandbox";
    /// On a pod sandbox: `ready` or `notready`.
    pub const SANDBOX_STATE: &str = "crisp.io/sandbox.state";
    /// On a pod sandbox: whether its CNI network is `attached` or `detached`.
    pub const SANDBOX_NETWORK: &str = "crisp.io/sandbox.network";
    /// On a pod sandbox: the kubelet's metadata.
    pub const POD_NAME: &str = "crisp.io/pod.name";
    pub const POD_NAMESPACE: &str = "crisp.io/pod.namespace";
    pub const POD_UID: &str = "crisp.io/pod.uid";
    pub const POD_ATTEMPT: &str = "crisp.io/pod.attempt";
    /// On a pod sandbox: the pod's own labels, under this prefix so they cannot collide with crisp's.
    /// A container's own labels are under the same prefix on its record.
    pub const POD_LABEL_PREFIX: &str = "crisp.io/label.";

    /// On a container record: a CRI container ([`KIND`] = this).
    pub const KIND_CONTAINER: &str = "container";
    /// On a container: the id of the pod sandbox it belongs to.
    pub const CONTAINER_SANDBOX: &str = "crisp.io/container.sandbox";
    /// On a container: the kubelet's metadata (name and attempt).
    pub const CONTAINER_NAME: &str = "crisp.io/container.name";
    pub const CONTAINER_ATTEMPT: &str = "crisp.io/container.attempt";
    /// On a container: `created`, `running` or `exited` (what the CRI reports as its state).
    pub const CONTAINER_STATE: &str = "crisp.io/container.state";
}

/// The runc shim's grouping annotation: containers whose OCI spec carries the same value run
/// under one shim process (containerd's CRI plugin sets it to the pod sandbox id).
pub const RUNC_SHIM_GROUP: &str = "io.containerd.runc.v2.group";

/// The longest label value crisp writes (containerd refuses labels over 4 KiB in all).
pub const MAX_VALUE_CHARS: usize = 200;

/// `value` cut to [`MAX_VALUE_CHARS`] characters.
pub fn value(value: &str) -> String {
    value.chars().take(MAX_VALUE_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_references_are_named_as_containerd_names_them() {
        assert_eq!(gc::ref_config(), "containerd.io/gc.ref.content.config");
        assert_eq!(gc::ref_layer(2), "containerd.io/gc.ref.content.l.2");
        assert_eq!(gc::ref_manifest(0), "containerd.io/gc.ref.content.m.0");
        assert_eq!(gc::ref_snapshot("overlayfs"), "containerd.io/gc.ref.snapshot.overlayfs");
        assert_eq!(
            distribution_source("docker.io", "library/busybox"),
            ("containerd.io/distribution.source.docker.io".to_string(), "library/busybox".to_string())
        );
    }

    #[test]
    fn label_values_are_bounded() {
        assert_eq!(value(&"é".repeat(300)).chars().count(), MAX_VALUE_CHARS);
        assert_eq!(value("short"), "short");
    }
}
