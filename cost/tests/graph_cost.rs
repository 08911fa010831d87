//! Ops, bytes, bounds, fallback and fusion on small graphs.

use optc_cost::{Bound, Flag, Precision, Target, analyze, analyze_with, estimate, report};
use optc_ir::builder::GraphBuilder;
use optc_ir::{Attribute, DType, Dim, Graph, Op, Tensor};
use std::collections::HashMap;

fn no_dims() -> HashMap<String, i64> {
    HashMap::new()
}

/// x[m, k] @ W[k, n] with an f32 weight.
fn matmul_graph(m: i64, k: i64, n: i64) -> Graph {
    let mut b = GraphBuilder::new("mm");
    let x = b.input("x", DType::F32, vec![Dim::known(m), Dim::known(k)]).unwrap();
    let w = b.init_f32("w", &[k, n], &vec![0.0; (k * n) as usize]).unwrap();
    let y = b.op(Op::MatMul, &[x, w], vec![]).unwrap();
    b.output(y, "y", None).unwrap();
    b.finish()
}

#[test]
fn matmul_ops_and_bytes_are_exact() {
    let a = analyze(&matmul_graph(2, 64, 32), 21, &no_dims());
    assert_eq!(a.nodes.len(), 1);
    let n = &a.nodes[0];
    assert_eq!(n.op, "MatMul");
    assert_eq!(n.precision, Precision::F32);
    assert_eq!(n.ops, 2.0 * 2.0 * 64.0 * 32.0);
    assert_eq!(n.weight_bytes, 64.0 * 32.0 * 4.0);
    assert_eq!(n.activation_bytes(), 2.0 * 64.0 * 4.0 + 2.0 * 32.0 * 4.0);
    assert_eq!(n.bytes(), 8192.0 + 512.0 + 256.0);
    assert!(n.flags.is_empty(), "{:?}", n.flags);
}

#[test]
fn bound_flips_from_memory_to_compute_with_batch() {
    let cpu = Target::cpu();
    let gemv = estimate(&matmul_graph(1, 4096, 4096), 21, &cpu, &no_dims());
    assert_eq!(gemv.nodes[0].bound, Bound::Memory);
    let gemm = estimate(&matmul_graph(1024, 1024, 1024), 21, &cpu, &no_dims());
    assert_eq!(gemm.nodes[0].bound, Bound::Compute);
    // time = max(compute, memory) + overhead, with the documented formula.
    let r = &gemm.nodes[0];
    let expect_c = r.ops / (cpu.eff_compute * cpu.tops["f32"] * 1e12);
    assert!((r.compute_s - expect_c).abs() / expect_c < 1e-12);
    assert!((r.time_s - (r.compute_s.max(r.memory_s) + cpu.launch_overhead_us * 1e-6)).abs() < 1e-15);
    // A tiny op is launch-bound.
    let tiny = estimate(&matmul_graph(1, 4, 4), 21, &cpu, &no_dims());
    assert_eq!(tiny.nodes[0].bound, Bound::Overhead);
}

#[test]
fn int4_weights_count_half_a_byte_plus_scales() {
    let (k, n) = (64i64, 32i64);
    let mut b = GraphBuilder::new("dq");
    let x = b.input("x", DType::F32, vec![Dim::known(1), Dim::known(k)]).unwrap();
    let raw = vec![0u8; (k * n / 2) as usize];
    let wq =
        b.graph.add_initializer("wq", Tensor::from_raw(Some("wq".into()), DType::I4, vec![k, n], raw.into())).unwrap();
    let scale = b.init_f32("scale", &[n], &vec![0.1; n as usize]).unwrap();
    let w = b.op(Op::DequantizeLinear, &[wq, scale], vec![Attribute::int("axis", 1)]).unwrap();
    let y = b.op(Op::MatMul, &[x, w], vec![]).unwrap();
    b.output(y, "y", None).unwrap();
    let a = analyze(&b.finish(), 21, &no_dims());
    let dq = a.nodes.iter().find(|c| c.op == "DequantizeLinear").unwrap();
    assert!(dq.free && dq.flags.contains(&Flag::FoldedIntoConsumer));
    assert_eq!(dq.bytes(), 0.0);
    let mm = a.nodes.iter().find(|c| c.op == "MatMul").unwrap();
    assert_eq!(mm.weight_bytes, (k * n) as f64 * 0.5 + n as f64 * 4.0);
    assert_eq!(mm.ops, 2.0 * (k * n) as f64);
    // Weight-only: computes at the activation precision.
    assert_eq!(mm.precision, Precision::F32);
}

