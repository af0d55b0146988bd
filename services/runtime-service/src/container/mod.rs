//! Containers: CreateContainer, StartContainer, StopContainer, RemoveContainer, ListContainers,
//! ContainerStatus, and the RPCs on a container's process, stats and logs.
//!
//! A container is a containerd container record (`crisp.io/kind=container`, labelled with its
//! pod, name, attempt and state) whose OCI spec is built by [`spec`] from the CRI request and
//! the image, a snapshot of the image's top layer, and a containerd task while it runs.

pub mod metrics;
pub mod select;
pub mod spec;
pub mod stats;
pub mod update;
