//! Streaming statistics over activations, fed by the evaluator's [`Observer`] hook: nothing
//! keeps whole activations. [`StatsObserver`] gathers min/max, mean |x|, RMS and a histogram
//! per value (activation quantisation ranges: min-max, percentile, entropy); [`GramObserver`]
//! accumulates X^T X over the rows of a layer input (GPTQ/SparseGPT Hessians, Wanda norms).

use crate::interp::Observer;
use crate::value::{Tensor, Value};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};

/// A symmetric histogram over `[-range, range]` that doubles its range (merging bin pairs)
/// when a value falls outside, so it needs no first pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub range: f64,
    pub bins: Vec<u64>,
}

impl Histogram {
    pub fn new(bins: usize) -> Histogram {
        Histogram { range: 0.0, bins: vec![0; bins.max(2) & !1] }
    }

    fn grow_to(&mut self, m: f64) {
        if self.range == 0.0 {
            self.range = m.max(f64::MIN_POSITIVE);
            return;
        }
        while m > self.range {
            // Merge pairs towards the centre: bin i of the new histogram covers old 2i' pairs.
            let n = self.bins.len();
            let mut next = vec![0u64; n];
            for (i, &c) in self.bins.iter().enumerate() {
                // Old bin i spans [-r + i*w, ...); in the doubled range it lands at n/4 + i/2.
                next[n / 4 + i / 2] += c;
            }
            self.bins = next;
            self.range *= 2.0;
        }
    }

    pub fn add(&mut self, values: &[f32]) {
        let m = values.iter().filter(|v| v.is_finite()).fold(0f64, |a, &v| a.max(v.abs() as f64));
        if m > self.range {
            self.grow_to(m);
        }
        if self.range == 0.0 {
            let mid = self.bins.len() / 2;
            self.bins[mid] += values.len() as u64;
            return;
        }
        let n = self.bins.len();
        let scale = n as f64 / (2.0 * self.range);
        for &v in values {
            if !v.is_finite() {
                continue;
            }
            let i = (((v as f64) + self.range) * scale) as usize;
            self.bins[i.min(n - 1)] += 1;
        }
    }

    /// The value below which `q` (0..1) of the absolute values fall.
    pub fn abs_percentile(&self, q: f64) -> f64 {
        let n = self.bins.len();
        let total: u64 = self.bins.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let want = (q * total as f64).ceil() as u64;
        let w = 2.0 * self.range / n as f64;
        let mut acc = 0;
        for k in 0..n / 2 {
            acc += self.bins[n / 2 - 1 - k] + self.bins[n / 2 + k];
            if acc >= want {
                return (k + 1) as f64 * w;
            }
        }
        self.range
    }
}

/// Statistics of one value over every run observed.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorStats {
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub sum_abs: f64,
    pub sum_sq: f64,
    pub hist: Option<Histogram>,
}

impl TensorStats {
    fn new(hist_bins: usize) -> TensorStats {
        TensorStats {
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum_abs: 0.0,
            sum_sq: 0.0,
            hist: (hist_bins > 0).then(|| Histogram::new(hist_bins)),
        }
    }
    pub fn mean_abs(&self) -> f64 {
        if self.count == 0 { 0.0 } else { self.sum_abs / self.count as f64 }
    }
    pub fn rms(&self) -> f64 {
        if self.count == 0 { 0.0 } else { (self.sum_sq / self.count as f64).sqrt() }
    }
    fn add(&mut self, v: &[f32]) {
        for &x in v {
            if !x.is_finite() {
                continue;
            }
            let x = x as f64;
            self.min = self.min.min(x);
            self.max = self.max.max(x);
            self.sum_abs += x.abs();
            self.sum_sq += x * x;
            self.count += 1;
        }
        if let Some(h) = &mut self.hist {
            h.add(v);
        }
    }
}

fn as_f32(t: &Tensor) -> Option<Vec<f32>> {
    match t {
        Tensor::F32(a) => Some(a.iter().copied().collect()),
        other => other.to_f64_vec().map(|v| v.into_iter().map(|x| x as f32).collect()),
    }
}

/// Collects [`TensorStats`] for chosen values (all float values when `names` is `None`).
pub struct StatsObserver {
    names: Option<HashSet<String>>,
    hist_bins: usize,
    pub stats: HashMap<String, TensorStats>,
}

impl StatsObserver {
    pub fn new(names: Option<HashSet<String>>, hist_bins: usize) -> StatsObserver {
        StatsObserver { names, hist_bins, stats: HashMap::new() }
    }
}

impl Observer for StatsObserver {
    fn wants(&self, name: &str) -> bool {
        self.names.as_ref().is_none_or(|n| n.contains(name))
    }
    fn observe(&mut self, name: &str, value: &Value) {
        let Some(t) = value.tensor() else { return };
        if !t.dtype().is_float() {
            return;
        }
        let Some(v) = as_f32(t) else { return };
        let bins = self.hist_bins;
        self.stats.entry(name.to_string()).or_insert_with(|| TensorStats::new(bins)).add(&v);
    }
}

/// X^T X of a layer input over all rows seen (rows = every leading index, columns = last axis).
/// Symmetric, so only its upper triangle is kept and computed: half the memory and half the
/// arithmetic of the full matrix (GPTQ over a decoder holds one per projection input).
#[derive(Clone, Debug, PartialEq)]
pub struct Gram {
    pub dim: usize,
    pub rows: u64,
    /// The upper triangle, packed row by row: row `i` holds columns `i..dim`.
    pub upper: Vec<f64>,
}

