//! Kernels: elementwise math and activations, numpy-broadcasting binary ops (arithmetic,
//! comparison, logic, bitwise), variadic Max/Min/Sum/Mean, Where, Clip, Cast/CastLike (float8,
//! float4 and int4/int2 included), the Softmax family and CumSum/CumProd.
//!
//! Floats compute in their own type (float16/bfloat16 in f32, rounded back after each op);
//! integer arithmetic wraps like C. [`zip2`]/[`zip3`] broadcast like numpy, with fast paths for
//! same-shape contiguous operands and scalars. The [`Num`] and [`Real`] traits and the
//! broadcasting helpers are public for other kernel families.

#![allow(clippy::unnecessary_cast)]

use super::Ctx;
use crate::error::{EvalError, Result};
use crate::value::{Tensor, Value};
use half::{bf16, f16};
use ndarray::{ArrayD, ArrayViewD, IxDyn, Zip};
use optc_ir::{AttrList, DType, Op};
use std::borrow::Cow;

// ---------------------------------------------------------------------------------------------
// Element traits

/// Element types with arithmetic: every numeric variant of [`Tensor`]. Integer ops wrap; the
/// half types compute in f32 and round back.
pub trait Num: Copy + PartialOrd + Send + Sync + std::fmt::Debug + 'static {
    const ZERO: Self;
    const ONE: Self;
    const FLOAT: bool;
    /// The identity of `max_`: -inf for floats, the minimum for integers.
    const LOWEST: Self;
    /// The identity of `min_`: +inf for floats, the maximum for integers.
    const HIGHEST: Self;
    /// The array inside `t` when `t` holds this type.
    fn of(t: &Tensor) -> Option<&ArrayD<Self>>;
    fn wrap(a: ArrayD<Self>) -> Tensor;
    fn add_(self, o: Self) -> Self;
    fn sub_(self, o: Self) -> Self;
    fn mul_(self, o: Self) -> Self;
    /// Division; integers truncate toward zero and give 0 for a zero divisor.
    fn div_(self, o: Self) -> Self;
    /// Remainder with the sign of the dividend (C `fmod`).
    fn rem_(self, o: Self) -> Self;
    /// Remainder with the sign of the divisor (Python `%`).
    fn modulo_(self, o: Self) -> Self;
    fn neg_(self) -> Self;
    fn abs_(self) -> Self;
    /// -1, 0 or 1 (NaN stays NaN).
    fn sign_(self) -> Self;
    fn is_nan_(self) -> bool;
    fn to_f64_(self) -> f64;
    /// From f64: floats round, integers truncate toward zero and wrap.
    fn from_f64_(v: f64) -> Self;
    /// To i128: integers exactly, floats truncated (saturating, NaN to 0).
    fn to_i128_(self) -> i128;
    /// From i128: integers wrap, floats round to nearest.
    fn from_i128_(v: i128) -> Self;
    /// Maximum propagating NaN.
    #[inline]
    fn max_(self, o: Self) -> Self {
        if self.is_nan_() {
            self
        } else if o.is_nan_() || o > self {
            o
        } else {
            self
        }
    }
    /// Minimum propagating NaN.
    #[inline]
    fn min_(self, o: Self) -> Self {
        if self.is_nan_() {
            self
        } else if o.is_nan_() || o < self {
            o
        } else {
            self
        }
    }
}

/// f32 and f64: the types transcendental kernels compute in.
pub trait Real: Num {
    fn exp_(self) -> Self;
    fn ln_(self) -> Self;
    fn sqrt_(self) -> Self;
    fn is_finite_(self) -> bool;
}

macro_rules! impl_int {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl Num for $t {
            const ZERO: $t = 0;
            const ONE: $t = 1;
            const FLOAT: bool = false;
            const LOWEST: $t = <$t>::MIN;
            const HIGHEST: $t = <$t>::MAX;
            fn of(t: &Tensor) -> Option<&ArrayD<$t>> {
                if let Tensor::$v(a) = t { Some(a) } else { None }
            }
            fn wrap(a: ArrayD<$t>) -> Tensor {
                Tensor::$v(a)
            }
            #[inline]
            fn add_(self, o: $t) -> $t {
                self.wrapping_add(o)
            }
            #[inline]
            fn sub_(self, o: $t) -> $t {
                self.wrapping_sub(o)
            }
            #[inline]
            fn mul_(self, o: $t) -> $t {
                self.wrapping_mul(o)
            }
            #[inline]
            fn div_(self, o: $t) -> $t {
                if o == 0 { 0 } else { self.wrapping_div(o) }
            }
            #[inline]
            fn rem_(self, o: $t) -> $t {
                if o == 0 { 0 } else { self.wrapping_rem(o) }
            }
            #[inline]
            #[allow(unused_comparisons, clippy::absurd_extreme_comparisons)]
            fn modulo_(self, o: $t) -> $t {
                let r = self.rem_(o);
                if r != 0 && ((r < 0) != (o < 0)) { r.wrapping_add(o) } else { r }
            }
            #[inline]
            fn neg_(self) -> $t {
                self.wrapping_neg()
            }
            #[inline]
            #[allow(unused_comparisons, clippy::absurd_extreme_comparisons)]
            fn abs_(self) -> $t {
                if self < 0 { self.wrapping_neg() } else { self }
            }
            #[inline]
            #[allow(unused_comparisons, clippy::absurd_extreme_comparisons)]
            fn sign_(self) -> $t {
                if self > 0 {
                    1
                } else if self < 0 {
                    (0 as $t).wrapping_sub(1)
                } else {
                    0
                }
            }
            #[inline]
            fn is_nan_(self) -> bool {
                false
            }
            #[inline]
            fn to_f64_(self) -> f64 {
                self as f64
            }
            #[inline]
            fn from_f64_(v: f64) -> $t {
                // Truncate, then wrap like C on x86 (no slow i128 conversion).
                if v < 0.0 { v as i64 as $t } else { v as u64 as $t }
            }
            #[inline]
            fn to_i128_(self) -> i128 {
                self as i128
            }
            #[inline]
            fn from_i128_(v: i128) -> $t {
                v as $t
            }
        }
    )*};
}

impl_int!(i8 => I8, i16 => I16, i32 => I32, i64 => I64, u8 => U8, u16 => U16, u32 => U32, u64 => U64);

macro_rules! impl_float {
    ($($t:ident => $v:ident),* $(,)?) => {$(
        impl Num for $t {
            const ZERO: $t = 0.0;
            const ONE: $t = 1.0;
            const FLOAT: bool = true;
            const LOWEST: $t = $t::NEG_INFINITY;
            const HIGHEST: $t = $t::INFINITY;
            fn of(t: &Tensor) -> Option<&ArrayD<$t>> {
                if let Tensor::$v(a) = t { Some(a) } else { None }
            }
            fn wrap(a: ArrayD<$t>) -> Tensor {
                Tensor::$v(a)
            }
            #[inline]
            fn add_(self, o: $t) -> $t {
                self + o
            }
            #[inline]
            fn sub_(self, o: $t) -> $t {
                self - o
            }
            #[inline]
            fn mul_(self, o: $t) -> $t {
                self * o
            }
            #[inline]
            fn div_(self, o: $t) -> $t {
                self / o
            }
            #[inline]
            fn rem_(self, o: $t) -> $t {
                self % o
            }
            #[inline]
            fn modulo_(self, o: $t) -> $t {
                let r = self % o;
                if r != 0.0 && ((r < 0.0) != (o < 0.0)) { r + o } else { r }
            }
            #[inline]
            fn neg_(self) -> $t {
                -self
            }
            #[inline]
            fn abs_(self) -> $t {
                self.abs()
            }
            #[inline]
            fn sign_(self) -> $t {
                if self > 0.0 {
                    1.0
                } else if self < 0.0 {
                    -1.0
                } else {
                    self
                }
            }
            #[inline]
            fn is_nan_(self) -> bool {
                self.is_nan()
            }
            #[inline]
            fn to_f64_(self) -> f64 {
                self as f64
            }
            #[inline]
            fn from_f64_(v: f64) -> $t {
                v as $t
            }
            #[inline]
            fn to_i128_(self) -> i128 {
                self as i128
            }
            #[inline]
            fn from_i128_(v: i128) -> $t {
                // i64 converts in hardware, correctly rounded; i128 only for huge u64 values.
                match i64::try_from(v) {
                    Ok(x) => x as $t,
                    Err(_) => v as $t,
                }
            }
        }

        impl Real for $t {
            #[inline]
            fn exp_(self) -> $t {
                self.exp()
            }
            #[inline]
            fn ln_(self) -> $t {
                self.ln()
            }
            #[inline]
            fn sqrt_(self) -> $t {
                self.sqrt()
            }
            #[inline]
            fn is_finite_(self) -> bool {
                self.is_finite()
            }
        }
    )*};
}

impl_float!(f32 => F32, f64 => F64);

/// `x` rounded to nearest even with `man` mantissa bits and minimum normal exponent `emin`
/// (values too large come out above the format's maximum and convert to infinity).
fn round_to_precision(x: f64, man: i32, emin: i32) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let a = x.abs();
    let e = (((a.to_bits() >> 52) & 0x7ff) as i32 - 1023).max(emin);
    let q = 2f64.powi(e - man);
    ((a / q).round_ties_even() * q).copysign(x)
}

