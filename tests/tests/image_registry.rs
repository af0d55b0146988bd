//! Where images come from: a registry that wants credentials, a mirror configured through
//! containerd-style `hosts.toml`, and how each kind of failure answers.

mod image_support;

use crisp_proto::cri::AuthConfig;
use crisp_testkit::images::{Format, ImageBuilder};
use crisp_testkit::registry::Registry;
use crisp_testkit::token_auth::base64;
use image_support::*;
use tonic::Code;

#[tokio::test]
async fn credentials_from_auth_config() -> anyhow::Result<()> {
    let registry = Registry::start_with_auth("alice", "wonderland").await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let image = busybox(Format::Oci)?;
    let name = registry.push("private/app", "v1", &image).await?;

    let err = pull(&mut client, &name).await.expect_err("anonymous pull of a private image");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains(&name), "{}", err.message());

    let wrong = AuthConfig { username: "alice".into(), password: "queen".into(), ..Default::default() };
    let err = pull_with(&mut client, &name, Some(wrong)).await.expect_err("wrong password");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(ctr_images(&stack)?.is_empty());

    let right = AuthConfig { username: "alice".into(), password: "wonderland".into(), ..Default::default() };
    assert_eq!(pull_with(&mut client, &name, Some(right)).await?, image.id());

    // The `auth` field (base64 user:password) works alike.
    remove(&mut client, &name).await?;
    let encoded = base64("alice:wonderland");
    let auth = AuthConfig { auth: encoded, ..Default::default() };
    assert_eq!(pull_with(&mut client, &name, Some(auth)).await?, image.id());
    assert_no_leases(&stack).await?;
    Ok(())
}

#[tokio::test]
async fn a_mirror_in_hosts_toml_serves_an_upstream_name() -> anyhow::Result<()> {
    let mirror = Registry::start().await?;
    let pause = ImageBuilder::new(Format::Docker).busybox_layer()?.cmd(&["/bin/sleep", "3600"]).build()?;
    mirror.push("pause", "3.10", &pause).await?;
    let hosts = tempfile::tempdir()?;
    // A first mirror that is down, the one that has the image, and as the upstream server a
    // closed loopback port: tests reach nothing beyond loopback.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let down = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mirrors = [down.to_string(), mirror.host()];
    let mirrors: Vec<&str> = mirrors.iter().map(String::as_str).collect();
    write_hosts_toml(hosts.path(), "registry.k8s.io", &mirrors, &format!("http://{closed}"))?;
    // A registry sandbox image, as a node configures one (crisp's own is the default).
    let stack = stack_with(&format!(
        "registry_config_path = \"{}\"\nsandbox_image = \"registry.k8s.io/pause:3.10\"",
        hosts.path().display()
    ))
    .await?;
    let mut client = stack.image_client();

    assert_eq!(pull(&mut client, "registry.k8s.io/pause:3.10").await?, pause.id());
    let names = ctr_images(&stack)?;
    assert!(names.contains(&"registry.k8s.io/pause:3.10".to_string()), "{names:?}");
    assert!(names.contains(&format!("registry.k8s.io/pause@{}", pause.manifest.digest)), "{names:?}");
    // The configured sandbox image is pinned.
    let s = status(&mut client, "registry.k8s.io/pause:3.10").await?.expect("status");
    assert!(s.pinned);
    let labels = stack.ctr(&["images", "ls"])?;
    assert!(labels.contains("io.cri-containerd.pinned=pinned"), "{labels}");
    assert!(labels.contains("io.cri-containerd.image=managed"), "{labels}");

    // A short name, normalised as the kubelet does, through a mirror for docker.io.
    mirror.push("library/busybox", "latest", &pause).await?;
    write_hosts_toml(hosts.path(), "docker.io", &[&mirror.host()], &format!("http://{closed}"))?;
    assert_eq!(pull(&mut client, "busybox").await?, pause.id());
    let s = status(&mut client, "busybox").await?.expect("status by the short name");
    assert!(s.repo_tags.contains(&"docker.io/library/busybox:latest".to_string()), "{:?}", s.repo_tags);

    // A name the mirror lacks falls through to the upstream server (unreachable here).
    let err = pull(&mut client, "registry.k8s.io/absent:1").await.expect_err("not on the mirror");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&closed.to_string()), "{}", err.message());
    Ok(())
}

