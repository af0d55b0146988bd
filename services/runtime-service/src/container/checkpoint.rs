//! CheckpointContainer: "checkpoints a container". containerd checkpoints with CRIU; where the
//! `criu` binary is not on PATH the call is FAILED_PRECONDITION naming it, before anything is
//! touched. With CRIU installed crisp does not checkpoint yet: UNIMPLEMENTED says so.

use super::{ContainerError, Containers, record};

fn criu_on_path() -> bool {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join("criu").is_file()))
        .unwrap_or(false)
}

pub async fn checkpoint(containers: &Containers, id: &str) -> Result<(), ContainerError> {
    let stored =
        record::find(&containers.containerd, id).await?.ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
    if !criu_on_path() {
        return Err(ContainerError::Unsupported(format!(
            "checkpointing container `{}` needs CRIU: `criu` is not installed (not on PATH)",
            stored.id
        )));
    }
    Err(ContainerError::Unimplemented(format!("checkpointing container `{}` with CRIU is not built yet", stored.id)))
}
