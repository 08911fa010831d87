//! Kernels: linalg (MatMul, Gemm, Einsum, MatMulInteger), and the numeric helpers the nn and
//! quant families share: the [`Elem`] / [`Real`] element traits, a strided GEMM
//! ([`gemm_strided`], backed by the `gemm` crate for f32/f64) and tensor conversions.
//!
//! f32 and f64 multiply through `gemm` (SIMD, rayon-parallel); f16 and bf16 compute in f32 and
//! round once at the end; integer types multiply exactly with wrapping arithmetic.

use super::{Ctx, one};
use crate::error::Result;
use crate::value::{Tensor, Value};
use half::{bf16, f16};
use ndarray::{ArrayD, Axis, CowArray, Dimension, IxDyn};
use optc_ir::{DType, Op};
use rayon::prelude::*;

pub fn run(cx: &Ctx, inputs: &[Option<&Value>]) -> Option<Result<Vec<Value>>> {
    let r = match &cx.node.op {
        Op::MatMul => matmul_op(cx, inputs),
        Op::Gemm => gemm_op(cx, inputs),
        Op::Einsum => einsum_op(cx, inputs),
        Op::MatMulInteger => matmul_integer_op(cx, inputs),
        _ => return None,
    };
    Some(r)
}

// ---------------------------------------------------------------------------------------------
// Element traits and the GEMM
// ---------------------------------------------------------------------------------------------

/// An element type the linear-algebra kernels compute with.
pub(crate) trait Elem: Copy + Send + Sync + Default + PartialEq + std::fmt::Debug + 'static {
    fn add(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn one() -> Self;
    /// `c[i*ldc + j] = alpha * sum_p a[i*ars + p*acs] * b[p*brs + j*bcs] (+ c[..] when acc)`.
    /// Slices are bounds-checked by the caller ([`gemm_strided`]).
    fn gemm_raw(g: &Gemm, a: &[Self], b: &[Self], c: &mut [Self], alpha: Self);
}

/// Shape and strides of one strided GEMM call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ars: usize,
    pub acs: usize,
    pub brs: usize,
    pub bcs: usize,
    pub ldc: usize,
    /// Accumulate into `c` instead of overwriting it.
    pub acc: bool,
    /// Let the GEMM use rayon's threads (false when the caller already runs in parallel).
    pub par: bool,
}

impl Gemm {
    /// Row-major, contiguous `a` (m×k), `b` (k×n) and `c` (m×n).
    pub fn rm(m: usize, n: usize, k: usize) -> Gemm {
        Gemm { m, n, k, ars: k, acs: 1, brs: n, bcs: 1, ldc: n, acc: false, par: true }
    }
    pub fn par(mut self, par: bool) -> Gemm {
        self.par = par;
        self
    }
}

fn span(rows: usize, rs: usize, cols: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 { 0 } else { (rows - 1) * rs + (cols - 1) * cs + 1 }
}

/// `c = alpha·a·b (+ c)`, checked: panics only on a caller bug (slices shorter than the strides
/// claim), never on user input, since every caller derives the strides from validated shapes.
pub(crate) fn gemm_strided<T: Elem>(g: &Gemm, a: &[T], b: &[T], c: &mut [T], alpha: T) {
    if g.m == 0 || g.n == 0 {
        return;
    }
    assert!(c.len() >= span(g.m, g.ldc, g.n, 1), "gemm: c too short");
    if g.k == 0 {
        if !g.acc {
            for i in 0..g.m {
                c[i * g.ldc..i * g.ldc + g.n].fill(T::default());
            }
        }
        return;
    }
    assert!(a.len() >= span(g.m, g.ars, g.k, g.acs), "gemm: a too short");
    assert!(b.len() >= span(g.k, g.brs, g.n, g.bcs), "gemm: b too short");
    T::gemm_raw(g, a, b, c, alpha);
}

fn gemm_crate<T: 'static + Copy>(g: &Gemm, a: &[T], b: &[T], c: &mut [T], alpha: T, one: T) {
    let par = if g.par { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: the spans were checked against the slice lengths in `gemm_strided`; all strides
    // are non-negative and T is f32 or f64, which `gemm` supports.
    unsafe {
        gemm::gemm(
            g.m,
            g.n,
            g.k,
            c.as_mut_ptr(),
            1,
            g.ldc as isize,
            g.acc,
            a.as_ptr(),
            g.acs as isize,
            g.ars as isize,
            b.as_ptr(),
            g.bcs as isize,
            g.brs as isize,
            one,
            alpha,
            false,
            false,
            false,
            par,
        )
    }
}

impl Elem for f32 {
    fn add(self, o: Self) -> Self {
        self + o
    }
    fn mul(self, o: Self) -> Self {
        self * o
    }
    fn one() -> Self {
        1.0
    }
    fn gemm_raw(g: &Gemm, a: &[Self], b: &[Self], c: &mut [Self], alpha: Self) {
        gemm_crate(g, a, b, c, alpha, 1.0)
    }
}

impl Elem for f64 {
    fn add(self, o: Self) -> Self {
        self + o
    }
    fn mul(self, o: Self) -> Self {
        self * o
    }
    fn one() -> Self {
        1.0
    }
    fn gemm_raw(g: &Gemm, a: &[Self], b: &[Self], c: &mut [Self], alpha: Self) {
        gemm_crate(g, a, b, c, alpha, 1.0)
    }
}

