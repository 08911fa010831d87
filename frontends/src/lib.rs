//! Frontends: read a model file and lift it into optc's IR.
//!
//! [`onnx`] reads ONNX protobuf files of any size without copying tensor data: the file is
//! memory-mapped, `raw_data` fields become slices of the map and external data files are mapped
//! too (after the path checks in [`onnx::external`]).

pub mod gguf;
pub mod llama;
pub mod onnx;
pub mod tokenizer;

pub use onnx::{LoadError, LoadOptions, load, load_bytes, load_tensor};
