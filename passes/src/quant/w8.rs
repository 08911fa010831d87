//! `quant-w8`: static W8A8 quantisation in QDQ form, placed the way onnxruntime's
//! `quantize_static(quant_format=QDQ)` places it so that onnxruntime's QDQ fusions fire.
//!
//! Weights: the constant float32 weight of a Conv (axis 0), ConvTranspose (group 1, axis 1),
//! MatMul (`[K, N]`, axis 1) or Gemm (axis 0 with `transB = 1`, else 1) becomes an int8
//! initializer, symmetric per output channel (`[-127, 127]`, scale `max|w| / 127`), feeding the
//! node through a per-axis `DequantizeLinear`; `per_channel=false` gives one scale per tensor.
//! The bias of a Conv/ConvTranspose, or the `[N]` C of a Gemm (times beta, beta then set to 1),
//! becomes int32 with scale `x_scale * w_scale` per channel and zero point 0.
//!
//! Activations: per-tensor, asymmetric (`act=int8`, quantize_static's default, or `uint8`),
//! as a `QuantizeLinear -> DequantizeLinear` pair after the producing node, one pair per node
//! that reads the tensor, each with its own scale and zero-point initializers (`split=true`;
//! onnxruntime fuses a QDQ group into its integer kernel only when the quantised tensor has one
//! reader, and would merge pairs that share initializers; `split=false` gives one pair that
//! every reader shares, as quantize_static does). Graph outputs stay float, except a Softmax
//! output read by nothing else, which quantize_static quantises as well. Which tensors:
//! - Conv, ConvTranspose, MatMul, Gemm: the activation inputs and the output (a MatMul input
//!   that is not a constant, as in attention, is an activation too);
//! - Add, Mul, Concat, Sigmoid, Softmax (output range fixed to `[0, 1]`), GlobalAveragePool,
//!   LeakyRelu: every float input and output; their float constant inputs are quantised as
//!   activations are (per tensor, asymmetric over the constant's min/max, the activation
//!   type), so an all-positive scale vector uses all 256 codes;
//! - Relu and Clip (`min <= 0`) after a quantised tensor read by nothing else are removed and
//!   the tensor takes their output's range (the quantiser's saturation does the clamping, as
//!   onnxruntime's `QDQRemovableActivation`); otherwise their input takes their output's range;
//! - Reshape, Transpose, Squeeze, Unsqueeze, Flatten, MaxPool, AveragePool, Slice and Resize
//!   of a quantised tensor: the output is quantised with the input's scale and zero point;
//! - BatchNormalization, InstanceNormalization, LayerNormalization: input and output (their
//!   parameters stay float).
//!
//! Other ops (Gather, Where, Pad, Split, Div, Sub, ...) stay float, as do nodes
//! matched by `exclude` (name substrings) or `exclude_ops` (op types), and Conv/MatMul/Gemm
//! nodes whose weight has fewer than `min_size` elements. Subgraphs are left alone.
//!
//! Ranges come from running the model on the context's calibration inputs (`--calib`; seeded
//! random inputs with a warning without them) through the evaluator's observer hook, which
//! keeps a running min/max per tensor and, for `calib=percentile|entropy`, a histogram over
//! `[-t, t]` that grows by whole bins on both sides when a run exceeds `t` (onnxruntime's
//! `HistogramCollector`; pairs of bins merge when it would pass twice `bins`): no activation
//! is kept. `percentile` cuts `(100 - percentile) / 2` percent on each side; `entropy` is
//! onnxruntime's KL-divergence search over symmetric thresholds (`bins` bins, `qbins`
//! quantised bins). Ranges always include 0.
//!
//! `pof2=true` rounds every scale up to a power of two (`2^ceil(log2 s)`), activations and
//! weights, so bias scales are powers of two as well (NPUs that shift instead of multiplying);
//! the default follows the target's `quant.pow2_scales`. Per-axis `DequantizeLinear` needs
//! opset 13: models at opset 11 or 12 are raised to 13 when that keeps their meaning
//! (Squeeze/Unsqueeze/ReduceSum axes and Split sizes become inputs; Softmax, LogSoftmax and
//! Hardmax must reduce over the last axis), else their weights get one scale per tensor.
//! Opset 10 and older models are left alone.
//!
//! Lossy: weights and activations are rounded to 8 bits.

use crate::fuse::drop_dead_from;
use crate::util::const_tensor;
use crate::{Exactness, OptionSpec, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_eval::{Evaluator, Observer, Value};
use optc_ir::{AttrList, Attribute, DType, Graph, Model, NodeId, NodeSpec, Op, Tensor, ValueId};
use std::collections::{HashMap, HashSet};

pub struct QuantW8;

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "calib",
        default: "minmax",
        help: "activation ranges: minmax, percentile or entropy (KL divergence over a histogram)",
    },
    OptionSpec { name: "percentile", default: "99.999", help: "calib=percentile: the percentile kept, in (0, 100]" },
    OptionSpec { name: "bins", default: "2048", help: "calib=percentile|entropy: histogram bins" },
    OptionSpec { name: "qbins", default: "128", help: "calib=entropy: quantised bins of the KL search" },
    OptionSpec { name: "act", default: "int8", help: "activation type: int8 or uint8 (asymmetric, per tensor)" },
    OptionSpec { name: "per_channel", default: "true", help: "one weight scale per output channel" },
    OptionSpec {
        name: "pof2",
        default: "auto",
        help: "power-of-two scales: true, false or auto (the target's quant.pow2_scales)",
    },
    OptionSpec { name: "exclude", default: "", help: "node-name substrings to leave float, separated by '|'" },
    OptionSpec { name: "exclude_ops", default: "", help: "op types to leave float, separated by '|'" },
    OptionSpec {
        name: "min_size",
        default: "0",
        help: "leave Conv/MatMul/Gemm nodes whose weight has fewer elements in float",
    },
    OptionSpec {
        name: "split",
        default: "true",
        help: "give each reader of a quantised tensor its own QuantizeLinear/DequantizeLinear pair, so that \
               onnxruntime fuses every reader (it fuses none of a tensor's readers when there are several)",
    },
    OptionSpec {
        name: "runs",
        default: "4",
        help: "random input sets to calibrate on when the context has no calibration data",
    },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    MinMax,
    Percentile,
    Entropy,
}

#[derive(Clone, Debug)]
struct Config {
    /// The context's layer filter, as the pass started.
    layers: crate::LayerFilter,
    method: Method,
    percentile: f64,
    bins: usize,
    qbins: usize,
    signed: bool,
    per_channel: bool,
    pof2: bool,
    exclude: Vec<String>,
    exclude_ops: Vec<String>,
    min_size: usize,
    runs: usize,
    split: bool,
}

impl Pass for QuantW8 {
    fn name(&self) -> &str {
        "quant-w8"
    }
    fn description(&self) -> &str {
        "static W8A8 quantisation in QDQ form (onnxruntime quantize_static placement): int8 per-channel weights, \
         int32 biases, calibrated per-tensor activations (minmax, percentile, entropy), optional power-of-two \
         scales; lossy: weights and activations rounded to 8 bits"
    }
    fn options(&self) -> &[OptionSpec] {
        OPTIONS
    }
    fn exactness(&self) -> Exactness {
        Exactness::Lossy
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext, opts: &PassOptions) -> Result<PassOutcome, PassError> {
        let cfg = config(opts, cx)?;
        // The float model, to measure the output error against (a clone shares the weight data).
        let before = model.clone();
        let mut reference = None;
        let rewrites = run(model, cx, &cfg, &mut reference)?;
        if rewrites > 0 && cx.measure_error {
            super::report_error(&before, model, reference, cx);
        }
        Ok(PassOutcome { rewrites })
    }
}

fn bad(message: String) -> PassError {
    PassError::BadOption { pass: "quant-w8".into(), message }
}

fn list(opts: &PassOptions, name: &str) -> Vec<String> {
    opts.get(name).unwrap_or("").split('|').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

fn config(opts: &PassOptions, cx: &PassContext) -> Result<Config, PassError> {
    let method = match opts.get("calib").unwrap_or("minmax") {
        "minmax" => Method::MinMax,
        "percentile" => Method::Percentile,
        "entropy" => Method::Entropy,
        m => return Err(bad(format!("option 'calib' must be minmax, percentile or entropy, got '{m}'"))),
    };
    let percentile = opts.f64("percentile")?;
    if !(percentile > 0.0 && percentile <= 100.0) {
        return Err(bad(format!("option 'percentile' must be in (0, 100], got {percentile}")));
    }
    let bins = opts.usize("bins")?;
    let qbins = opts.usize("qbins")?;
    if bins < 16 || bins % 2 != 0 {
        return Err(bad(format!("option 'bins' must be an even number of at least 16, got {bins}")));
    }
    if qbins < 2 || qbins % 2 != 0 || qbins > bins {
        return Err(bad(format!("option 'qbins' must be even, at least 2 and at most bins ({bins}), got {qbins}")));
    }
    let signed = match opts.get("act").unwrap_or("int8") {
        "int8" => true,
        "uint8" => false,
        a => return Err(bad(format!("option 'act' must be int8 or uint8, got '{a}'"))),
    };
    let pof2 = match opts.get("pof2").unwrap_or("auto") {
        "auto" => cx.target.quant.pow2_scales,
        "true" | "1" | "yes" | "on" => true,
        "false" | "0" | "no" | "off" => false,
        p => return Err(bad(format!("option 'pof2' must be true, false or auto, got '{p}'"))),
    };
    let exclude_ops = list(opts, "exclude_ops");
    for o in &exclude_ops {
        if kind(&Op::from_onnx("", o)).is_none() {
            return Err(bad(format!("option 'exclude_ops': '{o}' is not an op type quant-w8 quantises")));
        }
    }
    Ok(Config {
        layers: cx.layers.clone(),
        method,
        percentile,
        bins,
        qbins,
        signed,
        per_channel: opts.bool("per_channel")?,
        pof2,
        exclude: list(opts, "exclude"),
        exclude_ops,
        min_size: opts.usize("min_size")?,
        runs: opts.usize("runs")?.max(1),
        split: opts.bool("split")?,
    })
}

// ---------------------------------------------------------------------------------------------
// scales

/// `2^ceil(log2 s)` for a positive finite `s` (`s` itself when it is a power of two).
pub fn pow2_ceil(s: f32) -> f32 {
    if !(s > 0.0 && s.is_finite()) {
        return s;
    }
    let p = 2f64.powi((s as f64).log2().ceil() as i32) as f32;
    // log2 rounding: make sure p >= s and p / 2 < s.
    if p < s {
        p * 2.0
    } else if p / 2.0 >= s {
        p / 2.0
    } else {
        p
    }
}

/// Scale and zero point of an activation with range `[rmin, rmax]` (onnxruntime's
/// `compute_scale_zp`, asymmetric): the range is widened to include 0; a range too small for a
/// float32 scale gets scale 1 and zero point 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QParams {
    pub scale: f32,
    pub zp: i32,
}

pub fn act_params(rmin: f64, rmax: f64, signed: bool, pof2: bool) -> QParams {
    let (qmin, qmax) = if signed { (-128.0, 127.0) } else { (0.0, 255.0) };
    let rmin = rmin.min(0.0);
    let rmax = rmax.max(0.0);
    let mut scale = ((rmax - rmin) / (qmax - qmin)) as f32;
    if !(scale >= f32::MIN_POSITIVE && scale.is_finite()) {
        return QParams { scale: 1.0, zp: 0 };
    }
    if pof2 {
        scale = pow2_ceil(scale);
    }
    // The zero point from the unrounded scale, as onnxruntime computes it.
    let exact = if pof2 { scale as f64 } else { (rmax - rmin) / (qmax - qmin) };
    let zp = (qmin - rmin / exact).round_ties_even().clamp(qmin, qmax) as i32;
    QParams { scale, zp }
}