/// `x[m, k] @ MatMulNBits(4-bit, block)[k, n]`, activations and scales in `dtype` (zeros).
fn nbits_graph(m: i64, k: i64, n: i64, block: i64, dtype: DType) -> Graph {
    let mut b = GraphBuilder::new("nbits");
    let x = b.input("x", dtype, vec![Dim::known(m), Dim::known(k)]).unwrap();
    let wb = vec![0u8; (n * (k / block) * (block / 2)) as usize];
    let w = b
        .graph
        .add_initializer("w", Tensor::from_raw(Some("w".into()), DType::U8, vec![n, k / block, block / 2], wb.into()))
        .unwrap();
    let scales = n * (k / block);
    let sraw = vec![0u8; dtype.storage_bytes(scales as u64).unwrap() as usize];
    let s = b.graph.add_initializer("s", Tensor::from_raw(Some("s".into()), dtype, vec![scales], sraw.into())).unwrap();
    let attrs = vec![
        Attribute::int("K", k),
        Attribute::int("N", n),
        Attribute::int("bits", 4),
        Attribute::int("block_size", block),
    ];
    let y = b.op(Op::from_onnx("com.microsoft", "MatMulNBits"), &[x, w, s], attrs).unwrap();
    b.output(y, "y", None).unwrap();
    b.finish()
}

#[test]
fn matmulnbits_is_costed_from_its_attributes() {
    let (m, k, n, block) = (8i64, 256i64, 128i64, 32i64);
    let a = analyze(&nbits_graph(m, k, n, block, DType::F16), 21, &no_dims());
    let c = &a.nodes[0];
    assert_eq!(c.op, "com.microsoft::MatMulNBits");
    assert_eq!(c.ops, 2.0 * (m * k * n) as f64);
    assert_eq!(c.weight_bytes, (n * k) as f64 * 0.5 + (n * k / block) as f64 * 2.0);
    assert_eq!(c.precision, Precision::F16);
    // Output [m, n] in f16, derived from the attributes since inference does not know the op.
    assert_eq!(c.outputs[0].bytes, (m * n * 2) as f64);
    let npu = Target::builtin("npu").unwrap();
    let igpu = Target::builtin("igpu").unwrap();
    // f16 is not an NPU precision, but a weight-only quantised matmul runs its activations in
    // the device's preferred float (W4A16 in bf16) rather than falling back.
    assert!(!npu.node_time(c).fallback);
    assert_eq!(npu.compute_precision(c), Precision::BF16);
    assert!(!igpu.node_time(c).fallback);
}

#[test]
fn unsupported_op_or_precision_on_npu_falls_back() {
    let mut b = GraphBuilder::new("fb");
    let x = b.input("x", DType::I8, vec![Dim::known(16), Dim::known(64)]).unwrap();
    let w = b.input("w", DType::I8, vec![Dim::known(64), Dim::known(64)]).unwrap();
    let mm = b.op(Op::MatMulInteger, &[x, w], vec![]).unwrap();
    let k = b.init_i64("k", &[1], &[4]).unwrap();
    let top = b.op_n(Op::TopK, &[Some(mm), Some(k)], vec![], 2).unwrap();
    let f = b.input("f", DType::F32, vec![Dim::known(64), Dim::known(64)]).unwrap();
    let y = b.op(Op::MatMul, &[f, f], vec![]).unwrap();
    b.output(top[0], "top", None).unwrap();
    b.output(y, "y", None).unwrap();
    let npu = Target::builtin("npu").unwrap();
    let r = estimate(&b.finish(), 21, &npu, &no_dims());
    let row = |op: &str| r.nodes.iter().find(|n| n.op == op).unwrap();
    assert!(!row("MatMulInteger").fallback);
    assert_eq!(row("MatMulInteger").precision, Precision::Int8);
    assert!(row("TopK").fallback, "TopK is not an NPU op");
    assert!(row("MatMul").fallback, "f32 is not an NPU precision");
    assert_eq!(r.totals.fallback_nodes, 2);
    // The CPU runs everything.
    let cpu = estimate(&matmul_graph(4, 4, 4), 21, &Target::cpu(), &no_dims());
    assert_eq!(cpu.totals.fallback_nodes, 0);
}

#[test]
fn symbolic_dims_bind_and_unbound_ones_are_flagged() {
    let mut b = GraphBuilder::new("sym");
    let x = b.input("x", DType::F32, vec![Dim::sym("batch"), Dim::sym("seq"), Dim::known(64)]).unwrap();
    let w = b.init_f32("w", &[64, 64], &vec![0.0; 64 * 64]).unwrap();
    let y = b.op(Op::MatMul, &[x, w], vec![]).unwrap();
    let r = b.op(Op::Relu, &[y], vec![]).unwrap();
    let shape = b.init_i64("shape", &[2], &[-1, 64]).unwrap();
    let z = b.op(Op::Reshape, &[r, shape], vec![]).unwrap();
    b.output(z, "z", None).unwrap();
    let g = b.finish();
    let dims: HashMap<String, i64> = [("seq".to_string(), 128)].into();
    let a = analyze(&g, 21, &dims);
    assert_eq!(a.unbound_dims, vec!["batch".to_string()]);
    let mm = &a.nodes[0];
    assert_eq!(mm.ops, 2.0 * 128.0 * 64.0 * 64.0);
    assert!(mm.flags.contains(&Flag::UnboundDim));
    let relu = a.nodes.iter().find(|n| n.op == "Relu").unwrap();
    assert_eq!(relu.ops, 128.0 * 64.0);
    let reshape = a.nodes.iter().find(|n| n.op == "Reshape").unwrap();
    assert!(reshape.free && reshape.ops == 0.0 && reshape.bytes() == 0.0);
    let dims2: HashMap<String, i64> = [("seq".to_string(), 128), ("batch".to_string(), 4)].into();
    let a2 = analyze(&g, 21, &dims2);
    assert!(a2.unbound_dims.is_empty());
    assert_eq!(a2.nodes[0].ops, 4.0 * mm.ops);
}