macro_rules! impl_half {
    ($($t:ident => $v:ident, $man:expr, $emin:expr);* $(;)?) => {$(
        impl Num for $t {
            const ZERO: $t = $t::ZERO;
            const ONE: $t = $t::ONE;
            const FLOAT: bool = true;
            const LOWEST: $t = $t::NEG_INFINITY;
            const HIGHEST: $t = $t::INFINITY;
            fn of(t: &Tensor) -> Option<&ArrayD<$t>> {
                if let Tensor::$v(a) = t { Some(a) } else { None }
            }
            fn wrap(a: ArrayD<$t>) -> Tensor {
                Tensor::$v(a)
            }
            #[inline]
            fn add_(self, o: $t) -> $t {
                $t::from_f32(self.to_f32() + o.to_f32())
            }
            #[inline]
            fn sub_(self, o: $t) -> $t {
                $t::from_f32(self.to_f32() - o.to_f32())
            }
            #[inline]
            fn mul_(self, o: $t) -> $t {
                $t::from_f32(self.to_f32() * o.to_f32())
            }
            #[inline]
            fn div_(self, o: $t) -> $t {
                $t::from_f32(self.to_f32() / o.to_f32())
            }
            #[inline]
            fn rem_(self, o: $t) -> $t {
                $t::from_f32(self.to_f32() % o.to_f32())
            }
            #[inline]
            fn modulo_(self, o: $t) -> $t {
                $t::from_f32(self.to_f32().modulo_(o.to_f32()))
            }
            #[inline]
            fn neg_(self) -> $t {
                $t::from_bits(self.to_bits() ^ 0x8000)
            }
            #[inline]
            fn abs_(self) -> $t {
                $t::from_bits(self.to_bits() & 0x7fff)
            }
            #[inline]
            fn sign_(self) -> $t {
                $t::from_f32(self.to_f32().sign_())
            }
            #[inline]
            fn is_nan_(self) -> bool {
                self.is_nan()
            }
            #[inline]
            fn to_f64_(self) -> f64 {
                self.to_f64()
            }
            #[inline]
            fn from_f64_(v: f64) -> $t {
                // half's own from_f64 rounds twice (through f32) on x86; round once, exactly.
                $t::from_f64(round_to_precision(v, $man, $emin))
            }
            #[inline]
            fn to_i128_(self) -> i128 {
                self.to_f32() as i128
            }
            #[inline]
            fn from_i128_(v: i128) -> $t {
                Self::from_f64_(v as f64)
            }
        }
    )*};
}

impl_half!(f16 => F16, 10, -14; bf16 => BF16, 7, -126);

/// Runs `$body` with `$a` bound to the array of any numeric tensor and `$T` naming its element
/// type; other tensors evaluate `$other`.
macro_rules! num_match {
    ($t:expr, $T:ident, $a:ident => $body:expr, _ => $other:expr) => {
        match $t {
            $crate::Tensor::F32($a) => {
                #[allow(dead_code)]
                type $T = f32;
                $body
            }
            $crate::Tensor::F64($a) => {
                #[allow(dead_code)]
                type $T = f64;
                $body
            }
            $crate::Tensor::F16($a) => {
                #[allow(dead_code)]
                type $T = ::half::f16;
                $body
            }
            $crate::Tensor::BF16($a) => {
                #[allow(dead_code)]
                type $T = ::half::bf16;
                $body
            }
            $crate::Tensor::I8($a) => {
                #[allow(dead_code)]
                type $T = i8;
                $body
            }
            $crate::Tensor::I16($a) => {
                #[allow(dead_code)]
                type $T = i16;
                $body
            }
            $crate::Tensor::I32($a) => {
                #[allow(dead_code)]
                type $T = i32;
                $body
            }
            $crate::Tensor::I64($a) => {
                #[allow(dead_code)]
                type $T = i64;
                $body
            }
            $crate::Tensor::U8($a) => {
                #[allow(dead_code)]
                type $T = u8;
                $body
            }
            $crate::Tensor::U16($a) => {
                #[allow(dead_code)]
                type $T = u16;
                $body
            }
            $crate::Tensor::U32($a) => {
                #[allow(dead_code)]
                type $T = u32;
                $body
            }
            $crate::Tensor::U64($a) => {
                #[allow(dead_code)]
                type $T = u64;
                $body
            }
            _ => $other,
        }
    };
}
pub(crate) use num_match;

/// Like [`num_match!`] for the integer variants only.
macro_rules! int_match {
    ($t:expr, $T:ident, $a:ident => $body:expr, _ => $other:expr) => {
        match $t {
            Tensor::I8($a) => {
                #[allow(dead_code)]
                type $T = i8;
                $body
            }
            Tensor::I16($a) => {
                #[allow(dead_code)]
                type $T = i16;
                $body
            }
            Tensor::I32($a) => {
                #[allow(dead_code)]
                type $T = i32;
                $body
            }
            Tensor::I64($a) => {
                #[allow(dead_code)]
                type $T = i64;
                $body
            }
            Tensor::U8($a) => {
                #[allow(dead_code)]
                type $T = u8;
                $body
            }
            Tensor::U16($a) => {
                #[allow(dead_code)]
                type $T = u16;
                $body
            }
            Tensor::U32($a) => {
                #[allow(dead_code)]
                type $T = u32;
                $body
            }
            Tensor::U64($a) => {
                #[allow(dead_code)]
                type $T = u64;
                $body
            }
            _ => $other,
        }
    };
}

/// Maps a float tensor elementwise with `$body` (`$x` of type `$T`: f32 or f64; float16 and
/// bfloat16 compute in f32). `None` for other tensors.
macro_rules! fmap {
    ($t:expr, $T:ident, $x:ident => $body:expr) => {
        match $t {
            Tensor::F32(a) => {
                type $T = f32;
                Some(Tensor::F32(a.mapv(|$x: $T| $body)))
            }
            Tensor::F64(a) => {
                type $T = f64;
                Some(Tensor::F64(a.mapv(|$x: $T| $body)))
            }
            Tensor::F16(a) => {
                type $T = f32;
                Some(Tensor::F16(a.mapv(|h| {
                    let $x: $T = h.to_f32();
                    f16::from_f32($body)
                })))
            }
            Tensor::BF16(a) => {
                type $T = f32;
                Some(Tensor::BF16(a.mapv(|h| {
                    let $x: $T = h.to_f32();
                    bf16::from_f32($body)
                })))
            }
            _ => None,
        }
    };
}

/// Runs `$body` (an `Option<ArrayD<T>>` computed from the view `$a`, `T: Real`) on a float
/// tensor; float16/bfloat16 go through f32. `None` for other tensors or when `$body` is.
macro_rules! real_match {
    ($t:expr, $a:ident => $body:expr) => {
        match $t {
            $crate::Tensor::F32(x) => {
                let $a = x.view();
                $body.map($crate::Tensor::F32)
            }
            $crate::Tensor::F64(x) => {
                let $a = x.view();
                $body.map($crate::Tensor::F64)
            }
            $crate::Tensor::F16(x) => {
                let c = x.mapv(|v| v.to_f32());
                let $a = c.view();
                $body.map(|r| $crate::Tensor::F16(r.mapv(::half::f16::from_f32)))
            }
            $crate::Tensor::BF16(x) => {
                let c = x.mapv(|v| v.to_f32());
                let $a = c.view();
                $body.map(|r| $crate::Tensor::BF16(r.mapv(::half::bf16::from_f32)))
            }
            _ => None,
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Broadcasting

/// The numpy broadcast of several shapes, or `None` when they are incompatible.
pub fn broadcast_shapes(shapes: &[&[usize]]) -> Option<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return None;
            }
        }
    }
    Some(out)
}

/// `f` over two arrays broadcast together (numpy rules); `None` when the shapes do not broadcast.
pub fn zip2<A, B, C>(a: ArrayViewD<A>, b: ArrayViewD<B>, f: impl Fn(&A, &B) -> C) -> Option<ArrayD<C>> {
    if a.shape() == b.shape() {
        if let (Some(x), Some(y)) = (a.as_slice(), b.as_slice()) {
            let v: Vec<C> = x.iter().zip(y).map(|(p, q)| f(p, q)).collect();
            return ArrayD::from_shape_vec(a.raw_dim(), v).ok();
        }
        return Some(Zip::from(a).and(b).map_collect(&f));
    }
    if b.len() == 1 && b.ndim() <= a.ndim() {
        let q = b.iter().next()?;
        return Some(a.map(|p| f(p, q)));
    }
    if a.len() == 1 && a.ndim() <= b.ndim() {
        let p = a.iter().next()?;
        return Some(b.map(|q| f(p, q)));
    }
    let out = broadcast_shapes(&[a.shape(), b.shape()])?;
    if let (Some(x), Some(y)) = (a.as_slice(), b.as_slice()) {
        let v = zip2_contiguous(x, a.shape(), y, b.shape(), &out, &f);
        return ArrayD::from_shape_vec(IxDyn(&out), v).ok();
    }
    let shape = IxDyn(&out);
    let (x, y) = (a.broadcast(shape.clone())?, b.broadcast(shape)?);
    Some(Zip::from(x).and(y).map_collect(&f))
}

/// Element strides of a contiguous operand of shape `s` broadcast to `out` (0 along broadcast dims).
fn bcast_strides(s: &[usize], out: &[usize]) -> Vec<usize> {
    let mut st = vec![0usize; out.len()];
    let lead = out.len() - s.len();
    let mut acc = 1usize;
    for i in (0..s.len()).rev() {
        if s[i] != 1 {
            st[lead + i] = acc;
        }
        acc *= s[i];
    }
    st
}