#[tokio::test]
async fn failures_answer_with_their_codes_and_keep_nothing() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let image = busybox(Format::Oci)?;
    let name = registry.push("test/app", "v1", &image).await?;

    for bad in ["Upper/Case", "app:", "app@sha256:123", "", "a b"] {
        let err = pull(&mut client, bad).await.expect_err("malformed reference");
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
    }

    let unknown_tag = format!("{}/test/app:nope", registry.host());
    let err = pull(&mut client, &unknown_tag).await.expect_err("unknown tag");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains(&unknown_tag), "{}", err.message());
    let unknown_repo = format!("{}/test/nothing:v1", registry.host());
    let err = pull(&mut client, &unknown_repo).await.expect_err("unknown repository");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let unreachable = format!("{closed}/test/app:v1");
    let err = pull(&mut client, &unreachable).await.expect_err("nothing listens");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&unreachable), "{}", err.message());

    // A layer whose bytes no longer match its digest: an error naming the blob, nothing kept.
    let bad_layer = image.layers[1].clone();
    let path = registry.blob_path(&bad_layer.digest);
    let original = std::fs::read(&path)?;
    let mut bytes = original.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes)?;
    let err = pull(&mut client, &name).await.expect_err("corrupt layer");
    assert!(err.message().contains(&bad_layer.digest), "{}", err.message());
    assert!(err.message().contains(&name), "{}", err.message());
    assert!(ctr_images(&stack)?.is_empty(), "an image record was created");
    let content = stack.ctr(&["content", "ls", "-q"])?;
    assert!(!content.contains(&bad_layer.digest), "the corrupt layer was kept");
    let active = stack.ctr(&["content", "active"])?;
    assert!(!active.contains(&bad_layer.digest), "an ingest of the corrupt layer is left: {active}");
    assert_no_leases(&stack).await?;
    // The next try succeeds once the registry is repaired.
    std::fs::write(&path, original)?;
    assert_eq!(pull(&mut client, &name).await?, image.id());
    Ok(())
}

#[tokio::test]
async fn bearer_token_challenges() -> anyhow::Result<()> {
    use crisp_testkit::token_auth::TokenAuthRegistry;
    let upstream = Registry::start().await?;
    let image = busybox(Format::Docker)?;
    upstream.push("private/app", "v1", &image).await?;
    let front = TokenAuthRegistry::start(upstream.addr(), "bob", "builder", "identity-123", "preissued-456").await?;
    let name = format!("{}/private/app:v1", front.host());
    let stack = stack().await?;
    let mut client = stack.image_client();

    let err = pull(&mut client, &name).await.expect_err("anonymous");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let wrong = AuthConfig { username: "bob".into(), password: "nope".into(), ..Default::default() };
    let err = pull_with(&mut client, &name, Some(wrong)).await.expect_err("wrong password");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains(&name), "{}", err.message());

    // username/password at the token realm; the token is then reused for the blobs.
    let before = front.token_requests();
    let right = AuthConfig { username: "bob".into(), password: "builder".into(), ..Default::default() };
    assert_eq!(pull_with(&mut client, &name, Some(right)).await?, image.id());
    assert_eq!(front.token_requests() - before, 1, "one token for the whole pull");

    // An identity token (OAuth2 refresh token) and a registry token work too.
    remove(&mut client, &name).await?;
    let identity = AuthConfig { identity_token: "identity-123".into(), ..Default::default() };
    assert_eq!(pull_with(&mut client, &name, Some(identity)).await?, image.id());
    remove(&mut client, &name).await?;
    let token = AuthConfig { registry_token: "preissued-456".into(), ..Default::default() };
    let before = front.token_requests();
    assert_eq!(pull_with(&mut client, &name, Some(token)).await?, image.id());
    assert_eq!(front.token_requests(), before, "a registry token needs no token request");
    assert_no_leases(&stack).await?;
    Ok(())
}

#[tokio::test]
async fn https_registries_with_ca_or_skip_verify() -> anyhow::Result<()> {
    let registry = Registry::start_tls().await?;
    let image = busybox(Format::Oci)?;
    let name = registry.push("secure/app", "v1", &image).await?;
    let ca = registry.ca_path().expect("a TLS registry has a certificate").to_path_buf();
    let hosts = tempfile::tempdir()?;
    let host_dir = hosts.path().join(registry.host());
    std::fs::create_dir_all(&host_dir)?;
    let write = |extra: &str| {
        std::fs::write(host_dir.join("hosts.toml"), format!("server = \"https://{}\"\n{extra}\n", registry.host()))
    };
    let stack = stack_with(&format!("registry_config_path = \"{}\"", hosts.path().display())).await?;
    let mut client = stack.image_client();

    // hosts.toml is read at each pull.
    write("")?;
    let err = pull(&mut client, &name).await.expect_err("an untrusted certificate");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&name), "{}", err.message());

    write(&format!("ca = \"{}\"", ca.display()))?;
    assert_eq!(pull(&mut client, &name).await?, image.id());
    remove(&mut client, &name).await?;

    write("skip_verify = true")?;
    assert_eq!(pull(&mut client, &name).await?, image.id());
    assert_no_leases(&stack).await?;
    Ok(())
}