impl Gram {
    pub fn new(dim: usize) -> Gram {
        Gram { dim, rows: 0, upper: vec![0.0; Gram::packed_len(dim)] }
    }
    /// Entries of the packed triangle of a `dim x dim` matrix.
    pub fn packed_len(dim: usize) -> usize {
        dim * (dim + 1) / 2
    }
    /// Bytes held by the Gram of `dim` channels.
    pub fn bytes(dim: usize) -> u64 {
        8 * Gram::packed_len(dim) as u64
    }
    /// Where packed row `i` starts.
    fn row_start(&self, i: usize) -> usize {
        i * self.dim - i * i.saturating_sub(1) / 2
    }
    fn add(&mut self, v: &[f32]) {
        let k = self.dim;
        let rows: Vec<&[f32]> = v.chunks_exact(k).collect();
        // Rows of the triangle are independent: parallel over them (row i has k - i entries).
        let mut parts: Vec<(usize, &mut [f64])> = Vec::with_capacity(k);
        let mut rest: &mut [f64] = &mut self.upper;
        for i in 0..k {
            let (row, tail) = rest.split_at_mut(k - i);
            parts.push((i, row));
            rest = tail;
        }
        parts.into_par_iter().for_each(|(i, out)| {
            for r in &rows {
                let xi = r[i] as f64;
                if xi == 0.0 {
                    continue;
                }
                for (o, &xj) in out.iter_mut().zip(&r[i..]) {
                    *o += xi * xj as f64;
                }
            }
        });
        self.rows += rows.len() as u64;
    }
    /// Entry `(i, j)` of X^T X.
    pub fn get(&self, i: usize, j: usize) -> f64 {
        let (i, j) = if i <= j { (i, j) } else { (j, i) };
        self.upper[self.row_start(i) + (j - i)]
    }
    /// The full row-major `dim x dim` matrix, each entry times `f`.
    pub fn full_scaled(&self, f: f64) -> Vec<f64> {
        let k = self.dim;
        let mut m = vec![0f64; k * k];
        let mut at = 0;
        for i in 0..k {
            for j in i..k {
                let v = self.upper[at] * f;
                m[i * k + j] = v;
                m[j * k + i] = v;
                at += 1;
            }
        }
        m
    }
    /// The L2 norm of each input column over all rows (Wanda's ||X_j||).
    pub fn column_norms(&self) -> Vec<f64> {
        (0..self.dim).map(|j| self.get(j, j).sqrt()).collect()
    }
}

/// Accumulates a [`Gram`] for each chosen value.
pub struct GramObserver {
    names: HashSet<String>,
    pub grams: HashMap<String, Gram>,
}

impl GramObserver {
    pub fn new(names: HashSet<String>) -> GramObserver {
        GramObserver { names, grams: HashMap::new() }
    }
}

impl Observer for GramObserver {
    fn wants(&self, name: &str) -> bool {
        self.names.contains(name)
    }
    fn observe(&mut self, name: &str, value: &Value) {
        let Some(t) = value.tensor() else { return };
        let Some(&k) = t.shape().last() else { return };
        if k == 0 || !t.dtype().is_float() {
            return;
        }
        let Some(v) = as_f32(t) else { return };
        let g = self.grams.entry(name.to_string()).or_insert_with(|| Gram::new(k));
        if g.dim == k {
            g.add(&v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    fn val(shape: &[usize], v: Vec<f32>) -> Value {
        Value::Tensor(Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()))
    }

    #[test]
    fn stats_and_histogram_stream() {
        let mut o = StatsObserver::new(None, 64);
        o.observe("x", &val(&[4], vec![1.0, -2.0, 0.5, 0.0]));
        o.observe("x", &val(&[2], vec![8.0, -0.25]));
        let s = &o.stats["x"];
        assert_eq!((s.count, s.min, s.max), (6, -2.0, 8.0));
        assert!((s.mean_abs() - 11.75 / 6.0).abs() < 1e-12);
        let h = s.hist.as_ref().unwrap();
        assert_eq!(h.bins.iter().sum::<u64>(), 6);
        assert!(h.range >= 8.0);
        assert!(h.abs_percentile(1.0) >= 8.0 - 2.0 * h.range / 64.0);
        assert!(h.abs_percentile(0.5) <= 1.0 + 2.0 * h.range / 64.0);
    }

    #[test]
    fn gram_matches_direct_product() {
        let mut o = GramObserver::new(["a".to_string()].into());
        o.observe("a", &val(&[2, 3], vec![1., 2., 3., 4., 5., 6.]));
        o.observe("a", &val(&[1, 3], vec![1., 0., -1.]));
        let g = &o.grams["a"];
        assert_eq!(g.rows, 3);
        // X = [[1,2,3],[4,5,6],[1,0,-1]]; X^T X row 0 = [18, 22, 26]
        assert_eq!(&g.upper[0..3], &[18.0, 22.0, 26.0]);
        assert_eq!((g.get(1, 1), g.get(2, 1), g.get(1, 2)), (29.0, 36.0, 36.0));
        let full = g.full_scaled(1.0);
        assert_eq!(&full[3..6], &[22.0, 29.0, 36.0]);
        assert_eq!(full[6..9], [26.0, 36.0, 46.0]);
        assert!((g.column_norms()[2] - (9.0f64 + 36.0 + 1.0).sqrt()).abs() < 1e-12);
    }
}
