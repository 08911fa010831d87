//! Kernels: reductions (ReduceSum, ReduceMean, ReduceMax, ReduceMin, ReduceProd, ReduceL1,
//! ReduceL2, ReduceLogSum, ReduceLogSumExp, ReduceSumSquare) and ArgMax/ArgMin.
//!
//! Axes come from the `axes` attribute before opset 13 (ReduceSum) or 18 (the others) and from
//! the optional second input from then on. No axes reduces every axis, unless
//! `noop_with_empty_axes` is set: then nothing is reduced but the elementwise part still applies
//! (ReduceSumSquare squares, ReduceL1 takes absolute values), as the reference implementation
//! does. Reducing an empty set gives the identity: 0 for sums, 1 for products, -inf/+inf (the
//! integer limits for integers) for max/min, -inf for the log reductions.
//!
//! f32/f64/integers compute in their own type (integer ReduceL2/LogSum/LogSumExp in f64);
//! float16/bfloat16 compute in f32.

use super::Ctx;
use super::elementwise::{Num, Real, num_match};
use crate::error::Result;
use crate::value::{Tensor, Value};
use half::{bf16, f16};
use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Zip};
use optc_ir::Op;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    LogSum,
    LogSumExp,
    SumSquare,
}

pub fn run(cx: &Ctx, inputs: &[Option<&Value>]) -> Option<Result<Vec<Value>>> {
    let kind = match cx.node.op {
        Op::ReduceSum => Kind::Sum,
        Op::ReduceMean => Kind::Mean,
        Op::ReduceMax => Kind::Max,
        Op::ReduceMin => Kind::Min,
        Op::ReduceProd => Kind::Prod,
        Op::ReduceL1 => Kind::L1,
        Op::ReduceL2 => Kind::L2,
        Op::ReduceLogSum => Kind::LogSum,
        Op::ReduceLogSumExp => Kind::LogSumExp,
        Op::ReduceSumSquare => Kind::SumSquare,
        Op::ArgMax | Op::ArgMin => return Some(arg_reduce(cx, inputs).map(|t| vec![Value::Tensor(t)])),
        _ => return None,
    };
    Some(reduce(cx, inputs, kind).map(|t| vec![Value::Tensor(t)]))
}

/// Which axes the node reduces (true per axis).
fn reduced_axes(cx: &Ctx, inputs: &[Option<&Value>], kind: Kind, rank: usize) -> Result<Vec<bool>> {
    let from_input = if kind == Kind::Sum { cx.opset >= 13 } else { cx.opset >= 18 };
    let axes = if from_input {
        match cx.opt_tensor(inputs, 1)? {
            Some(t) => t.to_i64_vec().ok_or_else(|| cx.err("axes must be an integer tensor"))?,
            None => vec![],
        }
    } else {
        cx.attr_ints("axes").unwrap_or_default()
    };
    if axes.is_empty() {
        let noop = cx.attr_int("noop_with_empty_axes", 0) != 0;
        return Ok(vec![!noop; rank]);
    }
    let mut r = vec![false; rank];
    for &a in &axes {
        let i = if a < 0 { a + rank as i64 } else { a };
        if i < 0 || i >= rank as i64 {
            return Err(cx.err(format!("axis {a} is out of range for rank {rank}")));
        }
        r[i as usize] = true;
    }
    Ok(r)
}

/// Folds a contiguous run with eight partial accumulators (this vectorises and sums more
/// accurately than one running total); `g` maps each element first, `init` is `f`'s identity.
#[inline]
fn fold_slice<T: Copy>(s: &[T], init: T, g: impl Fn(T) -> T, f: impl Fn(T, T) -> T) -> T {
    let mut acc = [init; 8];
    let chunks = s.chunks_exact(8);
    let mut r = init;
    for &v in chunks.remainder() {
        r = f(r, g(v));
    }
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = f(*a, g(v));
        }
    }
    acc.iter().fold(r, |x, &y| f(x, y))
}

/// Folds one axis away.
fn fold_axis<T: Copy>(
    a: ArrayViewD<T>,
    ax: usize,
    init: T,
    g: impl Fn(T) -> T + Copy,
    f: impl Fn(T, T) -> T + Copy,
) -> ArrayD<T> {
    if ax + 1 == a.ndim() {
        a.map_axis(Axis(ax), |lane| match lane.as_slice() {
            Some(s) => fold_slice(s, init, g, f),
            None => lane.iter().fold(init, |acc, &v| f(acc, g(v))),
        })
    } else {
        a.fold_axis(Axis(ax), init, |&acc, &v| f(acc, g(v)))
    }
}

