//! Kernels: quant (QuantizeLinear / DequantizeLinear in every granularity and element type,
//! DynamicQuantizeLinear, QLinearMatMul, QLinearConv, ConvInteger, MatMulInteger lives in
//! linalg) and the `com.microsoft` MatMulNBits / QuantizeLinear / DequantizeLinear.
//!
//! Sub-byte and float8 types travel as [`Tensor::Packed`]: 4-bit types two per byte and 2-bit
//! types four per byte, the first element in the lowest bits.

use super::Ctx;
use super::linalg::{Gemm, Real, gemm_strided, int8_as_f64, matmul_arrays, sub_zero_point};
use super::nn::conv_with_attrs;
use crate::error::Result;
use crate::value::{Tensor, Value};
use half::{bf16, f16};
use ndarray::{ArrayD, CowArray, IxDyn};
use optc_ir::{DType, Op};
use rayon::prelude::*;

pub fn run(cx: &Ctx, inputs: &[Option<&Value>]) -> Option<Result<Vec<Value>>> {
    let r = match &cx.node.op {
        Op::QuantizeLinear => quantize_linear(cx, inputs),
        Op::DequantizeLinear => dequantize_linear(cx, inputs),
        Op::DynamicQuantizeLinear => dynamic_quantize_linear(cx, inputs),
        Op::QLinearMatMul => qlinear_matmul(cx, inputs),
        Op::QLinearConv => qlinear_conv(cx, inputs),
        Op::ConvInteger => conv_integer(cx, inputs),
        Op::Opaque { domain, op_type } if domain == "com.microsoft" => match op_type.as_str() {
            "MatMulNBits" => matmul_nbits(cx, inputs),
            "QuantizeLinear" => quantize_linear(cx, inputs),
            "DequantizeLinear" => dequantize_linear(cx, inputs),
            _ => return None,
        },
        _ => return None,
    };
    Some(r)
}

// ---------------------------------------------------------------------------------------------
// Small float formats (float8 variants, float4 e2m1)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MiniKind {
    /// E4M3FN: no infinities, NaN = S.1111.111.
    Fn,
    /// FNUZ variants: no infinities, no negative zero, NaN = 0x80.
    Fnuz,
    /// E5M2: IEEE-like infinities and NaNs.
    Ieee,
    /// E2M1: finite only.
    Finite,
}

#[derive(Clone, Copy, Debug)]
struct Mini {
    ebits: u32,
    mbits: u32,
    bias: i32,
    kind: MiniKind,
}

fn mini_of(dt: DType) -> Option<Mini> {
    Some(match dt {
        DType::F8E4M3FN => Mini { ebits: 4, mbits: 3, bias: 7, kind: MiniKind::Fn },
        DType::F8E4M3FNUZ => Mini { ebits: 4, mbits: 3, bias: 8, kind: MiniKind::Fnuz },
        DType::F8E5M2 => Mini { ebits: 5, mbits: 2, bias: 15, kind: MiniKind::Ieee },
        DType::F8E5M2FNUZ => Mini { ebits: 5, mbits: 2, bias: 16, kind: MiniKind::Fnuz },
        DType::F4E2M1 => Mini { ebits: 2, mbits: 1, bias: 1, kind: MiniKind::Finite },
        _ => return None,
    })
}

