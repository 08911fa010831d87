//! Runtime values: tensors as typed `ndarray` arrays, sequences and optionals, and their
//! conversion from and to the IR's stored tensors.

use crate::error::{EvalError, Result};
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use optc_ir::{DType, TensorData, TypedData};

/// A tensor value. Element types the evaluator computes with have their own variant; the
/// rest (float8, int4/2, complex) are carried packed so they can pass through untouched.
#[derive(Clone, Debug, PartialEq)]
pub enum Tensor {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    F16(ArrayD<f16>),
    BF16(ArrayD<bf16>),
    I8(ArrayD<i8>),
    I16(ArrayD<i16>),
    I32(ArrayD<i32>),
    I64(ArrayD<i64>),
    U8(ArrayD<u8>),
    U16(ArrayD<u16>),
    U32(ArrayD<u32>),
    U64(ArrayD<u64>),
    Bool(ArrayD<bool>),
    Str(ArrayD<String>),
    /// Any other element type, packed little-endian as ONNX stores it.
    Packed {
        dtype: DType,
        shape: Vec<usize>,
        raw: Vec<u8>,
    },
}

/// Applies `$body` to the array inside any computable variant, binding it as `$a`.
#[macro_export]
macro_rules! with_array {
    ($t:expr, $a:ident => $body:expr) => {
        match $t {
            $crate::Tensor::F32($a) => $body,
            $crate::Tensor::F64($a) => $body,
            $crate::Tensor::F16($a) => $body,
            $crate::Tensor::BF16($a) => $body,
            $crate::Tensor::I8($a) => $body,
            $crate::Tensor::I16($a) => $body,
            $crate::Tensor::I32($a) => $body,
            $crate::Tensor::I64($a) => $body,
            $crate::Tensor::U8($a) => $body,
            $crate::Tensor::U16($a) => $body,
            $crate::Tensor::U32($a) => $body,
            $crate::Tensor::U64($a) => $body,
            $crate::Tensor::Bool($a) => $body,
            $crate::Tensor::Str($a) => $body,
            $crate::Tensor::Packed { .. } => unreachable!("packed tensors are handled before with_array"),
        }
    };
}

/// Like [`with_array!`], producing a tensor of the same variant from `$body` (an array).
#[macro_export]
macro_rules! map_array {
    ($t:expr, $a:ident => $body:expr) => {
        match $t {
            $crate::Tensor::F32($a) => $crate::Tensor::F32($body),
            $crate::Tensor::F64($a) => $crate::Tensor::F64($body),
            $crate::Tensor::F16($a) => $crate::Tensor::F16($body),
            $crate::Tensor::BF16($a) => $crate::Tensor::BF16($body),
            $crate::Tensor::I8($a) => $crate::Tensor::I8($body),
            $crate::Tensor::I16($a) => $crate::Tensor::I16($body),
            $crate::Tensor::I32($a) => $crate::Tensor::I32($body),
            $crate::Tensor::I64($a) => $crate::Tensor::I64($body),
            $crate::Tensor::U8($a) => $crate::Tensor::U8($body),
            $crate::Tensor::U16($a) => $crate::Tensor::U16($body),
            $crate::Tensor::U32($a) => $crate::Tensor::U32($body),
            $crate::Tensor::U64($a) => $crate::Tensor::U64($body),
            $crate::Tensor::Bool($a) => $crate::Tensor::Bool($body),
            $crate::Tensor::Str($a) => $crate::Tensor::Str($body),
            $crate::Tensor::Packed { .. } => unreachable!("packed tensors are handled before map_array"),
        }
    };
}

impl Tensor {
    pub fn dtype(&self) -> DType {
        match self {
            Tensor::F32(_) => DType::F32,
            Tensor::F64(_) => DType::F64,
            Tensor::F16(_) => DType::F16,
            Tensor::BF16(_) => DType::BF16,
            Tensor::I8(_) => DType::I8,
            Tensor::I16(_) => DType::I16,
            Tensor::I32(_) => DType::I32,
            Tensor::I64(_) => DType::I64,
            Tensor::U8(_) => DType::U8,
            Tensor::U16(_) => DType::U16,
            Tensor::U32(_) => DType::U32,
            Tensor::U64(_) => DType::U64,
            Tensor::Bool(_) => DType::Bool,
            Tensor::Str(_) => DType::String,
            Tensor::Packed { dtype, .. } => *dtype,
        }
    }

