//! `Debug` for the CRI messages whose fields api.proto marks `debug_redact`: a secret shows as
//! `"<redacted>"` when set and `""` when empty, never its value, so a request logged with
//! `{:?}` leaks no credential. build.rs gives these messages no derived `Debug` and fails the
//! build if api.proto marks a field in a message not handled here.

use crate::cri::AuthConfig;
use std::fmt;

/// A secret field's stand-in: whether it was set, not what it holds.
struct Redacted<'a>(&'a str);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() { f.write_str("\"\"") } else { f.write_str("\"<redacted>\"") }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("password", &Redacted(&self.password))
            .field("auth", &Redacted(&self.auth))
            .field("server_address", &self.server_address)
            .field("identity_token", &Redacted(&self.identity_token))
            .field("registry_token", &Redacted(&self.registry_token))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use crate::cri::{AuthConfig, ImageSpec, PullImageRequest};

    fn secrets() -> AuthConfig {
        AuthConfig {
            username: "alice".into(),
            password: "pw-secret-1".into(),
            auth: "YWxpY2U6cHctc2VjcmV0LTE=".into(),
            server_address: "registry.example:5000".into(),
            identity_token: "identity-secret-2".into(),
            registry_token: "registry-secret-3".into(),
        }
    }

    #[test]
    fn auth_config_debug_hides_every_secret_but_shows_the_rest() {
        let shown = format!("{:?}", secrets());
        for secret in ["pw-secret-1", "YWxpY2U6cHctc2VjcmV0LTE=", "identity-secret-2", "registry-secret-3"] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
        assert!(shown.contains("\"alice\""), "{shown}");
        assert!(shown.contains("\"registry.example:5000\""), "{shown}");
        assert_eq!(shown.matches("<redacted>").count(), 4, "{shown}");
    }

    #[test]
    fn auth_config_debug_tells_an_empty_secret_from_a_set_one() {
        let shown = format!("{:?}", AuthConfig { username: "bob".into(), password: "x".into(), ..Default::default() });
        assert_eq!(
            shown,
            r#"AuthConfig { username: "bob", password: "<redacted>", auth: "", server_address: "", identity_token: "", registry_token: "" }"#
        );
    }

    #[test]
    fn a_pull_request_debug_hides_its_credentials() {
        let request = PullImageRequest {
            image: Some(ImageSpec { image: "busybox".into(), ..Default::default() }),
            auth: Some(secrets()),
            sandbox_config: None,
        };
        let shown = format!("{request:?}");
        assert!(shown.contains("busybox"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
        let pretty = format!("{request:#?}");
        assert!(!pretty.contains("secret"), "{pretty}");
    }
}
