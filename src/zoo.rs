//! Seeded synthetic models built with optc's own graph builder: for the examples, tests and
//! benchmarks. The same name and seed always give the same bytes.

use crate::ir::builder::{GraphBuilder, Rng};
use crate::ir::{Attribute, DType, Dim, IrError, Model, Op, Type};

/// Names of the generators, with one line each.
pub const MODELS: &[(&str, &str)] = &[(
    "tiny-cnn",
    "a small image classifier (Conv/BatchNorm/Relu/MaxPool/Gemm/Softmax) with the redundancy exporters leave: \
Identity, inference Dropout, no-op Cast and Transpose, a Shape->Gather->Concat->Reshape flatten, an unused initializer",
)];

/// Builds the named model.
pub fn build(name: &str, seed: u64) -> Result<Model, String> {
    match name {
        "tiny-cnn" => tiny_cnn(seed).map_err(|e| e.to_string()),
        _ => Err(format!(
            "unknown model '{name}'; available: {}",
            MODELS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn conv(
    b: &mut GraphBuilder,
    rng: &mut Rng,
    x: crate::ir::ValueId,
    cin: i64,
    cout: i64,
    stride: i64,
) -> Result<crate::ir::ValueId, IrError> {
    let scale = 1.0 / ((cin * 9) as f32).sqrt();
    let w = b.init_f32("conv.weight", &[cout, cin, 3, 3], &rng.vec((cout * cin * 9) as usize, scale))?;
    let bias = b.init_f32("conv.bias", &[cout], &rng.vec(cout as usize, 0.1))?;
    b.op(
        Op::Conv,
        &[x, w, bias],
        vec![
            Attribute::ints("kernel_shape", vec![3, 3]),
            Attribute::ints("pads", vec![1, 1, 1, 1]),
            Attribute::ints("strides", vec![stride, stride]),
        ],
    )
}

fn tiny_cnn(seed: u64) -> Result<Model, IrError> {
    let mut rng = Rng::new(seed);
    let mut b = GraphBuilder::new("tiny_cnn");
    let x = b.input("image", DType::F32, vec![Dim::sym("batch"), Dim::known(3), Dim::known(32), Dim::known(32)])?;
    let c1 = conv(&mut b, &mut rng, x, 3, 8, 1)?;
    let gamma = b.init_f32("bn.scale", &[8], &rng.vec(8, 0.1).iter().map(|v| 1.0 + v).collect::<Vec<_>>())?;
    let beta = b.init_f32("bn.bias", &[8], &rng.vec(8, 0.1))?;
    let mean = b.init_f32("bn.mean", &[8], &rng.vec(8, 0.1))?;
    let var = b.init_f32("bn.var", &[8], &rng.vec(8, 0.1).iter().map(|v| 1.0 + v.abs()).collect::<Vec<_>>())?;
    let bn = b.op(Op::BatchNormalization, &[c1, gamma, beta, mean, var], vec![Attribute::float("epsilon", 1e-5)])?;
    let r1 = b.op(Op::Relu, &[bn], vec![])?;
    let id = b.op(Op::Identity, &[r1], vec![])?;
    let c2 = conv(&mut b, &mut rng, id, 8, 8, 2)?;
    let r2 = b.op(Op::Relu, &[c2], vec![])?;
    let cast = b.op(Op::Cast, &[r2], vec![Attribute::int("to", DType::F32.onnx_code() as i64)])?;
    let pool = b.op(
        Op::MaxPool,
        &[cast],
        vec![Attribute::ints("kernel_shape", vec![2, 2]), Attribute::ints("strides", vec![2, 2])],
    )?;
    let drop = b.op_n(Op::Dropout, &[Some(pool)], vec![], 1)?[0];
    // Flatten the way exporters write it: Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])).
    let shape = b.op(Op::Shape, &[drop], vec![])?;
    let zero = b.init_i64("const", &[], &[0])?;
    let batch = b.op(Op::Gather, &[shape, zero], vec![Attribute::int("axis", 0)])?;
    let axes = b.init_i64("axes", &[1], &[0])?;
    let batch1 = b.op(Op::Unsqueeze, &[batch, axes], vec![])?;
    let minus1 = b.init_i64("const", &[1], &[-1])?;
    let chw = b.op(Op::Concat, &[batch1, minus1], vec![Attribute::int("axis", 0)])?;
    let flat = b.op(Op::Reshape, &[drop, chw], vec![])?;
    let w = b.init_f32("fc.weight", &[10, 512], &rng.vec(5120, 1.0 / 512f32.sqrt()))?;
    let bias = b.init_f32("fc.bias", &[10], &rng.vec(10, 0.1))?;
    let fc = b.op(Op::Gemm, &[flat, w, bias], vec![Attribute::int("transB", 1)])?;
    let t = b.op(Op::Transpose, &[fc], vec![Attribute::ints("perm", vec![0, 1])])?;
    let probs = b.op(Op::Softmax, &[t], vec![Attribute::int("axis", 1)])?;
    b.init_f32("unused.weight", &[16], &rng.vec(16, 1.0))?;
    b.output(probs, "probs", Some(Type::tensor(DType::F32, vec![Dim::sym("batch"), Dim::known(10)])))?;
    let mut m = Model::new(b.finish(), 17);
    m.producer_name = Some("optc-zoo".into());
    m.producer_version = Some(env!("CARGO_PKG_VERSION").into());
    Ok(m)
}
