//! Kernels: losses (NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss), signal helpers
//! (HannWindow, HammingWindow, BlackmanWindow, MelWeightMatrix), NonMaxSuppression and
//! MaxUnpool; `com.microsoft::Gelu`.
//!
//! These ops are rare in inference graphs and small in work, so they compute in f64 and cast
//! the result to the output type; the results follow the onnx reference implementation.

use super::elementwise::cast;
use super::{Ctx, one};
use crate::error::Result;
use crate::value::{Tensor, Value};
use ndarray::{ArrayD, IxDyn};
use optc_ir::AttrList;
use optc_ir::{DType, Op};

pub fn run(cx: &Ctx, inputs: &[Option<&Value>]) -> Option<Result<Vec<Value>>> {
    match &cx.node.op {
        Op::NegativeLogLikelihoodLoss => Some(nll(cx, inputs)),
        Op::SoftmaxCrossEntropyLoss => Some(softmax_cross_entropy(cx, inputs)),
        Op::HannWindow | Op::HammingWindow | Op::BlackmanWindow => one_r(window(cx, inputs)),
        Op::MelWeightMatrix => one_r(mel_weight_matrix(cx, inputs)),
        Op::NonMaxSuppression => one_r(non_max_suppression(cx, inputs)),
        Op::MaxUnpool => one_r(max_unpool(cx, inputs)),
        Op::Opaque { domain, op_type } if domain == "com.microsoft" && op_type == "Gelu" => one_r(ms_gelu(cx, inputs)),
        _ => None,
    }
}

/// `com.microsoft::Gelu`: `0.5 x (1 + erf(x / sqrt 2))`, what `fuse-act` emits below opset 20.
fn ms_gelu(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let (x, shape, dtype) = f64_input(cx, inputs, 0)?;
    let y = x.iter().map(|&v| 0.5 * v * (1.0 + libm::erf(v * std::f64::consts::FRAC_1_SQRT_2))).collect();
    to_dtype(cx, &shape, y, dtype)
}

fn one_r(r: Result<Tensor>) -> Option<Result<Vec<Value>>> {
    match r {
        Ok(t) => one(t),
        Err(e) => Some(Err(e)),
    }
}

fn f64_input(cx: &Ctx, inputs: &[Option<&Value>], i: usize) -> Result<(Vec<f64>, Vec<usize>, DType)> {
    let t = cx.tensor(inputs, i)?;
    let v = t.to_f64_vec().ok_or_else(|| cx.err(format!("input {i} must be numeric, not {}", t.dtype())))?;
    Ok((v, t.shape(), t.dtype()))
}

fn to_dtype(cx: &Ctx, shape: &[usize], data: Vec<f64>, dtype: DType) -> Result<Tensor> {
    let a = ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| cx.err(e.to_string()))?;
    cast(&Tensor::F64(a), dtype).map_err(|e| cx.err(e))
}

/// The negative log-likelihood of `logp` ([N, C, d...]) at `target` ([N, d...]), weighted and
/// reduced as NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss define.
#[allow(clippy::too_many_arguments)]
fn nll_core(
    cx: &Ctx,
    logp: &[f64],
    shape: &[usize],
    target: &[i64],
    target_shape: &[usize],
    weight: Option<&[f64]>,
    reduction: &str,
    ignore_index: Option<i64>,
) -> Result<(Vec<usize>, Vec<f64>)> {
    if shape.len() < 2 {
        return Err(cx.err(format!("input must have rank 2 or more, has shape {shape:?}")));
    }
    let (n, c) = (shape[0], shape[1]);
    let d: usize = shape[2..].iter().product();
    let mut want = vec![n];
    want.extend_from_slice(&shape[2..]);
    if target_shape != want.as_slice() {
        return Err(cx.err(format!("target shape {target_shape:?} does not match input shape {shape:?}")));
    }
    if let Some(w) = weight
        && w.len() != c
    {
        return Err(cx.err(format!("weight has {} elements, the input has {c} classes", w.len())));
    }
    let mut loss = vec![0.0; n * d];
    let mut wsum = 0.0;
    for i in 0..n {
        for j in 0..d {
            let t = target[i * d + j];
            if Some(t) == ignore_index {
                continue;
            }
            let class = usize::try_from(t)
                .ok()
                .filter(|&k| k < c)
                .ok_or_else(|| cx.err(format!("target {t} is outside [0, {c})")))?;
            let w = weight.map_or(1.0, |w| w[class]);
            loss[i * d + j] = -logp[(i * c + class) * d + j] * w;
            wsum += w;
        }
    }
    Ok(match reduction {
        "none" => (target_shape.to_vec(), loss),
        "sum" => (vec![], vec![loss.iter().sum()]),
        "mean" => (vec![], vec![loss.iter().sum::<f64>() / wsum]),
        r => return Err(cx.err(format!("unknown reduction '{r}'"))),
    })
}

