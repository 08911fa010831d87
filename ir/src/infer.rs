//! Type and shape inference with symbolic dims, plus propagation of small integer tensors
//! (shape arithmetic: Shape -> Gather -> Concat -> Reshape). Unknown and opaque ops get unknown
//! types without disturbing the rest. Inference fills in types the file left out; it never
//! overrides a declared type.

use crate::symexpr::Lin;
use crate::{
    AttrList, DType, Dim, DimValue, Graph, Init, NodeId, Op, Shape, Tensor, TensorData, Type, TypeKind, TypedData,
    ValueId,
};
use std::collections::HashMap;

/// Integer tensors up to this many elements are tracked by value.
pub const MAX_TRACKED: usize = 1024;

/// A small integer tensor whose elements may be symbolic (`Shape` of a `[batch, 3]` input).
#[derive(Clone, Debug, PartialEq)]
pub struct SymTensor {
    pub dtype: DType,
    pub dims: Vec<usize>,
    pub data: Vec<DimValue>,
}

impl SymTensor {
    pub fn known(&self) -> Option<Vec<i64>> {
        self.data
            .iter()
            .map(|d| match d {
                DimValue::Known(v) => Some(*v),
                _ => None,
            })
            .collect()
    }
    /// The tensor as an initializer, when every element is known.
    pub fn to_tensor(&self, name: Option<String>) -> Option<Tensor> {
        let vals = self.known()?;
        let raw: Vec<u8> = match self.dtype {
            DType::I64 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::I32 => vals.iter().flat_map(|v| (*v as i32).to_le_bytes()).collect(),
            DType::Bool => vals.iter().map(|v| u8::from(*v != 0)).collect(),
            _ => return None,
        };
        Some(Tensor::from_raw(name, self.dtype, self.dims.iter().map(|&d| d as i64).collect(), raw.into()))
    }
    fn scalar(dtype: DType, v: DimValue) -> SymTensor {
        SymTensor { dtype, dims: vec![], data: vec![v] }
    }
    fn vector(dtype: DType, v: Vec<DimValue>) -> SymTensor {
        SymTensor { dtype, dims: vec![v.len()], data: v }
    }
}

/// What inference knows about each value.
#[derive(Default, Debug)]
pub struct Facts {
    pub types: HashMap<ValueId, Type>,
    pub values: HashMap<ValueId, SymTensor>,
}

impl Facts {
    pub fn ty(&self, v: ValueId) -> Option<&Type> {
        self.types.get(&v)
    }
    pub fn shape(&self, v: ValueId) -> Option<&Shape> {
        self.types.get(&v).and_then(|t| t.shape())
    }
    pub fn elem(&self, v: ValueId) -> Option<DType> {
        self.types.get(&v).and_then(|t| t.elem())
    }
}

/// Runs inference over one graph (subgraphs are left alone) and returns the facts. Declared
/// types win over inferred ones.
pub fn infer(g: &Graph, opset: i64) -> Facts {
    let mut f = Facts::default();
    for v in g.values() {
        let val = g.value(v);
        if let Some(t) = &val.ty {
            f.types.insert(v, t.clone());
        }
        if let Some(Init::Dense(t)) = &val.init
            && !g.is_graph_input(v)
        {
            f.types.entry(v).or_insert_with(|| tensor_type(t));
            if let Some(s) = sym_of_tensor(t) {
                f.values.insert(v, s);
            }
        }
    }
    let order = match g.topo_order() {
        Ok(o) => o,
        Err(_) => return f,
    };
    for n in order {
        let outs = infer_node(g, n, opset, &f);
        let node = g.node(n);
        for (i, (ty, val)) in outs.into_iter().enumerate() {
            if let Some(o) = node.output(i) {
                if let Some(ty) = ty {
                    f.types.entry(o).or_insert(ty);
                }
                if let Some(val) = val {
                    f.values.insert(o, val);
                }
            }
        }
    }
    f
}

/// Writes inferred types into values that have none. Returns how many were filled.
pub fn apply(g: &mut Graph, facts: &Facts) -> usize {
    let mut n = 0;
    for (&v, t) in &facts.types {
        if g.contains_value(v) && g.value(v).ty.is_none() {
            g.value_mut(v).ty = Some(t.clone());
            n += 1;
        }
    }
    n
}

fn tensor_type(t: &Tensor) -> Type {
    Type::tensor(t.dtype, t.dims.iter().map(|&d| Dim::known(d)).collect())
}

fn sym_of_tensor(t: &Tensor) -> Option<SymTensor> {
    if !matches!(t.dtype, DType::I64 | DType::I32 | DType::Bool | DType::U8 | DType::I8) {
        return None;
    }
    let n = t.numel()? as usize;
    if n > MAX_TRACKED {
        return None;
    }
    let vals = match (&t.data, t.dtype) {
        (TensorData::Typed(TypedData::Int64(v)), _) => v.clone(),
        (TensorData::Typed(TypedData::Int32(v)), _) => v.iter().map(|&x| x as i64).collect(),
        (_, DType::Bool) => t.packed_bytes()?.iter().map(|&b| i64::from(b != 0)).collect(),
        _ => t.to_i64_vec()?,
    };
    if vals.len() != n {
        return None;
    }
    let dtype = if t.dtype == DType::Bool {
        DType::Bool
    } else if t.dtype == DType::I32 {
        DType::I32
    } else {
        DType::I64
    };
    if !matches!(t.dtype, DType::I64 | DType::I32 | DType::Bool) {
        return None;
    }
    Some(SymTensor {
        dtype,
        dims: t.dims.iter().map(|&d| d as usize).collect(),
        data: vals.into_iter().map(DimValue::Known).collect(),
    })
}

type Out = (Option<Type>, Option<SymTensor>);

fn ttype(elem: Option<DType>, shape: Option<Shape>) -> Option<Type> {
    elem.map(|e| Type {
        kind: TypeKind::Tensor { elem: Some(e), elem_code: Some(e.onnx_code()), shape },
        denotation: None,
    })
}

fn lin(d: &DimValue) -> Option<Lin> {
    match d {
        DimValue::Known(k) => Some(Lin::constant(*k)),
        DimValue::Sym(s) => Some(Lin::parse(s)),
        DimValue::Unknown => None,
    }
}

fn from_lin(l: Option<Lin>) -> DimValue {
    match l {
        Some(l) => match l.as_constant() {
            Some(c) => DimValue::Known(c),
            None => DimValue::Sym(l.to_string()),
        },
        None => DimValue::Unknown,
    }
}

/// `a + b` on dims, symbolic where needed (`seq + 1`).
pub fn dim_add(a: &DimValue, b: &DimValue) -> DimValue {
    from_lin(lin(a).zip(lin(b)).map(|(x, y)| x.add(&y)))
}

