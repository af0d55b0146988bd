//! A pod's infra (pause) process, through the proxy socket with real containerd, runc and
//! Debian's CNI plugins: only a pod whose containers share one PID namespace gets one (or
//! every pod with `runtime.infra_container = "always"`); it runs crisp's pause binary in the
//! pod's pinned network namespace and a PID namespace of its own; stop kills it; remove
//! leaves no task, container or snapshot in containerd (`ctr`'s view). crisp's sandbox image
//! is put into containerd with no registry, pinned.

mod sandbox_support;

use crisp_proto::cri::*;
use crisp_testkit::{Stack, StackOptions};
use sandbox_support::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn with_pid(mut config: PodSandboxConfig, pid: NamespaceMode) -> PodSandboxConfig {
    config.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Pod as i32,
                pid: pid as i32,
                ipc: NamespaceMode::Pod as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    config
}

/// The verbose info of a pod: crisp's record as JSON.
async fn info(stack: &Stack, id: &str) -> serde_json::Value {
    let response = status(stack, id).await.unwrap();
    serde_json::from_str(&response.info["info"]).unwrap()
}

fn ns_inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// A process is gone when /proc has no entry or only a zombie's.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')).unwrap_or(false))
        .unwrap_or(false)
}

fn ctr_lists(stack: &Stack, args: &[&str], what: &str) -> bool {
    stack.ctr(args).unwrap().lines().any(|line| line.split_whitespace().next() == Some(what))
}

#[tokio::test]
async fn a_pod_sharing_its_pid_namespace_gets_crisps_pause_process_which_stop_kills_and_remove_clears() {
    let stack = Stack::start().await.unwrap();
    let _network = write_network(&stack, "infra", 41, &[]);

    let id = run(&stack, with_pid(pod_config("shared", "uid-shared"), NamespaceMode::Pod)).await.unwrap();
    let info = info(&stack, &id).await;
    let pid = info["pid"].as_u64().expect("the verbose info names the infra pid") as u32;
    assert!(running(pid), "the infra process {pid} runs");
    assert_eq!(info["pidNamespace"].as_str().unwrap(), format!("/proc/{pid}/ns/pid"));

    // Its binary is crisp's pause binary, byte for byte.
    let pause = crisp_testkit::pause_binary().unwrap();
    let exe = std::fs::read(format!("/proc/{pid}/exe")).unwrap();
    assert!(exe == std::fs::read(&pause).unwrap(), "/proc/{pid}/exe is not {}", pause.display());
    // In the pod's pinned network namespace; a PID namespace of its own, where it is 1.
    let pin = PathBuf::from(info["sandbox"]["netns"].as_str().unwrap());
    assert_eq!(ns_inode(Path::new(&format!("/proc/{pid}/ns/net"))), ns_inode(&pin));
    assert_ne!(ns_inode(Path::new(&format!("/proc/{pid}/ns/pid"))), ns_inode(Path::new("/proc/self/ns/pid")));
    let status_file = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nspid = status_file.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
    // No capabilities, and oom_score_adj -998 clamped to what crisp may set (its own value).
    let cap_eff = status_file.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert!(cap_eff.ends_with("0000000000000000"), "{cap_eff}");
    let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap().trim().parse().unwrap();
    let adj: i32 = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap().trim().parse().unwrap();
    assert!((-998..=own.max(-998)).contains(&adj), "oom_score_adj {adj} (own {own})");

    // containerd has its container and a running task.
    let infra = format!("{id}-infra");
    assert!(ctr_lists(&stack, &["containers", "ls"], &infra));
    assert!(ctr_lists(&stack, &["tasks", "ls"], &infra));

    // crisp's sandbox image came with no registry, pinned.
    let images =
        stack.image_client().list_images(ListImagesRequest { filter: None }).await.unwrap().into_inner().images;
    let sandbox_image = format!("localhost/crisp/pause:{}", env!("CARGO_PKG_VERSION"));
    let image = images.iter().find(|i| i.repo_tags.contains(&sandbox_image)).expect("the sandbox image is listed");
    assert!(image.pinned, "{image:?}");

    // Stop kills it, and the pod is NOTREADY.
    stop(&stack, &id).await.unwrap();
    assert!(!running(pid), "the infra process {pid} is gone after stop");
    assert!(!ctr_lists(&stack, &["tasks", "ls"], &infra));
    let pod = status(&stack, &id).await.unwrap().status.unwrap();
    assert_eq!(pod.state, PodSandboxState::SandboxNotready as i32);
    stop(&stack, &id).await.unwrap();

    // Remove leaves no container and no snapshot.
    remove(&stack, &id).await.unwrap();
    assert!(!ctr_lists(&stack, &["containers", "ls"], &infra));
    assert!(!ctr_lists(&stack, &["snapshots", "ls"], &infra));
    remove(&stack, &id).await.unwrap();
    // The image stays, pinned.
    assert!(stack.ctr(&["images", "ls", "-q"]).unwrap().lines().any(|l| l == sandbox_image));
}