#[test]
fn gather_from_an_embedding_reads_only_the_rows() {
    let mut b = GraphBuilder::new("emb");
    let ids = b.input("ids", DType::I64, vec![Dim::known(1), Dim::known(4)]).unwrap();
    let table = b.init_f32("table", &[1000, 64], &vec![0.0; 64_000]).unwrap();
    let y = b.op(Op::Gather, &[table, ids], vec![]).unwrap();
    b.output(y, "y", None).unwrap();
    let a = analyze(&b.finish(), 21, &no_dims());
    let g = &a.nodes[0];
    assert_eq!(g.ops, 0.0);
    assert_eq!(g.weight_bytes, 4.0 * 64.0 * 4.0);
}

#[test]
fn opaque_ops_get_a_flagged_estimate() {
    let mut b = GraphBuilder::new("opq");
    let x = b.input("x", DType::F32, vec![Dim::known(8), Dim::known(8)]).unwrap();
    let y = b.op(Op::from_onnx("my.domain", "Mystery"), &[x], vec![]).unwrap();
    b.output(y, "y", None).unwrap();
    let a = analyze(&b.finish(), 21, &no_dims());
    let c = &a.nodes[0];
    assert!(c.flags.contains(&Flag::OpaqueEstimate));
    assert!(c.flags.contains(&Flag::ShapeEstimated));
    assert_eq!(c.ops, 2.0 * 64.0);
    assert_eq!(c.bytes(), 2.0 * 64.0 * 4.0);
}

/// MatMul -> Add(bias) -> Relu: fusing drops the two intermediate tensors and two launches.
#[test]
fn fusion_removes_intermediate_traffic_and_launches() {
    let (m, k, n) = (64i64, 256i64, 256i64);
    let mut b = GraphBuilder::new("chain");
    let x = b.input("x", DType::F32, vec![Dim::known(m), Dim::known(k)]).unwrap();
    let w = b.init_f32("w", &[k, n], &vec![0.0; (k * n) as usize]).unwrap();
    let bias = b.init_f32("b", &[n], &vec![0.0; n as usize]).unwrap();
    let y = b.op(Op::MatMul, &[x, w], vec![]).unwrap();
    let z = b.op(Op::Add, &[y, bias], vec![]).unwrap();
    let r = b.op(Op::Relu, &[z], vec![]).unwrap();
    b.output(r, "out", None).unwrap();
    let a = analyze(&b.finish(), 21, &no_dims());
    assert_eq!(a.nodes.len(), 3);
    let fused = a.fuse(&[vec![0, 1, 2]]).unwrap();
    assert_eq!(fused.nodes.len(), 1);
    let f = &fused.nodes[0];
    assert_eq!(f.op, "Fused[MatMul+Add+Relu]");
    assert!(f.flags.contains(&Flag::Fused));
    assert_eq!(f.ops, a.total_ops());
    let act = (m * n * 4) as f64;
    // Two intermediates, each written once and read once, disappear.
    assert_eq!(a.total_bytes() - fused.total_bytes(), 4.0 * act);
    let cpu = Target::cpu();
    let before = report(&a, &cpu);
    let after = report(&fused, &cpu);
    assert!(after.totals.time_s < before.totals.time_s);
    // Bad groups are errors, not panics.
    assert!(a.fuse(&[vec![0, 1], vec![1, 2]]).is_err());
    assert!(a.fuse(&[vec![7]]).is_err());
    assert!(a.fuse(&[vec![]]).is_err());
    // A value also read outside the group keeps its traffic.
    let partial = a.fuse(&[vec![0, 1]]).unwrap();
    assert_eq!(a.total_bytes() - partial.total_bytes(), 2.0 * act);
}

