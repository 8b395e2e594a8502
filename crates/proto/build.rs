//! Compiles proto/ with protox (no protoc binary) and generates tonic code.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not compile time: a cached build script may have
    // been compiled in another checkout of the repository.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "tiermon/v1/types.proto",
        "tiermon/v1/push.proto",
        "tiermon/v1/query.proto",
        "prometheus/remote.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
