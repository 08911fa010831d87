//! Kernels: recurrent layers. `LSTM`, `GRU` (with `linear_before_reset`) and `RNN` in every
//! direction, with activations and their alpha/beta, `clip`, `sequence_lens`, initial states,
//! LSTM peepholes and `input_forget`, and the opset-14 `layout` attribute.
//!
//! float32, float16 and bfloat16 compute in f32, float64 in f64. The input projections of all
//! time steps are one matrix product; each step adds one product with the recurrence weights.

use super::Ctx;
use crate::error::Result;
use crate::value::{Tensor, Value};
use half::{bf16, f16};
use ndarray::{Array2, Array3, Array4, ArrayD, ArrayView2, Axis, Ix2, Ix3, s};
use optc_ir::{AttrList, AttrValue, DType, Op};

pub fn run(cx: &Ctx, inputs: &[Option<&Value>]) -> Option<Result<Vec<Value>>> {
    let kind = match cx.node.op {
        Op::LSTM => Kind::Lstm,
        Op::GRU => Kind::Gru,
        Op::RNN => Kind::Rnn,
        _ => return None,
    };
    Some(run_rnn(cx, inputs, kind))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Lstm,
    Gru,
    Rnn,
}

impl Kind {
    /// Gates stacked in W and R.
    fn gates(self) -> usize {
        match self {
            Kind::Lstm => 4,
            Kind::Gru => 3,
            Kind::Rnn => 1,
        }
    }
    fn default_activations(self) -> &'static [&'static str] {
        match self {
            Kind::Lstm => &["Sigmoid", "Tanh", "Tanh"],
            Kind::Gru => &["Sigmoid", "Tanh"],
            Kind::Rnn => &["Tanh"],
        }
    }
}

/// The element types the layers compute in.
trait Real: ndarray::LinalgScalar + PartialOrd + Send + Sync {
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn tanh(self) -> Self;
    /// The tensor's values in this type (float tensors only).
    fn from_tensor(t: &Tensor) -> Option<ArrayD<Self>>;
    /// A tensor of element type `dtype` (this type, or a narrower float for f32).
    fn into_tensor(a: ArrayD<Self>, dtype: DType) -> Tensor;
}

impl Real for f32 {
    fn from_f64(x: f64) -> f32 {
        x as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn exp(self) -> f32 {
        f32::exp(self)
    }
    fn tanh(self) -> f32 {
        f32::tanh(self)
    }
    fn from_tensor(t: &Tensor) -> Option<ArrayD<f32>> {
        match t {
            Tensor::F32(a) => Some(a.clone()),
            Tensor::F64(a) => Some(a.mapv(|x| x as f32)),
            Tensor::F16(a) => Some(a.mapv(f32::from)),
            Tensor::BF16(a) => Some(a.mapv(f32::from)),
            _ => None,
        }
    }
    fn into_tensor(a: ArrayD<f32>, dtype: DType) -> Tensor {
        match dtype {
            DType::F16 => Tensor::F16(a.mapv(f16::from_f32)),
            DType::BF16 => Tensor::BF16(a.mapv(bf16::from_f32)),
            DType::F64 => Tensor::F64(a.mapv(f64::from)),
            _ => Tensor::F32(a),
        }
    }
}

impl Real for f64 {
    fn from_f64(x: f64) -> f64 {
        x
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn exp(self) -> f64 {
        f64::exp(self)
    }
    fn tanh(self) -> f64 {
        f64::tanh(self)
    }
    fn from_tensor(t: &Tensor) -> Option<ArrayD<f64>> {
        match t {
            Tensor::F64(a) => Some(a.clone()),
            Tensor::F32(a) => Some(a.mapv(f64::from)),
            Tensor::F16(a) => Some(a.mapv(f64::from)),
            Tensor::BF16(a) => Some(a.mapv(f64::from)),
            _ => None,
        }
    }
    fn into_tensor(a: ArrayD<f64>, _dtype: DType) -> Tensor {
        Tensor::F64(a)
    }
}

/// An activation function of the recurrent ops, with its alpha and beta.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    Relu,
    Tanh,
    Sigmoid,
    Affine(f64, f64),
    LeakyRelu(f64),
    ThresholdedRelu(f64),
    ScaledTanh(f64, f64),
    HardSigmoid(f64, f64),
    Elu(f64),
    Softsign,
    Softplus,
}

impl Act {
    /// Parses a name (case-insensitively), taking alpha and beta from the attribute lists
    /// when the function uses them, or the function's defaults when the lists ran out.
    fn parse(name: &str, alphas: &mut impl Iterator<Item = f64>, betas: &mut impl Iterator<Item = f64>) -> Option<Act> {
        let mut a = |d: f64| alphas.next().unwrap_or(d);
        Some(match name.to_ascii_lowercase().as_str() {
            "relu" => Act::Relu,
            "tanh" => Act::Tanh,
            "sigmoid" => Act::Sigmoid,
            "affine" => {
                let al = a(1.0);
                Act::Affine(al, betas.next().unwrap_or(0.0))
            }
            "leakyrelu" => Act::LeakyRelu(a(0.01)),
            "thresholdedrelu" => Act::ThresholdedRelu(a(1.0)),
            "scaledtanh" => {
                let al = a(1.0);
                Act::ScaledTanh(al, betas.next().unwrap_or(1.0))
            }
            "hardsigmoid" => {
                let al = a(0.2);
                Act::HardSigmoid(al, betas.next().unwrap_or(0.5))
            }
            "elu" => Act::Elu(a(1.0)),
            "softsign" => Act::Softsign,
            "softplus" => Act::Softplus,
            _ => return None,
        })
    }

