//! A container's mounts observed from inside it and from the host, through the proxy socket
//! with real containerd and runc: bind mounts read-write and read-only, a recursive read-only
//! mount whose submount is read-only too, each propagation (private, host-to-container,
//! bidirectional) with a mount made after the container started, a missing host path created
//! and a symlinked one followed, and the pod's hostname, hosts, resolv.conf and /dev/shm.

mod container_support;

use container_support::*;
use crisp_proto::cri::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;

/// The container's output: the messages of its CRI log lines, joined.
fn output(log: &str) -> String {
    log.lines().filter_map(|l| l.splitn(4, ' ').nth(3)).map(|m| format!("{m}\n")).collect()
}

/// Waits (up to 20 s) for the container `config` ran as to exit; its exit code and output.
async fn finish(node: &Node, pod: &Pod, id: &str, config: &ContainerConfig) -> (i32, String) {
    let status = node.wait_exited(id).await.unwrap();
    let mut log = node.log(pod, config);
    for _ in 0..40 {
        if output(&log).contains("END\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        log = node.log(pod, config);
    }
    (status.exit_code, output(&log))
}

/// Runs `script` (with `sh -c`) in a container of `config` with `mounts`; its exit code and output.
async fn run_script(node: &Node, pod: &Pod, name: &str, mounts: Vec<Mount>, script: &str) -> (i32, String) {
    // One stream: the log keeps stdout and stderr lines in the order each pipe is read, not the order written.
    let script = format!("exec 2>&1; {script}");
    let mut config = node.config(name, &["sh", "-c", &script]);
    config.mounts = mounts;
    let id = node.run(pod, config.clone()).await.unwrap();
    finish(node, pod, &id, &config).await
}

fn bind(host: &Path, container: &str) -> Mount {
    Mount { host_path: host.display().to_string(), container_path: container.into(), ..Default::default() }
}

fn sh(cmd: &str) {
    let out = std::process::Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Host mounts made by a test, unmounted (lazily, innermost first) when dropped.
#[derive(Default)]
struct HostMounts(Vec<PathBuf>);

impl HostMounts {
    fn tmpfs(&mut self, at: &Path) {
        std::fs::create_dir_all(at).unwrap();
        sh(&format!("mount -t tmpfs test-tmpfs '{}'", at.display()));
        self.0.push(at.to_path_buf());
    }

    fn adopt(&mut self, at: &Path) {
        self.0.push(at.to_path_buf());
    }
}

impl Drop for HostMounts {
    fn drop(&mut self) {
        for at in self.0.iter().rev() {
            let _ = std::process::Command::new("umount").arg("-l").arg(at).output();
        }
    }
}

#[tokio::test]
async fn bind_mounts_are_writable_or_read_only_as_asked() {
    let node = Node::start().await.unwrap();
    let pod = node.pod("binds").await.unwrap();
    let dir = node.stack.dir().join("host-data");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("given"), "from the host\n").unwrap();

    let rw = bind(&dir, "/rw");
    let ro = Mount { readonly: true, ..bind(&dir, "/ro") };
    let script = "cat /ro/given; echo written > /rw/made; echo again > /ro/refused 2>&1; echo END";
    let (code, out) = run_script(&node, &pod, "binds", vec![rw, ro], script).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("from the host\n"), "{out}");
    assert!(out.contains("/ro/refused: Read-only file system"), "{out}");
    assert_eq!(std::fs::read_to_string(dir.join("made")).unwrap(), "written\n");
    assert!(!dir.join("refused").exists());

    // ContainerStatus reports the mounts as asked.
    let container = node.list(None).await.unwrap().into_iter().next().unwrap();
    let mounts = node.status(&container.id).await.unwrap().mounts;
    assert!(mounts.iter().any(|m| m.container_path == "/ro" && m.readonly), "{mounts:?}");
}

#[tokio::test]
async fn a_recursive_read_only_mount_makes_its_submounts_read_only() {
    let node = Node::start().await.unwrap();
    let pod = node.pod("rro").await.unwrap();
    let mut host = HostMounts::default();
    let dir = node.stack.dir().join("rro-data");
    host.tmpfs(&dir.join("sub"));

    // Status advertises what this runc can do; the test needs it.
    let response = node.runtime().status(StatusRequest { verbose: false }).await.unwrap().into_inner();
    let rro =
        response.runtime_handlers.iter().all(|h| h.features.as_ref().is_some_and(|f| f.recursive_read_only_mounts));
    assert!(rro, "this runc lists rro: {response:?}");

    let write_sub = "echo x > /data/sub/file 2>&1 && echo WROTE; echo END";
    // Plain read-only: the submount stays writable.
    let ro = Mount { readonly: true, ..bind(&dir, "/data") };
    let (_, out) = run_script(&node, &pod, "ro", vec![ro.clone()], write_sub).await;
    assert!(out.contains("WROTE"), "{out}");
    // Recursive read-only: it is not.
    let rro = Mount { recursive_read_only: true, ..ro };
    let (_, out) = run_script(&node, &pod, "rro", vec![rro.clone()], write_sub).await;
    assert!(out.contains("/data/sub/file: Read-only file system") && !out.contains("WROTE"), "{out}");

    // rro needs a read-only, private mount.
    let mut config = node.config("rro-rw", &["true"]);
    config.mounts = vec![Mount { readonly: false, ..rro }];
    let err = node.create(&pod, config).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("recursive_read_only"), "{err:?}");
}

