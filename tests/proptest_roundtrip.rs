//! Property test: random but valid models built through the IR API survive the ONNX writer and
//! reader unchanged.
//!
//! For each generated model: the IR verifier accepts it; `to_bytes -> from_bytes -> to_bytes`
//! gives identical bytes; the IR text (`model_to_text`) is identical before and after; the
//! re-read model verifies too; and an independent protobuf decoder (`onnx-protobuf`) accepts
//! the bytes.
//!
//! `PROPTEST_CASES` overrides the default of 64 cases.

use optc::ir::{
    AttrValue, Attribute, Bytes, DType, Decl, Dim, Graph, MetaProp, Model, NodeSpec, Op, OpsetImport, RawFields,
    Tensor, TensorData, Type, TypedData, ValueId,
};
use proptest::prelude::*;
use proptest::sample::Index;

// ---- recipe -------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum DimSpec {
    Known(i64),
    Sym(usize),
    Unknown,
}

const SYMS: &[&str] = &["n", "batch", "seq_len"];

#[derive(Clone, Copy, Debug)]
enum TensorKind {
    F32Raw,
    F32Typed,
    F16Raw,
    I64Typed,
    I64Raw,
    I8Raw,
    BoolRaw,
    I4Packed,
    Str,
    F64Typed,
    U64Typed,
}

#[derive(Clone, Debug)]
struct TensorSpec {
    kind: TensorKind,
    dims: Vec<i64>,
    seed: u64,
}

#[derive(Clone, Debug)]
struct InitSpec {
    tensor: TensorSpec,
    /// Also listed as a graph input (an overridable initializer).
    also_input: bool,
}

#[derive(Clone, Debug)]
struct InputSpec {
    int64: bool,
    /// `None`: unknown rank.
    dims: Option<Vec<DimSpec>>,
}

#[derive(Clone, Debug)]
enum AttrSpec {
    Int(i64),
    Float(f32),
    Str(Vec<u8>),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Tensor(TensorSpec),
}

#[derive(Clone, Debug)]
enum OpSpec {
    Relu,
    Add,
    Mul,
    MatMul,
    Identity,
    Concat {
        n_inputs: usize,
        axis: i64,
    },
    Transpose {
        perm: Vec<i64>,
    },
    Foo {
        attrs: Vec<AttrSpec>,
        /// Input slots; `None` is an omitted optional input.
        inputs: Vec<Option<Index>>,
        /// Output slots; `false` is an omitted optional output.
        outputs: Vec<bool>,
    },
    /// `then_direct`/`else_direct`: the branch returns the outer value itself (no node).
    If {
        outer: Index,
        then_direct: bool,
        else_direct: bool,
    },
}

#[derive(Clone, Debug)]
struct NodeRecipe {
    op: OpSpec,
    inputs: Vec<Index>,
    named: bool,
    /// A type for the (first) output, `None` for untyped.
    out_dims: Option<Vec<DimSpec>>,
    /// Sort key for adding nodes out of topological order (see `Recipe::shuffle`).
    key: u8,
}

#[derive(Clone, Debug)]
struct Recipe {
    opset: i64,
    default_domain: Option<&'static str>,
    with_ml: bool,
    inputs: Vec<InputSpec>,
    inits: Vec<InitSpec>,
    nodes: Vec<NodeRecipe>,
    extra_outputs: Vec<(Index, bool)>,
    value_info: Vec<Index>,
    metadata: Vec<(String, String)>,
    doc: Option<String>,
    /// Add the nodes to the graph in `key` order instead of topological order, so the IR's
    /// storage order differs from the order the writer must produce.
    shuffle: bool,
}

// ---- strategies ---------------------------------------------------------------------------

fn dim() -> impl Strategy<Value = DimSpec> {
    prop_oneof![
        4 => (0i64..6).prop_map(DimSpec::Known),
        3 => (0..SYMS.len()).prop_map(DimSpec::Sym),
        1 => Just(DimSpec::Unknown),
    ]
}

fn tensor_spec() -> impl Strategy<Value = TensorSpec> {
    let kind = prop_oneof![
        Just(TensorKind::F32Raw),
        Just(TensorKind::F32Typed),
        Just(TensorKind::F16Raw),
        Just(TensorKind::I64Typed),
        Just(TensorKind::I64Raw),
        Just(TensorKind::I8Raw),
        Just(TensorKind::BoolRaw),
        Just(TensorKind::I4Packed),
        Just(TensorKind::Str),
        Just(TensorKind::F64Typed),
        Just(TensorKind::U64Typed),
    ];
    (kind, prop::collection::vec(0i64..5, 0..=3), any::<u64>()).prop_map(|(kind, dims, seed)| TensorSpec {
        kind,
        dims,
        seed,
    })
}