#[test]
fn report_aggregates_by_op_and_serialises() {
    let r = estimate(&matmul_graph(8, 32, 32), 21, &Target::cpu(), &no_dims());
    assert_eq!(r.by_op.len(), 1);
    assert_eq!(r.by_op[0].count, 1);
    assert!((r.by_op[0].time_share - 1.0).abs() < 1e-12);
    assert_eq!(r.totals.weight_bytes, 32.0 * 32.0 * 4.0);
    let json = serde_json::to_string(&r).unwrap();
    assert!(json.contains("\"bound\":\"overhead\"") || json.contains("\"bound\":\"memory\""), "{json}");
    assert!(json.contains("\"target\":\"cpu\""));
}

#[test]
fn loop_bodies_are_counted_once_and_flagged() {
    let mut body = GraphBuilder::new("body");
    let bi = body.input("i", DType::I64, vec![]).unwrap();
    let bc = body.input("cond", DType::Bool, vec![]).unwrap();
    let bx = body.input("x_in", DType::F32, vec![Dim::known(16), Dim::known(16)]).unwrap();
    let w = body.init_f32("w", &[16, 16], &vec![0.0; 256]).unwrap();
    let y = body.op(Op::MatMul, &[bx, w], vec![]).unwrap();
    let c = body.op(Op::Identity, &[bc], vec![]).unwrap();
    body.output(c, "cond_out", None).unwrap();
    body.output(y, "x_out", None).unwrap();
    let _ = bi;
    let body = body.finish();
    let mut b = GraphBuilder::new("outer");
    let x = b.input("x", DType::F32, vec![Dim::known(16), Dim::known(16)]).unwrap();
    let trip = b.init_i64("trip", &[], &[3]).unwrap();
    let cond = b.input("c", DType::Bool, vec![]).unwrap();
    let out = b
        .op(Op::Loop, &[trip, cond, x], vec![Attribute::new("body", optc_ir::AttrValue::Graph(Box::new(body)))])
        .unwrap();
    b.output(out, "y", None).unwrap();
    let a = analyze(&b.finish(), 21, &no_dims());
    let mm = a.nodes.iter().find(|n| n.op == "MatMul").expect("body node analysed");
    assert!(mm.flags.contains(&Flag::Subgraph));
    assert!(mm.name.contains('/'));
    assert_eq!(mm.ops, 2.0 * 16.0 * 16.0 * 16.0);
}

#[test]
fn bound_dims_flow_through_strided_convs() {
    // x[1, 3, h, w] -> Conv 3x3 stride 2 pad 1 -> y: with h = w = 64 the output is 32x32, a
    // size the symbolic arithmetic cannot express without the binding.
    let mut b = GraphBuilder::new("conv");
    let x = b.input("x", DType::F32, vec![Dim::known(1), Dim::known(3), Dim::sym("h"), Dim::sym("w")]).unwrap();
    let w = b.init_f32("w", &[8, 3, 3, 3], &[0.0; 8 * 27]).unwrap();
    let attrs = vec![Attribute::ints("strides", vec![2, 2]), Attribute::ints("pads", vec![1, 1, 1, 1])];
    let c = b.op(Op::Conv, &[x, w], attrs).unwrap();
    let r = b.op(Op::Relu, &[c], vec![]).unwrap();
    b.output(r, "y", None).unwrap();
    let g = b.finish();
    let dims: HashMap<String, i64> = [("h".to_string(), 64), ("w".to_string(), 64)].into();
    let a = analyze(&g, 21, &dims);
    let conv = &a.nodes[0];
    assert_eq!(conv.ops, 2.0 * (8.0 * 32.0 * 32.0) * 27.0, "{conv:?}");
    assert!(!conv.flags.contains(&Flag::ShapeEstimated), "{:?}", conv.flags);
    assert!(a.unbound_dims.is_empty(), "{:?}", a.unbound_dims);
}

