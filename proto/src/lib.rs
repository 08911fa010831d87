//! ONNX protobuf messages, generated at build time from `proto/onnx-ml.proto` (onnx 1.22),
//! and the wire-format helpers the frontend and backend share to keep fields the IR does not model.

#[allow(clippy::all, missing_docs)]
pub mod onnx {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub mod wire;

pub use prost;
pub use prost::Message;
