//! RemoveImage and the PullImage after it: the garbage collection follows a removal a moment
//! later, so a pull right after it reuses what the image left (one `HEAD`, no blob fetched);
//! the pull does not wait for a collection and runs beside it (and beside any other collection
//! containerd runs) without leaving an image short of a blob or a snapshot; a removed image's
//! blobs and snapshots still all go, by themselves within seconds, at once for ImageFsInfo.

mod image_support;

use crisp_proto::cri::ImageFsInfoRequest;
use crisp_testkit::Stack;
use crisp_testkit::images::{BuiltImage, Format, sha256};
use crisp_testkit::registry::Registry;
use image_support::fake::serve_image;
use image_support::*;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The image's top snapshot (its chain id) and the blobs of it that containerd holds.
fn stored(stack: &Stack, image: &BuiltImage) -> anyhow::Result<(bool, Vec<String>)> {
    let top = sha256(format!("{} {}", image.diff_ids[0], image.diff_ids[1]).as_bytes());
    let has_top = stack.ctr(&["snapshots", "ls"])?.contains(&top);
    let content = stack.ctr(&["content", "ls", "-q"])?;
    let blobs = image.layers.iter().chain([&image.config, &image.manifest]);
    Ok((has_top, blobs.filter(|b| content.contains(&b.digest)).map(|b| b.digest.clone()).collect()))
}

/// Synchronous garbage collections of the stack's containerd, one after the other, until
/// stopped: a lease created and deleted with `--sync`. Counts them.
struct Collections {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Collections {
    fn start(address: PathBuf, namespace: &str) -> Collections {
        let (stop, count) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let (stopped, counted, namespace) = (stop.clone(), count.clone(), namespace.to_string());
        let ctr = move |args: &[&str]| -> anyhow::Result<String> {
            let output =
                Command::new("ctr").arg("--address").arg(&address).args(["-n", &namespace]).args(args).output()?;
            anyhow::ensure!(output.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&output.stderr));
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        };
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                let created = ctr(&["leases", "create", "--expires", "1m"])?;
                let id = created.split_whitespace().next().unwrap_or_default().to_string();
                ctr(&["leases", "delete", "--sync", &id])?;
                counted.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        });
        Collections { stop, count, thread: Some(thread) }
    }

    /// Stops them; answers how many ran.
    fn stop(mut self) -> anyhow::Result<usize> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().map_err(|_| anyhow::anyhow!("the collections' thread panicked"))??;
        }
        Ok(self.count.load(Ordering::SeqCst))
    }
}

impl Drop for Collections {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn an_image_pulled_right_after_its_removal_is_whole_while_collections_run() -> anyhow::Result<()> {
    let registry = Registry::start().await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let image = busybox(Format::Oci)?;
    let name = registry.push("test/app", "v1", &image).await?;
    let collections = Collections::start(stack.containerd_address().to_path_buf(), stack.namespace());
    for round in 0..8 {
        assert_eq!(pull(&mut client, &name).await?, image.id(), "round {round}");
        remove(&mut client, &name).await?;
        assert!(status(&mut client, &name).await?.is_none(), "round {round}: removed");
        // Pulled at once, while this removal's collection (and the test's) may be running:
        // whether the pull found the blobs still there or fetched them again, the image is
        // whole when PullImage answers.
        assert_eq!(pull(&mut client, &name).await?, image.id(), "round {round}");
        let found = status(&mut client, &name).await?.expect("pulled");
        assert_eq!((found.id, found.size), (image.id(), image.size()), "round {round}");
        let (has_top, blobs) = stored(&stack, &image)?;
        assert!(has_top, "round {round}: the pulled image has no top snapshot");
        assert_eq!(blobs.len(), 4, "round {round}: blobs of the pulled image: {blobs:?}");
        remove(&mut client, &name).await?;
    }
    let ran = collections.stop()?;
    assert!(ran > 0, "no collection ran beside the pulls");

    // Removed for good: ImageFsInfo answers after the collection, and nothing of it is left.
    client.image_fs_info(ImageFsInfoRequest {}).await?;
    assert_eq!(stored(&stack, &image)?, (false, vec![]), "what the removed image left");
    assert!(ctr_images(&stack)?.is_empty());
    assert_no_leases(&stack).await?;
    Ok(())
}

#[tokio::test]
async fn a_pull_right_after_a_removal_reuses_what_the_image_left() -> anyhow::Result<()> {
    let image = busybox(Format::Oci)?;
    let registry = serve_image(&image).await?;
    let stack = stack().await?;
    let mut client = stack.image_client();
    let name = format!("{}/test/app:v1", registry.host());
    assert_eq!(pull(&mut client, &name).await?, image.id());
    // containerd's own GC scheduler may still collect between the removal and the pull (it
    // runs soon after any deletion): then the pull fetches it all again. Not every time.
    let mut reused = 0;
    for round in 0..5 {
        remove(&mut client, &name).await?;
        assert!(status(&mut client, &name).await?.is_none(), "round {round}: removed");
        let before = registry.requests().len();
        assert_eq!(pull(&mut client, &name).await?, image.id(), "round {round}");
        let calls: Vec<String> = registry.requests()[before..]
            .iter()
            .filter(|r| r.path != "/v2/")
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        if calls == vec!["HEAD /v2/test/app/manifests/v1".to_string()] {
            reused += 1;
        }
        let (has_top, blobs) = stored(&stack, &image)?;
        assert!(has_top && blobs.len() == 4, "round {round}: the pulled image is not whole: {blobs:?}");
    }
    assert!(reused > 0, "no pull right after a removal reused what the image left");

    // Removed for good and left alone: its blobs and snapshots go within seconds.
    remove(&mut client, &name).await?;
    let mut left = stored(&stack, &image)?;
    for _ in 0..50 {
        if left == (false, vec![]) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        left = stored(&stack, &image)?;
    }
    assert_eq!(left, (false, vec![]), "what the removed image left after 5 s");
    Ok(())
}