/// `a - b` on dims.
pub fn dim_sub(a: &DimValue, b: &DimValue) -> DimValue {
    from_lin(lin(a).zip(lin(b)).map(|(x, y)| x.sub(&y)))
}

/// `a * b` on dims when one side is a constant.
pub fn dim_mul(a: &DimValue, b: &DimValue) -> DimValue {
    from_lin(lin(a).zip(lin(b)).and_then(|(x, y)| x.mul(&y)))
}

fn dim_from(v: &DimValue) -> Dim {
    Dim { value: v.clone(), denotation: None }
}

fn norm_axis(a: i64, rank: usize) -> Option<usize> {
    let r = rank as i64;
    let a = if a < 0 { a + r } else { a };
    (0..r).contains(&a).then_some(a as usize)
}

/// Numpy broadcasting of symbolic shapes.
pub fn broadcast(shapes: &[&Shape]) -> Option<Shape> {
    let rank = shapes.iter().map(|s| s.len()).max()?;
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let mut acc: Option<DimValue> = None;
        for s in shapes {
            let off = rank - s.len();
            if i < off {
                continue;
            }
            let d = &s[i - off].value;
            acc = Some(match (acc, d) {
                (None, d) => d.clone(),
                (Some(DimValue::Known(1)), d) => d.clone(),
                (Some(a), DimValue::Known(1)) => a,
                (Some(DimValue::Known(a)), DimValue::Known(b)) if a == *b => DimValue::Known(a),
                (Some(DimValue::Known(_)), DimValue::Known(_)) => return None,
                (Some(DimValue::Known(a)), _) => DimValue::Known(a),
                (Some(_), DimValue::Known(b)) => DimValue::Known(*b),
                (Some(DimValue::Sym(a)), DimValue::Sym(b)) if a == *b => DimValue::Sym(a),
                _ => DimValue::Unknown,
            });
        }
        out.push(dim_from(&acc.unwrap_or(DimValue::Unknown)));
    }
    Some(out)
}

fn int_attr(g: &Graph, n: NodeId, name: &str) -> Option<i64> {
    g.node(n).attrs.get_int(name)
}

/// Element-wise integer arithmetic on tracked values with broadcasting.
fn binary_values(
    a: &SymTensor,
    b: &SymTensor,
    f: impl Fn(i64, i64) -> Option<i64>,
    out_dtype: DType,
) -> Option<SymTensor> {
    binary_values_sym(a, b, f, |_, _| DimValue::Unknown, out_dtype)
}

/// Like `binary_values`, with `g` combining elements when one of them is symbolic.
fn binary_values_sym(
    a: &SymTensor,
    b: &SymTensor,
    f: impl Fn(i64, i64) -> Option<i64>,
    g: impl Fn(&DimValue, &DimValue) -> DimValue,
    out_dtype: DType,
) -> Option<SymTensor> {
    let sa: Shape = a.dims.iter().map(|&d| Dim::known(d as i64)).collect();
    let sb: Shape = b.dims.iter().map(|&d| Dim::known(d as i64)).collect();
    let out = broadcast(&[&sa, &sb])?;
    let dims: Vec<usize> = out.iter().map(|d| d.as_known().map(|v| v as usize)).collect::<Option<_>>()?;
    let total: usize = dims.iter().product();
    if total > MAX_TRACKED {
        return None;
    }
    let index = |t: &SymTensor, flat: usize| -> usize {
        let mut rem = flat;
        let mut idx = 0;
        let mut stride = 1;
        let off = dims.len() - t.dims.len();
        for i in (0..dims.len()).rev() {
            let c = rem % dims[i];
            rem /= dims[i];
            if i >= off {
                let td = t.dims[i - off];
                if td != 1 {
                    idx += c * stride;
                }
                stride *= td;
            }
        }
        idx
    };
    let mut data = Vec::with_capacity(total);
    for i in 0..total {
        let x = &a.data[index(a, i)];
        let y = &b.data[index(b, i)];
        data.push(match (x, y) {
            (DimValue::Known(x), DimValue::Known(y)) => f(*x, *y).map(DimValue::Known).unwrap_or(DimValue::Unknown),
            (x, y) => g(x, y),
        });
    }
    Some(SymTensor { dtype: out_dtype, dims, data })
}