/// [`zip2`] on contiguous operands with broadcasting: the output dims are merged into runs over
/// which each operand either advances by one or stays, and the innermost run is a plain loop
/// over slices (so it vectorises), instead of a per-element strided walk.
fn zip2_contiguous<A, B, C>(
    x: &[A],
    xs: &[usize],
    y: &[B],
    ys: &[usize],
    out: &[usize],
    f: &impl Fn(&A, &B) -> C,
) -> Vec<C> {
    let total: usize = out.iter().product();
    let (sx, sy) = (bcast_strides(xs, out), bcast_strides(ys, out));
    // (len, x stride, y stride), outermost first, dims of length 1 dropped, mergeable dims merged.
    let mut dims: Vec<(usize, usize, usize)> = Vec::with_capacity(out.len());
    for i in 0..out.len() {
        let (n, a, b) = (out[i], sx[i], sy[i]);
        if n == 1 {
            continue;
        }
        match dims.last_mut() {
            Some(l) if l.1 == a * n && l.2 == b * n => *l = (l.0 * n, a, b),
            _ => dims.push((n, a, b)),
        }
    }
    let mut v: Vec<C> = Vec::with_capacity(total);
    if total == 0 {
        return v;
    }
    let Some(&(n, ia, ib)) = dims.last() else {
        v.push(f(&x[0], &y[0]));
        return v;
    };
    let outer = &dims[..dims.len() - 1];
    let mut idx = vec![0usize; outer.len()];
    let (mut ox, mut oy) = (0usize, 0usize);
    for _ in 0..total / n {
        match (ia, ib) {
            (1, 1) => v.extend(x[ox..ox + n].iter().zip(&y[oy..oy + n]).map(|(p, q)| f(p, q))),
            (1, 0) => {
                let q = &y[oy];
                v.extend(x[ox..ox + n].iter().map(|p| f(p, q)))
            }
            (0, 1) => {
                let p = &x[ox];
                v.extend(y[oy..oy + n].iter().map(|q| f(p, q)))
            }
            _ => v.extend((0..n).map(|j| f(&x[ox + j * ia], &y[oy + j * ib]))),
        }
        for d in (0..outer.len()).rev() {
            idx[d] += 1;
            ox += outer[d].1;
            oy += outer[d].2;
            if idx[d] < outer[d].0 {
                break;
            }
            ox -= outer[d].1 * outer[d].0;
            oy -= outer[d].2 * outer[d].0;
            idx[d] = 0;
        }
    }
    v
}

/// `f` over three arrays broadcast together; `None` when the shapes do not broadcast.
pub fn zip3<A, B, C, D>(
    a: ArrayViewD<A>,
    b: ArrayViewD<B>,
    c: ArrayViewD<C>,
    f: impl Fn(&A, &B, &C) -> D,
) -> Option<ArrayD<D>> {
    let shape = broadcast_shapes(&[a.shape(), b.shape(), c.shape()])?;
    let same = a.shape() == shape.as_slice() && b.shape() == shape.as_slice() && c.shape() == shape.as_slice();
    if let (true, Some(x), Some(y), Some(z)) = (same, a.as_slice(), b.as_slice(), c.as_slice()) {
        let v: Vec<D> = x.iter().zip(y).zip(z).map(|((p, q), r)| f(p, q, r)).collect();
        return ArrayD::from_shape_vec(a.raw_dim(), v).ok();
    }
    let shape = IxDyn(&shape);
    let (x, y, z) = (a.broadcast(shape.clone())?, b.broadcast(shape.clone())?, c.broadcast(shape)?);
    Some(Zip::from(x).and(y).and(z).map_collect(&f))
}

/// The second operand of a binary op as a view. Before opset 7, `broadcast=1` with `axis` aligns
/// B's dims with A's starting at `axis` instead of at the end.
fn rhs<'a, T>(cx: &Ctx, a_shape: &[usize], b: &'a ArrayD<T>) -> ArrayViewD<'a, T> {
    let axis = match cx.node.attrs.get_int("axis") {
        Some(axis) if cx.opset < 7 && cx.attr_int("broadcast", 0) != 0 => axis,
        _ => return b.view(),
    };
    let rank = a_shape.len() as i64;
    let axis = if axis < 0 { axis + rank } else { axis };
    if axis < 0 || axis as usize + b.ndim() > a_shape.len() {
        return b.view();
    }
    let mut s = vec![1usize; a_shape.len()];
    s[axis as usize..axis as usize + b.ndim()].copy_from_slice(b.shape());
    b.view().into_shape_with_order(IxDyn(&s)).unwrap_or_else(|_| b.view())
}

fn unsupported(cx: &Ctx, t: &Tensor) -> EvalError {
    cx.err(format!("element type {} is not supported", t.dtype()))
}

fn differ(cx: &Ctx, a: &Tensor, b: &Tensor) -> EvalError {
    cx.err(format!("inputs have different element types ({} and {})", a.dtype(), b.dtype()))
}

fn no_broadcast(cx: &Ctx, a: &[usize], b: &[usize]) -> EvalError {
    cx.err(format!("shapes {a:?} and {b:?} do not broadcast"))
}

fn norm_axis(cx: &Ctx, axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(cx.err(format!("axis {axis} is out of range for rank {rank}")));
    }
    Ok(a as usize)
}

// ---------------------------------------------------------------------------------------------
// Dispatch

pub fn run(cx: &Ctx, inputs: &[Option<&Value>]) -> Option<Result<Vec<Value>>> {
    let r = match &cx.node.op {
        Op::Abs | Op::Neg | Op::Sign | Op::Relu => num_unary(cx, inputs),
        Op::Exp
        | Op::Log
        | Op::Sqrt
        | Op::Reciprocal
        | Op::Floor
        | Op::Ceil
        | Op::Round
        | Op::Sin
        | Op::Cos
        | Op::Tan
        | Op::Asin
        | Op::Acos
        | Op::Atan
        | Op::Sinh
        | Op::Cosh
        | Op::Asinh
        | Op::Acosh
        | Op::Atanh
        | Op::Erf
        | Op::Tanh
        | Op::Sigmoid
        | Op::HardSigmoid
        | Op::HardSwish
        | Op::Softplus
        | Op::Softsign
        | Op::Elu
        | Op::Selu
        | Op::Celu
        | Op::LeakyRelu
        | Op::ThresholdedRelu
        | Op::Gelu
        | Op::Mish
        | Op::Swish => float_unary(cx, inputs),
        Op::IsNaN | Op::IsInf => is_nan_inf(cx, inputs),
        Op::Not | Op::BitwiseNot => not(cx, inputs),
        Op::Shrink => shrink(cx, inputs),
        Op::PRelu => prelu(cx, inputs),
        Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Mod => arith(cx, inputs),
        Op::Pow => pow(cx, inputs),
        Op::Equal | Op::Less | Op::LessOrEqual | Op::Greater | Op::GreaterOrEqual => compare(cx, inputs),
        Op::And | Op::Or | Op::Xor => logical(cx, inputs),
        Op::BitwiseAnd | Op::BitwiseOr | Op::BitwiseXor | Op::BitShift => bitwise(cx, inputs),
        Op::Max | Op::Min | Op::Sum | Op::Mean => variadic(cx, inputs),
        Op::Where => where_(cx, inputs),
        Op::Clip => clip(cx, inputs),
        Op::Cast | Op::CastLike => cast_op(cx, inputs),
        Op::Softmax | Op::LogSoftmax | Op::Hardmax => softmax(cx, inputs),
        Op::CumSum | Op::CumProd => cumulative(cx, inputs),
        _ => return None,
    };
    Some(r.map(|t| vec![Value::Tensor(t)]))
}

// ---------------------------------------------------------------------------------------------
// Unary

#[allow(clippy::absurd_extreme_comparisons)]
fn num_unary(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    let op = &cx.node.op;
    num_match!(x, T, a => Ok(T::wrap(match op {
        Op::Abs => a.mapv(T::abs_),
        Op::Neg => a.mapv(T::neg_),
        Op::Sign => a.mapv(T::sign_),
        _ => a.mapv(|v| if v < T::ZERO { T::ZERO } else { v }),
    })), _ => Err(unsupported(cx, x)))
}

/// Softplus, written to avoid overflow of `exp` for large inputs.
macro_rules! softplus {
    ($v:expr) => {{
        let v = $v;
        if v > 0.0 { v + (-v).exp().ln_1p() } else { v.exp().ln_1p() }
    }};
}

/// Logistic sigmoid without overflow for large negative inputs.
macro_rules! sigmoid {
    ($v:expr) => {{
        let v = $v;
        if v >= 0.0 {
            1.0 / (1.0 + (-v).exp())
        } else {
            let e = v.exp();
            e / (1.0 + e)
        }
    }};
}

fn float_unary(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    let alpha = |d: f32| cx.attr_float("alpha", d);
    let r = match &cx.node.op {
        Op::Exp => fmap!(x, T, v => v.exp()),
        Op::Log => fmap!(x, T, v => v.ln()),
        Op::Sqrt => fmap!(x, T, v => v.sqrt()),
        Op::Reciprocal => fmap!(x, T, v => 1.0 / v),
        Op::Floor => fmap!(x, T, v => v.floor()),
        Op::Ceil => fmap!(x, T, v => v.ceil()),
        Op::Round => fmap!(x, T, v => v.round_ties_even()),
        Op::Sin => fmap!(x, T, v => v.sin()),
        Op::Cos => fmap!(x, T, v => v.cos()),
        Op::Tan => fmap!(x, T, v => v.tan()),
        Op::Asin => fmap!(x, T, v => v.asin()),
        Op::Acos => fmap!(x, T, v => v.acos()),
        Op::Atan => fmap!(x, T, v => v.atan()),
        Op::Sinh => fmap!(x, T, v => v.sinh()),
        Op::Cosh => fmap!(x, T, v => v.cosh()),
        Op::Asinh => fmap!(x, T, v => v.asinh()),
        Op::Acosh => fmap!(x, T, v => v.acosh()),
        Op::Atanh => fmap!(x, T, v => v.atanh()),
        Op::Erf => fmap!(x, T, v => libm::erf(v as f64) as T),
        Op::Tanh => fmap!(x, T, v => v.tanh()),
        Op::Sigmoid => fmap!(x, T, v => sigmoid!(v)),
        Op::HardSigmoid => {
            let (a, b) = (alpha(0.2), cx.attr_float("beta", 0.5));
            fmap!(x, T, v => (a as T * v + b as T).clamp(0.0, 1.0))
        }
        Op::HardSwish => fmap!(x, T, v => v * (v / 6.0 + 0.5).clamp(0.0, 1.0)),
        Op::Softplus => fmap!(x, T, v => softplus!(v)),
        Op::Softsign => fmap!(x, T, v => v / (1.0 + v.abs())),
        Op::Elu => {
            let a = alpha(1.0);
            fmap!(x, T, v => if v < 0.0 { a as T * v.exp_m1() } else { v })
        }
        Op::Selu => {
            let (a, g) = (alpha(1.673_263_2), cx.attr_float("gamma", 1.050_701));
            fmap!(x, T, v => if v > 0.0 { g as T * v } else { g as T * (a as T * v.exp() - a as T) })
        }
        Op::Celu => {
            let a = alpha(1.0);
            fmap!(x, T, v => if v > 0.0 { v } else { a as T * (v / a as T).exp_m1() })
        }
        Op::LeakyRelu => {
            let a = alpha(0.01);
            fmap!(x, T, v => if v < 0.0 { a as T * v } else { v })
        }
        Op::ThresholdedRelu => {
            let a = alpha(1.0);
            fmap!(x, T, v => if v > a as T { v } else { 0.0 })
        }
        Op::Gelu => match cx.attr_string("approximate", "none").as_str() {
            "none" => fmap!(x, T, v => {
                let f = v as f64;
                (0.5 * f * (1.0 + libm::erf(f * std::f64::consts::FRAC_1_SQRT_2))) as T
            }),
            "tanh" => fmap!(x, T, v => {
                let c = (2.0 / std::f64::consts::PI).sqrt() as T;
                0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
            }),
            other => return Err(cx.err(format!("unknown approximate mode '{other}'"))),
        },
        Op::Mish => fmap!(x, T, v => v * softplus!(v).tanh()),
        Op::Swish => {
            let a = alpha(1.0);
            fmap!(x, T, v => v * sigmoid!(a as T * v))
        }
        _ => None,
    };
    r.ok_or_else(|| unsupported(cx, x))
}

