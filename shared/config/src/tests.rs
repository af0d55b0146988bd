use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

#[test]
fn defaults_are_valid() {
    Config::default().validate().unwrap();
}

#[test]
fn file_fields_override_defaults_and_keep_the_rest() {
    let c = Config::from_toml(
        "[containerd]\nnamespace = \"other\"\n[image]\nmax_concurrent_downloads = 8\npull_progress_timeout = \"90s\"\n",
    )
    .unwrap();
    assert_eq!(c.containerd.namespace, "other");
    assert_eq!(c.image.max_concurrent_downloads, 8);
    assert_eq!(c.image.pull_progress_timeout, std::time::Duration::from_secs(90));
    assert_eq!(c.proxy, ProxyConfig::default());
}

#[test]
fn an_unknown_field_is_named() {
    let err = Config::from_toml("[image]\nmax_concurent_downloads = 8\n").unwrap_err();
    assert!(err.contains("max_concurent_downloads"), "{err}");
}

#[test]
fn a_wrong_type_is_named() {
    let err = Config::from_toml("[image]\nmax_concurrent_downloads = \"many\"\n").unwrap_err();
    assert!(err.contains("max_concurrent_downloads"), "{err}");
}

#[test]
fn a_bad_value_is_named() {
    let mut c = Config::default();
    c.image.max_concurrent_downloads = 0;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("image.max_concurrent_downloads"), "{err}");

    let mut c = Config::default();
    c.image.max_downloads_in_flight = Some(0);
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("image.max_downloads_in_flight"), "{err}");

    let mut c = Config::default();
    c.proxy.socket_mode = "rw-rw----".into();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("proxy.socket_mode"), "{err}");

    let mut c = Config::default();
    c.containerd.namespace = "no spaces".into();
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("containerd.namespace"), "{err}");

    let mut c = Config::default();
    c.runtime.max_container_log_line_size = 0;
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("runtime.max_container_log_line_size"), "{err}");
}

#[test]
fn the_log_line_limit_is_16_kib_by_default_and_minus_one_lifts_it() {
    let mut c = Config::default();
    assert_eq!(c.runtime.max_log_line_bytes(), Some(16 * 1024));
    c.runtime.max_container_log_line_size = -1;
    c.validate().unwrap();
    assert_eq!(c.runtime.max_log_line_bytes(), None);
}

#[test]
fn flags_override_the_file() {
    let dir = std::env::temp_dir().join(format!("crisp-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(&file, "[proxy]\nsocket = \"/run/a.sock\"\nimage_endpoints = [\"/run/i1.sock\"]\n").unwrap();
    let cli = Cli::try_parse_from([
        "crisp",
        "--config",
        file.to_str().unwrap(),
        "--proxy-image-endpoints",
        "/run/i1.sock,/run/i2.sock",
        "--log-format",
        "json",
    ])
    .unwrap();
    let c = Config::load(&cli.config).unwrap();
    assert_eq!(c.proxy.socket, std::path::PathBuf::from("/run/a.sock"));
    assert_eq!(c.proxy.image_endpoints.len(), 2);
    assert_eq!(c.telemetry.log_format, LogFormat::Json);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_missing_named_file_is_an_error() {
    let cli = Cli::try_parse_from(["crisp", "--config", "/nonexistent/crisp.toml"]).unwrap();
    let err = Config::load(&cli.config).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/crisp.toml"), "{err}");
}

#[test]
fn the_example_config_is_the_defaults() {
    let example = include_str!("../../../deploy/config.example.toml");
    let parsed = Config::from_toml(example).unwrap();
    assert_eq!(parsed, Config::default());
}

#[test]
fn a_config_written_as_toml_reads_back_the_same() {
    // The test kit writes its services' config this way.
    let mut config = Config::default();
    config.proxy.image_socket = Some("/run/crisp/crisp-image.sock".into());
    config.proxy.health_check_interval = std::time::Duration::from_millis(200);
    config.image.max_concurrent_downloads = 7;
    let written = toml::to_string(&config).unwrap();
    assert_eq!(Config::from_toml(&written).unwrap(), config);
}

#[test]
fn metrics_addresses_are_off_by_default_and_a_port_alone_is_loopback() {
    let c = Config::default();
    assert_eq!(
        (c.proxy.metrics_address, c.image.metrics_address, c.runtime.metrics_address, c.streaming.metrics_address),
        (None, None, None, None)
    );
    let c = Config::from_toml(
        "[proxy]\nmetrics_address = \"9310\"\n[image]\nmetrics_address = \":9311\"\n[runtime]\nmetrics_address = \"0.0.0.0:9312\"\n[streaming]\nmetrics_address = \"[::1]:9313\"\n",
    )
    .unwrap();
    let address = |a: Option<MetricsAddress>| a.map(|a| a.0.to_string());
    assert_eq!(address(c.proxy.metrics_address).as_deref(), Some("127.0.0.1:9310"));
    assert_eq!(address(c.image.metrics_address).as_deref(), Some("127.0.0.1:9311"));
    assert_eq!(address(c.runtime.metrics_address).as_deref(), Some("0.0.0.0:9312"));
    assert_eq!(address(c.streaming.metrics_address).as_deref(), Some("[::1]:9313"));

    let err = Config::from_toml("[proxy]\nmetrics_address = \"localhost:http\"\n").unwrap_err();
    assert!(err.contains("metrics_address") && err.contains("localhost:http"), "{err}");
    let cli = Cli::try_parse_from(["crisp", "--image-metrics-address", "9400"]).unwrap();
    let mut c = Config::default();
    cli.config.apply(&mut c);
    assert_eq!(address(c.image.metrics_address).as_deref(), Some("127.0.0.1:9400"));
    assert!(Cli::try_parse_from(["crisp", "--proxy-metrics-address", "nowhere"]).is_err());
}
