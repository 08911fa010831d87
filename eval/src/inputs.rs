//! Inputs for runs without data (seeded random tensors over the declared shapes, symbolic dims
//! bound by the caller) and output comparison (max |diff|, cosine similarity, argmax agreement).

use crate::error::{EvalError, Result};
use crate::value::{Tensor, Value};
use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use optc_ir::{DType, DimValue, Graph};
use std::collections::HashMap;

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit().max(1e-300), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// The concrete shape of graph input `name`, with symbolic dims taken from `dims`.
pub fn input_shape(g: &Graph, name: &str, dims: &HashMap<String, i64>) -> Result<(DType, Vec<usize>)> {
    let v =
        g.find_value(name).ok_or_else(|| EvalError::Input { name: name.into(), message: "no such input".into() })?;
    let err = |m: String| EvalError::Input { name: name.into(), message: m };
    let ty = g.value(v).ty.as_ref().ok_or_else(|| err("the input has no declared type".into()))?;
    let dtype =
        ty.elem().ok_or_else(|| err(format!("the input's type {ty} is not a tensor of a known element type")))?;
    let shape = ty.shape().ok_or_else(|| err("the input's rank is unknown; give the input as a .npy file".into()))?;
    let mut out = Vec::with_capacity(shape.len());
    for (i, d) in shape.iter().enumerate() {
        out.push(match &d.value {
            // Some exporters write -1 for a dynamic dim: it is bound like an unnamed one.
            DimValue::Known(k) if *k < 0 => match dims.get(&format!("{name}:{i}")) {
                Some(&k) => k as usize,
                None => return Err(err(format!("dim {i} is dynamic ({k}): bind it with --dim {name}:{i}=N"))),
            },
            DimValue::Known(k) => *k as usize,
            DimValue::Sym(s) => match dims.get(s) {
                Some(&k) => k as usize,
                None => return Err(err(format!("dim {i} is the symbol '{s}': bind it with --dim {s}=N"))),
            },
            DimValue::Unknown => match dims.get(&format!("{name}:{i}")) {
                Some(&k) => k as usize,
                None => return Err(err(format!("dim {i} is unknown: bind it with --dim {name}:{i}=N"))),
            },
        });
    }
    Ok((dtype, out))
}

/// Seeded random inputs for every graph input without an initializer: floats standard normal,
/// integers uniform in `[0, int_high)`, booleans fair coins.
pub fn random_inputs(
    g: &Graph,
    dims: &HashMap<String, i64>,
    seed: u64,
    int_high: i64,
) -> Result<HashMap<String, Value>> {
    let mut rng = Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B);
    let mut out = HashMap::new();
    for d in &g.inputs {
        let val = g.value(d.value);
        if val.init.is_some() {
            continue;
        }
        let (dtype, shape) = input_shape(g, &val.name, dims)?;
        let n: usize = shape.iter().product();
        let ix = IxDyn(&shape);
        let bad = |e: ndarray::ShapeError| EvalError::Other(e.to_string());
        let hi = int_high.max(1) as u64;
        let t = match dtype {
            DType::F32 => {
                Tensor::F32(ArrayD::from_shape_vec(ix, (0..n).map(|_| rng.normal() as f32).collect()).map_err(bad)?)
            }
            DType::F64 => Tensor::F64(ArrayD::from_shape_vec(ix, (0..n).map(|_| rng.normal()).collect()).map_err(bad)?),
            DType::F16 => Tensor::F16(
                ArrayD::from_shape_vec(ix, (0..n).map(|_| f16::from_f64(rng.normal())).collect()).map_err(bad)?,
            ),
            DType::BF16 => Tensor::BF16(
                ArrayD::from_shape_vec(ix, (0..n).map(|_| bf16::from_f64(rng.normal())).collect()).map_err(bad)?,
            ),
            DType::I64 => Tensor::I64(
                ArrayD::from_shape_vec(ix, (0..n).map(|_| (rng.next() % hi) as i64).collect()).map_err(bad)?,
            ),
            DType::I32 => Tensor::I32(
                ArrayD::from_shape_vec(ix, (0..n).map(|_| (rng.next() % hi) as i32).collect()).map_err(bad)?,
            ),
            DType::U8 => Tensor::U8(
                ArrayD::from_shape_vec(ix, (0..n).map(|_| (rng.next() % hi.min(256)) as u8).collect()).map_err(bad)?,
            ),
            DType::I8 => Tensor::I8(
                ArrayD::from_shape_vec(ix, (0..n).map(|_| (rng.next() % hi.min(128)) as i8).collect()).map_err(bad)?,
            ),
            DType::Bool => {
                Tensor::Bool(ArrayD::from_shape_vec(ix, (0..n).map(|_| rng.next() & 1 == 1).collect()).map_err(bad)?)
            }
            other => {
                return Err(EvalError::Input {
                    name: val.name.clone(),
                    message: format!("cannot make random {other} data; give the input as a .npy file"),
                });
            }
        };
        out.insert(val.name.clone(), Value::Tensor(t));
    }
    Ok(out)
}