impl Mini {
    fn sign_bit(self) -> u8 {
        1 << (self.ebits + self.mbits)
    }
    fn is_nan_code(self, c: u8) -> bool {
        let emask = (1u8 << self.ebits) - 1;
        let mmask = (1u8 << self.mbits) - 1;
        let (e, m) = ((c >> self.mbits) & emask, c & mmask);
        match self.kind {
            MiniKind::Fn => e == emask && m == mmask,
            MiniKind::Fnuz => c == self.sign_bit(),
            MiniKind::Ieee => e == emask && m != 0,
            MiniKind::Finite => false,
        }
    }
    fn decode(self, c: u8) -> f32 {
        if self.is_nan_code(c) {
            return f32::NAN;
        }
        let emask = (1u8 << self.ebits) - 1;
        let mmask = (1u8 << self.mbits) - 1;
        let neg = c & self.sign_bit() != 0;
        let (e, m) = (((c >> self.mbits) & emask) as i32, (c & mmask) as f32);
        let scale = (1u32 << self.mbits) as f32;
        let v = if self.kind == MiniKind::Ieee && e == emask as i32 {
            f32::INFINITY
        } else if e == 0 {
            m / scale * 2f32.powi(1 - self.bias)
        } else {
            (1.0 + m / scale) * 2f32.powi(e - self.bias)
        };
        if neg { -v } else { v }
    }
    /// Positive finite (value, code) pairs in increasing order.
    fn table(self) -> Vec<(f32, u8)> {
        let mut t: Vec<(f32, u8)> = (0..self.sign_bit())
            .filter(|&c| !self.is_nan_code(c))
            .map(|c| (self.decode(c), c))
            .filter(|(v, _)| v.is_finite())
            .collect();
        t.sort_by(|a, b| a.0.total_cmp(&b.0));
        t
    }
    fn nan_code(self) -> u8 {
        match self.kind {
            MiniKind::Fn => self.sign_bit() - 1,
            MiniKind::Fnuz => self.sign_bit(),
            MiniKind::Ieee => self.sign_bit() - 1,
            MiniKind::Finite => self.sign_bit() - 1,
        }
    }
    /// Round-to-nearest-even encoding; out-of-range values saturate to the largest finite value
    /// when `saturate`, otherwise become infinity (E5M2) or NaN.
    fn encode(self, x: f32, table: &[(f32, u8)], saturate: bool) -> u8 {
        if x.is_nan() {
            return self.nan_code();
        }
        let neg = x.is_sign_negative();
        let a = x.abs();
        let (maxv, maxc) = table[table.len() - 1];
        let prev = table[table.len() - 2].0;
        let overflow = || -> u8 {
            match self.kind {
                MiniKind::Ieee => {
                    let inf = ((1u8 << self.ebits) - 1) << self.mbits;
                    inf | if neg { self.sign_bit() } else { 0 }
                }
                MiniKind::Fnuz => self.sign_bit(),
                MiniKind::Fn => self.nan_code() | if neg { self.sign_bit() } else { 0 },
                MiniKind::Finite => maxc | if neg { self.sign_bit() } else { 0 },
            }
        };
        let code = if a > maxv {
            if saturate || self.kind == MiniKind::Finite {
                maxc
            } else {
                // Round to nearest between max and the next (virtual) step.
                let mid = maxv + (maxv - prev) / 2.0;
                if a.is_infinite() || a > mid || (a == mid && maxc & 1 == 1) {
                    return overflow();
                }
                maxc
            }
        } else {
            let i = table.partition_point(|&(v, _)| v < a);
            if i < table.len() && table[i].0 == a {
                table[i].1
            } else if i == 0 {
                table[0].1
            } else {
                let (lo, hi) = (table[i - 1], table[i]);
                let (dl, dh) = (a - lo.0, hi.0 - a);
                if dl < dh {
                    lo.1
                } else if dh < dl {
                    hi.1
                } else if lo.1 & 1 == 0 {
                    lo.1
                } else {
                    hi.1
                }
            }
        };
        if neg && !(code == 0 && self.kind == MiniKind::Fnuz) { code | self.sign_bit() } else { code }
    }
}

// ---------------------------------------------------------------------------------------------
// Element access for quantized tensors
// ---------------------------------------------------------------------------------------------

/// Bits per element of a packed quantized type.
fn packed_bits(dt: DType) -> Option<usize> {
    match dt {
        DType::I4 | DType::U4 | DType::F4E2M1 => Some(4),
        DType::I2 | DType::U2 => Some(2),
        DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ => Some(8),
        _ => None,
    }
}

/// Unpacks the raw codes (one per element) of a packed tensor.
fn unpack_codes(dt: DType, raw: &[u8], n: usize) -> Option<Vec<u8>> {
    let bits = packed_bits(dt)?;
    let per = 8 / bits;
    if raw.len() * per < n {
        return None;
    }
    let mask = ((1u16 << bits) - 1) as u8;
    Some((0..n).map(|i| (raw[i / per] >> ((i % per) * bits)) & mask).collect())
}

fn pack_codes(dt: DType, codes: &[u8]) -> Vec<u8> {
    let bits = packed_bits(dt).unwrap_or(8);
    let per = 8 / bits;
    let mut out = vec![0u8; codes.len().div_ceil(per)];
    let mask = ((1u16 << bits) - 1) as u8;
    for (i, &c) in codes.iter().enumerate() {
        out[i / per] |= (c & mask) << ((i % per) * bits);
    }
    out
}

/// The numeric value of a code of a packed type.
fn code_value(dt: DType, c: u8) -> f32 {
    match dt {
        DType::I4 => (((c << 4) as i8) >> 4) as f32,
        DType::I2 => (((c << 6) as i8) >> 6) as f32,
        DType::U4 | DType::U2 => c as f32,
        d => mini_of(d).map_or(f32::NAN, |m| m.decode(c)),
    }
}

/// Element values of a quantized (integer or packed) tensor as f32, with its dtype.
fn quant_values(cx: &Ctx, t: &Tensor, what: &str) -> Result<Vec<f32>> {
    match t {
        Tensor::Packed { dtype, shape, raw } => {
            let n: usize = shape.iter().product();
            let codes = unpack_codes(*dtype, raw, n)
                .ok_or_else(|| cx.err(format!("{what}: unsupported or truncated packed type {dtype}")))?;
            Ok(codes.into_iter().map(|c| code_value(*dtype, c)).collect())
        }
        Tensor::I8(_) | Tensor::U8(_) | Tensor::I16(_) | Tensor::U16(_) | Tensor::I32(_) => Ok(t
            .to_f64_vec()
            .ok_or_else(|| cx.err(format!("{what} must be numeric")))?
            .into_iter()
            .map(|v| v as f32)
            .collect()),
        t => Err(cx.err(format!("{what} has unsupported type {}", t.dtype()))),
    }
}