fn ignore_index(cx: &Ctx) -> Option<i64> {
    cx.node.attrs.get_int("ignore_index")
}

fn nll(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let (x, shape, dtype) = f64_input(cx, inputs, 0)?;
    let target_t = cx.tensor(inputs, 1)?;
    let target = cx.ints(inputs, 1)?;
    let weight = match cx.opt_tensor(inputs, 2)? {
        Some(w) => Some(w.to_f64_vec().ok_or_else(|| cx.err("weight must be numeric"))?),
        None => None,
    };
    let reduction = cx.attr_string("reduction", "mean");
    let (oshape, out) =
        nll_core(cx, &x, &shape, &target, &target_t.shape(), weight.as_deref(), &reduction, ignore_index(cx))?;
    Ok(vec![Value::Tensor(to_dtype(cx, &oshape, out, dtype)?)])
}

fn softmax_cross_entropy(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let (x, shape, dtype) = f64_input(cx, inputs, 0)?;
    if shape.len() < 2 {
        return Err(cx.err(format!("scores must have rank 2 or more, has shape {shape:?}")));
    }
    let (n, c) = (shape[0], shape[1]);
    let d: usize = shape[2..].iter().product();
    // log_softmax over axis 1.
    let mut logp = vec![0.0; x.len()];
    for i in 0..n {
        for j in 0..d {
            let at = |k: usize| (i * c + k) * d + j;
            let max = (0..c).map(|k| x[at(k)]).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..c).map(|k| (x[at(k)] - max).exp()).sum();
            let lse = max + sum.ln();
            for k in 0..c {
                logp[at(k)] = x[at(k)] - lse;
            }
        }
    }
    let labels_t = cx.tensor(inputs, 1)?;
    let labels = cx.ints(inputs, 1)?;
    let weight = match cx.opt_tensor(inputs, 2)? {
        Some(w) => Some(w.to_f64_vec().ok_or_else(|| cx.err("weights must be numeric"))?),
        None => None,
    };
    let reduction = cx.attr_string("reduction", "mean");
    let (oshape, out) =
        nll_core(cx, &logp, &shape, &labels, &labels_t.shape(), weight.as_deref(), &reduction, ignore_index(cx))?;
    let mut outs = vec![Value::Tensor(to_dtype(cx, &oshape, out, dtype)?)];
    if cx.node.outputs().len() > 1 {
        outs.push(Value::Tensor(to_dtype(cx, &shape, logp, dtype)?));
    }
    Ok(outs)
}

fn output_datatype(cx: &Ctx, default: DType) -> Result<DType> {
    match cx.node.attrs.get_int("output_datatype") {
        None => Ok(default),
        Some(code) => i32::try_from(code)
            .ok()
            .and_then(DType::from_onnx)
            .ok_or_else(|| cx.err(format!("unknown output_datatype {code}"))),
    }
}

fn scalar_int(cx: &Ctx, inputs: &[Option<&Value>], i: usize) -> Result<i64> {
    cx.ints(inputs, i)?.first().copied().ok_or_else(|| cx.err(format!("input {i} must hold one value")))
}

fn scalar_f64(cx: &Ctx, inputs: &[Option<&Value>], i: usize) -> Result<f64> {
    let (v, _, _) = f64_input(cx, inputs, i)?;
    v.first().copied().ok_or_else(|| cx.err(format!("input {i} must hold one value")))
}

