//! Pod sandboxes when things fail: a CNI plugin that fails rolls RunPodSandbox back with
//! nothing left (no namespace mount, no IP held, no record); a killed and restarted runtime
//! service finds every pod with its state and IPs.

mod sandbox_support;

use crisp_proto::cri::*;
use crisp_testkit::{Stack, StackOptions};
use sandbox_support::*;
use std::os::unix::fs::PermissionsExt;

#[tokio::test]
async fn a_failing_cni_plugin_is_rolled_back_with_nothing_left() {
    let bin = tempfile::tempdir().unwrap();
    let plugin = bin.path().join("crisp-test-fail");
    std::fs::write(
        &plugin,
        "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then\n  echo '{\"cniVersion\":\"1.0.0\",\"code\":100,\"msg\":\"refused by the test plugin\"}'\n  exit 1\nfi\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let stack = Stack::start_with(StackOptions {
        extra_config: format!("[runtime]\ncni_bin_dirs = [\"{}\", \"/usr/lib/cni\"]\n", bin.path().display()),
        ..Default::default()
    })
    .await
    .unwrap();
    let network = write_network(&stack, "fail", 21, &[r#"{"type":"crisp-test-fail"}"#]);

    let err = run(&stack, pod_config("web", "uid-web")).await.unwrap_err();
    assert!(err.message().contains("crisp-test-fail"), "{}", err.message());
    assert!(err.message().contains("refused by the test plugin"), "{}", err.message());

    // The bridge plugin had allocated an IP before the failing one ran: DEL released it.
    assert!(network.store.is_dir(), "host-local ran");
    assert!(allocated_ips(&network.store).is_empty(), "{:?}", allocated_ips(&network.store));
    assert!(mounts_under(stack.dir()).iter().all(|m| !m.contains("/pods/")), "{:?}", mounts_under(stack.dir()));
    let pods = stack.dir().join("run").join("pods");
    assert_eq!(std::fs::read_dir(&pods).map(|d| d.count()).unwrap_or(0), 0);
    assert!(list(&stack, None).await.is_empty());

    // With the network fixed, the same pod runs (its name was not left reserved).
    let _fixed = write_network(&stack, "fail", 21, &[]);
    let id = run(&stack, pod_config("web", "uid-web")).await.unwrap();
    remove(&stack, &id).await.unwrap();
}

#[tokio::test]
async fn pods_survive_a_restart_of_the_runtime_service() {
    let mut stack = Stack::start().await.unwrap();
    let network = write_network(&stack, "restart", 22, &[]);
    let first = run(&stack, pod_config("web", "uid-web")).await.unwrap();
    let second = run(&stack, pod_config("db", "uid-db")).await.unwrap();
    stop(&stack, &second).await.unwrap();
    let ip = status(&stack, &first).await.unwrap().status.unwrap().network.unwrap().ip;

    stack.kill_service("runtime").unwrap();
    stack.start_service("runtime").await.unwrap();

    let pod = status(&stack, &first).await.unwrap().status.unwrap();
    assert_eq!(pod.state, PodSandboxState::SandboxReady as i32);
    assert_eq!(pod.network.unwrap().ip, ip);
    assert_eq!(status(&stack, &second).await.unwrap().status.unwrap().state, PodSandboxState::SandboxNotready as i32);
    assert_eq!(list(&stack, None).await.len(), 2);
    let addresses = in_namespace("net", &pod_dir(&stack, &first).join("ns").join("net"), &["ip", "-4", "addr"]);
    assert!(addresses.contains(&ip), "{addresses}");
    // A duplicate is still refused after the restart.
    let err = run(&stack, pod_config("web", "uid-web")).await.unwrap_err();
    assert!(err.message().contains(&first), "{}", err.message());

    remove(&stack, &first).await.unwrap();
    remove(&stack, &second).await.unwrap();
    assert!(allocated_ips(&network.store).is_empty());
    assert!(mounts_under(stack.dir()).iter().all(|m| !m.contains("/pods/")));
}