/// For every element of a tensor of `shape`, the index of its scale / zero point: per tensor,
/// per axis (1-D of the axis length) or blocked (same rank, axis dim = ceil(len / block)).
fn param_index(cx: &Ctx, shape: &[usize], pshape: &[usize], axis: i64, block: i64, what: &str) -> Result<Vec<usize>> {
    let n: usize = shape.iter().product();
    let pn: usize = pshape.iter().product();
    if pn == 1 {
        return Ok(vec![0; n]);
    }
    let r = shape.len() as i64;
    let ax = if axis < 0 { axis + r } else { axis };
    if ax < 0 || ax >= r {
        return Err(cx.err(format!("axis {axis} is out of range for rank {r}")));
    }
    let ax = ax as usize;
    let len = shape[ax];
    let inner: usize = shape[ax + 1..].iter().product();
    if block <= 0 {
        if pshape.len() != 1 || pshape[0] != len {
            return Err(cx.err(format!("{what} of shape {pshape:?} does not match axis {ax} of {shape:?}")));
        }
        return Ok((0..n).map(|i| (i / inner.max(1)) % len.max(1)).collect());
    }
    let bs = block as usize;
    let nb = len.div_ceil(bs);
    let mut want = shape.to_vec();
    want[ax] = nb;
    if pshape != want.as_slice() {
        return Err(cx.err(format!(
            "{what} of shape {pshape:?} does not fit blocked quantization of {shape:?} (expected {want:?})"
        )));
    }
    Ok((0..n)
        .map(|i| {
            let o = i / (len * inner).max(1);
            let a = (i / inner.max(1)) % len.max(1);
            let inn = i % inner.max(1);
            (o * nb + a / bs) * inner + inn
        })
        .collect())
}

fn float_values(cx: &Ctx, t: &Tensor, what: &str) -> Result<Vec<f32>> {
    match t {
        Tensor::F32(a) => Ok(a.iter().copied().collect()),
        Tensor::F16(a) => Ok(a.iter().map(|v| v.to_f32()).collect()),
        Tensor::BF16(a) => Ok(a.iter().map(|v| v.to_f32()).collect()),
        Tensor::F64(a) => Ok(a.iter().map(|&v| v as f32).collect()),
        Tensor::I32(a) => Ok(a.iter().map(|&v| v as f32).collect()),
        t => Err(cx.err(format!("{what} must be a float tensor, got {}", t.dtype()))),
    }
}

fn float_out(cx: &Ctx, dt: DType, shape: &[usize], v: Vec<f32>) -> Result<Tensor> {
    let a = ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| cx.err(e.to_string()))?;
    Ok(match dt {
        DType::F32 => Tensor::F32(a),
        DType::F16 => Tensor::F16(a.mapv(f16::from_f32)),
        DType::BF16 => Tensor::BF16(a.mapv(bf16::from_f32)),
        DType::F64 => Tensor::F64(a.mapv(f64::from)),
        d => return Err(cx.err(format!("unsupported output type {d}"))),
    })
}

// ---------------------------------------------------------------------------------------------
// DequantizeLinear / QuantizeLinear
// ---------------------------------------------------------------------------------------------

fn dequantize_linear(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = cx.tensor(inputs, 0)?;
    let scale = cx.tensor(inputs, 1)?;
    let zp = cx.opt_tensor(inputs, 2)?;
    let shape = x.shape();
    let xv = quant_values(cx, x, "x")?;
    let sv = float_values(cx, scale, "x_scale")?;
    let axis = cx.attr_int("axis", 1);
    let block = cx.attr_int("block_size", 0);
    let sidx = param_index(cx, &shape, &scale.shape(), axis, block, "x_scale")?;
    let is_float_q = mini_of(x.dtype()).is_some();
    let zv = match zp {
        Some(z) if !is_float_q => {
            if z.dtype() != x.dtype() {
                return Err(cx.err(format!("zero point type {} differs from x type {}", z.dtype(), x.dtype())));
            }
            let zi = param_index(cx, &shape, &z.shape(), axis, block, "x_zero_point")?;
            Some((quant_values(cx, z, "x_zero_point")?, zi))
        }
        _ => None,
    };
    let y: Vec<f32> = (0..xv.len())
        .map(|i| {
            let d = match &zv {
                Some((z, zi)) => xv[i] - z[zi[i]],
                None => xv[i],
            };
            d * sv[sidx[i]]
        })
        .collect();
    let out_dt = match cx.attr_int("output_dtype", 0) {
        0 => scale.dtype(),
        c => DType::from_onnx(c as i32).ok_or_else(|| cx.err(format!("bad output_dtype {c}")))?,
    };
    let out_dt = if out_dt == DType::I32 { DType::F32 } else { out_dt };
    Ok(vec![float_out(cx, out_dt, &shape, y)?.into()])
}

/// Integer range of a quantized output type.
fn int_range(dt: DType) -> Option<(f32, f32)> {
    Some(match dt {
        DType::U8 => (0.0, 255.0),
        DType::I8 => (-128.0, 127.0),
        DType::U16 => (0.0, 65535.0),
        DType::I16 => (-32768.0, 32767.0),
        DType::U4 => (0.0, 15.0),
        DType::I4 => (-8.0, 7.0),
        DType::U2 => (0.0, 3.0),
        DType::I2 => (-2.0, 1.0),
        DType::I32 => (i32::MIN as f32, i32::MAX as f32),
        _ => return None,
    })
}