fn infer_node(g: &Graph, n: NodeId, opset: i64, f: &Facts) -> Vec<Out> {
    let node = g.node(n);
    let input = |i: usize| node.input(i);
    let ty_of = |i: usize| input(i).and_then(|v| f.types.get(&v));
    let elem = |i: usize| ty_of(i).and_then(|t| t.elem());
    let shape = |i: usize| ty_of(i).and_then(|t| t.shape()).cloned();
    let val = |i: usize| input(i).and_then(|v| f.values.get(&v));
    let same = || vec![(ttype(elem(0), shape(0)), None)];
    let attrs = &node.attrs;
    match &node.op {
        Op::Relu
        | Op::Sigmoid
        | Op::Tanh
        | Op::Exp
        | Op::Log
        | Op::Sqrt
        | Op::Erf
        | Op::Abs
        | Op::Neg
        | Op::Reciprocal
        | Op::Floor
        | Op::Ceil
        | Op::Round
        | Op::Sin
        | Op::Cos
        | Op::Tan
        | Op::Softplus
        | Op::Softsign
        | Op::LeakyRelu
        | Op::Elu
        | Op::Selu
        | Op::Celu
        | Op::HardSigmoid
        | Op::HardSwish
        | Op::Gelu
        | Op::Mish
        | Op::Softmax
        | Op::LogSoftmax
        | Op::Hardmax
        | Op::Clip
        | Op::LRN
        | Op::InstanceNormalization
        | Op::MeanVarianceNormalization
        | Op::LpNormalization
        | Op::Sign
        | Op::CumSum
        | Op::Asin
        | Op::Acos
        | Op::Atan
        | Op::Sinh
        | Op::Cosh
        | Op::Asinh
        | Op::Acosh
        | Op::Atanh
        | Op::Swish
        | Op::ThresholdedRelu
        | Op::Shrink
        | Op::Trilu
        | Op::BitwiseNot => {
            let mut o = same();
            if (node.op == Op::Neg || node.op == Op::Abs)
                && let Some(v) = val(0)
            {
                let neg = node.op == Op::Neg;
                let data = v
                    .data
                    .iter()
                    .map(|d| match d {
                        DimValue::Known(x) => DimValue::Known(if neg { x.wrapping_neg() } else { x.wrapping_abs() }),
                        _ => DimValue::Unknown,
                    })
                    .collect();
                o[0].1 = Some(SymTensor { data, ..v.clone() });
            }
            o
        }
        Op::Identity => vec![(ttype(elem(0), shape(0)), val(0).cloned())],
        Op::Not => vec![(ttype(Some(DType::Bool), shape(0)), None)],
        Op::IsNaN | Op::IsInf => vec![(ttype(Some(DType::Bool), shape(0)), None)],
        Op::Dropout => {
            let mut o = same();
            o.push((ttype(Some(DType::Bool), shape(0)), None));
            o
        }
        Op::LayerNormalization | Op::BatchNormalization | Op::GroupNormalization | Op::RMSNormalization => same(),
        Op::Add
        | Op::Sub
        | Op::Mul
        | Op::Div
        | Op::Pow
        | Op::Max
        | Op::Min
        | Op::Mod
        | Op::Sum
        | Op::Mean
        | Op::PRelu
        | Op::BitwiseAnd
        | Op::BitwiseOr
        | Op::BitwiseXor
        | Op::BitShift => {
            let shapes: Vec<Shape> = (0..node.inputs().len()).filter_map(shape).collect();
            let out_shape =
                if shapes.len() == node.inputs().len() { broadcast(&shapes.iter().collect::<Vec<_>>()) } else { None };
            let value = match (&node.op, val(0), val(1)) {
                (op @ (Op::Add | Op::Sub | Op::Mul | Op::Div | Op::Max | Op::Min | Op::Mod), Some(a), Some(b))
                    if node.inputs().len() == 2 =>
                {
                    let dt = a.dtype;
                    let (op, op2) = (op.clone(), op.clone());
                    binary_values_sym(
                        a,
                        b,
                        move |x, y| match op {
                            Op::Add => x.checked_add(y),
                            Op::Sub => x.checked_sub(y),
                            Op::Mul => x.checked_mul(y),
                            Op::Div => (y != 0).then(|| x.wrapping_div(y)),
                            Op::Max => Some(x.max(y)),
                            Op::Min => Some(x.min(y)),
                            Op::Mod => {
                                (y != 0).then(|| x.rem_euclid(y) + if y < 0 && x.rem_euclid(y) != 0 { y } else { 0 })
                            }
                            _ => None,
                        },
                        move |x, y| match op2 {
                            Op::Add => dim_add(x, y),
                            Op::Sub => dim_sub(x, y),
                            Op::Mul => dim_mul(x, y),
                            _ => DimValue::Unknown,
                        },
                        dt,
                    )
                }
                _ => None,
            };
            vec![(ttype(elem(0), out_shape), value)]
        }
        Op::Equal | Op::Less | Op::Greater | Op::LessOrEqual | Op::GreaterOrEqual | Op::And | Op::Or | Op::Xor => {
            let out = match (shape(0), shape(1)) {
                (Some(a), Some(b)) => broadcast(&[&a, &b]),
                _ => None,
            };
            let value = match (&node.op, val(0), val(1)) {
                // A dim is never negative: `Equal(seq, -1)` is false.
                (Op::Equal, Some(a), Some(b)) => binary_values_sym(
                    a,
                    b,
                    |x, y| Some(i64::from(x == y)),
                    |x, y| match (x, y) {
                        (DimValue::Sym(s), DimValue::Known(k)) | (DimValue::Known(k), DimValue::Sym(s))
                            if *k < 0 && Lin::parse(s).non_negative() =>
                        {
                            DimValue::Known(0)
                        }
                        _ => DimValue::Unknown,
                    },
                    DType::Bool,
                ),
                (Op::Less, Some(a), Some(b)) => binary_values(a, b, |x, y| Some(i64::from(x < y)), DType::Bool),
                (Op::Greater, Some(a), Some(b)) => binary_values(a, b, |x, y| Some(i64::from(x > y)), DType::Bool),
                _ => None,
            };
            vec![(ttype(Some(DType::Bool), out), value)]
        }
        Op::Where => {
            let out = match (shape(0), shape(1), shape(2)) {
                (Some(a), Some(b), Some(c)) => broadcast(&[&a, &b, &c]),
                _ => None,
            };
            let value = match (val(0), val(1), val(2)) {
                (Some(c), Some(x), Some(y)) if c.dims == x.dims && x.dims == y.dims => Some(SymTensor {
                    dtype: x.dtype,
                    dims: x.dims.clone(),
                    data: c
                        .data
                        .iter()
                        .zip(x.data.iter().zip(&y.data))
                        .map(|(c, (a, b))| match c {
                            DimValue::Known(0) => b.clone(),
                            DimValue::Known(_) => a.clone(),
                            _ => DimValue::Unknown,
                        })
                        .collect(),
                }),
                _ => None,
            };
            vec![(ttype(elem(1), out), value)]
        }
        Op::Cast => {
            let to = attrs.get_int("to").and_then(|c| DType::from_onnx(c as i32));
            let value = match (val(0), to) {
                (Some(v), Some(t @ (DType::I64 | DType::I32))) if v.dtype != DType::Bool => {
                    Some(SymTensor { dtype: t, ..v.clone() })
                }
                _ => None,
            };
            vec![(ttype(to, shape(0)), value)]
        }
        Op::CastLike => vec![(ttype(elem(1), shape(0)), None)],
        Op::Shape => {
            let Some(s) = shape(0) else {
                return vec![(ttype(Some(DType::I64), None), None)];
            };
            let r = s.len() as i64;
            let clamp = |v: i64| if v < 0 { (v + r).clamp(0, r) } else { v.clamp(0, r) } as usize;
            let start = clamp(attrs.get_int("start").unwrap_or(0));
            let end = clamp(attrs.get_int("end").unwrap_or(r));
            let dims: Vec<DimValue> =
                if start < end { s[start..end].iter().map(|d| d.value.clone()).collect() } else { vec![] };
            let len = dims.len() as i64;
            vec![(ttype(Some(DType::I64), Some(vec![Dim::known(len)])), Some(SymTensor::vector(DType::I64, dims)))]
        }
        Op::Size => {
            let value =
                shape(0).and_then(|s| s.iter().try_fold(1i64, |acc, d| d.as_known().and_then(|k| acc.checked_mul(k))));
            vec![(
                ttype(Some(DType::I64), Some(vec![])),
                value.map(|v| SymTensor::scalar(DType::I64, DimValue::Known(v))),
            )]
        }
        Op::Constant => {
            let t = if let Some(t) = attrs.get_tensor("value") {
                Some(t.clone())
            } else if let Some(i) = attrs.get_int("value_int") {
                Some(Tensor::from_raw(None, DType::I64, vec![], i.to_le_bytes().to_vec().into()))
            } else if let Some(v) = attrs.get_ints("value_ints") {
                Some(Tensor::from_raw(
                    None,
                    DType::I64,
                    vec![v.len() as i64],
                    v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>().into(),
                ))
            } else if attrs.get_float("value_float").is_some() {
                return vec![(ttype(Some(DType::F32), Some(vec![])), None)];
            } else if let Some(v) = attrs.get_floats("value_floats") {
                return vec![(ttype(Some(DType::F32), Some(vec![Dim::known(v.len() as i64)])), None)];
            } else {
                None
            };
            match t {
                Some(t) => vec![(Some(tensor_type(&t)), sym_of_tensor(&t))],
                None => vec![(None, None)],
            }
        }
        Op::ConstantOfShape => {
            let dtype = attrs.get_tensor("value").map(|t| t.dtype).unwrap_or(DType::F32);
            let dims = val(0).map(|v| v.data.iter().map(dim_from).collect::<Shape>());
            let value = match (val(0).and_then(|v| v.known()), attrs.get_tensor("value").and_then(sym_of_tensor)) {
                (Some(d), fill) if matches!(dtype, DType::I64 | DType::I32) || attrs.get_tensor("value").is_none() => {
                    let total: i64 = d.iter().product();
                    if dtype == DType::F32 || total < 0 || total as usize > MAX_TRACKED {
                        None
                    } else {
                        let fillv = fill.and_then(|f| f.data.first().cloned()).unwrap_or(DimValue::Known(0));
                        Some(SymTensor {
                            dtype,
                            dims: d.iter().map(|&x| x as usize).collect(),
                            data: vec![fillv; total as usize],
                        })
                    }
                }
                _ => None,
            };
            vec![(ttype(Some(dtype), dims), value)]
        }
        Op::Range => {
            // max(ceil((limit - start) / delta), 0) elements; with symbolic bounds only for a
            // step of 1 (`Range(0, seq, 1)`, the usual position ids), where it is limit - start.
            let scalar = |i: usize| val(i).filter(|v| v.data.len() == 1).map(|v| v.data[0].clone());
            let len = match (scalar(0), scalar(1), scalar(2)) {
                (Some(DimValue::Known(s)), Some(DimValue::Known(l)), Some(DimValue::Known(d))) if d != 0 => {
                    Dim::known(((l - s) as f64 / d as f64).ceil().max(0.0) as i64)
                }
                (Some(s), Some(l @ DimValue::Sym(_)), Some(DimValue::Known(1))) => dim_from(&dim_sub(&l, &s)),
                _ => Dim::unknown(),
            };
            vec![(ttype(elem(0), Some(vec![len])), None)]
        }
        Op::MatMul | Op::MatMulInteger => {
            let out_elem = if node.op == Op::MatMulInteger { Some(DType::I32) } else { elem(0) };
            let s = match (shape(0), shape(1)) {
                (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => {
                    let (a1, b1) = (a.len() == 1, b.len() == 1);
                    let a2: Shape = if a1 { vec![Dim::known(1), a[0].clone()] } else { a.clone() };
                    let b2: Shape = if b1 { vec![b[0].clone(), Dim::known(1)] } else { b.clone() };
                    let batch_a: Shape = a2[..a2.len() - 2].to_vec();
                    let batch_b: Shape = b2[..b2.len() - 2].to_vec();
                    broadcast(&[&batch_a, &batch_b]).map(|mut out| {
                        if !a1 {
                            out.push(a2[a2.len() - 2].clone());
                        }
                        if !b1 {
                            out.push(b2[b2.len() - 1].clone());
                        }
                        out
                    })
                }
                _ => None,
            };
            vec![(ttype(out_elem, s), None)]
        }
        Op::Gemm => {
            let ta = attrs.get_int("transA").unwrap_or(0) != 0;
            let tb = attrs.get_int("transB").unwrap_or(0) != 0;
            let s = match (shape(0), shape(1)) {
                (Some(a), Some(b)) if a.len() == 2 && b.len() == 2 => Some(vec![
                    if ta { a[1].clone() } else { a[0].clone() },
                    if tb { b[0].clone() } else { b[1].clone() },
                ]),
                _ => None,
            };
            vec![(ttype(elem(0), s), None)]
        }
        Op::Conv | Op::MaxPool | Op::AveragePool | Op::LpPool | Op::ConvInteger => {
            let s =
                conv_shape(g, n, shape(0), if matches!(node.op, Op::Conv | Op::ConvInteger) { shape(1) } else { None });
            let out_elem = if node.op == Op::ConvInteger { Some(DType::I32) } else { elem(0) };
            let mut o = vec![(ttype(out_elem, s.clone()), None)];
            if node.op == Op::MaxPool {
                o.push((ttype(Some(DType::I64), s), None));
            }
            o
        }
        Op::GlobalAveragePool | Op::GlobalMaxPool | Op::GlobalLpPool => {
            let s = shape(0)
                .map(|s| s.iter().enumerate().map(|(i, d)| if i < 2 { d.clone() } else { Dim::known(1) }).collect());
            vec![(ttype(elem(0), s), None)]
        }
        Op::Flatten => {
            let s = shape(0).and_then(|s| {
                let axis = norm_axis(attrs.get_int("axis").unwrap_or(1), s.len() + 1)?;
                let prod = |d: &[Dim]| -> Dim {
                    d.iter().try_fold(1i64, |acc, x| x.as_known().map(|k| acc * k)).map(Dim::known).unwrap_or_else(
                        || {
                            if d.len() == 1 { d[0].clone() } else { Dim::unknown() }
                        },
                    )
                };
                Some(vec![prod(&s[..axis]), prod(&s[axis..])])
            });
            vec![(ttype(elem(0), s), None)]
        }
        Op::Reshape => {
            let allowzero = int_attr(g, n, "allowzero").unwrap_or(0) == 1;
            let s = val(1).and_then(|target| reshape_shape(shape(0).as_ref(), target, allowzero));
            let value = match (val(0), &s) {
                (Some(v), Some(s)) => {
                    let dims: Option<Vec<usize>> = s.iter().map(|d| d.as_known().map(|k| k as usize)).collect();
                    dims.map(|dims| SymTensor { dims, ..v.clone() })
                }
                _ => None,
            };
            vec![(ttype(elem(0), s), value)]
        }
        Op::Transpose => {
            let s = shape(0).and_then(|s| {
                let perm: Vec<i64> =
                    attrs.get_ints("perm").map(|p| p.to_vec()).unwrap_or_else(|| (0..s.len() as i64).rev().collect());
                if perm.len() != s.len() {
                    return None;
                }
                perm.iter().map(|&p| s.get(p as usize).cloned()).collect::<Option<Shape>>()
            });
            // Small integer tensors (shapes, pads) are tracked through a transpose too.
            let value = val(0).and_then(|v| {
                let rank = v.dims.len();
                let perm: Vec<usize> = match attrs.get_ints("perm") {
                    Some(p) => p.iter().map(|&x| usize::try_from(x).ok()).collect::<Option<Vec<_>>>()?,
                    None => (0..rank).rev().collect(),
                };
                let (data, dims) = crate::tensor::transpose_elems(&v.data, &v.dims, &perm)?;
                Some(SymTensor { dtype: v.dtype, dims, data })
            });
            vec![(ttype(elem(0), s), value)]
        }
        Op::Concat => {
            let k = node.inputs().len();
            let shapes: Vec<Shape> = (0..k).filter_map(shape).collect();
            let s = if shapes.len() == k && k > 0 {
                let r = shapes[0].len();
                norm_axis(attrs.get_int("axis").unwrap_or(0), r).and_then(|axis| {
                    if shapes.iter().any(|s| s.len() != r) {
                        return None;
                    }
                    let mut out = shapes[0].clone();
                    let total = shapes
                        .iter()
                        .skip(1)
                        .fold(shapes[0][axis].value.clone(), |acc, s| dim_add(&acc, &s[axis].value));
                    out[axis] = dim_from(&total);
                    Some(out)
                })
            } else {
                None
            };
            let value = if (0..k).all(|i| val(i).is_some_and(|v| v.dims.len() == 1))
                && k > 0
                && attrs.get_int("axis").unwrap_or(0) == 0
            {
                let data: Vec<DimValue> =
                    (0..k).flat_map(|i| val(i).map(|v| v.data.clone()).unwrap_or_default()).collect();
                Some(SymTensor::vector(val(0).map(|v| v.dtype).unwrap_or(DType::I64), data))
            } else {
                None
            };
            vec![(ttype(elem(0), s), value)]
        }
        Op::Gather => {
            let axis = attrs.get_int("axis").unwrap_or(0);
            let s = match (shape(0), shape(1)) {
                (Some(d), Some(i)) => norm_axis(axis, d.len()).map(|a| {
                    let mut out: Shape = d[..a].to_vec();
                    out.extend(i.iter().cloned());
                    out.extend(d[a + 1..].iter().cloned());
                    out
                }),
                _ => None,
            };
            let value = match (val(0), val(1)) {
                (Some(d), Some(idx)) if d.dims.len() == 1 && norm_axis(axis, 1) == Some(0) => {
                    let n = d.data.len() as i64;
                    let picked: Option<Vec<DimValue>> = idx.known().and_then(|ix| {
                        ix.iter()
                            .map(|&i| {
                                let i = if i < 0 { i + n } else { i };
                                d.data.get(usize::try_from(i).ok()?).cloned()
                            })
                            .collect()
                    });
                    picked.map(|data| SymTensor { dtype: d.dtype, dims: idx.dims.clone(), data })
                }
                _ => None,
            };
            vec![(ttype(elem(0), s), value)]
        }
        Op::Unsqueeze | Op::Squeeze => {
            let axes: Option<Vec<i64>> = if opset >= 13 {
                match input(1) {
                    Some(_) => val(1).and_then(|v| v.known()),
                    None => Some(vec![]),
                }
            } else {
                Some(attrs.get_ints("axes").map(|a| a.to_vec()).unwrap_or_default())
            };
            let squeeze = node.op == Op::Squeeze;
            let s = match (shape(0), &axes) {
                (Some(s), Some(axes)) => {
                    if squeeze {
                        if axes.is_empty() {
                            if s.iter().all(|d| d.as_known().is_some()) {
                                Some(s.iter().filter(|d| d.as_known() != Some(1)).cloned().collect::<Shape>())
                            } else {
                                None
                            }
                        } else {
                            let ax: Option<Vec<usize>> = axes.iter().map(|&a| norm_axis(a, s.len())).collect();
                            ax.map(|ax| {
                                s.iter().enumerate().filter(|(i, _)| !ax.contains(i)).map(|(_, d)| d.clone()).collect()
                            })
                        }
                    } else {
                        let r = s.len() + axes.len();
                        let ax: Option<Vec<usize>> = axes.iter().map(|&a| norm_axis(a, r)).collect();
                        ax.map(|ax| {
                            let mut it = s.iter();
                            (0..r)
                                .map(|i| {
                                    if ax.contains(&i) {
                                        Dim::known(1)
                                    } else {
                                        it.next().cloned().unwrap_or_else(Dim::unknown)
                                    }
                                })
                                .collect()
                        })
                    }
                }
                _ => None,
            };
            let value = match (val(0), &s) {
                (Some(v), Some(s)) => {
                    let dims: Option<Vec<usize>> = s.iter().map(|d| d.as_known().map(|k| k as usize)).collect();
                    dims.map(|dims| SymTensor { dims, ..v.clone() })
                }
                _ => None,
            };
            vec![(ttype(elem(0), s), value)]
        }
        Op::Slice if opset >= 10 => {
            let starts = val(1).and_then(|v| v.known());
            let ends = val(2).and_then(|v| v.known());
            let axes = match input(3) {
                Some(_) => val(3).and_then(|v| v.known()),
                None => starts.as_ref().map(|s| (0..s.len() as i64).collect()),
            };
            let steps = match input(4) {
                Some(_) => val(4).and_then(|v| v.known()),
                None => starts.as_ref().map(|s| vec![1; s.len()]),
            };
            let (s, value) = match (shape(0), starts, ends, axes, steps) {
                (Some(sh), Some(st), Some(en), Some(ax), Some(sp)) => slice_shape(&sh, &st, &en, &ax, &sp, val(0)),
                (Some(sh), Some(st), None, Some(ax), Some(sp)) if val(2).is_some_and(|e| e.data.len() == st.len()) => {
                    (slice_shape_sym_ends(&sh, &st, &val(2).unwrap().data, &ax, &sp), None)
                }
                // Unknown bounds: the rank stays, the sliced axes (all, when the axes are
                // unknown) lose their length.
                (Some(sh), _, _, Some(ax), _) => {
                    let mut out = sh.clone();
                    for &a in &ax {
                        if let Some(a) = norm_axis(a, sh.len()) {
                            out[a] = Dim::unknown();
                        }
                    }
                    (Some(out), None)
                }
                (Some(sh), ..) => (Some(vec![Dim::unknown(); sh.len()]), None),
                _ => (None, None),
            };
            vec![(ttype(elem(0), s), value)]
        }
        Op::Expand => {
            let s = match (shape(0), val(1)) {
                (Some(a), Some(t)) => {
                    let b: Shape = t.data.iter().map(dim_from).collect();
                    broadcast(&[&a, &b])
                }
                _ => None,
            };
            vec![(ttype(elem(0), s), None)]
        }
        Op::Tile => {
            let s = match (shape(0), val(1).and_then(|v| v.known())) {
                (Some(a), Some(r)) if r.len() == a.len() => Some(
                    a.iter()
                        .zip(&r)
                        .map(|(d, &k)| {
                            if k == 1 {
                                d.clone()
                            } else {
                                d.as_known().map(|x| Dim::known(x * k)).unwrap_or_else(Dim::unknown)
                            }
                        })
                        .collect(),
                ),
                _ => None,
            };
            vec![(ttype(elem(0), s), None)]
        }
        Op::Split => {
            let k = node.outputs().len();
            let axis = attrs.get_int("axis").unwrap_or(0);
            let sizes: Option<Vec<i64>> = if opset >= 13 {
                input(1).and_then(|_| val(1).and_then(|v| v.known()))
            } else {
                attrs.get_ints("split").map(|s| s.to_vec())
            };
            let shapes: Vec<Option<Shape>> = match shape(0) {
                Some(s) => match norm_axis(axis, s.len()) {
                    Some(a) => {
                        let sizes = sizes.or_else(|| {
                            s[a].as_known().filter(|d| k > 0 && d % k as i64 == 0).map(|d| vec![d / k as i64; k])
                        });
                        (0..k)
                            .map(|i| {
                                let mut o = s.clone();
                                o[a] = sizes
                                    .as_ref()
                                    .and_then(|z| z.get(i))
                                    .map(|&z| Dim::known(z))
                                    .unwrap_or_else(Dim::unknown);
                                Some(o)
                            })
                            .collect()
                    }
                    None => vec![None; k],
                },
                None => vec![None; k],
            };
            shapes.into_iter().map(|s| (ttype(elem(0), s), None)).collect()
        }
        Op::ReduceMean
        | Op::ReduceSum
        | Op::ReduceMax
        | Op::ReduceMin
        | Op::ReduceProd
        | Op::ReduceL1
        | Op::ReduceL2
        | Op::ReduceLogSum
        | Op::ReduceLogSumExp
        | Op::ReduceSumSquare
        | Op::ArgMax
        | Op::ArgMin => {
            let keep = attrs.get_int("keepdims").unwrap_or(1) != 0;
            let arg = matches!(node.op, Op::ArgMax | Op::ArgMin);
            let axes: Option<Vec<i64>> = if arg {
                Some(vec![attrs.get_int("axis").unwrap_or(0)])
            } else if let Some(a) = attrs.get_ints("axes") {
                Some(a.to_vec())
            } else if input(1).is_some() {
                val(1).and_then(|v| v.known())
            } else {
                Some(vec![])
            };
            let noop = attrs.get_int("noop_with_empty_axes").unwrap_or(0) != 0;
            let s = match (shape(0), axes) {
                (Some(s), Some(axes)) => {
                    let ax: Option<Vec<usize>> = if axes.is_empty() {
                        if noop { Some(vec![]) } else { Some((0..s.len()).collect()) }
                    } else {
                        axes.iter().map(|&a| norm_axis(a, s.len())).collect()
                    };
                    ax.map(|ax| {
                        s.iter()
                            .enumerate()
                            .filter_map(
                                |(i, d)| {
                                    if ax.contains(&i) { keep.then(|| Dim::known(1)) } else { Some(d.clone()) }
                                },
                            )
                            .collect()
                    })
                }
                _ => None,
            };
            vec![(ttype(if arg { Some(DType::I64) } else { elem(0) }, s), None)]
        }
        Op::Pad => {
            let pads =
                if opset >= 11 { val(1).and_then(|v| v.known()) } else { attrs.get_ints("pads").map(|p| p.to_vec()) };
            let s = match (shape(0), pads) {
                (Some(s), Some(p)) if p.len() == 2 * s.len() && input(3).is_none() => Some(
                    s.iter()
                        .enumerate()
                        .map(|(i, d)| {
                            let add = p[i] + p[i + s.len()];
                            if add == 0 { d.clone() } else { dim_from(&dim_add(&d.value, &DimValue::Known(add))) }
                        })
                        .collect(),
                ),
                _ => None,
            };
            vec![(ttype(elem(0), s), None)]
        }
        Op::QuantizeLinear => {
            let out = input(2).and_then(|z| f.types.get(&z)).and_then(|t| t.elem()).or(Some(DType::U8));
            vec![(ttype(out, shape(0)), None)]
        }
        Op::DequantizeLinear => {
            let out = input(1).and_then(|s| f.types.get(&s)).and_then(|t| t.elem()).or(Some(DType::F32));
            vec![(ttype(out, shape(0)), None)]
        }
        Op::NonZero => {
            vec![(ttype(Some(DType::I64), shape(0).map(|s| vec![Dim::known(s.len() as i64), Dim::unknown()])), None)]
        }
        Op::TopK => {
            let s = shape(0).map(|mut s| {
                if let Some(a) = norm_axis(attrs.get_int("axis").unwrap_or(-1), s.len()) {
                    s[a] = val(1)
                        .and_then(|v| v.known())
                        .and_then(|k| k.first().copied())
                        .map(Dim::known)
                        .unwrap_or_else(Dim::unknown);
                }
                s
            });
            vec![(ttype(elem(0), s.clone()), None), (ttype(Some(DType::I64), s), None)]
        }
        Op::Resize | Op::Upsample => {
            let s = match (shape(0), node.inputs().len()) {
                (Some(_), 4) => val(3).map(|v| v.data.iter().map(dim_from).collect::<Shape>()),
                _ => None,
            };
            vec![(ttype(elem(0), s), None)]
        }
        Op::OneHot => vec![(ttype(elem(2), None), None)],
        Op::GatherElements => vec![(ttype(elem(0), shape(1)), None)],
        Op::ScatterElements | Op::ScatterND | Op::Scatter => same(),
        // onnxruntime contrib ops that optc's fusions emit.
        Op::Opaque { domain, op_type } if domain == "com.microsoft" => match op_type.as_str() {
            "Gelu" | "FastGelu" | "BiasGelu" | "QuickGelu" => same(),
            "SkipLayerNormalization" | "SkipSimplifiedLayerNormalization" => {
                let t = ttype(elem(0), shape(0));
                let mut o = vec![(t.clone(), None), (None, None), (None, None), (t, None)];
                o.truncate(node.outputs().len().max(1));
                o
            }
            // input [B, S, K] with packed weights [K, 3 * hidden]: [B, S, hidden].
            "Attention" if node.attrs.get_ints("qkv_hidden_sizes").is_none() => {
                let s = shape(0).filter(|s| s.len() == 3).and_then(|mut s| {
                    let w = shape(1).filter(|w| w.len() == 2)?;
                    let n = w[1].as_known().filter(|&n| n > 0 && n % 3 == 0)?;
                    s[2] = Dim::known(n / 3);
                    Some(s)
                });
                let mut o = vec![(ttype(elem(0), s), None)];
                o.resize(node.outputs().len().max(1), (None, None));
                o
            }
            "FusedConv" => vec![(ttype(elem(0), conv_shape(g, n, shape(0), shape(1))), None)],
            // A [..., K] by B [N, K] in blocks: [..., N].
            "MatMulNBits" => {
                let s = shape(0).filter(|s| !s.is_empty()).and_then(|mut s| {
                    let n = node.attrs.get_int("N").filter(|&n| n >= 0)?;
                    *s.last_mut()? = Dim::known(n);
                    Some(s)
                });
                vec![(ttype(elem(0), s), None)]
            }
            _ => vec![(None, None); node.outputs().len()],
        },
        _ => vec![(None, None); node.outputs().len()],
    }
}

fn conv_shape(g: &Graph, n: NodeId, x: Option<Shape>, w: Option<Shape>) -> Option<Shape> {
    let node = g.node(n);
    let a = &node.attrs;
    let x = x?;
    if x.len() < 3 {
        return None;
    }
    let spatial = x.len() - 2;
    let kernel: Vec<i64> = match a.get_ints("kernel_shape") {
        Some(k) => k.to_vec(),
        None => w.as_ref()?.iter().skip(2).map(|d| d.as_known()).collect::<Option<Vec<_>>>()?,
    };
    if kernel.len() != spatial {
        return None;
    }
    let strides = a.get_ints("strides").map(|v| v.to_vec()).unwrap_or_else(|| vec![1; spatial]);
    let dil = a.get_ints("dilations").map(|v| v.to_vec()).unwrap_or_else(|| vec![1; spatial]);
    let pads = a.get_ints("pads").map(|v| v.to_vec()).unwrap_or_else(|| vec![0; 2 * spatial]);
    let auto = a.get_string("auto_pad").unwrap_or("NOTSET");
    let ceil = a.get_int("ceil_mode").unwrap_or(0) != 0;
    let channels = match &w {
        Some(w) => w.first().cloned().unwrap_or_else(Dim::unknown),
        None => x[1].clone(),
    };
    let mut out = vec![x[0].clone(), channels];
    for i in 0..spatial {
        let d = match x[2 + i].as_known() {
            Some(d) => d,
            None => {
                out.push(Dim::unknown());
                continue;
            }
        };
        let (s, k, dl) = (*strides.get(i)?, kernel[i], *dil.get(i)?);
        if s <= 0 {
            return None;
        }
        let ek = (k - 1) * dl + 1;
        let o = match auto {
            "SAME_UPPER" | "SAME_LOWER" => (d + s - 1) / s,
            "VALID" => (d - ek) / s + 1,
            _ => {
                let total = d + pads.get(i)? + pads.get(i + spatial)? - ek;
                if ceil { (total + s - 1) / s + 1 } else { total / s + 1 }
            }
        };
        out.push(Dim::known(o));
    }
    Some(out)
}

fn reshape_shape(input: Option<&Shape>, target: &SymTensor, allowzero: bool) -> Option<Shape> {
    let mut out: Shape = Vec::with_capacity(target.data.len());
    let mut infer_at = None;
    for (i, t) in target.data.iter().enumerate() {
        match t {
            DimValue::Known(0) if !allowzero => out.push(input?.get(i)?.clone()),
            DimValue::Known(-1) => {
                infer_at = Some(i);
                out.push(Dim::unknown());
            }
            v => out.push(dim_from(v)),
        }
    }
    if let Some(at) = infer_at {
        let total = input?.iter().try_fold(1i64, |acc, d| d.as_known().map(|k| acc * k));
        let rest = out
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != at)
            .try_fold(1i64, |acc, (_, d)| d.as_known().map(|k| acc * k));
        if let (Some(t), Some(r)) = (total, rest) {
            if r != 0 && t % r == 0 {
                out[at] = Dim::known(t / r);
            }
        } else if let Some(inp) = input {
            // [batch, 128] -> [-1, 128]: the free dim is the one symbol left over.
            let syms: Vec<&Dim> = inp.iter().filter(|d| d.as_known().is_none()).collect();
            let out_syms = out.iter().enumerate().filter(|(i, d)| *i != at && d.as_known().is_none()).count();
            let known_in: Option<i64> = inp.iter().filter_map(|d| d.as_known()).try_fold(1i64, |a, k| Some(a * k));
            let known_out: Option<i64> = out
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != at)
                .filter_map(|(_, d)| d.as_known())
                .try_fold(1i64, |a, k| Some(a * k));
            if syms.len() == 1 && out_syms == 0 && known_in == known_out {
                out[at] = syms[0].clone();
            }
        }
    }
    Some(out)
}