fn attr_spec() -> impl Strategy<Value = AttrSpec> {
    prop_oneof![
        any::<i64>().prop_map(AttrSpec::Int),
        any::<f32>().prop_map(AttrSpec::Float),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(AttrSpec::Str),
        prop::collection::vec(any::<i64>(), 0..5).prop_map(AttrSpec::Ints),
        prop::collection::vec(any::<f32>(), 0..5).prop_map(AttrSpec::Floats),
        tensor_spec().prop_map(AttrSpec::Tensor),
    ]
}

fn op_spec() -> impl Strategy<Value = OpSpec> {
    prop_oneof![
        2 => Just(OpSpec::Relu),
        2 => Just(OpSpec::Add),
        1 => Just(OpSpec::Mul),
        1 => Just(OpSpec::MatMul),
        2 => Just(OpSpec::Identity),
        1 => (1usize..4, -2i64..3).prop_map(|(n_inputs, axis)| OpSpec::Concat { n_inputs, axis }),
        1 => (0i64..5)
            .prop_flat_map(|r| Just((0..r).collect::<Vec<i64>>()).prop_shuffle())
            .prop_map(|perm| OpSpec::Transpose { perm }),
        2 => (
            prop::collection::vec(attr_spec(), 0..6),
            prop::collection::vec(prop::option::weighted(0.8, any::<Index>()), 0..4),
            prop::collection::vec(prop::bool::weighted(0.8), 1..4),
        )
            .prop_map(|(attrs, inputs, mut outputs)| {
                // The first output always exists so later nodes can read it.
                outputs[0] = true;
                OpSpec::Foo { attrs, inputs, outputs }
            }),
        1 => (any::<Index>(), any::<bool>(), any::<bool>()).prop_map(
            |(outer, then_direct, else_direct)| OpSpec::If { outer, then_direct, else_direct }
        ),
    ]
}

fn node_recipe() -> impl Strategy<Value = NodeRecipe> {
    (
        op_spec(),
        prop::collection::vec(any::<Index>(), 2..4),
        any::<bool>(),
        prop::option::of(prop::collection::vec(dim(), 0..4)),
        any::<u8>(),
    )
        .prop_map(|(op, inputs, named, out_dims, key)| NodeRecipe { op, inputs, named, out_dims, key })
}

fn recipe() -> impl Strategy<Value = Recipe> {
    let inputs = prop::collection::vec(
        (prop::bool::weighted(0.2), prop::option::weighted(0.9, prop::collection::vec(dim(), 0..4)))
            .prop_map(|(int64, dims)| InputSpec { int64, dims }),
        1..4,
    );
    let inits = prop::collection::vec(
        (tensor_spec(), prop::bool::weighted(0.2)).prop_map(|(tensor, also_input)| InitSpec { tensor, also_input }),
        0..6,
    );
    let header = (
        7i64..=21,
        prop_oneof![Just(None), Just(Some("")), Just(Some("ai.onnx"))],
        any::<bool>(),
        prop::collection::vec(("[a-z_]{1,8}", "[ -~]{0,12}"), 0..4),
        prop::option::of("[ -~]{0,20}"),
    );
    (
        header,
        inputs,
        inits,
        prop::collection::vec(node_recipe(), 1..10),
        prop::collection::vec((any::<Index>(), any::<bool>()), 0..3),
        prop::collection::vec(any::<Index>(), 0..4),
        any::<bool>(),
    )
        .prop_map(
            |(
                (opset, default_domain, with_ml, metadata, doc),
                inputs,
                inits,
                nodes,
                extra_outputs,
                value_info,
                shuffle,
            )| {
                Recipe {
                    opset,
                    default_domain,
                    with_ml,
                    inputs,
                    inits,
                    nodes,
                    extra_outputs,
                    value_info,
                    metadata,
                    doc,
                    shuffle,
                }
            },
        )
}

// ---- building -----------------------------------------------------------------------------

/// A small deterministic generator for tensor contents.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn dims_of(spec: &[DimSpec]) -> Vec<Dim> {
    spec.iter()
        .map(|d| match d {
            DimSpec::Known(n) => Dim::known(*n),
            DimSpec::Sym(i) => Dim::sym(SYMS[*i]),
            DimSpec::Unknown => Dim::unknown(),
        })
        .collect()
}