/// A constant quantised the way an activation is (onnxruntime's `quantize_data` with
/// `symmetric=False`): one scale and zero point over `[min(x, 0), max(x, 0)]`, codes
/// `round(x / scale) + zp` saturated to the type (int8 or uint8) and returned as bytes;
/// non-finite values take the zero point.
pub fn quantize_const_asym(data: &[f32], signed: bool, pof2: bool) -> (Vec<u8>, QParams) {
    let (mut lo, mut hi) = (0f64, 0f64);
    for &x in data.iter().filter(|x| x.is_finite()) {
        lo = lo.min(x as f64);
        hi = hi.max(x as f64);
    }
    let qp = act_params(lo, hi, signed, pof2);
    let (qmin, qmax) = if signed { (-128.0, 127.0) } else { (0.0, 255.0) };
    let codes = data
        .iter()
        .map(|&x| {
            let c = if x.is_finite() { (x / qp.scale).round_ties_even() + qp.zp as f32 } else { qp.zp as f32 };
            let c = c.clamp(qmin, qmax) as i32;
            if signed { c as i8 as u8 } else { c as u8 }
        })
        .collect();
    (codes, qp)
}

/// Symmetric int8 weight quantisation along `axis` (`None`: one scale): codes in
/// `[-127, 127]`, scale `max|w| / 127` per channel (1 for an all-zero channel).
pub fn quantize_weight(data: &[f32], dims: &[usize], axis: Option<usize>, pof2: bool) -> (Vec<i8>, Vec<f32>) {
    let (outer, ch, inner) = match axis {
        Some(a) if a < dims.len() => (dims[..a].iter().product(), dims[a], dims[a + 1..].iter().product()),
        _ => (1usize, 1usize, data.len()),
    };
    let chan = |i: usize| (i / inner) % ch.max(1);
    let mut amax = vec![0f32; ch.max(1)];
    for (i, &x) in data.iter().enumerate() {
        if x.is_finite() {
            let c = chan(i);
            amax[c] = amax[c].max(x.abs());
        }
    }
    let scales: Vec<f32> = amax
        .iter()
        .map(|&m| {
            let s = m / 127.0;
            if !(s >= f32::MIN_POSITIVE && s.is_finite()) {
                1.0
            } else if pof2 {
                pow2_ceil(s)
            } else {
                s
            }
        })
        .collect();
    debug_assert_eq!(outer * ch.max(1) * inner, data.len().max(outer * ch.max(1) * inner));
    let q = data
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let v = if x.is_finite() { x / scales[chan(i)] } else { 0.0 };
            v.round_ties_even().clamp(-127.0, 127.0) as i8
        })
        .collect();
    (q, scales)
}

// ---------------------------------------------------------------------------------------------
// calibration statistics

/// A histogram over `[-t, t]` in `2 * half` bins of width `stride`, grown by whole bins on both
/// sides when values pass `t` (onnxruntime's `HistogramCollector.merge_histogram`), with pairs
/// of bins merged (the stride doubled) when it would pass `2 * base_half` bins per side.
#[derive(Clone, Debug, PartialEq)]
pub struct Hist {
    base_half: usize,
    /// 0 until a non-zero value arrives.
    pub stride: f64,
    pub counts: Vec<u64>,
    /// Zeros seen before the range was known.
    pending: u64,
}

impl Hist {
    pub fn new(bins: usize) -> Hist {
        Hist { base_half: (bins / 2).max(1), stride: 0.0, counts: Vec::new(), pending: 0 }
    }

    pub fn threshold(&self) -> f64 {
        self.stride * (self.counts.len() / 2) as f64
    }

    /// Left edge of bin `i` (`i` up to the bin count: the right end).
    pub fn edge(&self, i: usize) -> f64 {
        -self.threshold() + i as f64 * self.stride
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum::<u64>() + self.pending
    }

    /// Adds finite values; `amax` is their largest |x|.
    pub fn add(&mut self, v: &[f32], amax: f64) {
        if self.stride == 0.0 {
            if amax == 0.0 {
                self.pending += v.iter().filter(|x| x.is_finite()).count() as u64;
                return;
            }
            self.stride = amax / self.base_half as f64;
            self.counts = vec![0; 2 * self.base_half];
            self.counts[self.base_half] += self.pending;
            self.pending = 0;
        } else if amax > self.threshold() {
            self.grow(amax);
        }
        let n = self.counts.len();
        let t = self.threshold();
        let inv = 1.0 / self.stride;
        for &x in v {
            if !x.is_finite() {
                continue;
            }
            let i = ((x as f64 + t) * inv).floor();
            let i = if i < 0.0 { 0 } else { (i as usize).min(n - 1) };
            self.counts[i] += 1;
        }
    }

    fn grow(&mut self, t: f64) {
        loop {
            let half = self.counts.len() / 2;
            let extra = ((t - self.threshold()) / self.stride).floor() as usize + 1;
            if half + extra <= 2 * self.base_half {
                let mut next = vec![0u64; 2 * (half + extra)];
                next[extra..extra + 2 * half].copy_from_slice(&self.counts);
                self.counts = next;
                return;
            }
            self.merge_pairs();
        }
    }

    /// Halves the bins (doubles the stride), keeping 0 on a bin edge.
    fn merge_pairs(&mut self) {
        let half = self.counts.len() / 2;
        let nh = half.div_ceil(2);
        let mut next = vec![0u64; 2 * nh];
        for j in 0..half {
            next[nh + j / 2] += self.counts[half + j];
            next[nh - 1 - j / 2] += self.counts[half - 1 - j];
        }
        self.counts = next;
        self.stride *= 2.0;
    }
}

/// `(lo, hi)` cutting `(100 - percentile) / 200` of the mass on each side (onnxruntime's
/// asymmetric percentile: left edges of the bins where the CDF reaches the cuts).
pub fn percentile_range(h: &Hist, percentile: f64) -> Option<(f64, f64)> {
    let total = h.counts.iter().sum::<u64>();
    if total == 0 {
        return None;
    }
    let cut = (100.0 - percentile) / 200.0;
    let (mut lo, mut hi) = (None, None);
    let mut acc = 0u64;
    for (i, &c) in h.counts.iter().enumerate() {
        acc += c;
        let cdf = acc as f64 / total as f64;
        if lo.is_none() && cdf >= cut {
            lo = Some(i);
        }
        if hi.is_none() && cdf >= 1.0 - cut {
            hi = Some(i);
            break;
        }
    }
    let n = h.counts.len();
    Some((h.edge(lo.unwrap_or(0)), h.edge(hi.unwrap_or(n))))
}

/// onnxruntime's `smooth_distribution`: zeros become `eps`, the others lose their share.
fn smooth(p: &mut [f64]) -> bool {
    let eps = 1e-4;
    let zeros = p.iter().filter(|&&x| x == 0.0).count();
    let nonzeros = p.len() - zeros;
    if nonzeros == 0 {
        return false;
    }
    let eps1 = eps * zeros as f64 / nonzeros as f64;
    for x in p.iter_mut() {
        *x = if *x == 0.0 { eps } else { (*x - eps1).max(eps * 1e-3) };
    }
    true
}

/// KL(p || q) of two unnormalised distributions.
fn kl(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let (a, b) = (a / sp, b / sq);
            if a > 0.0 { a * (a / b).ln() } else { 0.0 }
        })
        .sum()
}