/// Slices a tracked multi-dimensional value; `ranges` holds (axis, start, step, len) of the
/// sliced axes (already clamped), other axes are kept whole.
fn slice_value(v: &SymTensor, ranges: &[(usize, i64, i64, i64)]) -> Option<SymTensor> {
    let rank = v.dims.len();
    let mut start = vec![0i64; rank];
    let mut step = vec![1i64; rank];
    let mut out_dims = v.dims.clone();
    for &(a, s, st, len) in ranges {
        if a >= rank {
            return None;
        }
        start[a] = s;
        step[a] = st;
        out_dims[a] = usize::try_from(len).ok()?;
    }
    let mut strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * v.dims[i + 1];
    }
    let total: usize = out_dims.iter().product();
    let mut data = Vec::with_capacity(total);
    let mut idx = vec![0usize; rank];
    for _ in 0..total {
        let mut src = 0usize;
        for i in 0..rank {
            let k = start[i] + idx[i] as i64 * step[i];
            src += usize::try_from(k).ok()? * strides[i];
        }
        data.push(v.data.get(src)?.clone());
        for i in (0..rank).rev() {
            idx[i] += 1;
            if idx[i] < out_dims[i] {
                break;
            }
            idx[i] = 0;
        }
    }
    Some(SymTensor { dtype: v.dtype, dims: out_dims, data })
}

