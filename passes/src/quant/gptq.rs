//! GPTQ (Frantar et al. 2022), training-free: rounds a weight one input channel (a row of
//! `W [K, N]`, a column of the stored `[N, K]`) at a time and spreads each rounding error over
//! the channels not yet rounded, weighted by the inverse Hessian of the layer's reconstruction
//! objective `|| X W - X Q ||^2` ([`crate::hessian`]), so that the output error, not the weight
//! error, is what gets minimised.
//!
//! As in the reference implementation: the Hessian is damped (`damp * mean(diag H)`), dead
//! channels are zeroed, `U` is the upper Cholesky factor of `H^-1`, and channels are processed
//! in lazy batches of [`LAZY_BATCH`] (the error of a batch reaches the later channels through one
//! matrix product after the batch). The quantisation groups are `quant-w4`'s blocks along K; a
//! group's scale and zero point are computed from the *updated* weights when its first channel
//! comes up (`static_groups=False`). With `act_order`, channels are processed by descending
//! `diag(H)`; the groups then stay contiguous blocks of the original order (so the stored form
//! is unchanged) with their scales and zero points computed from the weight before any update
//! (the reference's `static_groups=True`), since a group's channels no longer come up together.
//!
//! The result is a [`Blocks`], so MatMulNBits and DequantizeLinear emission is shared with RTN
//! and AWQ. `quant-w4` calibrates one-shot: every Hessian comes from the float model in one
//! calibration pass (later layers are not re-calibrated on earlier layers' quantised outputs),
//! and by default hands this function the Hessian shrunk towards its diagonal
//! ([`Hessian::shrunk`], `shrink=auto`); `shrink=0` is the reference algorithm.