/// Builds a tensor of integer type `dt` from values already rounded and clamped.
fn int_tensor(cx: &Ctx, dt: DType, shape: &[usize], v: &[f32]) -> Result<Tensor> {
    let ix = IxDyn(shape);
    let e = |e: ndarray::ShapeError| cx.err(e.to_string());
    Ok(match dt {
        DType::U8 => Tensor::U8(ArrayD::from_shape_vec(ix, v.iter().map(|&x| x as u8).collect()).map_err(e)?),
        DType::I8 => Tensor::I8(ArrayD::from_shape_vec(ix, v.iter().map(|&x| x as i8).collect()).map_err(e)?),
        DType::U16 => Tensor::U16(ArrayD::from_shape_vec(ix, v.iter().map(|&x| x as u16).collect()).map_err(e)?),
        DType::I16 => Tensor::I16(ArrayD::from_shape_vec(ix, v.iter().map(|&x| x as i16).collect()).map_err(e)?),
        DType::I32 => Tensor::I32(ArrayD::from_shape_vec(ix, v.iter().map(|&x| x as i32).collect()).map_err(e)?),
        DType::U4 | DType::U2 => {
            let codes: Vec<u8> = v.iter().map(|&x| x as u8).collect();
            Tensor::Packed { dtype: dt, shape: shape.to_vec(), raw: pack_codes(dt, &codes) }
        }
        DType::I4 | DType::I2 => {
            let codes: Vec<u8> = v.iter().map(|&x| (x as i8) as u8).collect();
            Tensor::Packed { dtype: dt, shape: shape.to_vec(), raw: pack_codes(dt, &codes) }
        }
        d => return Err(cx.err(format!("unsupported quantized type {d}"))),
    })
}

fn quantize_linear(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = cx.tensor(inputs, 0)?;
    let scale = cx.tensor(inputs, 1)?;
    let zp = cx.opt_tensor(inputs, 2)?;
    let shape = x.shape();
    let xv = float_values(cx, x, "x")?;
    let sv = float_values(cx, scale, "y_scale")?;
    let axis = cx.attr_int("axis", 1);
    let block = cx.attr_int("block_size", 0);
    let sidx = param_index(cx, &shape, &scale.shape(), axis, block, "y_scale")?;
    let out_dt = match (zp, cx.attr_int("output_dtype", 0)) {
        (Some(z), _) => z.dtype(),
        (None, 0) => DType::U8,
        (None, c) => DType::from_onnx(c as i32).ok_or_else(|| cx.err(format!("bad output_dtype {c}")))?,
    };
    let saturate = cx.attr_int("saturate", 1) != 0;
    let zv = match zp {
        Some(z) => {
            let zi = param_index(cx, &shape, &z.shape(), axis, block, "y_zero_point")?;
            Some((quant_values(cx, z, "y_zero_point")?, zi))
        }
        None => None,
    };
    let xdt = x.dtype();
    // x / scale in the input's precision.
    let q: Vec<f32> = (0..xv.len())
        .map(|i| {
            let v = xv[i] / sv[sidx[i]];
            match xdt {
                DType::F16 => f16::from_f32(v).to_f32(),
                DType::BF16 => bf16::from_f32(v).to_f32(),
                _ => v,
            }
        })
        .collect();
    let zero = |i: usize| zv.as_ref().map_or(0.0, |(z, zi)| z[zi[i]]);
    if let Some((lo, hi)) = int_range(out_dt) {
        let v: Vec<f32> = (0..q.len())
            .map(|i| {
                let r = q[i].round_ties_even();
                let r = if r.is_nan() { 0.0 } else { r };
                (r + zero(i)).clamp(lo, hi)
            })
            .collect();
        return Ok(vec![int_tensor(cx, out_dt, &shape, &v)?.into()]);
    }
    if let Some(m) = mini_of(out_dt) {
        let table = m.table();
        let codes: Vec<u8> = (0..q.len())
            .map(|i| {
                let v = if out_dt == DType::F4E2M1 { q[i] + zero(i) } else { q[i] };
                m.encode(v, &table, saturate)
            })
            .collect();
        return Ok(vec![
            Tensor::Packed { dtype: out_dt, shape: shape.clone(), raw: pack_codes(out_dt, &codes) }.into(),
        ]);
    }
    Err(cx.err(format!("unsupported quantized output type {out_dt}")))
}

fn dynamic_quantize_linear(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = cx.tensor(inputs, 0)?;
    let xv = float_values(cx, x, "x")?;
    let shape = x.shape();
    let maxx = xv.iter().copied().fold(0f32, f32::max);
    let minx = xv.iter().copied().fold(0f32, f32::min);
    let scale = (if maxx == minx { 1.0 } else { maxx - minx }) / 255.0;
    let zp = (0.0 - minx / scale).clamp(0.0, 255.0).round_ties_even();
    let y: Vec<f32> = xv.iter().map(|&v| ((v / scale).round_ties_even() + zp).clamp(0.0, 255.0)).collect();
    let ys = int_tensor(cx, DType::U8, &shape, &y)?;
    let st = float_out(cx, x.dtype(), &[], vec![scale])?;
    let zt = Tensor::U8(ArrayD::from_elem(IxDyn(&[]), zp as u8));
    Ok(vec![ys.into(), st.into(), zt.into()])
}