/// onnxruntime's entropy calibration: over symmetric windows `[zero - i, zero + i]` of the
/// histogram (`i` from `qbins / 2` to half the bins), the reference distribution `p` (the window
/// with the outliers added to its end bins) against `q` (the window merged into `qbins` bins
/// and spread back over its non-zero bins); returns the window edges of least KL divergence.
/// (onnxruntime truncates the spread counts to integers; they are kept as floats here.)
pub fn entropy_threshold(h: &Hist, qbins: usize) -> Option<(f64, f64)> {
    let n = h.counts.len();
    if n == 0 || h.counts.iter().all(|&c| c == 0) {
        return None;
    }
    let zero = n / 2;
    let hq = qbins / 2;
    if zero < hq {
        return Some((h.edge(0), h.edge(n)));
    }
    let mut prefix = vec![0u64; n + 1];
    for i in 0..n {
        prefix[i + 1] = prefix[i] + h.counts[i];
    }
    let total = prefix[n];
    let candidates: Vec<usize> = (hq..=zero).collect();
    let eval = |i: usize| -> f64 {
        let start = zero - i;
        let end = (zero + i + 1).min(n);
        let sliced = &h.counts[start..end];
        let len = sliced.len();
        let mut p: Vec<f64> = sliced.iter().map(|&c| c as f64).collect();
        p[0] += prefix[start] as f64;
        p[len - 1] += (total - prefix[end]) as f64;
        let m = len / qbins;
        let mut q = vec![0f64; len];
        for j in 0..qbins {
            let (s, e) = (j * m, (j + 1) * m);
            let mut merged: u64 = sliced[s..e].iter().sum();
            if j == qbins - 1 {
                merged += sliced[qbins * m..].iter().sum::<u64>();
            }
            let norm = p[s..e].iter().filter(|&&x| x != 0.0).count();
            if norm > 0 {
                let v = merged as f64 / norm as f64;
                q[s..e].iter_mut().for_each(|x| *x = v);
            }
        }
        if !smooth(&mut p) || !smooth(&mut q) {
            return f64::INFINITY;
        }
        kl(&p, &q)
    };
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).clamp(1, 16);
    let per = candidates.len().div_ceil(threads);
    let divs: Vec<f64> = std::thread::scope(|sc| {
        let hs: Vec<_> = candidates
            .chunks(per.max(1))
            .map(|chunk| {
                let eval = &eval;
                sc.spawn(move || chunk.iter().map(|&i| eval(i)).collect::<Vec<f64>>())
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    let mut best = 0;
    for (k, &d) in divs.iter().enumerate() {
        if d < divs[best] {
            best = k;
        }
    }
    let i = candidates[best];
    Some((h.edge(zero - i), h.edge((zero + i + 1).min(n))))
}

/// What calibration saw of one tensor.
#[derive(Clone, Debug)]
struct Stat {
    min: f64,
    max: f64,
    count: u64,
    hist: Option<Hist>,
}

/// Running min/max (and histograms) of chosen float32 values.
struct RangeObserver {
    names: HashSet<String>,
    bins: usize,
    hist: bool,
    stats: HashMap<String, Stat>,
    /// Names seen with a non-float32 element type.
    not_float: HashSet<String>,
}

impl Observer for RangeObserver {
    fn wants(&self, name: &str) -> bool {
        self.names.contains(name)
    }
    fn observe(&mut self, name: &str, value: &Value) {
        let Some(t) = value.tensor() else { return };
        let optc_eval::Tensor::F32(a) = t else {
            self.not_float.insert(name.to_string());
            return;
        };
        let owned;
        let data: &[f32] = match a.as_slice() {
            Some(s) => s,
            None => {
                owned = a.iter().copied().collect::<Vec<f32>>();
                &owned
            }
        };
        let (bins, hist) = (self.bins, self.hist);
        let st = self.stats.entry(name.to_string()).or_insert_with(|| Stat {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            count: 0,
            hist: hist.then(|| Hist::new(bins)),
        });
        let (mn, mx, n) = finite_min_max(data);
        if n == 0 {
            return;
        }
        st.min = st.min.min(mn as f64);
        st.max = st.max.max(mx as f64);
        st.count += n;
        if let Some(h) = &mut st.hist {
            h.add(data, (mn.abs().max(mx.abs())) as f64);
        }
    }
}

impl RangeObserver {
    fn empty_like(&self) -> RangeObserver {
        RangeObserver {
            names: self.names.clone(),
            bins: self.bins,
            hist: self.hist,
            stats: HashMap::new(),
            not_float: HashSet::new(),
        }
    }

    /// Adds what `other` saw (min/max only: histograms depend on the order they grew in, so
    /// runs that keep them are not merged).
    fn merge(&mut self, other: RangeObserver) {
        debug_assert!(!self.hist && !other.hist);
        for (k, o) in other.stats {
            match self.stats.get_mut(&k) {
                Some(st) => {
                    st.min = st.min.min(o.min);
                    st.max = st.max.max(o.max);
                    st.count += o.count;
                }
                None => {
                    self.stats.insert(k, o);
                }
            }
        }
        self.not_float.extend(other.not_float);
    }
}

/// Min and max of the finite values of `v` and a count that is 0 when none is finite.
/// A branch-free pass over 16 lanes first; only a slice holding an infinity takes the slow
/// path (NaN is ignored by `f32::min`/`max` either way).
fn finite_min_max(v: &[f32]) -> (f32, f32, u64) {
    const L: usize = 16;
    let mut lo = [f32::INFINITY; L];
    let mut hi = [f32::NEG_INFINITY; L];
    let chunks = v.chunks_exact(L);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..L {
            lo[j] = lo[j].min(c[j]);
            hi[j] = hi[j].max(c[j]);
        }
    }
    let mut mn = lo.iter().fold(f32::INFINITY, |a, &b| a.min(b));
    let mut mx = hi.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for &x in rest {
        mn = mn.min(x);
        mx = mx.max(x);
    }
    if mn.is_finite() && mx.is_finite() {
        // Every value is finite or NaN; the count is only ever compared with 0.
        return (mn, mx, v.len() as u64);
    }
    let (mut mn, mut mx, mut n) = (f32::INFINITY, f32::NEG_INFINITY, 0u64);
    for &x in v {
        if x.is_finite() {
            mn = mn.min(x);
            mx = mx.max(x);
            n += 1;
        }
    }
    (mn, mx, n)
}

// ---------------------------------------------------------------------------------------------
// planning

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Conv,
    ConvT,
    MatMul,
    Gemm,
    Generic,
    Removable,
    Shared,
    Norm,
}

fn kind(op: &Op) -> Option<Kind> {
    Some(match op {
        Op::Conv => Kind::Conv,
        Op::ConvTranspose => Kind::ConvT,
        Op::MatMul => Kind::MatMul,
        Op::Gemm => Kind::Gemm,
        Op::Add | Op::Mul | Op::Concat | Op::Sigmoid | Op::Softmax | Op::GlobalAveragePool | Op::LeakyRelu => {
            Kind::Generic
        }
        Op::Relu | Op::Clip => Kind::Removable,
        Op::BatchNormalization | Op::InstanceNormalization | Op::LayerNormalization => Kind::Norm,
        Op::Reshape
        | Op::Transpose
        | Op::Squeeze
        | Op::Unsqueeze
        | Op::Flatten
        | Op::MaxPool
        | Op::AveragePool
        | Op::Slice
        | Op::Resize => Kind::Shared,
        _ => return None,
    })
}

#[derive(Clone, Debug, PartialEq)]
enum Mark {
    /// Calibrated: the range of `stat` (the tensor itself, or the output of a Relu/Clip that
    /// reads it), or a fixed range.
    Own { stat: ValueId, fixed: Option<(f64, f64)> },
    /// The scale and zero point of another quantised tensor (data movement).
    Shared(ValueId),
}

#[derive(Clone, Debug)]
struct WUse {
    node: NodeId,
    slot: usize,
    w: ValueId,
    axis: Option<usize>,
    /// A constant input of an Add/Mul/Concat/...: quantised like an activation (per tensor,
    /// asymmetric over its min/max, the activation type), as onnxruntime quantises it.
    asym: bool,
}

#[derive(Clone, Debug)]
struct BUse {
    node: NodeId,
    slot: usize,
    b: ValueId,
    x: ValueId,
    /// The weight use whose scales the bias takes.
    w: usize,
    /// beta / alpha of a Gemm (1 otherwise): the bias is stored as `beta * C` with scale
    /// `alpha * x_scale * w_scale`.
    beta: f32,
    alpha: f32,
}

#[derive(Default)]
struct Plan {
    marks: HashMap<ValueId, Mark>,
    order: Vec<ValueId>,
    alias: HashMap<ValueId, ValueId>,
    /// (Relu/Clip node, its input, its output).
    removed: Vec<(NodeId, ValueId, ValueId)>,
    weights: Vec<WUse>,
    biases: Vec<BUse>,
    nodes: usize,
}

impl Plan {
    fn resolve(&self, mut v: ValueId) -> ValueId {
        while let Some(&u) = self.alias.get(&v) {
            v = u;
        }
        v
    }
    fn marked(&self, v: ValueId) -> bool {
        self.marks.contains_key(&self.resolve(v))
    }
    fn mark_own(&mut self, v: ValueId) {
        let v = self.resolve(v);
        if let std::collections::hash_map::Entry::Vacant(e) = self.marks.entry(v) {
            e.insert(Mark::Own { stat: v, fixed: None });
            self.order.push(v);
        }
    }
    fn mark_shared(&mut self, out: ValueId, from: ValueId) {
        let (out, from) = (self.resolve(out), self.resolve(from));
        if out == from {
            return;
        }
        if self.marks.insert(out, Mark::Shared(from)).is_none() {
            self.order.push(out);
        }
    }
}

/// Element types known for the values of `g`, `None` where inference cannot tell (calibration
/// decides then: only float32 tensors get quantised).
struct Types {
    facts: optc_ir::infer::Facts,
}

impl Types {
    fn maybe_f32(&self, g: &Graph, v: ValueId) -> bool {
        if let Some(t) = g.value(v).ty.as_ref().and_then(|t| t.elem()) {
            return t == DType::F32;
        }
        self.facts.elem(v).is_none_or(|t| t == DType::F32)
    }
}

fn f32_const(g: &Graph, v: ValueId) -> Option<Tensor> {
    const_tensor(g, v).filter(|t| t.dtype == DType::F32)
}

fn numel(t: &Tensor) -> usize {
    t.dims.iter().map(|&d| d.max(0) as usize).product()
}

/// Builds the plan for the main graph; notes one line per candidate node.
fn plan(g: &Graph, types: &Types, cfg: &Config, cx: &mut PassContext) -> Plan {
    let mut p = Plan::default();
    let Ok(order) = g.topo_order() else {
        cx.note(|| "the graph has a cycle: nothing quantised".to_string());
        return p;
    };
    let mut out_of_budget = false;
    for id in order {
        let node = g.node(id);
        let Some(k) = kind(&node.op) else { continue };
        if node.domain().is_some_and(|d| !d.is_empty() && d != "ai.onnx") {
            continue;
        }
        let op = node.op.clone();
        let name = node.display_name();
        let skip = |cx: &mut PassContext, why: String| cx.note(|| format!("{op} at '{name}': not quantised: {why}"));
        if let Some(pat) = cfg.exclude.iter().find(|p| name.contains(p.as_str())) {
            skip(cx, format!("excluded (name matches '{pat}')"));
            continue;
        }
        if cfg.exclude_ops.iter().any(|o| o == op.op_type()) {
            skip(cx, "excluded (exclude_ops)".into());
            continue;
        }
        if let Some(reason) = cfg.layers.refuses(&name) {
            skip(cx, reason.into());
            continue;
        }
        let Some(out) = node.output(0) else { continue };
        if !types.maybe_f32(g, out) {
            skip(cx, "its output is not float32".into());
            continue;
        }
        let Some(x) = node.input(0) else { continue };
        if out_of_budget {
            continue;
        }
        // Checks that do not change the plan first, then the budget, then the marks.
        match k {
            Kind::Conv | Kind::ConvT | Kind::MatMul | Kind::Gemm => {
                let Some(wv) = node.input(1) else { continue };
                let wt = f32_const(g, wv);
                let needs_const = matches!(k, Kind::Conv | Kind::ConvT);
                if needs_const && wt.is_none() {
                    skip(cx, "the weight is not a float32 constant".into());
                    continue;
                }
                if f32_const(g, x).is_some() {
                    skip(cx, "its first input is a constant".into());
                    continue;
                }
                if let Some(t) = &wt
                    && numel(t) < cfg.min_size
                {
                    skip(cx, format!("weight too small ({} elements < min_size {})", numel(t), cfg.min_size));
                    continue;
                }
                if k == Kind::ConvT && node.attrs.get_int("group").unwrap_or(1) != 1 {
                    skip(cx, "grouped ConvTranspose (its output channels are not one weight axis)".into());
                    continue;
                }
                if k == Kind::Gemm && node.attrs.get_float("alpha").is_some_and(|a| !(a.is_finite() && a != 0.0)) {
                    skip(cx, "alpha is 0 or not finite".into());
                    continue;
                }
                if !cx.rewrite() {
                    out_of_budget = true;
                    continue;
                }
                p.nodes += 1;
                p.mark_own(x);
                let mut what = Vec::new();
                let axis = match (k, &wt) {
                    (_, None) => None,
                    (Kind::Conv, Some(t)) if t.dims.len() >= 2 => Some(0),
                    (Kind::ConvT, Some(t)) if t.dims.len() >= 2 => Some(1),
                    (Kind::MatMul, Some(t)) if t.dims.len() == 2 => Some(1),
                    (Kind::Gemm, Some(t)) if t.dims.len() == 2 => {
                        Some(if node.attrs.get_int("transB").unwrap_or(0) != 0 { 0 } else { 1 })
                    }
                    _ => None,
                };
                let axis = axis.filter(|_| cfg.per_channel);
                match &wt {
                    Some(t) => {
                        p.weights.push(WUse { node: id, slot: 1, w: wv, axis, asym: false });
                        what.push(match axis {
                            Some(a) => format!("int8 weight per channel ({} along axis {a})", t.dims[a]),
                            None => "int8 weight per tensor".to_string(),
                        });
                    }
                    None => {
                        p.mark_own(wv);
                        what.push("both inputs activations".into());
                    }
                }
                // Bias: Conv/ConvTranspose input 2, Gemm C of shape [N].
                if let (Some(bv), Some(t), Some(a)) = (node.input(2), &wt, axis.or(Some(0)))
                    && k != Kind::MatMul
                {
                    let channels = match k {
                        Kind::Gemm => {
                            let tb = node.attrs.get_int("transB").unwrap_or(0) != 0;
                            t.dims.get(if tb { 0 } else { 1 }).copied()
                        }
                        _ => t
                            .dims
                            .get(if axis.is_some() {
                                a
                            } else if k == Kind::ConvT {
                                1
                            } else {
                                0
                            })
                            .copied(),
                    };
                    let channels = match (k, channels) {
                        (Kind::ConvT, Some(c)) => Some(c * node.attrs.get_int("group").unwrap_or(1)),
                        (_, c) => c,
                    };
                    match (f32_const(g, bv), channels) {
                        (Some(bt), Some(c)) if bt.dims == [c] => {
                            let (alpha, beta) = if k == Kind::Gemm {
                                (
                                    node.attrs.get_float("alpha").unwrap_or(1.0),
                                    node.attrs.get_float("beta").unwrap_or(1.0),
                                )
                            } else {
                                (1.0, 1.0)
                            };
                            let w = p.weights.len() - 1;
                            p.biases.push(BUse { node: id, slot: 2, b: bv, x, w, beta, alpha });
                            what.push("int32 bias".into());
                        }
                        _ => what.push("float bias (not a float32 constant of one value per channel)".into()),
                    }
                }
                p.mark_own(out);
                let what = what.join(", ");
                let act = if cfg.signed { "int8" } else { "uint8" };
                cx.note(|| format!("{op} at '{name}': {what}, {act} activations"));
            }
            Kind::Generic => {
                let inputs: Vec<ValueId> = node.inputs().iter().flatten().copied().collect();
                if !cx.rewrite() {
                    out_of_budget = true;
                    continue;
                }
                p.nodes += 1;
                let mut consts = 0;
                for &v in &inputs {
                    if f32_const(g, v).is_some() {
                        p.weights.push(WUse { node: id, slot: slot_of(node, v), w: v, axis: None, asym: true });
                        consts += 1;
                    } else if const_tensor(g, v).is_none() && types.maybe_f32(g, v) {
                        p.mark_own(v);
                    }
                }
                for o in node.outputs().iter().flatten() {
                    p.mark_own(*o);
                }
                if op == Op::Softmax {
                    p.marks.insert(p.resolve(out), Mark::Own { stat: out, fixed: Some((0.0, 1.0)) });
                }
                cx.note(|| {
                    format!(
                        "{op} at '{name}': inputs and output quantised{}",
                        if consts > 0 { format!(" ({consts} constant(s) as int8 per tensor)") } else { String::new() }
                    )
                });
            }
            Kind::Removable => {
                let xr = p.resolve(x);
                if !matches!(p.marks.get(&xr), Some(Mark::Own { .. })) {
                    skip(cx, "its input is not quantised".into());
                    continue;
                }
                let bounds = clip_bounds(g, id);
                let Some((lo, hi)) = bounds else {
                    skip(cx, "its bounds are not constants".into());
                    continue;
                };
                if !cx.rewrite() {
                    out_of_budget = true;
                    continue;
                }
                p.nodes += 1;
                let single = g.uses(x).len() == 1 && !g.is_graph_output(x) && !g.is_graph_input(x);
                let removable = single && lo <= 0.0 && !(cfg.pof2 && hi.is_finite()) && !g.is_graph_output(out);
                if removable {
                    p.alias.insert(out, xr);
                    p.marks.insert(xr, Mark::Own { stat: out, fixed: None });
                    p.removed.push((id, xr, out));
                    cx.note(|| format!("{op} at '{name}': removed, its input's quantiser clamps with its range"));
                } else {
                    p.mark_own(out);
                    if single {
                        p.marks.insert(xr, Mark::Own { stat: out, fixed: None });
                    }
                    cx.note(|| format!("{op} at '{name}': kept, input and output quantised"));
                }
            }
            Kind::Norm => {
                if !cx.rewrite() {
                    out_of_budget = true;
                    continue;
                }
                p.nodes += 1;
                if f32_const(g, x).is_none() {
                    p.mark_own(x);
                }
                p.mark_own(out);
                cx.note(|| format!("{op} at '{name}': input and output quantised, its parameters stay float"));
            }
            Kind::Shared => {
                if !p.marked(x) {
                    skip(cx, "its input is not quantised".into());
                    continue;
                }
                if !cx.rewrite() {
                    out_of_budget = true;
                    continue;
                }
                p.nodes += 1;
                p.mark_shared(out, x);
                cx.note(|| format!("{op} at '{name}': output quantised with its input's scale"));
            }
        }
    }
    if out_of_budget {
        cx.note(|| "rewrite budget spent: the remaining nodes stay float".to_string());
    }
    p
}

fn slot_of(node: &optc_ir::Node, v: ValueId) -> usize {
    node.inputs().iter().position(|i| *i == Some(v)).unwrap_or(0)
}

/// `(min, max)` of a Relu (0, inf) or a Clip (constant inputs or opset < 11 attributes);
/// `None` when a bound is not a constant.
fn clip_bounds(g: &Graph, id: NodeId) -> Option<(f32, f32)> {
    let node = g.node(id);
    if node.op == Op::Relu {
        return Some((0.0, f32::INFINITY));
    }
    let bound = |slot: usize, attr: &str, dflt: f32| -> Option<f32> {
        match node.input(slot) {
            Some(v) => f32_const(g, v)?.to_f32_vec()?.first().copied(),
            None => Some(node.attrs.get_float(attr).unwrap_or(dflt)),
        }
    };
    Some((bound(1, "min", f32::NEG_INFINITY)?, bound(2, "max", f32::INFINITY)?))
}

// ---------------------------------------------------------------------------------------------
// opset 11/12 -> 13

/// Why the model cannot move to opset 13, or `None`.
fn upgrade_blocker_13(model: &Model) -> Option<String> {
    let from = model.opset("").unwrap_or(1);
    if from >= 13 {
        return None;
    }
    if from < 11 {
        return Some(format!("the model imports opset {from}; it is only raised to 13 from 11 on"));
    }
    None
}

/// Moves an opset 11/12 model to 13 (call when [`upgrade_blocker_13`] says `None`).
fn upgrade_to_13(model: &mut Model) -> usize {
    let from = model.opset("").unwrap_or(11);
    let n = upgrade_graph_13(&mut model.graph, from);
    for o in &mut model.opset_imports {
        if o.domain_name().is_empty() {
            o.version = Some(13);
        }
    }
    if model.ir_version.is_none_or(|v| v < 7) {
        model.ir_version = Some(7);
    }
    n
}

/// Opset 11/12 -> 13: Squeeze/Unsqueeze/ReduceSum `axes` and Split `split` become inputs;
/// Softmax, LogSoftmax and Hardmax over `axis` of the input coerced to 2-D keep that meaning:
/// `axis = -1` when `axis` is the last one, else `Flatten(axis) -> op(axis=-1) -> Reshape` to
/// the input's shape.
fn upgrade_graph_13(g: &mut Graph, from: i64) -> usize {
    let mut n = 0;
    let facts = optc_ir::infer::infer(g, from);
    let ids: Vec<NodeId> = g.nodes().collect();
    for id in ids {
        for sg in g.node_mut(id).subgraphs_mut() {
            n += upgrade_graph_13(sg, from);
        }
        let op = g.node(id).op.clone();
        let attr = match op {
            Op::Squeeze | Op::Unsqueeze | Op::ReduceSum => "axes",
            Op::Split => "split",
            Op::Softmax | Op::LogSoftmax | Op::Hardmax => {
                let node = g.node(id);
                let axis = node.attrs.get_int("axis").unwrap_or(1);
                let (Some(x), Some(y)) = (node.input(0), node.output(0)) else { continue };
                let rank = facts.shape(x).map(|s| s.len() as i64);
                let last = axis == -1 || rank.is_some_and(|r| axis == r - 1);
                if last {
                    g.node_mut(id).attrs.retain(|a| a.name != "axis");
                    g.node_mut(id).attrs.push(Attribute::int("axis", -1));
                    n += 1;
                    continue;
                }
                let base = node.display_name();
                let other: Vec<Attribute> = node.attrs.iter().filter(|a| a.name != "axis").cloned().collect();
                g.remove_node(id);
                let Some((_, f)) = add_node(
                    g,
                    Op::Flatten,
                    vec![Some(x)],
                    vec![Attribute::int("axis", axis)],
                    &format!("{base}_flatten"),
                    &format!("{base}_flat"),
                    None,
                ) else {
                    continue;
                };
                let mut attrs = other;
                attrs.push(Attribute::int("axis", -1));
                let Some((k, t)) = add_node(g, op.clone(), vec![Some(f)], attrs, &base, &format!("{base}_2d"), None)
                else {
                    continue;
                };
                let Some((_, sh)) = add_node(
                    g,
                    Op::Shape,
                    vec![Some(x)],
                    vec![],
                    &format!("{base}_shape"),
                    &format!("{base}_shape"),
                    None,
                ) else {
                    continue;
                };
                let spec =
                    NodeSpec::new(Op::Reshape, vec![Some(t), Some(sh)], vec![Some(y)]).named(format!("{base}_reshape"));
                if let Ok(r) = g.add_node(spec) {
                    g.place_like(r, k);
                }
                n += 1;
                continue;
            }
            _ => continue,
        };
        let Some(vals) = g.node(id).attrs.get_ints(attr).map(|a| a.to_vec()) else { continue };
        let base = format!("{}_{attr}", g.node(id).display_name());
        let Some(v) = crate::fuse::add_i64(g, &base, &vals) else { continue };
        g.set_input(id, 1, Some(v));
        g.node_mut(id).attrs.retain(|a| a.name != attr);
        n += 1;
    }
    n
}

// ---------------------------------------------------------------------------------------------
// the pass

fn calib_feeds(model: &Model, cx: &mut PassContext, runs: usize) -> Result<Vec<HashMap<String, Value>>, String> {
    crate::calib::feeds(model, cx, runs, "quant-w8")
}

/// The range of a calibrated tensor by the configured method, inside its min/max.
fn range_of(st: &Stat, cfg: &Config) -> (f64, f64) {
    let (mn, mx) = (st.min, st.max);
    let r = match (cfg.method, &st.hist) {
        (Method::MinMax, _) | (_, None) => None,
        (Method::Percentile, Some(h)) => percentile_range(h, cfg.percentile),
        (Method::Entropy, Some(h)) => entropy_threshold(h, cfg.qbins),
    };
    match r {
        Some((lo, hi)) => (lo.max(mn), hi.min(mx)),
        None => (mn, mx),
    }
}

fn add_init(g: &mut Graph, base: &str, dtype: DType, dims: Vec<i64>, bytes: Vec<u8>) -> Option<ValueId> {
    let name = g.fresh_name(base);
    g.add_initializer(name.clone(), Tensor::from_raw(Some(name), dtype, dims, bytes.into())).ok()
}

/// Adds `op(inputs)` named `name` with one output `out_name`, ordered where `like` is.
fn add_node(
    g: &mut Graph,
    op: Op,
    inputs: Vec<Option<ValueId>>,
    attrs: Vec<Attribute>,
    name: &str,
    out_name: &str,
    like: Option<NodeId>,
) -> Option<(NodeId, ValueId)> {
    let vname = g.fresh_name(out_name);
    let out = g.add_value(vname, None).ok()?;
    let id = g.add_node(NodeSpec::new(op, inputs, vec![Some(out)]).attrs(attrs).named(name.to_string())).ok()?;
    if let Some(l) = like {
        g.place_like(id, l);
    }
    Some((id, out))
}

/// Gives every node after the first that reads `dv` (the DequantizeLinear output of `v`) a
/// QuantizeLinear -> DequantizeLinear pair of its own, with the same parameters in initializers
/// of its own. onnxruntime (1.32, CPU) fuses a QDQ node group into QLinearMatMul / QLinearConv /
/// QLinearAdd only when the quantised tensor has that one reader: a tensor read by the Q, K and
/// V projections and the residual Add left all four in float, dequantising their weights on
/// every run. Separate initializers keep its common-subexpression elimination from merging the
/// pairs back. Returns the number of pairs added.
fn split_readers(
    g: &mut Graph,
    v: ValueId,
    dv: ValueId,
    qp: QParams,
    signed: bool,
    name: &str,
    like: Option<NodeId>,
) -> usize {
    let mut readers: Vec<(NodeId, usize)> = g
        .uses(dv)
        .into_iter()
        .filter_map(|(n, u)| match u {
            optc_ir::Use::Input(slot) => Some((n, slot)),
            optc_ir::Use::Capture => None,
        })
        .collect();
    readers.sort();
    let mut nodes: Vec<NodeId> = readers.iter().map(|&(n, _)| n).collect();
    nodes.dedup();
    let mut added = 0;
    for (k, &n) in nodes.iter().enumerate().skip(1) {
        let base = format!("{name}_{k}");
        let Some(p) = add_act_params(g, &base, qp, signed) else { continue };
        let Some((_, d)) = add_qdq(g, v, p, &base, like) else { continue };
        for &(_, slot) in readers.iter().filter(|&&(m, _)| m == n) {
            g.set_input(n, slot, Some(d));
        }
        added += 1;
    }
    added
}

/// The scalar `{base}_scale` and `{base}_zero_point` initializers of an activation quantised
/// with `qp` (int8 when `signed`, else uint8).
fn add_act_params(g: &mut Graph, base: &str, qp: QParams, signed: bool) -> Option<(ValueId, ValueId)> {
    let act_dt = if signed { DType::I8 } else { DType::U8 };
    let sv = add_init(g, &format!("{base}_scale"), DType::F32, vec![], qp.scale.to_le_bytes().to_vec())?;
    let zv = add_init(g, &format!("{base}_zero_point"), act_dt, vec![], zp_bytes(qp.zp, signed))?;
    Some((sv, zv))
}

/// `x -> QuantizeLinear -> DequantizeLinear` with the parameters `(scale, zero point)`, named
/// after `base`; returns the QuantizeLinear node and the DequantizeLinear output.
fn add_qdq(
    g: &mut Graph,
    x: ValueId,
    (sv, zv): (ValueId, ValueId),
    base: &str,
    like: Option<NodeId>,
) -> Option<(NodeId, ValueId)> {
    let (qn, qv) = add_node(
        g,
        Op::QuantizeLinear,
        vec![Some(x), Some(sv), Some(zv)],
        vec![],
        &format!("{base}_QuantizeLinear"),
        &format!("{base}_QuantizeLinear_Output"),
        like,
    )?;
    let (_, dv) = add_node(
        g,
        Op::DequantizeLinear,
        vec![Some(qv), Some(sv), Some(zv)],
        vec![],
        &format!("{base}_DequantizeLinear"),
        &format!("{base}_DequantizeLinear_Output"),
        like,
    )?;
    Some((qn, dv))
}

fn zp_bytes(zp: i32, signed: bool) -> Vec<u8> {
    vec![if signed { zp as i8 as u8 } else { zp as u8 }]
}

#[derive(Default)]
struct Totals {
    acts: usize,
    /// Extra Q/DQ pairs, one per further reader of a quantised tensor.
    split: usize,
    weights: usize,
    biases: usize,
    removed: usize,
    bytes_before: u64,
    bytes_after: u64,
}

/// Quantises `model`; `reference` receives the float model's outputs on the first calibration
/// input (for the error report).
fn run(
    model: &mut Model,
    cx: &mut PassContext,
    cfg: &Config,
    reference: &mut Option<super::Reference>,
) -> Result<usize, PassError> {
    let opset = model.opset("").unwrap_or(1);
    if opset < 10 {
        cx.note(|| format!("the model imports opset {opset}; QuantizeLinear needs 10: nothing quantised"));
        return Ok(0);
    }
    if model.graph.nodes().any(|id| model.graph.node(id).subgraphs().next().is_some()) {
        cx.note(|| "nodes inside subgraphs (If/Loop/Scan bodies) are left float".to_string());
    }
    let types = Types { facts: optc_ir::infer::infer(&model.graph, opset) };
    let mut cfg = cfg.clone();
    let mut plan = plan(&model.graph, &types, &cfg, cx);
    if plan.nodes == 0 {
        cx.note(|| "nothing to quantise".to_string());
        return Ok(0);
    }
    let per_axis = cfg.per_channel && plan.weights.iter().any(|w| w.axis.is_some());
    let mut upgrade = false;
    if per_axis && opset < 13 {
        match upgrade_blocker_13(model) {
            None => upgrade = true,
            Some(why) => {
                cx.note(|| format!("per-channel weights need opset 13 and {why}: one scale per weight instead"));
                cfg.per_channel = false;
                for w in &mut plan.weights {
                    w.axis = None;
                }
            }
        }
    }

    // Calibration on the model as it came in.
    let mut want: HashSet<String> = HashSet::new();
    for m in plan.marks.values() {
        if let Mark::Own { stat, fixed: None } = m {
            want.insert(model.graph.value(*stat).name.clone());
        }
    }
    let feeds = match calib_feeds(model, cx, cfg.runs) {
        Ok(f) => f,
        Err(e) => {
            cx.note(|| format!("warning: no calibration inputs ({e}): nothing quantised"));
            return Ok(0);
        }
    };
    let mut obs = RangeObserver {
        names: want,
        bins: cfg.bins,
        hist: cfg.method != Method::MinMax,
        stats: HashMap::new(),
        not_float: HashSet::new(),
    };
    {
        let ev = match Evaluator::new(model) {
            Ok(ev) => ev,
            Err(e) => {
                cx.note(|| format!("warning: calibration cannot run the model ({e}): nothing quantised"));
                return Ok(0);
            }
        };
        // Min/max merge in any order: the runs go in parallel, each with its own observer.
        // Histograms grow in the order they see values, so those runs stay sequential.
        let n = feeds.len();
        cx.progress("calibrating", 0, n);
        // The float model's outputs on the first input, for the error report.
        let mut first: Option<Vec<Vec<f32>>> = None;
        let outputs = crate::prune::depth::float_outputs;
        let failed = if obs.hist || feeds.len() < 2 {
            feeds.iter().enumerate().find_map(|(i, feed)| {
                let r = match ev.run_observed(feed, Some(&mut obs)) {
                    Ok(outs) => {
                        if i == 0 {
                            first = Some(outputs(&outs));
                        }
                        None
                    }
                    Err(e) => Some(e),
                };
                cx.progress("calibrating", i + 1, n);
                r
            })
        } else {
            use rayon::prelude::*;
            type Part = (RangeObserver, Option<Vec<Vec<f32>>>);
            let parts: Vec<Result<Part, optc_eval::EvalError>> = feeds
                .par_iter()
                .enumerate()
                .map(|(i, feed)| {
                    let mut o = obs.empty_like();
                    ev.run_observed(feed, Some(&mut o)).map(|outs| (o, (i == 0).then(|| outputs(&outs))))
                })
                .collect();
            cx.progress("calibrating", n, n);
            let mut err = None;
            for p in parts {
                match p {
                    Ok((o, out)) => {
                        obs.merge(o);
                        if out.is_some() {
                            first = out;
                        }
                    }
                    Err(e) => {
                        err.get_or_insert(e);
                    }
                }
            }
            err
        };
        *reference = first.zip(feeds.first()).map(|(outputs, feed)| super::Reference { feed: feed.clone(), outputs });
        if let Some(e) = failed {
            cx.note(|| format!("warning: calibration run failed ({e}): nothing quantised"));
            return Ok(0);
        }
    }

    // Parameters of every quantised tensor.
    let g = &model.graph;
    let mut params: HashMap<ValueId, QParams> = HashMap::new();
    let mut dropped = 0usize;
    for &v in &plan.order {
        let Some(Mark::Own { stat, fixed }) = plan.marks.get(&v) else { continue };
        let sname = &g.value(*stat).name;
        let range = match fixed {
            Some(r) => Some(*r),
            None => match obs.stats.get(sname) {
                Some(st) if st.count > 0 && !obs.not_float.contains(sname) => Some(range_of(st, &cfg)),
                _ => None,
            },
        };
        match range {
            Some((lo, hi)) => {
                params.insert(v, act_params(lo, hi, cfg.signed, cfg.pof2));
            }
            None => {
                if types.facts.elem(v) == Some(DType::F32) || g.value(v).ty.as_ref().and_then(|t| t.elem()).is_some() {
                    dropped += 1;
                    let n = g.value(v).name.clone();
                    cx.note(|| format!("tensor '{n}': calibration saw no float32 values of it: left float"));
                }
            }
        }
    }
    // Shared tensors take their root's parameters (and its initializers).
    let mut root: HashMap<ValueId, ValueId> = HashMap::new();
    for &v in &plan.order {
        let mut r = v;
        let mut hops = 0;
        while let Some(Mark::Shared(f)) = plan.marks.get(&r) {
            r = *f;
            hops += 1;
            if hops > plan.order.len() {
                break;
            }
        }
        if params.contains_key(&r) {
            root.insert(v, r);
        }
    }
    if dropped > 0 {
        cx.note(|| format!("{dropped} tensor(s) without float32 calibration values left float"));
    }

    if upgrade {
        let n = upgrade_to_13(model);
        cx.note(|| {
            format!("raised the model from opset {opset} to 13 for per-axis DequantizeLinear ({n} node(s) rewritten)")
        });
    }
    let g = &mut model.graph;
    let mut t = Totals::default();

    // Relu/Clip removal where their input got parameters.
    for &(id, x, out) in &plan.removed {
        if !root.contains_key(&x) || !g.contains_node(id) {
            // Keep the node; the input keeps its own marks.
            continue;
        }
        g.replace_uses(out, x);
        g.remove_node(id);
        t.removed += 1;
    }

    // Activations: Q -> DQ after the producer; every reader reads the DQ output.
    let act_dt = if cfg.signed { DType::I8 } else { DType::U8 };
    let mut qinit: HashMap<ValueId, (ValueId, ValueId)> = HashMap::new();
    for &v in &plan.order {
        let Some(&r) = root.get(&v) else { continue };
        if !g.contains_value(v) {
            continue;
        }
        let readers = g.uses(v);
        // A Softmax output that only leaves the graph is quantised too (its range is fixed), as
        // quantize_static does: the graph output becomes the DequantizeLinear's output.
        let softmax_out = readers.is_empty()
            && g.is_graph_output(v)
            && !g.is_graph_input(v)
            && g.producer(v).is_some_and(|(p, _)| g.node(p).op == Op::Softmax);
        if readers.is_empty() && !softmax_out {
            continue;
        }
        let name = g.value(v).name.clone();
        if softmax_out {
            let pre = g.fresh_name(&format!("{name}_QuantizeLinear_Input"));
            if g.rename_value(v, pre).is_err() {
                continue;
            }
        }
        let (sv, zv) = match qinit.get(&r) {
            Some(&p) => p,
            None => {
                let rname = g.value(r).name.clone();
                let Some(p) = add_act_params(g, &rname, params[&r], cfg.signed) else { continue };
                qinit.insert(r, p);
                p
            }
        };
        let like = g.producer(v).map(|(p, _)| p).or_else(|| readers.first().map(|(n, _)| *n));
        if softmax_out {
            let Some((_, qv)) = add_node(
                g,
                Op::QuantizeLinear,
                vec![Some(v), Some(sv), Some(zv)],
                vec![],
                &format!("{name}_QuantizeLinear"),
                &format!("{name}_QuantizeLinear_Output"),
                like,
            ) else {
                continue;
            };
            let ty = g.value(v).ty.clone();
            let Ok(out) = g.add_value(name.clone(), ty) else { continue };
            let spec = NodeSpec::new(Op::DequantizeLinear, vec![Some(qv), Some(sv), Some(zv)], vec![Some(out)])
                .named(format!("{name}_DequantizeLinear"));
            let Ok(dn) = g.add_node(spec) else { continue };
            if let Some(l) = like {
                g.place_like(dn, l);
            }
            for d in g.outputs.iter_mut().filter(|d| d.value == v) {
                d.value = out;
            }
            t.acts += 1;
            continue;
        }
        let Some((qn, dv)) = add_qdq(g, v, (sv, zv), &name, like) else { continue };
        g.replace_uses(v, dv);
        g.set_input(qn, 0, Some(v));
        t.acts += 1;
        if cfg.split {
            t.split += split_readers(g, v, dv, params[&r], cfg.signed, &name, like);
        }
    }

    // Weights.
    let mut wcache: HashMap<(ValueId, Option<usize>, bool), (ValueId, Vec<f32>)> = HashMap::new();
    let mut wscales: Vec<Option<Vec<f32>>> = vec![None; plan.weights.len()];
    let mut originals: Vec<ValueId> = Vec::new();
    for (i, w) in plan.weights.iter().enumerate() {
        if !g.contains_node(w.node) {
            continue;
        }
        let key = (w.w, w.axis, w.asym);
        if let std::collections::hash_map::Entry::Vacant(slot) = wcache.entry(key) {
            let Some(tensor) = f32_const(g, w.w) else { continue };
            let Some(data) = tensor.to_f32_vec() else { continue };
            // The pass works on its own copy: a weight mapped from the model file need not stay
            // resident beside it (read back from the file if still used).
            tensor.release_pages();
            let dims: Vec<usize> = tensor.dims.iter().map(|&d| d.max(0) as usize).collect();
            if data.len() != dims.iter().product::<usize>() {
                continue;
            }
            let (qb, scales, zps, qdt) = if w.asym {
                let (q, qp) = quantize_const_asym(&data, cfg.signed, cfg.pof2);
                (q, vec![qp.scale], zp_bytes(qp.zp, cfg.signed), act_dt)
            } else {
                let (q, scales) = quantize_weight(&data, &dims, w.axis, cfg.pof2);
                let zps = vec![0u8; scales.len()];
                (q.iter().map(|&c| c as u8).collect::<Vec<u8>>(), scales, zps, DType::I8)
            };
            let wname = g.value(w.w).name.clone();
            if scales.iter().any(|s| !(255.0 * s).is_finite()) {
                cx.note(|| {
                    format!("constant '{wname}': its 8-bit codes would dequantise past float32's range: left float")
                });
                continue;
            }
            let sdims = if w.axis.is_some() { vec![scales.len() as i64] } else { vec![] };
            let sb: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
            let nq = qb.len();
            let Some(qv) = add_init(g, &format!("{wname}_quantized"), qdt, tensor.dims.clone(), qb) else {
                continue;
            };
            let Some(sv) = add_init(g, &format!("{wname}_scale"), DType::F32, sdims.clone(), sb) else { continue };
            let Some(zv) = add_init(g, &format!("{wname}_zero_point"), qdt, sdims, zps) else {
                continue;
            };
            let attrs = w.axis.map(|a| vec![Attribute::int("axis", a as i64)]).unwrap_or_default();
            let Some((_, dv)) = add_node(
                g,
                Op::DequantizeLinear,
                vec![Some(qv), Some(sv), Some(zv)],
                attrs,
                &format!("{wname}_DequantizeLinear"),
                &format!("{wname}_DequantizeLinear_Output"),
                Some(w.node),
            ) else {
                continue;
            };
            t.bytes_before += 4 * data.len() as u64;
            t.bytes_after += (nq + 5 * scales.len()) as u64;
            t.weights += 1;
            originals.push(w.w);
            slot.insert((dv, scales));
        }
        let (dv, scales) = &wcache[&key];
        g.set_input(w.node, w.slot, Some(*dv));
        wscales[i] = Some(scales.clone());
    }

    // Biases: int32, scale alpha * x_scale * w_scale, zero point 0.
    for b in &plan.biases {
        if !g.contains_node(b.node) {
            continue;
        }
        let x = plan.resolve(b.x);
        let (Some(r), Some(ws)) = (root.get(&x), wscales[b.w].as_ref()) else {
            let n = g.node(b.node).display_name();
            cx.note(|| format!("bias of '{n}' left float: its input or weight is not quantised"));
            continue;
        };
        let xs = params[r].scale;
        let Some(data) = f32_const(g, b.b).and_then(|t| t.to_f32_vec()) else { continue };
        let c = data.len();
        let scales: Vec<f32> = (0..c).map(|i| b.alpha * xs * if ws.len() == 1 { ws[0] } else { ws[i] }).collect();
        if scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            continue;
        }
        let mut clamped = 0;
        let q: Vec<i32> = data
            .iter()
            .zip(&scales)
            .map(|(&v, &s)| {
                let r = ((b.beta * v) as f64 / s as f64).round_ties_even();
                if r.abs() > i32::MAX as f64 {
                    clamped += 1;
                }
                r.clamp(i32::MIN as f64, i32::MAX as f64) as i32
            })
            .collect();
        let per_axis = ws.len() > 1;
        let (sdims, sv_data): (Vec<i64>, Vec<f32>) =
            if per_axis { (vec![c as i64], scales.clone()) } else { (vec![], vec![scales[0]]) };
        let bname = g.value(b.b).name.clone();
        let qb: Vec<u8> = q.iter().flat_map(|v| v.to_le_bytes()).collect();
        let sb: Vec<u8> = sv_data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let nz = sv_data.len();
        let Some(qv) = add_init(g, &format!("{bname}_quantized"), DType::I32, vec![c as i64], qb) else { continue };
        let Some(sv) = add_init(g, &format!("{bname}_scale"), DType::F32, sdims.clone(), sb) else { continue };
        let Some(zv) = add_init(g, &format!("{bname}_zero_point"), DType::I32, sdims, vec![0u8; 4 * nz]) else {
            continue;
        };
        let attrs = if per_axis { vec![Attribute::int("axis", 0)] } else { vec![] };
        let Some((_, dv)) = add_node(
            g,
            Op::DequantizeLinear,
            vec![Some(qv), Some(sv), Some(zv)],
            attrs,
            &format!("{bname}_DequantizeLinear"),
            &format!("{bname}_DequantizeLinear_Output"),
            Some(b.node),
        ) else {
            continue;
        };
        g.set_input(b.node, b.slot, Some(dv));
        if b.beta != 1.0 {
            let node = g.node_mut(b.node);
            node.attrs.retain(|a| a.name != "beta");
            node.attrs.push(Attribute::float("beta", 1.0));
        }
        if clamped > 0 {
            let n = g.node(b.node).display_name();
            cx.note(|| format!("bias of '{n}': {clamped} value(s) saturated int32"));
        }
        t.bytes_before += 4 * c as u64;
        t.bytes_after += 4 * c as u64 + 8 * nz as u64;
        t.biases += 1;
        originals.push(b.b);
    }

    // The float originals nobody reads any more.
    for v in originals {
        if !g.contains_value(v) || !g.is_unused(v) || g.is_graph_output(v) {
            continue;
        }
        if g.producer(v).is_some() {
            drop_dead_from(g, v);
        } else if g.value(v).init.is_some() && !g.is_graph_input(v) {
            g.remove_value(v);
        }
    }

    let scheme = format!(
        "{} activations{}, {} weights, calib={}, {} calibration run(s)",
        if cfg.signed { "int8" } else { "uint8" },
        if cfg.pof2 { ", power-of-two scales" } else { "" },
        if cfg.per_channel { "per-channel" } else { "per-tensor" },
        match cfg.method {
            Method::MinMax => "minmax".to_string(),
            Method::Percentile => format!("percentile {}", cfg.percentile),
            Method::Entropy => "entropy".to_string(),
        },
        feeds.len(),
    );
    let ratio = if t.bytes_after > 0 { t.bytes_before as f64 / t.bytes_after as f64 } else { 0.0 };
    let (a, sp, w, b, r, nodes) = (t.acts, t.split, t.weights, t.biases, t.removed, plan.nodes);
    cx.note(|| {
        format!(
            "quantised {nodes} node(s) ({scheme}): {a} activation QDQ pair(s) (+{sp} for further readers), \
             {w} int8 weight(s), {b} int32 bias(es), {r} Relu/Clip removed; weights {:.1} KiB -> {:.1} KiB \
             ({ratio:.2}x smaller)",
            t.bytes_before as f64 / 1024.0,
            t.bytes_after as f64 / 1024.0
        )
    });
    Ok(a + sp + w + b + r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::Rng;
    use crate::test_support::f32_value;
    use crate::{Calibration, PassManager, PassRegistry};
    use optc_ir::builder::GraphBuilder;
    use optc_ir::{Dim, Type};

    fn randn(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng(seed);
        (0..n).map(|_| r.normal()).collect()
    }

    fn eval(model: &Model, feed: &HashMap<String, Value>) -> Vec<f32> {
        let ev = Evaluator::new(model).unwrap();
        let out = ev.run(feed).unwrap();
        out[0].1.tensor().unwrap().to_f64_vec().unwrap().into_iter().map(|v| v as f32).collect()
    }

    fn ops(model: &Model) -> HashMap<String, usize> {
        let g = &model.graph;
        let mut m = HashMap::new();
        for id in g.nodes() {
            *m.entry(g.node(id).op.op_type().to_string()).or_insert(0) += 1;
        }
        m
    }

    fn run_with(model: &mut Model, pipeline: &str, feeds: Vec<HashMap<String, Value>>) -> Vec<String> {
        let mut cx = PassContext::new(optc_cost::Target::cpu());
        cx.explain = true;
        cx.measure_error = true;
        cx.calib = Some(Calibration { feeds });
        let before = model.clone();
        PassManager::new(PassRegistry::with_builtins()).run(model, pipeline, &mut cx).unwrap();
        optc_ir::verify::verify_model(model).unwrap();
        // Whenever the pass changed the model it reports the output error it measured.
        let reports: Vec<&str> = cx.reports().iter().map(|(_, l)| l.as_str()).collect();
        if ops(model) != ops(&before) {
            assert!(
                reports.iter().any(|l| l.starts_with("output error") && l.contains("LIFE on 'cpu'")),
                "{reports:?}"
            );
        }
        cx.explanations().iter().map(|(_, l)| l.clone()).collect()
    }

    /// x [1, 3, 8, 8] -> Conv(8, 3x3, bias) -> Relu -> Conv(4, 1x1, bias) -> y
    fn conv_model(opset: i64) -> Model {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(1), Dim::known(3), Dim::known(8), Dim::known(8)]).unwrap();
        let w1 =
            b.init_f32("w1", &[8, 3, 3, 3], &randn(8 * 27, 1).iter().map(|v| v * 0.3).collect::<Vec<_>>()).unwrap();
        let b1 = b.init_f32("b1", &[8], &randn(8, 2)).unwrap();
        let w2 = b.init_f32("w2", &[4, 8, 1, 1], &randn(32, 3)).unwrap();
        let b2 = b.init_f32("b2", &[4], &randn(4, 4)).unwrap();
        let pads = Attribute::ints("pads", vec![1, 1, 1, 1]);
        let c1 = b.op(Op::Conv, &[x, w1, b1], vec![pads]).unwrap();
        let r = b.op(Op::Relu, &[c1], vec![]).unwrap();
        let c2 = b.op(Op::Conv, &[r, w2, b2], vec![]).unwrap();
        b.output(
            c2,
            "y",
            Some(Type::tensor(DType::F32, vec![Dim::known(1), Dim::known(4), Dim::known(8), Dim::known(8)])),
        )
        .unwrap();
        Model::new(b.finish(), opset)
    }

    fn conv_feeds(n: usize) -> Vec<HashMap<String, Value>> {
        (0..n).map(|i| [("x".to_string(), f32_value(&[1, 3, 8, 8], &randn(192, 100 + i as u64)))].into()).collect()
    }

    /// The initializer named `{base}_<n>{suffix}` (builder names carry a counter) or `{base}{suffix}`.
    fn init_named(model: &Model, base: &str, suffix: &str) -> optc_ir::Tensor {
        let g = &model.graph;
        let hit = g.initializers.iter().copied().find(|&v| {
            let n = &g.value(v).name;
            n == &format!("{base}{suffix}")
                || (n.starts_with(&format!("{base}_"))
                    && n.ends_with(suffix)
                    && n[base.len() + 1..n.len() - suffix.len()].chars().all(|c| c.is_ascii_digit()))
        });
        g.const_tensor(hit.unwrap_or_else(|| panic!("no initializer {base}*{suffix}"))).unwrap().clone()
    }

    fn init_f32(model: &Model, base: &str, suffix: &str) -> Vec<f32> {
        init_named(model, base, suffix).to_f32_vec().unwrap()
    }

    fn cosine(a: &[f32], b: &[f32]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
        let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        dot / (na * nb)
    }

    #[test]
    fn pow2_rounds_up() {
        assert_eq!(pow2_ceil(0.3), 0.5);
        assert_eq!(pow2_ceil(0.5), 0.5);
        assert_eq!(pow2_ceil(0.500001), 1.0);
        assert_eq!(pow2_ceil(3.0), 4.0);
        assert_eq!(pow2_ceil(1e-6), 2f32.powi(-19));
        for i in 1..2000 {
            let s = i as f32 * 0.00137;
            let p = pow2_ceil(s);
            assert!(p >= s && p / 2.0 < s && p.to_bits() & 0x7F_FFFF == 0, "{s} -> {p}");
        }
    }

    #[test]
    fn activation_params_cover_the_range_and_zero() {
        for (lo, hi) in [(-1.0, 3.0), (0.5, 2.0), (-4.0, -1.0), (0.0, 6.0), (-0.001, 1000.0)] {
            for signed in [true, false] {
                for pof2 in [false, true] {
                    let q = act_params(lo, hi, signed, pof2);
                    let (qmin, qmax) = if signed { (-128, 127) } else { (0, 255) };
                    assert!((qmin..=qmax).contains(&q.zp));
                    let (dlo, dhi) = ((qmin - q.zp) as f32 * q.scale, (qmax - q.zp) as f32 * q.scale);
                    // zero is exact; the range is covered up to half a step at its ends.
                    assert!(dlo <= (lo as f32).min(0.0) + q.scale / 2.0 && dhi >= (hi as f32).max(0.0) - q.scale / 2.0);
                    if pof2 {
                        assert_eq!(q.scale.to_bits() & 0x7F_FFFF, 0, "{}", q.scale);
                    }
                }
            }
        }
        assert_eq!(act_params(0.0, 0.0, true, false), QParams { scale: 1.0, zp: 0 });
        // Relu output: zero point at the lowest code, so the clamp at 0 is exact.
        assert_eq!(act_params(0.0, 6.0, false, false).zp, 0);
        assert_eq!(act_params(0.0, 6.0, true, true).zp, -128);
    }

    #[test]
    fn weights_round_trip_within_half_a_step() {
        let dims = [6usize, 4, 3, 3];
        let mut w = randn(6 * 36, 7);
        w[40] = 9.0; // an outlier in channel 1 only
        for (j, x) in w[5 * 36..].iter_mut().enumerate() {
            *x = if j == 0 { 0.0 } else { 0.0 * *x };
        }
        for pof2 in [false, true] {
            let (q, s) = quantize_weight(&w, &dims, Some(0), pof2);
            assert_eq!(s.len(), 6);
            assert_eq!(s[5], 1.0, "all-zero channel");
            assert!(s[1] > 2.0 * s[0], "the outlier only widens its own channel");
            for (i, (&x, &c)) in w.iter().zip(&q).enumerate() {
                let sc = s[i / 36];
                assert!((-127..=127).contains(&(c as i32)));
                assert!((x - c as f32 * sc).abs() <= sc / 2.0 * 1.0001, "{i}: {x} vs {}", c as f32 * sc);
                if pof2 {
                    assert_eq!(sc.to_bits() & 0x7F_FFFF, 0);
                }
            }
        }
        // Axis 1 of [K, N]: one scale per column.
        let w: Vec<f32> = (0..12).map(|i| (i % 3) as f32 + 1.0).collect();
        let (_, s) = quantize_weight(&w, &[4, 3], Some(1), false);
        assert_eq!(s, vec![1.0 / 127.0, 2.0 / 127.0, 3.0 / 127.0]);
    }

    #[test]
    fn constants_of_generic_ops_use_all_codes() {
        // An all-positive scale vector (a BatchNorm folded into a Mul): zero point at the lowest
        // code, the largest value at the highest, twice the resolution of symmetric codes.
        let v: Vec<f32> = (0..64).map(|i| 0.5 + i as f32 / 32.0).collect();
        let (q, qp) = quantize_const_asym(&v, true, false);
        assert_eq!(qp.zp, -128);
        assert!((qp.scale - v[63] / 255.0).abs() <= 1e-7);
        assert_eq!(q[63] as i8, 127);
        for (&x, &c) in v.iter().zip(&q) {
            let back = (c as i8 as i32 - qp.zp) as f32 * qp.scale;
            assert!((x - back).abs() <= qp.scale / 2.0 * 1.0001, "{x} vs {back}");
        }
        // Mixed signs, uint8, non-finite values take the zero point (dequantise to 0).
        let v = [-1.0f32, 3.0, 0.0, f32::NAN, 2.5, f32::INFINITY];
        let (q, qp) = quantize_const_asym(&v, false, false);
        assert_eq!(qp, act_params(-1.0, 3.0, false, false));
        assert_eq!((q[0], q[1]), (0, 255));
        assert_eq!((q[2] as i32, q[3] as i32, q[5] as i32), (qp.zp, qp.zp, qp.zp));
        // Power-of-two scales.
        let (_, qp) = quantize_const_asym(&[0.1, 0.7], true, true);
        assert_eq!(qp.scale.to_bits() & 0x7F_FFFF, 0);
        // All zero: scale 1, nothing lost.
        let (q, qp) = quantize_const_asym(&[0.0; 5], true, false);
        assert_eq!(qp, QParams { scale: 1.0, zp: 0 });
        assert!(q.iter().all(|&c| c == 0));
    }

    #[test]
    fn min_max_skips_non_finite_values() {
        for n in [0usize, 1, 15, 16, 17, 40, 1000] {
            let v: Vec<f32> = (0..n).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect();
            let want = v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
            let (mn, mx, c) = finite_min_max(&v);
            assert_eq!((mn, mx), want, "{n}");
            assert_eq!(c > 0, n > 0);
            let mut w = v.clone();
            w.extend([f32::INFINITY, f32::NAN, f32::NEG_INFINITY]);
            w.rotate_right(n / 3);
            let (mn2, mx2, c2) = finite_min_max(&w);
            assert_eq!(c2 > 0, n > 0);
            if n > 0 {
                assert_eq!((mn2, mx2), want, "{n} with non-finite values");
            }
        }
        let (_, _, c) = finite_min_max(&[f32::NAN, f32::INFINITY]);
        assert_eq!(c, 0);
    }

    #[test]
    fn parallel_calibration_sees_every_run() {
        // minmax runs go in parallel and merge; the input's range must be that of all feeds.
        let feeds = conv_feeds(5);
        let mut m = conv_model(17);
        run_with(&mut m, "quant-w8", feeds.clone());
        let (mut lo, mut hi) = (0f64, 0f64);
        for f in &feeds {
            for x in f["x"].tensor().unwrap().to_f64_vec().unwrap() {
                lo = lo.min(x);
                hi = hi.max(x);
            }
        }
        let want = act_params(lo, hi, true, false);
        let xs = init_f32(&m, "x", "_scale")[0];
        let xz = init_named(&m, "x", "_zero_point");
        assert!((xs - want.scale).abs() <= 1e-6 * want.scale, "{xs} vs {}", want.scale);
        assert_eq!(xz.to_i64_vec().map(|v| v[0] as i32), Some(want.zp));
        // The same ranges as one sequential histogram run would see (percentile 100 = min/max).
        let mut h = conv_model(17);
        run_with(&mut h, "quant-w8(calib=percentile,percentile=100)", feeds);
        assert!((init_f32(&h, "x", "_scale")[0] - xs).abs() <= 0.02 * xs);
    }

    #[test]
    fn histogram_grows_keeps_counts_and_percentiles() {
        let mut h = Hist::new(64);
        let a: Vec<f32> = (0..1000).map(|i| (i as f32 / 999.0) * 2.0 - 1.0).collect();
        h.add(&a, 1.0);
        assert_eq!(h.counts.len(), 64);
        let b: Vec<f32> = (0..1000).map(|i| (i as f32 / 999.0) * 6.0 - 3.0).collect();
        h.add(&b, 3.0);
        assert_eq!(h.total(), 2000);
        assert!(h.threshold() >= 3.0 && h.counts.len() <= 128 && h.counts.len().is_multiple_of(2));
        // A huge outlier merges pairs instead of growing without bound.
        h.add(&[1000.0], 1000.0);
        assert_eq!(h.total(), 2001);
        assert!(h.threshold() >= 1000.0 && h.counts.len() <= 128, "{} bins", h.counts.len());
        // Zero stays on a bin edge: negative and positive mass are separate.
        let neg: u64 = h.counts[..h.counts.len() / 2].iter().sum();
        assert!((990..=1010).contains(&neg), "{neg}");
        // Percentile ranges on a plain histogram.
        let mut u = Hist::new(2048);
        let v: Vec<f32> = (0..100_000).map(|i| i as f32 / 100_000.0).collect();
        u.add(&v, 1.0);
        let (lo, hi) = percentile_range(&u, 98.0).unwrap();
        assert!((lo - 0.01).abs() < 2e-3 && (hi - 0.99).abs() < 2e-3, "{lo} {hi}");
        // Zeros before any range are kept.
        let mut z = Hist::new(16);
        z.add(&[0.0, 0.0], 0.0);
        z.add(&[1.0], 1.0);
        assert_eq!(z.total(), 3);
        assert_eq!(z.counts[8], 2);
    }

    #[test]
    fn entropy_threshold_clips_tails_of_a_heavy_tailed_distribution() {
        let mut h = Hist::new(2048);
        let mut v = randn(200_000, 9);
        v.extend([40.0f32, -35.0]); // two far outliers
        let amax = v.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
        h.add(&v, amax);
        let (lo, hi) = entropy_threshold(&h, 128).unwrap();
        assert!(lo < 0.0 && hi > 0.0 && (lo + hi).abs() <= 2.0 * h.stride + 1e-9, "symmetric: {lo} {hi}");
        // Well inside the outliers, well outside the body of the normal.
        assert!(hi > 2.0 && hi < 20.0, "threshold {hi}");
        // On a uniform distribution there is no tail to cut.
        let mut u = Hist::new(2048);
        let w: Vec<f32> = (0..100_000).map(|i| i as f32 / 50_000.0 - 1.0).collect();
        u.add(&w, 1.0);
        let (_, hi) = entropy_threshold(&u, 128).unwrap();
        assert!(hi > 0.9, "uniform: {hi}");
    }

    #[test]
    fn conv_relu_conv_becomes_qdq_with_int32_bias() {
        let base = conv_model(17);
        let feeds = conv_feeds(4);
        for act in ["int8", "uint8"] {
            let mut m = base.clone();
            let notes = run_with(&mut m, &format!("quant-w8(act={act})"), feeds.clone());
            let o = ops(&m);
            assert_eq!(o.get("Relu"), None, "Relu removed: {notes:?}");
            assert_eq!(o["Conv"], 2);
            // x, conv1 (the Relu's range), conv2 input = same; conv2 output is the graph output.
            assert_eq!(o["QuantizeLinear"], 2, "{o:?}");
            assert_eq!(o["DequantizeLinear"], 2 + 4, "{o:?}");
            assert!(m.graph.find_value("w1_1").is_none(), "the float weight is gone");
            let bq = init_named(&m, "b1", "_quantized");
            assert_eq!(bq.dtype, DType::I32);
            let wq = init_named(&m, "w1", "_quantized");
            assert_eq!(wq.dtype, DType::I8);
            let bs = init_f32(&m, "b1", "_scale");
            let ws = init_f32(&m, "w1", "_scale");
            let xs = init_f32(&m, "x", "_scale")[0];
            for c in 0..8 {
                assert!((bs[c] - xs * ws[c]).abs() <= 1e-6 * bs[c].abs(), "bias scale = x scale * w scale");
            }
            for f in conv_feeds(2) {
                let (want, got) = (eval(&base, &f), eval(&m, &f));
                assert!(cosine(&want, &got) > 0.995, "{act}: cosine {}", cosine(&want, &got));
            }
            assert!(notes.iter().any(|l| l.contains("Relu at") && l.contains("removed")), "{notes:?}");
            assert!(notes.iter().any(|l| l.contains("quantised 3 node(s)")), "{notes:?}");
        }
    }

    #[test]
    fn pof2_scales_are_powers_of_two() {
        let mut m = conv_model(13);
        let notes = run_with(&mut m, "quant-w8(pof2=true,calib=entropy)", conv_feeds(3));
        let g = &m.graph;
        let mut seen = 0;
        for &v in &g.initializers {
            let name = &g.value(v).name;
            if name.ends_with("_scale") {
                for s in g.const_tensor(v).unwrap().to_f32_vec().unwrap() {
                    assert_eq!(s.to_bits() & 0x7F_FFFF, 0, "{name}: {s}");
                    seen += 1;
                }
            }
        }
        assert!(seen > 8 + 8 + 4 + 4, "{seen} scales\n{notes:?}");
        assert!(notes.iter().any(|l| l.contains("power-of-two")), "{notes:?}");
        let f = &conv_feeds(1)[0];
        assert!(cosine(&eval(&conv_model(13), f), &eval(&m, f)) > 0.98);
    }

    #[test]
    fn matmul_gemm_and_generic_ops() {
        // x [2, 16] -> MatMul W [16, 8] -> Add const -> Gemm(transB, alpha, beta, C [4]) -> Softmax
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(2), Dim::known(16)]).unwrap();
        let w = b.init_f32("W", &[16, 8], &randn(128, 11)).unwrap();
        let c = b.init_f32("c", &[8], &randn(8, 12)).unwrap();
        let bt = b.init_f32("B", &[4, 8], &randn(32, 13)).unwrap();
        let cc = b.init_f32("C", &[4], &randn(4, 14)).unwrap();
        let y1 = b.op(Op::MatMul, &[x, w], vec![]).unwrap();
        let y2 = b.op(Op::Add, &[y1, c], vec![]).unwrap();
        let attrs = vec![Attribute::int("transB", 1), Attribute::float("alpha", 0.5), Attribute::float("beta", 2.0)];
        let y3 = b.op(Op::Gemm, &[y2, bt, cc], attrs).unwrap();
        let y4 = b.op(Op::Softmax, &[y3], vec![Attribute::int("axis", -1)]).unwrap();
        b.output(y4, "y", None).unwrap();
        let base = Model::new(b.finish(), 17);
        let feeds: Vec<HashMap<String, Value>> =
            (0..4).map(|i| [("x".to_string(), f32_value(&[2, 16], &randn(32, 50 + i)))].into()).collect();
        let mut m = base.clone();
        let notes = run_with(&mut m, "quant-w8", feeds.clone());
        let o = ops(&m);
        // x, MatMul out, Add out, Gemm out get pairs, and so does Softmax's output, which only
        // leaves the graph (as quantize_static does): the graph output is the DQ's output.
        assert_eq!(o["QuantizeLinear"], 5, "{o:?}\n{notes:?}");
        // W (axis 1), c (per tensor), B (axis 0), C (int32) + 5 activation DQs.
        assert_eq!(o["DequantizeLinear"], 9, "{o:?}");
        let y = m.graph.outputs[0].value;
        assert_eq!(m.graph.value(y).name, "y");
        let (yp, _) = m.graph.producer(y).unwrap();
        assert_eq!(m.graph.node(yp).op, Op::DequantizeLinear);
        // The Add's constant is quantised as an activation: asymmetric, the activation type.
        let cz = init_named(&m, "c", "_zero_point");
        let cq = init_named(&m, "c", "_quantized");
        assert_eq!((cz.dtype, cq.dtype), (DType::I8, DType::I8));
        let cv = randn(8, 12);
        let (lo, hi) = cv.iter().fold((0f32, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
        let cs = init_f32(&m, "c", "_scale")[0];
        assert!((cs - (hi - lo) / 255.0).abs() <= 1e-6 * cs, "{cs} vs {}", (hi - lo) / 255.0);
        let g = &m.graph;
        let gemm = g.nodes().find(|&id| g.node(id).op == Op::Gemm).unwrap();
        assert_eq!(g.node(gemm).attrs.get_float("beta"), Some(1.0));
        assert_eq!(init_f32(&m, "W", "_scale").len(), 8);
        assert_eq!(init_f32(&m, "B", "_scale").len(), 4);
        assert!(init_named(&m, "c", "_scale").dims.is_empty());
        for f in &feeds {
            let (want, got) = (eval(&base, f), eval(&m, f));
            assert!(cosine(&want, &got) > 0.99, "cosine {}", cosine(&want, &got));
        }
    }

    #[test]
    fn every_reader_of_a_quantised_tensor_gets_its_own_pair() {
        // x -> Relu -> {MatMul Wq, MatMul Wk, Add} -> Add -> Add -> y: the Relu output has three readers.
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(4), Dim::known(16)]).unwrap();
        let wq = b.init_f32("Wq", &[16, 16], &randn(256, 21)).unwrap();
        let wk = b.init_f32("Wk", &[16, 16], &randn(256, 22)).unwrap();
        let r = b.op(Op::Relu, &[x], vec![]).unwrap();
        let q = b.op(Op::MatMul, &[r, wq], vec![]).unwrap();
        let k = b.op(Op::MatMul, &[r, wk], vec![]).unwrap();
        let qk = b.op(Op::Add, &[q, k], vec![]).unwrap();
        let y = b.op(Op::Add, &[qk, r], vec![]).unwrap();
        b.output(y, "y", None).unwrap();
        let base = Model::new(b.finish(), 17);
        let feeds: Vec<HashMap<String, Value>> =
            (0..4).map(|i| [("x".to_string(), f32_value(&[4, 16], &randn(64, 70 + i)))].into()).collect();
        let quantise = |pipeline: &str| {
            let mut m = base.clone();
            run_with(&mut m, pipeline, feeds.clone());
            m
        };
        let (split, shared) = (quantise("quant-w8"), quantise("quant-w8(split=false)"));
        let g = &split.graph;
        let relu_out = g.nodes().find(|&n| g.node(n).op == Op::Relu).map(|n| g.node(n).outputs()[0].unwrap());
        // With split, the Relu output feeds three Qs, each read by one DQ read by one node, and
        // no two pairs share a scale initializer.
        let qs: Vec<NodeId> = g.uses(relu_out.unwrap()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(qs.len(), 3);
        let mut scales = HashSet::new();
        for &qn in &qs {
            assert_eq!(g.node(qn).op, Op::QuantizeLinear);
            assert!(scales.insert(g.node(qn).input(1).unwrap()), "pairs share a scale initializer");
            let dqs = g.uses(g.node(qn).outputs()[0].unwrap());
            assert_eq!(dqs.len(), 1);
            assert_eq!(g.uses(g.node(dqs[0].0).outputs()[0].unwrap()).len(), 1);
        }
        let sg = &shared.graph;
        let relu_out = sg.nodes().find(|&n| sg.node(n).op == Op::Relu).map(|n| sg.node(n).outputs()[0].unwrap());
        assert_eq!(sg.uses(relu_out.unwrap()).len(), 1);
        assert_eq!(ops(&split)["QuantizeLinear"], ops(&shared)["QuantizeLinear"] + 2);
        // Same parameters: the two models compute the same values.
        for f in &feeds {
            assert_eq!(eval(&split, f), eval(&shared, f));
        }
    }

    #[test]
    fn node_names_stay_unique_when_the_model_already_uses_the_pairs_names() {
        // An already-quantised export can have a node called `<tensor>_QuantizeLinear`.
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(4), Dim::known(16)]).unwrap();
        let w = b.init_f32("W", &[16, 8], &randn(128, 31)).unwrap();
        let mm = b.op(Op::MatMul, &[x, w], vec![]).unwrap();
        let y = b.op(Op::Sigmoid, &[mm], vec![]).unwrap();
        b.output(y, "y", None).unwrap();
        let mut base = Model::new(b.finish(), 17);
        let g = &mut base.graph;
        let mm_name = g.value(mm).name.clone();
        let sig = g.nodes().find(|&n| g.node(n).op == Op::Sigmoid).unwrap();
        g.node_mut(sig).name = Some(format!("{mm_name}_QuantizeLinear"));
        let feeds: Vec<HashMap<String, Value>> =
            (0..2).map(|i| [("x".to_string(), f32_value(&[4, 16], &randn(64, 90 + i)))].into()).collect();
        run_with(&mut base, "quant-w8", feeds);
        let g = &base.graph;
        let names: Vec<String> = g.nodes().filter_map(|n| g.node(n).name.clone()).collect();
        let unique: HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert!(names.iter().filter(|n| n.starts_with(&format!("{mm_name}_QuantizeLinear"))).count() >= 2);
    }

    #[test]
    fn exclusions_and_skips_are_explained() {
        let mut m = conv_model(17);
        let names: Vec<String> = m.graph.nodes().map(|id| m.graph.node(id).display_name()).collect();
        let conv2 = names.iter().find(|n| n.contains("Conv") && n != &&names[0]).cloned().unwrap_or(names[2].clone());
        let notes = run_with(&mut m, &format!("quant-w8(exclude={conv2},exclude_ops=Relu)"), conv_feeds(2));
        assert!(notes.iter().any(|l| l.contains(&format!("'{conv2}': not quantised: excluded"))), "{notes:?}");
        assert!(notes.iter().any(|l| l.contains("Relu at") && l.contains("exclude_ops")), "{notes:?}");
        assert_eq!(ops(&m)["Relu"], 1);
        let mut m2 = conv_model(17);
        let notes = run_with(&mut m2, "quant-w8(min_size=100)", conv_feeds(2));
        assert!(notes.iter().any(|l| l.contains("weight too small (32 elements < min_size 100)")), "{notes:?}");
    }

    #[test]
    fn bad_options_are_errors() {
        let pm = PassManager::new(PassRegistry::with_builtins());
        for (opt, want) in [
            ("calib=foo", "option 'calib' must be minmax, percentile or entropy, got 'foo'"),
            ("act=int4", "option 'act'"),
            ("pof2=maybe", "option 'pof2'"),
            ("percentile=0", "option 'percentile'"),
            ("exclude_ops=Foo", "'Foo' is not an op type"),
        ] {
            let mut m = conv_model(17);
            let mut cx = PassContext::new(optc_cost::Target::cpu());
            let e = pm.run(&mut m, &format!("quant-w8({opt})"), &mut cx).expect_err(opt).to_string();
            assert!(e.contains(want), "{opt}: {e}");
        }
    }

    #[test]
    fn opset_11_is_raised_to_13_for_per_axis_weights() {
        // Conv -> Unsqueeze(axes attr) -> Softmax(axis -1)
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(1), Dim::known(3), Dim::known(4), Dim::known(4)]).unwrap();
        let w = b.init_f32("w", &[2, 3, 1, 1], &randn(6, 21)).unwrap();
        let c = b.op(Op::Conv, &[x, w], vec![]).unwrap();
        let u = b.op(Op::Unsqueeze, &[c], vec![Attribute::ints("axes", vec![0])]).unwrap();
        let s = b.op(Op::Softmax, &[u], vec![Attribute::int("axis", 4)]).unwrap();
        b.output(s, "y", None).unwrap();
        let base = Model::new(b.finish(), 11);
        let feeds: Vec<HashMap<String, Value>> =
            (0..2).map(|i| [("x".to_string(), f32_value(&[1, 3, 4, 4], &randn(48, 60 + i)))].into()).collect();
        let mut m = base.clone();
        let notes = run_with(&mut m, "quant-w8", feeds.clone());
        assert_eq!(m.opset(""), Some(13), "{notes:?}");
        let g = &m.graph;
        let un = g.nodes().find(|&id| g.node(id).op == Op::Unsqueeze).unwrap();
        assert!(g.node(un).attrs.get_ints("axes").is_none() && g.node(un).input(1).is_some());
        assert_eq!(init_f32(&m, "w", "_scale").len(), 2);
        let (want, got) = (eval(&base, &feeds[0]), eval(&m, &feeds[0]));
        assert!(cosine(&want, &got) > 0.99);
        // A Softmax over a coerced 2-D input: Flatten -> Softmax(-1) -> Reshape keeps its meaning.
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(1), Dim::known(3), Dim::known(4), Dim::known(4)]).unwrap();
        let w = b.init_f32("w", &[2, 3, 1, 1], &randn(6, 21)).unwrap();
        let c = b.op(Op::Conv, &[x, w], vec![]).unwrap();
        let s = b.op(Op::Softmax, &[c], vec![Attribute::int("axis", 1)]).unwrap();
        b.output(s, "y", None).unwrap();
        let base = Model::new(b.finish(), 11);
        let mut m = base.clone();
        let notes = run_with(&mut m, "quant-w8", feeds.clone());
        assert_eq!(m.opset(""), Some(13), "{notes:?}");
        let o = ops(&m);
        assert_eq!((o["Flatten"], o["Reshape"], o["Shape"]), (1, 1, 1), "{o:?}");
        let (want, got) = (eval(&base, &feeds[0]), eval(&m, &feeds[0]));
        assert!(cosine(&want, &got) > 0.999, "{}", cosine(&want, &got));
        // Opset 10 stays: one scale per weight.
        let mut m = base.clone();
        m.opset_imports.iter_mut().for_each(|o| o.version = Some(10));
        let notes = run_with(&mut m, "quant-w8", feeds);
        assert_eq!(m.opset(""), Some(10));
        assert!(notes.iter().any(|l| l.contains("one scale per weight")), "{notes:?}");
        assert!(init_named(&m, "w", "_scale").dims.is_empty());
    }

    #[test]
    fn random_calibration_is_announced() {
        let mut m = conv_model(17);
        let mut cx = PassContext::new(optc_cost::Target::cpu());
        cx.explain = true;
        PassManager::new(PassRegistry::with_builtins()).run(&mut m, "quant-w8(runs=2)", &mut cx).unwrap();
        optc_ir::verify::verify_model(&m).unwrap();
        assert!(cx.explanations().iter().any(|(_, l)| l.contains("no calibration data")));
        assert!(ops(&m).contains_key("QuantizeLinear"));
        // The npu target asks for power-of-two scales.
        let mut m = conv_model(17);
        let mut cx = PassContext::new(optc_cost::Target::builtin("npu").unwrap());
        cx.explain = true;
        PassManager::new(PassRegistry::with_builtins()).run(&mut m, "quant-w8(runs=1)", &mut cx).unwrap();
        let xs = init_f32(&m, "x", "_scale")[0];
        assert_eq!(xs.to_bits() & 0x7F_FFFF, 0, "{xs}");
    }
}
