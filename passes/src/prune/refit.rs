//! Training-free compensation of a removed block: the first linear layer after it (Conv, Gemm or
//! MatMul with a constant weight) gets new weights, fitted by ridge-regularised least squares so
//! that on the calibration data its output in the pruned model matches its output in the
//! original model:
//!
//! `W' = argmin |Z' W' - Y|^2 + lambda |W' - W|^2`, solved through the normal equations
//! `(Z'^T Z' + lambda I) W' = Z'^T Y + lambda W` with a Cholesky factorisation (faer).
//!
//! `Z'` are the layer's inputs in the pruned model (im2col patches for a convolution, one solve
//! per group), `Y` its outputs in the original model; Conv and Gemm also refit their bias.
//! The regulariser pulls towards the original weights, so a layer whose inputs barely changed
//! barely changes.

use crate::calib::Feed;
use crate::util;
use optc_eval::{Evaluator, Observer, Value};
use optc_ir::{AttrList, DType, Graph, Model, NodeId, Op, Tensor, ValueId};
use std::collections::{HashMap, HashSet};

/// Rows (output positions) used per fit.
const MAX_ROWS: usize = 16384;
/// Largest fitted input dimension (patch length); wider layers are not refitted.
const MAX_DIM: usize = 4096;
/// Ridge strength relative to the mean diagonal of `Z^T Z`, raised when there are fewer than
/// `8 d` rows for `d` unknowns per output.
const RIDGE: f64 = 1e-2;

/// Values seen per name: one `(shape, data)` per calibration run.
type Seen = HashMap<String, Vec<(Vec<usize>, Vec<f32>)>>;

struct Collect {
    names: HashSet<String>,
    got: Seen,
}

impl Observer for Collect {
    fn wants(&self, name: &str) -> bool {
        self.names.contains(name)
    }
    fn observe(&mut self, name: &str, value: &Value) {
        if let Some(t) = value.tensor() {
            let data = t.to_f64_vec().unwrap_or_default().into_iter().map(|x| x as f32).collect();
            self.got.entry(name.to_string()).or_default().push((t.shape(), data));
        }
    }
}

fn collect(model: &Model, feeds: &[Feed], names: &[&str]) -> Result<Seen, String> {
    let ev = Evaluator::new(model).map_err(|e| e.to_string())?;
    let mut c = Collect { names: names.iter().map(|s| s.to_string()).collect(), got: HashMap::new() };
    for f in feeds {
        ev.run_observed(f, Some(&mut c)).map_err(|e| e.to_string())?;
    }
    Ok(c.got)
}

/// The first node after `from` (in topological order, reading it directly or not) that is a
/// refittable linear layer.
fn next_linear(g: &Graph, from: ValueId) -> Option<NodeId> {
    let order = g.topo_order().ok()?;
    let mut reached: HashSet<ValueId> = HashSet::from([from]);
    for n in order {
        let node = g.node(n);
        if !node.inputs().iter().flatten().any(|v| reached.contains(v)) {
            continue;
        }
        if matches!(node.op, Op::Conv | Op::Gemm | Op::MatMul)
            && node.input(1).and_then(|w| util::const_tensor(g, w)).is_some()
            && node.input(0).is_some_and(|v| reached.contains(&v))
        {
            return Some(n);
        }
        reached.extend(node.outputs().iter().flatten().copied());
    }
    None
}

fn f32_of(t: &Tensor) -> Result<Vec<f32>, String> {
    if t.dtype != DType::F32 {
        return Err(format!("its weight is {:?}, not float32", t.dtype));
    }
    t.to_f32_vec().ok_or_else(|| "its weight data cannot be read".to_string())
}