    pub fn shape(&self) -> Vec<usize> {
        match self {
            Tensor::Packed { shape, .. } => shape.clone(),
            t => with_array!(t, a => a.shape().to_vec()),
        }
    }

    pub fn len(&self) -> usize {
        self.shape().iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values as f64 (for comparisons and statistics); `None` for strings and packed types.
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        Some(match self {
            Tensor::F32(a) => a.iter().map(|&x| x as f64).collect(),
            Tensor::F64(a) => a.iter().copied().collect(),
            Tensor::F16(a) => a.iter().map(|x| x.to_f64()).collect(),
            Tensor::BF16(a) => a.iter().map(|x| x.to_f64()).collect(),
            Tensor::I8(a) => a.iter().map(|&x| x as f64).collect(),
            Tensor::I16(a) => a.iter().map(|&x| x as f64).collect(),
            Tensor::I32(a) => a.iter().map(|&x| x as f64).collect(),
            Tensor::I64(a) => a.iter().map(|&x| x as f64).collect(),
            Tensor::U8(a) => a.iter().map(|&x| x as f64).collect(),
            Tensor::U16(a) => a.iter().map(|&x| x as f64).collect(),
            Tensor::U32(a) => a.iter().map(|&x| x as f64).collect(),
            Tensor::U64(a) => a.iter().map(|&x| x as f64).collect(),
            Tensor::Bool(a) => a.iter().map(|&x| f64::from(u8::from(x))).collect(),
            Tensor::Str(_) | Tensor::Packed { .. } => return None,
        })
    }

