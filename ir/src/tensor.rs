//! Tensors. Data is never copied on load: `raw_data` is a slice of the memory-mapped
//! model file and external data is a slice of a memory-mapped data file.

use crate::{DType, RawFields};
use bytes::Bytes;

/// Where an external tensor's bytes live, as written in the file (`location`, `offset`, `length`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalRef {
    pub location: String,
    pub offset: Option<u64>,
    pub length: Option<u64>,
    /// Every `external_data` entry in file order (including `checksum` and unknown keys).
    pub entries: Vec<(String, String)>,
}

/// Typed repeated fields of `TensorProto`, kept in the field the file used.
#[derive(Clone, Debug, PartialEq)]
pub enum TypedData {
    Float(Vec<f32>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Double(Vec<f64>),
    Uint64(Vec<u64>),
    String(Vec<Bytes>),
}

impl TypedData {
    pub fn len(&self) -> usize {
        match self {
            TypedData::Float(v) => v.len(),
            TypedData::Int32(v) => v.len(),
            TypedData::Int64(v) => v.len(),
            TypedData::Double(v) => v.len(),
            TypedData::Uint64(v) => v.len(),
            TypedData::String(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// `raw_data`: little-endian packed elements.
    Raw(Bytes),
    /// One of the typed repeated fields.
    Typed(TypedData),
    /// Stored outside the model file; `bytes` is the mapped range.
    External { reference: ExternalRef, bytes: Bytes },
    /// No data field at all (legal for empty tensors).
    Empty,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: Option<String>,
    pub dtype: DType,
    /// The raw `data_type` code as stored, for codes newer than this build knows.
    pub dtype_code: Option<i32>,
    pub dims: Vec<i64>,
    pub data: TensorData,
    pub doc_string: Option<String>,
    /// `data_location` as stored (0 default, 1 external), if present.
    pub data_location: Option<i32>,
    pub extra: RawFields,
}

impl Tensor {
    /// A tensor from little-endian packed bytes.
    pub fn from_raw(name: Option<String>, dtype: DType, dims: Vec<i64>, raw: Bytes) -> Tensor {
        Tensor {
            name,
            dtype,
            dtype_code: Some(dtype.onnx_code()),
            dims,
            data: TensorData::Raw(raw),
            doc_string: None,
            data_location: None,
            extra: RawFields::default(),
        }
    }

    /// Number of elements, `None` on negative dims or overflow.
    pub fn numel(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |acc, &d| u64::try_from(d).ok().and_then(|d| acc.checked_mul(d)))
    }

    /// Bytes of data held (raw, external or typed), for size reports.
    pub fn byte_size(&self) -> u64 {
        match &self.data {
            TensorData::Raw(b) => b.len() as u64,
            TensorData::External { bytes, .. } => bytes.len() as u64,
            TensorData::Typed(t) => match t {
                TypedData::Float(v) => 4 * v.len() as u64,
                TypedData::Int32(v) => 4 * v.len() as u64,
                TypedData::Int64(v) => 8 * v.len() as u64,
                TypedData::Double(v) => 8 * v.len() as u64,
                TypedData::Uint64(v) => 8 * v.len() as u64,
                TypedData::String(v) => v.iter().map(|s| s.len() as u64).sum(),
            },
            TensorData::Empty => 0,
        }
    }

    /// Pages out this tensor's data where it is mapped from a file (`raw_data` or external
    /// data; [`crate::mem::release_pages`]), once the caller holds its own copy of it.
    pub fn release_pages(&self) {
        if let TensorData::Raw(b) | TensorData::External { bytes: b, .. } = &self.data {
            crate::mem::release_pages(b);
        }
    }

    pub fn is_external(&self) -> bool {
        matches!(self.data, TensorData::External { .. })
    }

    /// The packed little-endian bytes of the data (copies only for typed fields).
    /// `None` for string tensors.
    pub fn packed_bytes(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        use std::borrow::Cow;
        match &self.data {
            TensorData::Raw(b) | TensorData::External { bytes: b, .. } => Some(Cow::Borrowed(&b[..])),
            TensorData::Empty => Some(Cow::Borrowed(&[])),
            TensorData::Typed(t) => {
                let mut out = Vec::new();
                match (t, self.dtype) {
                    (TypedData::String(_), _) => return None,
                    (TypedData::Float(v), _) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
                    (TypedData::Double(v), _) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
                    (TypedData::Int64(v), _) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
                    (TypedData::Uint64(v), DType::U32) => {
                        v.iter().for_each(|x| out.extend_from_slice(&(*x as u32).to_le_bytes()))
                    }
                    (TypedData::Uint64(v), _) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
                    (TypedData::Int32(v), d) => match d.bits() {
                        Some(8) => v.iter().for_each(|x| out.push(*x as u8)),
                        Some(16) => v.iter().for_each(|x| out.extend_from_slice(&(*x as u16).to_le_bytes())),
                        Some(4) | Some(2) => v.iter().for_each(|x| out.push(*x as u8)),
                        _ => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
                    },
                }
                Some(Cow::Owned(out))
            }
        }
    }

    /// Little-endian f32 values when the tensor is float32 (copies).
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        if self.dtype != DType::F32 {
            return None;
        }
        if let TensorData::Typed(TypedData::Float(v)) = &self.data {
            return Some(v.clone());
        }
        let b = self.packed_bytes()?;
        Some(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }

    /// Integer values widened to i64 for integer tensors (copies); used for shapes and axes.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        if let TensorData::Typed(TypedData::Int64(v)) = &self.data {
            return Some(v.clone());
        }
        let b = self.packed_bytes()?;
        Some(match self.dtype {
            DType::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect(),
            DType::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect(),
            DType::U8 => b.iter().map(|&x| x as i64).collect(),
            DType::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
            DType::Bool => b.iter().map(|&x| i64::from(x != 0)).collect(),
            _ => return None,
        })
    }
}

/// A sparse tensor (COO): `values` and `indices` tensors and the dense shape.
#[derive(Clone, Debug, PartialEq)]
pub struct SparseTensor {
    pub values: Option<Tensor>,
    pub indices: Option<Tensor>,
    pub dims: Vec<i64>,
    pub extra: RawFields,
}

/// Elements of a row-major array with `dims`, transposed the ONNX way: the result has
/// `out_dims[i] = dims[perm[i]]`. `None` when `perm` is not a permutation of the axes or
/// `data` does not hold `dims` elements.
pub fn transpose_elems<T: Clone>(data: &[T], dims: &[usize], perm: &[usize]) -> Option<(Vec<T>, Vec<usize>)> {
    let rank = dims.len();
    let mut seen = vec![false; rank];
    if perm.len() != rank || perm.iter().any(|&p| p >= rank || std::mem::replace(&mut seen[p], true)) {
        return None;
    }
    if data.len() != dims.iter().product::<usize>() {
        return None;
    }
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let mut strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * dims[i + 1];
    }
    let mut out = Vec::with_capacity(data.len());
    let mut idx = vec![0usize; rank];
    for _ in 0..data.len() {
        let src: usize = (0..rank).map(|i| idx[i] * strides[perm[i]]).sum();
        out.push(data[src].clone());
        for i in (0..rank).rev() {
            idx[i] += 1;
            if idx[i] < out_dims[i] {
                break;
            }
            idx[i] = 0;
        }
    }
    Some((out, out_dims))
}
