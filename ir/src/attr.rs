//! Node attributes: typed values, in file order, with everything ONNX allows
//! (tensors, subgraphs, sparse tensors, type protos, lists of each).

use crate::{Graph, RawFields, SparseTensor, Tensor, Type};
use bytes::Bytes;

#[derive(Clone, Debug)]
pub enum AttrValue {
    Float(f32),
    Int(i64),
    String(Bytes),
    Tensor(Tensor),
    Graph(Box<Graph>),
    SparseTensor(SparseTensor),
    Type(Type),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<Bytes>),
    Tensors(Vec<Tensor>),
    Graphs(Vec<Graph>),
    SparseTensors(Vec<SparseTensor>),
    Types(Vec<Type>),
    /// No value: a reference attribute inside a function body (`ref_attr_name`), or an unset type.
    None,
}

impl AttrValue {
    /// The ONNX `AttributeType` code of this value.
    pub fn onnx_type(&self) -> i32 {
        match self {
            AttrValue::None => 0,
            AttrValue::Float(_) => 1,
            AttrValue::Int(_) => 2,
            AttrValue::String(_) => 3,
            AttrValue::Tensor(_) => 4,
            AttrValue::Graph(_) => 5,
            AttrValue::Floats(_) => 6,
            AttrValue::Ints(_) => 7,
            AttrValue::Strings(_) => 8,
            AttrValue::Tensors(_) => 9,
            AttrValue::Graphs(_) => 10,
            AttrValue::SparseTensor(_) => 11,
            AttrValue::SparseTensors(_) => 12,
            AttrValue::Type(_) => 13,
            AttrValue::Types(_) => 14,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            AttrValue::None => "none",
            AttrValue::Float(_) => "float",
            AttrValue::Int(_) => "int",
            AttrValue::String(_) => "string",
            AttrValue::Tensor(_) => "tensor",
            AttrValue::Graph(_) => "graph",
            AttrValue::Floats(_) => "floats",
            AttrValue::Ints(_) => "ints",
            AttrValue::Strings(_) => "strings",
            AttrValue::Tensors(_) => "tensors",
            AttrValue::Graphs(_) => "graphs",
            AttrValue::SparseTensor(_) => "sparse_tensor",
            AttrValue::SparseTensors(_) => "sparse_tensors",
            AttrValue::Type(_) => "type",
            AttrValue::Types(_) => "types",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Attribute {
    pub name: String,
    pub value: AttrValue,
    /// The `type` field as stored (absent in some old files).
    pub declared_type: Option<i32>,
    pub ref_attr_name: Option<String>,
    pub doc_string: Option<String>,
    /// Fields not modelled above (including value fields that disagree with `type`).
    pub extra: RawFields,
}

impl Attribute {
    pub fn new(name: impl Into<String>, value: AttrValue) -> Attribute {
        let declared_type = Some(value.onnx_type());
        Attribute {
            name: name.into(),
            value,
            declared_type,
            ref_attr_name: None,
            doc_string: None,
            extra: RawFields::default(),
        }
    }
    pub fn int(name: &str, v: i64) -> Attribute {
        Attribute::new(name, AttrValue::Int(v))
    }
    pub fn ints(name: &str, v: Vec<i64>) -> Attribute {
        Attribute::new(name, AttrValue::Ints(v))
    }
    pub fn float(name: &str, v: f32) -> Attribute {
        Attribute::new(name, AttrValue::Float(v))
    }
    pub fn string(name: &str, v: &str) -> Attribute {
        Attribute::new(name, AttrValue::String(Bytes::copy_from_slice(v.as_bytes())))
    }
}

/// Typed look-ups over a node's attribute list.
pub trait AttrList {
    fn attr(&self, name: &str) -> Option<&Attribute>;
    fn get_int(&self, name: &str) -> Option<i64> {
        match self.attr(name)?.value {
            AttrValue::Int(i) => Some(i),
            _ => None,
        }
    }
    fn get_float(&self, name: &str) -> Option<f32> {
        match self.attr(name)?.value {
            AttrValue::Float(f) => Some(f),
            _ => None,
        }
    }
    fn get_ints(&self, name: &str) -> Option<&[i64]> {
        match &self.attr(name)?.value {
            AttrValue::Ints(v) => Some(v),
            _ => None,
        }
    }
    fn get_floats(&self, name: &str) -> Option<&[f32]> {
        match &self.attr(name)?.value {
            AttrValue::Floats(v) => Some(v),
            _ => None,
        }
    }
    fn get_string(&self, name: &str) -> Option<&str> {
        match &self.attr(name)?.value {
            AttrValue::String(s) => std::str::from_utf8(s).ok(),
            _ => None,
        }
    }
    fn get_tensor(&self, name: &str) -> Option<&Tensor> {
        match &self.attr(name)?.value {
            AttrValue::Tensor(t) => Some(t),
            _ => None,
        }
    }
}

impl AttrList for [Attribute] {
    fn attr(&self, name: &str) -> Option<&Attribute> {
        self.iter().find(|a| a.name == name)
    }
}

impl AttrList for Vec<Attribute> {
    fn attr(&self, name: &str) -> Option<&Attribute> {
        self.iter().find(|a| a.name == name)
    }
}
