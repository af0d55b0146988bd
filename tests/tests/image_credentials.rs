//! PullImage credentials reach only the registry they were given for: not a mirror on another
//! host (unless its `hosts.toml` entry has `forward_credentials = true`), not the host a
//! registry redirects to, and never the services' logs.

mod image_support;

use crisp_proto::cri::AuthConfig;
use crisp_testkit::images::Format;
use crisp_testkit::registry::Registry;
use crisp_testkit::token_auth::{TokenAuthRegistry, base64};
use image_support::fake::{FakeServer, Recorded, Reply};
use image_support::*;

const USER: &str = "alice";
const PASSWORD: &str = "pw-Zq81-secret";

/// A mirror that asks for Basic credentials on every request and records what it receives.
async fn recording_mirror() -> anyhow::Result<FakeServer> {
    FakeServer::start_on("127.0.0.1", |_| {
        Reply::new(401, r#"{"errors":[{"code":"UNAUTHORIZED","message":"who are you"}]}"#)
            .header("WWW-Authenticate", r#"Basic realm="mirror""#)
    })
    .await
}

fn authorizations(requests: &[Recorded]) -> Vec<String> {
    requests.iter().filter_map(|r| r.header("authorization")).map(str::to_string).collect()
}

/// A stack reading `hosts.toml` files from `dir`.
async fn stack_reading(dir: &std::path::Path) -> anyhow::Result<crisp_testkit::Stack> {
    stack_with(&format!("registry_config_path = \"{}\"", dir.display())).await
}

#[tokio::test]
async fn a_mirror_gets_no_credentials_given_for_the_upstream_registry() -> anyhow::Result<()> {
    let upstream = Registry::start_with_auth(USER, PASSWORD).await?;
    let image = busybox(Format::Oci)?;
    upstream.push("team/app", "v1", &image).await?;
    let mirror = recording_mirror().await?;
    let hosts = tempfile::tempdir()?;
    write_hosts_toml(hosts.path(), &upstream.host(), &[&mirror.host()], &format!("http://{}", upstream.host()))?;
    let stack = stack_reading(hosts.path()).await?;
    let mut client = stack.image_client();
    let name = format!("{}/team/app:v1", upstream.host());

    // Named by server_address (with a scheme and a path, as docker's config has them).
    let named = AuthConfig {
        username: USER.into(),
        password: PASSWORD.into(),
        server_address: format!("http://{}/v1/", upstream.host()),
        ..Default::default()
    };
    assert_eq!(pull_with(&mut client, &name, Some(named)).await?, image.id());
    // server_address empty: the image's own registry.
    remove(&mut client, &name).await?;
    let implied = AuthConfig { auth: base64(&format!("{USER}:{PASSWORD}")), ..Default::default() };
    assert_eq!(pull_with(&mut client, &name, Some(implied)).await?, image.id());

    let seen = mirror.requests();
    assert!(!seen.is_empty(), "the mirror was tried first");
    assert_eq!(authorizations(&seen), Vec::<String>::new(), "the mirror saw credentials");
    Ok(())
}

#[tokio::test]
async fn credentials_for_another_registry_are_not_sent() -> anyhow::Result<()> {
    let upstream = Registry::start_with_auth(USER, PASSWORD).await?;
    let image = busybox(Format::Oci)?;
    upstream.push("team/app", "v1", &image).await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let name = format!("{}/team/app:v1", upstream.host());
    let elsewhere = AuthConfig {
        username: USER.into(),
        password: PASSWORD.into(),
        server_address: "https://index.docker.io/v1/".into(),
        ..Default::default()
    };
    let err = pull_with(&mut client, &name, Some(elsewhere)).await.expect_err("credentials for docker.io");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    Ok(())
}

#[tokio::test]
async fn a_mirror_that_opts_in_receives_the_credentials() -> anyhow::Result<()> {
    let upstream = Registry::start_with_auth(USER, PASSWORD).await?;
    let image = busybox(Format::Oci)?;
    upstream.push("team/app", "v1", &image).await?;
    let mirror = recording_mirror().await?;
    let hosts = tempfile::tempdir()?;
    let dir = hosts.path().join(upstream.host());
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://{}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  forward_credentials = true\n  [host.\"http://{}\".header]\n    x-mirror-key = \"static-value\"\n",
            upstream.host(),
            mirror.host(),
            mirror.host()
        ),
    )?;
    let stack = stack_reading(hosts.path()).await?;
    let mut client = stack.image_client();
    let name = format!("{}/team/app:v1", upstream.host());
    let auth = AuthConfig { username: USER.into(), password: PASSWORD.into(), ..Default::default() };
    assert_eq!(pull_with(&mut client, &name, Some(auth)).await?, image.id());

    let seen = mirror.requests();
    let basic = format!("Basic {}", base64(&format!("{USER}:{PASSWORD}")));
    assert!(authorizations(&seen).contains(&basic), "{seen:?}");
    assert!(seen.iter().all(|r| r.header("x-mirror-key") == Some("static-value")), "{seen:?}");
    Ok(())
}

