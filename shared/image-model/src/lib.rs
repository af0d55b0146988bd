//! crisp's image model, shared by every service that deals with images: what an image is
//! called, what it is made of, and how to find it in containerd.
//!
//! - [`reference`]: image references and their normalisation as the kubelet and containerd
//!   do it (`busybox` → `docker.io/library/busybox:latest`); ids told from names.
//! - [`digest`]: [`Digest`], [`ChainId`], [`ImageId`] as types, and containerd's chain ids.
//! - [`oci`]: the OCI image types from `oci-spec`, the media types crisp reads, the platform
//!   choice, the image `USER`.
//! - [`store`]: the read side of the image store: every image, or the one a name (id, tag,
//!   digest, unique id prefix) names, with its config, chain ids and user.
//!
//! Writing images (pulling, records, unpacking) stays with the image service.

pub mod digest;
pub mod oci;
pub mod reference;
pub mod store;

pub use crisp_containerd::LeaseId;
pub use digest::{ChainId, Digest, DigestError, ImageId, chain_ids};
pub use reference::{ImageName, Reference, ReferenceError};
pub use store::{Details, Image, ImageStore, StoreError};
