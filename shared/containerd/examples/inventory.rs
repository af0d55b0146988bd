//! What crisp sees in a containerd namespace, through the containerd layer alone:
//!
//! ```sh
//! cargo run -p crisp-containerd --example inventory -- /run/containerd/containerd.sock crisp
//! ```
//!
//! prints containerd's version, the image records, the leases, and what the content store
//! and the overlayfs snapshotter use.

use crisp_containerd::Containerd;
use std::path::PathBuf;
use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let address = PathBuf::from(args.next().unwrap_or_else(|| "/run/containerd/containerd.sock".into()));
    let namespace = args.next().unwrap_or_else(|| "crisp".into());
    let containerd = Containerd::connect(&address, &namespace)?;
    let version = containerd.wait_ready(Duration::from_secs(5)).await?;
    println!("containerd {} ({}) at {}, namespace {namespace}", version.version, version.revision, address.display());
    for record in containerd.image_records().await? {
        let target = record.target.map(|t| t.digest).unwrap_or_default();
        println!("image   {} -> {target}", record.name);
    }
    let request = crisp_containerd::containerd_client::services::v1::ListRequest::default();
    for lease in containerd.leases().list(request).await?.into_inner().leases {
        println!("lease   {} {:?}", lease.id, lease.labels);
    }
    let (bytes, blobs) = containerd.content_usage().await?;
    let root = containerd.plugin_root("io.containerd.content.v1", "content").await?;
    println!("content {blobs} blobs, {bytes} bytes, in {root}");
    let (bytes, inodes) = containerd.snapshot_usage("overlayfs").await?;
    let root = containerd.plugin_root("io.containerd.snapshotter.v1", "overlayfs").await?;
    println!("overlayfs {bytes} bytes, {inodes} inodes, in {root}");
    Ok(())
}