    /// Integer values widened to i64 (shapes, axes, indices).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        Some(match self {
            Tensor::I64(a) => a.iter().copied().collect(),
            Tensor::I32(a) => a.iter().map(|&x| x as i64).collect(),
            Tensor::I16(a) => a.iter().map(|&x| x as i64).collect(),
            Tensor::I8(a) => a.iter().map(|&x| x as i64).collect(),
            Tensor::U8(a) => a.iter().map(|&x| x as i64).collect(),
            Tensor::U16(a) => a.iter().map(|&x| x as i64).collect(),
            Tensor::U32(a) => a.iter().map(|&x| x as i64).collect(),
            Tensor::U64(a) => a.iter().map(|&x| x as i64).collect(),
            Tensor::Bool(a) => a.iter().map(|&x| i64::from(x)).collect(),
            _ => return None,
        })
    }

    /// Reads a stored IR tensor (raw, typed or external data).
    pub fn from_ir(t: &optc_ir::Tensor) -> Result<Tensor> {
        let name = t.name.clone().unwrap_or_default();
        let err = |m: String| EvalError::Input { name: name.clone(), message: m };
        let shape: Vec<usize> = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| err(format!("negative dim {d}"))))
            .collect::<Result<_>>()?;
        let n: usize = shape.iter().product();
        let ix = IxDyn(&shape);
        if t.dtype == DType::String {
            let v: Vec<String> = match &t.data {
                TensorData::Typed(TypedData::String(v)) => {
                    v.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect()
                }
                TensorData::Empty => vec![],
                _ => return Err(err("string tensor without string_data".into())),
            };
            return ArrayD::from_shape_vec(ix, v).map(Tensor::Str).map_err(|e| err(e.to_string()));
        }
        let raw = t.packed_bytes().ok_or_else(|| err("tensor has no readable data".into()))?;
        macro_rules! le {
            ($ty:ty, $variant:ident, $w:expr) => {{
                if raw.len() != n * $w {
                    return Err(err(format!("holds {} bytes, dims {:?} need {}", raw.len(), shape, n * $w)));
                }
                let v: Vec<$ty> =
                    raw.chunks_exact($w).map(|c| <$ty>::from_le_bytes(c.try_into().unwrap_or([0; $w]))).collect();
                Tensor::$variant(ArrayD::from_shape_vec(ix, v).map_err(|e| err(e.to_string()))?)
            }};
        }
        Ok(match t.dtype {
            DType::F32 => le!(f32, F32, 4),
            DType::F64 => le!(f64, F64, 8),
            DType::I8 => le!(i8, I8, 1),
            DType::I16 => le!(i16, I16, 2),
            DType::I32 => le!(i32, I32, 4),
            DType::I64 => le!(i64, I64, 8),
            DType::U8 => le!(u8, U8, 1),
            DType::U16 => le!(u16, U16, 2),
            DType::U32 => le!(u32, U32, 4),
            DType::U64 => le!(u64, U64, 8),
            DType::F16 => {
                let v = le_u16(&raw, n).ok_or_else(|| err("float16 data has the wrong length".into()))?;
                Tensor::F16(
                    ArrayD::from_shape_vec(ix, v.into_iter().map(f16::from_bits).collect())
                        .map_err(|e| err(e.to_string()))?,
                )
            }
            DType::BF16 => {
                let v = le_u16(&raw, n).ok_or_else(|| err("bfloat16 data has the wrong length".into()))?;
                Tensor::BF16(
                    ArrayD::from_shape_vec(ix, v.into_iter().map(bf16::from_bits).collect())
                        .map_err(|e| err(e.to_string()))?,
                )
            }
            DType::Bool => {
                if raw.len() != n {
                    return Err(err(format!("bool data holds {} bytes, needs {n}", raw.len())));
                }
                Tensor::Bool(
                    ArrayD::from_shape_vec(ix, raw.iter().map(|&b| b != 0).collect())
                        .map_err(|e| err(e.to_string()))?,
                )
            }
            other => Tensor::Packed { dtype: other, shape, raw: raw.into_owned() },
        })
    }

    /// Converts to an IR tensor with `raw_data` (strings use `string_data`).
    pub fn to_ir(&self, name: Option<String>) -> optc_ir::Tensor {
        let dims: Vec<i64> = self.shape().iter().map(|&d| d as i64).collect();
        if let Tensor::Str(a) = self {
            let mut t = optc_ir::Tensor::from_raw(name, DType::String, dims, bytes::Bytes::new());
            t.data = TensorData::Typed(TypedData::String(
                a.iter().map(|s| bytes::Bytes::from(s.clone().into_bytes())).collect(),
            ));
            return t;
        }
        optc_ir::Tensor::from_raw(name, self.dtype(), dims, self.to_le_bytes().into())
    }

    /// Packed little-endian bytes (strings: empty).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        macro_rules! bytes {
            ($a:expr) => {
                $a.iter().flat_map(|x| x.to_le_bytes()).collect()
            };
        }
        match self {
            Tensor::F32(a) => bytes!(a),
            Tensor::F64(a) => bytes!(a),
            Tensor::F16(a) => a.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
            Tensor::BF16(a) => a.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
            Tensor::I8(a) => bytes!(a),
            Tensor::I16(a) => bytes!(a),
            Tensor::I32(a) => bytes!(a),
            Tensor::I64(a) => bytes!(a),
            Tensor::U8(a) => a.iter().copied().collect(),
            Tensor::U16(a) => bytes!(a),
            Tensor::U32(a) => bytes!(a),
            Tensor::U64(a) => bytes!(a),
            Tensor::Bool(a) => a.iter().map(|&b| u8::from(b)).collect(),
            Tensor::Str(_) => Vec::new(),
            Tensor::Packed { raw, .. } => raw.clone(),
        }
    }
}

fn le_u16(raw: &[u8], n: usize) -> Option<Vec<u16>> {
    (raw.len() == 2 * n).then(|| raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
}

/// A runtime value: a tensor, a sequence of tensors, an optional, or nothing (absent input).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Tensor(Tensor),
    Sequence(Vec<Tensor>),
    Optional(Option<Box<Value>>),
}

impl Value {
    pub fn tensor(&self) -> Option<&Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }
    pub fn into_tensor(self) -> Option<Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }
}

impl From<Tensor> for Value {
    fn from(t: Tensor) -> Value {
        Value::Tensor(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ir_round_trip() {
        for dt in [DType::F32, DType::I64, DType::F16, DType::Bool, DType::U8, DType::I4] {
            let n = 6;
            let bytes = dt.storage_bytes(n).unwrap() as usize;
            let raw: Vec<u8> = (0..bytes).map(|i| if dt == DType::Bool { (i % 2) as u8 } else { i as u8 }).collect();
            let t = optc_ir::Tensor::from_raw(Some("t".into()), dt, vec![2, 3], raw.clone().into());
            let v = Tensor::from_ir(&t).unwrap();
            assert_eq!(v.dtype(), dt);
            assert_eq!(v.shape(), vec![2, 3]);
            assert_eq!(v.to_le_bytes(), raw, "{dt}");
        }
    }
}
