//! Kernels: nn (convolutions, pooling, normalisations, resizing, sampling, attention).
//!
//! Float kernels are generic over the compute type ([`Real`]: f32 for f32/f16/bf16 inputs, f64
//! for f64); f16/bf16 results are rounded once at the end. Conv and ConvTranspose lower to
//! im2col / col2im around the shared GEMM, parallel over images and groups with rayon.

use super::Ctx;
use super::linalg::{Elem, Gemm, Real, checked_numel, gemm_strided, opt_real_in, real_in, with_real};
use crate::error::Result;
use crate::value::{Tensor, Value};
use ndarray::{ArrayD, CowArray, IxDyn};
use optc_ir::{AttrList, DType, Op};
use rayon::prelude::*;

pub fn run(cx: &Ctx, inputs: &[Option<&Value>]) -> Option<Result<Vec<Value>>> {
    let dt = || cx.tensor(inputs, 0).map(|t| t.dtype());
    let r = match &cx.node.op {
        Op::Conv => dt().and_then(|d| with_real!(cx, d, T => conv_op::<T>(cx, inputs, d))),
        Op::ConvTranspose => dt().and_then(|d| with_real!(cx, d, T => conv_transpose_op::<T>(cx, inputs, d))),
        Op::MaxPool => pool_entry(cx, inputs, PoolKind::Max),
        Op::AveragePool => pool_entry(cx, inputs, PoolKind::Avg),
        Op::LpPool => pool_entry(cx, inputs, PoolKind::Lp),
        Op::GlobalMaxPool => global_pool_entry(cx, inputs, PoolKind::Max),
        Op::GlobalAveragePool => global_pool_entry(cx, inputs, PoolKind::Avg),
        Op::GlobalLpPool => global_pool_entry(cx, inputs, PoolKind::Lp),
        Op::BatchNormalization => dt().and_then(|d| with_real!(cx, d, T => batch_norm::<T>(cx, inputs, d))),
        Op::InstanceNormalization => dt().and_then(|d| with_real!(cx, d, T => instance_norm::<T>(cx, inputs, d))),
        Op::LayerNormalization => dt().and_then(|d| with_real!(cx, d, T => layer_norm::<T>(cx, inputs, d, false))),
        Op::RMSNormalization => dt().and_then(|d| with_real!(cx, d, T => layer_norm::<T>(cx, inputs, d, true))),
        Op::GroupNormalization => dt().and_then(|d| with_real!(cx, d, T => group_norm::<T>(cx, inputs, d))),
        Op::LRN => dt().and_then(|d| with_real!(cx, d, T => lrn::<T>(cx, inputs, d))),
        Op::MeanVarianceNormalization => dt().and_then(|d| with_real!(cx, d, T => mvn::<T>(cx, inputs, d))),
        Op::LpNormalization => dt().and_then(|d| with_real!(cx, d, T => lp_norm::<T>(cx, inputs, d))),
        Op::Resize | Op::Upsample => resize_entry(cx, inputs),
        Op::GridSample => dt().and_then(|d| with_real!(cx, d, T => grid_sample::<T>(cx, inputs, d))),
        Op::AffineGrid => dt().and_then(|d| with_real!(cx, d, T => affine_grid::<T>(cx, inputs, d))),
        Op::RoiAlign => dt().and_then(|d| with_real!(cx, d, T => roi_align::<T>(cx, inputs, d))),
        Op::MaxRoiPool => dt().and_then(|d| with_real!(cx, d, T => max_roi_pool::<T>(cx, inputs, d))),
        Op::DeformConv => dt().and_then(|d| with_real!(cx, d, T => deform_conv::<T>(cx, inputs, d))),
        Op::Attention => dt().and_then(|d| with_real!(cx, d, T => attention::<T>(cx, inputs, d))),
        Op::RotaryEmbedding => dt().and_then(|d| with_real!(cx, d, T => rotary::<T>(cx, inputs, d))),
        Op::CausalConvWithState => {
            dt().and_then(|d| with_real!(cx, d, T => causal_conv_with_state::<T>(cx, inputs, d)))
        }
        _ => return None,
    };
    Some(r)
}

fn out1(t: Tensor) -> Result<Vec<Value>> {
    Ok(vec![Value::Tensor(t)])
}

fn arr<T>(cx: &Ctx, shape: &[usize], v: Vec<T>) -> Result<ArrayD<T>> {
    ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| cx.err(format!("internal shape error: {e}")))
}

/// A contiguous copy-or-view as a slice.
fn slice_of<'a, T: Clone>(a: &'a CowArray<'_, T, IxDyn>) -> CowArray<'a, T, IxDyn> {
    a.as_standard_layout()
}

// ---------------------------------------------------------------------------------------------
// Geometry shared by convolutions and pools
// ---------------------------------------------------------------------------------------------

/// Window geometry along the spatial dims: kernel, strides, dilations, begin/end pads (may be
/// negative for ConvTranspose with a given output shape) and the output size.
#[derive(Clone, Debug)]
pub(crate) struct Geom {
    k: Vec<usize>,
    s: Vec<usize>,
    d: Vec<usize>,
    pb: Vec<i64>,
    pe: Vec<i64>,
    out: Vec<usize>,
}

/// An ints attribute of length `n` (default `def` each), every value >= `min`.
fn ints_attr(cx: &Ctx, name: &str, n: usize, def: i64, min: i64) -> Result<Vec<i64>> {
    match cx.attr_ints(name) {
        None => Ok(vec![def; n]),
        Some(v) if v.is_empty() => Ok(vec![def; n]),
        Some(v) => {
            if v.len() != n {
                return Err(cx.err(format!("attribute {name} has {} values, expected {n}", v.len())));
            }
            if let Some(x) = v.iter().find(|&&x| x < min) {
                return Err(cx.err(format!("attribute {name} has invalid value {x}")));
            }
            Ok(v)
        }
    }
}

fn to_usize(v: Vec<i64>) -> Vec<usize> {
    v.into_iter().map(|x| x.max(0) as usize).collect()
}

/// Computes a Conv/pool geometry for spatial input `ins` and kernel `k`.
fn geometry(cx: &Ctx, ins: &[usize], k: &[usize], ceil_mode: bool) -> Result<Geom> {
    let n = ins.len();
    let s = to_usize(ints_attr(cx, "strides", n, 1, 1)?);
    let d = to_usize(ints_attr(cx, "dilations", n, 1, 1)?);
    let auto_pad = cx.attr_string("auto_pad", "NOTSET");
    let mut pb = vec![0i64; n];
    let mut pe = vec![0i64; n];
    let mut out = vec![0usize; n];
    for i in 0..n {
        let eff = ((k[i] as i64 - 1) * d[i] as i64 + 1).max(1);
        let inn = ins[i] as i64;
        match auto_pad.as_str() {
            "SAME_UPPER" | "SAME_LOWER" => {
                let o = (inn + s[i] as i64 - 1) / s[i] as i64;
                let total = ((o - 1) * s[i] as i64 + eff - inn).max(0);
                let small = total / 2;
                if auto_pad == "SAME_UPPER" {
                    (pb[i], pe[i]) = (small, total - small);
                } else {
                    (pb[i], pe[i]) = (total - small, small);
                }
                out[i] = o.max(0) as usize;
            }
            "VALID" | "NOTSET" | "" => {
                if auto_pad == "NOTSET" || auto_pad.is_empty() {
                    let p = ints_attr(cx, "pads", 2 * n, 0, 0)?;
                    (pb[i], pe[i]) = (p[i], p[n + i]);
                }
                let span = inn + pb[i] + pe[i] - eff;
                if span < 0 {
                    return Err(cx.err(format!(
                        "kernel extent {eff} is larger than the padded input {} along spatial dim {i}",
                        inn + pb[i] + pe[i]
                    )));
                }
                let st = s[i] as i64;
                let mut o = if ceil_mode { (span + st - 1) / st + 1 } else { span / st + 1 };
                // The last window must start inside the input or the begin padding.
                if ceil_mode && (o - 1) * st >= inn + pb[i] {
                    o -= 1;
                }
                out[i] = o.max(0) as usize;
            }
            other => return Err(cx.err(format!("unknown auto_pad '{other}'"))),
        }
    }
    Ok(Geom { k: k.to_vec(), s, d, pb, pe, out })
}

/// For each dim, for each (kernel offset, output position): the input position or -1.
fn window_tables(g: &Geom, ins: &[usize]) -> Vec<Vec<i64>> {
    (0..ins.len())
        .map(|i| {
            let o = g.out[i];
            let mut t = vec![-1i64; g.k[i] * o];
            for kk in 0..g.k[i] {
                for oo in 0..o {
                    let p = oo as i64 * g.s[i] as i64 - g.pb[i] + (kk * g.d[i]) as i64;
                    if p >= 0 && p < ins[i] as i64 {
                        t[kk * o + oo] = p;
                    }
                }
            }
            t
        })
        .collect()
}

fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut st = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        st[i] = st[i + 1] * shape[i + 1];
    }
    st
}

fn unravel(mut f: usize, shape: &[usize], idx: &mut [usize]) {
    for i in (0..shape.len()).rev() {
        let d = shape[i].max(1);
        idx[i] = f % d;
        f /= d;
    }
}

#[allow(clippy::too_many_arguments)]
/// im2col: `col[(c*K + kf) * OS + of]` = input at the window position (0 in padding).
fn im2col<T: Copy + Default + Send + Sync>(
    x: &[T],
    cg: usize,
    ins: &[usize],
    g: &Geom,
    tabs: &[Vec<i64>],
    col: &mut [T],
    par: bool,
) {
    let nd = ins.len();
    let kn: usize = g.k.iter().product();
    let os: usize = g.out.iter().product();
    let is: usize = ins.iter().product();
    let istr = strides_of(ins);
    let inner = g.out[nd - 1];
    let outer = os / inner.max(1);
    let row = |r: usize, dst: &mut [T]| {
        let (c, kf) = (r / kn, r % kn);
        let mut kidx = vec![0usize; nd];
        unravel(kf, &g.k, &mut kidx);
        let mut oidx = vec![0usize; nd];
        let xc = &x[c * is..(c + 1) * is];
        let last = &tabs[nd - 1][kidx[nd - 1] * inner..(kidx[nd - 1] + 1) * inner];
        for ob in 0..outer {
            let seg = &mut dst[ob * inner..(ob + 1) * inner];
            unravel(ob, &g.out[..nd - 1], &mut oidx[..nd - 1]);
            let mut base = 0usize;
            let mut valid = true;
            for dd in 0..nd - 1 {
                let p = tabs[dd][kidx[dd] * g.out[dd] + oidx[dd]];
                if p < 0 {
                    valid = false;
                    break;
                }
                base += p as usize * istr[dd];
            }
            if !valid {
                seg.fill(T::default());
                continue;
            }
            let xr = &xc[base..];
            for (o, v) in seg.iter_mut().enumerate() {
                let p = last[o];
                *v = if p >= 0 { xr[p as usize] } else { T::default() };
            }
        }
    };
    let rows = cg * kn;
    if par && rows * os > 1 << 15 {
        col[..rows * os].par_chunks_mut(os.max(1)).enumerate().for_each(|(r, d)| row(r, d));
    } else {
        col[..rows * os].chunks_mut(os.max(1)).enumerate().for_each(|(r, d)| row(r, d));
    }
}