fn is_nan_inf(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    let nan = matches!(cx.node.op, Op::IsNaN);
    let (neg, pos) = (cx.attr_int("detect_negative", 1) != 0, cx.attr_int("detect_positive", 1) != 0);
    let f = |v: f64| if nan { v.is_nan() } else { v.is_infinite() && if v > 0.0 { pos } else { neg } };
    Ok(Tensor::Bool(match x {
        Tensor::F32(a) => a.mapv(|v| f(v as f64)),
        Tensor::F64(a) => a.mapv(f),
        Tensor::F16(a) => a.mapv(|v| f(v.to_f64())),
        Tensor::BF16(a) => a.mapv(|v| f(v.to_f64())),
        _ => return Err(unsupported(cx, x)),
    }))
}

fn not(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    match (&cx.node.op, x) {
        (Op::Not, Tensor::Bool(a)) => Ok(Tensor::Bool(a.mapv(|v| !v))),
        (Op::BitwiseNot, _) => int_match!(x, T, a => Ok(T::wrap(a.mapv(|v| !v))), _ => Err(unsupported(cx, x))),
        _ => Err(unsupported(cx, x)),
    }
}

fn shrink(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    let (bias, lambd) = (cx.attr_float("bias", 0.0) as f64, cx.attr_float("lambd", 0.5) as f64);
    num_match!(x, T, a => Ok(T::wrap(a.mapv(|v| {
        let f = v.to_f64_();
        if f < -lambd {
            T::from_f64_(f + bias)
        } else if f > lambd {
            T::from_f64_(f - bias)
        } else {
            T::ZERO
        }
    }))), _ => Err(unsupported(cx, x)))
}

#[allow(clippy::absurd_extreme_comparisons)]
fn prelu(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let (x, s) = (cx.tensor(inputs, 0)?, cx.tensor(inputs, 1)?);
    num_match!(x, T, a => {
        let k = T::of(s).ok_or_else(|| differ(cx, x, s))?;
        let mut kv = k.view();
        if broadcast_shapes(&[a.shape(), k.shape()]).is_none()
            && k.ndim() == 1
            && a.ndim() >= 2
            && k.len() == a.shape()[1]
        {
            // Old models give one slope per channel (dimension 1).
            let mut shape = vec![1usize; a.ndim() - 1];
            shape[0] = k.len();
            kv = k.view().into_shape_with_order(IxDyn(&shape)).map_err(|e| cx.err(e.to_string()))?;
        }
        let r = zip2(a.view(), kv, |&v, &k| if v < T::ZERO { v.mul_(k) } else { v });
        Ok(T::wrap(r.ok_or_else(|| no_broadcast(cx, a.shape(), k.shape()))?))
    }, _ => Err(unsupported(cx, x)))
}

// ---------------------------------------------------------------------------------------------
// Binary

fn arith(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let (a, b) = (cx.tensor(inputs, 0)?, cx.tensor(inputs, 1)?);
    let op = &cx.node.op;
    let fmod = cx.attr_int("fmod", 0) != 0;
    num_match!(a, T, x => {
        let y = T::of(b).ok_or_else(|| differ(cx, a, b))?;
        if !T::FLOAT && matches!(op, Op::Div | Op::Mod) && y.iter().any(|&v| v == T::ZERO) {
            return Err(cx.err("integer division by zero"));
        }
        let (xv, yv) = (x.view(), rhs(cx, x.shape(), y));
        let r = match op {
            Op::Add => zip2(xv, yv, |&p, &q| p.add_(q)),
            Op::Sub => zip2(xv, yv, |&p, &q| p.sub_(q)),
            Op::Mul => zip2(xv, yv, |&p, &q| p.mul_(q)),
            Op::Div => zip2(xv, yv, |&p, &q| p.div_(q)),
            _ if fmod => zip2(xv, yv, |&p, &q| p.rem_(q)),
            _ => zip2(xv, yv, |&p, &q| p.modulo_(q)),
        };
        Ok(T::wrap(r.ok_or_else(|| no_broadcast(cx, x.shape(), y.shape()))?))
    }, _ => Err(unsupported(cx, a)))
}

/// Integer power by squaring (wrapping); negative exponents give 1/base^n truncated.
fn ipow<T: Num>(base: T, exp: i64) -> T {
    if exp < 0 {
        return match base.to_i128_() {
            1 => T::ONE,
            -1 if exp % 2 == 0 => T::ONE,
            -1 => base,
            _ => T::ZERO,
        };
    }
    let (mut r, mut b, mut e) = (T::ONE, base, exp as u64);
    while e > 0 {
        if e & 1 == 1 {
            r = r.mul_(b);
        }
        e >>= 1;
        if e > 0 {
            b = b.mul_(b);
        }
    }
    r
}

fn is_float_tensor(t: &Tensor) -> bool {
    matches!(t, Tensor::F32(_) | Tensor::F64(_) | Tensor::F16(_) | Tensor::BF16(_))
}

fn cast_cow<'a>(cx: &Ctx, t: &'a Tensor, to: DType) -> Result<Cow<'a, Tensor>> {
    if t.dtype() == to { Ok(Cow::Borrowed(t)) } else { cast(t, to).map(Cow::Owned).map_err(|m| cx.err(m)) }
}

/// Pow: the output has the base's type; the exponent may have any numeric type.
fn pow(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let (a, b) = (cx.tensor(inputs, 0)?, cx.tensor(inputs, 1)?);
    let int_like = |t: &Tensor| matches!(t.dtype(), DType::Bool) || t.dtype().is_int();
    if !is_float_tensor(a) && !a.dtype().is_int() {
        return Err(unsupported(cx, a));
    }
    if !is_float_tensor(b) && !int_like(b) {
        return Err(unsupported(cx, b));
    }
    if !is_float_tensor(a) && int_like(b) {
        // Integer base and exponent: exact integer power.
        let e = cast_cow(cx, b, DType::I64)?;
        let Tensor::I64(e) = &*e else { return Err(unsupported(cx, b)) };
        return int_match!(a, T, x => {
            let r = zip2(x.view(), rhs(cx, x.shape(), e), |&p, &q| ipow(p, q));
            Ok(T::wrap(r.ok_or_else(|| no_broadcast(cx, x.shape(), e.shape()))?))
        }, _ => Err(unsupported(cx, a)));
    }
    // Otherwise compute in f64 when either side is f64 or the base is an integer, else in f32
    // (also for float16/bfloat16), and cast back to the base's type.
    let ct = if matches!(a, Tensor::F64(_)) || matches!(b, Tensor::F64(_)) || !is_float_tensor(a) {
        DType::F64
    } else {
        DType::F32
    };
    let (x, y) = (cast_cow(cx, a, ct)?, cast_cow(cx, b, ct)?);
    let r = match (&*x, &*y) {
        // x^2 (common in decomposed norms) is exactly x*x.
        (Tensor::F32(p), Tensor::F32(q)) if q.len() == 1 && q.ndim() <= p.ndim() && q.iter().all(|&e| e == 2.0) => {
            Some(Tensor::F32(p.mapv(|u| u * u)))
        }
        (Tensor::F32(p), Tensor::F32(q)) => zip2(p.view(), rhs(cx, p.shape(), q), |&u, &v| u.powf(v)).map(Tensor::F32),
        (Tensor::F64(p), Tensor::F64(q)) => zip2(p.view(), rhs(cx, p.shape(), q), |&u, &v| u.powf(v)).map(Tensor::F64),
        _ => return Err(unsupported(cx, a)),
    };
    let r = r.ok_or_else(|| no_broadcast(cx, &a.shape(), &b.shape()))?;
    if r.dtype() == a.dtype() { Ok(r) } else { cast(&r, a.dtype()).map_err(|m| cx.err(m)) }
}

fn cmp_arrays<T: PartialOrd>(cx: &Ctx, x: &ArrayD<T>, y: &ArrayD<T>) -> Option<ArrayD<bool>> {
    let (xv, yv) = (x.view(), rhs(cx, x.shape(), y));
    match cx.node.op {
        Op::Equal => zip2(xv, yv, |p, q| p == q),
        Op::Less => zip2(xv, yv, |p, q| p < q),
        Op::LessOrEqual => zip2(xv, yv, |p, q| p <= q),
        Op::Greater => zip2(xv, yv, |p, q| p > q),
        _ => zip2(xv, yv, |p, q| p >= q),
    }
}

