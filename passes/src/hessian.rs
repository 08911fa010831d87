//! Hessians of layer-wise reconstruction objectives, for GPTQ-style weight rounding and pruning.
//!
//! For a linear layer `Y = X W` (`X [rows, K]`, `W [K, N]`) the objective
//! `|| X W - X W' ||^2` summed over the output columns has, per column, the Hessian
//! `H = 2 X^T X / rows` (`K x K`, the same for every column). [`HessianObserver`] accumulates
//! `X^T X` in f64 for chosen values while the reference evaluator runs (rows = every leading
//! index flattened, channels = the last axis; activations are never kept), [`Hessian`] normalises
//! it, and [`prepare`] turns it into what GPTQ and SparseGPT iterate with: the upper Cholesky
//! factor `U` of `(H + damp I)^-1` (`U^T U = (H + damp I)^-1`), after setting dead channels
//! (`H_ii = 0`: the input channel is always zero) to `H_ii = 1` and reporting them so that the
//! caller zeroes the matching weight rows. Damping starts at `percdamp * mean(diag H)` and grows
//! tenfold while the factorisation fails, a few times, before giving up with an error.

use faer::linalg::solvers::DenseSolveCore;
use faer::{Mat, Side};
use optc_eval::stats::{Gram, GramObserver};
use optc_eval::{Observer, Value};
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::fmt;

/// `H = 2 X^T X / rows` of one layer input.
#[derive(Clone, Debug, PartialEq)]
pub struct Hessian {
    /// Channels (K).
    pub dim: usize,
    /// Rows seen.
    pub rows: u64,
    /// Row-major `dim x dim`, symmetric.
    pub h: Vec<f64>,
}

impl Hessian {
    /// From the raw `X^T X` over `rows` rows.
    pub fn from_xtx(dim: usize, rows: u64, xtx: &[f64]) -> Hessian {
        let f = if rows > 0 { 2.0 / rows as f64 } else { 0.0 };
        Hessian { dim, rows, h: xtx.iter().map(|v| v * f).collect() }
    }

    /// From an accumulated [`Gram`].
    pub fn from_gram(g: &Gram) -> Hessian {
        let f = if g.rows > 0 { 2.0 / g.rows as f64 } else { 0.0 };
        Hessian { dim: g.dim, rows: g.rows, h: g.full_scaled(f) }
    }

    /// From activation rows `x` (`[rows, dim]`, row-major).
    pub fn from_rows(x: &[f32], dim: usize) -> Hessian {
        let rows = x.len() / dim.max(1);
        let mut xtx = vec![0f64; dim * dim];
        for r in x.chunks_exact(dim) {
            for i in 0..dim {
                let xi = r[i] as f64;
                if xi != 0.0 {
                    for (o, &xj) in xtx[i * dim..(i + 1) * dim].iter_mut().zip(r) {
                        *o += xi * xj as f64;
                    }
                }
            }
        }
        Hessian::from_xtx(dim, rows as u64, &xtx)
    }

    /// `(1 - lambda) H + lambda diag(H)`: shrinks the off-diagonal terms towards zero. With fewer
    /// calibration rows than channels `H` is rank-deficient and a method that trusts it fully
    /// (GPTQ, SparseGPT) fits the calibration rows' span and pushes error into directions other
    /// inputs use; shrinkage keeps every channel's own weight in the objective.
    /// [`auto_shrink`] gives the `K / (K + rows)` that AWQ's error estimate uses too.
    pub fn shrunk(&self, lambda: f64) -> Hessian {
        let k = self.dim;
        let l = lambda.clamp(0.0, 1.0);
        let mut h = self.h.clone();
        for i in 0..k {
            for j in 0..k {
                if i != j {
                    h[i * k + j] *= 1.0 - l;
                }
            }
        }
        Hessian { dim: k, rows: self.rows, h }
    }

    pub fn diag(&self) -> Vec<f64> {
        (0..self.dim).map(|i| self.h[i * self.dim + i]).collect()
    }

    /// Channels that were zero in every row seen (`H_ii = 0`).
    pub fn dead_channels(&self) -> Vec<usize> {
        (0..self.dim).filter(|&i| self.h[i * self.dim + i] == 0.0).collect()
    }