/// Runs `task(t, chunk, scratch, par)` over the `chunk`-sized pieces of `out`: in parallel (one
/// scratch buffer per worker, inner kernels single-threaded) when there are enough tasks,
/// otherwise one after another with multithreaded inner kernels.
fn run_tasks<T: Send + Default + Copy, F>(out: &mut [T], chunk: usize, task: F)
where
    F: Fn(usize, &mut [T], &mut Vec<T>, bool) + Sync + Send,
{
    if chunk == 0 {
        return;
    }
    let tasks = out.len() / chunk;
    if tasks >= rayon::current_num_threads() && tasks > 1 {
        out.par_chunks_mut(chunk).enumerate().for_each_init(Vec::new, |scratch, (t, c)| task(t, c, scratch, false));
    } else {
        let mut scratch = Vec::new();
        for (t, c) in out.chunks_mut(chunk).enumerate() {
            task(t, c, &mut scratch, true);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Conv
// ---------------------------------------------------------------------------------------------

/// Direct convolution core on contiguous data: x [N, C, ins], w [M, C/group, k], optional bias
/// [M]. Returns y [N, M, g.out] flattened.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_core<T: Elem>(
    x: &[T],
    n: usize,
    c: usize,
    ins: &[usize],
    w: &[T],
    m: usize,
    bias: Option<&[T]>,
    group: usize,
    g: &Geom,
) -> Vec<T> {
    let cg = c / group;
    let mg = m / group;
    if cg == 1 && mg == 1 && ins.len() == 2 {
        return depthwise2d(x, n, c, ins, w, bias, g);
    }
    if ins.len() <= 2 {
        // 1-D convolutions run as 2-D ones over a height of 1.
        let (ins2, g2) = as_2d(ins, g);
        return conv2d_core(x, n, c, &ins2, w, m, bias, group, &g2);
    }
    let kn: usize = g.k.iter().product();
    let is: usize = ins.iter().product();
    let os: usize = g.out.iter().product();
    let pointwise =
        g.k.iter().all(|&k| k == 1) && g.s.iter().all(|&s| s == 1) && g.pb.iter().chain(&g.pe).all(|&p| p == 0);
    let tabs = if pointwise { vec![] } else { window_tables(g, ins) };
    let mut y = vec![T::default(); n * m * os];
    run_tasks(&mut y, mg * os, |t, slab, col, par| {
        let (ni, gi) = (t / group, t % group);
        let xs = &x[(ni * c + gi * cg) * is..(ni * c + (gi + 1) * cg) * is];
        let ws = &w[gi * mg * cg * kn..(gi + 1) * mg * cg * kn];
        let bmat: &[T] = if pointwise {
            xs
        } else {
            col.resize(cg * kn * os, T::default());
            im2col(xs, cg, ins, g, &tabs, col, par);
            col
        };
        gemm_strided(&Gemm::rm(mg, os, cg * kn).par(par), ws, bmat, slab, T::one());
        add_bias(slab, os, bias.map(|b| &b[gi * mg..(gi + 1) * mg]));
    });
    y
}

/// Adds `bias[i]` to row `i` (of length `len`) of `y`.
fn add_bias<T: Elem>(y: &mut [T], len: usize, bias: Option<&[T]>) {
    if let Some(b) = bias {
        for (row, &bv) in y.chunks_mut(len.max(1)).zip(b) {
            row.iter_mut().for_each(|v| *v = v.add(bv));
        }
    }
}

/// A 1-D or 2-D geometry as a 2-D one (a 1-D one gets a leading spatial dim of 1).
fn as_2d(ins: &[usize], g: &Geom) -> (Vec<usize>, Geom) {
    if ins.len() == 2 {
        return (ins.to_vec(), g.clone());
    }
    let pre = |v: &[usize], a: usize| [&[a][..], v].concat();
    let prei = |v: &[i64]| [&[0][..], v].concat();
    let g2 = Geom {
        k: pre(&g.k, 1),
        s: pre(&g.s, 1),
        d: pre(&g.d, 1),
        pb: prei(&g.pb),
        pe: prei(&g.pe),
        out: pre(&g.out, 1),
    };
    (pre(ins, 1), g2)
}

/// Elements of im2col scratch per chunk of output rows: the chunk of the column matrix stays in
/// the core's cache while the GEMM reads it.
const COL_BUDGET: usize = 1 << 17;

/// 2-D convolution on contiguous data. Pointwise convolutions multiply the input directly; the
/// others build the im2col matrix a few output rows at a time and multiply each chunk into its
/// columns of the output.
#[allow(clippy::too_many_arguments)]
fn conv2d_core<T: Elem>(
    x: &[T],
    n: usize,
    c: usize,
    ins: &[usize],
    w: &[T],
    m: usize,
    bias: Option<&[T]>,
    group: usize,
    g: &Geom,
) -> Vec<T> {
    let (cg, mg) = (c / group, m / group);
    let kn = g.k[0] * g.k[1];
    let is = ins[0] * ins[1];
    let (oh, ow) = (g.out[0], g.out[1]);
    let os = oh * ow;
    let kk = cg * kn;
    let pointwise =
        g.k.iter().all(|&k| k == 1) && g.s.iter().all(|&s| s == 1) && g.pb.iter().chain(&g.pe).all(|&p| p == 0);
    let mut y = vec![T::default(); n * m * os];
    run_tasks(&mut y, mg * os, |t, slab, col, par| {
        let (ni, gi) = (t / group, t % group);
        let xs = &x[(ni * c + gi * cg) * is..(ni * c + (gi + 1) * cg) * is];
        let ws = &w[gi * mg * kk..(gi + 1) * mg * kk];
        if pointwise || kk == 0 {
            gemm_strided(&Gemm::rm(mg, os, kk).par(par), ws, xs, slab, T::one());
        } else {
            let budget = if par { COL_BUDGET * rayon::current_num_threads() } else { COL_BUDGET };
            let rows = (budget / (kk * ow).max(1)).clamp(1, oh.max(1));
            for oy0 in (0..oh).step_by(rows) {
                let r = rows.min(oh - oy0);
                let nc = r * ow;
                col.resize(kk * nc, T::default());
                im2col2d(xs, cg, ins, g, oy0, r, &mut col[..kk * nc]);
                let gm = Gemm { m: mg, n: nc, k: kk, ars: kk, acs: 1, brs: nc, bcs: 1, ldc: os, acc: false, par };
                gemm_strided(&gm, ws, col, &mut slab[oy0 * ow..], T::one());
            }
        }
        add_bias(slab, os, bias.map(|b| &b[gi * mg..(gi + 1) * mg]));
    });
    y
}

/// The range of output columns `ox` whose input column `ox * sx + off` lies in `0..wd`,
/// clipped to `0..ow`.
fn valid_cols(off: i64, sx: usize, wd: usize, ow: usize) -> (usize, usize) {
    let ox0 = if off >= 0 { 0 } else { ((-off) as usize).div_ceil(sx) };
    let room = wd as i64 - off;
    let ox1 = if room <= 0 { 0 } else { (room as usize).div_ceil(sx).min(ow) };
    (ox0.min(ox1), ox1)
}

/// im2col for output rows `oy0..oy0 + rows` of a 2-D convolution:
/// `col[(ci * K + ky * kw + kx) * nc + (oy - oy0) * ow + ox]` = input at the window position
/// (0 in padding), with `nc = rows * ow`.
fn im2col2d<T: Copy + Default>(x: &[T], cg: usize, ins: &[usize], g: &Geom, oy0: usize, rows: usize, col: &mut [T]) {
    let (h, wd) = (ins[0], ins[1]);
    let (kh, kw) = (g.k[0], g.k[1]);
    let (sy, sx) = (g.s[0].max(1), g.s[1].max(1));
    let (dy, dx) = (g.d[0], g.d[1]);
    let (pt, pl) = (g.pb[0], g.pb[1]);
    let ow = g.out[1];
    let nc = rows * ow;
    if nc == 0 {
        return;
    }
    let mut dsts = col.chunks_exact_mut(nc);
    for ci in 0..cg {
        let xc = &x[ci * h * wd..(ci + 1) * h * wd];
        for ky in 0..kh {
            for kx in 0..kw {
                let Some(dst) = dsts.next() else { return };
                let off_x = (kx * dx) as i64 - pl;
                let (ox0, ox1) = valid_cols(off_x, sx, wd, ow);
                for (i, seg) in dst.chunks_exact_mut(ow).enumerate() {
                    let iy = ((oy0 + i) * sy) as i64 - pt + (ky * dy) as i64;
                    if iy < 0 || iy >= h as i64 || ox0 >= ox1 {
                        seg.fill(T::default());
                        continue;
                    }
                    let xrow = &xc[iy as usize * wd..(iy as usize + 1) * wd];
                    seg[..ox0].fill(T::default());
                    seg[ox1..].fill(T::default());
                    let start = (ox0 as i64 * sx as i64 + off_x) as usize;
                    if sx == 1 {
                        seg[ox0..ox1].copy_from_slice(&xrow[start..start + (ox1 - ox0)]);
                    } else {
                        for (o, &v) in seg[ox0..ox1].iter_mut().zip(xrow[start..].iter().step_by(sx)) {
                            *o = v;
                        }
                    }
                }
            }
        }
    }
}

/// Depthwise 2-D convolution (one input and one output channel per group), computed directly:
/// for each kernel tap, a row of outputs accumulates a contiguous (stride 1) or strided row of
/// inputs. im2col + GEMM would do a matrix-vector product per channel instead.
#[allow(clippy::too_many_arguments)]
fn depthwise2d<T: Elem>(x: &[T], n: usize, c: usize, ins: &[usize], w: &[T], bias: Option<&[T]>, g: &Geom) -> Vec<T> {
    let (h, wd) = (ins[0], ins[1]);
    let (oh, ow) = (g.out[0], g.out[1]);
    let (kh, kw) = (g.k[0], g.k[1]);
    let (sy, sx) = (g.s[0].max(1), g.s[1].max(1));
    let (dy, dx) = (g.d[0], g.d[1]);
    let (pt, pl) = (g.pb[0], g.pb[1]);
    let mut y = vec![T::default(); n * c * oh * ow];
    run_tasks(&mut y, oh * ow, |t, out, _, _| {
        let ch = t % c;
        let xp = &x[t * h * wd..(t + 1) * h * wd];
        let wk = &w[ch * kh * kw..(ch + 1) * kh * kw];
        out.fill(bias.map_or(T::default(), |b| b[ch]));
        for ky in 0..kh {
            for kx in 0..kw {
                let wv = wk[ky * kw + kx];
                // Outputs ox with 0 <= ox * sx + off_x < wd read inside the row.
                let off_x = (kx * dx) as i64 - pl;
                let (ox0, ox1) = valid_cols(off_x, sx, wd, ow);
                if ox0 >= ox1 {
                    continue;
                }
                for oy in 0..oh {
                    let iy = (oy * sy) as i64 - pt + (ky * dy) as i64;
                    if iy < 0 || iy >= h as i64 {
                        continue;
                    }
                    let xrow = &xp[iy as usize * wd..(iy as usize + 1) * wd];
                    let orow = &mut out[oy * ow..(oy + 1) * ow];
                    let start = (ox0 as i64 * sx as i64 + off_x) as usize;
                    if sx == 1 {
                        let xs = &xrow[start..start + (ox1 - ox0)];
                        for (o, &xv) in orow[ox0..ox1].iter_mut().zip(xs) {
                            *o = o.add(wv.mul(xv));
                        }
                    } else {
                        for (o, &xv) in orow[ox0..ox1].iter_mut().zip(xrow[start..].iter().step_by(sx)) {
                            *o = o.add(wv.mul(xv));
                        }
                    }
                }
            }
        }
    });
    y
}

/// Validates Conv-style inputs: returns (N, C, spatial, M, kernel).
fn conv_shapes(
    cx: &Ctx,
    xs: &[usize],
    ws: &[usize],
    group: usize,
) -> Result<(usize, usize, Vec<usize>, usize, Vec<usize>)> {
    if xs.len() < 3 || ws.len() != xs.len() {
        return Err(cx.err(format!("X {xs:?} and W {ws:?} must have the same rank >= 3")));
    }
    if group == 0 {
        return Err(cx.err("group must be positive"));
    }
    let (n, c, m) = (xs[0], xs[1], ws[0]);
    if c % group != 0 || m % group != 0 || ws[1] * group != c {
        return Err(cx.err(format!("channels do not match: X {xs:?}, W {ws:?}, group {group}")));
    }
    let mut k = ws[2..].to_vec();
    if let Some(ks) = cx.attr_ints("kernel_shape") {
        if ks.len() != k.len() || ks.iter().zip(&k).any(|(&a, &b)| a != b as i64) {
            return Err(cx.err(format!("kernel_shape {ks:?} does not match W {ws:?}")));
        }
        k = to_usize(ks);
    }
    Ok((n, c, xs[2..].to_vec(), m, k))
}

/// Conv on contiguous data with the node's attributes (used by ConvInteger / QLinearConv):
/// returns y and its shape.
pub(crate) fn conv_with_attrs<T: Elem>(
    cx: &Ctx,
    x: &[T],
    xs: &[usize],
    w: &[T],
    ws: &[usize],
    bias: Option<&[T]>,
) -> Result<(Vec<T>, Vec<usize>)> {
    let group = usize::try_from(cx.attr_int("group", 1)).unwrap_or(0);
    let (n, c, ins, m, k) = conv_shapes(cx, xs, ws, group)?;
    if bias.is_some_and(|b| b.len() != m) {
        return Err(cx.err(format!("bias must have {m} values")));
    }
    let g = geometry(cx, &ins, &k, false)?;
    let mut oshape = vec![n, m];
    oshape.extend(&g.out);
    checked_numel(cx, &oshape)?;
    Ok((conv_core(x, n, c, &ins, w, m, bias, group, &g), oshape))
}

fn conv_op<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], dt: DType) -> Result<Vec<Value>> {
    let x = real_in::<T>(cx, inputs, 0)?;
    let w = real_in::<T>(cx, inputs, 1)?;
    let b = opt_real_in::<T>(cx, inputs, 2)?;
    let group = usize::try_from(cx.attr_int("group", 1)).unwrap_or(0);
    let (n, c, ins, m, k) = conv_shapes(cx, x.shape(), w.shape(), group)?;
    if let Some(b) = &b
        && b.len() != m
    {
        return Err(cx.err(format!("bias has {} values, expected {m}", b.len())));
    }
    let g = geometry(cx, &ins, &k, false)?;
    let mut oshape = vec![n, m];
    oshape.extend(&g.out);
    checked_numel(cx, &oshape)?;
    let (xc, wc) = (slice_of(&x), slice_of(&w));
    let bc = b.as_ref().map(slice_of);
    let y = conv_core(
        xc.as_slice().unwrap_or(&[]),
        n,
        c,
        &ins,
        wc.as_slice().unwrap_or(&[]),
        m,
        bc.as_ref().and_then(|b| b.as_slice()),
        group,
        &g,
    );
    out1(T::wrap(arr(cx, &oshape, y)?, dt))
}

// ---------------------------------------------------------------------------------------------
// ConvTranspose
// ---------------------------------------------------------------------------------------------

fn conv_transpose_op<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], dt: DType) -> Result<Vec<Value>> {
    let x = real_in::<T>(cx, inputs, 0)?;
    let w = real_in::<T>(cx, inputs, 1)?;
    let b = opt_real_in::<T>(cx, inputs, 2)?;
    let group = usize::try_from(cx.attr_int("group", 1)).unwrap_or(0);
    let (xs, ws) = (x.shape().to_vec(), w.shape().to_vec());
    if xs.len() < 3 || ws.len() != xs.len() {
        return Err(cx.err(format!("X {xs:?} and W {ws:?} must have the same rank >= 3")));
    }
    if group == 0 || xs[1] % group != 0 || ws[0] != xs[1] {
        return Err(cx.err(format!("channels do not match: X {xs:?}, W {ws:?}, group {group}")));
    }
    let (n, c) = (xs[0], xs[1]);
    let nd = xs.len() - 2;
    let ins = xs[2..].to_vec();
    let mg = ws[1];
    let m = mg * group;
    let mut k = ws[2..].to_vec();
    if let Some(ks) = cx.attr_ints("kernel_shape") {
        if ks.len() == nd && ks.iter().all(|&v| v > 0) {
            k = to_usize(ks);
        }
        if k != ws[2..] {
            return Err(cx.err(format!("kernel_shape {k:?} does not match W {ws:?}")));
        }
    }
    if let Some(b) = &b
        && b.len() != m
    {
        return Err(cx.err(format!("bias has {} values, expected {m}", b.len())));
    }
    let s = to_usize(ints_attr(cx, "strides", nd, 1, 1)?);
    let d = to_usize(ints_attr(cx, "dilations", nd, 1, 1)?);
    let op = ints_attr(cx, "output_padding", nd, 0, 0)?;
    let auto_pad = cx.attr_string("auto_pad", "NOTSET");
    let out_shape_attr = cx.attr_ints("output_shape").map(|v| if v.len() == nd + 2 { v[2..].to_vec() } else { v });
    let mut pb = vec![0i64; nd];
    let mut pe = vec![0i64; nd];
    let mut out = vec![0usize; nd];
    let same = auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER";
    for i in 0..nd {
        let eff = (k[i] as i64 - 1) * d[i] as i64 + 1;
        let natural = s[i] as i64 * (ins[i] as i64 - 1) + op[i] + eff;
        let target = match &out_shape_attr {
            Some(v) if v.len() == nd => Some(v[i]),
            Some(v) => return Err(cx.err(format!("output_shape {v:?} has the wrong length"))),
            None if same => Some(ins[i] as i64 * s[i] as i64),
            None => None,
        };
        match target {
            Some(t) => {
                let total = natural - t;
                let small = total.div_euclid(2);
                if auto_pad == "SAME_UPPER" {
                    (pb[i], pe[i]) = (small, total - small);
                } else {
                    (pb[i], pe[i]) = (total - small, small);
                }
                out[i] = t.max(0) as usize;
            }
            None => {
                let p = ints_attr(cx, "pads", 2 * nd, 0, 0)?;
                (pb[i], pe[i]) = (p[i], p[nd + i]);
                let o = natural - pb[i] - pe[i];
                if o < 0 {
                    return Err(cx.err("pads make the output empty"));
                }
                out[i] = o as usize;
            }
        }
    }
    let mut oshape = vec![n, m];
    oshape.extend(&out);
    checked_numel(cx, &oshape)?;
    // Tables map (kernel offset, input position) to an output position.
    let tabs: Vec<Vec<i64>> = (0..nd)
        .map(|i| {
            let mut t = vec![-1i64; k[i] * ins[i]];
            for kk in 0..k[i] {
                for ii in 0..ins[i] {
                    let p = ii as i64 * s[i] as i64 - pb[i] + (kk * d[i]) as i64;
                    if p >= 0 && p < out[i] as i64 {
                        t[kk * ins[i] + ii] = p;
                    }
                }
            }
            t
        })
        .collect();
    let cg = c / group;
    let kn: usize = k.iter().product();
    let is: usize = ins.iter().product();
    let os: usize = out.iter().product();
    let ostr = strides_of(&out);
    let (xc, wc) = (slice_of(&x), slice_of(&w));
    let (xsl, wsl) = (xc.as_slice().unwrap_or(&[]), wc.as_slice().unwrap_or(&[]));
    let bc = b.as_ref().map(slice_of);
    let bsl = bc.as_ref().and_then(|b| b.as_slice());
    let mut y = vec![T::zero(); n * m * os];
    let col2im = |mi: usize, dst: &mut [T], col: &[T]| {
        if nd == 2 {
            // Row by row: a kernel tap adds an input row to an output row, contiguously or
            // every `s[1]` outputs; the taps add in the same order as below.
            let (ih, iw, ow) = (ins[0], ins[1], out[1]);
            for ky in 0..k[0] {
                for kx in 0..k[1] {
                    let kf = ky * k[1] + kx;
                    let src = &col[(mi * kn + kf) * is..(mi * kn + kf + 1) * is];
                    let off = (kx * d[1]) as i64 - pb[1];
                    let (i0, i1) = valid_cols(off, s[1], ow, iw);
                    if i0 >= i1 {
                        continue;
                    }
                    let start = (i0 as i64 * s[1] as i64 + off) as usize;
                    for iy in 0..ih {
                        let oy = tabs[0][ky * ih + iy];
                        if oy < 0 {
                            continue;
                        }
                        let srow = &src[iy * iw + i0..iy * iw + i1];
                        let drow = &mut dst[oy as usize * ow..(oy as usize + 1) * ow];
                        if s[1] == 1 {
                            for (o, &v) in drow[start..start + srow.len()].iter_mut().zip(srow) {
                                *o += v;
                            }
                        } else {
                            for (o, &v) in drow[start..].iter_mut().step_by(s[1]).zip(srow) {
                                *o += v;
                            }
                        }
                    }
                }
            }
            return;
        }
        let mut kidx = vec![0usize; nd];
        let mut iidx = vec![0usize; nd];
        for kf in 0..kn {
            unravel(kf, &k, &mut kidx);
            let src = &col[(mi * kn + kf) * is..(mi * kn + kf + 1) * is];
            for (f, &v) in src.iter().enumerate() {
                unravel(f, &ins, &mut iidx);
                let mut off = 0usize;
                let mut ok = true;
                for dd in 0..nd {
                    let p = tabs[dd][kidx[dd] * ins[dd] + iidx[dd]];
                    if p < 0 {
                        ok = false;
                        break;
                    }
                    off += p as usize * ostr[dd];
                }
                if ok {
                    dst[off] += v;
                }
            }
        }
    };
    run_tasks(&mut y, mg * os, |t, slab, col, par| {
        let (ni, gi) = (t / group, t % group);
        let xg = &xsl[(ni * c + gi * cg) * is..(ni * c + (gi + 1) * cg) * is];
        let wg = &wsl[gi * cg * mg * kn..(gi + 1) * cg * mg * kn];
        col.resize(mg * kn * is, T::zero());
        // col (mg*kn × is) = wg^T (wg is cg × mg*kn) · xg (cg × is)
        let gm = Gemm { m: mg * kn, n: is, k: cg, ars: 1, acs: mg * kn, brs: is, bcs: 1, ldc: is, acc: false, par };
        gemm_strided(&gm, wg, xg, col, T::one());
        let col: &[T] = col;
        if par && os > 0 {
            slab.par_chunks_mut(os).enumerate().for_each(|(mi, dst)| col2im(mi, dst, col));
        } else if os > 0 {
            slab.chunks_mut(os).enumerate().for_each(|(mi, dst)| col2im(mi, dst, col));
        }
        if let Some(b) = bsl {
            for (mi, row) in slab.chunks_mut(os.max(1)).enumerate() {
                let bv = b[gi * mg + mi];
                row.iter_mut().for_each(|v| *v += bv);
            }
        }
    });
    out1(T::wrap(arr(cx, &oshape, y)?, dt))
}

