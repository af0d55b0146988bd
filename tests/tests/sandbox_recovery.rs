//! Pod sandboxes when things fail: a CNI plugin that fails rolls RunPodSandbox back with
//! nothing left (no namespace mount, no IP held, no record); a killed and restarted runtime
//! service finds every pod with its state and IPs.

mod sandbox_support;

use crisp_proto::cri::*;
use crisp_testkit::{Stack, StackOptions};
use sandbox_support::*;
use std::os::unix::fs::PermissionsExt;

/// A CNI plugin `crisp-test-plugin` that succeeds, unless a flag file beside it says to fail
/// ADD (`fail-add`), fail DEL (`fail-del`) or hang in ADD (`hang-add`).
struct TestPlugin {
    dir: tempfile::TempDir,
}

impl TestPlugin {
    fn new() -> TestPlugin {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("crisp-test-plugin");
        std::fs::write(
            &plugin,
            r#"#!/bin/sh
here=$(dirname "$0")
cat >/dev/null
if [ "$CNI_COMMAND" = ADD ] && [ -e "$here/hang-add" ]; then exec sleep 60; fi
if [ -e "$here/fail-$(echo "$CNI_COMMAND" | tr A-Z a-z)" ]; then
  echo '{"cniVersion":"1.0.0","code":100,"msg":"refused by the test plugin"}'
  exit 1
fi
if [ "$CNI_COMMAND" = ADD ]; then echo '{"cniVersion":"1.0.0","ips":[]}'; fi
exit 0
"#,
        )
        .unwrap();
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        TestPlugin { dir }
    }

