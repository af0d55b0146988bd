//! Checks that go beyond the types: each failure names the field at fault.

use crate::{Config, ConfigError};
use std::path::Path;

/// A unix socket path must fit `sockaddr_un.sun_path` (108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, reason: reason.into() }
}

fn socket(field: &'static str, path: &Path) -> Result<(), ConfigError> {
    if !path.is_absolute() {
        return Err(invalid(field, format!("{} is not an absolute path", path.display())));
    }
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(invalid(
            field,
            format!("{} is longer than the {MAX_SOCKET_PATH} bytes a unix socket path may have", path.display()),
        ));
    }
    Ok(())
}

fn absolute_dir(field: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() { Ok(()) } else { Err(invalid(field, format!("{} is not an absolute path", path.display()))) }
}

/// containerd namespaces: letters, digits, `.`, `_` and `-`, starting with a letter or digit.
fn namespace(name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= 76
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(invalid(
            "containerd.namespace",
            format!("`{name}` is not a containerd namespace (letters, digits, `.`, `_`, `-`)"),
        ))
    }
}

impl Config {
    /// Rejects values no service could run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        socket("containerd.address", &self.containerd.address)?;
        namespace(&self.containerd.namespace)?;
        if self.containerd.connect_timeout.is_zero() {
            return Err(invalid("containerd.connect_timeout", "must be more than zero"));
        }

        socket("proxy.socket", &self.proxy.socket)?;
        if let Some(path) = &self.proxy.image_socket {
            socket("proxy.image_socket", path)?;
        }
        self.proxy_socket_mode()?;
        socket("proxy.runtime_endpoint", &self.proxy.runtime_endpoint)?;
        socket("proxy.streaming_endpoint", &self.proxy.streaming_endpoint)?;
        if self.proxy.image_endpoints.is_empty() {
            return Err(invalid("proxy.image_endpoints", "lists no image service socket"));
        }
        for path in &self.proxy.image_endpoints {
            socket("proxy.image_endpoints", path)?;
        }
        if self.proxy.health_check_interval.is_zero() {
            return Err(invalid("proxy.health_check_interval", "must be more than zero"));
        }
        if self.proxy.connect_timeout.is_zero() {
            return Err(invalid("proxy.connect_timeout", "must be more than zero"));
        }

        socket("image.socket", &self.image.socket)?;
        if self.image.snapshotter.trim().is_empty() {
            return Err(invalid("image.snapshotter", "is empty"));
        }
        if let Some(dir) = &self.image.registry_config_path {
            absolute_dir("image.registry_config_path", dir)?;
        }
        if self.image.max_concurrent_downloads == 0 {
            return Err(invalid("image.max_concurrent_downloads", "must be at least 1"));
        }
        if self.image.max_downloads_in_flight == Some(0) {
            return Err(invalid("image.max_downloads_in_flight", "must be at least 1"));
        }
        if self.image.pull_progress_timeout.is_zero() {
            return Err(invalid("image.pull_progress_timeout", "must be more than zero"));
        }
        if self.image.sandbox_image.trim().is_empty() {
            return Err(invalid("image.sandbox_image", "is empty"));
        }

        socket("runtime.socket", &self.runtime.socket)?;
        absolute_dir("runtime.root_dir", &self.runtime.root_dir)?;
        absolute_dir("runtime.state_dir", &self.runtime.state_dir)?;
        if self.runtime.cni_bin_dirs.is_empty() {
            return Err(invalid("runtime.cni_bin_dirs", "lists no directory"));
        }
        for dir in &self.runtime.cni_bin_dirs {
            absolute_dir("runtime.cni_bin_dirs", dir)?;
        }
        absolute_dir("runtime.cni_conf_dir", &self.runtime.cni_conf_dir)?;
        if self.runtime.runtime_type.trim().is_empty() {
            return Err(invalid("runtime.runtime_type", "is empty"));
        }
        absolute_dir("runtime.pause_binary", &self.runtime.pause_binary)?;
        if self.runtime.max_container_log_line_size == 0 || self.runtime.max_container_log_line_size < -1 {
            return Err(invalid(
                "runtime.max_container_log_line_size",
                "must be a number of bytes, or -1 for no limit",
            ));
        }

        socket("streaming.socket", &self.streaming.socket)?;
        if self.streaming.address.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid("streaming.address", format!("`{}` is not an IP address", self.streaming.address)));
        }
        if self.streaming.token_ttl.is_zero() {
            return Err(invalid("streaming.token_ttl", "must be more than zero".to_string()));
        }
        if self.streaming.tls_cert_file.is_some() != self.streaming.tls_key_file.is_some() {
            return Err(invalid("streaming.tls_cert_file", "tls_cert_file and tls_key_file go together".to_string()));
        }
        if self.streaming.max_tokens == 0 {
            return Err(invalid("streaming.max_tokens", "must be at least 1".to_string()));
        }

        if self.telemetry.log_level.trim().is_empty() {
            return Err(invalid("telemetry.log_level", "is empty"));
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(invalid("telemetry.otlp_endpoint", format!("`{endpoint}` is not an http:// or https:// URL")));
        }
        Ok(())
    }

    /// `proxy.socket_mode` as permission bits.
    pub fn proxy_socket_mode(&self) -> Result<u32, ConfigError> {
        let text = self.proxy.socket_mode.trim_start_matches("0o");
        match u32::from_str_radix(text, 8) {
            Ok(mode) if mode <= 0o777 => Ok(mode),
            _ => Err(invalid(
                "proxy.socket_mode",
                format!("`{}` is not an octal permission like 0660", self.proxy.socket_mode),
            )),
        }
    }
}