fn compare(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let (a, b) = (cx.tensor(inputs, 0)?, cx.tensor(inputs, 1)?);
    let r = match (a, b) {
        (Tensor::Bool(x), Tensor::Bool(y)) => cmp_arrays(cx, x, y),
        (Tensor::Str(x), Tensor::Str(y)) => cmp_arrays(cx, x, y),
        _ => num_match!(a, T, x => {
            let y = T::of(b).ok_or_else(|| differ(cx, a, b))?;
            cmp_arrays(cx, x, y)
        }, _ => return Err(unsupported(cx, a))),
    };
    r.map(Tensor::Bool).ok_or_else(|| no_broadcast(cx, &a.shape(), &b.shape()))
}

fn logical(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let (a, b) = (cx.tensor(inputs, 0)?, cx.tensor(inputs, 1)?);
    let (Tensor::Bool(x), Tensor::Bool(y)) = (a, b) else {
        return Err(cx.err(format!("inputs must be bool tensors, not {} and {}", a.dtype(), b.dtype())));
    };
    let (xv, yv) = (x.view(), rhs(cx, x.shape(), y));
    let r = match cx.node.op {
        Op::And => zip2(xv, yv, |&p, &q| p & q),
        Op::Or => zip2(xv, yv, |&p, &q| p | q),
        _ => zip2(xv, yv, |&p, &q| p ^ q),
    };
    r.map(Tensor::Bool).ok_or_else(|| no_broadcast(cx, x.shape(), y.shape()))
}

fn bitwise(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let (a, b) = (cx.tensor(inputs, 0)?, cx.tensor(inputs, 1)?);
    let right = match cx.attr_string("direction", "").as_str() {
        "RIGHT" => true,
        "LEFT" => false,
        d if matches!(cx.node.op, Op::BitShift) => {
            return Err(cx.err(format!("direction must be LEFT or RIGHT, not '{d}'")));
        }
        _ => false,
    };
    int_match!(a, T, x => {
        let y = T::of(b).ok_or_else(|| differ(cx, a, b))?;
        let (xv, yv) = (x.view(), rhs(cx, x.shape(), y));
        let r = match cx.node.op {
            Op::BitwiseAnd => zip2(xv, yv, |&p, &q| p & q),
            Op::BitwiseOr => zip2(xv, yv, |&p, &q| p | q),
            Op::BitwiseXor => zip2(xv, yv, |&p, &q| p ^ q),
            _ => zip2(xv, yv, |&p, &q| {
                let s = u32::try_from(q.to_i128_()).ok();
                let r = if right { s.and_then(|s| p.checked_shr(s)) } else { s.and_then(|s| p.checked_shl(s)) };
                r.unwrap_or(0)
            }),
        };
        Ok(T::wrap(r.ok_or_else(|| no_broadcast(cx, x.shape(), y.shape()))?))
    }, _ => Err(unsupported(cx, a)))
}

/// Max/Min/Sum/Mean over any number of broadcast inputs (Max and Min propagate NaN).
fn variadic(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let ts: Vec<&Tensor> = (0..inputs.len()).map(|i| cx.tensor(inputs, i)).collect::<Result<_>>()?;
    let Some(&first) = ts.first() else { return Err(cx.err("needs at least one input")) };
    let op = &cx.node.op;
    num_match!(first, T, a0 => {
        let mut acc: ArrayD<T> = a0.clone();
        for &t in &ts[1..] {
            let y = T::of(t).ok_or_else(|| differ(cx, first, t))?;
            let r = match op {
                Op::Max => zip2(acc.view(), y.view(), |&p, &q| p.max_(q)),
                Op::Min => zip2(acc.view(), y.view(), |&p, &q| p.min_(q)),
                _ => zip2(acc.view(), y.view(), |&p, &q| p.add_(q)),
            };
            acc = r.ok_or_else(|| no_broadcast(cx, acc.shape(), y.shape()))?;
        }
        if matches!(op, Op::Mean) {
            let n = T::from_f64_(ts.len() as f64);
            acc.mapv_inplace(|v| v.div_(n));
        }
        Ok(T::wrap(acc))
    }, _ => Err(unsupported(cx, first)))
}

#[allow(clippy::clone_on_copy)]
fn where_(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let c = cx.tensor(inputs, 0)?;
    let Tensor::Bool(c) = c else {
        return Err(cx.err(format!("the condition must be a bool tensor, not {}", c.dtype())));
    };
    let (x, y) = (cx.tensor(inputs, 1)?, cx.tensor(inputs, 2)?);
    macro_rules! select {
        ($($v:ident),*) => {
            match (x, y) {
                $((Tensor::$v(p), Tensor::$v(q)) => {
                    zip3(c.view(), p.view(), q.view(), |&c, p, q| if c { p.clone() } else { q.clone() })
                        .map(Tensor::$v)
                })*
                _ => return Err(differ(cx, x, y)),
            }
        };
    }
    select!(F32, F64, F16, BF16, I8, I16, I32, I64, U8, U16, U32, U64, Bool, Str)
        .ok_or_else(|| cx.err(format!("shapes {:?}, {:?} and {:?} do not broadcast", c.shape(), x.shape(), y.shape())))
}

/// Clip: bounds are attributes before opset 11 and optional scalar inputs from then on; when
/// min > max every value becomes max.
fn clip(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    num_match!(x, T, a => {
        let bound = |i: usize, name: &str, default: T| -> Result<T> {
            if cx.opset < 11 {
                return Ok(cx.node.attrs.get_float(name).map_or(default, |v| T::from_f64_(v as f64)));
            }
            let Some(t) = cx.opt_tensor(inputs, i)? else { return Ok(default) };
            let arr = T::of(t).ok_or_else(|| differ(cx, x, t))?;
            match arr.iter().next() {
                Some(&v) if arr.len() == 1 => Ok(v),
                _ => Err(cx.err(format!("{name} must be a scalar, its shape is {:?}", arr.shape()))),
            }
        };
        let (lo_default, hi_default) = if cx.opset < 11 {
            (T::from_f64_(f32::MIN as f64), T::from_f64_(f32::MAX as f64))
        } else {
            (T::LOWEST, T::HIGHEST)
        };
        let lo = bound(1, "min", lo_default)?;
        let hi = bound(2, "max", hi_default)?;
        Ok(T::wrap(a.mapv(|v| {
            let v = if v < lo { lo } else { v };
            if v > hi { hi } else { v }
        })))
    }, _ => Err(unsupported(cx, x)))
}

// ---------------------------------------------------------------------------------------------
// Cast

/// ONNX's legacy (Cast-1) type names.
fn legacy_type_name(s: &str) -> Option<DType> {
    Some(match s.to_ascii_uppercase().as_str() {
        "FLOAT" => DType::F32,
        "DOUBLE" => DType::F64,
        "FLOAT16" => DType::F16,
        "BFLOAT16" => DType::BF16,
        "INT8" => DType::I8,
        "INT16" => DType::I16,
        "INT32" => DType::I32,
        "INT64" => DType::I64,
        "UINT8" => DType::U8,
        "UINT16" => DType::U16,
        "UINT32" => DType::U32,
        "UINT64" => DType::U64,
        "BOOL" => DType::Bool,
        "STRING" => DType::String,
        _ => return None,
    })
}

fn cast_op(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    let to = if matches!(cx.node.op, Op::CastLike) {
        cx.tensor(inputs, 1)?.dtype()
    } else if let Some(code) = cx.node.attrs.get_int("to") {
        i32::try_from(code)
            .ok()
            .and_then(DType::from_onnx)
            .ok_or_else(|| cx.err(format!("unknown type code {code}")))?
    } else if let Some(name) = cx.node.attrs.get_string("to") {
        legacy_type_name(name).ok_or_else(|| cx.err(format!("unknown type name '{name}'")))?
    } else {
        return Err(cx.err("the attribute 'to' is required"));
    };
    let saturate = cx.attr_int("saturate", 1) != 0;
    let round_mode = cx.attr_string("round_mode", "up");
    if !matches!(round_mode.as_str(), "up" | "down" | "nearest") {
        return Err(cx.err(format!("round_mode must be up, down or nearest, not '{round_mode}'")));
    }
    cast_with(x, to, saturate, &round_mode).map_err(|m| cx.err(m))
}

/// Casts to `to` with ONNX's default options (saturating float8, `round_mode` up).
pub fn cast(t: &Tensor, to: DType) -> std::result::Result<Tensor, String> {
    cast_with(t, to, true, "up")
}

macro_rules! target_match {
    ($to:expr, $D:ident => $body:expr) => {
        match $to {
            DType::F32 => {
                type $D = f32;
                Ok($body)
            }
            DType::F64 => {
                type $D = f64;
                Ok($body)
            }
            DType::F16 => {
                type $D = f16;
                Ok($body)
            }
            DType::BF16 => {
                type $D = bf16;
                Ok($body)
            }
            DType::I8 => {
                type $D = i8;
                Ok($body)
            }
            DType::I16 => {
                type $D = i16;
                Ok($body)
            }
            DType::I32 => {
                type $D = i32;
                Ok($body)
            }
            DType::I64 => {
                type $D = i64;
                Ok($body)
            }
            DType::U8 => {
                type $D = u8;
                Ok($body)
            }
            DType::U16 => {
                type $D = u16;
                Ok($body)
            }
            DType::U32 => {
                type $D = u32;
                Ok($body)
            }
            DType::U64 => {
                type $D = u64;
                Ok($body)
            }
            other => Err(format!("cannot cast to {other}")),
        }
    };
}

fn cast_arr<S: Num, D: Num>(a: &ArrayD<S>) -> ArrayD<D> {
    if S::FLOAT { a.mapv(|v| D::from_f64_(v.to_f64_())) } else { a.mapv(|v| D::from_i128_(v.to_i128_())) }
}