// ---------------------------------------------------------------------------------------------
// Pools
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PoolKind {
    Max,
    Avg,
    Lp,
}

/// Float input as f32/f64 or an 8-bit int (MaxPool) computed through f64.
fn pool_entry(cx: &Ctx, inputs: &[Option<&Value>], kind: PoolKind) -> Result<Vec<Value>> {
    let x = cx.tensor(inputs, 0)?;
    match x.dtype() {
        DType::F64 | DType::F32 | DType::F16 | DType::BF16 => {
            with_real!(cx, x.dtype(), T => pool::<T>(cx, inputs, kind, x.dtype()))
        }
        DType::U8 | DType::I8 if kind == PoolKind::Max => {
            let mut r = pool::<f64>(cx, inputs, kind, DType::F64)?;
            if let Some(Value::Tensor(Tensor::F64(a))) = r.first() {
                let t = if x.dtype() == DType::U8 {
                    Tensor::U8(a.mapv(|v| v as u8))
                } else {
                    Tensor::I8(a.mapv(|v| v as i8))
                };
                r[0] = t.into();
            }
            Ok(r)
        }
        d => Err(cx.err(format!("unsupported input type {d}"))),
    }
}

const MAX_POOL_DIMS: usize = 8;

fn pool<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], kind: PoolKind, dt: DType) -> Result<Vec<Value>> {
    let x = real_in::<T>(cx, inputs, 0)?;
    let xs = x.shape().to_vec();
    if xs.len() < 3 {
        return Err(cx.err(format!("input must have rank >= 3, got {xs:?}")));
    }
    let nd = xs.len() - 2;
    if nd > MAX_POOL_DIMS {
        return Err(cx.err(format!("pooling over {nd} spatial dims is not supported")));
    }
    let ins = xs[2..].to_vec();
    let k = cx.attr_ints("kernel_shape").ok_or_else(|| cx.err("kernel_shape is required"))?;
    if k.len() != nd || k.iter().any(|&v| v < 1) {
        return Err(cx.err(format!("kernel_shape {k:?} does not fit input {xs:?}")));
    }
    let k = to_usize(k);
    let ceil_mode = cx.attr_int("ceil_mode", 0) != 0;
    let g = geometry(cx, &ins, &k, ceil_mode)?;
    let count_pad = cx.attr_int("count_include_pad", 0) != 0;
    let p = cx.attr_int("p", 2) as f64;
    let storage_order = cx.attr_int("storage_order", 0);
    let planes = xs[0] * xs[1];
    let is: usize = ins.iter().product();
    let os: usize = g.out.iter().product();
    let mut oshape = xs[..2].to_vec();
    oshape.extend(&g.out);
    checked_numel(cx, &oshape)?;
    // Per dim and output position: valid input positions, and the window size counting pads.
    struct DimWin {
        valid: Vec<Vec<usize>>,
        with_pad: Vec<usize>,
    }
    let wins: Vec<DimWin> = (0..nd)
        .map(|i| {
            let mut valid = Vec::with_capacity(g.out[i]);
            let mut with_pad = Vec::with_capacity(g.out[i]);
            for o in 0..g.out[i] {
                let start = o as i64 * g.s[i] as i64 - g.pb[i];
                let mut v = Vec::new();
                let mut wp = 0;
                for kk in 0..k[i] {
                    let pos = start + (kk * g.d[i]) as i64;
                    if pos < ins[i] as i64 + g.pe[i] {
                        wp += 1;
                    }
                    if pos >= 0 && pos < ins[i] as i64 {
                        v.push(pos as usize);
                    }
                }
                valid.push(v);
                with_pad.push(wp);
            }
            DimWin { valid, with_pad }
        })
        .collect();
    let istr = strides_of(&ins);
    // Column-major strides for storage_order = 1.
    let mut cstr = vec![1usize; nd];
    for i in 1..nd {
        cstr[i] = cstr[i - 1] * ins[i - 1];
    }
    let xc = slice_of(&x);
    let xsl = xc.as_slice().unwrap_or(&[]);
    let mut y = vec![T::zero(); planes * os];
    // Indices only when the node reads them.
    let want_idx = kind == PoolKind::Max && cx.node.outputs().get(1).is_some_and(|o| o.is_some());
    let fast2d = nd == 2 && kind != PoolKind::Lp && !want_idx;
    let mut ind = vec![0i64; if kind == PoolKind::Max && !fast2d { planes * os } else { 0 }];
    let pexp = T::from_f64(p);
    let pinv = T::from_f64(1.0 / p);
    let plane = |pi: usize, yo: &mut [T], io: &mut [i64]| {
        let xp = &xsl[pi * is..(pi + 1) * is];
        let mut oidx = [0usize; MAX_POOL_DIMS];
        let mut cur = [0usize; MAX_POOL_DIMS];
        for of in 0..os {
            unravel(of, &g.out, &mut oidx[..nd]);
            let lists: [&[usize]; MAX_POOL_DIMS] =
                std::array::from_fn(|i| if i < nd { &wins[i].valid[oidx[i]][..] } else { &[][..] });
            let count: usize = lists[..nd].iter().map(|l| l.len()).product();
            let mut acc = match kind {
                PoolKind::Max => T::neg_inf(),
                _ => T::zero(),
            };
            let mut best = -1i64;
            if count > 0 {
                cur[..nd].iter_mut().for_each(|c| *c = 0);
                loop {
                    let mut off = 0usize;
                    for i in 0..nd {
                        off += lists[i][cur[i]] * istr[i];
                    }
                    let v = xp[off];
                    match kind {
                        PoolKind::Max => {
                            if v > acc || (best < 0 && !v.is_nan()) {
                                acc = v;
                                best = if storage_order == 1 {
                                    (0..nd).map(|i| lists[i][cur[i]] * cstr[i]).sum::<usize>() as i64
                                } else {
                                    off as i64
                                };
                            }
                        }
                        PoolKind::Avg => acc += v,
                        PoolKind::Lp => acc += v.abs().powf(pexp),
                    }
                    // Next window element.
                    let mut i = nd;
                    loop {
                        if i == 0 {
                            break;
                        }
                        i -= 1;
                        cur[i] += 1;
                        if cur[i] < lists[i].len() {
                            break;
                        }
                        cur[i] = 0;
                        if i == 0 {
                            i = usize::MAX;
                            break;
                        }
                    }
                    if i == usize::MAX {
                        break;
                    }
                }
            }
            yo[of] = match kind {
                PoolKind::Max => {
                    if best < 0 && count > 0 {
                        // Every value was NaN.
                        T::from_f64(f64::NAN)
                    } else {
                        acc
                    }
                }
                PoolKind::Avg => {
                    let div =
                        if count_pad { (0..nd).map(|i| wins[i].with_pad[oidx[i]]).product::<usize>() } else { count };
                    if div == 0 { T::from_f64(f64::NAN) } else { acc / T::from_f64(div as f64) }
                }
                PoolKind::Lp => acc.powf(pinv),
            };
            if kind == PoolKind::Max {
                io[of] = if best < 0 { -1 } else { (pi * is) as i64 + best };
            }
        }
    };
    if fast2d {
        // 2-D fast path: the same windows, without the N-d odometer or the indices.
        let (w, ow) = (ins[1], g.out[1]);
        // Row by row: each valid (window row, kernel column) pair folds a contiguous or strided
        // run of input into the output row, in the same order as a window-by-window loop.
        let (sx, dx, pl) = (g.s[1].max(1), g.d[1], g.pb[1]);
        let spans: Vec<(usize, usize, usize)> = (0..k[1])
            .map(|kx| {
                let off = (kx * dx) as i64 - pl;
                let (o0, o1) = valid_cols(off, sx, w, ow);
                let start = if o0 < o1 { (o0 as i64 * sx as i64 + off) as usize } else { 0 };
                (o0, o1, start)
            })
            .collect();
        let plane2 = |pi: usize, yo: &mut [T]| {
            let xp = &xsl[pi * is..(pi + 1) * is];
            for (oy, yrow) in yo.chunks_mut(ow.max(1)).enumerate() {
                let rows = &wins[0].valid[oy][..];
                yrow.fill(if kind == PoolKind::Max { T::neg_inf() } else { T::zero() });
                for &r in rows {
                    let xr = &xp[r * w..(r + 1) * w];
                    for &(o0, o1, start) in &spans {
                        let dst = &mut yrow[o0..o1];
                        let src = xr[start..].iter().step_by(sx);
                        if kind == PoolKind::Max {
                            for (o, &v) in dst.iter_mut().zip(src) {
                                let cur = *o;
                                *o = if v > cur { v } else { cur };
                            }
                        } else {
                            for (o, &v) in dst.iter_mut().zip(src) {
                                *o += v;
                            }
                        }
                    }
                }
                for (ox, yv) in yrow.iter_mut().enumerate() {
                    let cols = &wins[1].valid[ox][..];
                    let count = rows.len() * cols.len();
                    if kind == PoolKind::Max {
                        // -inf is also what a window of NaNs leaves: NaN when no value is a number.
                        if *yv == T::neg_inf() && count > 0 {
                            let any = rows.iter().any(|&r| cols.iter().any(|&c| !xp[r * w + c].is_nan()));
                            if !any {
                                *yv = T::from_f64(f64::NAN);
                            }
                        }
                    } else {
                        let div = if count_pad { wins[0].with_pad[oy] * wins[1].with_pad[ox] } else { count };
                        *yv = if div == 0 { T::from_f64(f64::NAN) } else { *yv / T::from_f64(div as f64) };
                    }
                }
            }
        };
        y.par_chunks_mut(os.max(1)).enumerate().for_each(|(pi, yo)| plane2(pi, yo));
        return Ok(vec![Value::Tensor(T::wrap(arr(cx, &oshape, y)?, dt))]);
    }
    if kind == PoolKind::Max {
        y.par_chunks_mut(os.max(1))
            .zip(ind.par_chunks_mut(os.max(1)))
            .enumerate()
            .for_each(|(pi, (yo, io))| plane(pi, yo, io));
    } else {
        y.par_chunks_mut(os.max(1)).enumerate().for_each(|(pi, yo)| plane(pi, yo, &mut []));
    }
    let mut outs = vec![Value::Tensor(T::wrap(arr(cx, &oshape, y)?, dt))];
    if kind == PoolKind::Max {
        outs.push(Value::Tensor(Tensor::I64(arr(cx, &oshape, ind)?)));
    }
    Ok(outs)
}

fn global_pool_entry(cx: &Ctx, inputs: &[Option<&Value>], kind: PoolKind) -> Result<Vec<Value>> {
    let x = cx.tensor(inputs, 0)?;
    with_real!(cx, x.dtype(), T => global_pool::<T>(cx, inputs, kind, x.dtype()))
}

fn global_pool<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], kind: PoolKind, dt: DType) -> Result<Vec<Value>> {
    let x = real_in::<T>(cx, inputs, 0)?;
    let xs = x.shape().to_vec();
    if xs.len() < 2 {
        return Err(cx.err(format!("input must have rank >= 2, got {xs:?}")));
    }
    let planes = xs[0] * xs[1];
    let is: usize = xs[2..].iter().product();
    let p = T::from_f64(cx.attr_int("p", 2) as f64);
    let xc = slice_of(&x);
    let xsl = xc.as_slice().unwrap_or(&[]);
    let y: Vec<T> = (0..planes)
        .into_par_iter()
        .map(|pi| {
            let v = &xsl[pi * is..(pi + 1) * is];
            match kind {
                PoolKind::Max => v.iter().fold(T::neg_inf(), |a, &b| a.maxf(b)),
                PoolKind::Avg => v.iter().copied().sum::<T>() / T::from_f64(is as f64),
                PoolKind::Lp => v.iter().map(|&b| b.abs().powf(p)).sum::<T>().powf(T::one() / p),
            }
        })
        .collect();
    let mut oshape = xs[..2].to_vec();
    oshape.extend(std::iter::repeat_n(1, xs.len() - 2));
    out1(T::wrap(arr(cx, &oshape, y)?, dt))
}

// ---------------------------------------------------------------------------------------------
// Normalisations
// ---------------------------------------------------------------------------------------------

/// Per-channel parameter vector of length `c` (a 1-D input, or one broadcastable as [C]).
fn channel_param<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], i: usize, c: usize, name: &str) -> Result<Vec<T>> {
    let a = real_in::<T>(cx, inputs, i)?;
    if a.len() == c {
        Ok(a.iter().copied().collect())
    } else if a.len() == 1 {
        Ok(vec![a.iter().copied().next().unwrap_or_default(); c])
    } else {
        Err(cx.err(format!("{name} has shape {:?}, expected [{c}]", a.shape())))
    }
}

fn batch_norm<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], dt: DType) -> Result<Vec<Value>> {
    let x = real_in::<T>(cx, inputs, 0)?;
    let xs = x.shape().to_vec();
    if xs.len() < 2 {
        // Rank-1 input: a single channel axis of length 1 is not meaningful; treat as [N].
        return Err(cx.err(format!("input must have rank >= 2, got {xs:?}")));
    }
    let eps = T::from_f64(cx.attr_float("epsilon", 1e-5) as f64);
    let momentum = T::from_f64(cx.attr_float("momentum", 0.9) as f64);
    let (n, c) = (xs[0], xs[1]);
    let inner: usize = xs[2..].iter().product();
    let training = cx.attr_int("training_mode", 0) != 0
        || (cx.opset < 7 && cx.attr_int("is_test", 0) == 0 && cx.node.outputs().len() > 1);
    let xc = slice_of(&x);
    let xsl = xc.as_slice().unwrap_or(&[]);
    // Opset < 9 with spatial = 0: parameters per activation ([C, D1, ...]).
    let per_act = {
        let s = real_in::<T>(cx, inputs, 1)?;
        s.len() == c * inner && inner > 1 && s.len() != c
    };
    let width = if per_act { c * inner } else { c };
    let param = |i: usize, name: &str| -> Result<Vec<T>> {
        let a = real_in::<T>(cx, inputs, i)?;
        if a.len() == width {
            Ok(a.iter().copied().collect())
        } else {
            Err(cx.err(format!("{name} has shape {:?}, expected {width} values", a.shape())))
        }
    };
    let (scale, bias, mut mean, mut var) = (param(1, "scale")?, param(2, "B")?, param(3, "mean")?, param(4, "var")?);
    let mut extra = Vec::new();
    if training {
        let cnt = T::from_f64((n * inner) as f64);
        let mut bm = vec![T::zero(); c];
        let mut bv = vec![T::zero(); c];
        for ci in 0..c {
            let mut s = T::zero();
            for ni in 0..n {
                s += xsl[(ni * c + ci) * inner..(ni * c + ci + 1) * inner].iter().copied().sum::<T>();
            }
            let mu = s / cnt;
            let mut q = T::zero();
            for ni in 0..n {
                q += xsl[(ni * c + ci) * inner..(ni * c + ci + 1) * inner]
                    .iter()
                    .map(|&v| (v - mu) * (v - mu))
                    .sum::<T>();
            }
            bm[ci] = mu;
            bv[ci] = q / cnt;
        }
        if !per_act {
            let one = T::one();
            let rm: Vec<T> = mean.iter().zip(&bm).map(|(&r, &b)| r * momentum + b * (one - momentum)).collect();
            let rv: Vec<T> = var.iter().zip(&bv).map(|(&r, &b)| r * momentum + b * (one - momentum)).collect();
            extra.push(T::wrap(arr(cx, &[c], rm)?, dt));
            extra.push(T::wrap(arr(cx, &[c], rv)?, dt));
            extra.push(T::wrap(arr(cx, &[c], bm.clone())?, dt));
            extra.push(T::wrap(arr(cx, &[c], bv.clone())?, dt));
            mean = bm;
            var = bv;
        }
    }
    let mut y = vec![T::zero(); xsl.len()];
    y.par_chunks_mut(inner.max(1)).enumerate().for_each(|(row, out)| {
        let ci = row % c;
        let src = &xsl[row * inner..(row + 1) * inner];
        if per_act {
            for (j, (o, &v)) in out.iter_mut().zip(src).enumerate() {
                let p = ci * inner + j;
                *o = scale[p] * (v - mean[p]) / (var[p] + eps).sqrt() + bias[p];
            }
        } else {
            let a = scale[ci] / (var[ci] + eps).sqrt();
            let b = bias[ci] - mean[ci] * a;
            for (o, &v) in out.iter_mut().zip(src) {
                *o = v * a + b;
            }
        }
    });
    let mut outs = vec![Value::Tensor(T::wrap(arr(cx, &xs, y)?, dt))];
    outs.extend(extra.into_iter().map(Value::Tensor));
    Ok(outs)
}

