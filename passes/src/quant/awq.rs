//! AWQ (activation-aware weight quantisation, Lin et al. 2023), training-free: per weight, a
//! grid search over `s = mean|x|^alpha` (per input channel k), keeping the alpha that minimises
//! the output error `|| X W - X diag(1/s) Q(diag(s) W) ||` on a sample of calibration rows X,
//! then AWQ's clipping search: per block of each output column, the shrink of the block's range
//! (1 down to 0.5) that minimises that block's share of the output error.
//!
//! Calibration runs the reference evaluator with an [`Observer`] that keeps, per MatMul input,
//! the running sum of |x| per channel and a reservoir sample of at most a few hundred rows:
//! never whole activations.

use super::{Rng, fake_quant_block_bits, fake_quant_row_bits};
use crate::PassContext;
use optc_eval::{Evaluator, Observer, Tensor, Value};
use optc_ir::{DType, DimValue, Graph, Model, Op};
use std::collections::{HashMap, HashSet};

/// What calibration saw of one activation (a MatMul's input, rows along its last axis).
#[derive(Clone, Debug)]
pub struct ActStats {
    /// Channels (the last axis).
    pub k: usize,
    /// Rows seen.
    pub rows: u64,
    /// Sum of |x| per channel.
    pub sum_abs: Vec<f64>,
    /// Sum of x^2 per channel.
    pub sum_sq: Vec<f64>,
    /// Up to `max_rows` rows, chosen uniformly among those seen (reservoir sampling), `[n, k]`.
    pub sample: Vec<f32>,
}

impl ActStats {
    pub fn mean_abs(&self) -> Vec<f32> {
        let n = self.rows.max(1) as f64;
        self.sum_abs.iter().map(|&s| (s / n) as f32).collect()
    }
    pub fn mean_sq(&self) -> Vec<f32> {
        let n = self.rows.max(1) as f64;
        self.sum_sq.iter().map(|&s| (s / n) as f32).collect()
    }
    pub fn sample_rows(&self) -> usize {
        self.sample.len() / self.k.max(1)
    }
    /// The activations as the searches see them.
    pub fn acts(&self) -> Acts {
        Acts::new(self.sample.clone(), self.mean_sq(), self.k)
    }
}

/// Collects [`ActStats`] for chosen values.
pub struct ActObserver {
    names: HashSet<String>,
    max_rows: usize,
    rng: Rng,
    pub stats: HashMap<String, ActStats>,
}

impl ActObserver {
    pub fn new(names: HashSet<String>, max_rows: usize, seed: u64) -> ActObserver {
        ActObserver { names, max_rows, rng: Rng(seed ^ 0xA3C5_9AC2_B1D4_E6F7), stats: HashMap::new() }
    }
}

impl Observer for ActObserver {
    fn wants(&self, name: &str) -> bool {
        self.names.contains(name)
    }
    fn observe(&mut self, name: &str, value: &Value) {
        let Some(t) = value.tensor() else { return };
        let Some(&k) = t.shape().last() else { return };
        if k == 0 {
            return;
        }
        let owned;
        let data: &[f32] = match t {
            Tensor::F32(a) if a.as_slice().is_some() => a.as_slice().unwrap_or(&[]),
            t if t.dtype().is_float() => {
                owned = t.to_f64_vec().unwrap_or_default().into_iter().map(|x| x as f32).collect::<Vec<f32>>();
                &owned
            }
            _ => return,
        };
        let st = self.stats.entry(name.to_string()).or_insert_with(|| ActStats {
            k,
            rows: 0,
            sum_abs: vec![0.0; k],
            sum_sq: vec![0.0; k],
            sample: Vec::new(),
        });
        if st.k != k {
            return;
        }
        for row in data.chunks_exact(k) {
            if row.iter().any(|x| !x.is_finite()) {
                continue;
            }
            for ((s, q), &x) in st.sum_abs.iter_mut().zip(st.sum_sq.iter_mut()).zip(row) {
                *s += x.abs() as f64;
                *q += (x as f64) * (x as f64);
            }
            let seen = st.rows as usize;
            st.rows += 1;
            if seen < self.max_rows {
                st.sample.extend_from_slice(row);
            } else {
                let j = (self.rng.next_u64() % (seen as u64 + 1)) as usize;
                if j < self.max_rows {
                    st.sample[j * k..(j + 1) * k].copy_from_slice(row);
                }
            }
        }
    }
}