fn make_tensor(spec: &TensorSpec, name: Option<String>) -> Tensor {
    let numel: usize = spec.dims.iter().product::<i64>() as usize;
    let mut rng = Rng(spec.seed);
    let raw =
        |dtype: DType, bytes: Vec<u8>| Tensor::from_raw(name.clone(), dtype, spec.dims.clone(), Bytes::from(bytes));
    let typed = |dtype: DType, data: TypedData| {
        let mut t = Tensor::from_raw(name.clone(), dtype, spec.dims.clone(), Bytes::new());
        t.data = TensorData::Typed(data);
        t
    };
    match spec.kind {
        TensorKind::F32Raw => raw(DType::F32, rng.bytes(4 * numel)),
        TensorKind::F32Typed => {
            typed(DType::F32, TypedData::Float((0..numel).map(|_| f32::from_bits(rng.next() as u32)).collect()))
        }
        TensorKind::F16Raw => raw(DType::F16, rng.bytes(2 * numel)),
        TensorKind::I64Typed => typed(DType::I64, TypedData::Int64((0..numel).map(|_| rng.next() as i64).collect())),
        TensorKind::I64Raw => raw(DType::I64, rng.bytes(8 * numel)),
        TensorKind::I8Raw => raw(DType::I8, rng.bytes(numel)),
        TensorKind::BoolRaw => raw(DType::Bool, (0..numel).map(|_| (rng.next() & 1) as u8).collect()),
        TensorKind::I4Packed => raw(DType::I4, rng.bytes(numel.div_ceil(2))),
        TensorKind::Str => typed(
            DType::String,
            TypedData::String(
                (0..numel)
                    .map(|_| {
                        let len = (rng.next() % 6) as usize;
                        Bytes::from(rng.bytes(len))
                    })
                    .collect(),
            ),
        ),
        TensorKind::F64Typed => {
            typed(DType::F64, TypedData::Double((0..numel).map(|_| f64::from_bits(rng.next())).collect()))
        }
        TensorKind::U64Typed => typed(DType::U64, TypedData::Uint64((0..numel).map(|_| rng.next()).collect())),
    }
}

fn attr(name: String, spec: &AttrSpec) -> Attribute {
    let value = match spec {
        AttrSpec::Int(i) => AttrValue::Int(*i),
        AttrSpec::Float(f) => AttrValue::Float(*f),
        AttrSpec::Str(s) => AttrValue::String(Bytes::from(s.clone())),
        AttrSpec::Ints(v) => AttrValue::Ints(v.clone()),
        AttrSpec::Floats(v) => AttrValue::Floats(v.clone()),
        AttrSpec::Tensor(t) => AttrValue::Tensor(make_tensor(t, None)),
    };
    Attribute::new(name, value)
}

/// A branch of an If node: reads `outer` (by name) and returns it, directly or through a Relu.
fn branch(label: &str, outer_name: &str, direct: bool) -> Graph {
    let mut sg = Graph::new(label);
    let outer = sg.add_value(outer_name, None).unwrap();
    sg.value_mut(outer).outer = true;
    if direct {
        sg.outputs.push(Decl::new(outer));
    } else {
        let y = sg.add_value(format!("{label}_y"), Some(Type::tensor(DType::F32, vec![Dim::sym("n")]))).unwrap();
        sg.add_node(NodeSpec::new(Op::Relu, vec![Some(outer)], vec![Some(y)]).named(format!("{label}_relu"))).unwrap();
        sg.outputs.push(Decl::new(y));
    }
    sg
}