fn instance_norm<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], dt: DType) -> Result<Vec<Value>> {
    let x = real_in::<T>(cx, inputs, 0)?;
    let xs = x.shape().to_vec();
    if xs.len() < 3 {
        return Err(cx.err(format!("input must have rank >= 3, got {xs:?}")));
    }
    let c = xs[1];
    let scale = channel_param::<T>(cx, inputs, 1, c, "scale")?;
    let bias = channel_param::<T>(cx, inputs, 2, c, "B")?;
    let eps = T::from_f64(cx.attr_float("epsilon", 1e-5) as f64);
    let inner: usize = xs[2..].iter().product();
    let xc = slice_of(&x);
    let xsl = xc.as_slice().unwrap_or(&[]);
    let mut y = vec![T::zero(); xsl.len()];
    y.par_chunks_mut(inner.max(1)).enumerate().for_each(|(row, out)| {
        let ci = row % c;
        let src = &xsl[row * inner..(row + 1) * inner];
        let (mu, var) = mean_var(src);
        let a = scale[ci] / (var + eps).sqrt();
        for (o, &v) in out.iter_mut().zip(src) {
            *o = (v - mu) * a + bias[ci];
        }
    });
    out1(T::wrap(arr(cx, &xs, y)?, dt))
}

/// Mean and population variance (two-pass).
fn mean_var<T: Real>(v: &[T]) -> (T, T) {
    if v.is_empty() {
        return (T::zero(), T::zero());
    }
    let n = T::from_f64(v.len() as f64);
    let mu = v.iter().copied().sum::<T>() / n;
    let var = v.iter().map(|&x| (x - mu) * (x - mu)).sum::<T>() / n;
    (mu, var)
}

/// Broadcasts a parameter against the normalised trailing shape `norm`, returning it flattened
/// to `norm`'s size.
fn trailing_param<T: Real>(cx: &Ctx, a: &CowArray<'_, T, IxDyn>, norm: &[usize], name: &str) -> Result<Vec<T>> {
    let mut shape: Vec<usize> = a.shape().to_vec();
    while shape.len() > norm.len() && shape[0] == 1 {
        shape.remove(0);
    }
    let v = a.view().into_shape_with_order(IxDyn(&shape)).map_err(|e| cx.err(e.to_string()));
    let v = match v {
        Ok(v) => v,
        Err(_) => {
            let own = a.as_standard_layout().into_owned();
            return trailing_param(
                cx,
                &CowArray::from(own.into_shape_with_order(IxDyn(&shape)).map_err(|e| cx.err(e.to_string()))?),
                norm,
                name,
            );
        }
    };
    let b = v
        .broadcast(IxDyn(norm))
        .ok_or_else(|| cx.err(format!("{name} of shape {:?} does not broadcast to {norm:?}", a.shape())))?;
    Ok(b.iter().copied().collect())
}

fn norm_axis(cx: &Ctx, axis: i64, rank: usize) -> Result<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a > rank as i64 || (a == rank as i64 && rank > 0) {
        return Err(cx.err(format!("axis {axis} is out of range for rank {rank}")));
    }
    Ok(a as usize)
}

/// LayerNormalization (and RMSNormalization when `rms`).
fn layer_norm<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], dt: DType, rms: bool) -> Result<Vec<Value>> {
    let x = real_in::<T>(cx, inputs, 0)?;
    let xs = x.shape().to_vec();
    let axis = norm_axis(cx, cx.attr_int("axis", -1), xs.len())?;
    let eps = T::from_f64(cx.attr_float("epsilon", 1e-5) as f64);
    let norm = &xs[axis..];
    let inner: usize = norm.iter().product();
    let outer: usize = xs[..axis].iter().product();
    let scale = trailing_param(cx, &real_in::<T>(cx, inputs, 1)?, norm, "Scale")?;
    let bias = if rms {
        None
    } else {
        opt_real_in::<T>(cx, inputs, 2)?.map(|b| trailing_param(cx, &b, norm, "B")).transpose()?
    };
    let xc = slice_of(&x);
    let xsl = xc.as_slice().unwrap_or(&[]);
    let mut y = vec![T::zero(); xsl.len()];
    let mut means = vec![T::zero(); outer];
    let mut invs = vec![T::zero(); outer];
    y.par_chunks_mut(inner.max(1)).zip(means.par_iter_mut().zip(invs.par_iter_mut())).enumerate().for_each(
        |(row, (out, (mo, io)))| {
            let src = &xsl[row * inner..(row + 1) * inner];
            let (mu, var) = if rms {
                let n = T::from_f64(inner.max(1) as f64);
                (T::zero(), src.iter().map(|&v| v * v).sum::<T>() / n)
            } else {
                mean_var(src)
            };
            let inv = T::one() / (var + eps).sqrt();
            *mo = mu;
            *io = inv;
            for (j, (o, &v)) in out.iter_mut().zip(src).enumerate() {
                let mut r = (v - mu) * inv * scale[j];
                if let Some(b) = &bias {
                    r += b[j];
                }
                *o = r;
            }
        },
    );
    let mut sshape = xs[..axis].to_vec();
    sshape.extend(std::iter::repeat_n(1, xs.len() - axis));
    // Mean / InvStdDev use stash_type's precision (f32 by default), not the input type.
    let stash_dt = if dt == DType::F64 { DType::F64 } else { DType::F32 };
    let stash_dt = match cx.attr_int("stash_type", 1) {
        1 => stash_dt,
        _ => dt,
    };
    let mut outs = vec![Value::Tensor(T::wrap(arr(cx, &xs, y)?, dt))];
    if !rms {
        outs.push(Value::Tensor(T::wrap(arr(cx, &sshape, means)?, stash_dt)));
        outs.push(Value::Tensor(T::wrap(arr(cx, &sshape, invs)?, stash_dt)));
    }
    Ok(outs)
}

fn group_norm<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], dt: DType) -> Result<Vec<Value>> {
    let x = real_in::<T>(cx, inputs, 0)?;
    let xs = x.shape().to_vec();
    if xs.len() < 2 {
        return Err(cx.err(format!("input must have rank >= 2, got {xs:?}")));
    }
    let c = xs[1];
    let groups = usize::try_from(cx.attr_int("num_groups", 0)).unwrap_or(0);
    if groups == 0 || c % groups != 0 {
        return Err(cx.err(format!("num_groups {groups} does not divide {c} channels")));
    }
    let eps = T::from_f64(cx.attr_float("epsilon", 1e-5) as f64);
    let cpg = c / groups;
    // Opset 18 took one scale per group, opset 21 one per channel.
    let expand = |i: usize, name: &str| -> Result<Vec<T>> {
        let a = real_in::<T>(cx, inputs, i)?;
        let v: Vec<T> = a.iter().copied().collect();
        if v.len() == c {
            Ok(v)
        } else if v.len() == groups {
            Ok((0..c).map(|ci| v[ci / cpg]).collect())
        } else {
            Err(cx.err(format!("{name} has {} values, expected {c} or {groups}", v.len())))
        }
    };
    let (scale, bias) = (expand(1, "scale")?, expand(2, "bias")?);
    let inner: usize = xs[2..].iter().product();
    let xc = slice_of(&x);
    let xsl = xc.as_slice().unwrap_or(&[]);
    let mut y = vec![T::zero(); xsl.len()];
    let gsz = cpg * inner;
    y.par_chunks_mut(gsz.max(1)).enumerate().for_each(|(gi, out)| {
        let src = &xsl[gi * gsz..(gi + 1) * gsz];
        let (mu, var) = mean_var(src);
        let inv = T::one() / (var + eps).sqrt();
        let g = gi % groups;
        for (j, (o, &v)) in out.iter_mut().zip(src).enumerate() {
            let ci = g * cpg + j / inner.max(1);
            *o = (v - mu) * inv * scale[ci] + bias[ci];
        }
    });
    out1(T::wrap(arr(cx, &xs, y)?, dt))
}

fn lrn<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], dt: DType) -> Result<Vec<Value>> {
    let x = real_in::<T>(cx, inputs, 0)?;
    let xs = x.shape().to_vec();
    if xs.len() < 3 {
        return Err(cx.err(format!("input must have rank >= 3, got {xs:?}")));
    }
    let size = cx.attr_int("size", 0);
    if size < 1 {
        return Err(cx.err("size must be positive"));
    }
    let alpha = cx.attr_float("alpha", 1e-4) as f64;
    let beta = T::from_f64(cx.attr_float("beta", 0.75) as f64);
    let bias = T::from_f64(cx.attr_float("bias", 1.0) as f64);
    let (n, c) = (xs[0], xs[1]);
    let inner: usize = xs[2..].iter().product();
    let c1 = (size - 1) / 2;
    let c2 = (size - 1 + 1) / 2 + 1;
    let a = T::from_f64(alpha / size as f64);
    let xc = slice_of(&x);
    let xsl = xc.as_slice().unwrap_or(&[]);
    let mut y = vec![T::zero(); xsl.len()];
    y.par_chunks_mut(inner.max(1)).enumerate().for_each(|(row, out)| {
        let (ni, ci) = (row / c, row % c);
        let lo = (ci as i64 - c1).max(0) as usize;
        let hi = ((ci as i64 + c2) as usize).min(c);
        for (j, o) in out.iter_mut().enumerate() {
            let mut sq = T::zero();
            for cc in lo..hi {
                let v = xsl[(ni * c + cc) * inner + j];
                sq += v * v;
            }
            *o = xsl[row * inner + j] / (bias + a * sq).powf(beta);
        }
    });
    let _ = n;
    out1(T::wrap(arr(cx, &xs, y)?, dt))
}

/// Normalised axes list (sorted, unique).
fn axes_list(cx: &Ctx, axes: &[i64], rank: usize) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for &a in axes {
        let b = if a < 0 { a + rank as i64 } else { a };
        if b < 0 || b >= rank as i64 {
            return Err(cx.err(format!("axis {a} is out of range for rank {rank}")));
        }
        out.push(b as usize);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn mvn<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], dt: DType) -> Result<Vec<Value>> {
    let x = real_in::<T>(cx, inputs, 0)?;
    let xs = x.shape().to_vec();
    let axes = axes_list(cx, &cx.attr_ints("axes").unwrap_or_else(|| vec![0, 2, 3]), xs.len())?;
    let xo = x.as_standard_layout().into_owned();
    // Mean and mean of squares over `axes` (keepdims), broadcast back.
    let mut mean = xo.clone();
    let mut sq = xo.mapv(|v| v * v);
    for &a in axes.iter().rev() {
        let n = T::from_f64(xs[a] as f64);
        mean =
            mean.fold_axis(ndarray::Axis(a), T::zero(), |&s, &v| s + v).mapv(|s| s / n).insert_axis(ndarray::Axis(a));
        sq = sq.fold_axis(ndarray::Axis(a), T::zero(), |&s, &v| s + v).mapv(|s| s / n).insert_axis(ndarray::Axis(a));
    }
    let eps = T::from_f64(1e-9);
    let mb = mean.broadcast(xo.raw_dim()).ok_or_else(|| cx.err("internal broadcast"))?;
    let sb = sq.broadcast(xo.raw_dim()).ok_or_else(|| cx.err("internal broadcast"))?;
    let mut y = xo.clone();
    ndarray::Zip::from(&mut y).and(&xo).and(&mb).and(&sb).for_each(|o, &v, &m, &s| {
        let var = s - m * m;
        let var = if var < T::zero() { T::zero() } else { var };
        *o = (v - m) / (var.sqrt() + eps);
    });
    out1(T::wrap(y, dt))
}

fn lp_norm<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], dt: DType) -> Result<Vec<Value>> {
    let x = real_in::<T>(cx, inputs, 0)?;
    let xs = x.shape().to_vec();
    if xs.is_empty() {
        return Err(cx.err("input must have rank >= 1"));
    }
    let axis = axes_list(cx, &[cx.attr_int("axis", -1)], xs.len())?[0];
    let p = cx.attr_int("p", 2);
    if p != 1 && p != 2 {
        return Err(cx.err(format!("p must be 1 or 2, got {p}")));
    }
    let xo = x.as_standard_layout().into_owned();
    let norm = xo
        .fold_axis(ndarray::Axis(axis), T::zero(), |&s, &v| if p == 1 { s + v.abs() } else { s + v * v })
        .mapv(|s| if p == 1 { s } else { s.sqrt() })
        .insert_axis(ndarray::Axis(axis));
    let nb = norm.broadcast(xo.raw_dim()).ok_or_else(|| cx.err("internal broadcast"))?;
    let mut y = xo.clone();
    ndarray::Zip::from(&mut y)
        .and(&xo)
        .and(&nb)
        .for_each(|o, &v, &n| *o = if n == T::zero() { T::zero() } else { v / n });
    out1(T::wrap(y, dt))
}

// ---------------------------------------------------------------------------------------------
// Resize / Upsample
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Interp {
    Nearest,
    Linear,
    Cubic,
}

/// How a nearest-mode coordinate rounds; `Simple` is the pre-opset-11 rule (floor when
/// upsampling, ceil when downsampling).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum NearestMode {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
    Simple,
}

struct ResizeCfg {
    interp: Interp,
    coord: String,
    nearest: NearestMode,
    cubic_a: f64,
    exclude_outside: bool,
    extrapolation: f64,
    antialias: bool,
}

/// Interpolation taps of one output position along one axis: (input index, weight), or None
/// when the position extrapolates (tf_crop_and_resize outside the input).
type Taps = Option<Vec<(usize, f64)>>;

fn cubic_coeffs(r: f64, a: f64) -> Vec<f64> {
    vec![
        ((a * (r + 1.0) - 5.0 * a) * (r + 1.0) + 8.0 * a) * (r + 1.0) - 4.0 * a,
        ((a + 2.0) * r - (a + 3.0)) * r * r + 1.0,
        ((a + 2.0) * (1.0 - r) - (a + 3.0)) * (1.0 - r) * (1.0 - r) + 1.0,
        ((a * (2.0 - r) - 5.0 * a) * (2.0 - r) + 8.0 * a) * (2.0 - r) - 4.0 * a,
    ]
}