/// Runs the model on the context's calibration feeds (or on `runs` seeded random ones, with a
/// note) and returns the statistics of the values in `names`.
pub fn calibrate(
    model: &Model,
    cx: &mut PassContext,
    names: HashSet<String>,
    max_rows: usize,
    runs: usize,
) -> Result<HashMap<String, ActStats>, String> {
    let feeds = calibration_feeds(model, cx, runs, "AWQ")?;
    let mut obs = ActObserver::new(names, max_rows, 0);
    run_observed(model, &feeds, &mut obs)?;
    Ok(obs.stats)
}

/// The inputs calibration runs on: the context's (`--calib`), less inputs the model does not
/// have (noted), or `runs` seeded random sets ([`random_feeds`]) with a warning that names
/// `method`.
pub fn calibration_feeds(
    model: &Model,
    cx: &mut PassContext,
    runs: usize,
    method: &str,
) -> Result<Vec<HashMap<String, Value>>, String> {
    crate::calib::feeds(model, cx, runs, method)
}

/// Runs the model on every feed, reporting to `obs`.
pub fn run_observed(model: &Model, feeds: &[HashMap<String, Value>], obs: &mut dyn Observer) -> Result<(), String> {
    let ev = Evaluator::new(model).map_err(|e| e.to_string())?;
    for feed in feeds {
        ev.run_observed(feed, Some(&mut *obs)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Seeded random inputs over the declared shapes: symbolic dims from `dims`, else 1 for names
/// with "batch" in them, 0 for "past" ones (a KV-cache decoder's past length: a prompt), the
/// sum of the past and new lengths for a "total" one, and 32 for the others (sequence lengths);
/// integer inputs that index a Gather table directly are drawn below its row count, inputs named
/// like masks are ones, token type / segment ids zeros and position ids `0, 1, 2, ...`. Returns
/// the feeds and a description of the shapes.
pub fn random_feeds(
    model: &Model,
    dims: &HashMap<String, i64>,
    runs: usize,
) -> Result<(Vec<HashMap<String, Value>>, String), String> {
    let g = &model.graph;
    let mut dims = dims.clone();
    let mut totals: Vec<String> = Vec::new();
    for d in &g.inputs {
        let v = g.value(d.value);
        if v.init.is_some() {
            continue;
        }
        let Some(shape) = v.ty.as_ref().and_then(|t| t.shape()) else { continue };
        for (i, dim) in shape.iter().enumerate() {
            match &dim.value {
                DimValue::Sym(s) if !dims.contains_key(s) => {
                    let l = s.to_lowercase();
                    if l.contains("total") {
                        if !totals.contains(s) {
                            totals.push(s.clone());
                        }
                        continue;
                    }
                    let n = if l.contains("batch") {
                        1
                    } else if l.contains("past") {
                        0
                    } else {
                        32
                    };
                    dims.insert(s.clone(), n);
                }
                DimValue::Unknown | DimValue::Known(i64::MIN..=-1) => {
                    dims.entry(format!("{}:{i}", v.name)).or_insert(if i == 0 { 1 } else { 32 });
                }
                _ => {}
            }
        }
    }
    // total = past + new, when the model names both; else the new length.
    let lower: Vec<(String, i64)> = dims.iter().map(|(k, v)| (k.to_lowercase(), *v)).collect();
    let past: i64 = lower.iter().filter(|(k, _)| k.contains("past")).map(|(_, v)| *v).max().unwrap_or(0);
    let new = lower
        .iter()
        .filter(|(k, _)| k.contains("seq") && !k.contains("past") && !k.contains("total"))
        .map(|(_, v)| *v)
        .max()
        .unwrap_or(32);
    for t in totals {
        dims.insert(t, past + new);
    }
    let int_high = gather_rows(g).unwrap_or(100);
    let mut feeds = Vec::with_capacity(runs.max(1));
    for run in 0..runs.max(1) {
        let mut feed = optc_eval::inputs::random_inputs(g, &dims, 0x0A3C + run as u64, int_high)
            .map_err(|e| format!("cannot make random calibration inputs: {e}"))?;
        for (name, val) in feed.iter_mut() {
            let Some(t) = val.tensor() else { continue };
            let lname = name.to_lowercase();
            let fill: Option<Box<dyn Fn(usize, usize) -> i64>> = if lname.contains("mask") {
                Some(Box::new(|_, _| 1))
            } else if lname.contains("token_type") || lname.contains("segment") {
                Some(Box::new(|_, _| 0))
            } else if lname.contains("position") {
                Some(Box::new(move |i, last| past + (i % last.max(1)) as i64))
            } else {
                None
            };
            if let Some(f) = fill
                && let Some(new) = int_tensor(t, f)
            {
                *val = Value::Tensor(new);
            }
        }
        feeds.push(feed);
    }
    let mut shapes: Vec<String> =
        feeds[0].iter().filter_map(|(n, v)| v.tensor().map(|t| format!("{n} {:?}", t.shape()))).collect();
    shapes.sort();
    Ok((feeds, format!("{}; integers below {int_high}", shapes.join(", "))))
}

/// An integer (or bool) tensor shaped like `t` with element `i` = `f(i, last_dim)`.
fn int_tensor(t: &Tensor, f: impl Fn(usize, usize) -> i64) -> Option<Tensor> {
    let shape = t.shape();
    let n: usize = shape.iter().product();
    let last = shape.last().copied().unwrap_or(1);
    let dt = t.dtype();
    let bytes: Vec<u8> = match dt {
        DType::I64 => (0..n).flat_map(|i| f(i, last).to_le_bytes()).collect(),
        DType::I32 => (0..n).flat_map(|i| (f(i, last) as i32).to_le_bytes()).collect(),
        DType::Bool | DType::U8 | DType::I8 => (0..n).map(|i| f(i, last) as u8).collect(),
        DType::F32 => (0..n).flat_map(|i| (f(i, last) as f32).to_le_bytes()).collect(),
        _ => return None,
    };
    let dims = shape.iter().map(|&d| d as i64).collect();
    Tensor::from_ir(&optc_ir::Tensor::from_raw(None, dt, dims, bytes.into())).ok()
}

/// The smallest row count of a constant Gather table indexed directly by a graph input
/// (the vocabulary of token ids).
fn gather_rows(g: &Graph) -> Option<i64> {
    let mut best: Option<i64> = None;
    for d in &g.inputs {
        for (n, _) in g.uses(d.value) {
            let node = g.node(n);
            if node.op != Op::Gather || node.input(1) != Some(d.value) {
                continue;
            }
            let Some(t) = node.input(0).and_then(|v| g.const_tensor(v)) else { continue };
            if let Some(&rows) = t.dims.first()
                && rows > 0
            {
                best = Some(best.map_or(rows, |b| b.min(rows)));
            }
        }
    }
    best
}

/// The result of the search for one weight.
#[derive(Clone, Debug)]
pub struct Search {
    pub alpha: f32,
    /// Per input channel (K); all ones when alpha is 0.
    pub s: Vec<f32>,
    /// Output error (sum of squares over the sample) at the chosen alpha and of plain RTN.
    pub err: f64,
    pub err_rtn: f64,
}

/// What the error estimates know of a layer's input: sample rows `x` (`[rows, k]`) and the mean
/// square of every channel over all rows seen. The output error of a weight change `d` (one
/// output column) is estimated per row as
/// `(1 - lambda) * mean_r (x_r . d)^2 + lambda * sum_k msq_k d_k^2`: the sample Gram matrix
/// shrunk towards its diagonal, with `lambda = k / (k + rows)`. With fewer sample rows than
/// channels the sample Gram is rank-deficient and a search on it alone fits the sample (it
/// sees the error only in the rows' span); the diagonal, from every row, keeps the rest.
#[derive(Clone, Debug)]
pub struct Acts {
    pub x: Vec<f32>,
    pub msq: Vec<f32>,
    pub k: usize,
    pub rows: usize,
    pub lambda: f32,
}

impl Acts {
    pub fn new(x: Vec<f32>, msq: Vec<f32>, k: usize) -> Acts {
        let rows = x.len() / k.max(1);
        let lambda = if rows == 0 { 1.0 } else { k as f32 / (k + rows) as f32 };
        Acts { x, msq, k, rows, lambda }
    }

    /// The same activations divided by `s` per channel.
    pub fn scaled_by_inverse(&self, s: &[f32]) -> Acts {
        let x = self.x.chunks(self.k.max(1)).flat_map(|r| r.iter().zip(s).map(|(x, f)| x / f)).collect();
        let msq = self.msq.iter().zip(s).map(|(m, f)| m / (f * f)).collect();
        Acts { x, msq, ..*self }
    }

    /// The estimated squared output error of `d` over channels `c0..c0 + d.len()`.
    #[inline]
    fn error(&self, d: &[f32], c0: usize) -> f64 {
        let k = self.k;
        let len = d.len();
        let mut sample = 0f64;
        for r in 0..self.rows {
            let e = dot(&self.x[r * k + c0..r * k + c0 + len], d);
            sample += (e as f64) * (e as f64);
        }
        let diag: f64 = self.msq[c0..c0 + len].iter().zip(d).map(|(&m, &v)| m as f64 * (v as f64) * (v as f64)).sum();
        let l = self.lambda as f64;
        (1.0 - l) * sample / self.rows.max(1) as f64 + l * diag
    }
}

/// Searches alpha in `{0, 1/grid, ..., (grid-1)/grid}` for `wt` (`[n, k]`, rows are output
/// columns), with activation means `x_mean` (`[k]`).
#[allow(clippy::too_many_arguments)]
pub fn search(
    wt: &[f32],
    n: usize,
    k: usize,
    block: usize,
    sym: bool,
    bits: u8,
    x_mean: &[f32],
    acts: &Acts,
    grid: usize,
) -> Search {
    let grid = grid.max(1);
    let mut best: Option<Search> = None;
    let mut err_rtn = 0.0;
    for i in 0..grid {
        let alpha = i as f32 / grid as f32;
        let s = scales_for(x_mean, alpha);
        let err = output_error(wt, n, k, block, sym, bits, &s, acts);
        if i == 0 {
            err_rtn = err;
        }
        if best.as_ref().is_none_or(|b| err < b.err) {
            best = Some(Search { alpha, s, err, err_rtn });
        }
    }
    let mut b = best.unwrap_or(Search { alpha: 0.0, s: vec![1.0; k], err: 0.0, err_rtn: 0.0 });
    b.err_rtn = err_rtn;
    b
}

/// `s = max(mean|x|, 1e-4)^alpha`, normalised so that `max(s) * min(s) = 1` (as AWQ does).
pub fn scales_for(x_mean: &[f32], alpha: f32) -> Vec<f32> {
    if alpha == 0.0 {
        return vec![1.0; x_mean.len()];
    }
    let s: Vec<f32> = x_mean.iter().map(|&m| m.max(1e-4).powf(alpha)).collect();
    let (mn, mx) = s.iter().fold((f32::INFINITY, 0f32), |(a, b), &v| (a.min(v), b.max(v)));
    let norm = (mn * mx).sqrt();
    if norm > 0.0 && norm.is_finite() { s.iter().map(|v| v / norm).collect() } else { s }
}

/// The estimated `|| X (W - Q(W s) / s) ||^2` per row ([`Acts`]) with `W` given transposed
/// (`wt [n, k]`), summed over the output columns.
#[allow(clippy::too_many_arguments)]
pub fn output_error(wt: &[f32], n: usize, k: usize, block: usize, sym: bool, bits: u8, s: &[f32], acts: &Acts) -> f64 {
    let per_column = par_columns(n, |lo, hi| {
        let (mut scaled, mut fq, mut d) = (vec![0f32; k], vec![0f32; k], vec![0f32; k]);
        let mut total = 0f64;
        for c in lo..hi {
            let w = &wt[c * k..(c + 1) * k];
            for j in 0..k {
                scaled[j] = w[j] * s[j];
            }
            fake_quant_row_bits(&scaled, block, sym, bits, &mut fq);
            for j in 0..k {
                d[j] = w[j] - fq[j] / s[j];
            }
            total += acts.error(&d, 0);
        }
        vec![total]
    });
    per_column.iter().sum()
}

/// AWQ's clipping search on a (scaled) weight `wt [n, k]` with the (scaled) activations: for
/// every block of every row of `wt`, the ratio in `{1, 1 - 0.5/steps, ..}` (down to just above
/// 0.5) by which to shrink its range, minimising the block's estimated output error (cross-block
/// terms left out, as AWQ does). Returns the ratios (`[n, nblocks]`) and the summed block errors
/// at the chosen ratios and at ratio 1.
#[allow(clippy::too_many_arguments)]
pub fn clip_search(
    wt: &[f32],
    n: usize,
    k: usize,
    block: usize,
    sym: bool,
    bits: u8,
    acts: &Acts,
    steps: usize,
) -> (Vec<f32>, f64, f64) {
    let nb = k.div_ceil(block);
    let steps = steps.max(1);
    // (ratio, best error, error at 1) per block, in row order.
    let res = par_columns(n, |lo, hi| {
        let mut fq = vec![0f32; block];
        let mut d = vec![0f32; block];
        let mut out = Vec::with_capacity((hi - lo) * nb);
        for c in lo..hi {
            for b in 0..nb {
                let (c0, c1) = (b * block, ((b + 1) * block).min(k));
                let v = &wt[c * k + c0..c * k + c1];
                let len = c1 - c0;
                let mut best = (1.0f32, f64::INFINITY, 0f64);
                for i in 0..steps {
                    let ratio = 1.0 - 0.5 * i as f32 / steps as f32;
                    fake_quant_block_bits(v, sym, ratio, bits, &mut fq[..len]);
                    for j in 0..len {
                        d[j] = v[j] - fq[j];
                    }
                    let err = acts.error(&d[..len], c0);
                    if i == 0 {
                        best.2 = err;
                    }
                    if err < best.1 {
                        best.0 = ratio;
                        best.1 = err;
                    }
                }
                out.push(best);
            }
        }
        out
    });
    let ratios = res.iter().map(|r| r.0).collect();
    (ratios, res.iter().map(|r| r.1).sum(), res.iter().map(|r| r.2).sum())
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums: lets the compiler vectorise the reduction.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Runs `f(lo, hi)` over ranges of `0..n` on the available threads (at most 16), concatenating
/// the results in order.
fn par_columns<T: Send>(n: usize, f: impl Fn(usize, usize) -> Vec<T> + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).min(n).clamp(1, 16);
    if threads <= 1 {
        return f(0, n);
    }
    let per = n.div_ceil(threads);
    std::thread::scope(|sc| {
        let f = &f;
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (lo, hi) = (t * per, ((t + 1) * per).min(n));
                sc.spawn(move || if lo < hi { f(lo, hi) } else { Vec::new() })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observer_keeps_means_and_a_bounded_sample() {
        let mut o = ActObserver::new(["x".to_string()].into(), 3, 1);
        let t = |v: Vec<f32>, shape: Vec<i64>| {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            Value::Tensor(Tensor::from_ir(&optc_ir::Tensor::from_raw(None, DType::F32, shape, bytes.into())).unwrap())
        };
        o.observe("x", &t(vec![1., -2., 3., -4.], vec![2, 2]));
        o.observe("x", &t(vec![5., 6., 7., 8., 9., 10.], vec![1, 3, 2]));
        assert!(!o.wants("y"));
        let s = &o.stats["x"];
        assert_eq!((s.k, s.rows, s.sample_rows()), (2, 5, 3));
        assert_eq!(s.mean_abs(), vec![(1. + 3. + 5. + 7. + 9.) / 5., (2. + 4. + 6. + 8. + 10.) / 5.]);
        assert_eq!(s.mean_sq()[0], (1. + 9. + 25. + 49. + 81.) / 5.);
    }

    #[test]
    fn search_beats_rtn_on_outlier_channels() {
        // Activations with a few large channels: scaling those weight rows up protects them.
        let (n, k, rows) = (16, 64, 64);
        let mut rng = Rng(5);
        let wt: Vec<f32> = (0..n * k).map(|_| rng.normal()).collect();
        let big = |j: usize| if j % 16 == 3 { 30.0 } else { 1.0 };
        let x: Vec<f32> = (0..rows * k).map(|i| rng.normal() * big(i % k)).collect();
        let mut mean = vec![0f32; k];
        for r in 0..rows {
            for j in 0..k {
                mean[j] += x[r * k + j].abs() / rows as f32;
            }
        }
        let msq: Vec<f32> =
            (0..k).map(|j| (0..rows).map(|r| x[r * k + j].powi(2)).sum::<f32>() / rows as f32).collect();
        let acts = Acts::new(x.clone(), msq, k);
        assert_eq!(acts.lambda, 0.5);
        let res = search(&wt, n, k, 32, false, 4, &mean, &acts, 20);
        assert!(res.err <= res.err_rtn);
        assert!(
            res.alpha > 0.0 && res.err < 0.9 * res.err_rtn,
            "alpha {} err {} rtn {}",
            res.alpha,
            res.err,
            res.err_rtn
        );
        assert_eq!(res.s.len(), k);
        let s0 = scales_for(&mean, 0.0);
        assert!(s0.iter().all(|&v| v == 1.0));
        // Clipping never does worse than no clipping on its own rows, and helps Gaussian weights.
        let (ratios, err, err1) = clip_search(&wt, n, k, 32, false, 4, &acts, 20);
        assert_eq!(ratios.len(), n * 2);
        assert!(err < err1 && ratios.iter().any(|&r| r < 1.0), "{err} {err1}");
        assert!(ratios.iter().all(|&r| (0.5..=1.0).contains(&r)));
    }
}