fn gemm_naive<T: Elem>(g: &Gemm, a: &[T], b: &[T], c: &mut [T], alpha: T) {
    let row = |i: usize, crow: &mut [T]| {
        if !g.acc {
            crow.fill(T::default());
        }
        let mut acc = vec![T::default(); g.n];
        for p in 0..g.k {
            let av = a[i * g.ars + p * g.acs];
            let boff = p * g.brs;
            for (j, x) in acc.iter_mut().enumerate() {
                *x = x.add(av.mul(b[boff + j * g.bcs]));
            }
        }
        for (x, y) in crow.iter_mut().zip(acc) {
            *x = x.add(alpha.mul(y));
        }
    };
    let rows: Vec<&mut [T]> = c.chunks_mut(g.ldc).take(g.m).map(|r| &mut r[..g.n]).collect();
    if g.par && g.m * g.n * g.k > 1 << 16 {
        rows.into_par_iter().enumerate().for_each(|(i, r)| row(i, r));
    } else {
        rows.into_iter().enumerate().for_each(|(i, r)| row(i, r));
    }
}

macro_rules! int_elem {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            fn add(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            fn mul(self, o: Self) -> Self {
                self.wrapping_mul(o)
            }
            fn one() -> Self {
                1
            }
            fn gemm_raw(g: &Gemm, a: &[Self], b: &[Self], c: &mut [Self], alpha: Self) {
                gemm_naive(g, a, b, c, alpha)
            }
        }
    )*};
}
int_elem!(i8, i16, i32, i64, u8, u16, u32, u64);

/// A floating-point compute type (f32 or f64) for the nn kernels.
pub(crate) trait Real:
    Elem
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + std::ops::DivAssign
    + std::iter::Sum
{
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn powf(self, e: Self) -> Self;
    fn is_nan(self) -> bool;
    fn maxf(self, o: Self) -> Self;
    fn neg_inf() -> Self;
    fn zero() -> Self {
        Self::default()
    }
    /// The input as this type: f32 borrows f32 tensors, converts f16/bf16/f64/ints;
    /// f64 borrows f64 tensors, converts the rest. `None` for strings, bools and packed types.
    fn arr(t: &Tensor) -> Option<CowArray<'_, Self, IxDyn>>;
    /// An output of dtype `dt` (f32 rounds to f16/bf16 when `dt` says so).
    fn wrap(a: ArrayD<Self>, dt: DType) -> Tensor;
}

macro_rules! real_common {
    ($t:ty) => {
        fn from_f64(x: f64) -> Self {
            x as $t
        }
        fn to_f64(self) -> f64 {
            self as f64
        }
        fn sqrt(self) -> Self {
            <$t>::sqrt(self)
        }
        fn abs(self) -> Self {
            <$t>::abs(self)
        }
        fn powf(self, e: Self) -> Self {
            <$t>::powf(self, e)
        }
        fn is_nan(self) -> bool {
            <$t>::is_nan(self)
        }
        fn maxf(self, o: Self) -> Self {
            if self.is_nan() || o.is_nan() {
                <$t>::NAN
            } else if o > self {
                o
            } else {
                self
            }
        }
        fn neg_inf() -> Self {
            <$t>::NEG_INFINITY
        }
    };
}

impl Real for f32 {
    real_common!(f32);
    fn arr(t: &Tensor) -> Option<CowArray<'_, f32, IxDyn>> {
        Some(match t {
            Tensor::F32(a) => CowArray::from(a.view()),
            Tensor::F16(a) => CowArray::from(a.mapv(f32::from)),
            Tensor::BF16(a) => CowArray::from(a.mapv(f32::from)),
            Tensor::F64(a) => CowArray::from(a.mapv(|x| x as f32)),
            t => {
                let v = t.to_f64_vec()?;
                if matches!(t, Tensor::Bool(_)) {
                    return None;
                }
                CowArray::from(
                    ArrayD::from_shape_vec(IxDyn(&t.shape()), v.into_iter().map(|x| x as f32).collect()).ok()?,
                )
            }
        })
    }
    fn wrap(a: ArrayD<f32>, dt: DType) -> Tensor {
        match dt {
            DType::F16 => Tensor::F16(a.mapv(f16::from_f32)),
            DType::BF16 => Tensor::BF16(a.mapv(bf16::from_f32)),
            DType::F64 => Tensor::F64(a.mapv(f64::from)),
            _ => Tensor::F32(a),
        }
    }
}

impl Real for f64 {
    real_common!(f64);
    fn arr(t: &Tensor) -> Option<CowArray<'_, f64, IxDyn>> {
        Some(match t {
            Tensor::F64(a) => CowArray::from(a.view()),
            Tensor::Bool(_) => return None,
            t => CowArray::from(ArrayD::from_shape_vec(IxDyn(&t.shape()), t.to_f64_vec()?).ok()?),
        })
    }
    fn wrap(a: ArrayD<f64>, dt: DType) -> Tensor {
        match dt {
            DType::F32 => Tensor::F32(a.mapv(|x| x as f32)),
            DType::F16 => Tensor::F16(a.mapv(f16::from_f64)),
            DType::BF16 => Tensor::BF16(a.mapv(bf16::from_f64)),
            _ => Tensor::F64(a),
        }
    }
}