/// Casts between any element types: numbers (C conversions: integers wrap, floats truncate
/// toward zero), bool, strings (parsed and printed), and the packed float8/float4/int4/int2
/// types. `saturate` and `round_mode` apply to float8 targets as the Cast spec says.
pub fn cast_with(t: &Tensor, to: DType, saturate: bool, round_mode: &str) -> std::result::Result<Tensor, String> {
    if t.dtype() == to {
        return Ok(t.clone());
    }
    match t {
        Tensor::Packed { dtype, shape, raw } => {
            let d = unpack(*dtype, shape, raw).ok_or_else(|| format!("cannot cast from {dtype}"))?;
            return cast_with(&d, to, saturate, round_mode);
        }
        Tensor::Str(a) => return cast_from_strings(a, to, saturate, round_mode),
        _ => {}
    }
    if to == DType::String {
        return Ok(Tensor::Str(to_strings(t)));
    }
    if is_packed(to) {
        return pack(t, to, saturate, round_mode);
    }
    match (t, to) {
        (Tensor::F32(a), DType::F16) => return Ok(Tensor::F16(a.mapv(f16::from_f32))),
        (Tensor::F32(a), DType::BF16) => return Ok(Tensor::BF16(a.mapv(bf16::from_f32))),
        (Tensor::F16(a), DType::F32) => return Ok(Tensor::F32(a.mapv(f16::to_f32))),
        (Tensor::BF16(a), DType::F32) => return Ok(Tensor::F32(a.mapv(bf16::to_f32))),
        (Tensor::Bool(a), _) => return target_match!(to, D => D::wrap(a.mapv(|b| D::from_i128_(i128::from(b))))),
        _ => {}
    }
    num_match!(t, S, a => {
        if to == DType::Bool {
            return Ok(Tensor::Bool(a.mapv(|v| v != S::ZERO)));
        }
        target_match!(to, D => D::wrap(cast_arr::<S, D>(a)))
    }, _ => Err(format!("cannot cast from {}", t.dtype())))
}

fn fmt_float(v: f64, s: String) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "INF".into() } else { "-INF".into() }
    } else {
        s
    }
}

fn to_strings(t: &Tensor) -> ArrayD<String> {
    match t {
        Tensor::F32(a) => a.map(|&v| fmt_float(v as f64, v.to_string())),
        Tensor::F64(a) => a.map(|&v| fmt_float(v, v.to_string())),
        Tensor::F16(a) => a.map(|&v| fmt_float(v.to_f64(), v.to_string())),
        Tensor::BF16(a) => a.map(|&v| fmt_float(v.to_f64(), v.to_string())),
        Tensor::Bool(a) => a.map(|&v| if v { "1".to_string() } else { "0".to_string() }),
        Tensor::Str(a) => a.clone(),
        t => {
            num_match!(t, T, a => a.map(|v| format!("{v:?}")), _ => ArrayD::from_elem(IxDyn(&t.shape()), String::new()))
        }
    }
}

fn parse_f64(s: &str) -> std::result::Result<f64, String> {
    s.trim().parse::<f64>().map_err(|_| format!("cannot parse '{s}' as a number"))
}

fn cast_from_strings(
    a: &ArrayD<String>,
    to: DType,
    saturate: bool,
    round_mode: &str,
) -> std::result::Result<Tensor, String> {
    fn collect<T>(
        a: &ArrayD<String>,
        f: impl Fn(&str) -> std::result::Result<T, String>,
    ) -> std::result::Result<ArrayD<T>, String> {
        let v: Vec<T> = a.iter().map(|s| f(s)).collect::<std::result::Result<_, _>>()?;
        ArrayD::from_shape_vec(a.raw_dim(), v).map_err(|e| e.to_string())
    }
    match to {
        DType::Bool => Ok(Tensor::Bool(collect(a, |s| match s.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => parse_f64(s).map(|v| v != 0.0),
        })?)),
        DType::F32 => Ok(Tensor::F32(collect(a, |s| {
            s.trim().parse::<f32>().map_err(|_| format!("cannot parse '{s}' as a number"))
        })?)),
        DType::F64 | DType::F16 | DType::BF16 => {
            target_match!(to, D => D::wrap(collect(a, |s| parse_f64(s).map(D::from_f64_))?))
        }
        t if t.is_int() && !is_packed(t) => {
            target_match!(to, D => D::wrap(collect(a, |s| match s.trim().parse::<i128>() {
            Ok(v) => Ok(D::from_i128_(v)),
            Err(_) => parse_f64(s).map(D::from_f64_),
        })?))
        }
        t if is_packed(t) => {
            let f = cast_from_strings(a, DType::F32, saturate, round_mode)?;
            cast_with(&f, to, saturate, round_mode)
        }
        other => Err(format!("cannot cast string to {other}")),
    }
}

fn is_packed(d: DType) -> bool {
    use DType::*;
    matches!(d, F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ | F8E8M0 | F4E2M1 | I4 | U4 | I2 | U2)
}

/// How a small float format encodes NaN and infinity.
#[derive(Clone, Copy, PartialEq)]
enum Special {
    /// E4M3FN: no infinity, NaN is all ones (S.1111.111).
    AllOnesNan,
    /// E5M2: IEEE-like, exponent all ones is infinity (mantissa 0) or NaN.
    Ieee,
    /// FNUZ formats: no infinity, no negative zero, NaN is 0x80.
    Uz,
    /// E2M1: neither infinity nor NaN.
    NoNan,
}

#[derive(Clone, Copy)]
struct MiniFloat {
    exp_bits: u32,
    man_bits: u32,
    bias: i32,
    max: f64,
    /// Magnitude bits of the largest finite value.
    max_code: u8,
    special: Special,
}

fn mini_format(d: DType) -> Option<MiniFloat> {
    let (exp_bits, man_bits, bias, max, max_code, special) = match d {
        DType::F8E4M3FN => (4, 3, 7, 448.0, 0x7e, Special::AllOnesNan),
        DType::F8E4M3FNUZ => (4, 3, 8, 240.0, 0x7f, Special::Uz),
        DType::F8E5M2 => (5, 2, 15, 57344.0, 0x7b, Special::Ieee),
        DType::F8E5M2FNUZ => (5, 2, 16, 57344.0, 0x7f, Special::Uz),
        DType::F4E2M1 => (2, 1, 1, 6.0, 0x7, Special::NoNan),
        _ => return None,
    };
    Some(MiniFloat { exp_bits, man_bits, bias, max, max_code, special })
}

fn mini_decode(c: u8, f: MiniFloat) -> f32 {
    let (e, m) = (f.exp_bits, f.man_bits);
    let sign_bit = 1u8 << (e + m);
    let c = c & (sign_bit | (sign_bit - 1));
    let mag = c & (sign_bit - 1);
    let (ef, mf) = (i32::from(mag >> m), i32::from(mag & ((1 << m) - 1)));
    let emax = (1i32 << e) - 1;
    match f.special {
        Special::Uz if c == sign_bit => return f32::NAN,
        Special::AllOnesNan if ef == emax && mf == (1 << m) - 1 => return f32::NAN,
        Special::Ieee if ef == emax => {
            let v = if mf == 0 { f32::INFINITY } else { f32::NAN };
            return if c & sign_bit != 0 { -v } else { v };
        }
        _ => {}
    }
    let v = if ef == 0 {
        f64::from(mf) * 2f64.powi(1 - f.bias - m as i32)
    } else {
        f64::from((1 << m) + mf) * 2f64.powi(ef - f.bias - m as i32)
    };
    (if c & sign_bit != 0 { -v } else { v }) as f32
}

/// Rounds `x` to nearest even in the small float format; out-of-range values saturate or become
/// infinity/NaN as the Cast spec's table says.
fn mini_encode(x: f64, f: MiniFloat, saturate: bool) -> u8 {
    let (e, m) = (f.exp_bits, f.man_bits);
    let sign_bit = 1u8 << (e + m);
    if x.is_nan() {
        return match f.special {
            Special::AllOnesNan => 0x7f,
            Special::Ieee => 0x7e,
            Special::Uz => 0x80,
            Special::NoNan => sign_bit,
        };
    }
    let sgn = if x.is_sign_negative() { sign_bit } else { 0 };
    let overflow = || -> u8 {
        if saturate || f.special == Special::NoNan {
            sgn | f.max_code
        } else {
            match f.special {
                Special::Ieee => sgn | 0x7c,
                Special::AllOnesNan => sgn | 0x7f,
                _ => 0x80,
            }
        }
    };
    let a = x.abs();
    if a.is_infinite() {
        return overflow();
    }
    let emin = 1 - f.bias;
    let e2 = ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023;
    let ex = e2.max(emin);
    let q = 2f64.powi(ex - m as i32);
    let n = (a / q).round_ties_even();
    if n * q > f.max {
        return overflow();
    }
    if n == 0.0 {
        return if f.special == Special::Uz { 0 } else { sgn };
    }
    let n = n as u32;
    let full = 1u32 << m;
    let (ef, mf) = if n < full {
        (0, n) // subnormal (only reachable at the minimum exponent)
    } else if n == 2 * full {
        ((ex + f.bias + 1) as u32, 0)
    } else {
        ((ex + f.bias) as u32, n - full)
    };
    sgn | ((ef << m) as u8) | (mf as u8)
}

/// float8e8m0 from f32 bits (an exponent-only scale), as onnx's `to_float8e8m0`.
fn e8m0_encode(x: f32, saturate: bool, round_mode: &str) -> u8 {
    let bits = x.to_bits();
    let exp = (bits >> 23) & 0xff;
    if exp == 0xff {
        return 0xff;
    }
    let up = match round_mode {
        "nearest" => {
            let g = bits & 0x40_0000 != 0;
            let r = bits & 0x20_0000 != 0;
            let s = bits & 0x1f_ffff != 0;
            g && (r || s || exp > 0)
        }
        "up" => bits & 0x7f_ffff != 0,
        _ => false,
    };
    if up && !(saturate && exp == 0xfe) { (exp + 1) as u8 } else { exp as u8 }
}