use super::{Blocks, block_params_bits, encode_bits};
use crate::hessian::{self, Hessian, HessianError};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Channels per lazy batch (the reference's `blocksize`).
pub const LAZY_BATCH: usize = 128;

#[derive(Clone, Copy, Debug)]
pub struct GptqOptions {
    /// The quantisation group (block) along K.
    pub block: usize,
    pub sym: bool,
    pub bits: u8,
    /// Process channels by descending `diag(H)` (static groups).
    pub act_order: bool,
    /// Relative damping (`percdamp`).
    pub damp: f64,
}

#[derive(Clone, Debug)]
pub struct Gptq {
    pub blocks: Blocks,
    /// Dead input channels (always zero in calibration; their weights were zeroed).
    pub dead: usize,
    /// The absolute damping used and how often it was raised.
    pub damp: f64,
    pub retries: usize,
}

/// GPTQ on `wt` (`[n, k]` row-major: row `r` is output column `r` of `W [K, N]`) with the
/// Hessian `h` of the layer input.
pub fn quantize(wt: &[f32], n: usize, k: usize, h: &Hessian, o: &GptqOptions) -> Result<Gptq, HessianError> {
    if h.dim != k || wt.len() != n * k {
        return Err(HessianError::NoRows);
    }
    let block = o.block.max(1);
    let nb = k.div_ceil(block);
    let perm: Option<Vec<usize>> = o.act_order.then(|| {
        let d = h.diag();
        let mut p: Vec<usize> = (0..k).collect();
        // Descending diag(H), ties by channel (a stable order).
        p.sort_by(|&a, &b| d[b].partial_cmp(&d[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
        p
    });
    let prep = hessian::prepare(h, o.damp, perm.as_deref())?;
    let at = |i: usize| perm.as_ref().map_or(i, |p| p[i]);
    // The working weight, in processing order, dead channels zeroed.
    let mut w = vec![0f32; n * k];
    for r in 0..n {
        for i in 0..k {
            let c = at(i);
            w[r * k + i] = if prep.dead[c] { 0.0 } else { wt[r * k + c] };
        }
    }
    let mut scales = vec![0f32; n * nb];
    let mut zero_points = vec![0u8; n * nb];
    if o.act_order {
        // Static groups from the weight as it came (dead channels zeroed), original order.
        for r in 0..n {
            let mut orig = wt[r * k..(r + 1) * k].to_vec();
            for (c, v) in orig.iter_mut().enumerate() {
                if prep.dead[c] {
                    *v = 0.0;
                }
            }
            for b in 0..nb {
                let (c0, c1) = (b * block, ((b + 1) * block).min(k));
                let (s, z) = block_params_bits(&orig[c0..c1], o.sym, 1.0, o.bits);
                scales[r * nb + b] = s;
                zero_points[r * nb + b] = z;
            }
        }
    }
    let u32: Vec<f32> = prep.hinv_u.iter().map(|&v| v as f32).collect();
    let mut codes = vec![0u8; n * k];
    // Rows per parallel task: enough work per task, and as many tasks as threads at least.
    let rows_per = n.div_ceil(rayon::current_num_threads().max(1) * 4).clamp(1, 64);
    for i1 in (0..k).step_by(LAZY_BATCH) {
        let i2 = (i1 + LAZY_BATCH).min(k);
        let bs = i2 - i1;
        let mut err = vec![0f32; n * bs];
        w.par_chunks_mut(rows_per * k)
            .zip(err.par_chunks_mut(rows_per * bs))
            .zip(codes.par_chunks_mut(rows_per * k))
            .zip(scales.par_chunks_mut(rows_per * nb).zip(zero_points.par_chunks_mut(rows_per * nb)))
            .for_each(|(((wc, ec), cc), (sc, zc))| {
                for (r, ((wr, er), cr)) in wc.chunks_mut(k).zip(ec.chunks_mut(bs)).zip(cc.chunks_mut(k)).enumerate() {
                    let (sr, zr) = (&mut sc[r * nb..(r + 1) * nb], &mut zc[r * nb..(r + 1) * nb]);
                    for i in i1..i2 {
                        let c = at(i);
                        let g = c / block;
                        if !o.act_order && i % block == 0 {
                            // The group starts: its parameters from the updated weights (a group
                            // within one lazy batch, or starting a batch: all updates are in).
                            let end = (i + block).min(k);
                            let (s, z) = block_params_bits(&wr[i..end], o.sym, 1.0, o.bits);
                            sr[g] = s;
                            zr[g] = z;
                        }
                        let (s, z) = (sr[g], zr[g]);
                        let x = wr[i];
                        let code = encode_bits(x, s, z, o.sym, o.bits);
                        cr[c] = code;
                        let q = (code as f32 - z as f32) * s;
                        let e = (x - q) / u32[i * k + i];
                        er[i - i1] = e;
                        let urow = &u32[i * k + i + 1..i * k + i2];
                        for (wv, &uv) in wr[i + 1..i2].iter_mut().zip(urow) {
                            *wv -= e * uv;
                        }
                    }
                }
            });
        if i2 < k {
            // W[:, i2..] -= Err @ U[i1..i2, i2..]
            let wm = MatMut::from_row_major_slice_mut(&mut w[..], n, k);
            let dst = wm.submatrix_mut(0, i2, n, k - i2);
            let lhs = MatRef::from_row_major_slice(&err[..], n, bs);
            let um = MatRef::from_row_major_slice(&u32[..], k, k);
            let rhs = um.submatrix(i1, i2, bs, k - i2);
            matmul(dst, Accum::Add, lhs, rhs, -1.0f32, Par::rayon(0));
        }
    }
    let dead = prep.dead.iter().filter(|&&d| d).count();
    let blocks = Blocks { rows: n, cols: k, block, sym: o.sym, bits: o.bits, codes, scales, zero_points };
    Ok(Gptq { blocks, dead, damp: prep.damp, retries: prep.retries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{Rng, quantize_rows_bits};

    /// Rows with strongly correlated channels (a few latent factors plus noise) and uneven scales.
    fn correlated(rows: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng(seed);
        let factors = 6;
        let mix: Vec<f32> = (0..factors * k).map(|_| r.normal()).collect();
        let scale: Vec<f32> = (0..k).map(|j| if j % 17 == 3 { 6.0 } else { 0.5 + (j % 5) as f32 * 0.3 }).collect();
        let mut x = vec![0f32; rows * k];
        for row in 0..rows {
            let z: Vec<f32> = (0..factors).map(|_| r.normal()).collect();
            for j in 0..k {
                let mut v = 0.3 * r.normal();
                for f in 0..factors {
                    v += z[f] * mix[f * k + j];
                }
                x[row * k + j] = v * scale[j];
            }
        }
        x
    }

    /// || X W - X Q ||^2 with W and Q given as [n, k].
    fn output_error(x: &[f32], rows: usize, k: usize, w: &[f32], q: &[f32], n: usize) -> f64 {
        let mut total = 0f64;
        for r in 0..rows {
            for c in 0..n {
                let mut e = 0f64;
                for j in 0..k {
                    e += x[r * k + j] as f64 * (w[c * k + j] - q[c * k + j]) as f64;
                }
                total += e * e;
            }
        }
        total
    }

    #[test]
    fn gptq_beats_rtn_on_correlated_inputs() {
        let (n, k, rows) = (24, 256, 512);
        let mut rng = Rng(21);
        let wt: Vec<f32> = (0..n * k).map(|_| rng.normal()).collect();
        let x = correlated(rows, k, 22);
        let h = Hessian::from_rows(&x, k);
        for (bits, block, sym, act_order) in [
            (4u8, 128, false, false),
            (4, 32, true, false),
            (2, 64, false, false),
            (4, 128, false, true),
            (2, 32, false, true),
        ] {
            let o = GptqOptions { block, sym, bits, act_order, damp: 0.01 };
            let g = quantize(&wt, n, k, &h, &o).unwrap();
            assert_eq!(g.dead, 0);
            assert_eq!((g.blocks.bits, g.blocks.block, g.blocks.rows, g.blocks.cols), (bits, block, n, k));
            let top = (1u8 << bits) - 1;
            assert!(g.blocks.codes.iter().all(|&c| c <= top));
            let rtn = quantize_rows_bits(&wt, n, k, block, sym, bits, None);
            let (e_gptq, e_rtn) = (
                output_error(&x, rows, k, &wt, &g.blocks.dequantize(), n),
                output_error(&x, rows, k, &wt, &rtn.dequantize(), n),
            );
            // The objective GPTQ minimises agrees with the direct error.
            let d: Vec<f32> = wt.iter().zip(g.blocks.dequantize()).map(|(a, b)| a - b).collect();
            let proxy = h.quadratic(&d, n) * rows as f64;
            assert!((proxy - e_gptq).abs() <= 1e-3 * e_gptq, "{proxy} vs {e_gptq}");
            assert!(
                e_gptq < 0.8 * e_rtn,
                "bits {bits} block {block} sym {sym} act_order {act_order}: gptq {e_gptq:.4e} vs rtn {e_rtn:.4e}"
            );
        }
    }

    #[test]
    fn uncorrelated_identity_hessian_gives_rtn() {
        // H = c I: no channel can compensate another; GPTQ rounds to nearest.
        let (n, k) = (8, 64);
        let mut rng = Rng(3);
        let wt: Vec<f32> = (0..n * k).map(|_| rng.normal()).collect();
        let mut h = Hessian { dim: k, rows: 10, h: vec![0.0; k * k] };
        for i in 0..k {
            h.h[i * k + i] = 2.0;
        }
        let g = quantize(&wt, n, k, &h, &GptqOptions { block: 32, sym: false, bits: 4, act_order: false, damp: 0.01 })
            .unwrap();
        assert_eq!(g.blocks, quantize_rows_bits(&wt, n, k, 32, false, 4, None));
    }

    #[test]
    fn dead_channels_get_zero_weights() {
        let (n, k, rows) = (6, 64, 100);
        let mut rng = Rng(8);
        let wt: Vec<f32> = (0..n * k).map(|_| rng.normal() + 3.0).collect();
        let mut x = correlated(rows, k, 9);
        for r in 0..rows {
            x[r * k + 7] = 0.0;
            x[r * k + 40] = 0.0;
        }
        let h = Hessian::from_rows(&x, k);
        for act_order in [false, true] {
            let g = quantize(&wt, n, k, &h, &GptqOptions { block: 32, sym: false, bits: 4, act_order, damp: 0.01 })
                .unwrap();
            assert_eq!(g.dead, 2);
            let d = g.blocks.dequantize();
            for r in 0..n {
                // The weights are all near 3: a zeroed channel forces 0 into its block's range and
                // decodes to (nearly) zero.
                assert!(d[r * k + 7].abs() <= g.blocks.scales[r * 2] / 2.0 + 1e-6, "{}", d[r * k + 7]);
                assert!(d[r * k + 40].abs() <= g.blocks.scales[r * 2 + 1] / 2.0 + 1e-6);
            }
            // And the live channels still reconstruct the output better than RTN.
            let rtn = quantize_rows_bits(&wt, n, k, 32, false, 4, None);
            assert!(
                output_error(&x, rows, k, &wt, &d, n) < output_error(&x, rows, k, &wt, &rtn.dequantize(), n),
                "act_order {act_order}"
            );
        }
    }

    #[test]
    fn a_singular_hessian_is_damped_and_a_broken_one_is_an_error() {
        let (n, k) = (4, 32);
        let mut rng = Rng(1);
        let wt: Vec<f32> = (0..n * k).map(|_| rng.normal()).collect();
        // Rank 2, pushed slightly indefinite (as rounding can leave a Hessian), no damping asked
        // for: damping is raised until it factors.
        let x = correlated(2, k, 2);
        let mut h = Hessian::from_rows(&x, k);
        let mean = h.diag().iter().sum::<f64>() / k as f64;
        for i in 0..k {
            h.h[i * k + i] -= 2e-3 * mean;
        }
        let g = quantize(&wt, n, k, &h, &GptqOptions { block: 32, sym: false, bits: 4, act_order: false, damp: 0.0 })
            .unwrap();
        assert!(g.retries >= 1 && g.damp > 0.0);
        let mut bad = h.clone();
        bad.h[5 * k + 5] = -1e30;
        let e =
            quantize(&wt, n, k, &bad, &GptqOptions { block: 32, sym: false, bits: 4, act_order: false, damp: 0.01 })
                .unwrap_err();
        assert!(e.to_string().contains("not positive definite"), "{e}");
    }
}