/// Reduces `a` over the axes marked in `reduced`, removing them: `g` maps each input element,
/// `f` combines, `init` is `f`'s identity.
fn fold_axes<T: Copy>(
    a: ArrayViewD<T>,
    reduced: &[bool],
    init: T,
    g: impl Fn(T) -> T + Copy,
    f: impl Fn(T, T) -> T + Copy,
) -> Option<ArrayD<T>> {
    let shape = a.shape().to_vec();
    let kept: Vec<usize> = shape.iter().zip(reduced).filter(|&(_, &r)| !r).map(|(&d, _)| d).collect();
    // Reduced axes forming a suffix of a contiguous array: one contiguous run per output.
    let first = reduced.iter().position(|&r| r).unwrap_or(reduced.len());
    if let (Some(s), true) = (a.as_slice(), reduced[first..].iter().all(|&r| r)) {
        let run: usize = shape[first..].iter().product();
        let v: Vec<T> = if run == 0 {
            vec![init; kept.iter().product()]
        } else {
            s.chunks_exact(run).map(|c| fold_slice(c, init, g, f)).collect()
        };
        return ArrayD::from_shape_vec(IxDyn(&kept), v).ok();
    }
    // Otherwise one axis at a time, last first, so the lower axis numbers stay valid.
    let mut cur: Option<ArrayD<T>> = None;
    for ax in (0..shape.len()).rev().filter(|&i| reduced[i]) {
        cur = Some(match &cur {
            None => fold_axis(a.view(), ax, init, g, f),
            Some(c) => fold_axis(c.view(), ax, init, |v| v, f),
        });
    }
    Some(cur.unwrap_or_else(|| a.mapv(g)))
}

/// `a` with a new shape of the same size.
fn shaped<T: Clone>(a: ArrayD<T>, shape: &[usize]) -> Option<ArrayD<T>> {
    if a.is_standard_layout() {
        a.into_shape_with_order(IxDyn(shape)).ok()
    } else {
        ArrayD::from_shape_vec(IxDyn(shape), a.iter().cloned().collect()).ok()
    }
}

/// The reductions that need no transcendental functions.
fn reduce_num<T: Num>(a: ArrayViewD<T>, reduced: &[bool], kind: Kind, count: usize) -> Option<ArrayD<T>> {
    let id = |v: T| v;
    let add = |p: T, q: T| p.add_(q);
    match kind {
        Kind::Sum => fold_axes(a, reduced, T::ZERO, id, add),
        Kind::Mean => {
            let mut r = fold_axes(a, reduced, T::ZERO, id, add)?;
            let n = T::from_f64_(count as f64);
            r.mapv_inplace(|v| v.div_(n));
            Some(r)
        }
        Kind::Max => fold_axes(a, reduced, T::LOWEST, id, |p, q| p.max_(q)),
        Kind::Min => fold_axes(a, reduced, T::HIGHEST, id, |p, q| p.min_(q)),
        Kind::Prod => fold_axes(a, reduced, T::ONE, id, |p, q| p.mul_(q)),
        Kind::L1 => fold_axes(a, reduced, T::ZERO, |v| v.abs_(), add),
        // SumSquare (and L2's inner sum).
        _ => fold_axes(a, reduced, T::ZERO, |v| v.mul_(v), add),
    }
}

fn reduce_real<T: Real>(a: ArrayViewD<T>, reduced: &[bool], kind: Kind, count: usize) -> Option<ArrayD<T>> {
    let id = |v: T| v;
    let add = |p: T, q: T| p.add_(q);
    match kind {
        Kind::L2 => fold_axes(a, reduced, T::ZERO, |v| v.mul_(v), add).map(|r| r.mapv(T::sqrt_)),
        Kind::LogSum => fold_axes(a, reduced, T::ZERO, id, add).map(|r| r.mapv(T::ln_)),
        Kind::LogSumExp => {
            // log(sum(exp(x - m))) + m with m the (finite) max, so large inputs do not overflow.
            let mx = fold_axes(a.view(), reduced, T::LOWEST, id, |p, q| p.max_(q))?;
            let shift = mx.mapv(|m| if m.is_finite_() { m } else { T::ZERO });
            let keep: Vec<usize> = a.shape().iter().zip(reduced).map(|(&d, &r)| if r { 1 } else { d }).collect();
            let sb = shaped(shift.clone(), &keep)?;
            let sb = sb.broadcast(a.raw_dim())?;
            let e = Zip::from(&a).and(&sb).map_collect(|&v, &s| v.sub_(s).exp_());
            let s = fold_axes(e.view(), reduced, T::ZERO, id, add)?;
            Some(Zip::from(&s).and(&shift).map_collect(|&s, &m| s.ln_().add_(m)))
        }
        _ => reduce_num(a, reduced, kind, count),
    }
}