fn window(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let size = scalar_int(cx, inputs, 0)?;
    let size = usize::try_from(size).map_err(|_| cx.err(format!("size {size} is negative")))?;
    let periodic = cx.attr_int("periodic", 1) != 0;
    let n1 = if periodic { size as f64 } else { size as f64 - 1.0 };
    let tau = 2.0 * std::f64::consts::PI;
    let data: Vec<f64> = (0..size)
        .map(|i| {
            let x = i as f64 * tau / n1;
            match cx.node.op {
                Op::HannWindow => 0.5 - 0.5 * x.cos(),
                Op::HammingWindow => {
                    let alpha = 25.0 / 46.0;
                    alpha - (1.0 - alpha) * x.cos()
                }
                _ => 0.42 - 0.5 * x.cos() + 0.08 * (2.0 * x).cos(),
            }
        })
        .collect();
    to_dtype(cx, &[size], data, output_datatype(cx, DType::F32)?)
}

fn mel_weight_matrix(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let mel_bins = scalar_int(cx, inputs, 0)?;
    let dft_length = scalar_int(cx, inputs, 1)?;
    let sample_rate = scalar_int(cx, inputs, 2)?;
    let lower = scalar_f64(cx, inputs, 3)?;
    let upper = scalar_f64(cx, inputs, 4)?;
    if mel_bins <= 0 || dft_length <= 0 || sample_rate <= 0 {
        return Err(cx.err("num_mel_bins, dft_length and sample_rate must be positive"));
    }
    let (mel_bins, dft_length) = (mel_bins as usize, dft_length as usize);
    let spec_bins = dft_length / 2 + 1;
    let mel = |hz: f64| 2595.0 * (1.0 + hz / 700.0).log10();
    let (low_mel, high_mel) = (mel(lower), mel(upper));
    let step = (high_mel - low_mel) / (mel_bins + 2) as f64;
    let bins: Vec<i64> = (0..mel_bins + 2)
        .map(|i| {
            let hz = 700.0 * (10f64.powf((i as f64 * step + low_mel) / 2595.0) - 1.0);
            (((dft_length + 1) as f64 * hz) / sample_rate as f64).floor() as i64
        })
        .collect();
    let mut out = vec![0.0; spec_bins * mel_bins];
    let mut set = |j: i64, i: usize, v: f64| -> Result<()> {
        let j = usize::try_from(j)
            .ok()
            .filter(|&j| j < spec_bins)
            .ok_or_else(|| cx.err(format!("frequency bin {j} falls outside the {spec_bins} spectrogram bins")))?;
        out[j * mel_bins + i] = v;
        Ok(())
    };
    for i in 0..mel_bins {
        let (lo, center, hi) = (bins[i], bins[i + 1], bins[i + 2]);
        let low_to_center = center - lo;
        if low_to_center == 0 {
            set(center, i, 1.0)?;
        } else {
            for j in lo..=center {
                set(j, i, (j - lo) as f64 / low_to_center as f64)?;
            }
        }
        let center_to_high = hi - center;
        if center_to_high > 0 {
            for j in center..hi {
                set(j, i, (hi - j) as f64 / center_to_high as f64)?;
            }
        }
    }
    to_dtype(cx, &[spec_bins, mel_bins], out, output_datatype(cx, DType::F32)?)
}