/// Runs `$body` with `$T` bound to the compute type for float dtype `$dt` (f64 for f64, f32
/// for f32/f16/bf16); other dtypes are an error.
macro_rules! with_real {
    ($cx:expr, $dt:expr, $T:ident => $body:expr) => {
        match $dt {
            optc_ir::DType::F64 => {
                type $T = f64;
                $body
            }
            optc_ir::DType::F32 | optc_ir::DType::F16 | optc_ir::DType::BF16 => {
                type $T = f32;
                $body
            }
            d => Err($cx.err(format!("unsupported input type {d}: expected a float tensor"))),
        }
    };
}
pub(crate) use with_real;

/// Float input `i` in compute type `T`.
pub(crate) fn real_in<'v, T: Real>(cx: &Ctx, inputs: &[Option<&'v Value>], i: usize) -> Result<CowArray<'v, T, IxDyn>> {
    let t = cx.tensor(inputs, i)?;
    T::arr(t).ok_or_else(|| cx.err(format!("input {i} must be a numeric tensor, got {}", t.dtype())))
}

/// Optional float input `i` in compute type `T`.
pub(crate) fn opt_real_in<'v, T: Real>(
    cx: &Ctx,
    inputs: &[Option<&'v Value>],
    i: usize,
) -> Result<Option<CowArray<'v, T, IxDyn>>> {
    match cx.opt_tensor(inputs, i)? {
        None => Ok(None),
        Some(t) => {
            Ok(Some(T::arr(t).ok_or_else(|| cx.err(format!("input {i} must be a numeric tensor, got {}", t.dtype())))?))
        }
    }
}

/// A contiguous row-major slice of an array (copying only when it is not already one).
pub(crate) fn contiguous<'a, T: Clone>(a: &'a CowArray<'_, T, IxDyn>) -> CowArray<'a, T, IxDyn> {
    a.as_standard_layout()
}

/// Shape product with overflow checked.
pub(crate) fn checked_numel(cx: &Ctx, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= (1usize << 33))
        .ok_or_else(|| cx.err(format!("shape {shape:?} is too large")))
}

// ---------------------------------------------------------------------------------------------
// MatMul
// ---------------------------------------------------------------------------------------------

/// Broadcasts two shapes numpy-style.
pub(crate) fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let x = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let y = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = if x == y || y == 1 {
            x
        } else if x == 1 {
            y
        } else {
            return None;
        };
    }
    Some(out)
}

