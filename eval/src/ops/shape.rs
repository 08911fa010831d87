//! Kernels: shape and data movement (reshaping, slicing, gathering, scattering, padding,
//! sorting-like selections) and constants.
//!
//! Every kernel is generic over the element type through the `typed!`/`same!` macros below,
//! which turn unsupported element types (packed float8/int4, or strings where numbers are
//! needed) into errors rather than panics. Gather, Concat, Slice and Transpose copy whole
//! contiguous runs (`extend_from_slice`, ndarray views), never allocating per element.

use super::Ctx;
use crate::error::Result;
use crate::value::{Tensor, Value};
use half::{bf16, f16};
use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Slice};
use optc_ir::{AttrList, AttrValue, DType, Op};
use std::borrow::Cow;
use std::cmp::Ordering;

/// Largest element count a kernel will allocate (guards against absurd shapes).
pub(crate) const MAX_ELEMS: usize = 1 << 32;

// ---------------------------------------------------------------------------------------------
// Element-type dispatch
// ---------------------------------------------------------------------------------------------

/// Maps the array inside `$t` (one of the listed variants) to an array of the same variant.
macro_rules! typed {
    ($cx:expr, $t:expr, [$($V:ident),*], $a:ident => $body:expr) => {
        match $t {
            $($crate::Tensor::$V($a) => $crate::Tensor::$V($body),)*
            #[allow(unreachable_patterns)]
            other => return Err($cx.err(format!("element type {} is not supported", other.dtype()))),
        }
    };
}

/// Evaluates `$body` with the array inside `$t` (one of the listed variants).
macro_rules! typed_with {
    ($cx:expr, $t:expr, [$($V:ident),*], $a:ident => $body:expr) => {
        match $t {
            $($crate::Tensor::$V($a) => $body,)*
            #[allow(unreachable_patterns)]
            other => return Err($cx.err(format!("element type {} is not supported", other.dtype()))),
        }
    };
}

/// Like `typed!` for several tensors that must share one element type: `$arrs` is a
/// `Vec<&ArrayD<T>>` in the order of `$ts`.
macro_rules! same {
    ($cx:expr, $ts:expr, [$($V:ident),*], $arrs:ident => $body:expr) => {{
        let ts: &[&$crate::Tensor] = $ts;
        match ts.first() {
            $(Some($crate::Tensor::$V(_)) => {
                let mut v = Vec::with_capacity(ts.len());
                for t in ts {
                    match t {
                        $crate::Tensor::$V(a) => v.push(a),
                        other => {
                            return Err($cx.err(format!(
                                "inputs mix element types {} and {}",
                                ts[0].dtype(),
                                other.dtype()
                            )))
                        }
                    }
                }
                let $arrs = v;
                $crate::Tensor::$V($body)
            })*
            #[allow(unreachable_patterns)]
            Some(other) => return Err($cx.err(format!("element type {} is not supported", other.dtype()))),
            None => return Err($cx.err("no inputs")),
        }
    }};
}

macro_rules! map_all {
    ($cx:expr, $t:expr, $a:ident => $body:expr) => {
        typed!($cx, $t, [F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64, Bool, Str], $a => $body)
    };
}
macro_rules! with_all {
    ($cx:expr, $t:expr, $a:ident => $body:expr) => {
        typed_with!($cx, $t, [F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64, Bool, Str], $a => $body)
    };
}
macro_rules! map_num {
    ($cx:expr, $t:expr, $a:ident => $body:expr) => {
        typed!($cx, $t, [F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64], $a => $body)
    };
}
macro_rules! same_all {
    ($cx:expr, $ts:expr, $arrs:ident => $body:expr) => {
        same!($cx, $ts, [F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64, Bool, Str], $arrs => $body)
    };
}
macro_rules! same_num {
    ($cx:expr, $ts:expr, $arrs:ident => $body:expr) => {
        same!($cx, $ts, [F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64], $arrs => $body)
    };
}

pub(crate) use typed;

/// Arithmetic the scatter reductions, Range, Col2Im and friends need.
pub(crate) trait Num: Copy + PartialOrd + Default {
    fn add(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn one() -> Self;
}

macro_rules! num_int {
    ($($t:ty),*) => {$(
        impl Num for $t {
            fn add(self, o: Self) -> Self { self.wrapping_add(o) }
            fn mul(self, o: Self) -> Self { self.wrapping_mul(o) }
            fn from_f64(v: f64) -> Self { v as $t }
            fn to_f64(self) -> f64 { self as f64 }
            fn one() -> Self { 1 }
        }
    )*};
}
num_int!(i8, i16, i32, i64, u8, u16, u32, u64);

macro_rules! num_float {
    ($($t:ty),*) => {$(
        impl Num for $t {
            fn add(self, o: Self) -> Self { self + o }
            fn mul(self, o: Self) -> Self { self * o }
            fn from_f64(v: f64) -> Self { v as $t }
            fn to_f64(self) -> f64 { self as f64 }
            fn one() -> Self { 1.0 }
        }
    )*};
}
num_float!(f32, f64);

macro_rules! num_half {
    ($($t:ty),*) => {$(
        impl Num for $t {
            fn add(self, o: Self) -> Self { <$t>::from_f32(self.to_f32() + o.to_f32()) }
            fn mul(self, o: Self) -> Self { <$t>::from_f32(self.to_f32() * o.to_f32()) }
            fn from_f64(v: f64) -> Self { <$t>::from_f64(v) }
            fn to_f64(self) -> f64 { <$t>::to_f64(self) }
            fn one() -> Self { <$t>::ONE }
        }
    )*};
}
num_half!(f16, bf16);

/// A tensor of `dtype` and `shape` filled with `v` (numbers and bools).
pub(crate) fn full(cx: &Ctx, dtype: DType, shape: &[usize], v: f64) -> Result<Tensor> {
    numel(cx, shape)?;
    fn f<T: Num>(shape: &[usize], v: f64) -> ArrayD<T> {
        ArrayD::from_elem(IxDyn(shape), T::from_f64(v))
    }
    Ok(match dtype {
        DType::F32 => Tensor::F32(f(shape, v)),
        DType::F64 => Tensor::F64(f(shape, v)),
        DType::F16 => Tensor::F16(f(shape, v)),
        DType::BF16 => Tensor::BF16(f(shape, v)),
        DType::I8 => Tensor::I8(f(shape, v)),
        DType::I16 => Tensor::I16(f(shape, v)),
        DType::I32 => Tensor::I32(f(shape, v)),
        DType::I64 => Tensor::I64(f(shape, v)),
        DType::U8 => Tensor::U8(f(shape, v)),
        DType::U16 => Tensor::U16(f(shape, v)),
        DType::U32 => Tensor::U32(f(shape, v)),
        DType::U64 => Tensor::U64(f(shape, v)),
        DType::Bool => Tensor::Bool(ArrayD::from_elem(IxDyn(shape), v != 0.0)),
        other => return Err(cx.err(format!("element type {other} is not supported"))),
    })
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// An axis in `[-rank, rank)` as an index.
pub(crate) fn norm_axis(cx: &Ctx, axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(cx.err(format!("axis {axis} is out of range for rank {rank}")));
    }
    Ok(if axis < 0 { (axis + r) as usize } else { axis as usize })
}

/// Element count of `shape`, refusing overflow and absurd sizes.
/// (Each dimension is checked too, so a zero elsewhere cannot hide a huge one.)
pub(crate) fn numel(cx: &Ctx, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| if d > MAX_ELEMS { None } else { acc.checked_mul(d) })
        .filter(|&n| n <= MAX_ELEMS)
        .ok_or_else(|| cx.err(format!("shape {shape:?} is too large")))
}

/// Non-negative sizes from integers.
fn sizes_from(cx: &Ctx, v: &[i64], what: &str) -> Result<Vec<usize>> {
    v.iter()
        .map(|&d| {
            usize::try_from(d)
                .ok()
                .filter(|&d| d <= MAX_ELEMS)
                .ok_or_else(|| cx.err(format!("{what} has an invalid value {d}")))
        })
        .collect()
}

/// A shape from integers: non-negative, of a sane element count.
fn dims_from(cx: &Ctx, v: &[i64], what: &str) -> Result<Vec<usize>> {
    let dims = sizes_from(cx, v, what)?;
    numel(cx, &dims)?;
    Ok(dims)
}

fn arr<T>(cx: &Ctx, shape: &[usize], v: Vec<T>) -> Result<ArrayD<T>> {
    ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| cx.err(e.to_string()))
}

/// The elements in row-major order, borrowed when the array already is.
fn contiguous<T: Clone>(a: &ArrayD<T>) -> Cow<'_, [T]> {
    match a.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(a.iter().cloned().collect()),
    }
}

/// The elements at the given row-major offsets.
fn pick<T: Clone>(a: &ArrayD<T>, offs: &[usize]) -> Vec<T> {
    let src = contiguous(a);
    offs.iter().map(|&o| src[o].clone()).collect()
}

/// An owned standard-layout copy of a view.
fn own<T: Clone>(v: ArrayViewD<'_, T>) -> ArrayD<T> {
    v.as_standard_layout().into_owned()
}

fn i64_tensor(cx: &Ctx, shape: &[usize], v: Vec<i64>) -> Result<Tensor> {
    Ok(Tensor::I64(arr(cx, shape, v)?))
}

fn out1(t: Tensor) -> Vec<Value> {
    vec![Value::Tensor(t)]
}

/// Optional integer input `i`.
fn opt_ints(cx: &Ctx, inputs: &[Option<&Value>], i: usize) -> Result<Option<Vec<i64>>> {
    match cx.opt_tensor(inputs, i)? {
        None => Ok(None),
        Some(t) => t.to_i64_vec().map(Some).ok_or_else(|| cx.err(format!("input {i} must be an integer tensor"))),
    }
}

/// One integer from a scalar or one-element input.
fn scalar_int(cx: &Ctx, inputs: &[Option<&Value>], i: usize) -> Result<i64> {
    let v = cx.ints(inputs, i)?;
    match v.as_slice() {
        [x] => Ok(*x),
        _ => Err(cx.err(format!("input {i} must hold exactly one value, it holds {}", v.len()))),
    }
}

/// Orders NaN after every number (and equal to itself), like numpy's sort.
#[allow(clippy::eq_op)]
pub(crate) fn total_cmp<T: PartialOrd>(a: &T, b: &T) -> Ordering {
    match a.partial_cmp(b) {
        Some(o) => o,
        None => (a != a).cmp(&(b != b)),
    }
}