fn non_max_suppression(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let (boxes, bshape, _) = f64_input(cx, inputs, 0)?;
    let (scores, sshape, _) = f64_input(cx, inputs, 1)?;
    if bshape.len() != 3 || bshape[2] != 4 {
        return Err(cx.err(format!("boxes must have shape [batches, boxes, 4], has {bshape:?}")));
    }
    if sshape.len() != 3 || sshape[0] != bshape[0] || sshape[2] != bshape[1] {
        return Err(cx.err(format!("scores shape {sshape:?} does not match boxes shape {bshape:?}")));
    }
    let max_out = match cx.opt_tensor(inputs, 2)? {
        Some(_) => scalar_int(cx, inputs, 2)?.max(0) as usize,
        None => 0,
    };
    let iou_threshold = match cx.opt_tensor(inputs, 3)? {
        Some(_) => scalar_f64(cx, inputs, 3)?,
        None => 0.0,
    };
    let score_threshold = match cx.opt_tensor(inputs, 4)? {
        Some(_) => Some(scalar_f64(cx, inputs, 4)?),
        None => None,
    };
    let center = cx.attr_int("center_point_box", 0) != 0;
    let (batches, nboxes, classes) = (bshape[0], bshape[1], sshape[1]);
    // Corners (y1, x1, y2, x2) with min <= max.
    let corners = |b: usize, i: usize| -> [f64; 4] {
        let p = &boxes[(b * nboxes + i) * 4..(b * nboxes + i) * 4 + 4];
        if center {
            let (xc, yc, w, h) = (p[0], p[1], p[2], p[3]);
            [yc - h / 2.0, xc - w / 2.0, yc + h / 2.0, xc + w / 2.0]
        } else {
            [p[0].min(p[2]), p[1].min(p[3]), p[0].max(p[2]), p[1].max(p[3])]
        }
    };
    let suppress = |a: [f64; 4], b: [f64; 4]| -> bool {
        let ymin = a[0].max(b[0]);
        let xmin = a[1].max(b[1]);
        let ymax = a[2].min(b[2]);
        let xmax = a[3].min(b[3]);
        if xmax <= xmin || ymax <= ymin {
            return false;
        }
        let inter = (xmax - xmin) * (ymax - ymin);
        let area_a = (a[2] - a[0]) * (a[3] - a[1]);
        let area_b = (b[2] - b[0]) * (b[3] - b[1]);
        let union = area_a + area_b - inter;
        if area_a <= 0.0 || area_b <= 0.0 || union <= 0.0 {
            return false;
        }
        inter / union > iou_threshold
    };
    let mut selected_all: Vec<i64> = Vec::new();
    for b in 0..batches {
        for c in 0..classes {
            let s = &scores[(b * classes + c) * nboxes..(b * classes + c + 1) * nboxes];
            let mut cand: Vec<usize> = (0..nboxes).filter(|&i| score_threshold.is_none_or(|t| s[i] > t)).collect();
            // Highest score first; equal scores keep the lower index first.
            cand.sort_by(|&i, &j| s[j].total_cmp(&s[i]).then(i.cmp(&j)));
            let mut selected: Vec<usize> = Vec::new();
            for i in cand {
                if selected.len() >= max_out {
                    break;
                }
                let bi = corners(b, i);
                if selected.iter().all(|&k| !suppress(bi, corners(b, k))) {
                    selected.push(i);
                }
            }
            for i in selected {
                selected_all.extend([b as i64, c as i64, i as i64]);
            }
        }
    }
    let n = selected_all.len() / 3;
    let a = ArrayD::from_shape_vec(IxDyn(&[n, 3]), selected_all).map_err(|e| cx.err(e.to_string()))?;
    Ok(Tensor::I64(a))
}

fn max_unpool(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    let indices = cx.ints(inputs, 1)?;
    let xshape = x.shape();
    if xshape.len() < 3 {
        return Err(cx.err(format!("X must have rank 3 or more, has shape {xshape:?}")));
    }
    let spatial = xshape.len() - 2;
    let out_shape: Vec<usize> = match cx.opt_tensor(inputs, 2)? {
        Some(_) => cx
            .ints(inputs, 2)?
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| cx.err(format!("output_shape has negative dim {d}"))))
            .collect::<Result<_>>()?,
        None => {
            let kernel = cx.attr_ints("kernel_shape").ok_or_else(|| cx.err("kernel_shape is required"))?;
            let strides = cx.attr_ints("strides").unwrap_or_else(|| vec![1; spatial]);
            let pads = cx.attr_ints("pads").unwrap_or_else(|| vec![0; 2 * spatial]);
            if kernel.len() != spatial || strides.len() != spatial || pads.len() != 2 * spatial {
                return Err(cx.err("kernel_shape, strides and pads must match the spatial rank"));
            }
            let mut s = xshape[..2].to_vec();
            for i in 0..spatial {
                let d = (xshape[i + 2] as i64 - 1) * strides[i] - pads[i] - pads[i + spatial] + kernel[i];
                s.push(usize::try_from(d).map_err(|_| cx.err(format!("output dim {i} would be {d}")))?);
            }
            s
        }
    };
    let values = x.to_f64_vec().ok_or_else(|| cx.err("X must be numeric"))?;
    if indices.len() != values.len() {
        return Err(cx.err("I must have as many elements as X"));
    }
    let total: usize = out_shape.iter().product();
    let mut out = vec![0.0; total];
    for (&i, &v) in indices.iter().zip(&values) {
        let i = usize::try_from(i)
            .ok()
            .filter(|&i| i < total)
            .ok_or_else(|| cx.err(format!("index {i} is outside the output of {total} elements")))?;
        out[i] = v;
    }
    to_dtype(cx, &out_shape, out, x.dtype())
}