/// Refits the first linear layer after the removed block whose residual Add wrote `out_name` in
/// `before`. `after` is `before` with the block removed; the target outputs come from `original`
/// (or `before` when the layer is not in it). Returns the refitted copy of `after` and what was
/// refitted, or `None` when no linear layer follows the block.
pub fn refit_next(
    original: &Model,
    before: &Model,
    after: &Model,
    out_name: &str,
    feeds: &[Feed],
) -> Result<Option<(Model, String)>, String> {
    let gb = &before.graph;
    let Some(v) = gb.find_value(out_name) else { return Ok(None) };
    let Some(l) = next_linear(gb, v) else { return Ok(None) };
    let Some(y) = gb.node(l).output(0) else { return Ok(None) };
    let y_name = gb.value(y).name.clone();
    let ga = &after.graph;
    let Some(ya) = ga.find_value(&y_name) else { return Ok(None) };
    let Some((la, _)) = ga.producer(ya) else { return Ok(None) };
    let node = ga.node(la);
    let label = format!("{} '{}'", node.op, super::blocks::node_label(ga, la));
    let (Some(z), Some(w)) = (node.input(0), node.input(1)) else { return Ok(None) };
    if ga.uses(w).len() != 1 {
        return Err(format!("{label}: its weight is shared with other nodes"));
    }
    let z_name = ga.value(z).name.clone();
    let source = if original.graph.find_value(&y_name).is_some() { original } else { before };
    let targets = collect(source, feeds, &[&y_name])?;
    let inputs = collect(after, feeds, &[&z_name])?;
    let (Some(ys), Some(zs)) = (targets.get(&y_name), inputs.get(&z_name)) else {
        return Err(format!("{label}: its input or output was not computed on the calibration data"));
    };
    let wt = util::const_tensor(ga, w).ok_or("weight is not constant")?;
    let mut m = after.clone();
    let g = &mut m.graph;
    match node.op {
        Op::Conv => refit_conv(g, la, &wt, zs, ys).map_err(|e| format!("{label}: {e}"))?,
        Op::MatMul | Op::Gemm => refit_matmul(g, la, &wt, zs, ys).map_err(|e| format!("{label}: {e}"))?,
        _ => return Ok(None),
    }
    Ok(Some((m, label)))
}

/// Solves `(X^T X + lambda I) W = X^T Y + lambda W0` for `W` (`[d, m]`), `X` `[rows, d]`.
fn ridge(x: &faer::Mat<f64>, y: &faer::Mat<f64>, w0: &faer::Mat<f64>) -> Result<faer::Mat<f64>, String> {
    use faer::linalg::solvers::Solve;
    let d = x.ncols();
    let mut a = x.transpose() * x;
    let mean_diag = (0..d).map(|i| a[(i, i)]).sum::<f64>() / d.max(1) as f64;
    let lambda = RIDGE * mean_diag * (8.0 * d as f64 / x.nrows().max(1) as f64).max(1.0) + 1e-8;
    for i in 0..d {
        a[(i, i)] += lambda;
    }
    let mut rhs = x.transpose() * y;
    rhs += faer::Scale(lambda) * w0;
    let llt =
        a.llt(faer::Side::Lower).map_err(|e| format!("the normal equations are not positive definite ({e:?})"))?;
    Ok(llt.solve(&rhs))
}

/// Evenly spaced sample of `n` indices below `total`.
fn sample(total: usize, n: usize) -> Vec<usize> {
    if total <= n {
        return (0..total).collect();
    }
    (0..n).map(|i| i * total / n).collect()
}

fn add_f32(g: &mut Graph, base: &str, dims: Vec<i64>, data: &[f32]) -> Result<ValueId, String> {
    crate::fuse::add_f32(g, base, dims, data).ok_or_else(|| format!("cannot add the initializer '{base}'"))
}