    #[inline]
    fn apply<T: Real>(self, x: T) -> T {
        match self {
            Act::Sigmoid => T::one() / (T::one() + (T::zero() - x).exp()),
            Act::Tanh => x.tanh(),
            Act::Relu => {
                if x > T::zero() {
                    x
                } else {
                    T::zero()
                }
            }
            other => T::from_f64(other.apply_f64(x.to_f64())),
        }
    }

    fn apply_f64(self, x: f64) -> f64 {
        match self {
            Act::Relu => x.max(0.0),
            Act::Tanh => x.tanh(),
            Act::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Act::Affine(a, b) => a * x + b,
            Act::LeakyRelu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a * x
                }
            }
            Act::ThresholdedRelu(a) => {
                if x > a {
                    x
                } else {
                    0.0
                }
            }
            Act::ScaledTanh(a, b) => a * (b * x).tanh(),
            Act::HardSigmoid(a, b) => (a * x + b).clamp(0.0, 1.0),
            Act::Elu(a) => {
                if x >= 0.0 {
                    x
                } else {
                    a * (x.exp() - 1.0)
                }
            }
            Act::Softsign => x / (1.0 + x.abs()),
            Act::Softplus => {
                // log(1 + e^x) without overflow for large x.
                if x > 0.0 { x + (-x).exp().ln_1p() } else { x.exp().ln_1p() }
            }
        }
    }
}

fn run_rnn(cx: &Ctx, inputs: &[Option<&Value>], kind: Kind) -> Result<Vec<Value>> {
    let x = cx.tensor(inputs, 0)?;
    match x.dtype() {
        DType::F64 => compute::<f64>(cx, inputs, kind, DType::F64),
        d @ (DType::F32 | DType::F16 | DType::BF16) => compute::<f32>(cx, inputs, kind, d),
        d => Err(cx.err(format!("X has element type {d}; {:?} takes float tensors", cx.node.op))),
    }
}

fn array<T: Real>(cx: &Ctx, t: &Tensor, what: &str) -> Result<ArrayD<T>> {
    T::from_tensor(t).ok_or_else(|| cx.err(format!("{what} must be a float tensor, it is {}", t.dtype())))
}

fn array3<T: Real>(cx: &Ctx, t: &Tensor, what: &str) -> Result<Array3<T>> {
    array(cx, t, what)?
        .into_dimensionality::<Ix3>()
        .map_err(|_| cx.err(format!("{what} must have rank 3, it has shape {:?}", t.shape())))
}