/// x[1, s, h] -> MatMul + bias Add -> Add(residual x) -> LayerNorm written out (ReduceMean, Sub,
/// Pow, ReduceMean, Add eps, Sqrt, Div, Mul gamma, Add beta) -> GELU written out (Div, Erf, Add,
/// Mul, Mul).
fn decomposed_block(s: i64, h: i64) -> Graph {
    let mut b = GraphBuilder::new("block");
    let x = b.input("x", DType::F32, vec![Dim::known(1), Dim::known(s), Dim::known(h)]).unwrap();
    let w = b.init_f32("w", &[h, h], &vec![0.01; (h * h) as usize]).unwrap();
    let bias = b.init_f32("bias", &[h], &vec![0.0; h as usize]).unwrap();
    let mm = b.op(Op::MatMul, &[x, w], vec![]).unwrap();
    let mb = b.op(Op::Add, &[mm, bias], vec![]).unwrap();
    let r = b.op(Op::Add, &[mb, x], vec![]).unwrap();
    let axes = b.init_i64("axes", &[1], &[-1]).unwrap();
    let mean = b.op(Op::ReduceMean, &[r, axes], vec![]).unwrap();
    let d = b.op(Op::Sub, &[r, mean], vec![]).unwrap();
    let two = b.init_f32("two", &[], &[2.0]).unwrap();
    let sq = b.op(Op::Pow, &[d, two], vec![]).unwrap();
    let var = b.op(Op::ReduceMean, &[sq, axes], vec![]).unwrap();
    let eps = b.init_f32("eps", &[], &[1e-5]).unwrap();
    let ve = b.op(Op::Add, &[var, eps], vec![]).unwrap();
    let sd = b.op(Op::Sqrt, &[ve], vec![]).unwrap();
    let nrm = b.op(Op::Div, &[d, sd], vec![]).unwrap();
    let gamma = b.init_f32("gamma", &[h], &vec![1.0; h as usize]).unwrap();
    let beta = b.init_f32("beta", &[h], &vec![0.0; h as usize]).unwrap();
    let sc = b.op(Op::Mul, &[nrm, gamma], vec![]).unwrap();
    let ln = b.op(Op::Add, &[sc, beta], vec![]).unwrap();
    let rt2 = b.init_f32("rt2", &[], &[std::f32::consts::SQRT_2]).unwrap();
    let one = b.init_f32("one", &[], &[1.0]).unwrap();
    let half = b.init_f32("half", &[], &[0.5]).unwrap();
    let g1 = b.op(Op::Div, &[ln, rt2], vec![]).unwrap();
    let g2 = b.op(Op::Erf, &[g1], vec![]).unwrap();
    let g3 = b.op(Op::Add, &[g2, one], vec![]).unwrap();
    let g4 = b.op(Op::Mul, &[ln, g3], vec![]).unwrap();
    let y = b.op(Op::Mul, &[g4, half], vec![]).unwrap();
    b.output(y, "y", None).unwrap();
    b.finish()
}

#[test]
fn runtime_groups_find_bias_epilogue_skip_norm_and_gelu() {
    let a = analyze(&decomposed_block(128, 64), 17, &no_dims());
    let ops = |grp: &Vec<usize>| grp.iter().map(|&i| a.nodes[i].op.clone()).collect::<Vec<_>>();
    let groups = a.runtime_groups(true, true, true);
    let named: Vec<Vec<String>> = groups.iter().map(ops).collect();
    // MatMul + bias Add.
    assert!(named.contains(&vec!["MatMul".to_string(), "Add".to_string()]), "{named:?}");
    // The residual Add joins the written-out LayerNorm: 1 + 9 nodes.
    let ln = named.iter().find(|g| g.iter().filter(|o| *o == "ReduceMean").count() == 2).expect("a norm group");
    assert_eq!(ln.len(), 10, "{ln:?}");
    let gelu = named.iter().find(|g| g.contains(&"Erf".to_string())).expect("a GELU group");
    assert_eq!(gelu.len(), 5, "{gelu:?}");
    // Disjoint, and nothing when the flags are off.
    let mut all: Vec<usize> = groups.concat();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n);
    assert!(a.runtime_groups(false, false, false).is_empty());
    // The fused graph is cheaper on a target that fuses, and costs as before on one that does not.
    let mut plain = Target::cpu();
    plain.fused_activations = false;
    plain.fused_epilogues = false;
    plain.fused_composites = false;
    let before = estimate(&decomposed_block(128, 64), 17, &plain, &no_dims()).totals.time_s;
    let after = estimate(&decomposed_block(128, 64), 17, &Target::cpu(), &no_dims()).totals.time_s;
    assert!(after < before * 0.5, "{after} vs {before}");
}

#[test]
fn a_residual_read_elsewhere_does_not_join_the_norm() {
    // Pre-norm: the residual sum also feeds the next block, so the runtime keeps the Add apart.
    let mut b = GraphBuilder::new("prenorm");
    let x = b.input("x", DType::F32, vec![Dim::known(1), Dim::known(16), Dim::known(32)]).unwrap();
    let y0 = b.input("y0", DType::F32, vec![Dim::known(1), Dim::known(16), Dim::known(32)]).unwrap();
    let r = b.op(Op::Add, &[x, y0], vec![]).unwrap();
    let gamma = b.init_f32("gamma", &[32], &[1.0; 32]).unwrap();
    let beta = b.init_f32("beta", &[32], &[0.0; 32]).unwrap();
    let ln = b.op(Op::LayerNormalization, &[r, gamma, beta], vec![Attribute::int("axis", -1)]).unwrap();
    let out = b.op(Op::Add, &[ln, r], vec![]).unwrap();
    b.output(out, "out", None).unwrap();
    let a = analyze(&b.finish(), 17, &no_dims());
    assert!(a.runtime_groups(true, true, true).is_empty());
}