fn reduce(cx: &Ctx, inputs: &[Option<&Value>], kind: Kind) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    let shape = x.shape();
    let reduced = reduced_axes(cx, inputs, kind, shape.len())?;
    let keepdims = cx.attr_int("keepdims", 1) != 0;
    let count: usize = shape.iter().zip(&reduced).filter(|&(_, &r)| r).map(|(&d, _)| d).product();
    let out: Vec<usize> =
        shape.iter().zip(&reduced).filter(|&(_, &r)| keepdims || !r).map(|(&d, &r)| if r { 1 } else { d }).collect();
    let out = out.as_slice();
    let r = match x {
        Tensor::Bool(a) if matches!(kind, Kind::Max | Kind::Min) => {
            let max = kind == Kind::Max;
            fold_axes(a.view(), &reduced, !max, |v| v, move |p, q| if max { p || q } else { p && q })
                .and_then(|r| shaped(r, out))
                .map(Tensor::Bool)
        }
        Tensor::F32(a) => reduce_real(a.view(), &reduced, kind, count).and_then(|r| shaped(r, out)).map(Tensor::F32),
        Tensor::F64(a) => reduce_real(a.view(), &reduced, kind, count).and_then(|r| shaped(r, out)).map(Tensor::F64),
        Tensor::F16(a) => reduce_real(a.mapv(|v| v.to_f32()).view(), &reduced, kind, count)
            .and_then(|r| shaped(r, out))
            .map(|r| Tensor::F16(r.mapv(f16::from_f32))),
        Tensor::BF16(a) => reduce_real(a.mapv(|v| v.to_f32()).view(), &reduced, kind, count)
            .and_then(|r| shaped(r, out))
            .map(|r| Tensor::BF16(r.mapv(bf16::from_f32))),
        _ => num_match!(x, T, a => {
            if matches!(kind, Kind::L2 | Kind::LogSum | Kind::LogSumExp) {
                reduce_real(a.mapv(|v| v.to_f64_()).view(), &reduced, kind, count)
                    .and_then(|r| shaped(r, out))
                    .map(|r| T::wrap(r.mapv(T::from_f64_)))
            } else {
                reduce_num(a.view(), &reduced, kind, count).and_then(|r| shaped(r, out)).map(T::wrap)
            }
        }, _ => return Err(cx.err(format!("element type {} is not supported", x.dtype())))),
    };
    r.ok_or_else(|| cx.err(format!("cannot reduce shape {shape:?} to {out:?}")))
}

/// Index of the first (or last) max/min of each lane along `axis`; a NaN counts as the extreme
/// (the first NaN wins), like numpy.
fn arg_lanes<T: Copy + PartialOrd>(
    a: ArrayViewD<T>,
    axis: usize,
    is_max: bool,
    last: bool,
    nan: impl Fn(T) -> bool,
) -> ArrayD<i64> {
    a.map_axis(Axis(axis), |lane| {
        let mut best: Option<(usize, T)> = None;
        for (i, &v) in lane.iter().enumerate() {
            let take = match best {
                None => true,
                Some((_, b)) if nan(b) => false,
                Some(_) if nan(v) => true,
                Some((_, b)) => match (is_max, last) {
                    (true, false) => v > b,
                    (true, true) => v >= b,
                    (false, false) => v < b,
                    (false, true) => v <= b,
                },
            };
            if take {
                best = Some((i, v));
            }
        }
        best.map_or(0, |(i, _)| i as i64)
    })
}

fn arg_reduce(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    let shape = x.shape();
    let rank = shape.len() as i64;
    let axis = cx.attr_int("axis", 0);
    let ax = if axis < 0 { axis + rank } else { axis };
    if ax < 0 || ax >= rank {
        return Err(cx.err(format!("axis {axis} is out of range for rank {rank}")));
    }
    let ax = ax as usize;
    if shape[ax] == 0 {
        return Err(cx.err(format!("axis {axis} is empty (shape {shape:?})")));
    }
    let keepdims = cx.attr_int("keepdims", 1) != 0;
    let last = cx.attr_int("select_last_index", 0) != 0;
    let is_max = matches!(cx.node.op, Op::ArgMax);
    let r = match x {
        Tensor::Bool(a) => arg_lanes(a.view(), ax, is_max, last, |_| false),
        _ => num_match!(x, T, a => arg_lanes(a.view(), ax, is_max, last, T::is_nan_),
            _ => return Err(cx.err(format!("element type {} is not supported", x.dtype())))),
    };
    Ok(Tensor::I64(if keepdims { r.insert_axis(Axis(ax)) } else { r }))
}

