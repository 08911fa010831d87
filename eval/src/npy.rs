//! NumPy `.npy` files (format versions 1-3, little-endian, C order) for `optc run` and
//! `optc verify` inputs and outputs.

use crate::error::{EvalError, Result};
use crate::value::Tensor;
use optc_ir::DType;
use std::path::Path;

fn descr(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::I8 => "|i1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
        _ => return None,
    })
}

fn dtype_of(descr: &str) -> Option<DType> {
    let d = descr.trim_start_matches(['<', '|', '=']);
    Some(match d {
        "f4" => DType::F32,
        "f8" => DType::F64,
        "f2" => DType::F16,
        "i1" => DType::I8,
        "i2" => DType::I16,
        "i4" => DType::I32,
        "i8" => DType::I64,
        "u1" => DType::U8,
        "u2" => DType::U16,
        "u4" => DType::U32,
        "u8" => DType::U64,
        "b1" => DType::Bool,
        _ => return None,
    })
}

/// Encodes a tensor as `.npy` bytes. bfloat16 is written as float32 (NumPy has no bfloat16).
pub fn to_npy(t: &Tensor) -> Result<Vec<u8>> {
    let t = match t {
        Tensor::BF16(a) => Tensor::F32(a.mapv(|x| x.to_f32())),
        other => other.clone(),
    };
    let d = descr(t.dtype()).ok_or_else(|| EvalError::Other(format!("cannot write {} tensors as .npy", t.dtype())))?;
    let shape = t.shape();
    let shape_s = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{d}', 'fortran_order': False, 'shape': {shape_s}, }}");
    // Pad so that the data starts at a multiple of 64 bytes, ending with a newline.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.len() * 8);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&t.to_le_bytes());
    Ok(out)
}

/// Decodes `.npy` bytes.
pub fn from_npy(bytes: &[u8], what: &str) -> Result<Tensor> {
    let err = |m: String| EvalError::Input { name: what.to_string(), message: m };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err("not a .npy file (bad magic)".into()));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(err(format!("unsupported .npy version {v}"))),
    };
    let header = bytes.get(start..start + hlen).ok_or_else(|| err("truncated header".into()))?;
    let header = String::from_utf8_lossy(header);
    let field = |key: &str| -> Option<String> {
        let i = header.find(&format!("'{key}'"))?;
        let rest = header[i + key.len() + 2..].trim_start().strip_prefix(':')?.trim_start();
        if let Some(r) = rest.strip_prefix('\'') {
            return r.find('\'').map(|j| r[..j].to_string());
        }
        if let Some(r) = rest.strip_prefix('(') {
            return r.find(')').map(|j| r[..j].to_string());
        }
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim().to_string())
    };
    let d = field("descr").ok_or_else(|| err("header has no descr".into()))?;
    if d.starts_with('>') && !d.ends_with("1") {
        return Err(err(format!("big-endian data ({d}) is not supported")));
    }
    let dtype = dtype_of(&d).ok_or_else(|| err(format!("unsupported dtype '{d}'")))?;
    if field("fortran_order").as_deref() == Some("True") {
        return Err(err("Fortran-order arrays are not supported; save with np.ascontiguousarray".into()));
    }
    let shape_s = field("shape").ok_or_else(|| err("header has no shape".into()))?;
    let dims: Vec<i64> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<i64>().map_err(|_| err(format!("bad shape '{shape_s}'"))))
        .collect::<Result<_>>()?;
    let data = &bytes[start + hlen..];
    let n: u64 = dims.iter().map(|&d| d as u64).product();
    let want = dtype.storage_bytes(n).unwrap_or(0) as usize;
    if data.len() != want {
        return Err(err(format!("holds {} data bytes, shape {dims:?} of {dtype} needs {want}", data.len())));
    }
    let t = optc_ir::Tensor::from_raw(Some(what.to_string()), dtype, dims, data.to_vec().into());
    Tensor::from_ir(&t)
}

pub fn read_npy(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::Other(format!("cannot read '{}': {e}", path.display())))?;
    from_npy(&bytes, &path.display().to_string())
}

pub fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    std::fs::write(path, to_npy(t)?).map_err(|e| EvalError::Other(format!("cannot write '{}': {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    #[test]
    fn round_trip() {
        let a = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1., 2., 3., 4., 5., 6.]).unwrap());
        let b = to_npy(&a).unwrap();
        assert_eq!((b.len() - 24) % 64, 0, "data 64-byte aligned");
        assert_eq!(from_npy(&b, "a").unwrap(), a);
        let s = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[]), vec![7]).unwrap());
        assert_eq!(from_npy(&to_npy(&s).unwrap(), "s").unwrap(), s);
        let v = Tensor::Bool(ArrayD::from_shape_vec(IxDyn(&[3]), vec![true, false, true]).unwrap());
        assert_eq!(from_npy(&to_npy(&v).unwrap(), "v").unwrap(), v);
        assert!(from_npy(b"garbage!!!!!", "g").is_err());
    }
}
