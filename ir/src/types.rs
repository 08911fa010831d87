//! Value types: tensors with symbolic shapes, and the other ONNX type constructors
//! (sequence, map, optional, sparse tensor, opaque).

use crate::DType;
use std::fmt;

/// One dimension of a shape: a known size, a named symbol (`batch`, `seq`), or unknown.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DimValue {
    Known(i64),
    Sym(String),
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Dim {
    pub value: DimValue,
    /// ONNX dimension denotation (`DATA_BATCH`, ...), kept for a lossless round trip.
    pub denotation: Option<String>,
}

impl Dim {
    pub fn known(n: i64) -> Dim {
        Dim { value: DimValue::Known(n), denotation: None }
    }
    pub fn sym(s: impl Into<String>) -> Dim {
        Dim { value: DimValue::Sym(s.into()), denotation: None }
    }
    pub fn unknown() -> Dim {
        Dim { value: DimValue::Unknown, denotation: None }
    }
    pub fn as_known(&self) -> Option<i64> {
        match self.value {
            DimValue::Known(n) => Some(n),
            _ => None,
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            DimValue::Known(n) => write!(f, "{n}"),
            DimValue::Sym(s) => write!(f, "{s}"),
            DimValue::Unknown => write!(f, "?"),
        }
    }
}

/// A tensor shape; `None` at the use site means the rank itself is unknown.
pub type Shape = Vec<Dim>;

/// The type of a value, mirroring ONNX `TypeProto`.
#[derive(Clone, Debug, PartialEq)]
pub struct Type {
    pub kind: TypeKind,
    pub denotation: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TypeKind {
    /// `elem` is `None` when the file leaves it unset; `shape` is `None` when the rank is unknown.
    Tensor {
        elem: Option<DType>,
        elem_code: Option<i32>,
        shape: Option<Shape>,
    },
    SparseTensor {
        elem: Option<DType>,
        elem_code: Option<i32>,
        shape: Option<Shape>,
    },
    Sequence(Option<Box<Type>>),
    Map {
        key: Option<i32>,
        value: Option<Box<Type>>,
    },
    Optional(Option<Box<Type>>),
    Opaque {
        domain: Option<String>,
        name: Option<String>,
    },
    /// A `TypeProto` with no constructor set.
    Unset,
}

impl Type {
    pub fn tensor(elem: DType, shape: Shape) -> Type {
        Type {
            kind: TypeKind::Tensor { elem: Some(elem), elem_code: Some(elem.onnx_code()), shape: Some(shape) },
            denotation: None,
        }
    }

    pub fn elem(&self) -> Option<DType> {
        match &self.kind {
            TypeKind::Tensor { elem, .. } | TypeKind::SparseTensor { elem, .. } => *elem,
            _ => None,
        }
    }

    pub fn shape(&self) -> Option<&Shape> {
        match &self.kind {
            TypeKind::Tensor { shape, .. } | TypeKind::SparseTensor { shape, .. } => shape.as_ref(),
            _ => None,
        }
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn shape(f: &mut fmt::Formatter<'_>, s: &Option<Shape>) -> fmt::Result {
            match s {
                None => write!(f, "[*]"),
                Some(dims) => {
                    write!(f, "[")?;
                    for (i, d) in dims.iter().enumerate() {
                        if i > 0 {
                            write!(f, ",")?;
                        }
                        write!(f, "{d}")?;
                    }
                    write!(f, "]")
                }
            }
        }
        fn elem(e: &Option<DType>, code: &Option<i32>) -> String {
            match (e, code) {
                (Some(d), _) => d.name().to_string(),
                (None, Some(c)) => format!("dtype{c}"),
                (None, None) => "?".into(),
            }
        }
        match &self.kind {
            TypeKind::Tensor { elem: e, elem_code, shape: s } => {
                write!(f, "{}", elem(e, elem_code))?;
                shape(f, s)
            }
            TypeKind::SparseTensor { elem: e, elem_code, shape: s } => {
                write!(f, "sparse<{}", elem(e, elem_code))?;
                shape(f, s)?;
                write!(f, ">")
            }
            TypeKind::Sequence(t) => match t {
                Some(t) => write!(f, "seq<{t}>"),
                None => write!(f, "seq<?>"),
            },
            TypeKind::Map { key, value } => {
                let k = key.and_then(DType::from_onnx).map(|d| d.name().to_string()).unwrap_or("?".into());
                match value {
                    Some(v) => write!(f, "map<{k},{v}>"),
                    None => write!(f, "map<{k},?>"),
                }
            }
            TypeKind::Optional(t) => match t {
                Some(t) => write!(f, "optional<{t}>"),
                None => write!(f, "optional<?>"),
            },
            TypeKind::Opaque { domain, name } => {
                write!(f, "opaque<{}:{}>", domain.as_deref().unwrap_or(""), name.as_deref().unwrap_or(""))
            }
            TypeKind::Unset => write!(f, "?"),
        }
    }
}