/// Slice with some ends given by symbolic values (`x[:, :seq]` with `seq` from a `Shape`).
/// An end of `seq` on an axis of known length `d`, starting at 0 with step 1, gives `seq`:
/// exporters slice fixed-size buffers (position ids, causal masks) to the sequence length, and
/// a longer sequence fails in the ops that read the slice. Other symbolic ends give an
/// unknown length.
fn slice_shape_sym_ends(sh: &Shape, starts: &[i64], ends: &[DimValue], axes: &[i64], steps: &[i64]) -> Option<Shape> {
    if starts.len() != axes.len() || starts.len() != steps.len() {
        return None;
    }
    let mut out = sh.clone();
    for i in 0..starts.len() {
        let a = norm_axis(axes[i], sh.len())?;
        out[a] = match &ends[i] {
            DimValue::Known(e) => {
                let (s, _) = slice_shape(&vec![sh[a].clone()], &[starts[i]], &[*e], &[0], &[steps[i]], None);
                s.and_then(|s| s.into_iter().next()).unwrap_or_else(Dim::unknown)
            }
            e @ DimValue::Sym(_) if starts[i] == 0 && steps[i] == 1 && sh[a].as_known().is_some() => dim_from(e),
            _ => Dim::unknown(),
        };
    }
    Some(out)
}

