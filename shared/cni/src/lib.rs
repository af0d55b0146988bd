//! The node's CNI network configuration.
//!
//! Like containerd's CRI plugin (through libcni), the network is the first file in lexical
//! order in the configuration directory with the extension `.conflist`, `.conf` or `.json`
//! that parses; a single-plugin `.conf` is read as a list of one. [`NetworkConfig::load`]
//! finds it, and [`NetworkConfig::check_plugins`] finds every plugin binary it names.
//! [`watch::current`] is the loaded network, kept current by watching the directory.
//! [`exec`] runs a network's plugins (ADD, DEL) for a pod.

pub mod exec;
pub mod watch;

pub use exec::{Attachment, result_ips, single_plugin_network};

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("no CNI network configuration in {dir}")]
    NoConfig { dir: PathBuf },
    #[error("cannot read the CNI configuration directory {dir}: {source}")]
    ReadDir { dir: PathBuf, source: std::io::Error },
    #[error("invalid CNI configuration {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("CNI plugin `{plugin}` of network `{network}` is in none of {dirs:?}")]
    MissingPlugin { network: String, plugin: String, dirs: Vec<PathBuf> },
    #[error("CNI plugin `{plugin}` of network `{network}` failed {command}: {reason}")]
    Plugin { network: String, plugin: String, command: &'static str, reason: String },
}

/// One plugin of a network: its `type` (the binary's name) and its whole JSON configuration.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub plugin_type: String,
    pub raw: serde_json::Value,
}

/// A network configuration list, as the CNI specification defines it.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<PluginConfig>,
    /// The file it was read from.
    pub source: PathBuf,
}

#[derive(Deserialize)]
struct RawList {
    name: String,
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    plugins: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawSingle {
    name: String,
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    #[serde(rename = "type")]
    plugin_type: String,
}

fn plugin(path: &Path, raw: serde_json::Value) -> Result<PluginConfig, CniError> {
    let plugin_type = raw
        .get("type")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty() && !t.contains('/'))
        .ok_or_else(|| CniError::Invalid { path: path.to_path_buf(), reason: "a plugin has no valid `type`".into() })?
        .to_string();
    Ok(PluginConfig { plugin_type, raw })
}

impl NetworkConfig {
    /// Parses one configuration file.
    pub fn from_file(path: &Path) -> Result<NetworkConfig, CniError> {
        let invalid = |reason: String| CniError::Invalid { path: path.to_path_buf(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
        let is_list = path.extension().is_some_and(|e| e == "conflist");
        let config = if is_list {
            let list: RawList = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
            let plugins = list.plugins.into_iter().map(|raw| plugin(path, raw)).collect::<Result<Vec<_>, _>>()?;
            NetworkConfig { name: list.name, cni_version: list.cni_version, plugins, source: path.to_path_buf() }
        } else {
            let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
            let single: RawSingle = serde_json::from_value(raw.clone()).map_err(|e| invalid(e.to_string()))?;
            let _ = single.plugin_type;
            NetworkConfig {
                name: single.name,
                cni_version: single.cni_version,
                plugins: vec![plugin(path, raw)?],
                source: path.to_path_buf(),
            }
        };
        if config.name.is_empty() {
            return Err(invalid("the network has no name".into()));
        }
        if config.plugins.is_empty() {
            return Err(invalid("the network lists no plugin".into()));
        }
        Ok(config)
    }

    /// The network crisp uses: the first valid file in `dir` in lexical order. Files that do
    /// not parse are skipped, as libcni does; if none parses, the first error is returned.
    pub fn load(dir: &Path) -> Result<NetworkConfig, CniError> {
        let entries = std::fs::read_dir(dir).map_err(|source| CniError::ReadDir { dir: dir.to_path_buf(), source })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "conflist" | "conf" | "json"))
            })
            .collect();
        files.sort();
        let mut first_error = None;
        for file in files {
            match NetworkConfig::from_file(&file) {
                Ok(config) => return Ok(config),
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        Err(first_error.unwrap_or(CniError::NoConfig { dir: dir.to_path_buf() }))
    }

    /// Finds every plugin binary this network needs in `bin_dirs` (searched in order).
    pub fn check_plugins(&self, bin_dirs: &[PathBuf]) -> Result<Vec<PathBuf>, CniError> {
        self.plugins
            .iter()
            .map(|p| {
                find_plugin(bin_dirs, &p.plugin_type).ok_or_else(|| CniError::MissingPlugin {
                    network: self.name.clone(),
                    plugin: p.plugin_type.clone(),
                    dirs: bin_dirs.to_vec(),
                })
            })
            .collect()
    }
}

/// The first executable file named `plugin` in `bin_dirs`.
pub fn find_plugin(bin_dirs: &[PathBuf], plugin: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    bin_dirs
        .iter()
        .map(|d| d.join(plugin))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_first_valid_file_in_lexical_order_is_the_network() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("05-broken.conflist"), "{not json").unwrap();
        std::fs::write(
            dir.path().join("10-pods.conflist"),
            r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("20-other.conf"), r#"{"cniVersion":"0.4.0","name":"other","type":"ptp"}"#)
            .unwrap();
        let net = NetworkConfig::load(dir.path()).unwrap();
        assert_eq!(net.name, "pods");
        let types: Vec<_> = net.plugins.iter().map(|p| p.plugin_type.as_str()).collect();
        assert_eq!(types, ["bridge", "portmap"]);
    }

    #[test]
    fn a_single_plugin_conf_is_a_list_of_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("10-one.conf"), r#"{"cniVersion":"0.4.0","name":"one","type":"ptp"}"#).unwrap();
        let net = NetworkConfig::load(dir.path()).unwrap();
        assert_eq!(net.plugins.len(), 1);
        assert_eq!(net.plugins[0].plugin_type, "ptp");
    }

    #[test]
    fn an_empty_dir_has_no_network_and_missing_plugins_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(NetworkConfig::load(dir.path()), Err(CniError::NoConfig { .. })));

        std::fs::write(
            dir.path().join("10-pods.conflist"),
            r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("bridge"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(bin.join("bridge"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let net = NetworkConfig::load(dir.path()).unwrap();
        let err = net.check_plugins(std::slice::from_ref(&bin)).unwrap_err().to_string();
        assert!(err.contains("portmap"), "{err}");
        std::fs::write(bin.join("portmap"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(bin.join("portmap"), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(net.check_plugins(&[bin]).unwrap().len(), 2);
    }
}
