//! The containerd layer against a real, private containerd: the lease guard's life, and the
//! answers the error mapping must recognise (a locked ingest, a digest mismatch on commit, an
//! object that is not there) as containerd really gives them.

use crisp_containerd::labels::gc;
use crisp_containerd::{Containerd, Ingest, Lease, LeaseId, Opened};
use crisp_testkit::ContainerdProcess;
use std::collections::HashMap;
use std::time::Duration;

struct Fixture {
    _dir: tempfile::TempDir,
    _process: ContainerdProcess,
    containerd: Containerd,
}

async fn containerd() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let process = ContainerdProcess::start(dir.path()).await.unwrap();
    let containerd = Containerd::connect(process.address(), "crisp-test").unwrap();
    Fixture { _dir: dir, _process: process, containerd }
}

const LABEL: &str = "crisp.io/test";

async fn leases(containerd: &Containerd, value: &str) -> Vec<LeaseId> {
    containerd.leases_labelled(LABEL, value).await.unwrap().into_iter().map(|l| l.id).collect()
}

async fn lease(containerd: &Containerd, value: &str) -> Lease {
    let labels = HashMap::from([(LABEL.to_string(), value.to_string())]);
    Lease::create(containerd, "crisp-test", labels, Duration::from_secs(3600)).await.unwrap()
}

#[tokio::test]
async fn a_lease_carries_its_labels_and_expiry_and_goes_when_dropped() {
    let f = containerd().await;
    let guard = lease(&f.containerd, "dropped").await;
    let listed = f.containerd.leases_labelled(LABEL, "dropped").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(&listed[0].id, guard.id());
    let expire = listed[0].labels.get(gc::EXPIRE).expect("an expiry label");
    let expire = humantime::parse_rfc3339(expire).unwrap();
    let left = expire.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600), "{left:?}");
    drop(guard);
    for _ in 0..100 {
        if leases(&f.containerd, "dropped").await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the dropped guard's lease is still there");
}

#[tokio::test]
async fn a_kept_lease_outlives_its_guard_and_delete_is_idempotent() {
    let f = containerd().await;
    let id = lease(&f.containerd, "kept").await.into_id();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(leases(&f.containerd, "kept").await, vec![id.clone()]);
    let adopted = Lease::adopt(&f.containerd, id.clone());
    adopted.delete().await.unwrap();
    assert!(leases(&f.containerd, "kept").await.is_empty());
    f.containerd.delete_lease(&id, false).await.unwrap();
}

#[tokio::test]
async fn containerd_answers_are_recognised() {
    let f = containerd().await;
    let guard = lease(&f.containerd, "ingest").await;
    let data = b"some bytes".to_vec();
    let wrong = format!("sha256:{}", "0".repeat(64));

    // A second writer of one ingest ref finds it locked.
    let Opened::Ingest(mut first) = Ingest::open(&f.containerd, guard.id(), "test-ref", 10, &wrong).await.unwrap()
    else {
        panic!("the first writer gets the ingest");
    };
    assert!(matches!(Ingest::open(&f.containerd, guard.id(), "test-ref", 10, &wrong).await.unwrap(), Opened::Locked));

    // Bytes that do not hash to the expected digest are refused on commit, and recognised.
    first.write(data).await.unwrap();
    let err = first.commit(HashMap::new()).await.unwrap_err();
    assert!(err.is_digest_mismatch(), "{err:?}");
    f.containerd.abort_ingest("test-ref").await;

    // Absent things are absent, not errors, where the layer says so.
    assert!(f.containerd.content_info(&wrong).await.unwrap().is_none());
    assert!(!f.containerd.snapshot_exists("overlayfs", "no-such-snapshot").await.unwrap());
    assert!(f.containerd.image_record("example.com/none:latest").await.unwrap().is_none());
    f.containerd.delete_image_record("example.com/none:latest", false).await.unwrap();
    f.containerd.remove_snapshot("overlayfs", guard.id(), "no-such-snapshot").await.unwrap();
}
