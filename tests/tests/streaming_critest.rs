//! critest's streaming specs (exec, attach, port-forward, through the proxy socket) against a
//! private stack, with the offline conformance kit of `../shared/conformance` (critest, a
//! registry on 127.0.0.1:5000 with critest's images, registry mirrors, a CNI conflist in
//! /etc/cni/net.d). Ignored by default: a CI machine has none of that. Run with
//! `cargo nextest run --test streaming_critest --run-ignored all`.

use crisp_testkit::{Stack, StackOptions};
use std::path::Path;

const KIT: &str = "/work/shared/conformance";

#[tokio::test]
#[ignore = "needs the offline conformance kit (critest, its registry and images)"]
async fn critest_streaming_specs_pass_through_the_proxy() {
    let options = StackOptions {
        extra_config: "[image]\nregistry_config_path = \"/etc/containerd/certs.d\"\n".into(),
        ..StackOptions::default()
    };
    let stack = Stack::start_with(options).await.unwrap();
    for entry in std::fs::read_dir("/etc/cni/net.d").unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, stack.dir().join("cni").join(path.file_name().unwrap())).unwrap();
    }
    let focus = std::env::var("FOCUS").unwrap_or_else(|_| "Streaming".into());
    let output = tokio::process::Command::new(Path::new(KIT).join("run-critest.sh"))
        .arg(stack.proxy_socket())
        .env("FOCUS", focus)
        .env("OUT_DIR", stack.dir().join("critest"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let failures = std::fs::read_to_string(stack.dir().join("critest").join("failures.txt")).unwrap_or_default();
    println!("{stdout}");
    assert!(output.status.success(), "critest: {}\nfailures:\n{failures}", stdout.lines().last().unwrap_or(""));
}