// ---------------------------------------------------------------------------------------------
// QLinearMatMul / QLinearConv / ConvInteger
// ---------------------------------------------------------------------------------------------

/// A scale input's values rounded through its own precision (f16 scales multiply in f16).
fn scale_values(cx: &Ctx, t: &Tensor, what: &str) -> Result<(Vec<f32>, DType)> {
    Ok((float_values(cx, t, what)?, t.dtype()))
}

fn round_to(dt: DType, v: f32) -> f32 {
    match dt {
        DType::F16 => f16::from_f32(v).to_f32(),
        DType::BF16 => bf16::from_f32(v).to_f32(),
        _ => v,
    }
}

/// Requantizes `acc` (integer-valued f64) to `out_dt` with per-element multipliers.
fn requantize(
    cx: &Ctx,
    acc: &[f64],
    mult: impl Fn(usize) -> f64,
    zp: f64,
    out_dt: DType,
    shape: &[usize],
) -> Result<Tensor> {
    let (lo, hi) = int_range(out_dt).ok_or_else(|| cx.err(format!("unsupported output type {out_dt}")))?;
    let v: Vec<f32> = acc
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            let r = (a * mult(i) + zp).round_ties_even();
            let r = if r.is_nan() { 0.0 } else { r };
            r.clamp(lo as f64, hi as f64) as f32
        })
        .collect();
    int_tensor(cx, out_dt, shape, &v)
}

fn single_zp(cx: &Ctx, t: Option<&Tensor>, what: &str) -> Result<f64> {
    match t {
        None => Ok(0.0),
        Some(t) => {
            let v = t.to_f64_vec().ok_or_else(|| cx.err(format!("{what} must be an integer tensor")))?;
            if v.len() != 1 {
                return Err(cx.err(format!("{what} must be a scalar")));
            }
            Ok(v[0])
        }
    }
}

fn qlinear_matmul(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let a = cx.tensor(inputs, 0)?;
    let b = cx.tensor(inputs, 3)?;
    let (a_s, a_sdt) = scale_values(cx, cx.tensor(inputs, 1)?, "a_scale")?;
    let (b_s, _) = scale_values(cx, cx.tensor(inputs, 4)?, "b_scale")?;
    let (y_s, _) = scale_values(cx, cx.tensor(inputs, 6)?, "y_scale")?;
    let y_zp_t = cx.opt_tensor(inputs, 7)?;
    let mut x = int8_as_f64(cx, a, "a")?;
    let mut w = int8_as_f64(cx, b, "b")?;
    sub_zero_point(cx, &mut x, cx.opt_tensor(inputs, 2)?, a.dtype(), true, "a")?;
    sub_zero_point(cx, &mut w, cx.opt_tensor(inputs, 5)?, b.dtype(), false, "b")?;
    let acc = matmul_arrays(&CowArray::from(x.view()), &CowArray::from(w.view())).map_err(|e| cx.err(e))?;
    let shape = acc.shape().to_vec();
    let n = *shape.last().unwrap_or(&1);
    let m = if shape.len() >= 2 { shape[shape.len() - 2] } else { 1 };
    if y_s.len() != 1 {
        return Err(cx.err("y_scale must be a scalar"));
    }
    if !(a_s.len() == 1 || a_s.len() == m) || !(b_s.len() == 1 || b_s.len() == n) {
        return Err(cx.err("a_scale / b_scale must be scalars or per-row / per-column vectors"));
    }
    let out_dt = y_zp_t.map_or(a.dtype(), |t| t.dtype());
    let yzp = single_zp(cx, y_zp_t, "y_zero_point")?;
    let accv: Vec<f64> = acc.iter().copied().collect();
    let mult = |i: usize| -> f64 {
        let col = i % n.max(1);
        let row = (i / n.max(1)) % m.max(1);
        let av = a_s[if a_s.len() == 1 { 0 } else { row }];
        let bv = b_s[if b_s.len() == 1 { 0 } else { col }];
        round_to(a_sdt, round_to(a_sdt, av * bv) / y_s[0]) as f64
    };
    Ok(vec![requantize(cx, &accv, mult, yzp, out_dt, &shape)?.into()])
}