    /// `sum_n d_n^T H d_n / 2` for row-major `d [n, dim]` (each row one output column's weight
    /// change): the objective's value, `|| X D^T ||^2 / rows`, the mean squared output error
    /// summed over the columns.
    pub fn quadratic(&self, d: &[f32], n: usize) -> f64 {
        let k = self.dim;
        let total: f64 = d[..n * k]
            .par_chunks(k.max(1))
            .map(|row| {
                let mut t = 0f64;
                for (i, &ri) in row.iter().enumerate() {
                    if ri != 0.0 {
                        let hd: f64 = self.h[i * k..(i + 1) * k].iter().zip(row).map(|(&h, &v)| h * v as f64).sum();
                        t += hd * ri as f64;
                    }
                }
                t
            })
            .sum();
        total / 2.0
    }
}

/// The shrinkage `K / (K + rows)` for a Hessian of `dim` channels over `rows` rows.
pub fn auto_shrink(dim: usize, rows: u64) -> f64 {
    dim as f64 / (dim as f64 + rows as f64)
}

/// Why [`prepare`] failed.
#[derive(Clone, Debug, PartialEq)]
pub enum HessianError {
    /// Non-finite entries (an activation overflowed).
    NotFinite,
    /// `H + damp I` was not positive definite even with the largest damping tried.
    NotPositiveDefinite { dim: usize, damp: f64 },
    /// No calibration row reached this input.
    NoRows,
}

impl fmt::Display for HessianError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HessianError::NotFinite => write!(f, "the Hessian has non-finite entries"),
            HessianError::NotPositiveDefinite { dim, damp } => write!(
                f,
                "the {dim}x{dim} Hessian is not positive definite even with damping {damp:.3e} added to its diagonal"
            ),
            HessianError::NoRows => write!(f, "no calibration rows reached this input"),
        }
    }
}

impl std::error::Error for HessianError {}

/// What GPTQ/SparseGPT iterate with.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub dim: usize,
    /// Upper Cholesky factor of `(H + damp I)^-1`, row-major `dim x dim` (zeros below the
    /// diagonal), in the channel order given to [`prepare`] (permuted when asked).
    pub hinv_u: Vec<f64>,
    /// Dead channels, in the original order: the caller zeroes the weight rows of these.
    pub dead: Vec<bool>,
    /// The absolute damping finally added to the diagonal.
    pub damp: f64,
    /// Factorisations that failed before the one kept (each raised the damping tenfold).
    pub retries: usize,
}

/// Damping tries after the first: `damp * 10^i`.
pub const MAX_DAMP_RETRIES: usize = 6;

/// Dead-channel handling, damping (`percdamp * mean(diag H)`, raised tenfold on failure) and the
/// upper Cholesky factor of the inverse. `perm` (new position -> old channel) reorders the
/// channels first (GPTQ's act-order).
pub fn prepare(h: &Hessian, percdamp: f64, perm: Option<&[usize]>) -> Result<Prepared, HessianError> {
    let k = h.dim;
    if h.rows == 0 {
        return Err(HessianError::NoRows);
    }
    if h.h.iter().any(|v| !v.is_finite()) {
        return Err(HessianError::NotFinite);
    }
    let dead: Vec<bool> = (0..k).map(|i| h.h[i * k + i] == 0.0).collect();
    let at = |i: usize| perm.map_or(i, |p| p[i]);
    let m = Mat::<f64>::from_fn(k, k, |i, j| {
        let (a, b) = (at(i), at(j));
        if a == b && dead[a] { 1.0 } else { h.h[a * k + b] }
    });
    let mean_diag = (0..k).map(|i| m[(i, i)]).sum::<f64>() / k.max(1) as f64;
    // A zero percdamp still gets a tiny damping once the plain factorisation fails.
    let base = (percdamp * mean_diag).max(0.0);
    let mut damp = base;
    for retry in 0..=MAX_DAMP_RETRIES {
        if retry > 0 {
            damp = if damp > 0.0 { damp * 10.0 } else { 1e-6 * mean_diag.max(f64::MIN_POSITIVE) };
        }
        let mut a = m.clone();
        for i in 0..k {
            a[(i, i)] += damp;
        }
        let Ok(llt) = a.llt(Side::Lower) else { continue };
        let inv = llt.inverse();
        let Ok(llt2) = inv.llt(Side::Lower) else { continue };
        let l = llt2.L();
        let mut u = vec![0f64; k * k];
        let mut ok = true;
        for i in 0..k {
            for j in i..k {
                // U = L^T: U[i, j] = L[j, i].
                let v = l[(j, i)];
                ok &= v.is_finite();
                u[i * k + j] = v;
            }
            ok &= u[i * k + i] > 0.0;
        }
        if !ok {
            continue;
        }
        return Ok(Prepared { dim: k, hinv_u: u, dead, damp, retries: retry });
    }
    Err(HessianError::NotPositiveDefinite { dim: k, damp })
}

