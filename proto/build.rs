//! Generates the CRI `runtime.v1` messages, clients and servers from the vendored
//! `vendor/cri-api/api.proto` (cri-api v0.36.3), which stays byte for byte as upstream ships it.
//!
//! - protoc 3.21 (Debian's) does not know the `debug_redact` field option (protobuf 22+), so the
//!   file is compiled from a copy in `OUT_DIR` without it. prost would ignore it anyway: the
//!   messages that carry it get no derived `Debug` here, and `src/redact.rs` writes one that
//!   hides those fields. The build fails if a message with such a field is not in
//!   [`REDACTED_MESSAGES`], so a newer api.proto cannot leak a secret into the logs unnoticed.
//! - Every server trait method has a default body answering `UNIMPLEMENTED`, with crisp's one
//!   wording (`"<Rpc> is not implemented by crisp yet"`, as `crisp_errors::unimplemented`), so a
//!   service implements only the RPCs it builds.

use std::fmt::Write as _;
use std::path::PathBuf;

const VENDORED: &str = "vendor/cri-api/api.proto";
/// crisp's own internal API between its services (no default stubs: whoever serves it serves it all).
const INTERNAL: &str = "internal/container_io.proto";
/// The option protoc 3.21 rejects, exactly as api.proto writes it.
const DEBUG_REDACT: &str = " [debug_redact = true]";
/// The messages with `debug_redact` fields; `src/redact.rs` implements `Debug` for each.
const REDACTED_MESSAGES: &[&str] = &["AuthConfig"];
/// The message tonic-build's default stubs answer with; replaced by crisp's wording.
const STUB_MESSAGE: &str = "\"Not yet implemented\"";

fn main() {
    println!("cargo:rerun-if-changed={VENDORED}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={INTERNAL}");

    let original = std::fs::read_to_string(VENDORED).unwrap_or_else(|e| panic!("reading {VENDORED}: {e}"));
    check_redacted_messages(&original);
    let stripped = original.replace(DEBUG_REDACT, "");
    assert!(!stripped.contains("debug_redact"), "{VENDORED} writes debug_redact in a form build.rs does not strip");

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let proto_dir = out_dir.join("cri-api");
    std::fs::create_dir_all(&proto_dir).expect("creating OUT_DIR/cri-api");
    let proto = proto_dir.join("api.proto");
    std::fs::write(&proto, stripped).expect("writing OUT_DIR/cri-api/api.proto");

    // The message options tonic_prost_build's `compile_protos` would set, on a prost config that
    // takes the service generator below.
    let mut config = tonic_prost_build::Config::new();
    config
        .type_attribute(".", "#[allow(clippy::all)]")
        .skip_debug(REDACTED_MESSAGES.iter().map(|m| format!(".runtime.v1.{m}")));
    let services = tonic_prost_build::configure().generate_default_stubs(true).service_generator();
    config.service_generator(Box::new(CrispStubs(services)));
    config.compile_protos(&[&proto], &[&proto_dir]).unwrap_or_else(|e| panic!("compiling {VENDORED}: {e}"));

    tonic_prost_build::configure()
        .compile_protos(&[INTERNAL], &["internal"])
        .unwrap_or_else(|e| panic!("compiling {INTERNAL}: {e}"));
}

/// Fails the build when a message has a `debug_redact` field but is not in [`REDACTED_MESSAGES`].
fn check_redacted_messages(proto: &str) {
    let mut message = None;
    for line in proto.lines() {
        if let Some(rest) = line.trim_start().strip_prefix("message ") {
            message = rest.split_whitespace().next();
        }
        if line.contains("debug_redact") {
            let name = message.unwrap_or("<none>");
            assert!(
                REDACTED_MESSAGES.contains(&name),
                "{VENDORED}: message {name} has a debug_redact field; add it to REDACTED_MESSAGES in build.rs \
                 and give it a redacting Debug in src/redact.rs"
            );
        }
    }
}

/// tonic's service generator, with each default stub's message naming its RPC.
struct CrispStubs(Box<dyn prost_build::ServiceGenerator>);

impl prost_build::ServiceGenerator for CrispStubs {
    fn generate(&mut self, service: prost_build::Service, buf: &mut String) {
        let methods: Vec<(String, String)> =
            service.methods.iter().map(|m| (m.name.clone(), m.proto_name.clone())).collect();
        let service_name = service.proto_name.clone();
        let mut generated = String::new();
        self.0.generate(service, &mut generated);

        // The trait lists the methods in the order of the .proto, one stub each; check that
        // each stub found belongs to the method expected before renaming it.
        let mut rest = generated.as_str();
        let mut rewritten = String::with_capacity(generated.len());
        for (name, proto_name) in &methods {
            let at = rest
                .find(STUB_MESSAGE)
                .unwrap_or_else(|| panic!("no default stub for {service_name}/{proto_name} in tonic's output"));
            let (before, after) = rest.split_at(at);
            let function = before.rfind("fn ").map(|f| &before[f + 3..]).unwrap_or_default();
            assert!(
                function.starts_with(&format!("{name}(")) || function.starts_with(&format!("{name} (")),
                "the default stub before fn {name} of {service_name} is not where build.rs expects it"
            );
            rewritten.push_str(before);
            write!(rewritten, "\"{proto_name} is not implemented by crisp yet\"").expect("writing to a String");
            rest = &after[STUB_MESSAGE.len()..];
        }
        assert!(!rest.contains(STUB_MESSAGE), "{service_name} has more default stubs than methods");
        rewritten.push_str(rest);
        buf.push_str(&rewritten);
    }

    fn finalize(&mut self, buf: &mut String) {
        self.0.finalize(buf);
    }

    fn finalize_package(&mut self, package: &str, buf: &mut String) {
        self.0.finalize_package(package, buf);
    }
}