fn slice_shape(
    sh: &Shape,
    starts: &[i64],
    ends: &[i64],
    axes: &[i64],
    steps: &[i64],
    value: Option<&SymTensor>,
) -> (Option<Shape>, Option<SymTensor>) {
    if starts.len() != ends.len() || starts.len() != axes.len() || starts.len() != steps.len() {
        return (None, None);
    }
    let mut out = sh.clone();
    let mut ranges: Vec<(usize, i64, i64, i64)> = Vec::new();
    for i in 0..starts.len() {
        let Some(a) = norm_axis(axes[i], sh.len()) else {
            return (None, None);
        };
        let step = steps[i];
        if step == 0 {
            return (None, None);
        }
        let Some(d) = sh[a].as_known() else {
            // Symbolic dim: `x[k:]` has dim-k elements, `x[-k:]` has k, `x[:k]` is unknown (k may exceed dim).
            out[a] = match (starts[i], ends[i], step) {
                (s, e, 1) if s >= 0 && e >= i32::MAX as i64 => dim_from(&dim_sub(&sh[a].value, &DimValue::Known(s))),
                (s, e, 1) if s < 0 && e >= i32::MAX as i64 => Dim::known(-s),
                _ => Dim::unknown(),
            };
            continue;
        };
        let clampi = |v: i64, lo: i64, hi: i64| v.clamp(lo, hi);
        let (mut s, mut e) = (starts[i], ends[i]);
        if s < 0 {
            s += d;
        }
        if e < 0 {
            e += d;
        }
        let (s, e) =
            if step > 0 { (clampi(s, 0, d), clampi(e, 0, d)) } else { (clampi(s, 0, d - 1), clampi(e, -1, d - 1)) };
        let len = if step > 0 { ((e - s).max(0) + step - 1) / step } else { ((s - e).max(0) + (-step) - 1) / (-step) };
        out[a] = Dim::known(len);
        ranges.push((a, s, step, len));
    }
    let value = value.and_then(|v| {
        // Every sliced axis must have had a known length.
        if ranges.len() != starts.len() {
            return None;
        }
        if v.dims.len() > 1 {
            return slice_value(v, &ranges);
        }
        if v.dims.len() != 1 || ranges.len() != 1 || ranges[0].0 != 0 {
            return None;
        }
        let (_, s, step, len) = ranges[0];
        let data = (0..len).map(|k| v.data.get((s + k * step) as usize).cloned()).collect::<Option<Vec<_>>>()?;
        Some(SymTensor::vector(v.dtype, data))
    });
    (Some(out), value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Decl, NodeSpec};

    fn t(elem: DType, dims: Vec<Dim>) -> Option<Type> {
        Some(Type::tensor(elem, dims))
    }

    #[test]
    fn shape_arithmetic_through_gather_concat_reshape() {
        let mut g = Graph::new("g");
        let x = g.add_value("x", t(DType::F32, vec![Dim::sym("batch"), Dim::known(4), Dim::known(8)])).unwrap();
        g.inputs.push(Decl::new(x));
        let shp = g.add_value("shp", None).unwrap();
        let idx = g
            .add_initializer("idx", Tensor::from_raw(None, DType::I64, vec![], 0i64.to_le_bytes().to_vec().into()))
            .unwrap();
        let b = g.add_value("b", None).unwrap();
        let b1 = g.add_value("b1", None).unwrap();
        let ax = g
            .add_initializer("ax", Tensor::from_raw(None, DType::I64, vec![1], 0i64.to_le_bytes().to_vec().into()))
            .unwrap();
        let rest = g
            .add_initializer("rest", Tensor::from_raw(None, DType::I64, vec![1], 32i64.to_le_bytes().to_vec().into()))
            .unwrap();
        let target = g.add_value("target", None).unwrap();
        let y = g.add_value("y", None).unwrap();
        g.add_node(NodeSpec::new(Op::Shape, vec![Some(x)], vec![Some(shp)])).unwrap();
        g.add_node(NodeSpec::new(Op::Gather, vec![Some(shp), Some(idx)], vec![Some(b)])).unwrap();
        g.add_node(NodeSpec::new(Op::Unsqueeze, vec![Some(b), Some(ax)], vec![Some(b1)])).unwrap();
        g.add_node(
            NodeSpec::new(Op::Concat, vec![Some(b1), Some(rest)], vec![Some(target)])
                .attrs(vec![crate::Attribute::int("axis", 0)]),
        )
        .unwrap();
        g.add_node(NodeSpec::new(Op::Reshape, vec![Some(x), Some(target)], vec![Some(y)])).unwrap();
        g.outputs.push(Decl::new(y));
        let f = infer(&g, 17);
        assert_eq!(f.shape(y).unwrap(), &vec![Dim::sym("batch"), Dim::known(32)]);
        assert_eq!(f.values[&target].data, vec![DimValue::Sym("batch".into()), DimValue::Known(32)]);
        assert_eq!(f.elem(shp), Some(DType::I64));
    }

    #[test]
    fn conv_and_broadcast() {
        let a = vec![Dim::sym("n"), Dim::known(1), Dim::known(5)];
        let b = vec![Dim::known(3), Dim::known(1)];
        assert_eq!(broadcast(&[&a, &b]).unwrap(), vec![Dim::sym("n"), Dim::known(3), Dim::known(5)]);
        assert!(broadcast(&[&vec![Dim::known(2)], &vec![Dim::known(3)]]).is_none());
    }
}