fn axis_taps(cfg: &ResizeCfg, inn: usize, out: usize, scale: f64, roi: (f64, f64)) -> Vec<Taps> {
    let in_f = inn as f64;
    let out_w = scale * in_f;
    (0..out)
        .map(|y| {
            let yf = y as f64;
            let x = match cfg.coord.as_str() {
                "align_corners" => {
                    if out_w == 1.0 {
                        0.0
                    } else {
                        yf * (in_f - 1.0) / (out_w - 1.0)
                    }
                }
                "asymmetric" => yf / scale,
                "tf_crop_and_resize" => {
                    let x = if out_w == 1.0 {
                        (roi.1 - roi.0) * (in_f - 1.0) / 2.0
                    } else {
                        yf * (roi.1 - roi.0) * (in_f - 1.0) / (out_w - 1.0)
                    };
                    let x = x + roi.0 * (in_f - 1.0);
                    if x < 0.0 || x > in_f - 1.0 {
                        return None;
                    }
                    x
                }
                "pytorch_half_pixel" => {
                    if out_w == 1.0 {
                        -0.5
                    } else {
                        (yf + 0.5) / scale - 0.5
                    }
                }
                "half_pixel_symmetric" => {
                    let adj = out as f64 / out_w;
                    let center = in_f / 2.0;
                    center * (1.0 - adj) + (yf + 0.5) / scale - 0.5
                }
                _ => (yf + 0.5) / scale - 0.5,
            };
            let xf = x.floor();
            let ratio = if x == xf { 1.0 } else { x - xf };
            let coeffs: Vec<f64> = match cfg.interp {
                Interp::Nearest => {
                    let (lo, hi) = if ratio == 1.0 {
                        (false, true)
                    } else {
                        match cfg.nearest {
                            NearestMode::RoundPreferFloor => (ratio <= 0.5, ratio > 0.5),
                            NearestMode::RoundPreferCeil => (ratio < 0.5, ratio >= 0.5),
                            NearestMode::Floor => (true, false),
                            NearestMode::Ceil => (false, true),
                            NearestMode::Simple => (scale >= 1.0, scale < 1.0),
                        }
                    };
                    vec![f64::from(u8::from(lo)), f64::from(u8::from(hi))]
                }
                Interp::Linear => {
                    if cfg.antialias {
                        let s = scale.min(1.0);
                        let start = (-1.0 / s).floor() as i64 + 1;
                        let fp = 2 - 2 * start;
                        let c: Vec<f64> = (start..start + fp)
                            .map(|i| (1.0 - ((i as f64 - ratio) * s).abs()).clamp(0.0, 1.0))
                            .collect();
                        let sum: f64 = c.iter().sum();
                        c.into_iter().map(|v| v / sum).collect()
                    } else {
                        vec![1.0 - ratio, ratio]
                    }
                }
                Interp::Cubic => {
                    if cfg.antialias {
                        let s = scale.min(1.0);
                        let a = cfg.cubic_a;
                        let i_start = (-2.0 / s).floor() as i64 + 1;
                        let i_end = 2 - i_start;
                        let c: Vec<f64> = (i_start..i_end)
                            .map(|i| {
                                let x = (s * (i as f64 - ratio)).abs();
                                let (x2, x3) = (x * x, x * x * x);
                                if x <= 1.0 {
                                    (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
                                } else if x < 2.0 {
                                    a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
                                } else {
                                    0.0
                                }
                            })
                            .collect();
                        let sum: f64 = c.iter().sum();
                        c.into_iter().map(|v| v / sum).collect()
                    } else {
                        cubic_coeffs(ratio, cfg.cubic_a)
                    }
                }
            };
            let n = coeffs.len() as i64;
            let pad = (n + 1) / 2;
            let xp = x + pad as f64;
            let pp = xp.floor();
            let frac = xp - pp;
            let off = if n % 2 == 0 {
                if frac == 0.0 { -(n / 2) } else { -(n / 2) + 1 }
            } else {
                let base = -((n - 1) / 2);
                if frac <= 0.5 { base } else { base + 1 }
            };
            let start = pp as i64 + off - pad;
            let mut c = coeffs;
            if cfg.exclude_outside {
                for (i, v) in c.iter_mut().enumerate() {
                    let idx = start + i as i64;
                    if idx < 0 || idx >= inn as i64 {
                        *v = 0.0;
                    }
                }
                let s: f64 = c.iter().sum();
                let s = if s == 0.0 { 1.0 } else { s };
                c.iter_mut().for_each(|v| *v /= s);
            }
            let taps: Vec<(usize, f64)> = c
                .into_iter()
                .enumerate()
                .filter(|(_, w)| *w != 0.0)
                .map(|(i, w)| ((start + i as i64).clamp(0, inn as i64 - 1) as usize, w))
                .collect();
            Some(taps)
        })
        .collect()
}

/// Resizes `data` (shape `shape`) along `axis` to `out` positions with the given taps.
fn resize_axis<T: Real>(data: &[T], shape: &[usize], axis: usize, taps: &[Taps], extrap: T) -> Vec<T> {
    let outer: usize = shape[..axis].iter().product();
    let inn = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let out = taps.len();
    let mut res = vec![T::zero(); outer * out * inner];
    let wt: Vec<Option<Vec<(usize, T)>>> =
        taps.iter().map(|t| t.as_ref().map(|v| v.iter().map(|&(i, w)| (i, T::from_f64(w))).collect())).collect();
    if inner == 0 || out == 0 {
        return res;
    }
    // Every position reads one input with weight 1 (nearest): a gather of rows or elements.
    let gather: Option<Vec<usize>> =
        taps.iter().map(|t| t.as_ref().and_then(|v| (v.len() == 1 && v[0].1 == 1.0).then_some(v[0].0))).collect();
    if let Some(idx) = gather {
        res.par_chunks_mut(out * inner).enumerate().for_each(|(o, dst)| {
            let src = &data[o * inn * inner..(o + 1) * inn * inner];
            if inner == 1 {
                for (d, &i) in dst.iter_mut().zip(&idx) {
                    *d = src[i];
                }
            } else {
                for (d, &i) in dst.chunks_exact_mut(inner).zip(&idx) {
                    d.copy_from_slice(&src[i * inner..(i + 1) * inner]);
                }
            }
        });
        return res;
    }
    res.par_chunks_mut(out * inner).enumerate().for_each(|(o, dst)| {
        let src = &data[o * inn * inner..(o + 1) * inn * inner];
        for (y, t) in wt.iter().enumerate() {
            let d = &mut dst[y * inner..(y + 1) * inner];
            match t {
                None => d.fill(extrap),
                Some(t) => {
                    d.fill(T::zero());
                    for &(i, w) in t {
                        let s = &src[i * inner..(i + 1) * inner];
                        for (a, &b) in d.iter_mut().zip(s) {
                            *a += w * b;
                        }
                    }
                }
            }
        }
    });
    res
}

fn resize_entry(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = cx.tensor(inputs, 0)?;
    let dt = x.dtype();
    match dt {
        DType::F32 | DType::F16 | DType::BF16 | DType::F64 => with_real!(cx, dt, T => resize::<T>(cx, inputs, dt)),
        DType::U8 | DType::I8 | DType::I16 | DType::U16 | DType::I32 | DType::I64 | DType::U32 | DType::U64 => {
            let r = resize::<f64>(cx, inputs, DType::F64)?;
            let Some(Value::Tensor(Tensor::F64(a))) = r.into_iter().next() else { return Err(cx.err("internal")) };
            let rnd = |v: f64| v.round_ties_even();
            let t = match dt {
                DType::U8 => Tensor::U8(a.mapv(|v| rnd(v).clamp(0.0, 255.0) as u8)),
                DType::I8 => Tensor::I8(a.mapv(|v| rnd(v).clamp(-128.0, 127.0) as i8)),
                DType::I16 => Tensor::I16(a.mapv(|v| rnd(v) as i16)),
                DType::U16 => Tensor::U16(a.mapv(|v| rnd(v) as u16)),
                DType::I32 => Tensor::I32(a.mapv(|v| rnd(v) as i32)),
                DType::I64 => Tensor::I64(a.mapv(|v| rnd(v) as i64)),
                DType::U32 => Tensor::U32(a.mapv(|v| rnd(v) as u32)),
                _ => Tensor::U64(a.mapv(|v| rnd(v) as u64)),
            };
            out1(t)
        }
        d => Err(cx.err(format!("unsupported input type {d}"))),
    }
}

fn float_list(cx: &Ctx, t: Option<&Tensor>) -> Result<Option<Vec<f64>>> {
    match t {
        None => Ok(None),
        Some(t) if t.is_empty() => Ok(None),
        Some(t) => Ok(Some(t.to_f64_vec().ok_or_else(|| cx.err("expected a numeric tensor"))?)),
    }
}

fn resize<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], dt: DType) -> Result<Vec<Value>> {
    let x = real_in::<T>(cx, inputs, 0)?;
    let xs = x.shape().to_vec();
    let r = xs.len();
    let is_upsample = matches!(cx.node.op, Op::Upsample);
    let old = is_upsample || cx.opset < 11;
    let mode = cx.attr_string("mode", "nearest");
    let interp = match mode.as_str() {
        "nearest" => Interp::Nearest,
        "linear" | "bilinear" | "trilinear" => Interp::Linear,
        "cubic" | "bicubic" => Interp::Cubic,
        m => return Err(cx.err(format!("unknown mode '{m}'"))),
    };
    let cfg = ResizeCfg {
        interp,
        coord: if old { "asymmetric".into() } else { cx.attr_string("coordinate_transformation_mode", "half_pixel") },
        nearest: if old {
            NearestMode::Simple
        } else {
            match cx.attr_string("nearest_mode", "round_prefer_floor").as_str() {
                "round_prefer_ceil" => NearestMode::RoundPreferCeil,
                "floor" => NearestMode::Floor,
                "ceil" => NearestMode::Ceil,
                _ => NearestMode::RoundPreferFloor,
            }
        },
        cubic_a: cx.attr_float("cubic_coeff_a", -0.75) as f64,
        exclude_outside: cx.attr_int("exclude_outside", 0) != 0,
        extrapolation: cx.attr_float("extrapolation_value", 0.0) as f64,
        antialias: cx.attr_int("antialias", 0) != 0 && interp != Interp::Nearest,
    };
    // Inputs by version: Upsample-7 (scales attr), Upsample-9 / Resize-10 (X, scales),
    // Resize-11+ (X, roi, scales, sizes).
    let (roi, scales, sizes) = if is_upsample && cx.opset < 9 {
        (None, cx.attr_floats("scales").map(|v| v.into_iter().map(f64::from).collect()), None)
    } else if old {
        (None, float_list(cx, cx.opt_tensor(inputs, 1)?)?, None)
    } else {
        let sizes = match cx.opt_tensor(inputs, 3)? {
            Some(t) if !t.is_empty() => Some(cx.ints(inputs, 3)?),
            _ => None,
        };
        (float_list(cx, cx.opt_tensor(inputs, 1)?)?, float_list(cx, cx.opt_tensor(inputs, 2)?)?, sizes)
    };
    let axes: Vec<usize> = match cx.attr_ints("axes") {
        Some(a) if !old => {
            let mut out = Vec::new();
            for v in a {
                let b = if v < 0 { v + r as i64 } else { v };
                if b < 0 || b >= r as i64 || out.contains(&(b as usize)) {
                    return Err(cx.err(format!("bad axes value {v}")));
                }
                out.push(b as usize);
            }
            out
        }
        _ => (0..r).collect(),
    };
    let na = axes.len();
    let mut scale_v = vec![1.0f64; r];
    let mut out_v = xs.clone();
    if let Some(sz) = sizes {
        if sz.len() != na {
            return Err(cx.err(format!("sizes has {} values, expected {na}", sz.len())));
        }
        if sz.iter().any(|&v| v < 0) {
            return Err(cx.err("sizes must be non-negative"));
        }
        for (i, &a) in axes.iter().enumerate() {
            scale_v[a] = sz[i] as f64 / xs[a] as f64;
            out_v[a] = sz[i] as usize;
        }
        let policy = cx.attr_string("keep_aspect_ratio_policy", "stretch");
        if policy != "stretch" {
            let it = axes.iter().map(|&a| scale_v[a]);
            let s = match policy.as_str() {
                "not_larger" => it.fold(f64::INFINITY, f64::min),
                "not_smaller" => it.fold(f64::NEG_INFINITY, f64::max),
                p => return Err(cx.err(format!("unknown keep_aspect_ratio_policy '{p}'"))),
            };
            for &a in &axes {
                scale_v[a] = s;
                out_v[a] = (s * xs[a] as f64 + 0.5) as usize;
            }
        }
    } else if let Some(sc) = scales {
        if sc.len() != na {
            return Err(cx.err(format!("scales has {} values, expected {na}", sc.len())));
        }
        for (i, &a) in axes.iter().enumerate() {
            if sc[i] <= 0.0 || !sc[i].is_finite() {
                return Err(cx.err(format!("scale {} must be positive", sc[i])));
            }
            scale_v[a] = sc[i];
            out_v[a] = (sc[i] * xs[a] as f64) as usize;
        }
    } else {
        return Err(cx.err("one of scales and sizes is required"));
    }
    checked_numel(cx, &out_v)?;
    if cfg.antialias && axes.iter().any(|&a| scale_v[a] < 1e-4) {
        return Err(cx.err("antialiased downscaling by more than 10000x is not supported"));
    }
    // roi: [starts..., ends...] over the axes (or all dims).
    let roi_of = |a: usize| -> (f64, f64) {
        match &roi {
            Some(v) if v.len() == 2 * na => {
                let i = axes.iter().position(|&x| x == a).unwrap_or(0);
                (v[i], v[na + i])
            }
            Some(v) if v.len() == 2 * r => (v[a], v[r + a]),
            _ => (0.0, 1.0),
        }
    };
    let xc = slice_of(&x);
    let mut data: Vec<T> = xc.as_slice().unwrap_or(&[]).to_vec();
    let mut shape = xs.clone();
    for &a in &axes {
        let roi_a = roi_of(a);
        let trivial_roi = cfg.coord != "tf_crop_and_resize" || (roi_a.0 == 0.0 && roi_a.1 == 1.0);
        if (scale_v[a] - 1.0).abs() < 1e-12 && out_v[a] == shape[a] && trivial_roi {
            continue;
        }
        if shape[a] == 0 {
            return Err(cx.err("cannot resize an empty axis"));
        }
        let taps = axis_taps(&cfg, shape[a], out_v[a], scale_v[a], roi_a);
        data = resize_axis(&data, &shape, a, &taps, T::from_f64(cfg.extrapolation));
        shape[a] = out_v[a];
    }
    out1(T::wrap(arr(cx, &shape, data)?, dt))
}

// ---------------------------------------------------------------------------------------------
// GridSample / AffineGrid
// ---------------------------------------------------------------------------------------------

/// Reflects `x` into [lo, hi] (GridSample's reflection padding).
fn reflect(x: f64, lo: f64, hi: f64) -> f64 {
    let rng = hi - lo;
    if rng <= 0.0 {
        return lo;
    }
    if x < lo {
        let dx = lo - x;
        let n = (dx / rng) as i64;
        let r = dx - n as f64 * rng;
        if n % 2 == 0 { lo + r } else { hi - r }
    } else if x > hi {
        let dx = x - hi;
        let n = (dx / rng) as i64;
        let r = dx - n as f64 * rng;
        if n % 2 == 0 { hi - r } else { lo + r }
    } else {
        x
    }
}

fn grid_sample<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], dt: DType) -> Result<Vec<Value>> {
    let x = real_in::<T>(cx, inputs, 0)?;
    let grid = real_in::<f64>(cx, inputs, 1)?;
    let (xs, gs) = (x.shape().to_vec(), grid.shape().to_vec());
    if xs.len() < 3 || gs.len() != xs.len() || gs[0] != xs[0] || gs[gs.len() - 1] != xs.len() - 2 {
        return Err(cx.err(format!("X {xs:?} and grid {gs:?} do not fit")));
    }
    let nd = xs.len() - 2;
    let mode = match cx.attr_string("mode", if cx.opset >= 20 { "linear" } else { "bilinear" }).as_str() {
        "bilinear" | "linear" => Interp::Linear,
        "nearest" => Interp::Nearest,
        "bicubic" | "cubic" => Interp::Cubic,
        m => return Err(cx.err(format!("unknown mode '{m}'"))),
    };
    let pad_mode = cx.attr_string("padding_mode", "zeros");
    if !matches!(pad_mode.as_str(), "zeros" | "border" | "reflection") {
        return Err(cx.err(format!("unknown padding_mode '{pad_mode}'")));
    }
    let align = cx.attr_int("align_corners", 0) != 0;
    let (n, c) = (xs[0], xs[1]);
    let dims = &xs[2..];
    let ostat = &gs[1..gs.len() - 1];
    let os: usize = ostat.iter().product();
    let is: usize = dims.iter().product();
    let istr = strides_of(dims);
    let gc = slice_of(&grid);
    let gsl = gc.as_slice().unwrap_or(&[]);
    let xc = slice_of(&x);
    let xsl = xc.as_slice().unwrap_or(&[]);
    let mut oshape = vec![n, c];
    oshape.extend(ostat);
    checked_numel(cx, &oshape)?;
    let mut y = vec![T::zero(); n * c * os];
    for ni in 0..n {
        // Taps per output point: (flat input offset, weight).
        let taps: Vec<Vec<(usize, T)>> = (0..os)
            .into_par_iter()
            .map(|o| {
                let g = &gsl[(ni * os + o) * nd..(ni * os + o + 1) * nd];
                let mut per_dim: Vec<Vec<(Option<usize>, f64)>> = Vec::with_capacity(nd);
                for i in 0..nd {
                    let len = dims[i] as f64;
                    let v = g[nd - 1 - i];
                    let mut xv = if align { (v + 1.0) / 2.0 * (len - 1.0) } else { ((v + 1.0) * len - 1.0) / 2.0 };
                    if mode == Interp::Nearest {
                        xv = xv.round_ties_even();
                    }
                    let (lo, hi) = if align { (0.0, len - 1.0) } else { (-0.5, len - 0.5) };
                    if xv < lo || xv > hi {
                        if pad_mode == "border" {
                            xv = xv.clamp(0.0, len - 1.0);
                        } else if pad_mode == "reflection" {
                            xv = reflect(xv, lo, hi);
                        }
                    }
                    let fetch = |idx: i64| -> Option<usize> {
                        let d = dims[i] as i64;
                        match pad_mode.as_str() {
                            "zeros" => (idx >= 0 && idx < d).then_some(idx as usize),
                            "border" => Some(idx.clamp(0, d - 1).max(0) as usize),
                            _ => Some((reflect(idx as f64, lo, hi) as i64).clamp(0, (d - 1).max(0)) as usize),
                        }
                    };
                    let t: Vec<(Option<usize>, f64)> = match mode {
                        Interp::Nearest => vec![(fetch(xv as i64), 1.0)],
                        Interp::Linear => {
                            let x0 = xv.floor();
                            let f = xv - x0;
                            vec![(fetch(x0 as i64), 1.0 - f), (fetch(x0 as i64 + 1), f)]
                        }
                        Interp::Cubic => {
                            let x0 = xv.floor();
                            let cf = cubic_coeffs(xv - x0, -0.75);
                            (0..4).map(|j| (fetch(x0 as i64 - 1 + j as i64), cf[j])).collect()
                        }
                    };
                    per_dim.push(t);
                }
                // Cartesian product of the per-dim taps.
                let mut out: Vec<(usize, T)> = vec![(0, T::one())];
                let mut valid: Vec<bool> = vec![true];
                for i in 0..nd {
                    let mut no = Vec::with_capacity(out.len() * per_dim[i].len());
                    let mut nv = Vec::with_capacity(out.len() * per_dim[i].len());
                    for (k, &(off, w)) in out.iter().enumerate() {
                        for &(idx, wd) in &per_dim[i] {
                            nv.push(valid[k] && idx.is_some());
                            no.push((off + idx.unwrap_or(0) * istr[i], w * T::from_f64(wd)));
                        }
                    }
                    out = no;
                    valid = nv;
                }
                out.into_iter().zip(valid).filter(|(_, v)| *v).map(|(t, _)| t).collect()
            })
            .collect();
        y[ni * c * os..(ni + 1) * c * os].par_chunks_mut(os.max(1)).enumerate().for_each(|(ci, dst)| {
            let src = &xsl[(ni * c + ci) * is..(ni * c + ci + 1) * is];
            for (d, t) in dst.iter_mut().zip(&taps) {
                let mut acc = T::zero();
                for &(off, w) in t {
                    acc += w * src[off];
                }
                *d = acc;
            }
        });
    }
    out1(T::wrap(arr(cx, &oshape, y)?, dt))
}

