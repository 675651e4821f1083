// Compiles proto/git_s3.proto with protox (a pure-Rust protobuf compiler), so a
// fresh machine needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=git_s3.proto");
    let fds = protox::compile(["git_s3.proto"], ["."])?;
    tonic_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