#[cfg(test)]
mod sym_tests {
    use super::*;
    use crate::{Attribute, Decl, NodeSpec};

    #[test]
    fn concat_and_pad_give_expressions() {
        let mut g = Graph::new("g");
        let ty = |d: Vec<Dim>| Some(Type::tensor(DType::F32, d));
        let past = g.add_value("past", ty(vec![Dim::known(1), Dim::sym("past_len"), Dim::known(8)])).unwrap();
        let cur = g.add_value("cur", ty(vec![Dim::known(1), Dim::sym("seq"), Dim::known(8)])).unwrap();
        g.inputs.push(Decl::new(past));
        g.inputs.push(Decl::new(cur));
        let kv = g.add_value("kv", None).unwrap();
        g.add_node(
            NodeSpec::new(Op::Concat, vec![Some(past), Some(cur)], vec![Some(kv)])
                .attrs(vec![Attribute::int("axis", 1)]),
        )
        .unwrap();
        let twice = g.add_value("twice", None).unwrap();
        g.add_node(
            NodeSpec::new(Op::Concat, vec![Some(cur), Some(cur)], vec![Some(twice)])
                .attrs(vec![Attribute::int("axis", 1)]),
        )
        .unwrap();
        let f = infer(&g, 17);
        assert_eq!(f.shape(kv).unwrap()[1], Dim::sym("past_len+seq"));
        assert_eq!(f.shape(twice).unwrap()[1], Dim::sym("2*seq"));
    }
}
