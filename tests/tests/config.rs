//! Configuration as an operator meets it: bad files and flags stop a service at start with a
//! message naming the field; `--help` lists every flag.

use std::process::Command;

fn binary(name: &str) -> std::path::PathBuf {
    crisp_testkit::bin_dir().unwrap().join(name)
}

fn run(name: &str, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(binary(name))
        .args(args)
        .env_remove("CRISP_CONFIG")
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

#[test]
fn every_service_rejects_a_bad_value_naming_the_field() {
    let file = config_file("[image]\nmax_concurrent_downloads = 0\n");
    for service in ["crisp-proxy", "crisp-runtime", "crisp-image", "crisp-streaming"] {
        let (code, _, stderr) = run(service, &["--config", file.path().to_str().unwrap()]);
        assert_eq!(code, 2, "{service}: {stderr}");
        assert!(stderr.contains("image.max_concurrent_downloads"), "{service}: {stderr}");
    }
}

#[test]
fn a_misspelt_field_is_named() {
    let file = config_file("[proxy]\nsokcet = \"/run/crisp/crisp.sock\"\n");
    let (code, _, stderr) = run("crisp-proxy", &["--config", file.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("sokcet"), "{stderr}");
}

#[test]
fn a_wrong_type_is_named() {
    let file = config_file("[proxy]\nhealth_check_interval = 5\n");
    let (code, _, stderr) = run("crisp-proxy", &["--config", file.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("health_check_interval"), "{stderr}");
}

#[test]
fn a_bad_flag_or_environment_value_is_named() {
    let (code, _, stderr) = run("crisp-runtime", &["--containerd-namespace", "has space"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("containerd.namespace"), "{stderr}");

    let output =
        Command::new(binary("crisp-proxy")).env("CRISP_PROXY_HEALTH_CHECK_INTERVAL", "often").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("health-check-interval") && stderr.contains("often"), "{stderr}");
}

#[test]
fn a_missing_config_file_named_on_the_command_line_is_an_error() {
    let (code, _, stderr) = run("crisp-image", &["--config", "/nonexistent/crisp.toml"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/nonexistent/crisp.toml"), "{stderr}");
}

#[test]
fn help_lists_the_flags() {
    let (code, stdout, _) = run("crisp-proxy", &["--help"]);
    assert_eq!(code, 0);
    for flag in ["--config", "--proxy-socket", "--proxy-image-endpoints", "--containerd-namespace", "--log-format"] {
        assert!(stdout.contains(flag), "--help lacks {flag}:\n{stdout}");
    }
}
