//! Backends: lower optc's IR to model files.
//!
//! [`onnx`] writes ONNX protobuf. Writes are streamed (tensor bytes go from the input's memory
//! map to the output file without an intermediate buffer), atomic (a temporary file renamed into
//! place, never writing through a link) and deterministic (the same IR gives the same bytes).

pub mod onnx;

pub use onnx::{ExternalData, SaveError, SaveOptions, SaveReport, save, to_bytes, write_atomic};