/// Integer conv in f64 (exact for 8-bit data): (x - x_zp) * (w - w_zp[m]) summed, plus bias.
fn int_conv(
    cx: &Ctx,
    x: &Tensor,
    xzp: Option<&Tensor>,
    w: &Tensor,
    wzp: Option<&Tensor>,
    bias: Option<&Tensor>,
) -> Result<(Vec<f64>, Vec<usize>)> {
    let mut xf = int8_as_f64(cx, x, "x")?;
    let mut wf = int8_as_f64(cx, w, "w")?;
    if let Some(z) = xzp
        && z.len() != 1
    {
        return Err(cx.err("x_zero_point must be a scalar"));
    }
    sub_zero_point(cx, &mut xf, xzp, x.dtype(), false, "x")?;
    if let Some(z) = wzp {
        let m = wf.shape().first().copied().unwrap_or(0);
        let zv = int8_as_f64(cx, z, "w_zero_point")?;
        if z.dtype() != w.dtype() {
            return Err(cx.err("w_zero_point type differs from w"));
        }
        let zv: Vec<f64> = zv.iter().copied().collect();
        if zv.len() != 1 && zv.len() != m {
            return Err(cx.err(format!("w_zero_point must have 1 or {m} values")));
        }
        let per = wf.len() / m.max(1);
        if let Some(s) = wf.as_slice_mut() {
            for (i, v) in s.iter_mut().enumerate() {
                *v -= zv[if zv.len() == 1 { 0 } else { i / per.max(1) }];
            }
        }
    }
    let b: Option<Vec<f64>> = match bias {
        None => None,
        Some(t) => Some(t.to_f64_vec().ok_or_else(|| cx.err("B must be an int32 tensor"))?),
    };
    let xs = xf.shape().to_vec();
    let ws = wf.shape().to_vec();
    let xc = xf.as_standard_layout();
    let wc = wf.as_standard_layout();
    conv_with_attrs(cx, xc.as_slice().unwrap_or(&[]), &xs, wc.as_slice().unwrap_or(&[]), &ws, b.as_deref())
}

fn conv_integer(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = cx.tensor(inputs, 0)?;
    let w = cx.tensor(inputs, 1)?;
    let (y, shape) = int_conv(cx, x, cx.opt_tensor(inputs, 2)?, w, cx.opt_tensor(inputs, 3)?, None)?;
    let a = ArrayD::from_shape_vec(IxDyn(&shape), y.into_iter().map(|v| v as i32).collect())
        .map_err(|e| cx.err(e.to_string()))?;
    Ok(vec![Tensor::I32(a).into()])
}

fn qlinear_conv(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = cx.tensor(inputs, 0)?;
    let (x_s, x_sdt) = scale_values(cx, cx.tensor(inputs, 1)?, "x_scale")?;
    let w = cx.tensor(inputs, 3)?;
    let (w_s, _) = scale_values(cx, cx.tensor(inputs, 4)?, "w_scale")?;
    let (y_s, _) = scale_values(cx, cx.tensor(inputs, 6)?, "y_scale")?;
    let y_zp_t = cx.opt_tensor(inputs, 7)?;
    let (acc, shape) =
        int_conv(cx, x, cx.opt_tensor(inputs, 2)?, w, cx.opt_tensor(inputs, 5)?, cx.opt_tensor(inputs, 8)?)?;
    let m = shape.get(1).copied().unwrap_or(1);
    let os: usize = shape[2..].iter().product();
    if x_s.len() != 1 || y_s.len() != 1 || !(w_s.len() == 1 || w_s.len() == m) {
        return Err(cx.err("x_scale / y_scale must be scalars and w_scale a scalar or per-channel"));
    }
    let out_dt = y_zp_t.map_or(x.dtype(), |t| t.dtype());
    let yzp = single_zp(cx, y_zp_t, "y_zero_point")?;
    let mult = |i: usize| -> f64 {
        let mi = (i / os.max(1)) % m.max(1);
        let wv = w_s[if w_s.len() == 1 { 0 } else { mi }];
        round_to(x_sdt, round_to(x_sdt, x_s[0] * wv) / y_s[0]) as f64
    };
    Ok(vec![requantize(cx, &acc, mult, yzp, out_dt, &shape)?.into()])
}

// ---------------------------------------------------------------------------------------------
// com.microsoft MatMulNBits
// ---------------------------------------------------------------------------------------------

/// Dequantizes MatMulNBits' packed B into a row-major [N, K] f32 matrix.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dequant_nbits(
    b: &[u8],
    n: usize,
    k: usize,
    bits: usize,
    block: usize,
    scales: &[f32],
    zp_packed: Option<&[u8]>,
    zp_float: Option<&[f32]>,
    g_idx: Option<&[i64]>,
) -> Vec<f32> {
    let nb = k.div_ceil(block);
    let blob = block * bits / 8;
    let zp_stride = (nb * bits).div_ceil(8);
    let mask = ((1u16 << bits) - 1) as u8;
    let def_zp = (1u32 << (bits - 1)) as f32;
    let mut out = vec![0f32; n * k];
    out.par_chunks_mut(k.max(1)).enumerate().for_each(|(ni, row)| {
        for (ki, o) in row.iter_mut().enumerate() {
            let (bl, j) = (ki / block, ki % block);
            let byte = b[(ni * nb + bl) * blob + j * bits / 8];
            let q = ((byte >> ((j * bits) % 8)) & mask) as f32;
            let sb = g_idx.map_or(bl, |g| g[ki].clamp(0, nb as i64 - 1) as usize);
            let zp = if let Some(z) = zp_float {
                z[ni * nb + sb]
            } else if let Some(z) = zp_packed {
                let bitpos = sb * bits;
                ((z[ni * zp_stride + bitpos / 8] >> (bitpos % 8)) & mask) as f32
            } else {
                def_zp
            };
            *o = (q - zp) * scales[ni * nb + sb];
        }
    });
    out
}