#[test]
fn shape_arithmetic_on_static_shapes_is_folded() {
    let mut b = GraphBuilder::new("shape");
    let x = b.input("x", DType::F32, vec![Dim::known(2), Dim::known(3), Dim::known(4)]).unwrap();
    let sh = b.op(Op::Shape, &[x], vec![]).unwrap();
    let idx = b.init_i64("idx", &[1], &[2]).unwrap();
    let g = b.op(Op::Gather, &[sh, idx], vec![]).unwrap();
    let m1 = b.init_i64("m1", &[1], &[-1]).unwrap();
    let c = b.op(Op::Concat, &[m1, g], vec![Attribute::int("axis", 0)]).unwrap();
    let y = b.op(Op::Reshape, &[x, c], vec![]).unwrap();
    b.output(y, "y", None).unwrap();
    let a = analyze(&b.finish(), 17, &no_dims());
    for n in &a.nodes {
        if n.op == "Gather" || n.op == "Concat" {
            assert!(n.free && n.flags.contains(&Flag::ConstantFolded), "{n:?}");
        }
    }
    // With a symbolic dim the shape is not known before the run: the Gather stays.
    let mut b = GraphBuilder::new("shape_sym");
    let x = b.input("x", DType::F32, vec![Dim::known(2), Dim::sym("n")]).unwrap();
    let sh = b.op(Op::Shape, &[x], vec![]).unwrap();
    let idx = b.init_i64("idx", &[1], &[1]).unwrap();
    let g = b.op(Op::Gather, &[sh, idx], vec![]).unwrap();
    let y = b.op(Op::Reshape, &[x, g], vec![]).unwrap();
    b.output(y, "y", None).unwrap();
    let a = analyze(&b.finish(), 17, &no_dims());
    let gather = a.nodes.iter().find(|n| n.op == "Gather").unwrap();
    assert!(!gather.free, "{gather:?}");
}

#[test]
fn op_efficiency_scales_one_op() {
    let mut b = GraphBuilder::new("ln");
    let x = b.input("x", DType::F32, vec![Dim::known(1), Dim::known(512), Dim::known(768)]).unwrap();
    let gamma = b.init_f32("gamma", &[768], &[1.0; 768]).unwrap();
    let beta = b.init_f32("beta", &[768], &[0.0; 768]).unwrap();
    let ln = b.op(Op::LayerNormalization, &[x, gamma, beta], vec![Attribute::int("axis", -1)]).unwrap();
    b.output(ln, "y", None).unwrap();
    let g = b.finish();
    let mut t = Target::cpu();
    t.launch_overhead_us = 0.0;
    let base = estimate(&g, 17, &t, &no_dims()).totals.time_s;
    t.op_efficiency.insert("LayerNormalization".into(), 0.25);
    let slow = estimate(&g, 17, &t, &no_dims()).totals.time_s;
    assert!((slow / base - 4.0).abs() < 1e-9, "{slow} vs {base}");
    t.op_efficiency.insert("LayerNormalization".into(), -1.0);
    assert!(t.validate("t.toml").is_err());
}

/// x -> Q -> DQ, read by `readers` MatMuls with int8 per-channel weights (one DQ shared).
fn qdq_fanout(readers: usize) -> Graph {
    let (k, n) = (64i64, 32i64);
    let mut b = GraphBuilder::new("qdq");
    let x = b.input("x", DType::F32, vec![Dim::known(8), Dim::known(k)]).unwrap();
    let xs = b.init_f32("xs", &[], &[0.05]).unwrap();
    let xq = b.op(Op::QuantizeLinear, &[x, xs], vec![]).unwrap();
    let xd = b.op(Op::DequantizeLinear, &[xq, xs], vec![]).unwrap();
    for i in 0..readers {
        let raw = vec![1u8; (k * n) as usize];
        let name = format!("w{i}");
        let wq = b
            .graph
            .add_initializer(&name, Tensor::from_raw(Some(name.clone()), DType::I8, vec![k, n], raw.into()))
            .unwrap();
        let ws = b.init_f32(&format!("ws{i}"), &[n], &vec![0.01; n as usize]).unwrap();
        let w = b.op(Op::DequantizeLinear, &[wq, ws], vec![Attribute::int("axis", 1)]).unwrap();
        let y = b.op(Op::MatMul, &[xd, w], vec![]).unwrap();
        b.output(y, &format!("y{i}"), None).unwrap();
    }
    b.finish()
}