fn affine_grid<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], dt: DType) -> Result<Vec<Value>> {
    let theta = real_in::<T>(cx, inputs, 0)?;
    let size = cx.ints(inputs, 1)?;
    let align = cx.attr_int("align_corners", 0) != 0;
    let ts = theta.shape().to_vec();
    let nd = size.len().saturating_sub(2);
    if !(nd == 2 || nd == 3) || ts.len() != 3 || ts[1] != nd || ts[2] != nd + 1 || size.iter().any(|&v| v < 0) {
        return Err(cx.err(format!("theta {ts:?} and size {size:?} do not fit (2-D or 3-D)")));
    }
    let n = ts[0];
    let sp: Vec<usize> = size[2..].iter().map(|&v| v as usize).collect();
    let coord = |i: usize, len: usize| -> f64 {
        if align {
            if len <= 1 { -1.0 } else { -1.0 + 2.0 * i as f64 / (len - 1) as f64 }
        } else {
            -1.0 + (2 * i + 1) as f64 / len as f64
        }
    };
    let pts: usize = sp.iter().product();
    let mut oshape = vec![n];
    oshape.extend(&sp);
    oshape.push(nd);
    checked_numel(cx, &oshape)?;
    let th = slice_of(&theta);
    let tsl = th.as_slice().unwrap_or(&[]);
    let mut out = Vec::with_capacity(n * pts * nd);
    let mut idx = vec![0usize; nd];
    for ni in 0..n {
        let t = &tsl[ni * nd * (nd + 1)..(ni + 1) * nd * (nd + 1)];
        for p in 0..pts {
            unravel(p, &sp, &mut idx);
            // Homogeneous point (x, y[, z], 1) with x along the last dim.
            let mut h: Vec<f64> = (0..nd).map(|j| coord(idx[nd - 1 - j], sp[nd - 1 - j])).collect();
            h.push(1.0);
            for r in 0..nd {
                let v: f64 = (0..=nd).map(|j| t[r * (nd + 1) + j].to_f64() * h[j]).sum();
                out.push(T::from_f64(v));
            }
        }
    }
    out1(T::wrap(arr(cx, &oshape, out)?, dt))
}

// ---------------------------------------------------------------------------------------------
// RoiAlign / MaxRoiPool
// ---------------------------------------------------------------------------------------------

fn roi_align<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], dt: DType) -> Result<Vec<Value>> {
    let x = real_in::<T>(cx, inputs, 0)?;
    let rois = real_in::<f64>(cx, inputs, 1)?;
    let bidx = cx.ints(inputs, 2)?;
    let xs = x.shape().to_vec();
    let rs = rois.shape().to_vec();
    if xs.len() != 4 || rs.len() != 2 || rs[1] != 4 || rs[0] != bidx.len() {
        return Err(cx.err(format!("X {xs:?}, rois {rs:?} and batch_indices [{}] do not fit", bidx.len())));
    }
    let (n, c, h, w) = (xs[0], xs[1], xs[2], xs[3]);
    if h == 0 || w == 0 {
        return Err(cx.err("RoiAlign needs a non-empty image"));
    }
    let ph = usize::try_from(cx.attr_int("output_height", 1)).unwrap_or(0);
    let pw = usize::try_from(cx.attr_int("output_width", 1)).unwrap_or(0);
    let sr = cx.attr_int("sampling_ratio", 0);
    let scale = cx.attr_float("spatial_scale", 1.0) as f64;
    let max_mode = cx.attr_string("mode", "avg") == "max";
    let half = cx
        .attr_string("coordinate_transformation_mode", if cx.opset >= 16 { "half_pixel" } else { "output_half_pixel" })
        == "half_pixel";
    if let Some(b) = bidx.iter().find(|&&b| b < 0 || b as usize >= n) {
        return Err(cx.err(format!("batch index {b} is out of range")));
    }
    let rsl = slice_of(&rois);
    let rsl = rsl.as_slice().unwrap_or(&[]);
    let xc = slice_of(&x);
    let xsl = xc.as_slice().unwrap_or(&[]);
    let nr = rs[0];
    let oshape = [nr, c, ph, pw];
    checked_numel(cx, &oshape)?;
    let mut y = vec![T::zero(); nr * c * ph * pw];
    y.par_chunks_mut((c * ph * pw).max(1)).enumerate().for_each(|(ri, out)| {
        let r = &rsl[ri * 4..ri * 4 + 4];
        let off = if half { 0.5 } else { 0.0 };
        let (sw, sh, ew, eh) = (r[0] * scale - off, r[1] * scale - off, r[2] * scale - off, r[3] * scale - off);
        let (mut rw, mut rh) = (ew - sw, eh - sh);
        if !half {
            rw = rw.max(1.0);
            rh = rh.max(1.0);
        }
        let (bh, bw) = (rh / ph as f64, rw / pw as f64);
        // Sampling grid per bin (capped so absurd boxes cannot exhaust memory).
        let gh = (if sr > 0 { sr as usize } else { (rh / ph as f64).ceil().max(0.0) as usize }).min(256);
        let gw = (if sr > 0 { sr as usize } else { (rw / pw as f64).ceil().max(0.0) as usize }).min(256);
        let count = (gh * gw).max(1) as f64;
        // Precomputed bilinear taps per (ph, pw, iy, ix).
        let mut pre: Vec<[(usize, f64); 4]> = Vec::with_capacity(ph * pw * gh * gw);
        for p in 0..ph {
            for q in 0..pw {
                for iy in 0..gh {
                    let yy = sh + p as f64 * bh + (iy as f64 + 0.5) * bh / gh as f64;
                    for ix in 0..gw {
                        let xx = sw + q as f64 * bw + (ix as f64 + 0.5) * bw / gw as f64;
                        if yy < -1.0 || yy > h as f64 || xx < -1.0 || xx > w as f64 || h == 0 || w == 0 {
                            pre.push([(0, 0.0); 4]);
                            continue;
                        }
                        let (mut y0, mut x0) = (yy.max(0.0), xx.max(0.0));
                        let (mut yl, mut xl) = (y0 as usize, x0 as usize);
                        let yh = if yl >= h - 1 {
                            yl = h - 1;
                            y0 = yl as f64;
                            yl
                        } else {
                            yl + 1
                        };
                        let xh = if xl >= w - 1 {
                            xl = w - 1;
                            x0 = xl as f64;
                            xl
                        } else {
                            xl + 1
                        };
                        let (ly, lx) = (y0 - yl as f64, x0 - xl as f64);
                        let (hy, hx) = (1.0 - ly, 1.0 - lx);
                        pre.push([
                            (yl * w + xl, hy * hx),
                            (yl * w + xh, hy * lx),
                            (yh * w + xl, ly * hx),
                            (yh * w + xh, ly * lx),
                        ]);
                    }
                }
            }
        }
        let b = bidx[ri] as usize;
        for ci in 0..c {
            let plane = &xsl[(b * c + ci) * h * w..(b * c + ci + 1) * h * w];
            for p in 0..ph * pw {
                let samples = &pre[p * gh * gw..(p + 1) * gh * gw];
                let v = if max_mode {
                    let mut best: Option<f64> = None;
                    for s in samples {
                        let m = s.iter().map(|&(i, wt)| wt * plane[i].to_f64()).fold(f64::NEG_INFINITY, f64::max);
                        best = Some(best.map_or(m, |b: f64| b.max(m)));
                    }
                    best.unwrap_or(0.0)
                } else {
                    samples.iter().map(|s| s.iter().map(|&(i, wt)| wt * plane[i].to_f64()).sum::<f64>()).sum::<f64>()
                        / count
                };
                out[ci * ph * pw + p] = T::from_f64(v);
            }
        }
    });
    out1(T::wrap(arr(cx, &oshape, y)?, dt))
}

fn max_roi_pool<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], dt: DType) -> Result<Vec<Value>> {
    let x = real_in::<T>(cx, inputs, 0)?;
    let rois = real_in::<f64>(cx, inputs, 1)?;
    let xs = x.shape().to_vec();
    let rs = rois.shape().to_vec();
    if xs.len() != 4 || rs.len() != 2 || rs[1] != 5 {
        return Err(cx.err(format!("X {xs:?} and rois {rs:?} do not fit")));
    }
    let ps = cx.attr_ints("pooled_shape").ok_or_else(|| cx.err("pooled_shape is required"))?;
    if ps.len() != 2 || ps.iter().any(|&v| v < 1) {
        return Err(cx.err(format!("bad pooled_shape {ps:?}")));
    }
    let (ph, pw) = (ps[0] as usize, ps[1] as usize);
    let scale = cx.attr_float("spatial_scale", 1.0) as f64;
    let (n, c, h, w) = (xs[0], xs[1], xs[2], xs[3]);
    let rsl = slice_of(&rois);
    let rsl = rsl.as_slice().unwrap_or(&[]);
    let xc = slice_of(&x);
    let xsl = xc.as_slice().unwrap_or(&[]);
    let nr = rs[0];
    let mut y = vec![T::zero(); nr * c * ph * pw];
    for ri in 0..nr {
        let r = &rsl[ri * 5..ri * 5 + 5];
        let b = r[0] as i64;
        if b < 0 || b as usize >= n {
            return Err(cx.err(format!("roi batch index {b} is out of range")));
        }
        let (sw, sh) = ((r[1] * scale).round() as i64, (r[2] * scale).round() as i64);
        let (ew, eh) = ((r[3] * scale).round() as i64, (r[4] * scale).round() as i64);
        let rh = (eh - sh + 1).max(1) as f64;
        let rw = (ew - sw + 1).max(1) as f64;
        let (bh, bw) = (rh / ph as f64, rw / pw as f64);
        for ci in 0..c {
            let plane = &xsl[(b as usize * c + ci) * h * w..(b as usize * c + ci + 1) * h * w];
            for p in 0..ph {
                for q in 0..pw {
                    let hs = ((p as f64 * bh).floor() as i64 + sh).clamp(0, h as i64) as usize;
                    let he = (((p + 1) as f64 * bh).ceil() as i64 + sh).clamp(0, h as i64) as usize;
                    let ws = ((q as f64 * bw).floor() as i64 + sw).clamp(0, w as i64) as usize;
                    let we = (((q + 1) as f64 * bw).ceil() as i64 + sw).clamp(0, w as i64) as usize;
                    let mut m = T::zero();
                    if he > hs && we > ws {
                        m = T::neg_inf();
                        for yy in hs..he {
                            for xx in ws..we {
                                let v = plane[yy * w + xx];
                                if v > m {
                                    m = v;
                                }
                            }
                        }
                    }
                    y[((ri * c + ci) * ph + p) * pw + q] = m;
                }
            }
        }
    }
    out1(T::wrap(arr(cx, &[nr, c, ph, pw], y)?, dt))
}

// ---------------------------------------------------------------------------------------------
// DeformConv (2-D)
// ---------------------------------------------------------------------------------------------

fn deform_conv<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], dt: DType) -> Result<Vec<Value>> {
    let x = real_in::<T>(cx, inputs, 0)?;
    let w = real_in::<T>(cx, inputs, 1)?;
    let offset = real_in::<T>(cx, inputs, 2)?;
    let b = opt_real_in::<T>(cx, inputs, 3)?;
    let mask = opt_real_in::<T>(cx, inputs, 4)?;
    let group = usize::try_from(cx.attr_int("group", 1)).unwrap_or(0);
    let og = usize::try_from(cx.attr_int("offset_group", 1)).unwrap_or(0);
    let (n, c, ins, m, k) = conv_shapes(cx, x.shape(), w.shape(), group)?;
    if ins.len() != 2 {
        return Err(cx.err("only 2-D DeformConv is supported"));
    }
    if og == 0 || c % og != 0 {
        return Err(cx.err(format!("offset_group {og} does not divide {c} channels")));
    }
    let g = geometry(cx, &ins, &k, false)?;
    let (oh, ow) = (g.out[0], g.out[1]);
    let kn = k[0] * k[1];
    let os = oh * ow;
    if offset.shape() != [n, og * kn * 2, oh, ow] {
        return Err(cx.err(format!("offset has shape {:?}, expected {:?}", offset.shape(), [n, og * kn * 2, oh, ow])));
    }
    if let Some(mk) = &mask
        && mk.shape() != [n, og * kn, oh, ow]
    {
        return Err(cx.err(format!("mask has shape {:?}, expected {:?}", mk.shape(), [n, og * kn, oh, ow])));
    }
    if b.as_ref().is_some_and(|b| b.len() != m) {
        return Err(cx.err(format!("bias must have {m} values")));
    }
    let (h, wd) = (ins[0], ins[1]);
    let (xc, wc, oc) = (slice_of(&x), slice_of(&w), slice_of(&offset));
    let (xsl, wsl, osl) = (xc.as_slice().unwrap_or(&[]), wc.as_slice().unwrap_or(&[]), oc.as_slice().unwrap_or(&[]));
    let mc = mask.as_ref().map(slice_of);
    let msl = mc.as_ref().and_then(|m| m.as_slice());
    let bc = b.as_ref().map(slice_of);
    let bsl = bc.as_ref().and_then(|b| b.as_slice());
    let cpo = c / og;
    let (cg, mg) = (c / group, m / group);
    let mut y = vec![T::zero(); n * m * os];
    let mut col = vec![T::zero(); c * kn * os];
    for ni in 0..n {
        col.par_chunks_mut(os.max(1)).enumerate().for_each(|(row, dst)| {
            let (ci, kf) = (row / kn, row % kn);
            let (ki, kj) = (kf / k[1], kf % k[1]);
            let ogi = ci / cpo;
            let plane = &xsl[(ni * c + ci) * h * wd..(ni * c + ci + 1) * h * wd];
            let obase = ((ni * og + ogi) * kn + kf) * 2;
            for oi in 0..oh {
                for oj in 0..ow {
                    let p = oi * ow + oj;
                    let dy = osl[(obase * oh + oi) * ow + oj].to_f64();
                    let dx = osl[((obase + 1) * oh + oi) * ow + oj].to_f64();
                    let py = (oi * g.s[0]) as f64 - g.pb[0] as f64 + (ki * g.d[0]) as f64 + dy;
                    let px = (oj * g.s[1]) as f64 - g.pb[1] as f64 + (kj * g.d[1]) as f64 + dx;
                    let (y0, x0) = (py.floor(), px.floor());
                    let (fy, fx) = (py - y0, px - x0);
                    let mut v = 0.0;
                    for (yy, wy) in [(y0 as i64, 1.0 - fy), (y0 as i64 + 1, fy)] {
                        for (xx, wx) in [(x0 as i64, 1.0 - fx), (x0 as i64 + 1, fx)] {
                            if yy >= 0 && yy < h as i64 && xx >= 0 && xx < wd as i64 {
                                v += wy * wx * plane[yy as usize * wd + xx as usize].to_f64();
                            }
                        }
                    }
                    if let Some(ms) = msl {
                        v *= ms[(((ni * og + ogi) * kn + kf) * oh + oi) * ow + oj].to_f64();
                    }
                    dst[p] = T::from_f64(v);
                }
            }
        });
        for gi in 0..group {
            let ys = &mut y[(ni * m + gi * mg) * os..(ni * m + (gi + 1) * mg) * os];
            let ws = &wsl[gi * mg * cg * kn..(gi + 1) * mg * cg * kn];
            let cs = &col[gi * cg * kn * os..(gi + 1) * cg * kn * os];
            gemm_strided(&Gemm::rm(mg, os, cg * kn), ws, cs, ys, T::one());
            if let Some(bv) = bsl {
                for (mi, row) in ys.chunks_mut(os.max(1)).enumerate() {
                    row.iter_mut().for_each(|v| *v += bv[gi * mg + mi]);
                }
            }
        }
    }
    out1(T::wrap(arr(cx, &[n, m, oh, ow], y)?, dt))
}

// ---------------------------------------------------------------------------------------------
// Attention / RotaryEmbedding (opset 23)
// ---------------------------------------------------------------------------------------------

/// Views a 3-D [B, S, H*D] input as 4-D [B, H, S, D] (contiguous copy), or passes 4-D through.
fn heads<T: Real>(cx: &Ctx, a: &CowArray<'_, T, IxDyn>, nh: Option<usize>, name: &str) -> Result<ArrayD<T>> {
    match a.ndim() {
        4 => Ok(a.as_standard_layout().into_owned()),
        3 => {
            let s = a.shape();
            let h = nh
                .filter(|&h| h > 0 && s[2].is_multiple_of(h))
                .ok_or_else(|| cx.err(format!("{name}: num_heads must divide {}", s[2])))?;
            let v =
                a.view().into_shape_with_order(IxDyn(&[s[0], s[1], h, s[2] / h])).map_err(|e| cx.err(e.to_string()));
            let v = match v {
                Ok(v) => v.permuted_axes(IxDyn(&[0, 2, 1, 3])).as_standard_layout().into_owned(),
                Err(_) => {
                    let own = a.as_standard_layout().into_owned();
                    own.into_shape_with_order(IxDyn(&[s[0], s[1], h, s[2] / h]))
                        .map_err(|e| cx.err(e.to_string()))?
                        .permuted_axes(IxDyn(&[0, 2, 1, 3]))
                        .as_standard_layout()
                        .into_owned()
                }
            };
            Ok(v)
        }
        _ => Err(cx.err(format!("{name} must be 3-D or 4-D, got {:?}", a.shape()))),
    }
}