fn refit_matmul(
    g: &mut Graph,
    n: NodeId,
    wt: &Tensor,
    zs: &[(Vec<usize>, Vec<f32>)],
    ys: &[(Vec<usize>, Vec<f32>)],
) -> Result<(), String> {
    if wt.dims.len() != 2 {
        return Err("its weight is not a matrix".into());
    }
    let w = f32_of(wt)?;
    let node = g.node(n);
    let is_gemm = node.op == Op::Gemm;
    let trans_b = is_gemm && node.attrs.get_int("transB").unwrap_or(0) != 0;
    if is_gemm
        && (node.attrs.get_int("transA").unwrap_or(0) != 0
            || node.attrs.get_float("alpha").unwrap_or(1.0) != 1.0
            || node.attrs.get_float("beta").unwrap_or(1.0) != 1.0)
    {
        return Err("Gemm with transA, alpha or beta is not refitted".into());
    }
    let (k, nn) =
        if trans_b { (wt.dims[1] as usize, wt.dims[0] as usize) } else { (wt.dims[0] as usize, wt.dims[1] as usize) };
    let w_at = |i: usize, j: usize| if trans_b { w[j * k + i] } else { w[i * nn + j] };
    // Bias: Gemm's C when it is a vector of N (or absent); MatMul has none.
    let bias: Option<Vec<f32>> = if is_gemm {
        match node.input(2) {
            None => Some(vec![0.0; nn]),
            Some(c) => match util::const_tensor(g, c) {
                Some(t) if t.numel() == Some(nn as u64) && t.dims.len() <= 2 && g.uses(c).len() == 1 => {
                    Some(f32_of(&t)?)
                }
                _ => None,
            },
        }
    } else {
        None
    };
    let d = k + usize::from(bias.is_some());
    if d > MAX_DIM {
        return Err(format!("{k} inputs is above the refit limit of {MAX_DIM}"));
    }
    let total: usize = zs.iter().map(|(s, _)| s.iter().product::<usize>() / k.max(1)).sum();
    let rows = sample(total, MAX_ROWS.max(4 * d));
    let mut x = faer::Mat::<f64>::zeros(rows.len(), d);
    let mut yv = faer::Mat::<f64>::zeros(rows.len(), nn);
    // Rows are numbered run by run.
    let mut offsets = Vec::new();
    let mut acc = 0;
    for ((zs_shape, _), (ys_shape, _)) in zs.iter().zip(ys) {
        if zs_shape.last() != Some(&k) || ys_shape.last() != Some(&nn) {
            return Err("its input or output shape does not match its weight".into());
        }
        offsets.push(acc);
        acc += zs_shape.iter().product::<usize>() / k;
    }
    for (ri, &r) in rows.iter().enumerate() {
        let run = offsets.partition_point(|&o| o <= r) - 1;
        let local = r - offsets[run];
        let (zd, yd) = (&zs[run].1, &ys[run].1);
        for j in 0..k {
            x[(ri, j)] = zd[local * k + j] as f64;
        }
        if bias.is_some() {
            x[(ri, k)] = 1.0;
        }
        for j in 0..nn {
            yv[(ri, j)] = yd[local * nn + j] as f64;
        }
    }
    let w0 = faer::Mat::<f64>::from_fn(d, nn, |i, j| {
        if i < k { w_at(i, j) as f64 } else { bias.as_ref().map_or(0.0, |b| b[j] as f64) }
    });
    let sol = ridge(&x, &yv, &w0)?;
    let new_w: Vec<f32> = if trans_b {
        (0..nn).flat_map(|j| (0..k).map(move |i| (j, i))).map(|(j, i)| sol[(i, j)] as f32).collect()
    } else {
        (0..k).flat_map(|i| (0..nn).map(move |j| (i, j))).map(|(i, j)| sol[(i, j)] as f32).collect()
    };
    let wv = add_f32(g, "refit_w", wt.dims.clone(), &new_w)?;
    g.set_input(n, 1, Some(wv));
    if bias.is_some() {
        let b: Vec<f32> = (0..nn).map(|j| sol[(k, j)] as f32).collect();
        let bv = add_f32(g, "refit_b", vec![nn as i64], &b)?;
        let mut ins: Vec<Option<ValueId>> = g.node(n).inputs().to_vec();
        ins.resize(3, None);
        ins[2] = Some(bv);
        g.set_inputs(n, ins);
    }
    Ok(())
}