#[test]
fn shared_quantised_inputs_leave_qdq_groups_in_float_where_the_runtime_does() {
    let matmuls = |a: &optc_cost::Analysis| -> Vec<Precision> {
        a.nodes.iter().filter(|c| c.op == "MatMul").map(|c| c.precision).collect()
    };
    // One reader: an integer kernel either way, the weight read as int8.
    for fused in [true, false] {
        let a = analyze_with(&qdq_fanout(1), 21, &no_dims(), fused);
        assert_eq!(matmuls(&a), vec![Precision::Int8]);
        let mm = a.nodes.iter().find(|c| c.op == "MatMul").unwrap();
        assert_eq!(mm.weight_bytes, 64.0 * 32.0 + 32.0 * 4.0);
    }
    // Two readers of one quantised tensor: int8 only where the runtime fuses shared inputs.
    let a = analyze_with(&qdq_fanout(2), 21, &no_dims(), true);
    assert_eq!(matmuls(&a), vec![Precision::Int8; 2]);
    let a = analyze_with(&qdq_fanout(2), 21, &no_dims(), false);
    assert_eq!(matmuls(&a), vec![Precision::F32; 2]);
    let dqs: Vec<&optc_cost::NodeCost> = a.nodes.iter().filter(|c| c.op == "DequantizeLinear").collect();
    assert_eq!(dqs.len(), 3);
    // The weight DQs run on every call: they are not free, and the MatMuls read float weights.
    assert!(dqs.iter().filter(|c| !c.free).count() == 3, "{dqs:?}");
    assert!(a.nodes.iter().filter(|c| c.op == "MatMul").all(|c| c.weight_bytes == 0.0));
    // The built-in cpu target (onnxruntime's CPU provider) does not fuse them.
    assert!(!Target::cpu().qdq_shared_inputs_fused);
    let (one, two) = (
        estimate(&qdq_fanout(1), 21, &Target::cpu(), &no_dims()).totals.time_s,
        estimate(&qdq_fanout(2), 21, &Target::cpu(), &no_dims()).totals.time_s,
    );
    assert!(two > 2.0 * one, "two unfused readers {two} vs one fused {one}");
}

#[test]
fn a_fused_row_takes_its_slowest_members_efficiency() {
    let mut t = Target::cpu();
    t.op_efficiency.clear();
    t.op_efficiency.insert("Erf".into(), 0.25);
    t.op_efficiency.insert("Fused[Add+LayerNormalization]".into(), 0.5);
    assert_eq!(t.op_efficiency_of("Erf"), 0.25);
    assert_eq!(t.op_efficiency_of("Fused[Div+Erf+Add+Mul+Mul]"), 0.25);
    assert_eq!(t.op_efficiency_of("Fused[Add+LayerNormalization]"), 0.5);
    assert_eq!(t.op_efficiency_of("Fused[MatMul+Add]"), 1.0);
    assert_eq!(t.op_efficiency_of("Add"), 1.0);
}

/// x [s, h] -> erf GELU, `x / sqrt(2)` as a Div or as a Mul by `1 / sqrt(2)`.
fn gelu_graph(div: bool) -> Graph {
    let mut b = GraphBuilder::new("gelu");
    let x = b.input("x", DType::F32, vec![Dim::known(128), Dim::known(256)]).unwrap();
    let y = b.op(Op::Relu, &[x], vec![]).unwrap();
    let scaled = if div {
        let c = b.init_f32("sqrt2", &[], &[std::f32::consts::SQRT_2]).unwrap();
        b.op(Op::Div, &[y, c], vec![]).unwrap()
    } else {
        let c = b.init_f32("rsqrt2", &[], &[std::f32::consts::FRAC_1_SQRT_2]).unwrap();
        b.op(Op::Mul, &[y, c], vec![]).unwrap()
    };
    let e = b.op(Op::Erf, &[scaled], vec![]).unwrap();
    let one = b.init_f32("one", &[], &[1.0]).unwrap();
    let a = b.op(Op::Add, &[e, one], vec![]).unwrap();
    let m = b.op(Op::Mul, &[y, a], vec![]).unwrap();
    let half = b.init_f32("half", &[], &[0.5]).unwrap();
    let out = b.op(Op::Mul, &[m, half], vec![]).unwrap();
    b.output(out, "y", None).unwrap();
    b.finish()
}

#[test]
fn only_the_div_form_of_the_erf_gelu_is_one_kernel() {
    let groups = |div: bool| analyze(&gelu_graph(div), 17, &no_dims()).runtime_groups(false, false, true);
    let g = groups(true);
    assert_eq!(g.len(), 1, "{g:?}");
    assert_eq!(g[0].len(), 5);
    assert!(groups(false).is_empty(), "x * (1/sqrt 2) is not matched by the runtime");
}

fn with_weight_pass(eff_stream: f64, resident_mb: f64, unpack_ns: f64, gemv_unpack_ns: f64) -> Target {
    let mut t = Target::cpu();
    t.weight_pass =
        Some(optc_cost::WeightPass { eff_stream, resident_mb, resident_exp: 0.0, unpack_ns, gemv_unpack_ns });
    t
}

