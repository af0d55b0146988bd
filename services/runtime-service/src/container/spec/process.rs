//! The container's process: its arguments (the kubelet's command/args over the image's
//! entrypoint/cmd, as Docker's commit rules merge them), its environment (defaults, `HOSTNAME`,
//! the image's, then the request's, a later key replacing an earlier one in place), its working
//! directory and the signal that stops it.

use super::SpecError;
use crisp_proto::cri::{ContainerConfig, Signal};
use oci_spec::image::Config as ImageConfig;

/// The `PATH` every container starts with before the image's and the request's environment.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process's argv: the request's command (else the image's entrypoint) followed by the
/// request's args (else, when the request gives no command, the image's cmd).
pub fn args(config: &ContainerConfig, image: Option<&ImageConfig>) -> Result<Vec<String>, SpecError> {
    let mut command = config.command.clone();
    let mut args = config.args.clone();
    if command.is_empty() {
        if args.is_empty() {
            args = image.and_then(|i| i.cmd().clone()).unwrap_or_default();
        }
        let entrypoint = image.and_then(|i| i.entrypoint().clone()).unwrap_or_default();
        // `ENTRYPOINT [""]` in a Dockerfile clears the entrypoint.
        if !(entrypoint.len() == 1 && entrypoint[0].is_empty()) {
            command = entrypoint;
        }
    }
    command.extend(args);
    if command.is_empty() {
        return Err(SpecError::Invalid {
            field: "command".into(),
            reason: "is empty and the image has neither an entrypoint nor a cmd".into(),
        });
    }
    Ok(command)
}

/// Sets `KEY=value` in `env`, replacing an entry with the same key where it is.
fn set(env: &mut Vec<String>, entry: String) {
    let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k).to_string();
    match env.iter_mut().find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key) {
        Some(existing) => *existing = entry,
        None => env.push(entry),
    }
}

/// The environment: `PATH`, `HOSTNAME=<hostname>`, the image's, then the request's (values are
/// bytes in the CRI; they are written as text, invalid UTF-8 replaced as containerd's JSON does).
pub fn env(config: &ContainerConfig, image: Option<&ImageConfig>, hostname: &str) -> Vec<String> {
    let mut env = vec![DEFAULT_PATH.to_string()];
    set(&mut env, format!("HOSTNAME={hostname}"));
    for entry in image.and_then(|i| i.env().as_ref()).into_iter().flatten() {
        set(&mut env, entry.clone());
    }
    for kv in &config.envs {
        set(&mut env, format!("{}={}", kv.key, String::from_utf8_lossy(&kv.value)));
    }
    env
}

/// The working directory: the request's, else the image's, else `/`.
pub fn cwd(config: &ContainerConfig, image: Option<&ImageConfig>) -> String {
    if !config.working_dir.is_empty() {
        return config.working_dir.clone();
    }
    image.and_then(|i| i.working_dir().clone()).filter(|d| !d.is_empty()).unwrap_or_else(|| "/".into())
}

/// A signal named as in a Dockerfile's STOPSIGNAL (`SIGTERM`, `TERM`, `15`, `SIGRTMIN+3`).
pub fn parse_signal(name: &str) -> Option<i32> {
    let name = name.trim();
    if let Ok(number) = name.parse::<i32>() {
        return (1..=64).contains(&number).then_some(number);
    }
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(rest) = bare.strip_prefix("RTMIN") {
        let offset = match rest {
            "" => 0,
            _ => rest.strip_prefix('+')?.parse::<i32>().ok()?,
        };
        // SIGRTMIN as glibc reports it (34); the kernel's 32 and 33 are glibc's own.
        return (0..=30).contains(&offset).then_some(34 + offset);
    }
    if let Some(rest) = bare.strip_prefix("RTMAX") {
        let offset = match rest {
            "" => 0,
            _ => rest.strip_prefix('-')?.parse::<i32>().ok()?,
        };
        return (0..=30).contains(&offset).then_some(64 - offset);
    }
    let bare = match bare {
        "CLD" => "CHLD",
        "IOT" => "ABRT",
        "POLL" => "IO",
        other => other,
    };
    nix::sys::signal::Signal::iterator().find(|s| s.as_str().strip_prefix("SIG") == Some(bare)).map(|s| s as i32)
}

/// The first signal StopContainer sends: the request's, else the image's STOPSIGNAL, else SIGTERM.
pub fn stop_signal(config: &ContainerConfig, image: Option<&ImageConfig>) -> Result<i32, SpecError> {
    let requested = Signal::try_from(config.stop_signal).unwrap_or(Signal::RuntimeDefault);
    if requested != Signal::RuntimeDefault {
        let name = requested.as_str_name().replace("PLUS", "+");
        return parse_signal(&name).ok_or_else(|| SpecError::Invalid {
            field: "stop_signal".into(),
            reason: format!("{name} is not a signal of this node"),
        });
    }
    match image.and_then(|i| i.stop_signal().as_deref()).filter(|s| !s.is_empty()) {
        Some(name) => parse_signal(name).ok_or_else(|| SpecError::Invalid {
            field: "image.config.StopSignal".into(),
            reason: format!("{name:?} is not a signal"),
        }),
        None => Ok(nix::sys::signal::Signal::SIGTERM as i32),
    }
}
