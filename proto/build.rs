// Compiles onnx-ml.proto with protox (pure Rust), so building optc needs no `protoc`.
// Every `bytes` field is `bytes::Bytes`, so tensor data decoded from a memory map is never copied.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx-ml.proto");
    let fds = protox::compile(["onnx-ml.proto"], ["proto"])?;
    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    config.compile_fds(fds)?;
    Ok(())
}