/// How two outputs differ.
#[derive(Clone, Debug, PartialEq)]
pub struct Diff {
    pub max_abs: f64,
    /// max |a-b| / max |a| (0 when a is all zeros and equal).
    pub max_rel: f64,
    pub cosine: f64,
    /// Fraction of rows (along the last axis) whose argmax agrees.
    pub argmax_agree: f64,
    /// Elements where exactly one side is NaN, or infinities differ.
    pub nan_mismatch: usize,
    pub identical: bool,
}

impl Diff {
    /// Within `|a-b| <= atol + rtol*|a|` everywhere.
    pub fn within(&self, a: &Tensor, b: &Tensor, rtol: f64, atol: f64) -> bool {
        if self.identical {
            return true;
        }
        match (a.to_f64_vec(), b.to_f64_vec()) {
            (Some(x), Some(y)) => {
                self.nan_mismatch == 0
                    && x.iter()
                        .zip(&y)
                        .all(|(p, q)| (p.is_nan() && q.is_nan()) || p == q || (p - q).abs() <= atol + rtol * p.abs())
            }
            _ => false,
        }
    }
}

/// Compares two tensors of the same shape. Errors name the mismatch.
pub fn compare(a: &Tensor, b: &Tensor) -> std::result::Result<Diff, String> {
    if a.shape() != b.shape() {
        return Err(format!("shapes differ: {:?} vs {:?}", a.shape(), b.shape()));
    }
    if a.dtype() != b.dtype() {
        return Err(format!("dtypes differ: {} vs {}", a.dtype(), b.dtype()));
    }
    let identical = a == b || a.to_le_bytes() == b.to_le_bytes() && !matches!(a, Tensor::Str(_));
    let (Some(x), Some(y)) = (a.to_f64_vec(), b.to_f64_vec()) else {
        return Ok(Diff {
            max_abs: 0.0,
            max_rel: 0.0,
            cosine: 1.0,
            argmax_agree: 1.0,
            nan_mismatch: 0,
            identical: a == b,
        });
    };
    let (mut max_abs, mut max_a, mut dot, mut na, mut nb, mut nan) = (0f64, 0f64, 0f64, 0f64, 0f64, 0usize);
    for (&p, &q) in x.iter().zip(&y) {
        if p.is_nan() || q.is_nan() || p.is_infinite() || q.is_infinite() {
            if !(p.is_nan() && q.is_nan()) && p != q {
                nan += 1;
            }
            continue;
        }
        max_abs = max_abs.max((p - q).abs());
        max_a = max_a.max(p.abs());
        dot += p * q;
        na += p * p;
        nb += q * q;
    }
    let cosine = if na == 0.0 && nb == 0.0 {
        1.0
    } else if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    };
    let shape = a.shape();
    let last = shape.last().copied().unwrap_or(1).max(1);
    let rows = x.len() / last;
    let argmax =
        |v: &[f64]| v.iter().enumerate().fold((0, f64::NEG_INFINITY), |m, (i, &e)| if e > m.1 { (i, e) } else { m }).0;
    let agree =
        (0..rows).filter(|r| argmax(&x[r * last..(r + 1) * last]) == argmax(&y[r * last..(r + 1) * last])).count();
    Ok(Diff {
        max_abs,
        max_rel: if max_a > 0.0 { max_abs / max_a } else { max_abs },
        cosine,
        argmax_agree: if rows == 0 { 1.0 } else { agree as f64 / rows as f64 },
        nan_mismatch: nan,
        identical,
    })
}