fn e8m0_decode(c: u8) -> f32 {
    if c == 0xff { f32::NAN } else { 2f64.powi(i32::from(c) - 127) as f32 }
}

/// Unpacks float8/float4/int4/int2 data: floats to F32, signed integers to I8, unsigned to U8.
pub fn unpack(dtype: DType, shape: &[usize], raw: &[u8]) -> Option<Tensor> {
    let n: usize = shape.iter().product();
    let bits = dtype.bits()?;
    let codes: Vec<u8> = (0..n)
        .map(|i| match bits {
            8 => raw.get(i).copied(),
            4 => raw.get(i / 2).map(|b| if i % 2 == 0 { b & 0x0f } else { b >> 4 }),
            2 => raw.get(i / 4).map(|b| (b >> (2 * (i % 4))) & 0x03),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let ix = IxDyn(shape);
    Some(match dtype {
        DType::I4 => {
            Tensor::I8(ArrayD::from_shape_vec(ix, codes.iter().map(|&c| ((c << 4) as i8) >> 4).collect()).ok()?)
        }
        DType::I2 => {
            Tensor::I8(ArrayD::from_shape_vec(ix, codes.iter().map(|&c| ((c << 6) as i8) >> 6).collect()).ok()?)
        }
        DType::U4 | DType::U2 => Tensor::U8(ArrayD::from_shape_vec(ix, codes).ok()?),
        DType::F8E8M0 => Tensor::F32(ArrayD::from_shape_vec(ix, codes.iter().map(|&c| e8m0_decode(c)).collect()).ok()?),
        d => {
            let f = mini_format(d)?;
            Tensor::F32(ArrayD::from_shape_vec(ix, codes.iter().map(|&c| mini_decode(c, f)).collect()).ok()?)
        }
    })
}

/// Packs a numeric tensor into float8/float4/int4/int2 (integers truncate and wrap).
fn pack(t: &Tensor, to: DType, saturate: bool, round_mode: &str) -> std::result::Result<Tensor, String> {
    let values = t.to_f64_vec().ok_or_else(|| format!("cannot cast {} to {to}", t.dtype()))?;
    let codes: Vec<u8> = match to {
        DType::F8E8M0 => values.iter().map(|&v| e8m0_encode(v as f32, saturate, round_mode)).collect(),
        DType::I4 | DType::U4 | DType::I2 | DType::U2 => {
            let mask = if matches!(to, DType::I4 | DType::U4) { 0x0f } else { 0x03 };
            match t.to_i64_vec() {
                Some(ints) => ints.iter().map(|&v| (v as u8) & mask).collect(),
                None => values.iter().map(|&v| ((v as i64) as u8) & mask).collect(),
            }
        }
        d => {
            let f = mini_format(d).ok_or_else(|| format!("cannot cast to {d}"))?;
            values.iter().map(|&v| mini_encode(v, f, saturate)).collect()
        }
    };
    let raw: Vec<u8> = match to.bits() {
        Some(4) => codes.chunks(2).map(|c| c[0] | c.get(1).map_or(0, |h| h << 4)).collect(),
        Some(2) => {
            codes.chunks(4).map(|c| c.iter().enumerate().fold(0u8, |acc, (i, &v)| acc | (v << (2 * i)))).collect()
        }
        _ => codes,
    };
    Ok(Tensor::Packed { dtype: to, shape: t.shape(), raw })
}

// ---------------------------------------------------------------------------------------------
// Softmax family and cumulative ops

fn prod(s: &[usize]) -> usize {
    s.iter().product()
}

/// The elements of `a` in logical (row-major) order, borrowed when `a` is contiguous.
fn row_major<'a, T: Copy>(a: &'a ArrayViewD<'_, T>) -> Cow<'a, [T]> {
    match a.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(a.iter().copied().collect()),
    }
}

/// Softmax (0), LogSoftmax (1) or Hardmax (2) over the middle axis of `[outer, n, inner]`.
fn softmax_nd<T: Real>(a: ArrayViewD<T>, outer: usize, n: usize, inner: usize, kind: u8) -> Option<ArrayD<T>> {
    let src = row_major(&a);
    let mut out = vec![T::ZERO; src.len()];
    if n > 0 && inner > 0 && src.len() == outer * n * inner {
        let block = n * inner;
        let (mut mx, mut sum, mut arg) = (vec![T::ZERO; inner], vec![T::ZERO; inner], vec![0usize; inner]);
        for (blk, ob) in src.chunks_exact(block).zip(out.chunks_exact_mut(block)) {
            if inner == 1 {
                if kind == 2 {
                    let (mut best, mut bi) = (blk[0], 0);
                    for (j, &v) in blk.iter().enumerate().skip(1) {
                        if v > best {
                            best = v;
                            bi = j;
                        }
                    }
                    ob[bi] = T::ONE;
                    continue;
                }
                let m = blk.iter().fold(T::LOWEST, |acc, &v| acc.max_(v));
                let mut s = T::ZERO;
                for (o, &v) in ob.iter_mut().zip(blk) {
                    let e = v.sub_(m).exp_();
                    *o = e;
                    s = s.add_(e);
                }
                if kind == 0 {
                    ob.iter_mut().for_each(|o| *o = o.div_(s));
                } else {
                    let l = s.ln_();
                    ob.iter_mut().zip(blk).for_each(|(o, &v)| *o = v.sub_(m).sub_(l));
                }
                continue;
            }
            mx.copy_from_slice(&blk[..inner]);
            arg.fill(0);
            for (j, row) in blk.chunks_exact(inner).enumerate().skip(1) {
                for ((m, a), &v) in mx.iter_mut().zip(arg.iter_mut()).zip(row) {
                    if kind == 2 {
                        if v > *m {
                            *m = v;
                            *a = j;
                        }
                    } else {
                        *m = m.max_(v);
                    }
                }
            }
            if kind == 2 {
                for (k, &j) in arg.iter().enumerate() {
                    ob[j * inner + k] = T::ONE;
                }
                continue;
            }
            sum.fill(T::ZERO);
            for (row, orow) in blk.chunks_exact(inner).zip(ob.chunks_exact_mut(inner)) {
                for (((o, &v), &m), s) in orow.iter_mut().zip(row).zip(&mx).zip(sum.iter_mut()) {
                    let e = v.sub_(m).exp_();
                    *o = e;
                    *s = s.add_(e);
                }
            }
            if kind == 0 {
                for orow in ob.chunks_exact_mut(inner) {
                    orow.iter_mut().zip(&sum).for_each(|(o, &s)| *o = o.div_(s));
                }
            } else {
                sum.iter_mut().for_each(|s| *s = s.ln_());
                for (row, orow) in blk.chunks_exact(inner).zip(ob.chunks_exact_mut(inner)) {
                    for (((o, &v), &m), &l) in orow.iter_mut().zip(row).zip(&mx).zip(&sum) {
                        *o = v.sub_(m).sub_(l);
                    }
                }
            }
        }
    }
    ArrayD::from_shape_vec(a.raw_dim(), out).ok()
}

/// Softmax, LogSoftmax and Hardmax. Before opset 13 the input is coerced to 2-D at `axis`
/// (default 1) and the op works on each row of the flattened trailing dims; from 13 it works
/// along the single axis `axis` (default -1).
fn softmax(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    let shape = x.shape();
    let rank = shape.len() as i64;
    let legacy = cx.opset < 13;
    let axis = cx.attr_int("axis", if legacy { 1 } else { -1 });
    let ax = if axis < 0 { axis + rank } else { axis };
    let hi = if legacy { rank } else { rank - 1 };
    if ax < 0 || ax > hi {
        return Err(cx.err(format!("axis {axis} is out of range for rank {rank}")));
    }
    let ax = ax as usize;
    let (outer, n, inner) = if legacy {
        (prod(&shape[..ax]), prod(&shape[ax..]), 1)
    } else {
        (prod(&shape[..ax]), shape[ax], prod(&shape[ax + 1..]))
    };
    let kind = match cx.node.op {
        Op::Softmax => 0,
        Op::LogSoftmax => 1,
        _ => 2,
    };
    real_match!(x, a => softmax_nd(a, outer, n, inner, kind)).ok_or_else(|| unsupported(cx, x))
}

fn cumulate<T: Num>(
    a: &ArrayD<T>,
    (outer, n, inner): (usize, usize, usize),
    exclusive: bool,
    reverse: bool,
    product: bool,
) -> Option<ArrayD<T>> {
    let init = if product { T::ONE } else { T::ZERO };
    let view = a.view();
    let src = row_major(&view);
    let mut out = vec![init; src.len()];
    if src.len() != outer * n * inner {
        return None;
    }
    let mut acc = vec![init; inner];
    for o in 0..outer {
        acc.fill(init);
        for step in 0..n {
            let j = if reverse { n - 1 - step } else { step };
            let off = (o * n + j) * inner;
            for (k, c) in acc.iter_mut().enumerate() {
                let v = src[off + k];
                let next = if product { c.mul_(v) } else { c.add_(v) };
                out[off + k] = if exclusive { *c } else { next };
                *c = next;
            }
        }
    }
    ArrayD::from_shape_vec(a.raw_dim(), out).ok()
}

fn cumulative(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Tensor> {
    let x = cx.tensor(inputs, 0)?;
    let axis = cx.ints(inputs, 1)?;
    let [axis] = axis[..] else { return Err(cx.err("axis must hold exactly one value")) };
    let shape = x.shape();
    let ax = norm_axis(cx, axis, shape.len())?;
    let dims = (prod(&shape[..ax]), shape[ax], prod(&shape[ax + 1..]));
    let (exclusive, reverse) = (cx.attr_int("exclusive", 0) != 0, cx.attr_int("reverse", 0) != 0);
    let product = matches!(cx.node.op, Op::CumProd);
    num_match!(x, T, a => cumulate(a, dims, exclusive, reverse, product)
        .map(T::wrap)
        .ok_or_else(|| cx.err("internal shape error")), _ => Err(unsupported(cx, x)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::Evaluator;
    use ndarray::ArrayD;
    use optc_ir::builder::GraphBuilder;
    use optc_ir::{Attribute, Model};
    use std::collections::HashMap;

    /// Runs one node on constant inputs at `opset`.
    pub(crate) fn run_op(op: Op, opset: i64, attrs: Vec<Attribute>, inputs: Vec<Tensor>) -> Result<Tensor> {
        let mut b = GraphBuilder::new("t");
        let ids: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let name = format!("in{i}");
                Some(b.graph.add_initializer(name.clone(), t.to_ir(Some(name))).unwrap())
            })
            .collect();
        let out = b.op_n(op, &ids, attrs, 1).unwrap()[0];
        b.output(out, "y", None).unwrap();
        let model = Model::new(b.finish(), opset);
        let ev = Evaluator::new(&model)?;
        let mut outs = ev.run(&HashMap::new())?;
        Ok(outs.remove(0).1.into_tensor().unwrap())
    }

    fn f32t(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
    }
    fn i32t(shape: &[usize], v: &[i32]) -> Tensor {
        Tensor::I32(ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap())
    }

    #[test]
    fn broadcasting_add() {
        let a = f32t(&[2, 1, 3], &[1., 2., 3., 4., 5., 6.]);
        let b = f32t(&[2, 1], &[10., 20.]);
        let r = run_op(Op::Add, 17, vec![], vec![a, b]).unwrap();
        assert_eq!(r.shape(), vec![2, 2, 3]);
        assert_eq!(r.to_f64_vec().unwrap(), vec![11., 12., 13., 21., 22., 23., 14., 15., 16., 24., 25., 26.]);
        // Zero-sized dims broadcast against 1.
        let r = run_op(Op::Mul, 17, vec![], vec![f32t(&[0, 3], &[]), f32t(&[1, 3], &[1., 2., 3.])]).unwrap();
        assert_eq!(r.shape(), vec![0, 3]);
        let e = run_op(Op::Add, 17, vec![], vec![f32t(&[2], &[1., 2.]), f32t(&[3], &[1., 2., 3.])]);
        assert!(e.is_err());
        // Mixed types are an error, not a panic.
        assert!(run_op(Op::Add, 17, vec![], vec![f32t(&[1], &[1.]), i32t(&[1], &[1])]).is_err());
    }

    #[test]
    fn legacy_broadcast_axis() {
        let a = f32t(&[2, 3, 2], &[0.; 12]);
        let b = f32t(&[3], &[1., 2., 3.]);
        let attrs = vec![Attribute::int("broadcast", 1), Attribute::int("axis", 1)];
        let r = run_op(Op::Add, 6, attrs, vec![a, b]).unwrap();
        assert_eq!(r.to_f64_vec().unwrap(), vec![1., 1., 2., 2., 3., 3., 1., 1., 2., 2., 3., 3.]);
    }

    #[test]
    fn integer_div_and_mod_signs() {
        let a = i32t(&[4], &[7, -7, 7, -7]);
        let b = i32t(&[4], &[2, 2, -2, -2]);
        let r = run_op(Op::Div, 14, vec![], vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(r.to_i64_vec().unwrap(), vec![3, -3, -3, 3]);
        let r = run_op(Op::Mod, 13, vec![], vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(r.to_i64_vec().unwrap(), vec![1, 1, -1, -1]);
        let r = run_op(Op::Mod, 13, vec![Attribute::int("fmod", 1)], vec![a.clone(), b]).unwrap();
        assert_eq!(r.to_i64_vec().unwrap(), vec![1, -1, 1, -1]);
        assert!(run_op(Op::Div, 14, vec![], vec![a, i32t(&[1], &[0])]).is_err());
        let min = Tensor::I8(ArrayD::from_shape_vec(IxDyn(&[1]), vec![i8::MIN]).unwrap());
        let neg1 = Tensor::I8(ArrayD::from_shape_vec(IxDyn(&[1]), vec![-1]).unwrap());
        assert_eq!(run_op(Op::Div, 14, vec![], vec![min, neg1]).unwrap().to_i64_vec().unwrap(), vec![-128]);
    }

    #[test]
    fn softmax_legacy_coerces_to_2d() {
        let x = f32t(&[1, 2, 2], &[0., 0., 0., 0.]);
        // Opset 11, axis 1: each row of the [1, 4] coercion sums to one.
        let r = run_op(Op::Softmax, 11, vec![], vec![x.clone()]).unwrap();
        assert_eq!(r.to_f64_vec().unwrap(), vec![0.25; 4]);
        // Opset 13, axis 1: along dimension 1 only.
        let r = run_op(Op::Softmax, 13, vec![Attribute::int("axis", 1)], vec![x.clone()]).unwrap();
        assert_eq!(r.to_f64_vec().unwrap(), vec![0.5; 4]);
        // Hardmax before 13 picks one element of the flattened row.
        let h = f32t(&[1, 2, 2], &[1., 3., 3., 2.]);
        let r = run_op(Op::Hardmax, 11, vec![], vec![h.clone()]).unwrap();
        assert_eq!(r.to_f64_vec().unwrap(), vec![0., 1., 0., 0.]);
        let r = run_op(Op::Hardmax, 13, vec![Attribute::int("axis", 1)], vec![h]).unwrap();
        assert_eq!(r.to_f64_vec().unwrap(), vec![0., 1., 1., 0.]);
    }

    #[test]
    fn pow_mixed_types() {
        let r = run_op(Op::Pow, 15, vec![], vec![i32t(&[3], &[2, 3, -2]), f32t(&[1], &[2.0])]).unwrap();
        assert_eq!(r.dtype(), DType::I32);
        assert_eq!(r.to_i64_vec().unwrap(), vec![4, 9, 4]);
        let e = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[1]), vec![3]).unwrap());
        let r = run_op(Op::Pow, 15, vec![], vec![f32t(&[2], &[2., 0.5]), e]).unwrap();
        assert_eq!(r.to_f64_vec().unwrap(), vec![8., 0.125]);
    }

    #[test]
    fn cast_conversions() {
        let x = f32t(&[5], &[1.5, -1.5, 300.0, f32::NAN, 0.0]);
        let r = cast(&x, DType::I32).unwrap();
        assert_eq!(r.to_i64_vec().unwrap(), vec![1, -1, 300, 0, 0]);
        let r = cast(&x, DType::Bool).unwrap();
        assert_eq!(r.to_i64_vec().unwrap(), vec![1, 1, 1, 1, 0]);
        let s =
            Tensor::Str(ArrayD::from_shape_vec(IxDyn(&[3]), vec!["1e-5".into(), "-INF".into(), "nan".into()]).unwrap());
        let r = cast(&s, DType::F32).unwrap().to_f64_vec().unwrap();
        assert!((r[0] - 1e-5).abs() < 1e-12 && r[1] == f64::NEG_INFINITY && r[2].is_nan());
        let r = cast(&f32t(&[2], &[314.5, f32::INFINITY]), DType::String).unwrap();
        assert_eq!(r, Tensor::Str(ArrayD::from_shape_vec(IxDyn(&[2]), vec!["314.5".into(), "INF".into()]).unwrap()));
        // float8 e4m3fn round trip and saturation.
        let f8 = cast(&f32t(&[3], &[0.5, 1000.0, -0.3]), DType::F8E4M3FN).unwrap();
        let back = cast(&f8, DType::F32).unwrap().to_f64_vec().unwrap();
        assert_eq!(back[..2], [0.5, 448.0]);
        assert!((back[2] + 0.3).abs() < 0.02);
        // f64 -> f16 rounds once: just above a tie rounds up (through f32 it would tie to even).
        let x = Tensor::F64(ArrayD::from_shape_vec(IxDyn(&[1]), vec![1.0 + 2f64.powi(-11) + 2f64.powi(-40)]).unwrap());
        assert_eq!(cast(&x, DType::F16).unwrap().to_f64_vec().unwrap(), vec![1.0 + 2f64.powi(-10)]);
        let x = Tensor::F64(ArrayD::from_shape_vec(IxDyn(&[3]), vec![65519.0, 65520.0, -1e-9]).unwrap());
        let h = cast(&x, DType::F16).unwrap().to_f64_vec().unwrap();
        assert_eq!(h[..2], [65504.0, f64::INFINITY]);
        assert!(h[2] == 0.0 && h[2].is_sign_negative());
        let i4 = cast(&f32t(&[3], &[-9.0, 7.0, -1.0]), DType::I4).unwrap();
        assert_eq!(cast(&i4, DType::I8).unwrap().to_i64_vec().unwrap(), vec![7, 7, -1]);
    }

    #[test]
    fn clip_bounds() {
        let x = f32t(&[3], &[-2., 0.5, 2.]);
        let r = run_op(Op::Clip, 6, vec![Attribute::float("min", -1.0), Attribute::float("max", 1.0)], vec![x.clone()])
            .unwrap();
        assert_eq!(r.to_f64_vec().unwrap(), vec![-1., 0.5, 1.]);
        let r = run_op(Op::Clip, 13, vec![], vec![x, f32t(&[], &[1.0]), f32t(&[], &[0.0])]).unwrap();
        assert_eq!(r.to_f64_vec().unwrap(), vec![0., 0., 0.]);
    }

    #[test]
    fn max_propagates_nan() {
        let r = run_op(Op::Max, 13, vec![], vec![f32t(&[2], &[f32::NAN, 1.]), f32t(&[2], &[1., f32::NAN])]).unwrap();
        assert!(r.to_f64_vec().unwrap().iter().all(|v| v.is_nan()));
    }
}