fn array2<T: Real>(cx: &Ctx, t: &Tensor, what: &str) -> Result<Array2<T>> {
    array(cx, t, what)?
        .into_dimensionality::<Ix2>()
        .map_err(|_| cx.err(format!("{what} must have rank 2, it has shape {:?}", t.shape())))
}

/// The activation functions, `per_dir` for each direction.
fn activations(cx: &Ctx, kind: Kind, nd: usize) -> Result<Vec<Act>> {
    let per_dir = kind.default_activations().len();
    let mut names: Vec<String> = match cx.node.attrs.attr("activations").map(|a| &a.value) {
        None => kind.default_activations().iter().map(|s| s.to_string()).collect(),
        Some(AttrValue::Strings(v)) => v.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect(),
        Some(other) => {
            return Err(cx.err(format!("attribute activations must be strings, it is {}", other.kind_name())));
        }
    };
    // One set given for a bidirectional layer serves both directions (as in onnxruntime).
    if nd == 2 && names.len() == per_dir {
        names.extend_from_within(..);
    }
    if names.len() != per_dir * nd {
        return Err(cx.err(format!(
            "{} activations given; {:?} with {nd} direction(s) needs {}",
            names.len(),
            cx.node.op,
            per_dir * nd
        )));
    }
    let alphas = cx.attr_floats("activation_alpha").unwrap_or_default();
    let betas = cx.attr_floats("activation_beta").unwrap_or_default();
    let mut alphas = alphas.into_iter().map(f64::from);
    let mut betas = betas.into_iter().map(f64::from);
    names
        .iter()
        .map(|n| Act::parse(n, &mut alphas, &mut betas).ok_or_else(|| cx.err(format!("unknown activation '{n}'"))))
        .collect()
}

