//! The CNI configuration directory is watched: a node started with no network configuration is
//! not NetworkReady, becomes NetworkReady within a second or two of a conflist being written,
//! with no restart, and a pod then runs on that network.

mod sandbox_support;

use crisp_proto::cri::*;
use crisp_testkit::Stack;
use sandbox_support::*;
use std::time::{Duration, Instant};

async fn network_ready(stack: &Stack) -> RuntimeCondition {
    let status = stack.runtime_client().status(StatusRequest { verbose: false }).await.unwrap().into_inner();
    status.status.unwrap().conditions.into_iter().find(|c| c.r#type == "NetworkReady").unwrap()
}

#[tokio::test]
async fn a_network_configuration_written_later_makes_the_node_network_ready_and_pods_run_on_it() {
    let stack = Stack::start().await.unwrap();
    let cni = stack.dir().join("cni");
    for entry in std::fs::read_dir(&cni).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let condition = network_ready(&stack).await;
    assert!(!condition.status, "{condition:?}");
    assert_eq!(condition.reason, "NetworkPluginNotReady");
    let err = run(&stack, pod_config("early", "uid-early")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    let _network = write_network(&stack, "watch", 24, &[]);
    let start = Instant::now();
    while !network_ready(&stack).await.status {
        assert!(start.elapsed() < Duration::from_secs(2), "not NetworkReady 2s after the conflist was written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let id = run(&stack, pod_config("web", "uid-watch")).await.unwrap();
    let ip = status(&stack, &id).await.unwrap().status.unwrap().network.unwrap().ip;
    assert!(ip.starts_with("10.201.24."), "{ip}");

    // The configuration removed: not ready again, the running pod untouched.
    std::fs::remove_file(cni.join("10-test.conflist")).unwrap();
    let start = Instant::now();
    while network_ready(&stack).await.status {
        assert!(start.elapsed() < Duration::from_secs(2), "still NetworkReady 2s after the conflist was removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status(&stack, &id).await.unwrap().status.unwrap().state, PodSandboxState::SandboxReady as i32);
    stop(&stack, &id).await.unwrap();
    remove(&stack, &id).await.unwrap();
}