fn refit_conv(
    g: &mut Graph,
    n: NodeId,
    wt: &Tensor,
    zs: &[(Vec<usize>, Vec<f32>)],
    ys: &[(Vec<usize>, Vec<f32>)],
) -> Result<(), String> {
    if wt.dims.len() != 4 {
        return Err("only 2-D convolutions are refitted".into());
    }
    let w = f32_of(wt)?;
    let node = g.node(n);
    if node.attrs.get_string("auto_pad").is_some_and(|s| s != "NOTSET") {
        return Err("convolutions with auto_pad are not refitted".into());
    }
    let groups = node.attrs.get_int("group").unwrap_or(1).max(1) as usize;
    let pads = node.attrs.get_ints("pads").map(|p| p.to_vec()).unwrap_or(vec![0; 4]);
    let strides = node.attrs.get_ints("strides").map(|p| p.to_vec()).unwrap_or(vec![1; 2]);
    let dil = node.attrs.get_ints("dilations").map(|p| p.to_vec()).unwrap_or(vec![1; 2]);
    if pads.len() != 4 || strides.len() != 2 || dil.len() != 2 {
        return Err("unexpected pads, strides or dilations".into());
    }
    let [m, cg, kh, kw] = [wt.dims[0], wt.dims[1], wt.dims[2], wt.dims[3]].map(|x| x as usize);
    if m % groups != 0 {
        return Err("output channels not divisible by group".into());
    }
    let mg = m / groups;
    let bias: Vec<f32> = match node.input(2) {
        None => vec![0.0; m],
        Some(b) => match util::const_tensor(g, b) {
            Some(t) if t.numel() == Some(m as u64) && g.uses(b).len() == 1 => f32_of(&t)?,
            _ => return Err("its bias is not a constant of its own".into()),
        },
    };
    let d = cg * kh * kw + 1;
    if d > MAX_DIM {
        return Err(format!("patch length {d} is above the refit limit of {MAX_DIM}"));
    }
    // Output positions, run by run: (run, n, oy, ox).
    let mut positions: Vec<(usize, usize, usize, usize)> = Vec::new();
    for (run, ((zsh, _), (ysh, _))) in zs.iter().zip(ys).enumerate() {
        if zsh.len() != 4 || ysh.len() != 4 || zsh[1] != cg * groups || ysh[1] != m || zsh[0] != ysh[0] {
            return Err("its input or output shape does not match its weight".into());
        }
        for b in 0..ysh[0] {
            for oy in 0..ysh[2] {
                for ox in 0..ysh[3] {
                    positions.push((run, b, oy, ox));
                }
            }
        }
    }
    let rows = sample(positions.len(), MAX_ROWS.max(4 * d));
    let mut new_w = w.clone();
    let mut new_b = bias.clone();
    for grp in 0..groups {
        let mut x = faer::Mat::<f64>::zeros(rows.len(), d);
        let mut yv = faer::Mat::<f64>::zeros(rows.len(), mg);
        for (ri, &r) in rows.iter().enumerate() {
            let (run, b, oy, ox) = positions[r];
            let (zsh, zd) = (&zs[run].0, &zs[run].1);
            let (ysh, yd) = (&ys[run].0, &ys[run].1);
            let (c_all, h, wd) = (zsh[1], zsh[2] as i64, zsh[3] as i64);
            for c in 0..cg {
                let ch = grp * cg + c;
                for ky in 0..kh {
                    let iy = (oy as i64) * strides[0] - pads[0] + (ky as i64) * dil[0];
                    for kx in 0..kw {
                        let ix = (ox as i64) * strides[1] - pads[1] + (kx as i64) * dil[1];
                        if iy >= 0 && iy < h && ix >= 0 && ix < wd {
                            x[(ri, (c * kh + ky) * kw + kx)] =
                                zd[((b * c_all + ch) * h as usize + iy as usize) * wd as usize + ix as usize] as f64;
                        }
                    }
                }
            }
            x[(ri, d - 1)] = 1.0;
            for j in 0..mg {
                let oc = grp * mg + j;
                yv[(ri, j)] = yd[((b * ysh[1] + oc) * ysh[2] + oy) * ysh[3] + ox] as f64;
            }
        }
        let w0 = faer::Mat::<f64>::from_fn(d, mg, |i, j| {
            let oc = grp * mg + j;
            if i + 1 < d { w[oc * (cg * kh * kw) + i] as f64 } else { bias[oc] as f64 }
        });
        let sol = ridge(&x, &yv, &w0)?;
        for j in 0..mg {
            let oc = grp * mg + j;
            for i in 0..d - 1 {
                new_w[oc * (cg * kh * kw) + i] = sol[(i, j)] as f32;
            }
            new_b[oc] = sol[(d - 1, j)] as f32;
        }
    }
    let wv = add_f32(g, "refit_w", wt.dims.clone(), &new_w)?;
    let bv = add_f32(g, "refit_b", vec![m as i64], &new_b)?;
    let mut ins: Vec<Option<ValueId>> = g.node(n).inputs().to_vec();
    ins.resize(3, None);
    ins[1] = Some(wv);
    ins[2] = Some(bv);
    g.set_inputs(n, ins);
    Ok(())
}