/// Accumulates `X^T X` (f64) of each chosen value as the evaluator computes it.
pub struct HessianObserver {
    grams: GramObserver,
}

impl HessianObserver {
    pub fn new(names: HashSet<String>) -> HessianObserver {
        HessianObserver { grams: GramObserver::new(names) }
    }

    /// The Gram matrices of the values seen, by name (packed: [`Hessian::from_gram`] unpacks
    /// one when it is needed, so that a caller holding many holds them at half size).
    pub fn finish(self) -> HashMap<String, Gram> {
        self.grams.grams
    }
}

impl Observer for HessianObserver {
    fn wants(&self, name: &str) -> bool {
        self.grams.wants(name)
    }
    fn observe(&mut self, name: &str, value: &Value) {
        self.grams.observe(name, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::Rng;
    use crate::test_support::f32_value;

    fn randn(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng(seed);
        (0..n).map(|_| r.normal()).collect()
    }

    fn matmul(a: &[f64], b: &[f64], k: usize) -> Vec<f64> {
        let mut out = vec![0f64; k * k];
        for i in 0..k {
            for l in 0..k {
                for j in 0..k {
                    out[i * k + j] += a[i * k + l] * b[l * k + j];
                }
            }
        }
        out
    }

    #[test]
    fn observer_streams_rows_of_every_leading_axis() {
        let (k, rows) = (6, 10);
        let x = randn(rows * k, 1);
        let mut o = HessianObserver::new(["a".to_string()].into());
        assert!(o.wants("a") && !o.wants("b"));
        // [2, 3, k] then [4, k]: rows are all leading indices.
        o.observe("a", &f32_value(&[2, 3, k as i64], &x[..6 * k]));
        o.observe("a", &f32_value(&[4, k as i64], &x[6 * k..]));
        let h = Hessian::from_gram(&o.finish().remove("a").unwrap());
        let want = Hessian::from_rows(&x, k);
        assert_eq!(h.rows, rows as u64);
        for (a, b) in h.h.iter().zip(&want.h) {
            assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{a} vs {b}");
        }
        // 2 X^T X / n on the diagonal.
        let d0: f64 = (0..rows).map(|r| (x[r * k] as f64).powi(2)).sum::<f64>() * 2.0 / rows as f64;
        assert!((h.h[0] - d0).abs() < 1e-9);
    }

    #[test]
    fn upper_factor_of_the_damped_inverse() {
        let (k, rows) = (12, 40);
        let x = randn(rows * k, 2);
        let h = Hessian::from_rows(&x, k);
        let p = prepare(&h, 0.01, None).unwrap();
        assert_eq!(p.retries, 0);
        let mean = h.diag().iter().sum::<f64>() / k as f64;
        assert!((p.damp - 0.01 * mean).abs() < 1e-12);
        // U^T U (H + damp I) = I.
        let mut ut = vec![0f64; k * k];
        for i in 0..k {
            for j in 0..k {
                ut[i * k + j] = p.hinv_u[j * k + i];
                if j < i {
                    assert_eq!(p.hinv_u[i * k + j], 0.0);
                }
            }
        }
        let inv = matmul(&ut, &p.hinv_u, k);
        let mut hd = h.h.clone();
        for i in 0..k {
            hd[i * k + i] += p.damp;
        }
        let id = matmul(&inv, &hd, k);
        for i in 0..k {
            for j in 0..k {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((id[i * k + j] - want).abs() < 1e-9, "({i},{j}) {}", id[i * k + j]);
            }
        }
        // A permutation reorders channels.
        let perm: Vec<usize> = (0..k).rev().collect();
        let q = prepare(&h, 0.01, Some(&perm)).unwrap();
        // U is upper, so U[0, 0]^2 = (U^T U)[0, 0] = (H + damp I)^-1 at the first channel of the order.
        let first = perm[0];
        let uu: f64 = (0..k).map(|r| q.hinv_u[r * k] * q.hinv_u[r * k]).sum();
        assert!((uu - inv[first * k + first]).abs() < 1e-9, "{uu} vs {}", inv[first * k + first]);
    }

    #[test]
    fn dead_channels_are_reported_and_neutralised() {
        let (k, rows) = (8, 30);
        let mut x = randn(rows * k, 3);
        for r in 0..rows {
            x[r * k + 2] = 0.0;
            x[r * k + 5] = 0.0;
        }
        let h = Hessian::from_rows(&x, k);
        assert_eq!(h.dead_channels(), vec![2, 5]);
        let p = prepare(&h, 0.01, None).unwrap();
        assert_eq!(p.dead.iter().filter(|&&d| d).count(), 2);
        assert!(p.dead[2] && p.dead[5]);
        assert!(p.hinv_u.iter().all(|v| v.is_finite()));
        // A dead channel is decoupled: its row of U has only the diagonal, 1 / sqrt(1 + damp).
        let d = p.hinv_u[5 * k + 5];
        assert!((d - 1.0 / (1.0 + p.damp).sqrt()).abs() < 1e-9, "{d}");
        assert!(p.hinv_u[5 * k + 6..6 * k].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn failed_factorisation_raises_damping_or_errs() {
        // Rank 1 and slightly indefinite (rounding can leave a Hessian so), no damping asked for:
        // tries with 0, then 1e-6, 1e-5, 1e-4 times the mean diagonal fail, 1e-3 succeeds.
        let k = 6;
        let v: Vec<f32> = (0..k).map(|i| 1.0 + i as f32).collect();
        let x: Vec<f32> = (0..5).flat_map(|_| v.clone()).collect();
        let mut h = Hessian::from_rows(&x, k);
        let mean = h.diag().iter().sum::<f64>() / k as f64;
        for i in 0..k {
            h.h[i * k + i] -= 3e-4 * mean;
        }
        let p = prepare(&h, 0.0, None).unwrap();
        assert_eq!(p.retries, 4, "{p:?}");
        assert!(p.damp > 3e-4 * mean, "{p:?}");
        // An indefinite matrix that no damping tried repairs: a clear error.
        let mut bad = Hessian { dim: 2, rows: 1, h: vec![1.0, 0.0, 0.0, -1e30] };
        let e = prepare(&bad, 0.01, None).unwrap_err();
        assert!(matches!(e, HessianError::NotPositiveDefinite { dim: 2, .. }), "{e:?}");
        assert!(e.to_string().contains("not positive definite"), "{e}");
        bad.h[0] = f64::NAN;
        assert_eq!(prepare(&bad, 0.01, None).unwrap_err(), HessianError::NotFinite);
        let none = Hessian { dim: 2, rows: 0, h: vec![0.0; 4] };
        assert_eq!(prepare(&none, 0.01, None).unwrap_err(), HessianError::NoRows);
    }

    #[test]
    fn quadratic_is_the_output_error() {
        let (k, rows, n) = (10, 25, 3);
        let x = randn(rows * k, 4);
        let d = randn(n * k, 5);
        let h = Hessian::from_rows(&x, k);
        let mut direct = 0f64;
        for r in 0..rows {
            for c in 0..n {
                let e: f64 = (0..k).map(|j| x[r * k + j] as f64 * d[c * k + j] as f64).sum();
                direct += e * e;
            }
        }
        direct /= rows as f64;
        assert!((h.quadratic(&d, n) - direct).abs() < 1e-9 * direct.max(1.0), "{} vs {direct}", h.quadratic(&d, n));
    }
}
