//! Pod sandboxes through the proxy socket, with real containerd and Debian's CNI plugins:
//! a pod's namespaces, files and IP as the host sees them; status, list and its filters;
//! stop and remove, each twice; host networking; duplicate names and bad requests.

mod sandbox_support;

use crisp_proto::cri::*;
use crisp_testkit::Stack;
use sandbox_support::*;
use std::io::{Read, Write};
use std::time::Duration;
use tonic::Code;

#[tokio::test]
async fn a_pod_gets_its_namespaces_files_and_an_ip_the_host_reaches() {
    let stack = Stack::start().await.unwrap();
    let network = write_network(&stack, "life", 11, &[]);

    let mut config = pod_config("web", "uid-web");
    config.dns_config = Some(DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["default.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let id = run(&stack, config).await.unwrap();
    assert_eq!(id.len(), 64);

    // Status: ready, with its IP, metadata, labels, annotations and namespace modes.
    let response = status(&stack, &id).await.unwrap();
    let pod = response.status.unwrap();
    assert_eq!(pod.id, id);
    assert_eq!(pod.state, PodSandboxState::SandboxReady as i32);
    assert_eq!(pod.metadata.as_ref().unwrap().name, "web");
    assert_eq!(pod.labels["app"], "web");
    assert_eq!(pod.annotations["note"], "made by a test");
    assert!(pod.created_at > 0);
    let ip = pod.network.as_ref().unwrap().ip.clone();
    assert!(ip.starts_with("10.201.11."), "{ip}");
    let options = pod.linux.unwrap().namespaces.unwrap().options.unwrap();
    assert_eq!(options.network, NamespaceMode::Pod as i32);
    assert!(response.info["info"].contains(&id));
    assert_eq!(allocated_ips(&network.store), std::slice::from_ref(&ip));

    // The pinned namespaces: the IP in the net namespace, lo up, the hostname in the UTS one.
    let ns = pod_dir(&stack, &id).join("ns");
    let addresses = in_namespace("net", &ns.join("net"), &["ip", "-4", "addr"]);
    assert!(addresses.contains(&format!("inet {ip}/24")), "{addresses}");
    assert!(addresses.contains("inet 127.0.0.1/8"), "{addresses}");
    assert_eq!(in_namespace("uts", &ns.join("uts"), &["hostname"]).trim(), "web");
    assert_eq!(mounts_under(&pod_dir(&stack, &id)).len(), 4, "net, ipc, uts pins and /dev/shm");

    // The files.
    let dir = pod_dir(&stack, &id);
    assert_eq!(std::fs::read_to_string(dir.join("hostname")).unwrap(), "web\n");
    assert_eq!(
        std::fs::read_to_string(dir.join("resolv.conf")).unwrap(),
        "search default.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    assert!(std::fs::read_to_string(dir.join("hosts")).unwrap().contains("localhost"));

    // The host reaches a listener inside the pod by the pod's IP.
    let mut listener = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.join("net").display()))
        .args(["busybox", "nc", "-l", "-p", "8080", "-e", "echo", "hello from the pod"])
        .spawn()
        .unwrap();
    let mut answer = String::new();
    for _ in 0..50 {
        if let Ok(mut conn) =
            std::net::TcpStream::connect_timeout(&format!("{ip}:8080").parse().unwrap(), Duration::from_secs(1))
        {
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = conn.write_all(b"\n");
            let _ = conn.read_to_string(&mut answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = listener.kill();
    let _ = listener.wait();
    assert_eq!(answer.trim(), "hello from the pod");

    // List and its filters.
    let second = run(&stack, pod_config("db", "uid-db")).await.unwrap();
    assert_eq!(list(&stack, None).await.len(), 2);
    let by = |filter: PodSandboxFilter| list(&stack, Some(filter));
    let only = |items: Vec<PodSandbox>| items.into_iter().map(|p| p.id).collect::<Vec<_>>();
    assert_eq!(only(by(PodSandboxFilter { id: id.clone(), ..Default::default() }).await), std::slice::from_ref(&id));
    assert_eq!(
        only(by(PodSandboxFilter { id: id[..12].to_string(), ..Default::default() }).await),
        std::slice::from_ref(&id)
    );
    let labelled =
        PodSandboxFilter { label_selector: [("app".to_string(), "db".to_string())].into(), ..Default::default() };
    assert_eq!(only(by(labelled).await), std::slice::from_ref(&second));

    // Stop: NOTREADY, the IP released; twice is fine.
    stop(&stack, &id).await.unwrap();
    stop(&stack, &id).await.unwrap();
    let pod = status(&stack, &id).await.unwrap().status.unwrap();
    assert_eq!(pod.state, PodSandboxState::SandboxNotready as i32);
    assert!(pod.network.is_none());
    assert_eq!(allocated_ips(&network.store).len(), 1, "only the second pod's IP is held");
    let not_ready = PodSandboxFilter {
        state: Some(PodSandboxStateValue { state: PodSandboxState::SandboxNotready as i32 }),
        ..Default::default()
    };
    assert_eq!(only(by(not_ready).await), std::slice::from_ref(&id));

    // Remove: gone, with its mounts and directory; twice is fine; unknown ids too.
    remove(&stack, &id).await.unwrap();
    remove(&stack, &id).await.unwrap();
    let err = status(&stack, &id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains(&id), "{}", err.message());
    assert!(mounts_under(&pod_dir(&stack, &id)).is_empty());
    assert!(!pod_dir(&stack, &id).exists());
    stop(&stack, "0123456789abcdef").await.unwrap();
    remove(&stack, "0123456789abcdef").await.unwrap();

    // Removing a ready pod stops it first.
    remove(&stack, &second).await.unwrap();
    assert!(allocated_ips(&network.store).is_empty());
    assert!(list(&stack, None).await.is_empty());
    assert!(mounts_under(stack.dir()).iter().all(|m| !m.contains("/pods/")));
}

#[tokio::test]
async fn a_host_network_pod_has_no_network_namespace_and_no_ip() {
    let stack = Stack::start().await.unwrap();
    let network = write_network(&stack, "host", 12, &[]);
    let mut config = pod_config("node-agent", "uid-agent");
    config.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                ipc: NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = run(&stack, config).await.unwrap();
    let pod = status(&stack, &id).await.unwrap().status.unwrap();
    assert_eq!(pod.state, PodSandboxState::SandboxReady as i32);
    assert!(pod.network.is_none());
    let options = pod.linux.unwrap().namespaces.unwrap().options.unwrap();
    assert_eq!(options.network, NamespaceMode::Node as i32);
    assert!(mounts_under(&pod_dir(&stack, &id)).is_empty(), "no pins and the host's /dev/shm");
    assert!(allocated_ips(&network.store).is_empty());
    stop(&stack, &id).await.unwrap();
    remove(&stack, &id).await.unwrap();
    assert!(!pod_dir(&stack, &id).exists());
}

#[tokio::test]
async fn a_duplicate_name_and_bad_requests_are_refused() {
    let stack = Stack::start().await.unwrap();
    let _network = write_network(&stack, "dup", 13, &[]);
    let id = run(&stack, pod_config("web", "uid-1")).await.unwrap();

    let err = run(&stack, pod_config("web", "uid-1")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains(&id), "{}", err.message());
    assert!(err.message().contains("web_default_uid-1_0"), "{}", err.message());
    // Another attempt is another pod.
    let mut next = pod_config("web", "uid-1");
    next.metadata.as_mut().unwrap().attempt = 1;
    let second = run(&stack, next).await.unwrap();

    let mut no_uid = pod_config("web", "");
    no_uid.metadata.as_mut().unwrap().uid.clear();
    let err = run(&stack, no_uid).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("config.metadata.uid"), "{}", err.message());

    let err = stack
        .runtime_client()
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(pod_config("x", "u")), runtime_handler: "kata".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("kata"), "{}", err.message());

    let config = stack.runtime_client().runtime_config(RuntimeConfigRequest {}).await.unwrap().into_inner();
    assert_eq!(config.linux.unwrap().cgroup_driver, CgroupDriver::Cgroupfs as i32);
    let node = stack.runtime_client().status(StatusRequest { verbose: false }).await.unwrap().into_inner();
    let handlers: Vec<_> = node.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(handlers, ["", "runc"]);

    remove(&stack, &id).await.unwrap();
    remove(&stack, &second).await.unwrap();
    // After removal the name is free again.
    let again = run(&stack, pod_config("web", "uid-1")).await.unwrap();
    remove(&stack, &again).await.unwrap();
}

#[tokio::test]
async fn sysctls_are_set_in_the_pods_own_namespaces_and_refused_elsewhere() {
    let stack = Stack::start().await.unwrap();
    let _network = write_network(&stack, "sysctl", 14, &[]);
    let host_value = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
    let mut config = pod_config("tuned", "uid-tuned");
    config.linux = Some(LinuxPodSandboxConfig {
        sysctls: [
            ("net.ipv4.ip_unprivileged_port_start".to_string(), "0".to_string()),
            ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
        ]
        .into(),
        ..Default::default()
    });
    let id = run(&stack, config).await.unwrap();
    let ns = pod_dir(&stack, &id).join("ns");
    let port_start = in_namespace("net", &ns.join("net"), &["cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start"]);
    assert_eq!(port_start.trim(), "0");
    assert_eq!(in_namespace("ipc", &ns.join("ipc"), &["cat", "/proc/sys/kernel/shm_rmid_forced"]).trim(), "1");
    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap(), host_value);
    remove(&stack, &id).await.unwrap();

    // Not namespaced, or in a namespace the pod shares with the host: refused, naming it.
    let mut node_wide = pod_config("bad", "uid-bad");
    node_wide.linux = Some(LinuxPodSandboxConfig {
        sysctls: [("kernel.pid_max".into(), "100000".into())].into(),
        ..Default::default()
    });
    let err = run(&stack, node_wide).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("kernel.pid_max"), "{}", err.message());

    let mut host_net = pod_config("bad", "uid-bad");
    host_net.linux = Some(LinuxPodSandboxConfig {
        sysctls: [("net.ipv4.ip_forward".into(), "1".into())].into(),
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption { network: NamespaceMode::Node as i32, ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err = run(&stack, host_net).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("net.ipv4.ip_forward"), "{}", err.message());
    assert!(list(&stack, None).await.is_empty());
}

/// `busybox nc` in the pod's network namespace answering one connection on `port` with `text`.
fn listen_in_pod(stack: &Stack, id: &str, port: u16, text: &str) -> std::process::Child {
    std::process::Command::new("nsenter")
        .arg(format!("--net={}", pod_dir(stack, id).join("ns/net").display()))
        .args(["busybox", "nc", "-l", "-p", &port.to_string(), "-e", "echo", text])
        .spawn()
        .unwrap()
}

/// What `address` answers on a fresh TCP connection from the host, retried until the listener is up.
async fn answer_from(address: &str) -> String {
    let address: std::net::SocketAddr = address.parse().unwrap();
    for _ in 0..50 {
        if let Ok(mut conn) = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut answer = String::new();
            let _ = conn.read_to_string(&mut answer);
            if !answer.is_empty() {
                return answer.trim().to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    String::new()
}

#[tokio::test]
async fn pods_reach_each_other_and_a_host_port_reaches_a_pod() {
    let stack = Stack::start().await.unwrap();
    let _network = write_network(&stack, "ports", 15, &[r#"{"type":"portmap","capabilities":{"portMappings":true}}"#]);
    let mut web = pod_config("web", "uid-web");
    web.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 8080,
        host_port: 31815,
        host_ip: String::new(),
    }];
    let web_id = run(&stack, web).await.unwrap();
    let client_id = run(&stack, pod_config("client", "uid-client")).await.unwrap();
    let web_ip = status(&stack, &web_id).await.unwrap().status.unwrap().network.unwrap().ip;

    // Pod to pod, by IP.
    let mut listener = listen_in_pod(&stack, &web_id, 8080, "hello, pod");
    let client_net = pod_dir(&stack, &client_id).join("ns/net");
    let mut answer = String::new();
    for _ in 0..50 {
        answer = in_namespace(
            "net",
            &client_net,
            &["busybox", "sh", "-c", &format!("sleep 1 | busybox nc {web_ip} 8080 || true")],
        );
        if !answer.is_empty() {
            break;
        }
    }
    let _ = listener.wait();
    assert_eq!(answer.trim(), "hello, pod");

    // The host port (portmap's DNAT), through the node's address on the pod network.
    let mut listener = listen_in_pod(&stack, &web_id, 8080, "hello, host port");
    assert_eq!(answer_from("10.201.15.1:31815").await, "hello, host port");
    let _ = listener.kill();
    let _ = listener.wait();
    let nat = std::process::Command::new("iptables-save").args(["-t", "nat"]).output().unwrap();
    assert!(String::from_utf8_lossy(&nat.stdout).contains(&web_id), "portmap's rules name the pod");

    // Stop removes portmap's rules.
    stop(&stack, &web_id).await.unwrap();
    let nat = std::process::Command::new("iptables-save").args(["-t", "nat"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&nat.stdout).contains(&web_id), "no rule left for the pod");
    remove(&stack, &web_id).await.unwrap();
    remove(&stack, &client_id).await.unwrap();
}

#[tokio::test]
async fn pods_started_at_once_get_their_own_ips_and_one_name_is_one_pod() {
    let stack = Stack::start().await.unwrap();
    let network = write_network(&stack, "many", 16, &[]);

    let runs = (0..10).map(|i| {
        let stack = &stack;
        async move { run(stack, pod_config(&format!("pod-{i}"), &format!("uid-{i}"))).await }
    });
    let ids: Vec<String> = futures::future::join_all(runs).await.into_iter().map(Result::unwrap).collect();
    let mut ips = vec![];
    for id in &ids {
        ips.push(status(&stack, id).await.unwrap().status.unwrap().network.unwrap().ip);
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 10, "{ips:?}");
    assert_eq!(allocated_ips(&network.store).len(), 10);

    // The same name five times at once: one pod, four refusals naming it.
    let same = (0..5).map(|_| run(&stack, pod_config("twin", "uid-twin")));
    let outcomes = futures::future::join_all(same).await;
    let made: Vec<&String> = outcomes.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(made.len(), 1, "{outcomes:?}");
    for err in outcomes.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(err.code(), Code::AlreadyExists);
        assert!(err.message().contains(made[0].as_str()), "{}", err.message());
    }

    let removals = ids.iter().chain(made).map(|id| remove(&stack, id));
    for outcome in futures::future::join_all(removals).await {
        outcome.unwrap();
    }
    assert!(allocated_ips(&network.store).is_empty());
    assert!(list(&stack, None).await.is_empty());
    assert!(mounts_under(stack.dir()).iter().all(|m| !m.contains("/pods/")));
}

#[tokio::test]
async fn the_pod_cidr_from_update_runtime_config_is_the_pods_ip_range() {
    let stack = Stack::start().await.unwrap();
    // A bridge network that takes its range from the runtime (the `ipRanges` capability).
    let network = write_network(&stack, "cidr", 17, &[]);
    std::fs::write(
        stack.dir().join("cni/10-test.conflist"),
        format!(
            r#"{{"cniVersion":"1.0.0","name":"test-cidr","plugins":[{{"type":"bridge","bridge":"crisp-cidr","isGateway":true,"capabilities":{{"ipRanges":true}},"ipam":{{"type":"host-local","dataDir":"{}"}}}}]}}"#,
            network.store.parent().unwrap().display()
        ),
    )
    .unwrap();
    let update = |cidr: &str| UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig { network_config: Some(NetworkConfig { pod_cidr: cidr.into() }) }),
    };
    let err = stack.runtime_client().update_runtime_config(update("10.201.17.0/33")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("10.201.17.0/33"), "{}", err.message());

    stack.runtime_client().update_runtime_config(update("10.201.17.0/24")).await.unwrap();
    let id = run(&stack, pod_config("web", "uid-web")).await.unwrap();
    let ip = status(&stack, &id).await.unwrap().status.unwrap().network.unwrap().ip;
    assert!(ip.starts_with("10.201.17."), "{ip}");
    remove(&stack, &id).await.unwrap();
    assert!(allocated_ips(&network.store).is_empty());
}