#[tokio::test]
async fn propagation_carries_later_mounts_as_asked() {
    let node = Node::start().await.unwrap();
    let mut pod_config = node.pod_config("propagation");
    pod_config.linux.as_mut().unwrap().security_context.as_mut().unwrap().privileged = true;
    let pod = node.pod_with(pod_config).await.unwrap();
    let mut host = HostMounts::default();
    let shared = node.stack.dir().join("shared");
    host.tmpfs(&shared);
    sh(&format!("mount --make-shared '{}'", shared.display()));

    // Each container waits for `sub/flag`, which the host mounts once they run.
    let wait = "for i in $(seq 1 100); do [ -e /mnt/sub/flag ] && break; sleep 0.1; done; \
                cat /mnt/sub/flag 2>/dev/null || echo ABSENT; echo END";
    let mut ids = vec![];
    for (name, propagation) in [
        ("private", MountPropagation::PropagationPrivate),
        ("host-to-container", MountPropagation::PropagationHostToContainer),
    ] {
        let mut config = node.config(name, &["sh", "-c", wait]);
        config.mounts = vec![Mount { propagation: propagation as i32, ..bind(&shared, "/mnt") }];
        let id = node.run(&pod, config.clone()).await.unwrap();
        ids.push((id, config));
    }
    host.tmpfs(&shared.join("sub"));
    std::fs::write(shared.join("sub/flag"), "MOUNTED LATER\n").unwrap();
    let (id, config) = &ids[0];
    let (_, out) = finish(&node, &pod, id, config).await;
    assert!(out.contains("ABSENT"), "private: {out}");
    let (id, config) = &ids[1];
    let (_, out) = finish(&node, &pod, id, config).await;
    assert!(out.contains("MOUNTED LATER"), "host-to-container: {out}");

    // Bidirectional: a mount the (privileged) container makes shows on the host.
    let mut config = node.config(
        "bidirectional",
        &[
            "sh",
            "-c",
            "busybox mkdir -p /mnt/back && busybox mount -t tmpfs back /mnt/back && echo hi > /mnt/back/file; echo END",
        ],
    );
    config.mounts =
        vec![Mount { propagation: MountPropagation::PropagationBidirectional as i32, ..bind(&shared, "/mnt") }];
    let sc = config.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default);
    sc.privileged = true;
    let id = node.run(&pod, config.clone()).await.unwrap();
    host.adopt(&shared.join("back"));
    let (_, out) = finish(&node, &pod, &id, &config).await;
    assert_eq!(std::fs::read_to_string(shared.join("back/file")).unwrap(), "hi\n", "{out}");

    // From a private host mount nothing can propagate: refused.
    let private = node.stack.dir().join("private");
    host.tmpfs(&private);
    sh(&format!("mount --make-private '{}'", private.display()));
    let mut config = node.config("refused", &["true"]);
    config.mounts =
        vec![Mount { propagation: MountPropagation::PropagationHostToContainer as i32, ..bind(&private, "/mnt") }];
    let err = node.create(&pod, config).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("propagation"), "{err:?}");
}

#[tokio::test]
async fn a_missing_host_path_is_created_and_a_symlink_followed() {
    let node = Node::start().await.unwrap();
    let pod = node.pod("paths").await.unwrap();
    let target = node.stack.dir().join("target");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("inside"), "through the link\n").unwrap();
    let link = node.stack.dir().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let missing = node.stack.dir().join("not/there/yet");

    let script = "cat /linked/inside; echo made > /new/file; echo END";
    let (code, out) =
        run_script(&node, &pod, "paths", vec![bind(&link, "/linked"), bind(&missing, "/new")], script).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("through the link\n"), "{out}");
    assert!(missing.is_dir());
    assert_eq!(std::fs::read_to_string(missing.join("file")).unwrap(), "made\n");
}

#[tokio::test]
async fn the_pods_hostname_hosts_resolv_conf_and_shm_are_mounted_unless_the_request_mounts_its_own() {
    let node = Node::start().await.unwrap();
    let pod = node.pod("files").await.unwrap();

    let script = "cat /etc/hostname; echo HOSTNAME=$HOSTNAME; busybox grep -c localhost /etc/hosts; \
                  busybox grep -q nameserver /etc/resolv.conf || echo NO-NAMESERVER; \
                  echo shared > /dev/shm/note; echo END";
    let (code, out) = run_script(&node, &pod, "writer", vec![], script).await;
    assert_eq!(code, 0, "{out}");
    // The pod's own files (the pod's directory in the runtime's state directory).
    let pod_dir = node.stack.dir().join("run").join("pods").join(&pod.id);
    let hostname = std::fs::read_to_string(pod_dir.join("hostname")).unwrap();
    assert!(out.starts_with(&format!("{hostname}HOSTNAME=files\n")), "{out}");

    // A second container of the pod sees the first one's /dev/shm.
    let (_, out) = run_script(&node, &pod, "reader", vec![], "cat /dev/shm/note; echo END").await;
    assert!(out.starts_with("shared\n"), "{out}");

    // The request's own /etc/hosts wins.
    let mine = node.stack.dir().join("my-hosts");
    std::fs::write(&mine, "10.1.2.3 mine\n").unwrap();
    let (_, out) =
        run_script(&node, &pod, "own-hosts", vec![bind(&mine, "/etc/hosts")], "cat /etc/hosts; echo END").await;
    assert_eq!(out, "10.1.2.3 mine\nEND\n");
}