#[cfg(test)]
mod tests {
    use super::super::elementwise::tests::run_op;
    use super::*;
    use optc_ir::Attribute;

    fn f32t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
    }
    fn axes(v: &[i64]) -> Tensor {
        Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).unwrap())
    }

    #[test]
    fn axes_attribute_and_input() {
        let x = f32t(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let r = run_op(Op::ReduceSum, 11, vec![Attribute::ints("axes", vec![1])], vec![x.clone()]).unwrap();
        assert_eq!((r.shape(), r.to_f64_vec().unwrap()), (vec![2, 1], vec![6., 15.]));
        let r = run_op(Op::ReduceSum, 13, vec![Attribute::int("keepdims", 0)], vec![x.clone(), axes(&[0])]).unwrap();
        assert_eq!((r.shape(), r.to_f64_vec().unwrap()), (vec![3], vec![5., 7., 9.]));
        let r = run_op(Op::ReduceMax, 18, vec![], vec![x.clone()]).unwrap();
        assert_eq!((r.shape(), r.to_f64_vec().unwrap()), (vec![1, 1], vec![6.]));
        // Non-suffix axes of a 3-D tensor.
        let y = f32t(&[2, 2, 2], &[1., 2., 3., 4., 5., 6., 7., 8.]);
        let r = run_op(Op::ReduceMean, 18, vec![Attribute::int("keepdims", 0)], vec![y, axes(&[0, 2])]).unwrap();
        assert_eq!(r.to_f64_vec().unwrap(), vec![3.5, 5.5]);
    }

    #[test]
    fn noop_and_empty_sets() {
        let x = f32t(&[2], &[-1., 2.]);
        let noop = vec![Attribute::int("noop_with_empty_axes", 1)];
        let r = run_op(Op::ReduceSumSquare, 18, noop.clone(), vec![x.clone()]).unwrap();
        assert_eq!(r.to_f64_vec().unwrap(), vec![1., 4.]);
        let r = run_op(Op::ReduceSum, 13, noop, vec![x]).unwrap();
        assert_eq!(r.to_f64_vec().unwrap(), vec![-1., 2.]);
        let e = f32t(&[2, 0], &[]);
        let r = run_op(Op::ReduceMax, 18, vec![], vec![e.clone(), axes(&[1])]).unwrap();
        assert_eq!(r.to_f64_vec().unwrap(), vec![f64::NEG_INFINITY; 2]);
        let r = run_op(Op::ReduceProd, 18, vec![], vec![e.clone(), axes(&[1])]).unwrap();
        assert_eq!(r.to_f64_vec().unwrap(), vec![1.; 2]);
        let r = run_op(Op::ReduceLogSumExp, 18, vec![], vec![e, axes(&[1])]).unwrap();
        assert_eq!(r.to_f64_vec().unwrap(), vec![f64::NEG_INFINITY; 2]);
    }

    #[test]
    fn log_sum_exp_is_stable() {
        let x = f32t(&[2], &[1000., 1000.]);
        let r = run_op(Op::ReduceLogSumExp, 18, vec![], vec![x]).unwrap().to_f64_vec().unwrap();
        assert!((r[0] - (1000. + 2f64.ln())).abs() < 1e-3);
    }

    #[test]
    fn arg_max_last_index_and_nan() {
        let x = f32t(&[2, 3], &[1., 3., 3., f32::NAN, 5., f32::NAN]);
        let r = run_op(Op::ArgMax, 13, vec![Attribute::int("axis", 1)], vec![x.clone()]).unwrap();
        assert_eq!((r.shape(), r.to_i64_vec().unwrap()), (vec![2, 1], vec![1, 0]));
        let attrs =
            vec![Attribute::int("axis", 1), Attribute::int("select_last_index", 1), Attribute::int("keepdims", 0)];
        let r = run_op(Op::ArgMax, 13, attrs, vec![x]).unwrap();
        assert_eq!((r.shape(), r.to_i64_vec().unwrap()), (vec![2], vec![2, 0]));
        assert!(run_op(Op::ArgMin, 13, vec![Attribute::int("axis", 2)], vec![f32t(&[1], &[1.])]).is_err());
    }
}