fn build(r: &Recipe) -> Model {
    let mut g = Graph::new("random_graph");
    let mut pool: Vec<ValueId> = Vec::new();
    for (i, inp) in r.inputs.iter().enumerate() {
        let elem = if inp.int64 { DType::I64 } else { DType::F32 };
        let mut ty = Type::tensor(elem, vec![]);
        if let optc::ir::TypeKind::Tensor { shape, .. } = &mut ty.kind {
            *shape = inp.dims.as_deref().map(dims_of);
        }
        let v = g.add_value(format!("in{i}"), Some(ty)).unwrap();
        g.inputs.push(Decl::new(v));
        pool.push(v);
    }
    for (i, init) in r.inits.iter().enumerate() {
        let name = format!("w{i}");
        let v = g.add_initializer(name.clone(), make_tensor(&init.tensor, Some(name))).unwrap();
        if init.also_input {
            g.inputs.push(Decl::new(v));
        }
        pool.push(v);
    }
    let mut produced: Vec<ValueId> = Vec::new();
    let mut pending = Vec::new();
    let mut last = None;
    for (i, n) in r.nodes.iter().enumerate() {
        let pick = |k: usize| pool[n.inputs[k % n.inputs.len()].index(pool.len())];
        let out_ty = n.out_dims.as_ref().map(|d| Type::tensor(DType::F32, dims_of(d)));
        let y = g.add_value(format!("v{i}"), out_ty).unwrap();
        let mut outputs = vec![Some(y)];
        let mut attrs = Vec::new();
        let (op, inputs) = match &n.op {
            OpSpec::Relu => (Op::Relu, vec![Some(pick(0))]),
            OpSpec::Identity => (Op::Identity, vec![Some(pick(0))]),
            OpSpec::Add => (Op::Add, vec![Some(pick(0)), Some(pick(1))]),
            OpSpec::Mul => (Op::Mul, vec![Some(pick(0)), Some(pick(1))]),
            OpSpec::MatMul => (Op::MatMul, vec![Some(pick(0)), Some(pick(1))]),
            OpSpec::Concat { n_inputs, axis } => {
                attrs.push(Attribute::int("axis", *axis));
                (Op::Concat, (0..*n_inputs).map(|k| Some(pick(k))).collect())
            }
            OpSpec::Transpose { perm } => {
                attrs.push(Attribute::ints("perm", perm.clone()));
                (Op::Transpose, vec![Some(pick(0))])
            }
            OpSpec::Foo { attrs: specs, inputs, outputs: outs } => {
                for (k, a) in specs.iter().enumerate() {
                    attrs.push(attr(format!("attr{k}"), a));
                }
                for (k, &present) in outs.iter().enumerate().skip(1) {
                    outputs.push(if present { Some(g.add_value(format!("v{i}_{k}"), None).unwrap()) } else { None });
                }
                let ins = inputs.iter().map(|ix| ix.as_ref().map(|ix| pool[ix.index(pool.len())])).collect();
                (Op::Opaque { domain: "com.example".into(), op_type: "Foo".into() }, ins)
            }
            OpSpec::If { outer, then_direct, else_direct } => {
                let outer_v = pool[outer.index(pool.len())];
                let outer_name = g.value(outer_v).name.clone();
                attrs.push(Attribute::new(
                    "then_branch",
                    AttrValue::Graph(Box::new(branch(&format!("then{i}"), &outer_name, *then_direct))),
                ));
                attrs.push(Attribute::new(
                    "else_branch",
                    AttrValue::Graph(Box::new(branch(&format!("else{i}"), &outer_name, *else_direct))),
                ));
                (Op::If, vec![Some(pick(0))])
            }
        };
        let capture = match &n.op {
            OpSpec::If { outer, .. } => Some(pool[outer.index(pool.len())]),
            _ => None,
        };
        let mut spec = NodeSpec::new(op, inputs, outputs.clone()).attrs(attrs);
        if n.named {
            spec = spec.named(format!("node{i}"));
        }
        pending.push((n.key, i, spec, capture));
        for o in outputs.into_iter().flatten() {
            pool.push(o);
            produced.push(o);
        }
        last = Some(y);
    }
    if r.shuffle {
        pending.sort_by_key(|(key, i, _, _)| (*key, *i));
    }
    for (_, _, spec, capture) in pending {
        let id = g.add_node(spec).unwrap();
        if let Some(c) = capture {
            g.set_captures(id, vec![c]);
        }
    }
    // Outputs: the last node's output and a few more produced values (each at most once).
    let mut outs = vec![last.unwrap()];
    for (ix, _) in &r.extra_outputs {
        let v = produced[ix.index(produced.len())];
        if !outs.contains(&v) {
            outs.push(v);
        }
    }
    let mut vi = Vec::new();
    for (k, v) in outs.into_iter().enumerate() {
        let mut d = Decl::new(v);
        // Sometimes an untyped output entry. A type known only to the IR would then be lost
        // (nothing in the file carries it), so a typed value gets a value_info entry as well.
        d.typed = r.extra_outputs.get(k).is_none_or(|(_, typed)| *typed);
        if !d.typed && g.value(v).ty.is_some() {
            vi.push(v);
            g.value_info.push(Decl::new(v));
        }
        g.outputs.push(d);
    }
    for ix in &r.value_info {
        let v = produced[ix.index(produced.len())];
        if !vi.contains(&v) {
            vi.push(v);
            if g.value(v).ty.is_none() {
                g.value_mut(v).ty = Some(Type::tensor(DType::F32, vec![Dim::sym("n")]));
            }
            g.value_info.push(Decl::new(v));
        }
    }

    let mut m = Model::new(g, r.opset);
    m.opset_imports = vec![OpsetImport {
        domain: r.default_domain.map(str::to_string),
        version: Some(r.opset),
        extra: RawFields::default(),
    }];
    m.opset_imports.push(OpsetImport::new("com.example", 1));
    if r.with_ml {
        m.opset_imports.push(OpsetImport::new("ai.onnx.ml", 3));
    }
    m.metadata_props = r
        .metadata
        .iter()
        .map(|(k, v)| MetaProp { key: Some(k.clone()), value: Some(v.clone()), extra: RawFields::default() })
        .collect();
    m.doc_string = r.doc.clone();
    m
}