fn compute<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], kind: Kind, out_dtype: DType) -> Result<Vec<Value>> {
    let ng = kind.gates();
    let layout = cx.attr_int("layout", 0);
    if layout != 0 && layout != 1 {
        return Err(cx.err(format!("layout must be 0 or 1, it is {layout}")));
    }
    let direction = cx.attr_string("direction", "forward");
    let nd = match direction.as_str() {
        "forward" | "reverse" => 1,
        "bidirectional" => 2,
        other => return Err(cx.err(format!("unknown direction '{other}'"))),
    };
    // X as [seq, batch, input].
    let mut x = array3::<T>(cx, cx.tensor(inputs, 0)?, "X")?;
    if layout == 1 {
        x = x.permuted_axes([1, 0, 2]);
    }
    if !x.is_standard_layout() {
        x = x.as_standard_layout().into_owned();
    }
    let (seq, batch, input) = x.dim();
    let w = array3::<T>(cx, cx.tensor(inputs, 1)?, "W")?;
    let r = array3::<T>(cx, cx.tensor(inputs, 2)?, "R")?;
    let hidden = match cx.node.attrs.get_int("hidden_size") {
        Some(h) => usize::try_from(h).map_err(|_| cx.err(format!("hidden_size {h} is negative")))?,
        None => r.dim().2,
    };
    let gh = ng * hidden;
    if w.dim() != (nd, gh, input) {
        return Err(cx.err(format!("W has shape {:?}, expected [{nd}, {gh}, {input}]", w.shape())));
    }
    if r.dim() != (nd, gh, hidden) {
        return Err(cx.err(format!("R has shape {:?}, expected [{nd}, {gh}, {hidden}]", r.shape())));
    }
    let b = match cx.opt_tensor(inputs, 3)? {
        Some(t) => {
            let b = array2::<T>(cx, t, "B")?;
            if b.dim() != (nd, 2 * gh) {
                return Err(cx.err(format!("B has shape {:?}, expected [{nd}, {}]", b.shape(), 2 * gh)));
            }
            b
        }
        None => Array2::zeros((nd, 2 * gh)),
    };
    let lens: Vec<usize> = match cx.opt_tensor(inputs, 4)? {
        None => vec![seq; batch],
        Some(t) => {
            let v = t.to_i64_vec().ok_or_else(|| cx.err("sequence_lens must be an integer tensor"))?;
            if v.len() != batch {
                return Err(cx.err(format!("sequence_lens has {} entries, the batch is {batch}", v.len())));
            }
            v.into_iter()
                .map(|l| {
                    usize::try_from(l)
                        .ok()
                        .filter(|&l| l <= seq)
                        .ok_or_else(|| cx.err(format!("sequence length {l} is outside [0, {seq}]")))
                })
                .collect::<Result<_>>()?
        }
    };
    // Initial states as [nd, batch, hidden].
    let state = |i: usize, what: &str| -> Result<Array3<T>> {
        match cx.opt_tensor(inputs, i)? {
            None => Ok(Array3::zeros((nd, batch, hidden))),
            Some(t) => {
                let mut a = array3::<T>(cx, t, what)?;
                if layout == 1 {
                    a = a.permuted_axes([1, 0, 2]).as_standard_layout().into_owned();
                }
                if a.dim() != (nd, batch, hidden) {
                    let want = if layout == 1 { [batch, nd, hidden] } else { [nd, batch, hidden] };
                    return Err(cx.err(format!("{what} has shape {:?}, expected {want:?}", t.shape())));
                }
                Ok(a)
            }
        }
    };
    let h0 = state(5, "initial_h")?;
    let c0 = if kind == Kind::Lstm { state(6, "initial_c")? } else { Array3::zeros((nd, batch, hidden)) };
    let p = match (kind, cx.opt_tensor(inputs, 7)?) {
        (Kind::Lstm, Some(t)) => {
            let p = array2::<T>(cx, t, "P")?;
            if p.dim() != (nd, 3 * hidden) {
                return Err(cx.err(format!("P has shape {:?}, expected [{nd}, {}]", p.shape(), 3 * hidden)));
            }
            p
        }
        _ => Array2::zeros((nd, 3 * hidden)),
    };
    let clip = match cx.node.attrs.get_float("clip") {
        None => None,
        Some(c) if c > 0.0 => Some(T::from_f64(c as f64)),
        Some(c) => return Err(cx.err(format!("clip must be positive, it is {c}"))),
    };
    let acts = activations(cx, kind, nd)?;
    let input_forget = cx.attr_int("input_forget", 0) != 0;
    let linear_before_reset = cx.attr_int("linear_before_reset", 0) != 0;

    let mut y = Array4::<T>::zeros((seq, nd, batch, hidden));
    let mut y_h = Array3::<T>::zeros((nd, batch, hidden));
    let mut y_c = Array3::<T>::zeros((nd, batch, hidden));
    let x2 = x
        .view()
        .into_shape_with_order((seq * batch, input))
        .map_err(|e| cx.err(format!("X cannot be viewed as a matrix: {e}")))?;
    for d in 0..nd {
        let reverse = direction == "reverse" || d == 1;
        let dir = Dir {
            w: w.index_axis(Axis(0), d),
            r: r.index_axis(Axis(0), d),
            wb: b.slice(s![d, 0..gh]).to_vec(),
            rb: b.slice(s![d, gh..2 * gh]).to_vec(),
            p: p.row(d).to_vec(),
            acts: &acts[d * kind.default_activations().len()..(d + 1) * kind.default_activations().len()],
        };
        let mut h = h0.index_axis(Axis(0), d).to_owned();
        let mut c = c0.index_axis(Axis(0), d).to_owned();
        let cfg = Cfg { kind, hidden, batch, clip, input_forget, linear_before_reset };
        run_direction(&cfg, &dir, &x2, &lens, reverse, &mut h, &mut c, |t, bi, row| {
            y.slice_mut(s![t, d, bi, ..]).assign(&row);
        });
        y_h.index_axis_mut(Axis(0), d).assign(&h);
        y_c.index_axis_mut(Axis(0), d).assign(&c);
    }
    let (y, y_h, y_c) = if layout == 1 {
        (
            y.permuted_axes([2, 0, 1, 3]).as_standard_layout().into_owned().into_dyn(),
            y_h.permuted_axes([1, 0, 2]).as_standard_layout().into_owned().into_dyn(),
            y_c.permuted_axes([1, 0, 2]).as_standard_layout().into_owned().into_dyn(),
        )
    } else {
        (y.into_dyn(), y_h.into_dyn(), y_c.into_dyn())
    };
    let mut outs = vec![Value::Tensor(T::into_tensor(y, out_dtype)), Value::Tensor(T::into_tensor(y_h, out_dtype))];
    if kind == Kind::Lstm {
        outs.push(Value::Tensor(T::into_tensor(y_c, out_dtype)));
    }
    Ok(outs)
}

