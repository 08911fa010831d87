//! optc's graph IR.
//!
//! A [`Model`] holds a [`Graph`] of [`Node`]s (typed [`Op`]s with ordered [`Attribute`]s) and
//! [`Value`]s (with a [`Type`] of dtype and symbolic shape). Tensor data is shared, never
//! copied, with the file it came from. The IR keeps every field of the file it was read from,
//! modelled or not ([`RawFields`]), so a model that goes through optc unchanged comes out
//! byte-for-byte the same. [`verify`] checks the invariants passes must keep; [`text`] prints
//! the IR for people and golden tests.

mod attr;
pub mod builder;
mod dtype;
mod error;
mod graph;
pub mod infer;
pub mod mem;
mod model;
mod op;
pub mod quant;
mod raw;
pub mod symexpr;
mod tensor;
pub mod text;
mod types;
pub mod verify;

pub use attr::{AttrList, AttrValue, Attribute};
pub use dtype::DType;
pub use error::IrError;
pub use graph::{Decl, Graph, Init, Node, NodeId, NodeSpec, Use, Value, ValueId};
pub use model::{MetaProp, Model, OpsetImport};
pub use op::{AttrKind, Op};
pub use raw::{RawField, RawFields};
pub use tensor::{ExternalRef, SparseTensor, Tensor, TensorData, TypedData, transpose_elems};
pub use types::{Dim, DimValue, Shape, Type, TypeKind};

pub use bytes::Bytes;