// ---- the property -------------------------------------------------------------------------

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(64)
}

fn check(r: &Recipe) -> Result<(), TestCaseError> {
    use onnx_protobuf::Message;
    use optc::ir::text::model_to_text;
    use optc::ir::verify::verify_model;

    let built = build(r);
    if let Err(ps) = verify_model(&built) {
        return Err(TestCaseError::fail(format!(
            "the verifier rejects the built model: {ps:?}\n{}",
            model_to_text(&built)
        )));
    }
    let text1 = model_to_text(&built);
    let m1 = optc::Model::from_ir(built);
    let bytes1 = m1.to_bytes().map_err(|e| TestCaseError::fail(format!("to_bytes failed: {e}\n{text1}")))?;
    onnx_protobuf::ModelProto::parse_from_bytes(&bytes1)
        .map_err(|e| TestCaseError::fail(format!("onnx-protobuf cannot decode optc's bytes: {e}\n{text1}")))?;
    let m2 = optc::Model::from_bytes(&bytes1)
        .map_err(|e| TestCaseError::fail(format!("from_bytes failed: {e}\n{text1}")))?;
    let text2 = model_to_text(m2.ir());
    prop_assert_eq!(&text1, &text2, "IR text changed through a round trip");
    if let Err(ps) = m2.verify() {
        return Err(TestCaseError::fail(format!("the verifier rejects the re-read model: {ps:?}\n{text2}")));
    }
    let bytes2 = m2.to_bytes().map_err(|e| TestCaseError::fail(format!("second to_bytes failed: {e}")))?;
    if bytes1 != bytes2 {
        let at = bytes1.iter().zip(&bytes2).position(|(a, b)| a != b).unwrap_or(bytes1.len().min(bytes2.len()));
        return Err(TestCaseError::fail(format!(
            "bytes differ after a round trip: {} vs {} bytes, first difference at offset {at}\n{text1}",
            bytes1.len(),
            bytes2.len()
        )));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn random_models_round_trip(r in recipe()) {
        check(&r)?;
    }
}

/// The generator is not vacuous: over many seeds it produces every feature the property is
/// meant to cover.
#[test]
fn generator_covers_the_features() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = recipe();
    let (mut ifs, mut foos, mut transposes, mut strings, mut i4, mut sym, mut vi, mut meta) = (0, 0, 0, 0, 0, 0, 0, 0);
    for _ in 0..200 {
        let r = strategy.new_tree(&mut runner).unwrap().current();
        let m = build(&r);
        let text = optc::ir::text::model_to_text(&m);
        ifs += text.contains("= If(") as usize;
        foos += text.contains("com.example::Foo(") as usize;
        transposes += text.contains("Transpose(") as usize;
        strings += text.contains("string[") as usize;
        i4 += text.contains("i4[") as usize;
        sym += (text.contains("[n") || text.contains(",n") || text.contains("batch")) as usize;
        vi += (!m.graph.value_info.is_empty()) as usize;
        meta += (!m.metadata_props.is_empty()) as usize;
        assert!(optc::ir::verify::verify_model(&m).is_ok(), "{text}");
    }
    for (what, n) in [
        ("If", ifs),
        ("Foo", foos),
        ("Transpose", transposes),
        ("string tensors", strings),
        ("i4 tensors", i4),
        ("symbolic dims", sym),
        ("value_info", vi),
        ("metadata", meta),
    ] {
        assert!(n >= 5, "only {n} of 200 generated models have {what}");
    }
}