fn concat_seq<T: Real>(
    cx: &Ctx,
    past: Option<CowArray<'_, T, IxDyn>>,
    cur: ArrayD<T>,
    name: &str,
) -> Result<ArrayD<T>> {
    match past {
        None => Ok(cur),
        Some(p) => {
            let (ps, cs) = (p.shape(), cur.shape());
            if ps.len() != 4 || ps[0] != cs[0] || ps[1] != cs[1] || ps[3] != cs[3] {
                return Err(cx.err(format!("{name} {ps:?} does not fit {cs:?}")));
            }
            ndarray::concatenate(ndarray::Axis(2), &[p.view(), cur.view()])
                .map(|a| a.as_standard_layout().into_owned())
                .map_err(|e| cx.err(e.to_string()))
        }
    }
}

fn attention<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], dt: DType) -> Result<Vec<Value>> {
    let q_in = real_in::<T>(cx, inputs, 0)?;
    let k_in = real_in::<T>(cx, inputs, 1)?;
    let v_in = real_in::<T>(cx, inputs, 2)?;
    let three_d = q_in.ndim() == 3;
    let qh = usize::try_from(cx.attr_int("q_num_heads", 0)).ok().filter(|&v| v > 0);
    let kvh = usize::try_from(cx.attr_int("kv_num_heads", 0)).ok().filter(|&v| v > 0);
    let q = heads(cx, &q_in, qh, "Q")?;
    let k = heads(cx, &k_in, kvh, "K")?;
    let v = heads(cx, &v_in, kvh, "V")?;
    let k = concat_seq(cx, opt_real_in::<T>(cx, inputs, 4)?, k, "past_key")?;
    let v = concat_seq(cx, opt_real_in::<T>(cx, inputs, 5)?, v, "past_value")?;
    let past_len = cx.opt_tensor(inputs, 4)?.map_or(0, |t| t.shape().get(2).copied().unwrap_or(0));
    let (qs, ks, vs) = (q.shape().to_vec(), k.shape().to_vec(), v.shape().to_vec());
    let (b, hq, sq, d) = (qs[0], qs[1], qs[2], qs[3]);
    let (hk, skv, dv) = (ks[1], ks[2], vs[3]);
    if ks[0] != b || vs[0] != b || ks[3] != d || vs[1] != hk || vs[2] != skv || hk == 0 || hq % hk != 0 {
        return Err(cx.err(format!("Q {qs:?}, K {ks:?}, V {vs:?} do not fit")));
    }
    let scale = match cx.node.attrs.get_float("scale") {
        Some(s) => s as f64,
        None => 1.0 / (d as f64).sqrt(),
    };
    let softcap = cx.attr_float("softcap", 0.0) as f64;
    let causal = cx.attr_int("is_causal", 0) != 0;
    let mode = cx.attr_int("qk_matmul_output_mode", 0);
    // Additive bias [B or 1, H or 1, Sq, Skv], from the mask (bool: false = -inf), causality and
    // nonpad_kv_seqlen.
    let mask: Option<ArrayD<f64>> = match cx.opt_tensor(inputs, 3)? {
        None => None,
        Some(Tensor::Bool(m)) => Some(m.mapv(|x| if x { 0.0 } else { f64::NEG_INFINITY })),
        Some(t) => {
            let v = t.to_f64_vec().ok_or_else(|| cx.err("attn_mask must be numeric or bool"))?;
            Some(ArrayD::from_shape_vec(IxDyn(&t.shape()), v).map_err(|e| cx.err(e.to_string()))?)
        }
    };
    let mask = match mask {
        None => None,
        Some(m) => {
            let ms = m.shape().to_vec();
            if ms.is_empty() || ms.len() > 4 || ms[ms.len() - 1] > skv {
                return Err(cx.err(format!("attn_mask {ms:?} does not fit")));
            }
            // Pad the last axis to Skv with -inf.
            let mut full = ms.clone();
            *full.last_mut().unwrap_or(&mut 0) = skv;
            let mut p = ArrayD::from_elem(IxDyn(&full), f64::NEG_INFINITY);
            p.slice_each_axis_mut(|ax| {
                if ax.axis.index() == full.len() - 1 {
                    ndarray::Slice::from(0..ms[ms.len() - 1])
                } else {
                    ndarray::Slice::from(..)
                }
            })
            .assign(&m);
            let mut s4 = vec![1usize; 4 - full.len()];
            s4.extend(&full);
            let p = p.into_shape_with_order(IxDyn(&s4)).map_err(|e| cx.err(e.to_string()))?;
            let target = [b, hq, sq, skv];
            let pb = p
                .broadcast(IxDyn(&target))
                .ok_or_else(|| cx.err(format!("attn_mask {ms:?} does not broadcast to {target:?}")))?;
            Some(pb.to_owned())
        }
    };
    let nonpad = match cx.opt_tensor(inputs, 6)? {
        Some(_) => Some(cx.ints(inputs, 6)?),
        None => None,
    };
    let (qsl, ksl, vsl) = (q.as_slice().unwrap_or(&[]), k.as_slice().unwrap_or(&[]), v.as_slice().unwrap_or(&[]));
    if qsl.len() != b * hq * sq * d || ksl.len() != b * hk * skv * d || vsl.len() != b * hk * skv * dv {
        return Err(cx.err("internal: attention operands are not contiguous"));
    }
    let mut y = vec![T::zero(); b * hq * sq * dv];
    let mut qk_out = vec![T::zero(); b * hq * sq * skv];
    let rep = hq / hk;
    let sqrt_scale = T::from_f64(scale.sqrt());
    y.par_chunks_mut((sq * dv).max(1)).zip(qk_out.par_chunks_mut((sq * skv).max(1))).enumerate().for_each(
        |(bh, (yo, qo))| {
            let (bi, hi) = (bh / hq, bh % hq);
            let kh = hi / rep;
            let qm: Vec<T> = qsl[bh * sq * d..(bh + 1) * sq * d].iter().map(|&x| x * sqrt_scale).collect();
            let km: Vec<T> =
                ksl[(bi * hk + kh) * skv * d..(bi * hk + kh + 1) * skv * d].iter().map(|&x| x * sqrt_scale).collect();
            let vm = &vsl[(bi * hk + kh) * skv * dv..(bi * hk + kh + 1) * skv * dv];
            let mut s = vec![T::zero(); sq * skv];
            // s = q · kᵀ
            let g = Gemm { m: sq, n: skv, k: d, ars: d, acs: 1, brs: 1, bcs: d, ldc: skv, acc: false, par: false };
            gemm_strided(&g, &qm, &km, &mut s, T::one());
            let mut sf: Vec<f64> = s.iter().map(|x| x.to_f64()).collect();
            if softcap > 0.0 {
                sf.iter_mut().for_each(|x| *x = (*x / softcap).tanh() * softcap);
            }
            let raw = sf.clone();
            for i in 0..sq {
                for j in 0..skv {
                    let mut add = 0.0;
                    if let Some(m) = &mask {
                        add += m[[bi, hi, i, j]];
                    }
                    if causal && j > i + past_len {
                        add += f64::NEG_INFINITY;
                    }
                    if let Some(np) = &nonpad
                        && (j as i64) >= np.get(bi).copied().unwrap_or(skv as i64)
                    {
                        add += f64::NEG_INFINITY;
                    }
                    sf[i * skv + j] += add;
                }
            }
            let biased = sf.clone();
            for row in sf.chunks_mut(skv.max(1)) {
                let mx = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                row.iter_mut().for_each(|x| *x = (*x - mx).exp());
                let sum: f64 = row.iter().sum();
                row.iter_mut().for_each(|x| *x /= sum);
            }
            let qk_src = match mode {
                2 => &biased,
                3 => &sf,
                _ => &raw,
            };
            for (o, &x) in qo.iter_mut().zip(qk_src) {
                *o = T::from_f64(x);
            }
            let p: Vec<T> = sf.iter().map(|&x| T::from_f64(x)).collect();
            gemm_strided(&Gemm::rm(sq, dv, skv).par(false), &p, vm, yo, T::one());
        },
    );
    let y = arr(cx, &[b, hq, sq, dv], y)?;
    let y = if three_d {
        y.permuted_axes(IxDyn(&[0, 2, 1, 3]))
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order(IxDyn(&[b, sq, hq * dv]))
            .map_err(|e| cx.err(e.to_string()))?
    } else {
        y
    };
    Ok(vec![
        Value::Tensor(T::wrap(y, dt)),
        Value::Tensor(T::wrap(k, dt)),
        Value::Tensor(T::wrap(v, dt)),
        Value::Tensor(T::wrap(arr(cx, &[b, hq, sq, skv], qk_out)?, dt)),
    ])
}

fn rotary<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], dt: DType) -> Result<Vec<Value>> {
    let x_in = real_in::<T>(cx, inputs, 0)?;
    let cos = real_in::<T>(cx, inputs, 1)?;
    let sin = real_in::<T>(cx, inputs, 2)?;
    let pos = match cx.opt_tensor(inputs, 3)? {
        Some(_) => Some(cx.ints(inputs, 3)?),
        None => None,
    };
    let interleaved = cx.attr_int("interleaved", 0) != 0;
    let xs = x_in.shape().to_vec();
    // Work in [B, S, H, D].
    let x: ArrayD<T> = match xs.len() {
        4 => x_in.view().permuted_axes(IxDyn(&[0, 2, 1, 3])).as_standard_layout().into_owned(),
        3 => {
            let h = usize::try_from(cx.attr_int("num_heads", 0)).ok().filter(|&h| h > 0 && xs[2] % h == 0);
            let h = h.ok_or_else(|| cx.err("num_heads must divide the hidden size of a 3-D input"))?;
            x_in.as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(&[xs[0], xs[1], h, xs[2] / h]))
                .map_err(|e| cx.err(e.to_string()))?
        }
        _ => return Err(cx.err(format!("input must be 3-D or 4-D, got {xs:?}"))),
    };
    let s4 = x.shape().to_vec();
    let (b, s, h, d) = (s4[0], s4[1], s4[2], s4[3]);
    let rd = match cx.attr_int("rotary_embedding_dim", 0) {
        0 => d,
        v if v > 0 && (v as usize) <= d && v % 2 == 0 => v as usize,
        v => return Err(cx.err(format!("bad rotary_embedding_dim {v}"))),
    };
    let half = rd / 2;
    let (cc, sc) = (slice_of(&cos), slice_of(&sin));
    let (csl, ssl) = (cc.as_slice().unwrap_or(&[]), sc.as_slice().unwrap_or(&[]));
    if cos.shape() != sin.shape() || cos.shape().last() != Some(&half) {
        return Err(cx.err(format!("cos/sin caches {:?} / {:?} must end in {half}", cos.shape(), sin.shape())));
    }
    // Row of the caches for (batch, position).
    let row = |bi: usize, si: usize| -> Option<usize> {
        match &pos {
            Some(p) => {
                let v = *p.get(bi * s + si).or_else(|| p.get(si))?;
                (v >= 0 && (v as usize) < cos.shape()[0] && cos.ndim() == 2).then_some(v as usize)
            }
            None => (cos.ndim() == 3 && cos.shape()[0] == b && cos.shape()[1] == s).then_some(bi * s + si),
        }
    };
    if let Some(p) = &pos
        && p.len() != b * s
        && p.len() != s
    {
        return Err(cx.err("position_ids must be [batch, seq]"));
    }
    let mut out = x.clone();
    let xsl = x.as_slice().unwrap_or(&[]);
    let Some(osl) = out.as_slice_mut() else { return Err(cx.err("internal layout")) };
    for bi in 0..b {
        for si in 0..s {
            let r = row(bi, si).ok_or_else(|| cx.err("position ids or caches out of range"))?;
            let (cr, sr) = (&csl[r * half..(r + 1) * half], &ssl[r * half..(r + 1) * half]);
            for hi in 0..h {
                let base = ((bi * s + si) * h + hi) * d;
                for i in 0..half {
                    let (i1, i2) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
                    let (x1, x2) = (xsl[base + i1], xsl[base + i2]);
                    osl[base + i1] = cr[i] * x1 - sr[i] * x2;
                    osl[base + i2] = sr[i] * x1 + cr[i] * x2;
                }
            }
        }
    }
    let y = if xs.len() == 4 {
        out.permuted_axes(IxDyn(&[0, 2, 1, 3])).as_standard_layout().into_owned()
    } else {
        out.into_shape_with_order(IxDyn(&xs)).map_err(|e| cx.err(e.to_string()))?
    };
    out1(T::wrap(y, dt))
}

// ---------------------------------------------------------------------------------------------
// CausalConvWithState: depthwise causal 1-D conv with a carried state
// ---------------------------------------------------------------------------------------------

fn causal_conv_with_state<T: Real>(cx: &Ctx, inputs: &[Option<&Value>], dt: DType) -> Result<Vec<Value>> {
    let x = real_in::<T>(cx, inputs, 0)?;
    let w = real_in::<T>(cx, inputs, 1)?;
    let b = opt_real_in::<T>(cx, inputs, 2)?;
    let past = opt_real_in::<T>(cx, inputs, 3)?;
    let act = cx.attr_string("activation", "none");
    if !matches!(act.as_str(), "none" | "silu" | "swish") {
        return Err(cx.err(format!("unknown activation '{act}'")));
    }
    let (xs, ws) = (x.shape().to_vec(), w.shape().to_vec());
    if xs.len() != 3 || ws.len() != 3 || ws[0] != xs[1] || ws[1] != 1 || ws[2] == 0 {
        return Err(cx.err(format!("input {xs:?} and weight {ws:?} must be [B, C, L] and [C, 1, k]")));
    }
    let (bn, c, l, k) = (xs[0], xs[1], xs[2], ws[2]);
    if b.as_ref().is_some_and(|b| b.len() != c) {
        return Err(cx.err(format!("bias must have {c} values")));
    }
    if let Some(p) = &past
        && p.shape() != [bn, c, k - 1]
    {
        return Err(cx.err(format!("past_state has shape {:?}, expected {:?}", p.shape(), [bn, c, k - 1])));
    }
    let (xc, wc) = (slice_of(&x), slice_of(&w));
    let (xsl, wsl) = (xc.as_slice().unwrap_or(&[]), wc.as_slice().unwrap_or(&[]));
    let pc = past.as_ref().map(slice_of);
    let psl = pc.as_ref().and_then(|p| p.as_slice());
    let bc = b.as_ref().map(slice_of);
    let bsl = bc.as_ref().and_then(|b| b.as_slice());
    let plen = k - 1 + l;
    let mut y = vec![T::zero(); bn * c * l];
    let mut present = vec![T::zero(); bn * c * (k - 1)];
    for row in 0..bn * c {
        let ci = row % c;
        let mut padded = vec![T::zero(); plen];
        if let Some(p) = psl {
            padded[..k - 1].copy_from_slice(&p[row * (k - 1)..(row + 1) * (k - 1)]);
        }
        padded[k - 1..].copy_from_slice(&xsl[row * l..(row + 1) * l]);
        let wr = &wsl[ci * k..(ci + 1) * k];
        for t in 0..l {
            let mut acc = bsl.map_or(T::zero(), |b| b[ci]);
            for j in 0..k {
                acc += wr[j] * padded[t + j];
            }
            if act != "none" {
                let v = acc.to_f64();
                acc = T::from_f64(v / (1.0 + (-v).exp()));
            }
            y[row * l + t] = acc;
        }
        present[row * (k - 1)..(row + 1) * (k - 1)].copy_from_slice(&padded[plen - (k - 1)..]);
    }
    Ok(vec![
        Value::Tensor(T::wrap(arr(cx, &xs, y)?, dt)),
        Value::Tensor(T::wrap(arr(cx, &[bn, c, k - 1], present)?, dt)),
    ])
}

#[cfg(test)]
mod tests {
    use crate::{Evaluator, Tensor, Value};
    use ndarray::{ArrayD, IxDyn};
    use optc_ir::builder::{GraphBuilder, Rng};
    use optc_ir::{Attribute, DType, Model, Op};
    use std::collections::HashMap;

    /// Runs one node on `inputs` (all graph inputs) and returns its outputs.
    fn run_op(op: Op, inputs: Vec<ArrayD<f32>>, attrs: Vec<Attribute>, n_out: usize, opset: i64) -> Vec<Tensor> {
        let mut b = GraphBuilder::new("t");
        let mut ids = Vec::new();
        for (i, a) in inputs.iter().enumerate() {
            let dims = a.shape().iter().map(|&d| optc_ir::Dim::known(d as i64)).collect();
            ids.push(Some(b.input(&format!("in{i}"), DType::F32, dims).unwrap()));
        }
        let outs = b.op_n(op, &ids, attrs, n_out).unwrap();
        for (i, o) in outs.into_iter().enumerate() {
            b.output(o, &format!("out{i}"), None).unwrap();
        }
        let model = Model::new(b.finish(), opset);
        let ev = Evaluator::new(&model).unwrap();
        let feed: HashMap<String, Value> =
            inputs.into_iter().enumerate().map(|(i, a)| (format!("in{i}"), Value::Tensor(Tensor::F32(a)))).collect();
        ev.run(&feed).unwrap().into_iter().map(|(_, v)| v.into_tensor().unwrap()).collect()
    }

