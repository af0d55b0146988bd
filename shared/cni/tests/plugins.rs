//! ADD, CHECK and DEL of a real network (Debian's bridge and host-local plugins in
//! /usr/lib/cni) in a network namespace pinned by util-linux `unshare --net=FILE`. Needs root.

use crisp_cni::{Attachment, NetworkConfig, result_ips};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A pinned network namespace and the test's bridge, both removed when dropped.
struct Netns {
    pin: PathBuf,
    bridge: &'static str,
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.pin).status();
        let _ = Command::new("ip").args(["link", "del", self.bridge]).output();
    }
}

fn in_netns(pin: &Path, args: &[&str]) -> String {
    let out = Command::new("nsenter").arg(format!("--net={}", pin.display())).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn add_check_and_del_attach_and_free_a_pod_on_a_bridge() {
    let dir = tempfile::tempdir().unwrap();
    let pin = dir.path().join("net");
    std::fs::write(&pin, "").unwrap();
    assert!(Command::new("unshare").arg(format!("--net={}", pin.display())).arg("true").status().unwrap().success());
    let netns = Netns { pin: pin.clone(), bridge: "crisp-cnit" };

    let store = dir.path().join("ipam");
    let conf = dir.path().join("10-test.conflist");
    std::fs::write(
        &conf,
        format!(
            r#"{{"cniVersion":"1.0.0","name":"cnit","plugins":[{{"type":"bridge","bridge":"{}","isGateway":true,"ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.201.31.0/24"}}]]}}}}]}}"#,
            netns.bridge,
            store.display()
        ),
    )
    .unwrap();
    let network = NetworkConfig::from_file(&conf).unwrap();
    let bins = vec![PathBuf::from("/usr/lib/cni")];
    let attachment = Attachment {
        container_id: "cni-test-pod".into(),
        netns: pin.clone(),
        ifname: "eth0".into(),
        args: vec![("K8S_POD_NAME".into(), "web".into())],
        runtime_config: Default::default(),
    };

    let result = network.add(&bins, &attachment).await.unwrap();
    let ips = result_ips(&result);
    assert_eq!(ips.len(), 1, "{result}");
    assert!(ips[0].starts_with("10.201.31."), "{ips:?}");
    assert!(in_netns(&pin, &["ip", "-4", "addr", "show", "eth0"]).contains(&ips[0]));
    assert!(store.join("cnit").join(&ips[0]).exists(), "host-local holds the IP");

    network.check(&bins, &attachment, &result).await.unwrap();
    Command::new("nsenter")
        .arg(format!("--net={}", pin.display()))
        .args(["ip", "link", "del", "eth0"])
        .status()
        .unwrap();
    let err = network.check(&bins, &attachment, &result).await.unwrap_err().to_string();
    assert!(err.contains("`bridge`") && err.contains("CHECK"), "{err}");

    network.del(&bins, &attachment, Some(&result)).await.unwrap();
    assert!(!store.join("cnit").join(&ips[0]).exists(), "DEL freed the IP");
    network.del(&bins, &attachment, Some(&result)).await.unwrap();
}

#[tokio::test]
async fn a_missing_plugin_is_named() {
    let network = crisp_cni::single_plugin_network("x", "1.0.0", "no-such-plugin");
    let attachment = Attachment {
        container_id: "c".into(),
        netns: "/nonexistent".into(),
        ifname: "eth0".into(),
        args: vec![],
        runtime_config: Default::default(),
    };
    let err = network.add(&[PathBuf::from("/usr/lib/cni")], &attachment).await.unwrap_err().to_string();
    assert!(err.contains("no-such-plugin"), "{err}");
}
