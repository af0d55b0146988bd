//! UpdateRuntimeConfig: the node's pod CIDR(s) the kubelet hands down (`pod_cidr`, comma
//! separated when dual-stack), kept in `<runtime.root_dir>/pod-cidr` and given to every pod's
//! CNI ADD as the `ipRanges` runtime config (host-local reads it where the network declares
//! the `ipRanges` capability). An empty `pod_cidr` changes nothing, as containerd does.

use crisp_errors::GrpcError;
use std::path::{Path, PathBuf};
use tonic::Code;

const FILE: &str = "pod-cidr";

#[derive(Debug, thiserror::Error)]
pub enum PodCidrError {
    #[error("pod CIDR `{0}` is not an address/prefix length")]
    Invalid(String),
    #[error("cannot write the pod CIDR to {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

impl GrpcError for PodCidrError {
    fn code(&self) -> Code {
        match self {
            PodCidrError::Invalid(_) => Code::InvalidArgument,
            PodCidrError::Write { .. } => Code::Internal,
        }
    }
}

/// The CIDRs in `text`, each checked.
pub fn parse(text: &str) -> Result<Vec<String>, PodCidrError> {
    text.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|cidr| {
            let valid = cidr.split_once('/').is_some_and(|(ip, len)| match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => len.parse::<u8>().is_ok_and(|l| l <= 32),
                Ok(std::net::IpAddr::V6(_)) => len.parse::<u8>().is_ok_and(|l| l <= 128),
                Err(_) => false,
            });
            if valid { Ok(cidr.to_string()) } else { Err(PodCidrError::Invalid(cidr.to_string())) }
        })
        .collect()
}

/// Keeps the pod CIDR(s) for the pods run from now on.
pub async fn update(root_dir: &Path, pod_cidr: &str) -> Result<(), PodCidrError> {
    let cidrs = parse(pod_cidr)?;
    if cidrs.is_empty() {
        return Ok(());
    }
    let path = root_dir.join(FILE);
    let write = |source| PodCidrError::Write { path: path.clone(), source };
    tokio::fs::create_dir_all(root_dir).await.map_err(write)?;
    let temp = root_dir.join(format!("{FILE}.new"));
    tokio::fs::write(&temp, cidrs.join(",")).await.map_err(write)?;
    tokio::fs::rename(&temp, &path).await.map_err(write)?;
    tracing::info!(pod_cidr = %cidrs.join(","), "pod CIDR updated");
    Ok(())
}

/// The pod CIDR(s) last set; none before the first UpdateRuntimeConfig.
pub fn current(root_dir: &Path) -> Vec<String> {
    std::fs::read_to_string(root_dir.join(FILE)).ok().and_then(|text| parse(&text).ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_checked_and_split() {
        assert_eq!(parse("10.244.1.0/24,fd00:1::/64").unwrap(), ["10.244.1.0/24", "fd00:1::/64"]);
        assert!(parse("").unwrap().is_empty());
        for bad in ["10.244.1.0", "10.244.1.0/33", "nonsense/24", "fd00::/129"] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[tokio::test]
    async fn the_last_cidr_set_is_current_and_empty_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(current(dir.path()).is_empty());
        update(dir.path(), "10.244.1.0/24").await.unwrap();
        update(dir.path(), "").await.unwrap();
        assert_eq!(current(dir.path()), ["10.244.1.0/24"]);
    }
}
