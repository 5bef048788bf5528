//! Compiles meshca's .proto files with protox (pure Rust) and writes the tonic/prost code and
//! the descriptor set (for gRPC reflection) into proto/src/gen.

use std::path::Path;

fn main() {
    let proto_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_dir = proto_dir.join("src/gen");
    let files: Vec<String> = std::env::args().skip(1).collect();
    let files = if files.is_empty() {
        vec![
            "istio/v1/auth/ca.proto".to_string(),
            "meshca/v1/trust_bundle.proto".to_string(),
            "meshca/ca/v1/ca.proto".to_string(),
            "spiffe/workload/workload.proto".to_string(),
        ]
    } else {
        files
    };
    let files: Vec<String> = files
        .into_iter()
        .filter(|f| proto_dir.join(f).exists())
        .collect();
    let descriptors = protox::compile(&files, [&proto_dir]).expect("protos compile");
    let descriptor_bytes = prost::Message::encode_to_vec(&descriptors);
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(out_dir.join("descriptor.bin"), &descriptor_bytes).unwrap();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&out_dir)
        .compile_well_known_types(false)
        .compile_fds(descriptors)
        .expect("code generation");
    // prost names the output of a package-less file `_.rs`; give it a real name.
    let unnamed = out_dir.join("_.rs");
    if unnamed.exists() {
        std::fs::rename(&unnamed, out_dir.join("spiffe.workload.rs")).unwrap();
    }
    println!("wrote {}", out_dir.display());
}