/// Element offsets of every broadcast batch index into an operand with batch dims `dims`
/// (right-aligned against `batch`), each batch matrix holding `mat` elements.
fn batch_offsets(batch: &[usize], dims: &[usize], mat: usize) -> Vec<usize> {
    let total: usize = batch.iter().product();
    let lead = batch.len() - dims.len();
    // Strides of `dims` in matrices, zero where broadcast.
    let mut strides = vec![0usize; batch.len()];
    let mut s = mat;
    for i in (0..dims.len()).rev() {
        strides[lead + i] = if dims[i] == 1 { 0 } else { s };
        s *= dims[i];
    }
    let mut out = Vec::with_capacity(total);
    let mut idx = vec![0usize; batch.len()];
    for _ in 0..total {
        out.push(idx.iter().zip(&strides).map(|(i, s)| i * s).sum());
        for d in (0..batch.len()).rev() {
            idx[d] += 1;
            if idx[d] < batch[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// numpy matmul of two arrays (1-D promotion, batch broadcasting).
pub(crate) fn matmul_arrays<T: Elem>(
    a: &CowArray<'_, T, IxDyn>,
    b: &CowArray<'_, T, IxDyn>,
) -> std::result::Result<ArrayD<T>, String> {
    let (sa, sb) = (a.shape().to_vec(), b.shape().to_vec());
    if sa.is_empty() || sb.is_empty() {
        return Err("MatMul inputs must have rank >= 1".into());
    }
    let a2: Vec<usize> = if sa.len() == 1 { vec![1, sa[0]] } else { sa.clone() };
    let b2: Vec<usize> = if sb.len() == 1 { vec![sb[0], 1] } else { sb.clone() };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (kb, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != kb {
        return Err(format!("shapes {sa:?} and {sb:?} do not match for matmul (inner dims {k} vs {kb})"));
    }
    let (ba, bb) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
    let batch = broadcast_shapes(ba, bb).ok_or_else(|| format!("batch dims of {sa:?} and {sb:?} do not broadcast"))?;
    let mut out_shape = batch.clone();
    if sa.len() > 1 {
        out_shape.push(m);
    }
    if sb.len() > 1 {
        out_shape.push(n);
    }
    let nb: usize = batch.iter().product();
    let total = nb.checked_mul(m).and_then(|x| x.checked_mul(n)).ok_or("output too large")?;
    let mut out = vec![T::default(); total];
    let (ac, bc) = (contiguous(a), contiguous(b));
    let (asl, bsl) = (ac.as_slice().unwrap_or(&[]), bc.as_slice().unwrap_or(&[]));
    let pa: usize = ba.iter().product();
    let pb: usize = bb.iter().product();
    if total > 0 {
        if pb == 1 && pa == nb {
            // One tall GEMM: all of A's batches stacked over the shared B.
            gemm_strided(&Gemm::rm(nb * m, n, k), asl, bsl, &mut out, T::one());
        } else {
            let offa = batch_offsets(&batch, ba, m * k);
            let offb = batch_offsets(&batch, bb, k * n);
            let threads = rayon::current_num_threads();
            if nb >= threads && nb > 1 {
                out.par_chunks_mut(m * n).enumerate().for_each(|(i, c)| {
                    gemm_strided(&Gemm::rm(m, n, k).par(false), &asl[offa[i]..], &bsl[offb[i]..], c, T::one());
                });
            } else {
                for (i, c) in out.chunks_mut(m * n).enumerate() {
                    gemm_strided(&Gemm::rm(m, n, k), &asl[offa[i]..], &bsl[offb[i]..], c, T::one());
                }
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(&out_shape), out).map_err(|e| e.to_string())
}

fn matmul_typed<T: Elem>(cx: &Ctx, a: &ArrayD<T>, b: &ArrayD<T>) -> Result<ArrayD<T>> {
    matmul_arrays(&CowArray::from(a.view()), &CowArray::from(b.view())).map_err(|e| cx.err(e))
}

fn matmul_op(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let (a, b) = (cx.tensor(inputs, 0)?, cx.tensor(inputs, 1)?);
    if a.dtype() != b.dtype() {
        return Err(cx.err(format!("input types differ: {} and {}", a.dtype(), b.dtype())));
    }
    let out = match (a, b) {
        (Tensor::F32(x), Tensor::F32(y)) => Tensor::F32(matmul_typed(cx, x, y)?),
        (Tensor::F64(x), Tensor::F64(y)) => Tensor::F64(matmul_typed(cx, x, y)?),
        (Tensor::F16(_), _) | (Tensor::BF16(_), _) => {
            let (x, y) =
                (f32::arr(a).ok_or_else(|| cx.err("bad input"))?, f32::arr(b).ok_or_else(|| cx.err("bad input"))?);
            f32::wrap(matmul_arrays(&x, &y).map_err(|e| cx.err(e))?, a.dtype())
        }
        (Tensor::I8(x), Tensor::I8(y)) => Tensor::I8(matmul_typed(cx, x, y)?),
        (Tensor::I16(x), Tensor::I16(y)) => Tensor::I16(matmul_typed(cx, x, y)?),
        (Tensor::I32(x), Tensor::I32(y)) => Tensor::I32(matmul_typed(cx, x, y)?),
        (Tensor::I64(x), Tensor::I64(y)) => Tensor::I64(matmul_typed(cx, x, y)?),
        (Tensor::U8(x), Tensor::U8(y)) => Tensor::U8(matmul_typed(cx, x, y)?),
        (Tensor::U16(x), Tensor::U16(y)) => Tensor::U16(matmul_typed(cx, x, y)?),
        (Tensor::U32(x), Tensor::U32(y)) => Tensor::U32(matmul_typed(cx, x, y)?),
        (Tensor::U64(x), Tensor::U64(y)) => Tensor::U64(matmul_typed(cx, x, y)?),
        _ => return Err(cx.err(format!("unsupported input type {}", a.dtype()))),
    };
    Ok(vec![out.into()])
}

// ---------------------------------------------------------------------------------------------
// Gemm
// ---------------------------------------------------------------------------------------------

fn gemm_typed<T: Elem>(
    cx: &Ctx,
    a: &CowArray<'_, T, IxDyn>,
    b: &CowArray<'_, T, IxDyn>,
    c: Option<&CowArray<'_, T, IxDyn>>,
    alpha: T,
    beta: T,
    scale_c: bool,
) -> Result<ArrayD<T>> {
    let (ta, tb) = (cx.attr_int("transA", 0) != 0, cx.attr_int("transB", 0) != 0);
    // Opset 1-6 allowed 1-D (vector) operands through broadcasting; treat a 1-D operand as a row.
    let dims2 = |s: &[usize], name: &str| -> Result<(usize, usize)> {
        match s.len() {
            2 => Ok((s[0], s[1])),
            1 => Ok((1, s[0])),
            _ => Err(cx.err(format!("{name} must be 2-D, got shape {s:?}"))),
        }
    };
    let (ar, acol) = dims2(a.shape(), "A")?;
    let (br, bcol) = dims2(b.shape(), "B")?;
    let (m, k) = if ta { (acol, ar) } else { (ar, acol) };
    let (kb, n) = if tb { (bcol, br) } else { (br, bcol) };
    if k != kb {
        return Err(cx.err(format!("inner dims differ: A gives K={k}, B gives K={kb}")));
    }
    checked_numel(cx, &[m, n])?;
    let (ac, bc) = (contiguous(a), contiguous(b));
    let (asl, bsl) = (ac.as_slice().unwrap_or(&[]), bc.as_slice().unwrap_or(&[]));
    let mut out = ArrayD::<T>::default(IxDyn(&[m, n]));
    let mut acc = false;
    if let Some(c) = c {
        let cb = c
            .broadcast(IxDyn(&[m, n]))
            .ok_or_else(|| cx.err(format!("C of shape {:?} does not broadcast to [{m}, {n}]", c.shape())))?;
        if scale_c {
            out.zip_mut_with(&cb, |o, &x| *o = beta.mul(x));
        } else {
            out.assign(&cb);
        }
        acc = true;
    }
    let g = Gemm {
        m,
        n,
        k,
        ars: if ta { 1 } else { acol },
        acs: if ta { acol } else { 1 },
        brs: if tb { 1 } else { bcol },
        bcs: if tb { bcol } else { 1 },
        ldc: n,
        acc,
        par: true,
    };
    let Some(osl) = out.as_slice_mut() else { return Err(cx.err("internal: output not contiguous")) };
    gemm_strided(&g, asl, bsl, osl, alpha);
    Ok(out)
}

fn gemm_op(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let a = cx.tensor(inputs, 0)?;
    let (alpha, beta) = (cx.attr_float("alpha", 1.0), cx.attr_float("beta", 1.0));
    let c_present = cx.opt_tensor(inputs, 2)?.is_some();
    let dt = a.dtype();
    macro_rules! float_case {
        ($T:ty) => {{
            let (x, y) = (real_in::<$T>(cx, inputs, 0)?, real_in::<$T>(cx, inputs, 1)?);
            let c = opt_real_in::<$T>(cx, inputs, 2)?;
            let c = if beta == 0.0 { None } else { c };
            let out = gemm_typed(cx, &x, &y, c.as_ref(), alpha as $T, beta as $T, beta != 1.0)?;
            <$T>::wrap(out, dt)
        }};
    }
    let out = match dt {
        DType::F64 => float_case!(f64),
        DType::F32 | DType::F16 | DType::BF16 => float_case!(f32),
        DType::I32 | DType::I64 | DType::U32 | DType::U64 => {
            // Integer Gemm: exact integer product, alpha/beta applied through f64 when not 1.
            let b = cx.tensor(inputs, 1)?;
            if b.dtype() != dt {
                return Err(cx.err(format!("input types differ: {dt} and {}", b.dtype())));
            }
            macro_rules! int_case {
                ($T:ty, $V:ident) => {{
                    let (Tensor::$V(x), Tensor::$V(y)) = (a, b) else { unreachable!() };
                    let c = match cx.opt_tensor(inputs, 2)? {
                        Some(Tensor::$V(c)) => Some(CowArray::from(c.view())),
                        Some(t) => return Err(cx.err(format!("C has type {}, expected {dt}", t.dtype()))),
                        None => None,
                    };
                    let ints = alpha == 1.0 && (beta == 1.0 || !c_present);
                    if ints {
                        let out = gemm_typed(
                            cx,
                            &CowArray::from(x.view()),
                            &CowArray::from(y.view()),
                            c.as_ref(),
                            1,
                            1,
                            false,
                        )?;
                        Tensor::$V(out)
                    } else {
                        let p =
                            gemm_typed(cx, &CowArray::from(x.view()), &CowArray::from(y.view()), None, 1, 1, false)?;
                        let mut f = p.mapv(|v| v as f64 * alpha as f64);
                        if let Some(c) = &c {
                            let cb = c.broadcast(f.raw_dim()).ok_or_else(|| cx.err("C does not broadcast"))?;
                            f.zip_mut_with(&cb, |o, &v| *o += beta as f64 * v as f64);
                        }
                        Tensor::$V(f.mapv(|v| v as $T))
                    }
                }};
            }
            match dt {
                DType::I32 => int_case!(i32, I32),
                DType::I64 => int_case!(i64, I64),
                DType::U32 => int_case!(u32, U32),
                _ => int_case!(u64, U64),
            }
        }
        d => return Err(cx.err(format!("unsupported input type {d}"))),
    };
    Ok(vec![out.into()])
}

// ---------------------------------------------------------------------------------------------
// MatMulInteger
// ---------------------------------------------------------------------------------------------

/// 8-bit integer tensor (with zero point) widened to f64, exact for the GEMM (|products| and
/// their sums stay far below 2^53).
pub(crate) fn int8_as_f64(cx: &Ctx, t: &Tensor, what: &str) -> Result<ArrayD<f64>> {
    match t {
        Tensor::U8(a) => Ok(a.mapv(f64::from)),
        Tensor::I8(a) => Ok(a.mapv(f64::from)),
        t => Err(cx.err(format!("{what} must be int8 or uint8, got {}", t.dtype()))),
    }
}

/// Zero point for an 8-bit operand: a scalar, or a 1-D per-row (`rows` = true: one per row of
/// the matrix, applied along axis -2) or per-column vector.
pub(crate) fn sub_zero_point(
    cx: &Ctx,
    x: &mut ArrayD<f64>,
    zp: Option<&Tensor>,
    data_dtype: DType,
    rows: bool,
    what: &str,
) -> Result<()> {
    let Some(zp) = zp else { return Ok(()) };
    if zp.dtype() != data_dtype {
        return Err(cx.err(format!("{what} zero point has type {}, data has {data_dtype}", zp.dtype())));
    }
    let z = int8_as_f64(cx, zp, what)?;
    if z.len() == 1 {
        let v = z.iter().next().copied().unwrap_or(0.0);
        x.mapv_inplace(|a| a - v);
        return Ok(());
    }
    let r = x.ndim();
    let zs = z.shape().to_vec();
    // Per-row / per-column zero points: 1-D of length M (A) or N (B), or already broadcastable.
    let zb = if zs.len() == 1 && rows && r >= 2 {
        z.into_shape_with_order(IxDyn(&[zs[0], 1])).map_err(|e| cx.err(e.to_string()))?
    } else {
        z
    };
    let zv = zb
        .broadcast(x.raw_dim())
        .ok_or_else(|| cx.err(format!("{what} zero point of shape {zs:?} does not fit data {:?}", x.shape())))?
        .to_owned();
    *x -= &zv;
    Ok(())
}

fn matmul_integer_op(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let (a, b) = (cx.tensor(inputs, 0)?, cx.tensor(inputs, 1)?);
    let mut x = int8_as_f64(cx, a, "A")?;
    let mut y = int8_as_f64(cx, b, "B")?;
    sub_zero_point(cx, &mut x, cx.opt_tensor(inputs, 2)?, a.dtype(), true, "A")?;
    sub_zero_point(cx, &mut y, cx.opt_tensor(inputs, 3)?, b.dtype(), false, "B")?;
    let out = matmul_typed(cx, &x, &y)?;
    one_v(Tensor::I32(out.mapv(|v| v as i32)))
}

fn one_v(t: Tensor) -> Result<Vec<Value>> {
    one(t).unwrap_or_else(|| Ok(vec![]))
}

// ---------------------------------------------------------------------------------------------
// Einsum
// ---------------------------------------------------------------------------------------------

/// A label: a letter, or one dimension of an ellipsis (numbered from the right).
type Label = u32;
const ELL_BASE: Label = 1 << 16;

fn parse_term(cx: &Ctx, term: &str, rank: Option<usize>, ell_rank: &mut usize) -> Result<Vec<Label>> {
    let mut labels = Vec::new();
    let mut ell_at = None;
    let chars: Vec<char> = term.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        if ch == '.' {
            if chars.get(i + 1) == Some(&'.') && chars.get(i + 2) == Some(&'.') && ell_at.is_none() {
                ell_at = Some(labels.len());
                i += 3;
                continue;
            }
            return Err(cx.err(format!("bad ellipsis in einsum term '{term}'")));
        }
        if !ch.is_ascii_alphabetic() {
            return Err(cx.err(format!("bad character '{ch}' in einsum term '{term}'")));
        }
        labels.push(ch as Label);
        i += 1;
    }
    if let Some(at) = ell_at {
        let n_ell = match rank {
            Some(r) => {
                if r < labels.len() {
                    return Err(cx.err(format!("einsum term '{term}' has more labels than the input has dims ({r})")));
                }
                let e = r - labels.len();
                *ell_rank = (*ell_rank).max(e);
                e
            }
            None => *ell_rank,
        };
        let ell: Vec<Label> = (0..n_ell).map(|j| ELL_BASE + (n_ell - 1 - j) as Label).collect();
        labels.splice(at..at, ell);
    } else if let Some(r) = rank
        && r != labels.len()
    {
        return Err(cx.err(format!("einsum term '{term}' has {} labels, the input has {r} dims", labels.len())));
    }
    Ok(labels)
}

/// Takes the diagonal of axes `i` < `j` (equal sizes), removing axis `j`.
fn diagonal<T: Elem>(a: &ArrayD<T>, i: usize, j: usize) -> ArrayD<T> {
    let mut shape = a.shape().to_vec();
    shape.remove(j);
    ArrayD::from_shape_fn(IxDyn(&shape), |idx| {
        let mut full: Vec<usize> = idx.slice().to_vec();
        full.insert(j, full[i]);
        a[IxDyn(&full)]
    })
}

fn sum_axis<T: Elem>(a: &ArrayD<T>, ax: usize) -> ArrayD<T> {
    a.fold_axis(Axis(ax), T::default(), |&acc, &x| acc.add(x))
}

/// Contracts two labelled operands, keeping the labels in `keep`.
fn contract<T: Elem>(
    cx: &Ctx,
    mut a: ArrayD<T>,
    mut la: Vec<Label>,
    mut b: ArrayD<T>,
    mut lb: Vec<Label>,
    keep: &[Label],
) -> Result<(ArrayD<T>, Vec<Label>)> {
    // Sum out labels only one side has and nobody needs.
    fn drop_unneeded<T: Elem>(x: &mut ArrayD<T>, lx: &mut Vec<Label>, ly: &[Label], keep: &[Label]) {
        let mut i = 0;
        while i < lx.len() {
            if !ly.contains(&lx[i]) && !keep.contains(&lx[i]) {
                *x = sum_axis(x, i);
                lx.remove(i);
            } else {
                i += 1;
            }
        }
    }
    drop_unneeded(&mut a, &mut la, &lb, keep);
    drop_unneeded(&mut b, &mut lb, &la, keep);
    let batch: Vec<Label> = la.iter().copied().filter(|l| lb.contains(l) && keep.contains(l)).collect();
    let contr: Vec<Label> = la.iter().copied().filter(|l| lb.contains(l) && !keep.contains(l)).collect();
    let aonly: Vec<Label> = la.iter().copied().filter(|l| !lb.contains(l)).collect();
    let bonly: Vec<Label> = lb.iter().copied().filter(|l| !la.contains(l)).collect();
    let pos = |ls: &[Label], l: Label| ls.iter().position(|&x| x == l).unwrap_or(0);
    let size = |x: &ArrayD<T>, ls: &[Label], group: &[Label]| -> Vec<usize> {
        group.iter().map(|&l| x.shape()[pos(ls, l)]).collect()
    };
    let (bs, cs, as_, bos) =
        (size(&a, &la, &batch), size(&a, &la, &contr), size(&a, &la, &aonly), size(&b, &lb, &bonly));
    if size(&b, &lb, &batch) != bs || size(&b, &lb, &contr) != cs {
        return Err(cx.err("einsum operands disagree on a dimension size"));
    }
    let perm_a: Vec<usize> = batch.iter().chain(&aonly).chain(&contr).map(|&l| pos(&la, l)).collect();
    let perm_b: Vec<usize> = batch.iter().chain(&contr).chain(&bonly).map(|&l| pos(&lb, l)).collect();
    let (nb, nc, na, nbo) = (
        bs.iter().product::<usize>(),
        cs.iter().product::<usize>(),
        as_.iter().product::<usize>(),
        bos.iter().product::<usize>(),
    );
    let ap = a.permuted_axes(IxDyn(&perm_a));
    let ap = ap
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(&[nb, na, nc]))
        .map_err(|e| cx.err(e.to_string()))?;
    let bp = b.permuted_axes(IxDyn(&perm_b));
    let bp = bp
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(&[nb, nc, nbo]))
        .map_err(|e| cx.err(e.to_string()))?;
    let r = matmul_typed(cx, &ap, &bp)?;
    let shape: Vec<usize> = bs.iter().chain(&as_).chain(&bos).copied().collect();
    let r = r.into_shape_with_order(IxDyn(&shape)).map_err(|e| cx.err(e.to_string()))?;
    let labels = batch.iter().chain(&aonly).chain(&bonly).copied().collect();
    Ok((r, labels))
}

fn einsum_typed<T: Elem>(cx: &Ctx, ops: Vec<ArrayD<T>>) -> Result<ArrayD<T>> {
    let eq: String = cx.attr_string("equation", "").chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l.to_string(), Some(r.to_string())),
        None => (eq.clone(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != ops.len() {
        return Err(cx.err(format!("equation '{eq}' has {} terms, the node has {} inputs", terms.len(), ops.len())));
    }
    let mut ell_rank = 0;
    let mut labels = Vec::new();
    for (t, a) in terms.iter().zip(&ops) {
        labels.push(parse_term(cx, t, Some(a.ndim()), &mut ell_rank)?);
    }
    let has_ell = lhs.contains("...");
    let out_labels: Vec<Label> = match &rhs {
        Some(r) => {
            let l = parse_term(cx, r, None, &mut ell_rank)?;
            if r.contains("...") && !has_ell {
                return Err(cx.err("ellipsis in the output but not in the inputs"));
            }
            l
        }
        None => {
            let mut out: Vec<Label> =
                if has_ell { (0..ell_rank).rev().map(|j| ELL_BASE + j as Label).collect() } else { vec![] };
            let mut letters: Vec<Label> = labels.iter().flatten().copied().filter(|&l| l < ELL_BASE).collect();
            letters.sort();
            let mut once: Vec<Label> =
                letters.iter().copied().filter(|l| letters.iter().filter(|x| *x == l).count() == 1).collect();
            once.dedup();
            out.extend(once);
            out
        }
    };
    for (i, l) in out_labels.iter().enumerate() {
        if out_labels[..i].contains(l) {
            return Err(cx.err("einsum output repeats a label"));
        }
        if !labels.iter().flatten().any(|x| x == l) {
            return Err(cx.err("einsum output has a label no input has"));
        }
    }
    // Global label sizes; size-1 dims that broadcast against larger ones are squeezed away.
    let mut sizes: std::collections::HashMap<Label, usize> = Default::default();
    for (ls, a) in labels.iter().zip(&ops) {
        for (l, &d) in ls.iter().zip(a.shape()) {
            let e = sizes.entry(*l).or_insert(d);
            if *e == 1 {
                *e = d;
            } else if d != 1 && d != *e {
                return Err(cx.err(format!("einsum label dimension mismatch: {d} vs {}", *e)));
            }
        }
    }
    let mut work: Vec<(ArrayD<T>, Vec<Label>)> = Vec::new();
    for (mut ls, mut a) in labels.into_iter().zip(ops) {
        // Diagonals for repeated labels.
        let mut i = 0;
        while i < ls.len() {
            if let Some(j) = ls[i + 1..].iter().position(|x| *x == ls[i]).map(|p| p + i + 1) {
                if a.shape()[i] != a.shape()[j] {
                    return Err(cx.err("repeated einsum label with different sizes"));
                }
                a = diagonal(&a, i, j);
                ls.remove(j);
            } else {
                i += 1;
            }
        }
        // Broadcast size-1 dims: drop them.
        let mut i = 0;
        while i < ls.len() {
            if a.shape()[i] == 1 && sizes[&ls[i]] != 1 {
                a = a.index_axis_move(Axis(i), 0);
                ls.remove(i);
            } else {
                i += 1;
            }
        }
        work.push((a, ls));
    }
    let n = work.len();
    let mut it = work.into_iter();
    let Some((mut acc, mut lacc)) = it.next() else { return Err(cx.err("einsum needs at least one input")) };
    let rest: Vec<(ArrayD<T>, Vec<Label>)> = it.collect();
    for idx in 0..rest.len() {
        let (b, lb) = rest[idx].clone();
        let mut keep: Vec<Label> = out_labels.clone();
        for (_, l) in &rest[idx + 1..] {
            keep.extend(l);
        }
        (acc, lacc) = contract(cx, acc, lacc, b, lb, &keep)?;
    }
    let _ = n;
    // Sum out what the output does not keep, then order as the output.
    let mut i = 0;
    while i < lacc.len() {
        if !out_labels.contains(&lacc[i]) {
            acc = sum_axis(&acc, i);
            lacc.remove(i);
        } else {
            i += 1;
        }
    }
    // Output labels missing here came from squeezed broadcast dims: size 1.
    for (i, l) in out_labels.iter().enumerate() {
        if !lacc.contains(l) {
            let at = i.min(acc.ndim());
            acc = acc.insert_axis(Axis(at));
            lacc.insert(i.min(lacc.len()), *l);
        }
    }
    let perm: Vec<usize> = out_labels.iter().map(|l| lacc.iter().position(|x| x == l).unwrap_or(0)).collect();
    Ok(acc.permuted_axes(IxDyn(&perm)).as_standard_layout().into_owned())
}

fn einsum_op(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let ts: Vec<&Tensor> = (0..inputs.len()).map(|i| cx.tensor(inputs, i)).collect::<Result<_>>()?;
    let Some(first) = ts.first() else { return Err(cx.err("einsum needs at least one input")) };
    let dt = first.dtype();
    if ts.iter().any(|t| t.dtype() != dt) {
        return Err(cx.err("einsum inputs must share one type"));
    }
    macro_rules! typed {
        ($V:ident) => {{
            let ops: Vec<_> =
                ts.iter().map(|t| if let Tensor::$V(a) = t { a.clone() } else { unreachable!() }).collect();
            Tensor::$V(einsum_typed(cx, ops)?)
        }};
    }
    let out = match dt {
        DType::F32 => typed!(F32),
        DType::F64 => typed!(F64),
        DType::F16 | DType::BF16 => {
            let ops: Vec<ArrayD<f32>> = ts
                .iter()
                .map(|t| f32::arr(t).map(|a| a.into_owned()).ok_or_else(|| cx.err("bad input")))
                .collect::<Result<_>>()?;
            f32::wrap(einsum_typed(cx, ops)?, dt)
        }
        DType::I8 => typed!(I8),
        DType::I16 => typed!(I16),
        DType::I32 => typed!(I32),
        DType::I64 => typed!(I64),
        DType::U8 => typed!(U8),
        DType::U16 => typed!(U16),
        DType::U32 => typed!(U32),
        DType::U64 => typed!(U64),
        d => return Err(cx.err(format!("unsupported input type {d}"))),
    };
    Ok(vec![out.into()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn gemm_matches_naive() {
        let (m, n, k) = (37, 29, 53);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
        let mut c = vec![0.0; m * n];
        gemm_strided(&Gemm::rm(m, n, k), &a, &b, &mut c, 1.0);
        assert_eq!(c, naive(&a, &b, m, n, k));
        let ai: Vec<i32> = a.iter().map(|&x| x as i32).collect();
        let bi: Vec<i32> = b.iter().map(|&x| x as i32).collect();
        let mut ci = vec![0i32; m * n];
        gemm_strided(&Gemm::rm(m, n, k), &ai, &bi, &mut ci, 1);
        assert_eq!(ci.iter().map(|&x| x as f32).collect::<Vec<_>>(), c);
    }

    #[test]
    fn matmul_broadcasts_batches() {
        let a = ArrayD::from_shape_fn(IxDyn(&[2, 1, 3, 4]), |i| (i[0] * 100 + i[2] * 10 + i[3]) as f64);
        let b = ArrayD::from_shape_fn(IxDyn(&[3, 4, 2]), |i| (i[0] + i[1] * 2 + i[2]) as f64);
        let r = matmul_arrays(&CowArray::from(a.view()), &CowArray::from(b.view())).unwrap();
        assert_eq!(r.shape(), &[2, 3, 3, 2]);
        for (x, y, i, j) in [(1, 2, 2, 1), (0, 1, 0, 0)] {
            let want: f64 = (0..4).map(|p| a[[x, 0, i, p]] * b[[y, p, j]]).sum();
            assert_eq!(r[[x, y, i, j]], want);
        }
        let v = ArrayD::from_shape_vec(IxDyn(&[4]), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let r = matmul_arrays(&CowArray::from(v.view()), &CowArray::from(b.view())).unwrap();
        assert_eq!(r.shape(), &[3, 2]);
    }
}