/// Calls `f` with every multi-index of `shape` in row-major order.
fn for_each_index(shape: &[usize], mut f: impl FnMut(&[usize])) {
    if shape.contains(&0) {
        return;
    }
    let mut idx = vec![0usize; shape.len()];
    loop {
        f(&idx);
        let mut d = shape.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

fn strides_of(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Copies along `axis`: output position `j` takes input slice `map[j]`, or `fill` for `None`.
fn take_axis<T: Clone>(
    a: &ArrayD<T>,
    axis: usize,
    map: &[Option<usize>],
    fill: &T,
) -> std::result::Result<ArrayD<T>, String> {
    let shape = a.shape();
    let n = shape[axis];
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    if let Some(bad) = map.iter().flatten().find(|&&i| i >= n) {
        return Err(format!("index {bad} is out of range for a dimension of {n}"));
    }
    let total = outer.checked_mul(map.len()).and_then(|x| x.checked_mul(inner)).filter(|&x| x <= MAX_ELEMS);
    let total = total.ok_or("the result is too large")?;
    let src = contiguous(a);
    let mut out = Vec::with_capacity(total);
    for o in 0..outer {
        let base = o * n * inner;
        for m in map {
            match m {
                Some(i) => out.extend_from_slice(&src[base + i * inner..base + (i + 1) * inner]),
                None => out.extend(std::iter::repeat_n(fill, inner).cloned()),
            }
        }
    }
    let mut oshape = shape.to_vec();
    oshape[axis] = map.len();
    ArrayD::from_shape_vec(IxDyn(&oshape), out).map_err(|e| e.to_string())
}

/// Calls `f(src, dst)` for every index over `dims` (row-major), with offsets advanced by the
/// given strides.
fn for_each_offset(dims: &[usize], src_st: &[usize], dst_st: &[usize], mut f: impl FnMut(usize, usize)) {
    if dims.contains(&0) {
        return;
    }
    let mut idx = vec![0usize; dims.len()];
    let (mut s, mut d) = (0usize, 0usize);
    loop {
        f(s, d);
        let mut k = dims.len();
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            s += src_st[k];
            d += dst_st[k];
            if idx[k] < dims[k] {
                break;
            }
            s -= src_st[k] * dims[k];
            d -= dst_st[k] * dims[k];
            idx[k] = 0;
        }
    }
}

/// One piece of an output row built by [`remap`].
enum Seg {
    Copy(usize, usize),
    Repeat(usize, usize),
    Fill(usize),
}

/// Builds an array of shape `maps[d].len()` whose element at `(i0, i1, ..)` is the source
/// element at `(maps[0][i0], maps[1][i1], ..)`, or `fill` where any map says `None`. Rows along
/// the last axis are copied as runs, so padding, tiling and broadcasting cost about a copy.
fn remap<T: Clone>(src: &[T], in_shape: &[usize], maps: &[Vec<Option<usize>>], fill: &T) -> Vec<T> {
    let r = in_shape.len();
    let out_shape: Vec<usize> = maps.iter().map(Vec::len).collect();
    let total: usize = out_shape.iter().product();
    let mut out = Vec::with_capacity(total);
    if r == 0 {
        out.extend(src.iter().take(1).cloned());
        return out;
    }
    if total == 0 {
        return out;
    }
    // The last axis as segments of consecutive sources, repeats and fills.
    let mut segs: Vec<Seg> = Vec::new();
    for m in &maps[r - 1] {
        match (segs.last_mut(), *m) {
            (Some(Seg::Fill(n)), None) => *n += 1,
            (Some(Seg::Copy(s, n)), Some(i)) if *s + *n == i => *n += 1,
            (Some(Seg::Repeat(s, n)), Some(i)) if *s == i => *n += 1,
            (Some(Seg::Copy(s, n)), Some(i)) if *n == 1 && *s == i => {
                let s = *s;
                *segs.last_mut().unwrap_or(&mut Seg::Fill(0)) = Seg::Repeat(s, 2);
            }
            (_, None) => segs.push(Seg::Fill(1)),
            (_, Some(i)) => segs.push(Seg::Copy(i, 1)),
        }
    }
    let strides = strides_of(in_shape);
    let row = out_shape[r - 1];
    let mut idx = vec![0usize; r - 1];
    loop {
        let base: Option<usize> =
            idx.iter().enumerate().try_fold(0usize, |acc, (d, &i)| maps[d][i].map(|j| acc + j * strides[d]));
        match base {
            None => out.extend(std::iter::repeat_n(fill, row).cloned()),
            Some(b) => {
                for seg in &segs {
                    match *seg {
                        Seg::Copy(s, n) => out.extend_from_slice(&src[b + s..b + s + n]),
                        Seg::Repeat(s, n) => out.extend(std::iter::repeat_n(&src[b + s], n).cloned()),
                        Seg::Fill(n) => out.extend(std::iter::repeat_n(fill, n).cloned()),
                    }
                }
            }
        }
        let mut k = r - 1;
        loop {
            if k == 0 {
                return out;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < out_shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

/// [`remap`] for maps without fills (the fill value is never used).
fn remap_any<T: Clone>(a: &ArrayD<T>, in_shape: &[usize], maps: &[Vec<Option<usize>>]) -> Vec<T> {
    let src = contiguous(a);
    match src.first() {
        Some(f) => remap(&src, in_shape, maps, f),
        None => vec![],
    }
}

/// Reshapes any tensor (packed ones included) to `shape` with the same element count.
pub(crate) fn reshape_tensor(cx: &Ctx, t: &Tensor, shape: &[usize]) -> Result<Tensor> {
    let n = numel(cx, shape)?;
    if n != t.len() {
        return Err(cx.err(format!("cannot reshape {:?} ({} elements) to {shape:?}", t.shape(), t.len())));
    }
    if let Tensor::Packed { dtype, raw, .. } = t {
        return Ok(Tensor::Packed { dtype: *dtype, shape: shape.to_vec(), raw: raw.clone() });
    }
    Ok(map_all!(cx, t, a => a.to_shape(IxDyn(shape)).map_err(|e| cx.err(e.to_string()))?.into_owned()))
}

// ---------------------------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------------------------

pub fn run(cx: &Ctx, inputs: &[Option<&Value>]) -> Option<Result<Vec<Value>>> {
    Some(match cx.node.op {
        Op::Reshape => reshape(cx, inputs).map(out1),
        Op::Transpose => transpose(cx, inputs).map(out1),
        Op::Concat => concat(cx, inputs).map(out1),
        Op::Split => split(cx, inputs),
        Op::Slice => slice(cx, inputs).map(out1),
        Op::Gather => gather(cx, inputs).map(out1),
        Op::GatherElements => gather_elements(cx, inputs).map(out1),
        Op::GatherND => gather_nd(cx, inputs).map(out1),
        Op::ScatterElements | Op::Scatter => scatter_elements(cx, inputs).map(out1),
        Op::ScatterND => scatter_nd(cx, inputs).map(out1),
        Op::TensorScatter => tensor_scatter(cx, inputs).map(out1),
        Op::Squeeze => squeeze(cx, inputs).map(out1),
        Op::Unsqueeze => unsqueeze(cx, inputs).map(out1),
        Op::Flatten => flatten(cx, inputs).map(out1),
        Op::Expand => expand(cx, inputs).map(out1),
        Op::Tile => tile(cx, inputs).map(out1),
        Op::Pad => pad(cx, inputs).map(out1),
        Op::Shape => shape_op(cx, inputs).map(out1),
        Op::Size => cx.tensor(inputs, 0).and_then(|t| i64_tensor(cx, &[], vec![t.len() as i64])).map(out1),
        Op::ConstantOfShape => constant_of_shape(cx, inputs).map(out1),
        Op::Constant => constant(cx).map(out1),
        Op::Identity => identity(cx, inputs),
        Op::Range => range(cx, inputs).map(out1),
        Op::OneHot => one_hot(cx, inputs).map(out1),
        Op::NonZero => non_zero(cx, inputs).map(out1),
        Op::TopK => top_k(cx, inputs),
        Op::Trilu => trilu(cx, inputs).map(out1),
        Op::Compress => compress(cx, inputs).map(out1),
        Op::DepthToSpace => depth_to_space(cx, inputs).map(out1),
        Op::SpaceToDepth => space_to_depth(cx, inputs).map(out1),
        Op::ReverseSequence => reverse_sequence(cx, inputs).map(out1),
        Op::Unique => unique(cx, inputs),
        Op::EyeLike => eye_like(cx, inputs).map(out1),
        Op::Dropout => dropout(cx, inputs),
        Op::CenterCropPad => center_crop_pad(cx, inputs).map(out1),
        Op::Col2Im => col2im(cx, inputs).map(out1),
        Op::BitCast => bit_cast(cx, inputs).map(out1),
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Reshaping
// ---------------------------------------------------------------------------------------------

/// The output shape of Reshape: `0` copies the input dimension (unless `allowzero`), one `-1`
/// is inferred.
fn reshape_dims(cx: &Ctx, in_shape: &[usize], spec: &[i64], allowzero: bool) -> Result<Vec<usize>> {
    let total: usize = in_shape.iter().product();
    let mut out = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 => {
                if infer.replace(i).is_some() {
                    return Err(cx.err("the shape has more than one -1"));
                }
                out.push(1);
            }
            0 if !allowzero => match in_shape.get(i) {
                Some(&x) => out.push(x),
                None => return Err(cx.err(format!("shape entry {i} is 0 but the input has rank {}", in_shape.len()))),
            },
            d if d < 0 => return Err(cx.err(format!("invalid shape entry {d}"))),
            d => out.push(usize::try_from(d).map_err(|_| cx.err(format!("invalid shape entry {d}")))?),
        }
    }
    let known = out
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != infer)
        .try_fold(1usize, |acc, (_, &d)| acc.checked_mul(d))
        .ok_or_else(|| cx.err("the shape is too large"))?;
    match infer {
        Some(i) => {
            if known == 0 || !total.is_multiple_of(known) {
                return Err(cx.err(format!("cannot reshape {in_shape:?} to {spec:?}")));
            }
            out[i] = total / known;
        }
        None if known != total => return Err(cx.err(format!("cannot reshape {in_shape:?} to {spec:?}"))),
        None => {}
    }
    Ok(out)
}

fn reshape(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let data = cx.tensor(inputs, 0)?;
    let spec = if cx.opset < 5 {
        cx.attr_ints("shape").ok_or_else(|| cx.err("missing attribute 'shape'"))?
    } else {
        cx.ints(inputs, 1)?
    };
    let allowzero = cx.opset >= 14 && cx.attr_int("allowzero", 0) != 0;
    let dims = reshape_dims(cx, &data.shape(), &spec, allowzero)?;
    reshape_tensor(cx, data, &dims)
}

/// Axes from the `axes` attribute (before opset 13) or input 1.
fn axes_arg(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Option<Vec<i64>>> {
    if cx.opset < 13 { Ok(cx.attr_ints("axes")) } else { opt_ints(cx, inputs, 1) }
}

fn squeeze(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let data = cx.tensor(inputs, 0)?;
    let shape = data.shape();
    let axes = axes_arg(cx, inputs)?.filter(|a| !a.is_empty());
    let dims: Vec<usize> = match axes {
        None => shape.iter().copied().filter(|&d| d != 1).collect(),
        Some(axes) => {
            let mut drop = vec![false; shape.len()];
            for a in axes {
                let a = norm_axis(cx, a, shape.len())?;
                if shape[a] != 1 {
                    return Err(cx.err(format!("cannot squeeze axis {a} of size {}", shape[a])));
                }
                drop[a] = true;
            }
            shape.iter().zip(&drop).filter(|(_, d)| !**d).map(|(&s, _)| s).collect()
        }
    };
    reshape_tensor(cx, data, &dims)
}

fn unsqueeze(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let data = cx.tensor(inputs, 0)?;
    let shape = data.shape();
    let axes = axes_arg(cx, inputs)?.ok_or_else(|| cx.err("axes are required"))?;
    let rank = shape.len() + axes.len();
    let mut ones = vec![false; rank];
    for a in axes {
        let a = norm_axis(cx, a, rank)?;
        if std::mem::replace(&mut ones[a], true) {
            return Err(cx.err(format!("axis {a} is repeated")));
        }
    }
    let mut it = shape.iter();
    let dims: Vec<usize> = ones.iter().map(|&one| if one { 1 } else { it.next().copied().unwrap_or(1) }).collect();
    reshape_tensor(cx, data, &dims)
}

fn flatten(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let data = cx.tensor(inputs, 0)?;
    let shape = data.shape();
    let r = shape.len() as i64;
    let axis = cx.attr_int("axis", 1);
    if axis < -r || axis > r {
        return Err(cx.err(format!("axis {axis} is out of range for rank {r}")));
    }
    let axis = if axis < 0 { axis + r } else { axis } as usize;
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis..].iter().product();
    reshape_tensor(cx, data, &[outer, inner])
}

// ---------------------------------------------------------------------------------------------
// Transpose, Concat, Split, Slice
// ---------------------------------------------------------------------------------------------

fn check_perm(cx: &Ctx, perm: &[i64], rank: usize) -> Result<Vec<usize>> {
    if perm.len() != rank {
        return Err(cx.err(format!("perm {perm:?} does not match rank {rank}")));
    }
    let mut seen = vec![false; rank];
    let mut out = Vec::with_capacity(rank);
    for &p in perm {
        let p = norm_axis(cx, p, rank)?;
        if std::mem::replace(&mut seen[p], true) {
            return Err(cx.err(format!("perm {perm:?} is not a permutation")));
        }
        out.push(p);
    }
    Ok(out)
}

/// Transposes by `perm` (a valid permutation). Size-1 axes are dropped and axes that stay
/// adjacent are merged first; then rows are copied whole when the last axis stays last, and
/// otherwise in cache-friendly tiles of the two innermost axes.
pub(crate) fn transpose_arr<T: Clone>(a: &ArrayD<T>, perm: &[usize]) -> ArrayD<T> {
    let shape = a.shape();
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let total: usize = shape.iter().product();
    let src = contiguous(a);
    let done = |v: Vec<T>| {
        ArrayD::from_shape_vec(IxDyn(&out_shape), v).unwrap_or_else(|_| own(a.view().permuted_axes(IxDyn(perm))))
    };
    // Merge: keep axes longer than 1, group runs that stay consecutive.
    let mut rank_of = vec![usize::MAX; shape.len()];
    let kept: Vec<usize> = (0..shape.len()).filter(|&d| shape[d] != 1).collect();
    for (k, &d) in kept.iter().enumerate() {
        rank_of[d] = k;
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &p in perm.iter().filter(|&&p| shape[p] != 1) {
        let k = rank_of[p];
        match groups.last_mut() {
            Some(g) if g.last().is_some_and(|&l| l + 1 == k) => g.push(k),
            _ => groups.push(vec![k]),
        }
    }
    if total == 0 || groups.len() <= 1 {
        return done(src.into_owned());
    }
    let mut order: Vec<usize> = (0..groups.len()).collect();
    order.sort_by_key(|&g| groups[g][0]);
    let dims: Vec<usize> = order.iter().map(|&g| groups[g].iter().map(|&k| shape[kept[k]]).product()).collect();
    let mut pos = vec![0usize; groups.len()];
    for (k, &g) in order.iter().enumerate() {
        pos[g] = k;
    }
    let p: Vec<usize> = pos; // merged perm: output axis g reads merged input axis p[g]
    let r = dims.len();
    let st = strides_of(&dims);
    let odims: Vec<usize> = p.iter().map(|&i| dims[i]).collect();
    let ost = strides_of(&odims);
    let src_st: Vec<usize> = p.iter().map(|&i| st[i]).collect();
    let mut out: Vec<T> = vec![src[0].clone(); total];
    if p[r - 1] == r - 1 {
        let run = dims[r - 1];
        for_each_offset(&odims[..r - 1], &src_st[..r - 1], &ost[..r - 1], |s, d| {
            out[d..d + run].clone_from_slice(&src[s..s + run]);
        });
        return done(out);
    }
    // Tiles over q (the output axis reading the input's contiguous last axis) and the output's
    // last axis (reading input axis p[r - 1] with stride sa).
    let q = p.iter().position(|&i| i == r - 1).unwrap_or(0);
    let (nb, na) = (odims[q], odims[r - 1]);
    let (sa, dq) = (src_st[r - 1], ost[q]);
    let outer: Vec<usize> = (0..r - 1).filter(|&k| k != q).collect();
    let o_dims: Vec<usize> = outer.iter().map(|&k| odims[k]).collect();
    let o_src: Vec<usize> = outer.iter().map(|&k| src_st[k]).collect();
    let o_dst: Vec<usize> = outer.iter().map(|&k| ost[k]).collect();
    const TILE: usize = 64;
    for_each_offset(&o_dims, &o_src, &o_dst, |s, d| {
        for i0 in (0..nb).step_by(TILE) {
            let iend = (i0 + TILE).min(nb);
            for j0 in (0..na).step_by(TILE) {
                let jend = (j0 + TILE).min(na);
                // Whole 8×8 blocks, then the ragged edges element by element.
                let (ifull, jfull) = (i0 + (iend - i0) / 8 * 8, j0 + (jend - j0) / 8 * 8);
                for bi in (i0..ifull).step_by(8) {
                    for bj in (j0..jfull).step_by(8) {
                        block8(&src[s + bi + bj * sa..], sa, &mut out[d + bi * dq + bj..], dq);
                    }
                }
                for i in i0..iend {
                    let from = if i < ifull { jfull } else { j0 };
                    let row = &mut out[d + i * dq + from..d + i * dq + jend];
                    let sb = s + i + from * sa;
                    for (jj, o) in row.iter_mut().enumerate() {
                        *o = src[sb + jj * sa].clone();
                    }
                }
            }
        }
    });
    done(out)
}

/// Transposes one 8×8 block: `dst[i * dq + j] = src[j * sa + i]`.
#[inline(always)]
fn block8<T: Clone>(src: &[T], sa: usize, dst: &mut [T], dq: usize) {
    let rows: [&[T]; 8] = std::array::from_fn(|j| &src[j * sa..j * sa + 8]);
    for i in 0..8 {
        let out = &mut dst[i * dq..i * dq + 8];
        for (j, o) in out.iter_mut().enumerate() {
            *o = rows[j][i].clone();
        }
    }
}

fn transpose(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let data = cx.tensor(inputs, 0)?;
    let rank = data.shape().len();
    let perm = match cx.attr_ints("perm") {
        Some(p) => check_perm(cx, &p, rank)?,
        None => (0..rank).rev().collect(),
    };
    Ok(map_all!(cx, data, a => transpose_arr(a, &perm)))
}

fn concat(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let ts: Vec<&Tensor> = (0..inputs.len()).map(|i| cx.tensor(inputs, i)).collect::<Result<_>>()?;
    let axis = match cx.node.attrs.get_int("axis") {
        Some(a) => a,
        None if cx.opset < 4 => 1,
        None => return Err(cx.err("missing attribute 'axis'")),
    };
    concat_tensors(cx, &ts, axis)
}

/// Concatenates tensors of one element type along `axis` (negative counts from the end).
pub(crate) fn concat_tensors(cx: &Ctx, ts: &[&Tensor], axis: i64) -> Result<Tensor> {
    let first = ts.first().ok_or_else(|| cx.err("nothing to concatenate"))?;
    let rank = first.shape().len();
    let axis = norm_axis(cx, axis, rank)?;
    let mut total = 0usize;
    for t in ts {
        let s = t.shape();
        if s.len() != rank || s.iter().zip(first.shape()).enumerate().any(|(i, (&a, b))| i != axis && a != b) {
            return Err(cx.err(format!("cannot concatenate shapes {:?} and {s:?} on axis {axis}", first.shape())));
        }
        total += s[axis];
    }
    let mut out_shape = first.shape();
    out_shape[axis] = total;
    numel(cx, &out_shape)?;
    let outer: usize = out_shape[..axis].iter().product();
    let inner: usize = out_shape[axis + 1..].iter().product();
    Ok(same_all!(cx, ts, arrs => {
        let srcs: Vec<Cow<'_, [_]>> = arrs.iter().map(|a| contiguous(a)).collect();
        let chunks: Vec<usize> = arrs.iter().map(|a| a.shape()[axis] * inner).collect();
        let mut out = Vec::with_capacity(outer * total * inner);
        for o in 0..outer {
            for (s, &c) in srcs.iter().zip(&chunks) {
                out.extend_from_slice(&s[o * c..(o + 1) * c]);
            }
        }
        arr(cx, &out_shape, out)?
    }))
}

/// Splits `t` along `axis` into parts of the given sizes (which must sum to the dimension).
pub(crate) fn split_parts(cx: &Ctx, t: &Tensor, axis: usize, sizes: &[usize]) -> Result<Vec<Tensor>> {
    let dim = t.shape()[axis];
    if sizes.iter().try_fold(0usize, |a, &s| a.checked_add(s)) != Some(dim) {
        return Err(cx.err(format!("split sizes {sizes:?} do not add up to the dimension {dim}")));
    }
    let mut out = Vec::with_capacity(sizes.len());
    let mut pos = 0;
    for &s in sizes {
        let part = map_all!(cx, t, a => own(a.slice_axis(Axis(axis), Slice::from(pos..pos + s))));
        out.push(part);
        pos += s;
    }
    Ok(out)
}

/// Sizes of `n` parts of `dim`: `ceil(dim / n)` each, the last ones smaller.
pub(crate) fn even_sizes(dim: usize, n: usize) -> Vec<usize> {
    let chunk = dim.div_ceil(n.max(1));
    let mut left = dim;
    (0..n)
        .map(|_| {
            let s = chunk.min(left);
            left -= s;
            s
        })
        .collect()
}

fn split(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let data = cx.tensor(inputs, 0)?;
    let shape = data.shape();
    let axis = norm_axis(cx, cx.attr_int("axis", 0), shape.len())?;
    let n_out = cx.node.outputs().len();
    let given = if cx.opset >= 13 {
        opt_ints(cx, inputs, 1)?
    } else {
        match cx.attr_ints("split") {
            Some(s) => Some(s),
            None if cx.opset < 2 => opt_ints(cx, inputs, 1)?,
            None => None,
        }
    };
    let given = given.filter(|s| !s.is_empty() || n_out == 0);
    let sizes = match given {
        Some(s) => {
            if s.len() != n_out {
                return Err(cx.err(format!("{} split sizes for {n_out} outputs", s.len())));
            }
            sizes_from(cx, &s, "split")?
        }
        None => {
            let n = match cx.node.attrs.get_int("num_outputs") {
                Some(k) if cx.opset >= 18 => {
                    if k < 1 || k as usize != n_out {
                        return Err(cx.err(format!("num_outputs is {k} but the node has {n_out} outputs")));
                    }
                    n_out
                }
                _ => n_out,
            };
            if n == 0 {
                return Err(cx.err("Split has no outputs"));
            }
            even_sizes(shape[axis], n)
        }
    };
    Ok(split_parts(cx, data, axis, &sizes)?.into_iter().map(Value::Tensor).collect())
}

/// The ndarray slice for one axis of an ONNX slice (`start`/`end` before clamping).
fn onnx_slice(dim: usize, start: i64, end: i64, step: i64) -> Slice {
    let d = dim as i64;
    let fix = |x: i64| if x < 0 { x.saturating_add(d) } else { x };
    let (s, e) = (fix(start), fix(end));
    if step > 0 {
        let s = s.clamp(0, d);
        let e = e.clamp(0, d).max(s);
        Slice::new(s as isize, Some(e as isize), step as isize)
    } else {
        // Elements s, s+step, ... while > e; as an ndarray slice: the range (e, s] walked backwards.
        if d == 0 {
            return Slice::new(0, Some(0), 1);
        }
        let s = s.clamp(-1, d - 1);
        let e = e.clamp(-1, d - 1);
        let lo = e + 1;
        let hi = (s + 1).max(lo);
        Slice::new(lo as isize, Some(hi as isize), step as isize)
    }
}

fn slice(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let data = cx.tensor(inputs, 0)?;
    let shape = data.shape();
    let rank = shape.len();
    let (starts, ends, axes, steps) = if cx.opset < 10 {
        let starts = cx.attr_ints("starts").ok_or_else(|| cx.err("missing attribute 'starts'"))?;
        let ends = cx.attr_ints("ends").ok_or_else(|| cx.err("missing attribute 'ends'"))?;
        (starts, ends, cx.attr_ints("axes").filter(|a| !a.is_empty()), None)
    } else {
        (cx.ints(inputs, 1)?, cx.ints(inputs, 2)?, opt_ints(cx, inputs, 3)?, opt_ints(cx, inputs, 4)?)
    };
    let n = starts.len();
    let axes = axes.unwrap_or_else(|| (0..n as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; n]);
    if ends.len() != n || axes.len() != n || steps.len() != n {
        return Err(cx.err("starts, ends, axes and steps must have the same length"));
    }
    let mut slices: Vec<Slice> = vec![Slice::from(..); rank];
    let mut seen = vec![false; rank];
    for i in 0..n {
        let a = norm_axis(cx, axes[i], rank)?;
        if std::mem::replace(&mut seen[a], true) {
            return Err(cx.err(format!("axis {a} is repeated")));
        }
        if steps[i] == 0 {
            return Err(cx.err("step cannot be 0"));
        }
        slices[a] = onnx_slice(shape[a], starts[i], ends[i], steps[i]);
    }
    Ok(map_all!(cx, data, a => own(a.slice_each_axis(|ad| slices[ad.axis.index()]))))
}

// ---------------------------------------------------------------------------------------------
// Gather and scatter
// ---------------------------------------------------------------------------------------------

/// Indices in `[-n, n)` as offsets.
fn norm_indices(cx: &Ctx, idx: &[i64], n: usize) -> Result<Vec<usize>> {
    let ni = n as i64;
    idx.iter()
        .map(|&i| {
            let j = if i < 0 { i + ni } else { i };
            if j < 0 || j >= ni {
                Err(cx.err(format!("index {i} is out of range for a dimension of {n}")))
            } else {
                Ok(j as usize)
            }
        })
        .collect()
}

fn gather(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let data = cx.tensor(inputs, 0)?;
    let indices = cx.tensor(inputs, 1)?;
    let idx = indices.to_i64_vec().ok_or_else(|| cx.err("indices must be integers"))?;
    let shape = data.shape();
    if shape.is_empty() {
        return Err(cx.err("Gather needs data of rank >= 1"));
    }
    let axis = norm_axis(cx, cx.attr_int("axis", 0), shape.len())?;
    let map: Vec<Option<usize>> = norm_indices(cx, &idx, shape[axis])?.into_iter().map(Some).collect();
    let mut out_shape = shape[..axis].to_vec();
    out_shape.extend(indices.shape());
    out_shape.extend_from_slice(&shape[axis + 1..]);
    numel(cx, &out_shape)?;
    Ok(map_all!(cx, data, a => {
        let t = take_axis(a, axis, &map, &Default::default()).map_err(|e| cx.err(e))?;
        t.into_shape_with_order(IxDyn(&out_shape)).map_err(|e| cx.err(e.to_string()))?
    }))
}

/// Flat data offsets for GatherElements/ScatterElements: the indices' positions with the
/// `axis` coordinate replaced by the index.
fn element_offsets(
    cx: &Ctx,
    data_shape: &[usize],
    idx_shape: &[usize],
    idx: &[i64],
    axis: usize,
) -> Result<Vec<usize>> {
    if idx_shape.len() != data_shape.len() {
        return Err(cx.err(format!("indices of rank {} for data of rank {}", idx_shape.len(), data_shape.len())));
    }
    if idx_shape.iter().zip(data_shape).enumerate().any(|(i, (&a, &b))| i != axis && a > b) {
        return Err(cx.err(format!("indices shape {idx_shape:?} exceeds data shape {data_shape:?}")));
    }
    let strides = strides_of(data_shape);
    let n = data_shape[axis] as i64;
    let mut out = Vec::with_capacity(idx.len());
    let mut bad = None;
    let mut k = 0;
    for_each_index(idx_shape, |pos| {
        let i = idx[k];
        k += 1;
        let j = if i < 0 { i + n } else { i };
        if j < 0 || j >= n {
            bad.get_or_insert(i);
            return;
        }
        let off: usize =
            pos.iter().zip(&strides).enumerate().map(|(d, (&p, &s))| if d == axis { j as usize } else { p } * s).sum();
        out.push(off);
    });
    if let Some(i) = bad {
        return Err(cx.err(format!("index {i} is out of range for a dimension of {n}")));
    }
    Ok(out)
}

fn gather_elements(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let data = cx.tensor(inputs, 0)?;
    let indices = cx.tensor(inputs, 1)?;
    let idx = indices.to_i64_vec().ok_or_else(|| cx.err("indices must be integers"))?;
    let shape = data.shape();
    if shape.is_empty() {
        return Err(cx.err("GatherElements needs data of rank >= 1"));
    }
    let axis = norm_axis(cx, cx.attr_int("axis", 0), shape.len())?;
    let ishape = indices.shape();
    let offs = element_offsets(cx, &shape, &ishape, &idx, axis)?;
    Ok(map_all!(cx, data, a => {
        arr(cx, &ishape, pick(a, &offs))?
    }))
}

/// GatherND/ScatterND addressing: for each index tuple, the flat offset of the addressed slice
/// in the data, plus the slice length.
fn nd_offsets(
    cx: &Ctx,
    data_shape: &[usize],
    idx_shape: &[usize],
    idx: &[i64],
    batch: usize,
) -> Result<(Vec<usize>, usize)> {
    let q = idx_shape.len();
    let r = data_shape.len();
    if q == 0 {
        return Err(cx.err("indices must have rank >= 1"));
    }
    let m = idx_shape[q - 1];
    if batch >= q || batch >= r || batch + m > r {
        return Err(cx.err(format!("indices {idx_shape:?} do not fit data {data_shape:?} with batch_dims {batch}")));
    }
    if idx_shape[..batch] != data_shape[..batch] {
        return Err(cx.err("batch dimensions of data and indices differ"));
    }
    let strides = strides_of(data_shape);
    let inner: usize = data_shape[batch + m..].iter().product();
    let batch_stride: usize = data_shape[batch..].iter().product();
    let per_batch: usize = idx_shape[batch..q - 1].iter().product();
    let tuples = idx.len().checked_div(m).unwrap_or_else(|| idx_shape[..q - 1].iter().product());
    let mut out = Vec::with_capacity(tuples);
    for t in 0..tuples {
        let b = t.checked_div(per_batch).unwrap_or(0);
        let mut off = b * batch_stride;
        for j in 0..m {
            let i = idx[t * m + j];
            let n = data_shape[batch + j] as i64;
            let k = if i < 0 { i + n } else { i };
            if k < 0 || k >= n {
                return Err(cx.err(format!("index {i} is out of range for a dimension of {n}")));
            }
            off += k as usize * strides[batch + j];
        }
        out.push(off);
    }
    Ok((out, inner))
}

fn gather_nd(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let data = cx.tensor(inputs, 0)?;
    let indices = cx.tensor(inputs, 1)?;
    let idx = indices.to_i64_vec().ok_or_else(|| cx.err("indices must be integers"))?;
    let batch = usize::try_from(cx.attr_int("batch_dims", 0)).map_err(|_| cx.err("batch_dims must be >= 0"))?;
    let shape = data.shape();
    let ishape = indices.shape();
    let (offs, inner) = nd_offsets(cx, &shape, &ishape, &idx, batch)?;
    let m = ishape[ishape.len() - 1];
    let mut out_shape = ishape[..ishape.len() - 1].to_vec();
    out_shape.extend_from_slice(&shape[batch + m..]);
    numel(cx, &out_shape)?;
    Ok(map_all!(cx, data, a => {
        let src = contiguous(a);
        let mut v = Vec::with_capacity(offs.len() * inner);
        for &o in &offs {
            v.extend_from_slice(&src[o..o + inner]);
        }
        arr(cx, &out_shape, v)?
    }))
}

#[derive(Clone, Copy, PartialEq)]
enum Reduction {
    None,
    Add,
    Mul,
    Max,
    Min,
}

fn reduction(cx: &Ctx) -> Result<Reduction> {
    match cx.attr_string("reduction", "none").as_str() {
        "none" => Ok(Reduction::None),
        "add" => Ok(Reduction::Add),
        "mul" => Ok(Reduction::Mul),
        "max" => Ok(Reduction::Max),
        "min" => Ok(Reduction::Min),
        other => Err(cx.err(format!("unknown reduction '{other}'"))),
    }
}

/// Writes `updates` runs (`len` elements from `src` offset `k * len`) into a copy of `data`
/// at the given offsets, replacing values.
fn scatter_replace<T: Clone>(data: &ArrayD<T>, updates: &ArrayD<T>, offs: &[usize], len: usize) -> ArrayD<T> {
    let mut out = data.as_standard_layout().into_owned();
    let upd = contiguous(updates);
    if let Some(dst) = out.as_slice_mut() {
        for (k, &o) in offs.iter().enumerate() {
            dst[o..o + len].clone_from_slice(&upd[k * len..(k + 1) * len]);
        }
    }
    out
}

/// Like [`scatter_replace`], combining with the existing values.
fn scatter_reduce<T: Num>(
    data: &ArrayD<T>,
    updates: &ArrayD<T>,
    offs: &[usize],
    len: usize,
    red: Reduction,
) -> ArrayD<T> {
    let mut out = data.as_standard_layout().into_owned();
    let upd = contiguous(updates);
    if let Some(dst) = out.as_slice_mut() {
        for (k, &o) in offs.iter().enumerate() {
            for (d, &u) in dst[o..o + len].iter_mut().zip(&upd[k * len..(k + 1) * len]) {
                *d = match red {
                    Reduction::None => u,
                    Reduction::Add => d.add(u),
                    Reduction::Mul => d.mul(u),
                    Reduction::Max => {
                        if total_cmp(&u, d) == Ordering::Greater {
                            u
                        } else {
                            *d
                        }
                    }
                    Reduction::Min => {
                        if total_cmp(&u, d) == Ordering::Less {
                            u
                        } else {
                            *d
                        }
                    }
                };
            }
        }
    }
    out
}

fn scatter_apply(cx: &Ctx, data: &Tensor, updates: &Tensor, offs: &[usize], len: usize) -> Result<Tensor> {
    let red = if cx.node.op == Op::Scatter { Reduction::None } else { reduction(cx)? };
    Ok(if red == Reduction::None {
        same_all!(cx, &[data, updates], a => scatter_replace(a[0], a[1], offs, len))
    } else {
        same_num!(cx, &[data, updates], a => scatter_reduce(a[0], a[1], offs, len, red))
    })
}

fn scatter_elements(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let data = cx.tensor(inputs, 0)?;
    let indices = cx.tensor(inputs, 1)?;
    let updates = cx.tensor(inputs, 2)?;
    let idx = indices.to_i64_vec().ok_or_else(|| cx.err("indices must be integers"))?;
    let shape = data.shape();
    if shape.is_empty() {
        return Err(cx.err("data must have rank >= 1"));
    }
    let axis = norm_axis(cx, cx.attr_int("axis", 0), shape.len())?;
    let ishape = indices.shape();
    if ishape != updates.shape() {
        return Err(cx.err(format!("indices {ishape:?} and updates {:?} differ in shape", updates.shape())));
    }
    let offs = element_offsets(cx, &shape, &ishape, &idx, axis)?;
    scatter_apply(cx, data, updates, &offs, 1)
}

fn scatter_nd(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let data = cx.tensor(inputs, 0)?;
    let indices = cx.tensor(inputs, 1)?;
    let updates = cx.tensor(inputs, 2)?;
    let idx = indices.to_i64_vec().ok_or_else(|| cx.err("indices must be integers"))?;
    let shape = data.shape();
    let ishape = indices.shape();
    let (offs, inner) = nd_offsets(cx, &shape, &ishape, &idx, 0)?;
    let m = ishape[ishape.len() - 1];
    let mut ushape = ishape[..ishape.len() - 1].to_vec();
    ushape.extend_from_slice(&shape[m..]);
    if updates.shape() != ushape {
        return Err(cx.err(format!("updates have shape {:?}, expected {ushape:?}", updates.shape())));
    }
    scatter_apply(cx, data, updates, &offs, inner)
}

/// TensorScatter (KV-cache update): writes `update` into a copy of `past` along `axis`, each
/// batch entry starting at its write index (linear: must fit; circular: wraps around).
fn tensor_scatter(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let past = cx.tensor(inputs, 0)?;
    let update = cx.tensor(inputs, 1)?;
    let shape = past.shape();
    let ushape = update.shape();
    let rank = shape.len();
    let axis = norm_axis(cx, cx.attr_int("axis", -2), rank)?;
    if axis == 0 {
        return Err(cx.err("axis cannot be the batch axis"));
    }
    let circular = match cx.attr_string("mode", "linear").as_str() {
        "linear" => false,
        "circular" => true,
        other => return Err(cx.err(format!("unknown mode '{other}'"))),
    };
    if ushape.len() != rank || (0..rank).any(|i| if i == axis { ushape[i] > shape[i] } else { ushape[i] != shape[i] }) {
        return Err(cx.err(format!("update shape {ushape:?} does not fit cache shape {shape:?}")));
    }
    let batch = shape[0];
    let writes = opt_ints(cx, inputs, 2)?.unwrap_or_else(|| vec![0; batch]);
    if writes.len() != batch {
        return Err(cx.err(format!("{} write indices for a batch of {batch}", writes.len())));
    }
    let (max, len) = (shape[axis], ushape[axis]);
    let outer: usize = shape[..axis].iter().product();
    let per_batch: usize = shape[1..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut offs = Vec::with_capacity(outer * len);
    for o in 0..outer {
        let w = writes[o.checked_div(per_batch).unwrap_or(0)];
        for s in 0..len {
            let p = w.saturating_add(s as i64);
            let p = if circular && max > 0 { p.rem_euclid(max as i64) } else { p };
            if p < 0 || p >= max as i64 {
                return Err(cx.err(format!("write position {p} is outside the cache length {max}")));
            }
            offs.push((o * max + p as usize) * inner);
        }
    }
    Ok(same_all!(cx, &[past, update], a => scatter_replace(a[0], a[1], &offs, inner)))
}

// ---------------------------------------------------------------------------------------------
// Expand, Tile, Pad
// ---------------------------------------------------------------------------------------------

fn expand(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let data = cx.tensor(inputs, 0)?;
    let target = dims_from(cx, &cx.ints(inputs, 1)?, "shape")?;
    let s = data.shape();
    let rank = s.len().max(target.len());
    let mut out = vec![0usize; rank];
    for i in 0..rank {
        let a = if i + s.len() >= rank { s[i + s.len() - rank] } else { 1 };
        let b = if i + target.len() >= rank { target[i + target.len() - rank] } else { 1 };
        out[i] = if a == b || b == 1 {
            a
        } else if a == 1 {
            b
        } else {
            return Err(cx.err(format!("cannot expand {s:?} to {target:?}")));
        };
    }
    numel(cx, &out)?;
    let mut aligned = vec![1usize; rank - s.len()];
    aligned.extend_from_slice(&s);
    let maps: Vec<Vec<Option<usize>>> = aligned
        .iter()
        .zip(&out)
        .map(|(&a, &o)| if a == 1 { vec![Some(0); o] } else { (0..o).map(Some).collect() })
        .collect();
    Ok(map_all!(cx, data, a => arr(cx, &out, remap_any(a, &aligned, &maps))?))
}

fn tile_arr<T: Clone>(a: &ArrayD<T>, reps: &[usize]) -> std::result::Result<ArrayD<T>, String> {
    let shape = a.shape();
    let maps: Vec<Vec<Option<usize>>> =
        shape.iter().zip(reps).map(|(&n, &r)| (0..n * r).map(|j| Some(j % n)).collect()).collect();
    let out: Vec<usize> = maps.iter().map(Vec::len).collect();
    ArrayD::from_shape_vec(IxDyn(&out), remap_any(a, shape, &maps)).map_err(|e| e.to_string())
}

fn tile(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let data = cx.tensor(inputs, 0)?;
    let shape = data.shape();
    let reps: Vec<i64> = if cx.opset < 6 {
        // Tile-1: a repeat count and an axis.
        let tiles = cx.tensor(inputs, 1)?.to_f64_vec().and_then(|v| v.first().copied());
        let axis = cx.tensor(inputs, 2)?.to_f64_vec().and_then(|v| v.first().copied());
        let (Some(tiles), Some(axis)) = (tiles, axis) else {
            return Err(cx.err("tiles and axis must be numeric scalars"));
        };
        let axis = norm_axis(cx, axis as i64, shape.len())?;
        (0..shape.len()).map(|i| if i == axis { tiles as i64 } else { 1 }).collect()
    } else {
        cx.ints(inputs, 1)?
    };
    if reps.len() != shape.len() {
        return Err(cx.err(format!("{} repeats for rank {}", reps.len(), shape.len())));
    }
    let reps = sizes_from(cx, &reps, "repeats")?;
    let out: Vec<usize> = shape.iter().zip(&reps).map(|(a, b)| a.saturating_mul(*b)).collect();
    numel(cx, &out)?;
    Ok(map_all!(cx, data, a => tile_arr(a, &reps).map_err(|e| cx.err(e))?))
}

#[derive(Clone, Copy, PartialEq)]
enum PadMode {
    Constant,
    Reflect,
    Edge,
    Wrap,
}

/// Source index along one axis of length `n` for output position `j` with `begin` padding.
fn pad_source(mode: PadMode, j: i64, begin: i64, n: i64) -> Option<usize> {
    let p = j - begin;
    if (0..n).contains(&p) {
        return Some(p as usize);
    }
    if n == 0 {
        return None;
    }
    let q = match mode {
        PadMode::Constant => return None,
        PadMode::Edge => p.clamp(0, n - 1),
        PadMode::Wrap => p.rem_euclid(n),
        PadMode::Reflect => {
            if n == 1 {
                0
            } else {
                let period = 2 * (n - 1);
                let m = p.rem_euclid(period);
                if m < n { m } else { period - m }
            }
        }
    };
    Some(q as usize)
}

fn pad_arr<T: Clone>(
    a: &ArrayD<T>,
    pads: &[(i64, i64)],
    mode: PadMode,
    fill: &T,
) -> std::result::Result<ArrayD<T>, String> {
    let shape = a.shape();
    let mut maps = Vec::with_capacity(shape.len());
    for (&n, &(b, e)) in shape.iter().zip(pads) {
        let n = n as i64;
        let len = n.saturating_add(b).saturating_add(e);
        if len < 0 {
            return Err(format!("pads ({b}, {e}) remove more than the dimension {n}"));
        }
        if mode != PadMode::Constant && n == 0 && len > 0 {
            return Err("cannot pad an empty dimension in this mode".into());
        }
        maps.push((0..len).map(|j| pad_source(mode, j, b, n)).collect::<Vec<_>>());
    }
    let out: Vec<usize> = maps.iter().map(Vec::len).collect();
    let src = contiguous(a);
    ArrayD::from_shape_vec(IxDyn(&out), remap(&src, shape, &maps, fill)).map_err(|e| e.to_string())
}

fn pad(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let data = cx.tensor(inputs, 0)?;
    let shape = data.shape();
    let rank = shape.len();
    let mode = match cx.attr_string("mode", "constant").as_str() {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        "wrap" if cx.opset >= 19 => PadMode::Wrap,
        other => return Err(cx.err(format!("unknown pad mode '{other}'"))),
    };
    let (raw, value, axes) = if cx.opset < 11 {
        let name = if cx.opset < 2 { "paddings" } else { "pads" };
        let raw = cx.attr_ints(name).ok_or_else(|| cx.err(format!("missing attribute '{name}'")))?;
        let v = cx.attr_float("value", 0.0);
        let value = if v != 0.0 { Some(full(cx, data.dtype(), &[], f64::from(v))?) } else { None };
        (raw, value, None)
    } else {
        let value = cx.opt_tensor(inputs, 2)?.filter(|t| !t.is_empty()).cloned();
        let axes = if cx.opset >= 18 { opt_ints(cx, inputs, 3)? } else { None };
        (cx.ints(inputs, 1)?, value, axes)
    };
    let axes: Vec<usize> = match axes {
        Some(a) => a.iter().map(|&x| norm_axis(cx, x, rank)).collect::<Result<_>>()?,
        None => (0..rank).collect(),
    };
    if raw.len() != 2 * axes.len() {
        return Err(cx.err(format!("{} pads for {} axes", raw.len(), axes.len())));
    }
    if raw.iter().any(|p| p.unsigned_abs() > MAX_ELEMS as u64) {
        return Err(cx.err(format!("pads {raw:?} are too large")));
    }
    let mut pads = vec![(0i64, 0i64); rank];
    for (i, &a) in axes.iter().enumerate() {
        pads[a] = (raw[i], raw[axes.len() + i]);
    }
    let out: Vec<i64> =
        shape.iter().zip(&pads).map(|(&n, &(b, e))| (n as i64).saturating_add(b).saturating_add(e)).collect();
    dims_from(cx, &out, "the padded shape")?;
    match value {
        Some(v) => {
            if v.len() != 1 {
                return Err(cx.err("constant_value must hold one value"));
            }
            Ok(same_all!(cx, &[data, &v], a => {
                let fill = a[1].iter().next().cloned().unwrap_or_default();
                pad_arr(a[0], &pads, mode, &fill).map_err(|e| cx.err(e))?
            }))
        }
        None => Ok(map_all!(cx, data, a => pad_arr(a, &pads, mode, &Default::default()).map_err(|e| cx.err(e))?)),
    }
}

fn center_crop_pad(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let data = cx.tensor(inputs, 0)?;
    let shape = data.shape();
    let rank = shape.len();
    let target = dims_from(cx, &cx.ints(inputs, 1)?, "shape")?;
    let axes: Vec<usize> = match cx.attr_ints("axes") {
        Some(a) => a.iter().map(|&x| norm_axis(cx, x, rank)).collect::<Result<_>>()?,
        None => (0..rank).collect(),
    };
    if axes.len() != target.len() {
        return Err(cx.err(format!("{} target sizes for {} axes", target.len(), axes.len())));
    }
    // Per axis: (source start, destination start, length) of the kept region.
    let mut out_shape = shape.clone();
    let mut regions: Vec<(usize, usize, usize)> = shape.iter().map(|&n| (0, 0, n)).collect();
    for (&a, &t) in axes.iter().zip(&target) {
        let n = shape[a];
        out_shape[a] = t;
        regions[a] = if t <= n { ((n - t) / 2, 0, t) } else { (0, (t - n) / 2, n) };
    }
    numel(cx, &out_shape)?;
    Ok(map_all!(cx, data, a => {
        let mut out = ArrayD::from_elem(IxDyn(&out_shape), Default::default());
        out.slice_each_axis_mut(|ad| {
            let (_, d, l) = regions[ad.axis.index()];
            Slice::from(d..d + l)
        })
        .assign(&a.slice_each_axis(|ad| {
            let (s, _, l) = regions[ad.axis.index()];
            Slice::from(s..s + l)
        }));
        out
    }))
}

// ---------------------------------------------------------------------------------------------
// Shape, constants, Identity
// ---------------------------------------------------------------------------------------------

fn shape_op(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let shape = cx.tensor(inputs, 0)?.shape();
    let r = shape.len() as i64;
    let clamp = |x: i64| (if x < 0 { x + r } else { x }).clamp(0, r) as usize;
    let (s, e) =
        if cx.opset >= 15 { (clamp(cx.attr_int("start", 0)), clamp(cx.attr_int("end", r))) } else { (0, shape.len()) };
    let dims: Vec<i64> = if s < e { shape[s..e].iter().map(|&d| d as i64).collect() } else { vec![] };
    i64_tensor(cx, &[dims.len()], dims)
}

fn constant_of_shape(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let dims = dims_from(cx, &cx.ints(inputs, 0)?, "shape")?;
    let n = numel(cx, &dims)?;
    let value = cx.attr_tensor("value")?;
    let Some(value) = value else {
        return Ok(Tensor::F32(ArrayD::zeros(IxDyn(&dims))));
    };
    if value.len() != 1 {
        return Err(cx.err("value must hold exactly one element"));
    }
    if let Tensor::Packed { dtype, raw, .. } = &value {
        if dtype.bits().is_some_and(|b| b % 8 == 0) {
            return Ok(Tensor::Packed { dtype: *dtype, shape: dims, raw: raw.repeat(n) });
        }
        return Err(cx.err(format!("element type {dtype} is not supported")));
    }
    Ok(map_all!(cx, &value, a => ArrayD::from_elem(IxDyn(&dims), a.iter().next().cloned().unwrap_or_default())))
}

fn sparse_to_dense(cx: &Ctx, s: &optc_ir::SparseTensor) -> Result<Tensor> {
    let values = s.values.as_ref().ok_or_else(|| cx.err("sparse tensor without values"))?;
    let values = Tensor::from_ir(values)?;
    let dims = dims_from(cx, &s.dims, "sparse tensor dims")?;
    let strides = strides_of(&dims);
    let total = numel(cx, &dims)?;
    let nnz = values.len();
    let idx = match &s.indices {
        Some(t) => Tensor::from_ir(t)?.to_i64_vec().ok_or_else(|| cx.err("sparse indices must be integers"))?,
        None => vec![],
    };
    // Indices are either linearised [NNZ] or coordinates [NNZ, rank].
    let flat: Vec<usize> = if idx.len() == nnz {
        idx.iter().map(|&i| usize::try_from(i).ok().filter(|&i| i < total)).collect::<Option<_>>()
    } else if idx.len() == nnz * dims.len() {
        idx.chunks(dims.len().max(1))
            .map(|c| {
                c.iter().zip(&dims).zip(&strides).try_fold(0usize, |acc, ((&i, &d), &st)| {
                    usize::try_from(i).ok().filter(|&i| i < d).map(|i| acc + i * st)
                })
            })
            .collect::<Option<_>>()
    } else {
        None
    }
    .ok_or_else(|| cx.err("sparse indices do not match the values and dims"))?;
    fn dense<T: Clone + Default>(a: &ArrayD<T>, flat: &[usize], total: usize) -> Vec<T> {
        let mut out = vec![T::default(); total];
        for (&f, v) in flat.iter().zip(a.iter()) {
            out[f] = v.clone();
        }
        out
    }
    Ok(map_all!(cx, &values, a => arr(cx, &dims, dense(a, &flat, total))?))
}

fn constant(cx: &Ctx) -> Result<Tensor> {
    for a in &cx.node.attrs {
        let s = |b: &bytes::Bytes| String::from_utf8_lossy(b).into_owned();
        let t = match (a.name.as_str(), &a.value) {
            ("value", AttrValue::Tensor(t)) => Tensor::from_ir(t)?,
            ("sparse_value", AttrValue::SparseTensor(sp)) => sparse_to_dense(cx, sp)?,
            ("value_float", AttrValue::Float(f)) => Tensor::F32(ndarray::arr0(*f).into_dyn()),
            ("value_floats", AttrValue::Floats(v)) => {
                Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.clone()).map_err(|e| cx.err(e.to_string()))?)
            }
            ("value_int", AttrValue::Int(i)) => Tensor::I64(ndarray::arr0(*i).into_dyn()),
            ("value_ints", AttrValue::Ints(v)) => Tensor::I64(arr(cx, &[v.len()], v.clone())?),
            ("value_string", AttrValue::String(b)) => Tensor::Str(ndarray::arr0(s(b)).into_dyn()),
            ("value_strings", AttrValue::Strings(v)) => Tensor::Str(arr(cx, &[v.len()], v.iter().map(s).collect())?),
            _ => continue,
        };
        return Ok(t);
    }
    Err(cx.err("Constant has no value attribute"))
}

fn identity(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    match inputs.first().copied().flatten() {
        Some(v) => Ok(vec![v.clone()]),
        None => Err(cx.err("input 0 is required")),
    }
}

/// BitCast: the same little-endian bytes read as another type of the same width.
fn bit_cast(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    let code = cx.node.attrs.get_int("to").ok_or_else(|| cx.err("missing attribute 'to'"))?;
    let to =
        i32::try_from(code).ok().and_then(DType::from_onnx).ok_or_else(|| cx.err(format!("unknown type {code}")))?;
    let from = x.dtype();
    if from == DType::String || to == DType::String || from.bits().is_none() || from.bits() != to.bits() {
        return Err(cx.err(format!("cannot bitcast {from} to {to}: the widths differ or are unknown")));
    }
    let dims: Vec<i64> = x.shape().iter().map(|&d| d as i64).collect();
    let t = optc_ir::Tensor::from_raw(None, to, dims, x.to_le_bytes().into());
    Tensor::from_ir(&t)
}

// ---------------------------------------------------------------------------------------------
// Generators: Range, OneHot, EyeLike
// ---------------------------------------------------------------------------------------------

/// Range for float16/bfloat16, accumulated in the wider type `A` and rounded back.
fn range_stashed<T: Num, A: Num>(start: T, limit: T, delta: T) -> std::result::Result<ArrayD<T>, String> {
    let wide: ArrayD<A> =
        range_typed(A::from_f64(start.to_f64()), A::from_f64(limit.to_f64()), A::from_f64(delta.to_f64()))?;
    Ok(wide.mapv(|x| T::from_f64(x.to_f64())))
}

fn range(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let ts = [cx.tensor(inputs, 0)?, cx.tensor(inputs, 1)?, cx.tensor(inputs, 2)?];
    if ts.iter().any(|t| t.len() != 1) {
        return Err(cx.err("start, limit and delta must be scalars"));
    }
    let stash64 = cx.opset >= 27 && cx.attr_int("stash_type", 1) == 11;
    let e = |m: String| cx.err(m);
    Ok(match ts {
        [Tensor::F16(a), Tensor::F16(b), Tensor::F16(c)] => {
            let (a, b, c) = (a.iter().next().copied(), b.iter().next().copied(), c.iter().next().copied());
            let (Some(a), Some(b), Some(c)) = (a, b, c) else { return Err(cx.err("empty input")) };
            Tensor::F16(
                if stash64 { range_stashed::<_, f64>(a, b, c) } else { range_stashed::<_, f32>(a, b, c) }.map_err(e)?,
            )
        }
        [Tensor::BF16(a), Tensor::BF16(b), Tensor::BF16(c)] => {
            let (a, b, c) = (a.iter().next().copied(), b.iter().next().copied(), c.iter().next().copied());
            let (Some(a), Some(b), Some(c)) = (a, b, c) else { return Err(cx.err("empty input")) };
            Tensor::BF16(
                if stash64 { range_stashed::<_, f64>(a, b, c) } else { range_stashed::<_, f32>(a, b, c) }.map_err(e)?,
            )
        }
        _ => same!(cx, &ts, [F32, F64, I8, I16, I32, I64, U8, U16, U32, U64], a => {
            let first = |x: &ArrayD<_>| x.iter().next().copied().unwrap_or_default();
            range_typed(first(a[0]), first(a[1]), first(a[2])).map_err(e)?
        }),
    })
}

/// Range in the input type itself.
fn range_typed<T: Num>(start: T, limit: T, delta: T) -> std::result::Result<ArrayD<T>, String> {
    let n = ((limit.to_f64() - start.to_f64()) / delta.to_f64()).ceil();
    if n.is_nan() || (n > 0.0 && n.is_infinite()) {
        return Err(format!("cannot make a range from {} to {} by {}", start.to_f64(), limit.to_f64(), delta.to_f64()));
    }
    let n = n.max(0.0);
    if n > MAX_ELEMS as f64 {
        return Err("the range is too long".into());
    }
    let n = n as usize;
    let mut v = Vec::with_capacity(n);
    let mut cur = start;
    for _ in 0..n {
        v.push(cur);
        cur = cur.add(delta);
    }
    ArrayD::from_shape_vec(IxDyn(&[n]), v).map_err(|e| e.to_string())
}

fn one_hot(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let indices = cx.tensor(inputs, 0)?;
    let depth = cx.tensor(inputs, 1)?.to_f64_vec().ok_or_else(|| cx.err("depth must be numeric"))?;
    let values = cx.tensor(inputs, 2)?;
    let [depth] = depth.as_slice() else { return Err(cx.err("depth must hold one value")) };
    if depth.is_nan() || *depth < 0.0 || *depth > MAX_ELEMS as f64 {
        return Err(cx.err(format!("invalid depth {depth}")));
    }
    let depth = *depth as i64;
    if values.len() != 2 {
        return Err(cx.err("values must hold [off_value, on_value]"));
    }
    let idx: Vec<i64> =
        indices.to_f64_vec().ok_or_else(|| cx.err("indices must be numeric"))?.iter().map(|&x| x as i64).collect();
    let ishape = indices.shape();
    let r = ishape.len();
    let axis = cx.attr_int("axis", -1);
    let axis = norm_axis(cx, axis, r + 1)?;
    let outer: usize = ishape[..axis].iter().product();
    let inner: usize = ishape[axis..].iter().product();
    let mut out_shape = ishape[..axis].to_vec();
    out_shape.push(depth as usize);
    out_shape.extend_from_slice(&ishape[axis..]);
    numel(cx, &out_shape)?;
    let d = depth as usize;
    let hot = |k: i64| if k < 0 { k + depth } else { k };
    // For each index, the output offset of its "on" element (if the index is in range).
    let mut ons = Vec::with_capacity(idx.len());
    for o in 0..outer {
        for i in 0..inner {
            let k = hot(idx[o * inner + i]);
            if (0..depth).contains(&k) {
                ons.push((o * d + k as usize) * inner + i);
            }
        }
    }
    fn fill<T: Clone + Default>(a: &ArrayD<T>, n: usize, ons: &[usize]) -> Vec<T> {
        let off = a.iter().next().cloned().unwrap_or_default();
        let on = a.iter().nth(1).cloned().unwrap_or_default();
        let mut out = vec![off; n];
        for &p in ons {
            out[p] = on.clone();
        }
        out
    }
    Ok(map_all!(cx, values, a => arr(cx, &out_shape, fill(a, outer * d * inner, &ons))?))
}

fn eye<T: Clone>(rows: usize, cols: usize, k: i64, zero: T, one: T) -> ArrayD<T> {
    let mut a = ArrayD::from_elem(IxDyn(&[rows, cols]), zero);
    for i in 0..if cols == 0 { 0 } else { rows } {
        let j = (i as i64).saturating_add(k);
        if (0..cols as i64).contains(&j) {
            a[[i, j as usize]] = one.clone();
        }
    }
    a
}

fn eye_like(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    let shape = x.shape();
    let [rows, cols] = shape[..] else { return Err(cx.err("EyeLike needs a 2-D input")) };
    let dtype = match cx.node.attrs.get_int("dtype") {
        Some(c) => DType::from_onnx(c as i32).ok_or_else(|| cx.err(format!("unknown dtype {c}")))?,
        None => x.dtype(),
    };
    let k = cx.attr_int("k", 0);
    fn e<T: Num>(r: usize, c: usize, k: i64) -> ArrayD<T> {
        eye(r, c, k, T::default(), T::one())
    }
    Ok(match dtype {
        DType::F32 => Tensor::F32(e(rows, cols, k)),
        DType::F64 => Tensor::F64(e(rows, cols, k)),
        DType::F16 => Tensor::F16(e(rows, cols, k)),
        DType::BF16 => Tensor::BF16(e(rows, cols, k)),
        DType::I8 => Tensor::I8(e(rows, cols, k)),
        DType::I16 => Tensor::I16(e(rows, cols, k)),
        DType::I32 => Tensor::I32(e(rows, cols, k)),
        DType::I64 => Tensor::I64(e(rows, cols, k)),
        DType::U8 => Tensor::U8(e(rows, cols, k)),
        DType::U16 => Tensor::U16(e(rows, cols, k)),
        DType::U32 => Tensor::U32(e(rows, cols, k)),
        DType::U64 => Tensor::U64(e(rows, cols, k)),
        DType::Bool => Tensor::Bool(eye(rows, cols, k, false, true)),
        other => return Err(cx.err(format!("element type {other} is not supported"))),
    })
}

// ---------------------------------------------------------------------------------------------
// Selection: NonZero, TopK, Trilu, Compress, Unique
// ---------------------------------------------------------------------------------------------

fn is_nonzero<T: Default + PartialEq>(v: &T) -> bool {
    *v != T::default()
}

fn non_zero(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    let shape = x.shape();
    let flags: Vec<bool> = with_all!(cx, x, a => a.iter().map(is_nonzero).collect());
    let strides = strides_of(&shape);
    let hits: Vec<usize> = flags.iter().enumerate().filter(|(_, f)| **f).map(|(i, _)| i).collect();
    let mut out = Vec::with_capacity(shape.len() * hits.len());
    for (d, &st) in strides.iter().enumerate() {
        out.extend(hits.iter().map(|&h| ((h / st) % shape[d]) as i64));
    }
    i64_tensor(cx, &[shape.len(), hits.len()], out)
}

/// For each lane along `axis` (outer x inner), the `k` selected positions along the axis.
fn topk_positions<T: PartialOrd + Clone>(a: &ArrayD<T>, axis: usize, k: usize, largest: bool) -> Vec<i64> {
    let shape = a.shape();
    let n = shape[axis];
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let src = contiguous(a);
    let mut out = vec![0i64; outer * k * inner];
    let mut order: Vec<usize> = Vec::with_capacity(n);
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| &src[(o * n + j) * inner + i];
            let cmp = |x: &usize, y: &usize| {
                let c = total_cmp(at(*x), at(*y));
                let c = if largest { c.reverse() } else { c };
                c.then(x.cmp(y))
            };
            order.clear();
            order.extend(0..n);
            if k > 0 && k < n {
                order.select_nth_unstable_by(k - 1, cmp);
                order.truncate(k);
            }
            order.sort_unstable_by(cmp);
            for (j, &p) in order.iter().take(k).enumerate() {
                out[(o * k + j) * inner + i] = p as i64;
            }
        }
    }
    out
}

fn top_k(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = cx.tensor(inputs, 0)?;
    let shape = x.shape();
    if shape.is_empty() {
        return Err(cx.err("TopK needs an input of rank >= 1"));
    }
    let axis = norm_axis(cx, cx.attr_int("axis", -1), shape.len())?;
    let k = if cx.opset < 10 {
        cx.node.attrs.get_int("k").ok_or_else(|| cx.err("missing attribute 'k'"))?
    } else {
        scalar_int(cx, inputs, 1)?
    };
    if k < 0 || k as usize > shape[axis] {
        return Err(cx.err(format!("k = {k} is out of range for a dimension of {}", shape[axis])));
    }
    let k = k as usize;
    let largest = cx.opset < 11 || cx.attr_int("largest", 1) != 0;
    let pos = with_all!(cx, x, a => topk_positions(a, axis, k, largest));
    let mut out_shape = shape.clone();
    out_shape[axis] = k;
    let offs = element_offsets(cx, &shape, &out_shape, &pos, axis)?;
    let values = map_all!(cx, x, a => {
        arr(cx, &out_shape, pick(a, &offs))?
    });
    Ok(vec![Value::Tensor(values), Value::Tensor(i64_tensor(cx, &out_shape, pos)?)])
}

fn trilu(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    let shape = x.shape();
    if shape.len() < 2 {
        return Err(cx.err("Trilu needs an input of rank >= 2"));
    }
    let k = match cx.opt_tensor(inputs, 1)? {
        Some(_) => scalar_int(cx, inputs, 1)?,
        None => 0,
    };
    let upper = cx.attr_int("upper", 1) != 0;
    let (rows, cols) = (shape[shape.len() - 2], shape[shape.len() - 1]);
    Ok(map_all!(cx, x, a => {
        let mut out = a.as_standard_layout().into_owned();
        if let Some(v) = out.as_slice_mut() {
            for (p, e) in v.iter_mut().enumerate() {
                let j = (p % cols) as i64;
                let i = ((p / cols) % rows) as i64;
                let keep = if upper { j - i >= k } else { j - i <= k };
                if !keep {
                    *e = Default::default();
                }
            }
        }
        out
    }))
}

fn compress(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    let cond = cx.ints(inputs, 1)?;
    let (flat, axis) = match cx.node.attrs.get_int("axis") {
        Some(a) => (None, norm_axis(cx, a, x.shape().len())?),
        None => (Some(reshape_tensor(cx, x, &[x.len()])?), 0),
    };
    let x = flat.as_ref().unwrap_or(x);
    let n = x.shape()[axis];
    if cond.iter().skip(n).any(|&c| c != 0) {
        return Err(cx.err(format!("condition selects past the dimension {n}")));
    }
    let map: Vec<Option<usize>> =
        cond.iter().take(n).enumerate().filter(|(_, c)| **c != 0).map(|(i, _)| Some(i)).collect();
    Ok(map_all!(cx, x, a => take_axis(a, axis, &map, &Default::default()).map_err(|e| cx.err(e))?))
}

/// Unique over elements (no axis) or slices along `axis`.
fn unique(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = cx.tensor(inputs, 0)?;
    let sorted = cx.attr_int("sorted", 1) != 0;
    let (x, axis) = match cx.node.attrs.get_int("axis") {
        Some(a) => (Cow::Borrowed(x), Some(norm_axis(cx, a, x.shape().len())?)),
        None => (Cow::Owned(reshape_tensor(cx, x, &[x.len()])?), None),
    };
    let x = x.as_ref();
    let ax = axis.unwrap_or(0);
    let shape = x.shape();
    let n = shape[ax];
    // Groups of equal slices, each as (first occurrence, count), plus every slice's group.
    let (groups, inverse) = with_all!(cx, x, a => unique_groups(a, ax, sorted));
    let firsts: Vec<Option<usize>> = groups.iter().map(|g| Some(g.0)).collect();
    let y = map_all!(cx, x, a => take_axis(a, ax, &firsts, &Default::default()).map_err(|e| cx.err(e))?);
    let u = groups.len();
    let _ = n;
    Ok(vec![
        Value::Tensor(y),
        Value::Tensor(i64_tensor(cx, &[u], groups.iter().map(|g| g.0 as i64).collect())?),
        Value::Tensor(i64_tensor(cx, &[inverse.len()], inverse.iter().map(|&i| i as i64).collect())?),
        Value::Tensor(i64_tensor(cx, &[u], groups.iter().map(|g| g.1 as i64).collect())?),
    ])
}

fn unique_groups<T: PartialOrd + Clone>(a: &ArrayD<T>, axis: usize, sorted: bool) -> (Vec<(usize, usize)>, Vec<usize>) {
    let shape = a.shape();
    let n = shape[axis];
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let src = contiguous(a);
    let cmp_slices = |x: usize, y: usize| -> Ordering {
        for o in 0..outer {
            for i in 0..inner {
                let c = total_cmp(&src[(o * n + x) * inner + i], &src[(o * n + y) * inner + i]);
                if c != Ordering::Equal {
                    return c;
                }
            }
        }
        Ordering::Equal
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| cmp_slices(x, y).then(x.cmp(&y)));
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut group_of = vec![0usize; n];
    for (p, &s) in order.iter().enumerate() {
        if p == 0 || cmp_slices(order[p - 1], s) != Ordering::Equal {
            groups.push((s, 0));
        }
        let g = groups.len() - 1;
        groups[g].1 += 1;
        group_of[s] = g;
    }
    if !sorted {
        let mut by_first: Vec<usize> = (0..groups.len()).collect();
        by_first.sort_by_key(|&g| groups[g].0);
        let mut rank = vec![0usize; groups.len()];
        for (r, &g) in by_first.iter().enumerate() {
            rank[g] = r;
        }
        let regrouped: Vec<(usize, usize)> = by_first.iter().map(|&g| groups[g]).collect();
        for g in group_of.iter_mut() {
            *g = rank[*g];
        }
        groups = regrouped;
    }
    (groups, group_of)
}

// ---------------------------------------------------------------------------------------------
// Rearrangements: DepthToSpace, SpaceToDepth, ReverseSequence
// ---------------------------------------------------------------------------------------------

fn rearrange(cx: &Ctx, x: &Tensor, split: &[usize], perm: &[usize], out: &[usize]) -> Result<Tensor> {
    numel(cx, out)?;
    Ok(map_all!(cx, x, a => {
        let v = a.to_shape(IxDyn(split)).map_err(|e| cx.err(e.to_string()))?;
        let t = own(v.view().permuted_axes(IxDyn(perm)));
        t.into_shape_with_order(IxDyn(out)).map_err(|e| cx.err(e.to_string()))?
    }))
}

fn blocksize(cx: &Ctx, x: &Tensor) -> Result<usize> {
    let b = cx.node.attrs.get_int("blocksize").ok_or_else(|| cx.err("missing attribute 'blocksize'"))?;
    // The block covers channels (or spatial positions) of an existing tensor, so it is small.
    usize::try_from(b)
        .ok()
        .filter(|&b| b > 0 && b <= x.len().max(1))
        .ok_or_else(|| cx.err(format!("invalid blocksize {b}")))
}

fn depth_to_space(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    let b = blocksize(cx, x)?;
    let [n, c, h, w] = x.shape()[..] else { return Err(cx.err("DepthToSpace needs a 4-D input")) };
    let bb = b.checked_mul(b).filter(|&bb| c % bb == 0);
    let bb = bb.ok_or_else(|| cx.err(format!("channels {c} are not divisible by blocksize^2 ({b}^2)")))?;
    let c2 = c / bb;
    let out = [n, c2, h * b, w * b];
    if cx.opset >= 11 && cx.attr_string("mode", "DCR") == "CRD" {
        rearrange(cx, x, &[n, c2, b, b, h, w], &[0, 1, 4, 2, 5, 3], &out)
    } else {
        rearrange(cx, x, &[n, b, b, c2, h, w], &[0, 3, 4, 1, 5, 2], &out)
    }
}

fn space_to_depth(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    let b = blocksize(cx, x)?;
    let [n, c, h, w] = x.shape()[..] else { return Err(cx.err("SpaceToDepth needs a 4-D input")) };
    if h % b != 0 || w % b != 0 {
        return Err(cx.err(format!("spatial size {h}x{w} is not divisible by blocksize {b}")));
    }
    rearrange(cx, x, &[n, c, h / b, b, w / b, b], &[0, 3, 5, 1, 2, 4], &[n, c * b * b, h / b, w / b])
}

fn reverse_sequence(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    let lens = cx.ints(inputs, 1)?;
    let shape = x.shape();
    if shape.len() < 2 {
        return Err(cx.err("ReverseSequence needs an input of rank >= 2"));
    }
    let batch_axis = norm_axis(cx, cx.attr_int("batch_axis", 1), shape.len())?;
    let time_axis = norm_axis(cx, cx.attr_int("time_axis", 0), shape.len())?;
    if batch_axis == time_axis || batch_axis > 1 || time_axis > 1 {
        return Err(cx.err("batch_axis and time_axis must be 0 and 1"));
    }
    if lens.len() != shape[batch_axis] {
        return Err(cx.err(format!("{} sequence lengths for a batch of {}", lens.len(), shape[batch_axis])));
    }
    let t = shape[time_axis];
    let lens: Vec<usize> = lens
        .iter()
        .map(|&l| {
            usize::try_from(l).ok().filter(|&l| l <= t).ok_or_else(|| cx.err(format!("invalid sequence length {l}")))
        })
        .collect::<Result<_>>()?;
    // After removing the batch axis, the time axis is axis 0 either way.
    Ok(map_all!(cx, x, a => {
        let mut out = a.as_standard_layout().into_owned();
        for (b, &l) in lens.iter().enumerate() {
            let src = a.index_axis(Axis(batch_axis), b);
            let mut dst = out.index_axis_mut(Axis(batch_axis), b);
            for j in 0..l {
                dst.index_axis_mut(Axis(0), j).assign(&src.index_axis(Axis(0), l - 1 - j));
            }
        }
        out
    }))
}

// ---------------------------------------------------------------------------------------------
// Dropout (inference), Col2Im
// ---------------------------------------------------------------------------------------------

fn dropout(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let x = cx.tensor(inputs, 0)?;
    if cx.opset >= 12 {
        let training = match cx.opt_tensor(inputs, 2)? {
            Some(t) => {
                t.to_i64_vec().and_then(|v| v.first().copied()).ok_or_else(|| cx.err("training_mode must be a bool"))?
                    != 0
            }
            None => false,
        };
        let ratio = match cx.opt_tensor(inputs, 1)? {
            Some(t) => {
                t.to_f64_vec().and_then(|v| v.first().copied()).ok_or_else(|| cx.err("ratio must be a number"))?
            }
            None => 0.5,
        };
        if training && ratio != 0.0 {
            return Err(cx.err("Dropout in training mode (random) is not supported; only inference is"));
        }
    }
    let mask = if cx.opset < 10 {
        full(cx, x.dtype(), &x.shape(), 1.0)?
    } else {
        Tensor::Bool(ArrayD::from_elem(IxDyn(&x.shape()), true))
    };
    let mut out = vec![Value::Tensor(x.clone())];
    if cx.node.outputs().len() > 1 {
        out.push(Value::Tensor(mask));
    }
    Ok(out)
}

fn col2im(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    let image = dims_from(cx, &cx.ints(inputs, 1)?, "image_shape")?;
    let block = dims_from(cx, &cx.ints(inputs, 2)?, "block_shape")?;
    let nd = image.len();
    if block.len() != nd || nd == 0 {
        return Err(cx.err("image_shape and block_shape must have the same non-zero length"));
    }
    let get = |name: &str, n: usize, d: i64| -> Result<Vec<i64>> {
        let v = cx.attr_ints(name).unwrap_or_else(|| vec![d; n]);
        if v.len() != n { Err(cx.err(format!("{name} must have {n} values"))) } else { Ok(v) }
    };
    let dil = get("dilations", nd, 1)?;
    let pads = get("pads", 2 * nd, 0)?;
    let strides = get("strides", nd, 1)?;
    numel(cx, &image)?;
    numel(cx, &block)?;
    // Computed in i128 so that no attribute value can overflow.
    let (dil, pads, strides): (Vec<i128>, Vec<i128>, Vec<i128>) = (
        dil.iter().map(|&x| x as i128).collect(),
        pads.iter().map(|&x| x as i128).collect(),
        strides.iter().map(|&x| x as i128).collect(),
    );
    let [n, ck, l] = x.shape()[..] else { return Err(cx.err("Col2Im needs a 3-D input")) };
    let kprod: usize = block.iter().product();
    if kprod == 0 || ck % kprod != 0 {
        return Err(cx.err(format!("dimension 1 ({ck}) is not divisible by the block size {kprod}")));
    }
    let c = ck / kprod;
    let mut blocks = Vec::with_capacity(nd);
    for i in 0..nd {
        if dil[i] < 1 || strides[i] < 1 {
            return Err(cx.err("dilations and strides must be positive"));
        }
        let span = dil[i] * (block[i] as i128 - 1) + 1;
        let nb = (image[i] as i128 + pads[i] + pads[nd + i] - span).div_euclid(strides[i]) + 1;
        if nb < 1 || nb > l as i128 {
            return Err(cx.err(format!("dimension 2 ({l}) does not match the sliding blocks")));
        }
        blocks.push(nb as usize);
    }
    if blocks.iter().product::<usize>() != l {
        return Err(cx.err(format!("dimension 2 ({l}) does not match the {blocks:?} sliding blocks")));
    }
    let mut out_shape = vec![n, c];
    out_shape.extend_from_slice(&image);
    numel(cx, &out_shape)?;
    let img_strides = strides_of(&image);
    let img_size: usize = image.iter().product();
    // For each (kernel position, block position) pair, the image offset it adds to (if inside).
    let mut pairs: Vec<(usize, usize, usize)> = Vec::new();
    let mut kidx = 0;
    for_each_index(&block, |kpos| {
        let mut lidx = 0;
        for_each_index(&blocks, |bpos| {
            let mut off = 0usize;
            let mut inside = true;
            for d in 0..nd {
                let p = bpos[d] as i128 * strides[d] - pads[d] + kpos[d] as i128 * dil[d];
                if p < 0 || p >= image[d] as i128 {
                    inside = false;
                    break;
                }
                off += p as usize * img_strides[d];
            }
            if inside {
                pairs.push((kidx, lidx, off));
            }
            lidx += 1;
        });
        kidx += 1;
    });
    Ok(map_num!(cx, x, a => {
        let src = contiguous(a);
        let mut out = vec![Default::default(); n * c * img_size];
        for b in 0..n {
            for ch in 0..c {
                let dst = &mut out[(b * c + ch) * img_size..(b * c + ch + 1) * img_size];
                for &(k, li, off) in &pairs {
                    let v = src[(b * ck + ch * kprod + k) * l + li];
                    dst[off] = Num::add(dst[off], v);
                }
            }
        }
        arr(cx, &out_shape, out)?
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(dim: usize, start: i64, end: i64, step: i64) -> Vec<i64> {
        let a = ndarray::Array1::from_iter(0..dim as i64).into_dyn();
        a.slice_each_axis(|_| onnx_slice(dim, start, end, step)).iter().copied().collect()
    }

    #[test]
    fn slice_semantics_match_numpy() {
        assert_eq!(s(5, 0, 3, 1), vec![0, 1, 2]);
        assert_eq!(s(5, -1, -6, -1), vec![4, 3, 2, 1, 0]);
        assert_eq!(s(5, 4, 0, -2), vec![4, 2]);
        assert_eq!(s(5, 10, -100, -1), vec![4, 3, 2, 1, 0]);
        assert_eq!(s(5, i64::MAX, i64::MIN, -3), vec![4, 1]);
        assert_eq!(s(5, 3, 1, 1), Vec::<i64>::new());
        assert_eq!(s(5, 1, 3, -1), Vec::<i64>::new());
        assert_eq!(s(5, -100, 100, 2), vec![0, 2, 4]);
        assert_eq!(s(0, 0, 10, -1), Vec::<i64>::new());
        assert_eq!(s(5, 2, 2, -1), Vec::<i64>::new());
    }

    #[test]
    fn pad_sources() {
        // numpy.pad([0,1,2], 4, mode) along one axis
        let m = |mode| (0..11).map(|j| pad_source(mode, j, 4, 3).map(|x| x as i64).unwrap_or(-1)).collect::<Vec<_>>();
        assert_eq!(m(PadMode::Reflect), vec![0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2]);
        assert_eq!(m(PadMode::Edge), vec![0, 0, 0, 0, 0, 1, 2, 2, 2, 2, 2]);
        assert_eq!(m(PadMode::Wrap), vec![2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(m(PadMode::Constant), vec![-1, -1, -1, -1, 0, 1, 2, -1, -1, -1, -1]);
    }

    #[test]
    fn even_split_sizes() {
        assert_eq!(even_sizes(7, 3), vec![3, 3, 1]);
        assert_eq!(even_sizes(6, 3), vec![2, 2, 2]);
        assert_eq!(even_sizes(5, 4), vec![2, 2, 1, 0]);
    }

    #[test]
    fn topk_breaks_ties_by_index() {
        let a = ndarray::arr1(&[1.0f32, 3.0, 3.0, f32::NAN, 2.0, 3.0]).into_dyn();
        assert_eq!(topk_positions(&a, 0, 4, true), vec![3, 1, 2, 5]);
        assert_eq!(topk_positions(&a, 0, 3, false), vec![0, 4, 1]);
    }

    #[test]
    fn unique_unsorted_keeps_first_occurrence_order() {
        let a = ndarray::arr1(&[2i64, 1, 1, 3, 4, 3]).into_dyn();
        let (g, inv) = unique_groups(&a, 0, false);
        assert_eq!(g, vec![(0, 1), (1, 2), (3, 2), (4, 1)]);
        assert_eq!(inv, vec![0, 1, 1, 2, 3, 2]);
        let (g, inv) = unique_groups(&a, 0, true);
        assert_eq!(g, vec![(1, 2), (0, 1), (3, 2), (4, 1)]);
        assert_eq!(inv, vec![1, 0, 0, 2, 3, 2]);
    }

    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for i in 0..n {
                let mut q = p.clone();
                q.insert(i, n - 1);
                out.push(q);
            }
        }
        out
    }

    #[test]
    fn transpose_matches_ndarray_on_every_permutation() {
        let shapes: &[&[usize]] = &[
            &[],
            &[3],
            &[2, 3],
            &[1, 3],
            &[2, 1, 3],
            &[2, 3, 4],
            &[1, 2, 1, 3],
            &[2, 0, 3],
            &[3, 2, 2, 1, 2],
            &[40, 1, 35],
            &[3, 70, 67],
            &[2, 16, 9, 24],
        ];
        for &shape in shapes {
            let n: usize = shape.iter().product();
            let a = ArrayD::from_shape_vec(IxDyn(shape), (0..n as i64).collect()).unwrap();
            // Also a non-standard-layout input.
            let f = a.view().reversed_axes().to_owned();
            for perm in permutations(shape.len()) {
                assert_eq!(transpose_arr(&a, &perm), own(a.view().permuted_axes(IxDyn(&perm))), "{shape:?} {perm:?}");
                let fp: Vec<usize> = perm.clone();
                assert_eq!(
                    transpose_arr(&f, &fp),
                    own(f.view().permuted_axes(IxDyn(&fp))),
                    "reversed {shape:?} {perm:?}"
                );
            }
        }
    }

    #[test]
    fn remap_tiles_and_broadcasts() {
        let a = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1, 2, 3, 4, 5, 6]).unwrap();
        let t = tile_arr(&a, &[2, 2]).unwrap();
        let want = ndarray::concatenate(Axis(1), &[a.view(), a.view()]).unwrap();
        let want = ndarray::concatenate(Axis(0), &[want.view(), want.view()]).unwrap();
        assert_eq!(t, want);
        let col = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![7, 8]).unwrap();
        let maps = vec![vec![Some(0), Some(1)], vec![Some(0); 3]];
        assert_eq!(remap(col.as_slice().unwrap(), &[2, 1], &maps, &0), vec![7, 7, 7, 8, 8, 8]);
        let p = pad_arr(&a, &[(1, 0), (-1, 2)], PadMode::Constant, &0).unwrap();
        assert_eq!(p.shape(), &[3, 4]);
        assert_eq!(p.iter().copied().collect::<Vec<_>>(), vec![0, 0, 0, 0, 2, 3, 0, 0, 5, 6, 0, 0]);
        let p = pad_arr(&a, &[(0, 0), (2, 2)], PadMode::Reflect, &0).unwrap();
        assert_eq!(p.index_axis(Axis(0), 0).iter().copied().collect::<Vec<_>>(), vec![3, 2, 1, 2, 3, 2, 1]);
    }

    /// Runs every kernel of this file and of misc.rs on random, often invalid, inputs and
    /// attributes: each must return a value or an error, never panic (debug builds also catch
    /// arithmetic overflow).
    #[test]
    fn kernels_never_panic() {
        use crate::{Evaluator, Value};
        use optc_ir::builder::GraphBuilder;
        use optc_ir::{Attribute, Dim, Model, Type};
        use std::collections::HashMap;

        let mut seed =
            std::env::var("OPTC_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x9e3779b97f4a7c15u64);
        let mut rnd = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n.max(1) as u64) as usize
        };
        let big = [0i64, 1, 2, 3, -1, -2, -3, 5, 100, i64::MAX, i64::MIN, 1 << 40];
        let i64s = |v: &[i64]| Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).unwrap());
        let mut pool: Vec<Value> = vec![
            Value::Tensor(Tensor::F32(ArrayD::from_shape_fn(IxDyn(&[2, 3]), |d| d[0] as f32 - d[1] as f32))),
            Value::Tensor(Tensor::F32(ArrayD::from_shape_fn(IxDyn(&[1, 4, 2, 2]), |d| d[1] as f32))),
            Value::Tensor(Tensor::F32(ArrayD::zeros(IxDyn(&[0, 3])))),
            Value::Tensor(Tensor::F32(ndarray::arr0(f32::NAN).into_dyn())),
            Value::Tensor(Tensor::F16(ArrayD::from_elem(IxDyn(&[3]), f16::ONE))),
            Value::Tensor(Tensor::I32(ArrayD::from_shape_fn(IxDyn(&[2, 2, 2]), |d| d[2] as i32))),
            Value::Tensor(Tensor::Bool(ArrayD::from_elem(IxDyn(&[3]), true))),
            Value::Tensor(Tensor::Str(ArrayD::from_elem(IxDyn(&[1, 2]), "a b".to_string()))),
            Value::Tensor(Tensor::Packed { dtype: DType::F8E4M3FN, shape: vec![2], raw: vec![1, 2] }),
            Value::Tensor(Tensor::I64(ndarray::arr0(2).into_dyn())),
            Value::Sequence(vec![]),
            Value::Optional(None),
        ];
        pool.push(Value::Tensor(i64s(&[0, 1])));
        pool.push(Value::Tensor(Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![1, -1]).unwrap())));
        pool.push(Value::Tensor(Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1, 0, 0, 1]).unwrap())));
        pool.push(Value::Tensor(Tensor::F32(ArrayD::from_elem(IxDyn(&[2, 2]), 1.5))));
        pool.push(Value::Tensor(Tensor::F32(ArrayD::from_elem(IxDyn(&[2, 1]), 0.5))));
        pool.push(Value::Tensor(Tensor::F32(ArrayD::from_elem(IxDyn(&[1]), 0.5))));
        for &b in &big {
            pool.push(Value::Tensor(Tensor::I64(ndarray::arr0(b).into_dyn())));
            pool.push(Value::Tensor(i64s(&[b, 1])));
            pool.push(Value::Tensor(i64s(&[1, b, 0, 2])));
        }
        let t0 = pool[0].clone();
        let t1 = pool[1].clone();
        if let (Value::Tensor(a), Value::Tensor(b)) = (&t0, &t1) {
            pool.push(Value::Sequence(vec![a.clone(), a.clone()]));
            pool.push(Value::Sequence(vec![a.clone(), b.clone()]));
            pool.push(Value::Optional(Some(Box::new(t0.clone()))));
        }
        let ops = [
            Op::Reshape,
            Op::Transpose,
            Op::Concat,
            Op::Split,
            Op::Slice,
            Op::Gather,
            Op::GatherElements,
            Op::GatherND,
            Op::ScatterElements,
            Op::Scatter,
            Op::ScatterND,
            Op::TensorScatter,
            Op::Squeeze,
            Op::Unsqueeze,
            Op::Flatten,
            Op::Expand,
            Op::Tile,
            Op::Pad,
            Op::Shape,
            Op::Size,
            Op::ConstantOfShape,
            Op::Constant,
            Op::Identity,
            Op::Range,
            Op::OneHot,
            Op::NonZero,
            Op::TopK,
            Op::Trilu,
            Op::Compress,
            Op::DepthToSpace,
            Op::SpaceToDepth,
            Op::ReverseSequence,
            Op::Unique,
            Op::EyeLike,
            Op::Dropout,
            Op::CenterCropPad,
            Op::Col2Im,
            Op::BitCast,
            Op::SequenceConstruct,
            Op::SequenceAt,
            Op::SequenceEmpty,
            Op::SequenceInsert,
            Op::SequenceErase,
            Op::SequenceLength,
            Op::SplitToSequence,
            Op::ConcatFromSequence,
            Op::Optional,
            Op::OptionalHasElement,
            Op::OptionalGetElement,
            Op::StringConcat,
            Op::StringSplit,
            Op::StringNormalizer,
            Op::Det,
        ];
        let int_attrs = [
            "to",
            "axis",
            "batch_dims",
            "blocksize",
            "k",
            "keepdims",
            "new_axis",
            "num_outputs",
            "allowzero",
            "start",
            "end",
            "upper",
            "largest",
            "sorted",
            "batch_axis",
            "time_axis",
            "maxsplit",
            "dtype",
            "value_int",
        ];
        let ints_attrs =
            ["axes", "perm", "starts", "ends", "shape", "split", "pads", "paddings", "dilations", "strides"];
        let str_attrs = [
            ("mode", "reflect"),
            ("mode", "edge"),
            ("mode", "wrap"),
            ("mode", "CRD"),
            ("reduction", "max"),
            ("reduction", "mul"),
            ("mode", "circular"),
            ("case_change_action", "UPPER"),
            ("delimiter", " "),
        ];
        let mut panics = Vec::new();
        for op in ops {
            for round in 0..400 {
                let opset = [7i64, 9, 11, 13, 16, 18, 25][rnd(7)];
                let mut gb = GraphBuilder::new("fuzz");
                let n_in = rnd(5);
                let mut ins = Vec::new();
                let mut feed = HashMap::new();
                for i in 0..n_in {
                    let name = format!("in{i}");
                    let v = gb.input(&name, DType::F32, vec![Dim::unknown()]).unwrap();
                    if rnd(8) == 0 {
                        ins.push(None);
                        gb.graph.inputs.pop();
                        continue;
                    }
                    ins.push(Some(v));
                    feed.insert(name, pool[rnd(pool.len())].clone());
                }
                let mut attrs = Vec::new();
                for _ in 0..rnd(4) {
                    match rnd(3) {
                        0 => attrs.push(Attribute::int(int_attrs[rnd(int_attrs.len())], big[rnd(big.len())])),
                        1 => {
                            let v: Vec<i64> = (0..rnd(5)).map(|_| big[rnd(big.len())]).collect();
                            attrs.push(Attribute::ints(ints_attrs[rnd(ints_attrs.len())], v));
                        }
                        _ => {
                            let (k, v) = str_attrs[rnd(str_attrs.len())];
                            attrs.push(Attribute::string(k, v));
                        }
                    }
                }
                attrs.sort_by(|a, b| a.name.cmp(&b.name));
                attrs.dedup_by(|a, b| a.name == b.name);
                let n_out = 1 + rnd(3);
                let Ok(outs) = gb.op_n(op.clone(), &ins, attrs, n_out) else { continue };
                for (j, o) in outs.into_iter().enumerate() {
                    let _ = gb.output(o, &format!("out{j}"), Some(Type::tensor(DType::F32, vec![])));
                }
                let model = Model::new(gb.graph, opset);
                let r = std::panic::catch_unwind(|| {
                    if let Ok(ev) = Evaluator::new(&model) {
                        let _ = ev.run(&feed);
                    }
                });
                if r.is_err() {
                    panics.push(format!("{op} opset {opset} round {round}"));
                }
            }
        }
        assert!(panics.is_empty(), "kernels panicked: {panics:#?}");
    }

    /// Timings of the data-movement kernels on f32 (run with `--release --ignored --nocapture`).
    #[test]
    #[ignore]
    fn bench_data_movement() {
        use optc_ir::builder::GraphBuilder;
        use optc_ir::{Attribute, Dim};
        use std::collections::HashMap;
        use std::time::Instant;

        let run = |label: &str, op: Op, attrs: Vec<Attribute>, feed: Vec<Tensor>| {
            let mut gb = GraphBuilder::new("bench");
            let ins: Vec<_> = (0..feed.len())
                .map(|i| Some(gb.input(&format!("in{i}"), DType::F32, vec![Dim::unknown()]).unwrap()))
                .collect();
            let outs = gb.op_n(op, &ins, attrs, 1).unwrap();
            gb.output(outs[0], "out", None).unwrap();
            let g = &gb.graph;
            let node = g.node(g.nodes().next().unwrap());
            let env = HashMap::new();
            let scope = crate::interp::Scope { graph: g, env: &env, parent: None };
            let cx = Ctx { node, opset: 18, scope: &scope };
            let vals: Vec<Value> = feed.into_iter().map(Value::Tensor).collect();
            let refs: Vec<Option<&Value>> = vals.iter().map(Some).collect();
            run(&cx, &refs).unwrap().unwrap();
            let n = 20;
            let t = Instant::now();
            for _ in 0..n {
                std::hint::black_box(run(&cx, &refs).unwrap().unwrap());
            }
            eprintln!("{label:40} {:8.3} ms", t.elapsed().as_secs_f64() * 1e3 / n as f64);
        };
        let f = |shape: &[usize]| {
            Tensor::F32(
                ArrayD::from_shape_vec(IxDyn(shape), (0..shape.iter().product::<usize>()).map(|x| x as f32).collect())
                    .unwrap(),
            )
        };
        let i = |v: Vec<i64>| Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).unwrap());
        let act = || f(&[1, 64, 112, 112]);
        run(
            "Transpose NCHW->NHWC 1x64x112x112",
            Op::Transpose,
            vec![Attribute::ints("perm", vec![0, 2, 3, 1])],
            vec![act()],
        );
        run(
            "Transpose last two 8x12x128x64",
            Op::Transpose,
            vec![Attribute::ints("perm", vec![0, 1, 3, 2])],
            vec![f(&[8, 12, 128, 64])],
        );
        run(
            "Transpose heads 8x128x12x64",
            Op::Transpose,
            vec![Attribute::ints("perm", vec![0, 2, 1, 3])],
            vec![f(&[8, 128, 12, 64])],
        );
        run(
            "Gather rows 30000x768 by 512",
            Op::Gather,
            vec![],
            vec![f(&[30000, 768]), i((0..512).map(|x| x * 37 % 30000).collect())],
        );
        run(
            "Gather axis 1 of 64x1024x16 by 100",
            Op::Gather,
            vec![Attribute::int("axis", 1)],
            vec![f(&[64, 1024, 16]), i((0..100).collect())],
        );
        run("Concat 2x 1x64x112x112 axis 1", Op::Concat, vec![Attribute::int("axis", 1)], vec![act(), act()]);
        run("Concat 2x 1x64x112x112 axis 3", Op::Concat, vec![Attribute::int("axis", 3)], vec![act(), act()]);
        run(
            "Slice 1x64x112x112 [:, :32, 1:-1, ::2]",
            Op::Slice,
            vec![],
            vec![act(), i(vec![0, 1, 0]), i(vec![32, -1, 112]), i(vec![1, 2, 3]), i(vec![1, 1, 2])],
        );
        run(
            "Slice reverse axis 3",
            Op::Slice,
            vec![],
            vec![act(), i(vec![-1]), i(vec![i64::MIN]), i(vec![3]), i(vec![-1])],
        );
        run(
            "Split 1x64x112x112 axis 1 into 2",
            Op::Split,
            vec![Attribute::int("axis", 1), Attribute::int("num_outputs", 1)],
            vec![act()],
        );
        run("Pad 1x64x112x112 by 1", Op::Pad, vec![], vec![act(), i(vec![0, 0, 1, 1, 0, 0, 1, 1])]);
        run("Expand 1x64x1x1 -> 1x64x112x112", Op::Expand, vec![], vec![f(&[1, 64, 1, 1]), i(vec![1, 64, 112, 112])]);
        run("Reshape 1x64x112x112 -> 64x12544", Op::Reshape, vec![], vec![act(), i(vec![64, -1])]);
    }
}