    fn rand(rng: &mut Rng, shape: &[usize]) -> ArrayD<f32> {
        let n = shape.iter().product();
        ArrayD::from_shape_vec(IxDyn(shape), rng.vec(n, 1.0)).unwrap()
    }

    /// Direct convolution with explicit begin pads; returns y of shape [N, M, out].
    #[allow(clippy::too_many_arguments)]
    fn naive_conv(
        x: &ArrayD<f32>,
        w: &ArrayD<f32>,
        group: usize,
        s: &[usize],
        d: &[usize],
        pb: &[i64],
        out: &[usize],
    ) -> ArrayD<f32> {
        let (n, c, m) = (x.shape()[0], x.shape()[1], w.shape()[0]);
        let (cg, mg) = (c / group, m / group);
        let k = &w.shape()[2..];
        let nd = k.len();
        let mut shape = vec![n, m];
        shape.extend(out);
        ArrayD::from_shape_fn(IxDyn(&shape), |idx| {
            let (ni, mi) = (idx[0], idx[1]);
            let g = mi / mg;
            let mut acc = 0.0;
            for ci in 0..cg {
                let kn: usize = k.iter().product();
                for kf in 0..kn {
                    let mut kidx = vec![0; nd];
                    let mut f = kf;
                    for i in (0..nd).rev() {
                        kidx[i] = f % k[i];
                        f /= k[i];
                    }
                    let mut xi = vec![ni, g * cg + ci];
                    let mut ok = true;
                    for i in 0..nd {
                        let p = (idx[2 + i] * s[i]) as i64 - pb[i] + (kidx[i] * d[i]) as i64;
                        if p < 0 || p >= x.shape()[2 + i] as i64 {
                            ok = false;
                        }
                        xi.push(p.max(0) as usize);
                    }
                    if ok {
                        let mut wi = vec![mi, ci];
                        wi.extend(&kidx);
                        acc += x[IxDyn(&xi)] * w[IxDyn(&wi)];
                    }
                }
            }
            acc
        })
    }

    fn assert_close(a: &ArrayD<f32>, b: &ArrayD<f32>, what: &str) {
        assert_eq!(a.shape(), b.shape(), "{what}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{what}: {x} vs {y}");
        }
    }

    #[test]
    fn conv_padding_modes_match_direct_convolution() {
        let mut rng = Rng::new(7);
        // (x shape, w shape, group, strides, dilations, auto_pad, explicit pads)
        let cases: Vec<(Vec<usize>, Vec<usize>, usize, Vec<usize>, Vec<usize>, &str, Vec<i64>)> = vec![
            (vec![1, 3, 7, 8], vec![4, 3, 3, 3], 1, vec![1, 1], vec![1, 1], "NOTSET", vec![1, 1, 1, 1]),
            (vec![2, 4, 9, 7], vec![6, 2, 3, 2], 2, vec![2, 1], vec![1, 2], "NOTSET", vec![0, 1, 2, 0]),
            (vec![1, 3, 7, 8], vec![2, 3, 3, 3], 1, vec![2, 2], vec![1, 1], "SAME_UPPER", vec![]),
            (vec![1, 3, 7, 8], vec![2, 3, 4, 4], 1, vec![2, 3], vec![1, 1], "SAME_LOWER", vec![]),
            (vec![1, 3, 7, 8], vec![2, 3, 3, 2], 1, vec![2, 2], vec![2, 1], "VALID", vec![]),
            (vec![1, 5, 6, 6], vec![5, 1, 3, 3], 5, vec![1, 1], vec![1, 1], "SAME_UPPER", vec![]),
            (vec![2, 8, 5, 5], vec![4, 8, 1, 1], 1, vec![1, 1], vec![1, 1], "NOTSET", vec![0, 0, 0, 0]),
            (vec![1, 2, 11], vec![3, 2, 3], 1, vec![2], vec![2], "NOTSET", vec![2, 1]),
            (vec![2, 4, 13], vec![6, 2, 4], 2, vec![3], vec![1], "SAME_LOWER", vec![]),
            // Several chunks of im2col rows (144 × 40 columns per output row).
            (vec![1, 16, 41, 40], vec![8, 16, 3, 3], 1, vec![1, 1], vec![1, 1], "NOTSET", vec![1, 1, 1, 1]),
            (vec![1, 16, 45, 43], vec![8, 16, 3, 3], 1, vec![2, 3], vec![2, 1], "NOTSET", vec![0, 2, 3, 1]),
            (vec![1, 6, 9, 10], vec![4, 6, 1, 1], 1, vec![2, 2], vec![1, 1], "NOTSET", vec![0, 0, 0, 0]),
            (vec![1, 3, 20, 19], vec![3, 1, 3, 3], 3, vec![2, 2], vec![1, 1], "NOTSET", vec![1, 0, 1, 1]),
            (vec![1, 2, 4, 5, 3], vec![2, 2, 2, 3, 2], 1, vec![1, 2, 1], vec![1, 1, 2], "SAME_UPPER", vec![]),
        ];
        for (xs, ws, group, s, d, auto_pad, pads) in cases {
            let x = rand(&mut rng, &xs);
            let w = rand(&mut rng, &ws);
            let nd = xs.len() - 2;
            let mut pb = vec![0i64; nd];
            let mut out = vec![0usize; nd];
            for i in 0..nd {
                let eff = (ws[2 + i] as i64 - 1) * d[i] as i64 + 1;
                let inn = xs[2 + i] as i64;
                let st = s[i] as i64;
                let o = match auto_pad {
                    "SAME_UPPER" | "SAME_LOWER" => {
                        let o = (inn + st - 1) / st;
                        let total = ((o - 1) * st + eff - inn).max(0);
                        pb[i] = if auto_pad == "SAME_UPPER" { total / 2 } else { total - total / 2 };
                        o
                    }
                    "VALID" => (inn - eff) / st + 1,
                    _ => {
                        pb[i] = pads[i];
                        (inn + pads[i] + pads[nd + i] - eff) / st + 1
                    }
                };
                out[i] = o as usize;
            }
            let want = naive_conv(&x, &w, group, &s, &d, &pb, &out);
            let mut attrs = vec![
                Attribute::int("group", group as i64),
                Attribute::ints("strides", s.iter().map(|&v| v as i64).collect()),
                Attribute::ints("dilations", d.iter().map(|&v| v as i64).collect()),
                Attribute::string("auto_pad", auto_pad),
            ];
            if !pads.is_empty() {
                attrs.push(Attribute::ints("pads", pads.clone()));
            }
            let got = run_op(Op::Conv, vec![x, w], attrs, 1, 17);
            let Tensor::F32(got) = &got[0] else { panic!("not f32") };
            assert_close(got, &want, &format!("{xs:?} {ws:?} {auto_pad}"));
        }
    }

    #[test]
    fn conv_transpose_is_the_adjoint_of_conv() {
        // <conv(x, w), y> == <x, convT(y, w)> for matching geometry.
        let mut rng = Rng::new(3);
        let (s, d, pads) = (vec![2usize, 1], vec![1usize, 2], vec![1i64, 0, 0, 1]);
        let x = rand(&mut rng, &[1, 4, 7, 6]);
        let w = rand(&mut rng, &[6, 2, 3, 2]); // group 2: M = 6, C/g = 2
        let attrs = || {
            vec![
                Attribute::int("group", 2),
                Attribute::ints("strides", s.iter().map(|&v| v as i64).collect()),
                Attribute::ints("dilations", d.iter().map(|&v| v as i64).collect()),
                Attribute::ints("pads", pads.clone()),
            ]
        };
        let yc = run_op(Op::Conv, vec![x.clone(), w.clone()], attrs(), 1, 17);
        let Tensor::F32(yc) = &yc[0] else { panic!() };
        let y = rand(&mut rng, yc.shape());
        // ConvTranspose weights are [C_in, C_out/group, k]: with the Conv's output as input
        // (C_in = M = 6) and its input as output (C_out = 4, 2 per group), that is the Conv's
        // own weight tensor [M, C/group, k].
        let wt = w.clone();
        // Same pads; output_padding restores the input row the strided Conv never read
        // (H: 2 * (3 - 1) + 3 - 1 + 1 = 7; W: 1 * (5 - 1) + 3 - 1 = 6).
        let mut ta = attrs();
        ta.push(Attribute::ints("output_padding", vec![1, 0]));
        let xt = run_op(Op::ConvTranspose, vec![y.clone(), wt], ta, 1, 17);
        let Tensor::F32(xt) = &xt[0] else { panic!() };
        assert_eq!(xt.shape(), x.shape());
        let lhs: f32 = yc.iter().zip(&y).map(|(a, b)| a * b).sum();
        let rhs: f32 = x.iter().zip(xt).map(|(a, b)| a * b).sum();
        assert!((lhs - rhs).abs() < 1e-3 * (1.0 + lhs.abs()), "{lhs} vs {rhs}");
    }

    #[test]
    fn conv_transpose_adjoint_over_geometries() {
        // (x shape, w shape, group, strides, dilations, pads)
        let cases: Vec<(Vec<usize>, Vec<usize>, usize, Vec<usize>, Vec<usize>, Vec<i64>)> = vec![
            (vec![1, 3, 12, 10], vec![5, 3, 2, 2], 1, vec![2, 2], vec![1, 1], vec![0, 0, 0, 0]),
            (vec![2, 4, 11, 13], vec![4, 2, 3, 3], 2, vec![2, 3], vec![2, 1], vec![1, 2, 0, 1]),
            (vec![1, 2, 9, 8], vec![3, 2, 3, 2], 1, vec![1, 1], vec![1, 1], vec![1, 0, 1, 1]),
            (vec![1, 2, 14], vec![3, 2, 3], 1, vec![3], vec![2], vec![1, 2]),
        ];
        let mut rng = Rng::new(11);
        for (xs, ws, group, s, d, pads) in cases {
            let x = rand(&mut rng, &xs);
            let w = rand(&mut rng, &ws);
            let attrs = || {
                vec![
                    Attribute::int("group", group as i64),
                    Attribute::ints("strides", s.iter().map(|&v| v as i64).collect()),
                    Attribute::ints("dilations", d.iter().map(|&v| v as i64).collect()),
                    Attribute::ints("pads", pads.clone()),
                ]
            };
            let yc = run_op(Op::Conv, vec![x.clone(), w.clone()], attrs(), 1, 17);
            let Tensor::F32(yc) = &yc[0] else { panic!() };
            let y = rand(&mut rng, yc.shape());
            let nd = xs.len() - 2;
            // output_padding makes the transposed output the Conv's input size.
            let op: Vec<i64> = (0..nd)
                .map(|i| {
                    let eff = (ws[2 + i] as i64 - 1) * d[i] as i64 + 1;
                    let natural = s[i] as i64 * (yc.shape()[2 + i] as i64 - 1) + eff - pads[i] - pads[nd + i];
                    xs[2 + i] as i64 - natural
                })
                .collect();
            let mut ta = attrs();
            ta.push(Attribute::ints("output_padding", op));
            let xt = run_op(Op::ConvTranspose, vec![y.clone(), w.clone()], ta, 1, 17);
            let Tensor::F32(xt) = &xt[0] else { panic!() };
            assert_eq!(xt.shape(), x.shape(), "{xs:?}");
            let lhs: f64 = yc.iter().zip(&y).map(|(a, b)| (a * b) as f64).sum();
            let rhs: f64 = x.iter().zip(xt).map(|(a, b)| (a * b) as f64).sum();
            assert!((lhs - rhs).abs() < 1e-3 * (1.0 + lhs.abs()), "{xs:?}: {lhs} vs {rhs}");
        }
    }

    #[test]
    fn pool_2d_matches_the_general_path() {
        // The 2-D kernels against the N-d ones: a leading spatial dim of 1 (and, for MaxPool,
        // the indices output) takes the general path.
        let mut rng = Rng::new(5);
        let mut x = rand(&mut rng, &[2, 3, 11, 12]);
        x[[0, 1, 3, 4]] = f32::NAN;
        for v in x.slice_mut(ndarray::s![1, 2, 0..2, 0..3]).iter_mut() {
            *v = f32::NAN;
        }
        let x3 = x.clone().into_shape_with_order(IxDyn(&[2, 3, 1, 11, 12])).unwrap();
        // (kernel, strides, dilations, pads, ceil_mode, count_include_pad)
        let cases: Vec<([i64; 2], [i64; 2], [i64; 2], [i64; 4], i64, i64)> = vec![
            ([3, 3], [2, 2], [1, 1], [0, 0, 0, 0], 0, 0),
            ([3, 2], [1, 1], [1, 1], [1, 1, 1, 0], 0, 1),
            ([2, 3], [2, 3], [2, 1], [1, 0, 0, 2], 1, 0),
            ([3, 3], [3, 2], [1, 2], [1, 2, 1, 2], 1, 1),
        ];
        for (k, s, d, p, ceil, cip) in cases {
            let attrs2 = |max: bool| {
                let mut a = vec![
                    Attribute::ints("kernel_shape", k.to_vec()),
                    Attribute::ints("strides", s.to_vec()),
                    Attribute::ints("pads", p.to_vec()),
                    Attribute::int("ceil_mode", ceil),
                ];
                if max {
                    a.push(Attribute::ints("dilations", d.to_vec()));
                } else {
                    a.push(Attribute::int("count_include_pad", cip));
                }
                a
            };
            let attrs3 = |max: bool| {
                let mut a = vec![
                    Attribute::ints("kernel_shape", vec![1, k[0], k[1]]),
                    Attribute::ints("strides", vec![1, s[0], s[1]]),
                    Attribute::ints("pads", vec![0, p[0], p[1], 0, p[2], p[3]]),
                    Attribute::int("ceil_mode", ceil),
                ];
                if max {
                    a.push(Attribute::ints("dilations", vec![1, d[0], d[1]]));
                } else {
                    a.push(Attribute::int("count_include_pad", cip));
                }
                a
            };
            for (op, max) in [(Op::MaxPool, true), (Op::AveragePool, false)] {
                let fast = run_op(op.clone(), vec![x.clone()], attrs2(max), 1, 19);
                let general = if max {
                    run_op(op.clone(), vec![x.clone()], attrs2(max), 2, 19)
                } else {
                    run_op(op.clone(), vec![x3.clone()], attrs3(max), 1, 19)
                };
                let (Tensor::F32(a), Tensor::F32(b)) = (&fast[0], &general[0]) else { panic!() };
                let b = b.clone().into_shape_with_order(IxDyn(a.shape())).unwrap();
                let same = a.iter().zip(&b).all(|(u, v)| u.to_bits() == v.to_bits() || (u.is_nan() && v.is_nan()));
                assert!(same, "{op:?} {k:?} {s:?} {d:?} {p:?}: {a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn max_pool_ceil_mode_and_indices() {
        let x = ArrayD::from_shape_vec(IxDyn(&[1, 1, 3, 3]), (1..=9).map(|v| v as f32).collect()).unwrap();
        let attrs = vec![
            Attribute::ints("kernel_shape", vec![2, 2]),
            Attribute::ints("strides", vec![2, 2]),
            Attribute::int("ceil_mode", 1),
        ];
        let out = run_op(Op::MaxPool, vec![x], attrs, 2, 12);
        let (Tensor::F32(y), Tensor::I64(i)) = (&out[0], &out[1]) else { panic!() };
        assert_eq!(y.iter().copied().collect::<Vec<_>>(), vec![5.0, 6.0, 8.0, 9.0]);
        assert_eq!(i.iter().copied().collect::<Vec<_>>(), vec![4, 5, 7, 8]);
    }

    /// Timings for a stem conv and a transformer-sized MatMul (run with --ignored --nocapture).
    #[test]
    #[ignore]
    fn timing_conv_and_matmul() {
        let mut rng = Rng::new(1);
        let x = rand(&mut rng, &[1, 3, 224, 224]);
        let w = rand(&mut rng, &[64, 3, 7, 7]);
        let attrs = || vec![Attribute::ints("strides", vec![2, 2]), Attribute::ints("pads", vec![3, 3, 3, 3])];
        run_op(Op::Conv, vec![x.clone(), w.clone()], attrs(), 1, 17);
        let reps = 10;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            run_op(Op::Conv, vec![x.clone(), w.clone()], attrs(), 1, 17);
        }
        let conv_ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        let a = rand(&mut rng, &[512, 768]);
        let b = rand(&mut rng, &[768, 768]);
        run_op(Op::MatMul, vec![a.clone(), b.clone()], vec![], 1, 17);
        let t = std::time::Instant::now();
        for _ in 0..reps {
            run_op(Op::MatMul, vec![a.clone(), b.clone()], vec![], 1, 17);
        }
        let mm_ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        eprintln!(
            "timing ({} threads): conv 1x3x224x224 * 64x3x7x7 s2: {conv_ms:.2} ms; matmul 512x768 @ 768x768: {mm_ms:.2} ms",
            rayon::current_num_threads()
        );
    }
}
