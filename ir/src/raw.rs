//! Protobuf fields the IR does not model, kept as their encoded bytes so that a
//! load/save round trip loses nothing (newer ONNX fields, vendor extensions, unknown fields).

use bytes::Bytes;

/// One encoded protobuf field: its number and its complete encoding (key included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawField {
    pub number: u32,
    pub encoded: Bytes,
}

/// The fields of a message that the IR keeps verbatim, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawFields(pub Vec<RawField>);

impl RawFields {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn numbers(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().map(|f| f.number)
    }
}