/// What a dequantised MatMulNBits weight is cached under: a 128-bit fingerprint of every input
/// byte that defines it, and its geometry.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct DequantKey {
    fp: (u64, u64),
    n: usize,
    k: usize,
    bits: usize,
    block: usize,
}

/// Two independent 64-bit multiplicative hashes over the parts, each part's length mixed in.
fn fingerprint(parts: &[&[u8]]) -> (u64, u64) {
    let (mut a, mut b) = (0xcbf2_9ce4_8422_2325u64, 0x9e37_79b9_7f4a_7c15u64);
    let mut mix = |w: u64| {
        a = (a ^ w).wrapping_mul(0x0000_0100_0000_01b3);
        b = (b.rotate_left(23) ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd);
    };
    for p in parts {
        mix(p.len() as u64);
        let mut chunks = p.chunks_exact(8);
        for c in &mut chunks {
            mix(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        mix(u64::from_le_bytes(tail));
    }
    (a ^ (a >> 29), b ^ (b >> 31))
}

/// Dequantised weights kept for the life of the process, up to this many f32 values in all.
const DEQUANT_CACHE_MAX: usize = 1 << 29;

type DequantCache = std::sync::Mutex<(usize, std::collections::HashMap<DequantKey, std::sync::Arc<Vec<f32>>>)>;

fn dequant_cache() -> &'static DequantCache {
    static CACHE: std::sync::OnceLock<DequantCache> = std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn dequant_cache_get(key: &DequantKey) -> Option<std::sync::Arc<Vec<f32>>> {
    dequant_cache().lock().ok()?.1.get(key).cloned()
}

fn dequant_cache_put(key: DequantKey, w: std::sync::Arc<Vec<f32>>) {
    if let Ok(mut c) = dequant_cache().lock() {
        if c.0 + w.len() > DEQUANT_CACHE_MAX {
            c.1.clear();
            c.0 = 0;
        }
        c.0 += w.len();
        c.1.insert(key, w);
    }
}

fn matmul_nbits(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let a = cx.tensor(inputs, 0)?;
    let adt = a.dtype();
    let av = <f32 as Real>::arr(a).ok_or_else(|| cx.err(format!("A must be a float tensor, got {adt}")))?;
    let get = |name: &str| -> Result<usize> {
        usize::try_from(cx.attr_int(name, -1))
            .map_err(|_| cx.err(format!("attribute {name} is required and must be >= 0")))
    };
    let (k, n, block) = (get("K")?, get("N")?, get("block_size")?);
    let bits = usize::try_from(cx.attr_int("bits", 4)).unwrap_or(0);
    if !matches!(bits, 2 | 4 | 8) || block == 0 || (block * bits) % 8 != 0 {
        return Err(cx.err(format!("unsupported bits {bits} / block_size {block}")));
    }
    let ashape = av.shape().to_vec();
    if ashape.is_empty() || ashape[ashape.len() - 1] != k {
        return Err(cx.err(format!("A {ashape:?} must end in K = {k}")));
    }
    let nb = k.div_ceil(block);
    let blob = block * bits / 8;
    let braw: std::borrow::Cow<[u8]> = match cx.tensor(inputs, 1)? {
        Tensor::U8(b) => match b.as_slice() {
            Some(sl) => std::borrow::Cow::Borrowed(sl),
            None => std::borrow::Cow::Owned(b.iter().copied().collect()),
        },
        Tensor::I32(b) => std::borrow::Cow::Owned(b.iter().flat_map(|v| v.to_le_bytes()).collect()),
        t => return Err(cx.err(format!("B must be uint8, got {}", t.dtype()))),
    };
    let need = n.checked_mul(nb).and_then(|v| v.checked_mul(blob)).ok_or_else(|| cx.err("N * K is too large"))?;
    if braw.len() < need {
        return Err(cx.err(format!("B holds {} bytes, expected {need}", braw.len())));
    }
    let scales = float_values(cx, cx.tensor(inputs, 2)?, "scales")?;
    if scales.len() != n * nb {
        return Err(cx.err(format!("scales has {} values, expected {}", scales.len(), n * nb)));
    }
    let (zp_packed, zp_float) = match cx.opt_tensor(inputs, 3)? {
        None => (None, None),
        Some(Tensor::U8(z)) => {
            let v: Vec<u8> = z.iter().copied().collect();
            if v.len() < n * (nb * bits).div_ceil(8) {
                return Err(cx.err("zero_points is too short"));
            }
            (Some(v), None)
        }
        Some(t) => {
            let v = float_values(cx, t, "zero_points")?;
            if v.len() != n * nb {
                return Err(cx.err(format!("zero_points has {} values, expected {}", v.len(), n * nb)));
            }
            (None, Some(v))
        }
    };
    let g_idx = match cx.opt_tensor(inputs, 4)? {
        Some(t) if !t.is_empty() => {
            let g = cx.ints(inputs, 4)?;
            if g.len() != k {
                return Err(cx.err("g_idx must have K values"));
            }
            Some(g)
        }
        _ => None,
    };
    let bias = match cx.opt_tensor(inputs, 5)? {
        Some(t) => {
            let v = float_values(cx, t, "bias")?;
            if v.len() != n {
                return Err(cx.err(format!("bias has {} values, expected {n}", v.len())));
            }
            Some(v)
        }
        None => None,
    };
    // The dequantised weight, from the cache when this exact B / scales / zero points were seen
    // before (the same constant weight on every run of a model, every token of a decode loop).
    let key = {
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let zf = zp_float.as_deref().map(f32s).unwrap_or_default();
        let gi: Vec<u8> = g_idx.as_deref().unwrap_or(&[]).iter().flat_map(|x| x.to_le_bytes()).collect();
        let parts: [&[u8]; 5] = [&braw, &f32s(&scales), zp_packed.as_deref().unwrap_or(&[]), &zf, &gi];
        DequantKey { fp: fingerprint(&parts), n, k, bits, block }
    };
    let wdq = match dequant_cache_get(&key) {
        Some(w) => w,
        None => {
            let w = std::sync::Arc::new(dequant_nbits(
                &braw,
                n,
                k,
                bits,
                block,
                &scales,
                zp_packed.as_deref(),
                zp_float.as_deref(),
                g_idx.as_deref(),
            ));
            dequant_cache_put(key, w.clone());
            w
        }
    };
    let m: usize = ashape[..ashape.len() - 1].iter().product();
    let ac = av.as_standard_layout();
    let asl = ac.as_slice().unwrap_or(&[]);
    let mut y = vec![0f32; m * n];
    if let Some(b) = &bias {
        for row in y.chunks_mut(n.max(1)) {
            row.copy_from_slice(b);
        }
    }
    // y (m×n) = A (m×k) · Wᵀ (W is n×k row-major).
    let g = Gemm { m, n, k, ars: k, acs: 1, brs: 1, bcs: k, ldc: n, acc: bias.is_some(), par: true };
    gemm_strided(&g, asl, &wdq, &mut y, 1.0);
    let mut oshape = ashape[..ashape.len() - 1].to_vec();
    oshape.push(n);
    Ok(vec![float_out(cx, adt, &oshape, y)?.into()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float8_round_trips_and_rounds_to_even() {
        for dt in [DType::F8E4M3FN, DType::F8E4M3FNUZ, DType::F8E5M2, DType::F8E5M2FNUZ, DType::F4E2M1] {
            let m = mini_of(dt).unwrap();
            let t = m.table();
            for &(v, c) in &t {
                assert_eq!(m.encode(v, &t, true), c, "{dt} {v}");
                assert_eq!(m.decode(c), v);
            }
        }
        let m = mini_of(DType::F8E4M3FN).unwrap();
        let t = m.table();
        assert_eq!(m.decode(m.encode(1000.0, &t, true)), 448.0);
        assert!(m.decode(m.encode(1000.0, &t, false)).is_nan());
        // 1.0625 is halfway between 1.0 (even mantissa) and 1.125: rounds to 1.0.
        assert_eq!(m.decode(m.encode(1.0625, &t, true)), 1.0);
        assert_eq!(m.decode(m.encode(-3.0, &t, true)), -3.0);
        let f4 = mini_of(DType::F4E2M1).unwrap();
        let t4 = f4.table();
        assert_eq!(t4.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]);
        assert_eq!(f4.decode(f4.encode(100.0, &t4, true)), 6.0);
    }

    #[test]
    fn packing_is_low_nibble_first() {
        assert_eq!(pack_codes(DType::I4, &[0x1, 0x2, 0x3]), vec![0x21, 0x03]);
        assert_eq!(pack_codes(DType::U2, &[1, 2, 3, 0, 1]), vec![0b00_11_10_01, 0b01]);
        assert_eq!(unpack_codes(DType::I4, &[0x21, 0x03], 3).unwrap(), vec![1, 2, 3]);
        assert_eq!(code_value(DType::I4, 0xF), -1.0);
        assert_eq!(code_value(DType::I2, 0x2), -2.0);
    }

    #[test]
    fn matmul_nbits_dequantizes_blocks() {
        // N = 2, K = 4, 4 bits, block 2: each row has 2 blocks of 2 codes (one byte each).
        let b = [0x21u8, 0x43, 0x8F, 0x00];
        let scales = [1.0f32, 2.0, 0.5, 1.0];
        // Default zero point 8.
        let w = dequant_nbits(&b, 2, 4, 4, 2, &scales, None, None, None);
        assert_eq!(w, vec![-7.0, -6.0, -10.0, -8.0, 3.5, 0.0, -8.0, -8.0]);
        // Packed zero points: row 0 blocks (1, 2) -> 0x21; row 1 blocks (0, 15) -> 0xF0.
        let zp = [0x21u8, 0xF0];
        let w = dequant_nbits(&b, 2, 4, 4, 2, &scales, Some(&zp), None, None);
        assert_eq!(w, vec![0.0, 1.0, 2.0, 4.0, 7.5, 4.0, -15.0, -15.0]);
        // 2 bits, block 4 (one byte per block): codes 1,2,3,0 from 0b00_11_10_01.
        let w = dequant_nbits(&[0b0011_1001], 1, 4, 2, 4, &[1.0], None, None, None);
        assert_eq!(w, vec![-1.0, 0.0, 1.0, -2.0]);
    }
}