#[tokio::test]
async fn a_pod_with_a_pid_namespace_per_container_has_no_process_unless_infra_is_always() {
    let stack = Stack::start().await.unwrap();
    let _network = write_network(&stack, "noinfra", 42, &[]);
    let id = run(&stack, with_pid(pod_config("alone", "uid-alone"), NamespaceMode::Container)).await.unwrap();
    assert!(info(&stack, &id).await["pid"].is_null());
    assert!(stack.ctr(&["tasks", "ls", "-q"]).unwrap().trim().is_empty());
    assert!(!ctr_lists(&stack, &["containers", "ls"], &format!("{id}-infra")));
    remove(&stack, &id).await.unwrap();
    drop(stack);

    let options =
        StackOptions { env: vec![("CRISP_RUNTIME_INFRA_CONTAINER".into(), "always".into())], ..Default::default() };
    let stack = Stack::start_with(options).await.unwrap();
    let _network = write_network(&stack, "always", 43, &[]);
    let id = run(&stack, with_pid(pod_config("always", "uid-always"), NamespaceMode::Container)).await.unwrap();
    let pid = info(&stack, &id).await["pid"].as_u64().expect("an infra process") as u32;
    assert!(running(pid));
    // Each container keeps its own PID namespace: the pod offers none to join.
    assert!(info(&stack, &id).await["pidNamespace"].is_null());
    remove(&stack, &id).await.unwrap();
    assert!(!running(pid));
    assert!(!ctr_lists(&stack, &["containers", "ls"], &format!("{id}-infra")));
}

#[tokio::test]
async fn a_pod_whose_pause_process_died_is_not_ready_and_a_restarted_service_finds_a_live_one() {
    let mut stack = Stack::start().await.unwrap();
    let _network = write_network(&stack, "infrarec", 44, &[]);
    let live = run(&stack, with_pid(pod_config("live", "uid-live"), NamespaceMode::Pod)).await.unwrap();
    let dies = run(&stack, with_pid(pod_config("dies", "uid-dies"), NamespaceMode::Pod)).await.unwrap();
    let live_pid = info(&stack, &live).await["pid"].as_u64().unwrap() as u32;
    let dies_pid = info(&stack, &dies).await["pid"].as_u64().unwrap() as u32;

    stack.kill_service("runtime").unwrap();
    let target = rustix::process::Pid::from_raw(dies_pid as i32).unwrap();
    rustix::process::kill_process(target, rustix::process::Signal::KILL).unwrap();
    stack.start_service("runtime").await.unwrap();
    for _ in 0..50 {
        if !running(dies_pid) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let state = |s: &PodSandboxStatusResponse| s.status.as_ref().unwrap().state;
    assert_eq!(state(&status(&stack, &live).await.unwrap()), PodSandboxState::SandboxReady as i32);
    assert_eq!(info(&stack, &live).await["pid"].as_u64().unwrap() as u32, live_pid);
    assert_eq!(state(&status(&stack, &dies).await.unwrap()), PodSandboxState::SandboxNotready as i32);

    for id in [&live, &dies] {
        remove(&stack, id).await.unwrap();
        assert!(!ctr_lists(&stack, &["containers", "ls"], &format!("{id}-infra")));
    }
    assert!(!running(live_pid));
}

#[tokio::test]
async fn a_registry_sandbox_image_is_pulled_through_the_image_service_and_pinned() {
    use crisp_testkit::images::{Format, ImageBuilder};
    use crisp_testkit::registry::Registry;
    let registry = Registry::start().await.unwrap();
    // busybox's sleep as PID 1 ignores SIGTERM: stop has to SIGKILL it after the grace.
    let image = ImageBuilder::new(Format::Oci).busybox_layer().unwrap().cmd(&["/bin/sleep", "3600"]).build().unwrap();
    let name = registry.push("infra/pause", "test", &image).await.unwrap();
    let options = StackOptions { extra_config: format!("[image]\nsandbox_image = \"{name}\"\n"), ..Default::default() };
    let stack = Stack::start_with(options).await.unwrap();
    let _network = write_network(&stack, "infrareg", 45, &[]);

    let id = run(&stack, with_pid(pod_config("pulled", "uid-pulled"), NamespaceMode::Pod)).await.unwrap();
    let pid = info(&stack, &id).await["pid"].as_u64().expect("an infra process") as u32;
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert_eq!(cmdline, "/bin/sleep\u{0}3600\u{0}");
    let images =
        stack.image_client().list_images(ListImagesRequest { filter: None }).await.unwrap().into_inner().images;
    let pulled = images.iter().find(|i| i.repo_tags.contains(&name)).expect("the sandbox image is listed");
    assert!(pulled.pinned, "{pulled:?}");
    assert_eq!(pulled.id, image.id());
    // crisp's own was not made.
    assert_eq!(images.len(), 1, "{images:?}");

    let started = std::time::Instant::now();
    stop(&stack, &id).await.unwrap();
    assert!(!running(pid));
    assert!(started.elapsed() >= std::time::Duration::from_secs(2), "SIGKILL came after the grace");
    remove(&stack, &id).await.unwrap();
    assert!(!ctr_lists(&stack, &["containers", "ls"], &format!("{id}-infra")));
}