#[test]
fn weight_pass_adds_streaming_to_many_row_matmuls_only() {
    let (k, n) = (1024i64, 1024i64);
    let plain = Target::cpu();
    let wp = with_weight_pass(0.2, 0.0, 0.0, 0.0);
    let wbytes = (k * n * 4) as f64;
    let stream_s = wbytes / (plain.mem_bw_gbs * 1e9 * 0.2);
    // 16 rows: the pass over the weight adds to the multiply-accumulates.
    let a = analyze(&matmul_graph(16, k, n), 21, &no_dims());
    assert_eq!(a.nodes[0].weight_elems, (k * n) as f64);
    let base = plain.node_time(&a.nodes[0]);
    let with = wp.node_time(&a.nodes[0]);
    assert!((with.compute_s - (base.compute_s + stream_s)).abs() < 1e-12, "{with:?} vs {base:?}");
    assert!(with.time_s > base.time_s);
    // One row (a GEMV): the roofline alone, the weight read once at the memory rate.
    let g = analyze(&matmul_graph(1, k, n), 21, &no_dims());
    assert_eq!(plain.node_time(&g.nodes[0]), wp.node_time(&g.nodes[0]));
    // A MatMul of two activations has no constant weight and no pass.
    let mut b = GraphBuilder::new("act");
    let x = b.input("x", DType::F32, vec![Dim::known(16), Dim::known(k)]).unwrap();
    let y = b.input("y", DType::F32, vec![Dim::known(k), Dim::known(n)]).unwrap();
    let z = b.op(Op::MatMul, &[x, y], vec![]).unwrap();
    b.output(z, "z", None).unwrap();
    let act = analyze(&b.finish(), 21, &no_dims());
    assert_eq!(act.nodes[0].weight_elems, 0.0);
    assert_eq!(plain.node_time(&act.nodes[0]), wp.node_time(&act.nodes[0]));
}

#[test]
fn resident_weights_take_no_streaming_pass() {
    let (k, n) = (1024i64, 1024i64);
    let wbytes = (k * n * 4) as f64;
    let a = analyze(&matmul_graph(16, k, n), 21, &no_dims());
    let c = &a.nodes[0];
    let plain = Target::cpu().node_time(c);
    // All of the graph's 4.2 MB of weights fit in 10 MB: no pass.
    let fits = with_weight_pass(0.2, 10.0, 0.0, 0.0);
    assert_eq!(fits.node_time_in(c, wbytes).time_s, plain.time_s);
    // In a graph of 4x the weights (16.8 MB), 10 MB stays resident and the rest streams.
    let share = 10e6 / (4.0 * wbytes);
    let expect = (1.0 - share) * wbytes / (fits.mem_bw_gbs * 1e9 * 0.2);
    let t = fits.node_time_in(c, 4.0 * wbytes);
    assert!((t.compute_s - plain.compute_s - expect).abs() < 1e-12);
    // A steeper fall: the share is squared.
    let mut steep = fits.clone();
    steep.weight_pass.as_mut().unwrap().resident_exp = 2.0;
    let expect = (1.0 - share * share) * wbytes / (fits.mem_bw_gbs * 1e9 * 0.2);
    let t = steep.node_time_in(c, 4.0 * wbytes);
    assert!((t.compute_s - plain.compute_s - expect).abs() < 1e-12);
    // `report` passes the graph's footprint: its weights and the activations it writes.
    assert_eq!(optc_cost::footprint(&a), wbytes + (16 * n * 4) as f64);
    let r = estimate(&matmul_graph(16, k, n), 21, &fits, &no_dims());
    assert_eq!(r.nodes[0].time_s, plain.time_s);
    let tight = with_weight_pass(0.2, 2.0, 0.0, 0.0);
    let r = estimate(&matmul_graph(16, k, n), 21, &tight, &no_dims());
    let share = 2e6 / optc_cost::footprint(&a);
    let expect = (1.0 - share) * wbytes / (tight.mem_bw_gbs * 1e9 * 0.2);
    assert!((r.nodes[0].compute_s - plain.compute_s - expect).abs() < 1e-12);
}

#[test]
fn low_bit_matmuls_pay_an_unpack_per_weight_element() {
    let (k, n) = (1024i64, 512i64);
    let elems = (k * n) as f64;
    let plain = Target::cpu();
    let wp = with_weight_pass(0.2, 0.0, 0.1, 0.03);
    // Many rows: the unpack adds to the float GEMM's compute.
    let a = analyze(&nbits_graph(64, k, n, 32, DType::F32), 21, &no_dims());
    assert_eq!(a.nodes[0].weight_elems, elems);
    let base = plain.node_time(&a.nodes[0]);
    let with = wp.node_time(&a.nodes[0]);
    assert!((with.compute_s - (base.compute_s + elems * 0.1e-9)).abs() < 1e-12);
    // One row: the register-unpacking kernel sets a floor, here above the roofline.
    let g = analyze(&nbits_graph(1, k, n, 32, DType::F32), 21, &no_dims());
    let base = plain.node_time(&g.nodes[0]);
    let with = wp.node_time(&g.nodes[0]);
    assert!(base.compute_s.max(base.memory_s) < elems * 0.03e-9);
    assert!((with.time_s - (elems * 0.03e-9 + base.overhead_s)).abs() < 1e-12);
    assert_eq!(with.bound, Bound::Compute);
}