#[tokio::test]
async fn a_redirect_to_another_host_carries_no_authorization() -> anyhow::Result<()> {
    // Blob storage on another host (127.0.0.2), behind a registry that wants credentials.
    let storage = FakeServer::start_on("127.0.0.2", |_| Reply::new(404, "")).await?;
    let target = storage.host();
    let registry = FakeServer::start_on("127.0.0.1", move |request| {
        if request.header("authorization").is_none() {
            Reply::new(401, "").header("WWW-Authenticate", r#"Basic realm="registry""#)
        } else {
            Reply::new(307, "").header("Location", &format!("http://{target}{}", request.path))
        }
    })
    .await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let name = format!("{}/team/app:v1", registry.host());
    let auth = AuthConfig { username: USER.into(), password: PASSWORD.into(), ..Default::default() };
    let err = pull_with(&mut client, &name, Some(auth)).await.expect_err("the storage has nothing");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    let basic = format!("Basic {}", base64(&format!("{USER}:{PASSWORD}")));
    assert!(authorizations(&registry.requests()).contains(&basic), "the registry got the credentials");
    let seen = storage.requests();
    assert!(!seen.is_empty(), "the redirect was followed");
    assert_eq!(authorizations(&seen), Vec::<String>::new(), "the other host saw credentials");
    Ok(())
}

#[tokio::test]
async fn logs_of_pulls_with_credentials_hold_no_secret() -> anyhow::Result<()> {
    let upstream = Registry::start().await?;
    let image = busybox(Format::Docker)?;
    upstream.push("private/app", "v1", &image).await?;
    let (identity, preissued) = ("idtok-Hq27-secret", "regtok-Vb55-secret");
    let front = TokenAuthRegistry::start(upstream.addr(), USER, PASSWORD, identity, preissued).await?;
    let name = format!("{}/private/app:v1", front.host());
    let mut stack = stack().await?;
    let mut client = stack.image_client();

    let auth_field = base64(&format!("{USER}:{PASSWORD}"));
    let attempts = [
        AuthConfig { username: USER.into(), password: PASSWORD.into(), ..Default::default() },
        AuthConfig { auth: auth_field.clone(), ..Default::default() },
        AuthConfig { identity_token: identity.into(), ..Default::default() },
        AuthConfig { registry_token: preissued.into(), ..Default::default() },
    ];
    for auth in attempts {
        assert_eq!(pull_with(&mut client, &name, Some(auth)).await?, image.id());
        remove(&mut client, &name).await?;
    }
    // A refused password and a malformed `auth` field: their errors must not echo them either.
    let wrong = AuthConfig { username: USER.into(), password: "wrong-Kk93-secret".into(), ..Default::default() };
    let err = pull_with(&mut client, &name, Some(wrong)).await.expect_err("wrong password");
    assert!(!err.message().contains("wrong-Kk93-secret"), "{err:?}");
    let bad = AuthConfig { auth: "!!bad-Jj11-secret".into(), ..Default::default() };
    let err = pull_with(&mut client, &name, Some(bad)).await.expect_err("malformed auth");
    assert!(!err.message().contains("bad-Jj11-secret"), "{err:?}");

    let issued: Vec<String> = (1..=front.token_requests()).map(|n| format!("token-{n}")).collect();
    let mut secrets: Vec<&str> =
        vec![PASSWORD, &auth_field, identity, preissued, "wrong-Kk93-secret", "bad-Jj11-secret"];
    secrets.extend(issued.iter().map(String::as_str));
    for service in ["image-0", "proxy"] {
        let log = stack.service_log(service)?;
        assert!(log.to_lowercase().contains("pull"), "{service}'s log is empty: {log}");
        for secret in &secrets {
            // A token's name must not be followed by a digit (token-1 inside token-12).
            let leaked = log
                .match_indices(secret)
                .any(|(i, _)| !log[i + secret.len()..].starts_with(|c: char| c.is_ascii_digit()));
            assert!(!leaked, "{service}'s log holds {secret}:\n{log}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_registry_that_requires_a_client_certificate_gets_the_one_hosts_toml_names() -> anyhow::Result<()> {
    let registry = Registry::start_tls_client_auth().await?;
    let image = busybox(Format::Oci)?;
    let name = registry.push("secure/app", "v1", &image).await?;
    let ca = registry.ca_path().expect("a TLS registry").to_path_buf();
    let (cert, key) = registry.client_cert().expect("a client-auth registry");
    let combined = tempfile::tempdir()?;
    let both = combined.path().join("client-and-key.pem");
    std::fs::write(&both, [std::fs::read(cert)?, b"\n".to_vec(), std::fs::read(key)?].concat())?;

    let hosts = tempfile::tempdir()?;
    let dir = hosts.path().join(registry.host());
    std::fs::create_dir_all(&dir)?;
    let server = format!("server = \"https://{}\"\nca = \"{}\"\n", registry.host(), ca.display());
    let stack = stack_reading(hosts.path()).await?;
    let mut client = stack.image_client();

    // Without a client certificate the TLS handshake is refused.
    std::fs::write(dir.join("hosts.toml"), &server)?;
    // (Within a minute: not the stall watchdog's UNAVAILABLE minutes later.)
    let refused = tokio::time::timeout(std::time::Duration::from_secs(60), pull(&mut client, &name)).await;
    let err = refused.expect("a refused handshake answers at once").expect_err("no client certificate");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("unreachable"), "{err:?}");
    // A [cert, key] pair.
    let pair = format!("{server}client = [[\"{}\", \"{}\"]]\n", cert.display(), key.display());
    std::fs::write(dir.join("hosts.toml"), pair)?;
    assert_eq!(pull(&mut client, &name).await?, image.id());
    // One file holding both, relative to the hosts.toml's directory.
    remove(&mut client, &name).await?;
    std::fs::copy(&both, dir.join("client.pem"))?;
    std::fs::write(dir.join("hosts.toml"), format!("{server}client = \"client.pem\"\n"))?;
    assert_eq!(pull(&mut client, &name).await?, image.id());
    Ok(())
}
