//! Clients other than grpc-go on crisp's sockets. grpc-core (here Python's `grpcio`, as
//! deploy/install-deps.sh installs it) sends the socket path as the HTTP/2 `:authority` when
//! it dials a unix socket; crisp must serve it anyway, on the proxy's socket and on each
//! backend's, for every way a client spells the socket's address.

use crisp_proto::cri::{ListImagesResponse, VersionResponse};
use crisp_testkit::Stack;
use prost::Message;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Calls each `path` with the request given as hex, without serializers (bytes in, bytes out)
/// and without overriding the authority; prints one JSON list of outcomes.
const CLIENT: &str = r#"
import json, sys, grpc
target = sys.argv[1]
out = []
for arg in sys.argv[2:]:
    path, request = arg.split("=", 1)
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(path)
        try:
            response = call(bytes.fromhex(request), timeout=20)
            out.append({"path": path, "ok": True, "response": response.hex()})
        except grpc.RpcError as e:
            out.append({"path": path, "ok": False, "code": str(e.code()), "details": e.details()})
print(json.dumps(out))
"#;

fn python() -> PathBuf {
    std::env::var_os("CRISP_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/crisp/test-venv/bin/python3"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// Runs the Python client against `target` from `cwd`; returns each call's outcome.
async fn grpcio(target: &str, cwd: &Path, calls: &[(&str, Vec<u8>)]) -> Vec<serde_json::Value> {
    let python = python();
    assert!(
        python.exists(),
        "{} is missing: run deploy/install-deps.sh (or set CRISP_TEST_PYTHON to a python with grpcio)",
        python.display()
    );
    let mut command = tokio::process::Command::new(&python);
    command.arg("-c").arg(CLIENT).arg(target).current_dir(cwd);
    for (path, request) in calls {
        command.arg(format!("{path}={}", hex(request)));
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the Python client hung")
        .expect("cannot run the Python client");
    assert!(output.status.success(), "the Python client failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

fn response(outcome: &serde_json::Value, target: &str) -> Vec<u8> {
    assert_eq!(outcome["ok"], true, "{target}: {outcome}");
    unhex(outcome["response"].as_str().unwrap())
}

/// `/tmp/crisp-x/crisp.sock` with every `-` and `.` percent-encoded.
fn percent_encoded(path: &Path) -> String {
    path.display().to_string().replace('-', "%2D").replace('.', "%2E")
}

#[tokio::test]
async fn grpcio_calls_the_proxy_with_every_spelling_of_its_socket() {
    let stack = Stack::start().await.unwrap();
    let socket = stack.proxy_socket().to_path_buf();
    let dir = socket.parent().unwrap().to_path_buf();
    let name = socket.file_name().unwrap().to_str().unwrap().to_string();
    let version_request = crisp_proto::cri::VersionRequest { version: "v1".into() }.encode_to_vec();
    let calls =
        [("/runtime.v1.RuntimeService/Version", version_request), ("/runtime.v1.ImageService/ListImages", vec![])];
    let targets = [
        format!("unix://{}", socket.display()),
        format!("unix:{}", socket.display()),
        format!("unix://{}", percent_encoded(&socket)),
        format!("unix:{}", percent_encoded(&socket)),
        // Relative to the client's working directory.
        format!("unix:{name}"),
    ];
    for target in &targets {
        let outcomes = grpcio(target, &dir, &calls).await;
        let version = VersionResponse::decode(&response(&outcomes[0], target)[..]).unwrap();
        assert_eq!(version.runtime_name, "crisp", "{target}");
        assert_eq!(version.runtime_api_version, "v1", "{target}");
        let images = ListImagesResponse::decode(&response(&outcomes[1], target)[..]).unwrap();
        assert!(images.images.is_empty(), "{target}: {images:?}");
    }
}

#[tokio::test]
async fn grpcio_calls_each_backend_socket_directly() {
    let stack = Stack::start().await.unwrap();
    let dir = stack.dir().to_path_buf();
    let version_request = crisp_proto::cri::VersionRequest { version: "v1".into() }.encode_to_vec();
    let runtime = format!("unix://{}", dir.join("runtime.sock").display());
    let outcomes = grpcio(&runtime, &dir, &[("/runtime.v1.RuntimeService/Version", version_request)]).await;
    let version = VersionResponse::decode(&response(&outcomes[0], &runtime)[..]).unwrap();
    assert_eq!(version.runtime_name, "crisp");

    let image = format!("unix:{}", dir.join("image-0.sock").display());
    let outcomes = grpcio(&image, &dir, &[("/runtime.v1.ImageService/ListImages", vec![])]).await;
    ListImagesResponse::decode(&response(&outcomes[0], &image)[..]).unwrap();

    // The streaming server answers on its socket too: an empty Exec names what is missing.
    let streaming = format!("unix://{}", dir.join("streaming.sock").display());
    let outcomes = grpcio(&streaming, &dir, &[("/runtime.v1.RuntimeService/Exec", vec![])]).await;
    assert_eq!(outcomes[0]["code"], "StatusCode.INVALID_ARGUMENT", "{streaming}: {}", outcomes[0]);
}