/// One direction's weights: W `[gates*hidden, input]`, R `[gates*hidden, hidden]`, biases and
/// peepholes, and its activation functions.
struct Dir<'a, T> {
    w: ArrayView2<'a, T>,
    r: ArrayView2<'a, T>,
    wb: Vec<T>,
    rb: Vec<T>,
    p: Vec<T>,
    acts: &'a [Act],
}

struct Cfg<T> {
    kind: Kind,
    hidden: usize,
    batch: usize,
    clip: Option<T>,
    input_forget: bool,
    linear_before_reset: bool,
}

impl<T: Real> Cfg<T> {
    #[inline]
    fn clip(&self, x: T) -> T {
        match self.clip {
            Some(c) if x > c => c,
            Some(c) if x < T::zero() - c => T::zero() - c,
            _ => x,
        }
    }
}

/// Runs one direction over the sequence, updating `h` (and `c` for LSTM) `[batch, hidden]` in
/// place and reporting each computed hidden row as `(time, batch index, row)`.
#[allow(clippy::too_many_arguments)]
fn run_direction<T: Real>(
    cfg: &Cfg<T>,
    dir: &Dir<'_, T>,
    x2: &ArrayView2<'_, T>,
    lens: &[usize],
    reverse: bool,
    h: &mut Array2<T>,
    c: &mut Array2<T>,
    mut emit: impl FnMut(usize, usize, ndarray::ArrayView1<'_, T>),
) {
    let hs = cfg.hidden;
    let batch = cfg.batch;
    // Input projections of every step, with the biases that add outside any gate product:
    // all of Wb and Rb, except GRU's Rbh under linear_before_reset (it is scaled by r).
    let mut xw = x2.dot(&dir.w.t());
    let mut bias: Vec<T> = dir.wb.iter().zip(&dir.rb).map(|(&a, &b)| a + b).collect();
    if cfg.kind == Kind::Gru && cfg.linear_before_reset {
        bias[2 * hs..].copy_from_slice(&dir.wb[2 * hs..]);
    }
    for mut row in xw.rows_mut() {
        for (v, &b) in row.iter_mut().zip(&bias) {
            *v = *v + b;
        }
    }
    // GRU without linear_before_reset multiplies r into h before the h-gate product.
    let gru = cfg.kind == Kind::Gru;
    let r_main = if gru && !cfg.linear_before_reset { dir.r.slice(s![..2 * hs, ..]) } else { dir.r };
    let r_h = if gru { dir.r.slice(s![2 * hs.., ..]) } else { dir.r.slice(s![..0, ..]) };
    let max_len = lens.iter().copied().max().unwrap_or(0);
    let (f, g) = (dir.acts[0], dir.acts.get(1).copied().unwrap_or(Act::Tanh));
    let hact = dir.acts.get(2).copied().unwrap_or(Act::Tanh);
    let one = T::one();
    for step in 0..max_len {
        // The time index each batch entry reads at this step, or None once it is done.
        let at: Vec<Option<usize>> =
            lens.iter().map(|&len| (step < len).then(|| if reverse { len - 1 - step } else { step })).collect();
        let hr = h.dot(&r_main.t());
        match cfg.kind {
            Kind::Rnn => {
                for bi in 0..batch {
                    let Some(t) = at[bi] else { continue };
                    let xr = xw.row(t * batch + bi);
                    for j in 0..hs {
                        h[[bi, j]] = f.apply(cfg.clip(xr[j] + hr[[bi, j]]));
                    }
                    emit(t, bi, h.row(bi));
                }
            }
            Kind::Lstm => {
                let (pi, po, pf) = (&dir.p[..hs], &dir.p[hs..2 * hs], &dir.p[2 * hs..3 * hs]);
                for bi in 0..batch {
                    let Some(t) = at[bi] else { continue };
                    let xr = xw.row(t * batch + bi);
                    for j in 0..hs {
                        let cp = c[[bi, j]];
                        let i = f.apply(cfg.clip(xr[j] + hr[[bi, j]] + pi[j] * cp));
                        let fg = if cfg.input_forget {
                            one - i
                        } else {
                            f.apply(cfg.clip(xr[2 * hs + j] + hr[[bi, 2 * hs + j]] + pf[j] * cp))
                        };
                        let ct = g.apply(cfg.clip(xr[3 * hs + j] + hr[[bi, 3 * hs + j]]));
                        let cn = fg * cp + i * ct;
                        let o = f.apply(cfg.clip(xr[hs + j] + hr[[bi, hs + j]] + po[j] * cn));
                        c[[bi, j]] = cn;
                        h[[bi, j]] = o * hact.apply(cn);
                    }
                    emit(t, bi, h.row(bi));
                }
            }
            Kind::Gru => {
                let mut z = Array2::<T>::zeros((batch, hs));
                let mut rg = Array2::<T>::zeros((batch, hs));
                for bi in 0..batch {
                    let Some(t) = at[bi] else { continue };
                    let xr = xw.row(t * batch + bi);
                    for j in 0..hs {
                        z[[bi, j]] = f.apply(cfg.clip(xr[j] + hr[[bi, j]]));
                        rg[[bi, j]] = f.apply(cfg.clip(xr[hs + j] + hr[[bi, hs + j]]));
                    }
                }
                let rh = if cfg.linear_before_reset { None } else { Some((&rg * &*h).dot(&r_h.t())) };
                let rbh = &dir.rb[2 * hs..];
                for bi in 0..batch {
                    let Some(t) = at[bi] else { continue };
                    let xr = xw.row(t * batch + bi);
                    for j in 0..hs {
                        let pre = match &rh {
                            Some(rh) => xr[2 * hs + j] + rh[[bi, j]],
                            None => xr[2 * hs + j] + rg[[bi, j]] * (hr[[bi, 2 * hs + j]] + rbh[j]),
                        };
                        let ht = g.apply(cfg.clip(pre));
                        let zz = z[[bi, j]];
                        h[[bi, j]] = (one - zz) * ht + zz * h[[bi, j]];
                    }
                    emit(t, bi, h.row(bi));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_take_alpha_beta_in_order_with_defaults() {
        let mut a = vec![0.5f64, 2.0].into_iter();
        let mut b = vec![3.0f64].into_iter();
        assert_eq!(Act::parse("LeakyRelu", &mut a, &mut b), Some(Act::LeakyRelu(0.5)));
        assert_eq!(Act::parse("tanh", &mut a, &mut b), Some(Act::Tanh));
        assert_eq!(Act::parse("ScaledTanh", &mut a, &mut b), Some(Act::ScaledTanh(2.0, 3.0)));
        assert_eq!(Act::parse("HardSigmoid", &mut a, &mut b), Some(Act::HardSigmoid(0.2, 0.5)));
        assert_eq!(Act::parse("nope", &mut a, &mut b), None);
        assert!((Act::Softplus.apply_f64(1000.0) - 1000.0).abs() < 1e-9);
        assert!((Act::Softplus.apply_f64(0.0) - 2f64.ln()).abs() < 1e-12);
        assert_eq!(Act::Sigmoid.apply(-1000.0f32), 0.0);
    }
}