    fn set(&self, flag: &str, on: bool) {
        let path = self.dir.path().join(flag);
        if on {
            std::fs::write(path, "").unwrap();
        } else {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn stack(&self) -> Stack {
        Stack::start_with(StackOptions {
            extra_config: format!("[runtime]\ncni_bin_dirs = [\"{}\", \"/usr/lib/cni\"]\n", self.dir.path().display()),
            ..Default::default()
        })
        .await
        .unwrap()
    }
}

fn nothing_left(stack: &Stack, network: &TestNetwork) {
    assert!(network.store.is_dir(), "host-local ran");
    assert!(allocated_ips(&network.store).is_empty(), "{:?}", allocated_ips(&network.store));
    assert!(mounts_under(stack.dir()).iter().all(|m| !m.contains("/pods/")), "{:?}", mounts_under(stack.dir()));
    let pods = stack.dir().join("run").join("pods");
    assert_eq!(std::fs::read_dir(&pods).map(|d| d.count()).unwrap_or(0), 0);
}

#[tokio::test]
async fn a_failing_cni_plugin_is_rolled_back_with_nothing_left() {
    let plugin = TestPlugin::new();
    plugin.set("fail-add", true);
    let stack = plugin.stack().await;
    let network = write_network(&stack, "fail", 21, &[r#"{"type":"crisp-test-plugin"}"#]);

    let err = run(&stack, pod_config("web", "uid-web")).await.unwrap_err();
    assert!(err.message().contains("crisp-test-plugin"), "{}", err.message());
    assert!(err.message().contains("refused by the test plugin"), "{}", err.message());

    // The bridge plugin had allocated an IP before the failing one ran: DEL released it.
    nothing_left(&stack, &network);
    assert!(list(&stack, None).await.is_empty());

    // With the plugin fixed, the same pod runs (its name was not left reserved).
    plugin.set("fail-add", false);
    let id = run(&stack, pod_config("web", "uid-web")).await.unwrap();
    remove(&stack, &id).await.unwrap();
    nothing_left(&stack, &network);
}

#[tokio::test]
async fn a_failed_teardown_is_retried_by_the_next_stop_and_remove() {
    let plugin = TestPlugin::new();
    let stack = plugin.stack().await;
    let network = write_network(&stack, "retry", 23, &[r#"{"type":"crisp-test-plugin"}"#]);
    let id = run(&stack, pod_config("web", "uid-web")).await.unwrap();

    plugin.set("fail-del", true);
    let err = stop(&stack, &id).await.unwrap_err();
    assert!(err.message().contains("refused by the test plugin") && err.message().contains(&id), "{}", err.message());
    assert_eq!(status(&stack, &id).await.unwrap().status.unwrap().state, PodSandboxState::SandboxNotready as i32);
    let err = remove(&stack, &id).await.unwrap_err();
    assert!(err.message().contains("refused by the test plugin"), "{}", err.message());
    assert!(status(&stack, &id).await.is_ok(), "a pod whose teardown failed is kept");

    plugin.set("fail-del", false);
    stop(&stack, &id).await.unwrap();
    remove(&stack, &id).await.unwrap();
    nothing_left(&stack, &network);
}

#[tokio::test]
async fn a_run_cut_short_by_the_callers_deadline_is_undone() {
    let plugin = TestPlugin::new();
    plugin.set("hang-add", true);
    let stack = plugin.stack().await;
    let network = write_network(&stack, "deadline", 24, &[r#"{"type":"crisp-test-plugin"}"#]);

    let mut request = tonic::Request::new(RunPodSandboxRequest {
        config: Some(pod_config("web", "uid-web")),
        runtime_handler: String::new(),
    });
    request.set_timeout(std::time::Duration::from_secs(2));
    let err = stack.runtime_client().run_pod_sandbox(request).await.unwrap_err();
    // The client's own timer or the proxy's answer, whichever is first.
    assert!(matches!(err.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{err:?}");

    // The undo runs in the background: give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline
        && (!allocated_ips(&network.store).is_empty()
            || stack.dir().join("run/pods").read_dir().is_ok_and(|mut d| d.next().is_some()))
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    nothing_left(&stack, &network);
    assert!(list(&stack, None).await.is_empty());
    plugin.set("hang-add", false);
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

#[tokio::test]
async fn after_a_reboot_a_pod_is_notready_and_its_removal_still_frees_its_ip() {
    let stack = Stack::start().await.unwrap();
    let network = write_network(&stack, "reboot", 25, &[]);
    let id = run(&stack, pod_config("web", "uid-web")).await.unwrap();
    assert_eq!(allocated_ips(&network.store).len(), 1);

    // What a reboot does to `runtime.state_dir` (a tmpfs): mounts and files gone, the
    // namespaces with them. containerd's records and `runtime.root_dir` stay.
    let dir = pod_dir(&stack, &id);
    for mount in mounts_under(&dir) {
        let status = std::process::Command::new("umount").arg("-l").arg(&mount).status().unwrap();
        assert!(status.success(), "umount {mount}");
    }
    std::fs::remove_dir_all(&dir).unwrap();

    let pod = status(&stack, &id).await.unwrap().status.unwrap();
    assert_eq!(pod.state, PodSandboxState::SandboxNotready as i32);
    assert!(pod.network.is_none());
    stop(&stack, &id).await.unwrap();
    remove(&stack, &id).await.unwrap();
    assert!(allocated_ips(&network.store).is_empty(), "DEL ran from the CNI state kept in runtime.root_dir");
    assert!(!stack.dir().join("lib/pods").join(&id).exists());
    assert!(list(&stack, None).await.is_empty());
}

#[tokio::test]
async fn what_a_run_killed_half_way_left_is_undone_when_the_service_starts_again() {
    let plugin = TestPlugin::new();
    plugin.set("hang-add", true);
    let mut stack = plugin.stack().await;
    let network = write_network(&stack, "crash", 26, &[r#"{"type":"crisp-test-plugin"}"#]);

    // A RunPodSandbox stuck in its last CNI plugin, after the bridge took an IP...
    let mut client = stack.runtime_client();
    let pending = tokio::spawn(async move {
        client
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod_config("web", "uid-web")),
                runtime_handler: String::new(),
            })
            .await
    });
    let started = std::time::Instant::now();
    while allocated_ips(&network.store).is_empty() {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "the bridge plugin never ran");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!mounts_under(&stack.dir().join("run/pods")).is_empty());

    // ... when the runtime service is killed.
    stack.kill_service("runtime").unwrap();
    assert!(pending.await.unwrap().is_err());
    assert_eq!(allocated_ips(&network.store).len(), 1, "the crash left the IP held");

    plugin.set("hang-add", false);
    stack.start_service("runtime").await.unwrap();
    nothing_left(&stack, &network);
    assert!(!stack.dir().join("lib/pods").read_dir().is_ok_and(|mut d| d.next().is_some()));
    assert!(stack.service_log("runtime").unwrap().contains("removed what a pod made half way left"));
    let id = run(&stack, pod_config("web", "uid-web")).await.unwrap();
    remove(&stack, &id).await.unwrap();
}

#[tokio::test]
async fn without_the_loopback_plugin_the_network_is_not_ready_and_no_pod_runs() {
    let bin = tempfile::tempdir().unwrap();
    for plugin in ["bridge", "host-local"] {
        std::os::unix::fs::symlink(format!("/usr/lib/cni/{plugin}"), bin.path().join(plugin)).unwrap();
    }
    let stack = Stack::start_with(StackOptions {
        extra_config: format!("[runtime]\ncni_bin_dirs = [\"{}\"]\n", bin.path().display()),
        ..Default::default()
    })
    .await
    .unwrap();
    let network = write_network(&stack, "nolo", 27, &[]);

    let status = stack.runtime_client().status(StatusRequest { verbose: false }).await.unwrap().into_inner();
    let ready = status.status.unwrap().conditions.into_iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(!ready.status);
    assert!(ready.message.contains("loopback"), "{}", ready.message);

    let err = run(&stack, pod_config("web", "uid-web")).await.unwrap_err();
    assert!(err.message().contains("loopback"), "{}", err.message());
    assert!(allocated_ips(&network.store).is_empty());
    assert!(mounts_under(stack.dir()).iter().all(|m| !m.contains("/pods/")));
    assert!(list(&stack, None).await.is_empty());
}
