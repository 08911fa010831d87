//! Golden tests: small hand-built models run through the `identity` and `dce` pipelines; the
//! IR text after each pipeline is compared with `tests/golden/<case>.txt`.
//!
//! `OPTC_BLESS=1 cargo test --test golden` rewrites the files instead of comparing. Read the
//! diff before committing a blessed file: the files are the specification of what the passes do.
//! Lines starting with `#!` are notes and are not compared. A file with a `#! hand-written`
//! note holds an expectation written by hand while a pass gets the case wrong; bless leaves it
//! alone (`OPTC_BLESS=force` overwrites it). A pipeline that fails is never blessed.
//!
//! Besides the text comparison every case checks that the pipeline output verifies (the pass
//! manager runs the verifier after every pass) and survives a byte round trip.

use optc::Target;
use optc::ir::{
    AttrValue, Attribute, Bytes, DType, Decl, Dim, Graph, Model, NodeSpec, Op, OpsetImport, Tensor, Type, ValueId,
};
use optc::passes::{PassContext, PassManager, PassRegistry};
use std::path::PathBuf;

const PIPELINES: &[&str] = &["identity", "dce", "identity,dce", "fixpoint(identity,dce)"];

fn f32_ty(dims: &[i64]) -> Option<Type> {
    Some(Type::tensor(DType::F32, dims.iter().map(|&d| Dim::known(d)).collect()))
}

fn sym_ty(elem: DType) -> Option<Type> {
    Some(Type::tensor(elem, vec![Dim::sym("n"), Dim::known(4)]))
}

fn f32_tensor(name: &str, dims: &[i64], vals: &[f32]) -> Tensor {
    let raw: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::from_raw(Some(name.into()), DType::F32, dims.to_vec(), Bytes::from(raw))
}

fn bool_tensor(name: &str, v: bool) -> Tensor {
    Tensor::from_raw(Some(name.into()), DType::Bool, vec![], Bytes::from(vec![v as u8]))
}

fn node(g: &mut Graph, op: Op, ins: &[ValueId], outs: &[ValueId], name: &str) {
    g.add_node(
        NodeSpec::new(op, ins.iter().map(|&v| Some(v)).collect(), outs.iter().map(|&v| Some(v)).collect()).named(name),
    )
    .unwrap();
}

fn model(g: Graph, opset: i64) -> Model {
    Model::new(g, opset)
}

// ---- cases --------------------------------------------------------------------------------

/// x -> Identity -> a -> Identity -> b -> Relu -> y: both Identities go.
fn identity_chain() -> Model {
    let mut g = Graph::new("identity_chain");
    let x = g.add_value("x", sym_ty(DType::F32)).unwrap();
    let a = g.add_value("a", None).unwrap();
    let b = g.add_value("b", None).unwrap();
    let y = g.add_value("y", sym_ty(DType::F32)).unwrap();
    node(&mut g, Op::Identity, &[x], &[a], "id1");
    node(&mut g, Op::Identity, &[a], &[b], "id2");
    node(&mut g, Op::Relu, &[b], &[y], "relu");
    g.inputs.push(Decl::new(x));
    g.outputs.push(Decl::new(y));
    model(g, 17)
}

/// x -> Relu -> r -> Identity -> y (graph output): the Identity goes and the Relu writes `y`.
fn identity_feeds_output() -> Model {
    let mut g = Graph::new("identity_feeds_output");
    let x = g.add_value("x", sym_ty(DType::F32)).unwrap();
    let r = g.add_value("r", None).unwrap();
    let s = g.add_value("s", None).unwrap();
    let y = g.add_value("y", sym_ty(DType::F32)).unwrap();
    node(&mut g, Op::Relu, &[x], &[r], "relu");
    node(&mut g, Op::Identity, &[r], &[y], "id_out");
    // A second reader of `y`'s input: it must follow the rename.
    node(&mut g, Op::Neg, &[r], &[s], "neg");
    g.inputs.push(Decl::new(x));
    g.outputs.push(Decl::new(y));
    g.outputs.push(Decl::new(s));
    model(g, 17)
}

/// x (graph input) -> Identity -> y (graph output): both names are interface, so it stays.
/// The same holds for an Identity from an initializer to an output and between two outputs.
fn identity_input_to_output() -> Model {
    let mut g = Graph::new("identity_input_to_output");
    let x = g.add_value("x", sym_ty(DType::F32)).unwrap();
    let y = g.add_value("y", sym_ty(DType::F32)).unwrap();
    let w = g.add_initializer("w", f32_tensor("w", &[2], &[1.0, 2.0])).unwrap();
    let wy = g.add_value("w_out", f32_ty(&[2])).unwrap();
    let r = g.add_value("r", sym_ty(DType::F32)).unwrap();
    let r2 = g.add_value("r_copy", sym_ty(DType::F32)).unwrap();
    node(&mut g, Op::Identity, &[x], &[y], "id_in_out");
    node(&mut g, Op::Identity, &[w], &[wy], "id_init_out");
    node(&mut g, Op::Relu, &[x], &[r], "relu");
    node(&mut g, Op::Identity, &[r], &[r2], "id_out_out");
    g.inputs.push(Decl::new(x));
    g.outputs.push(Decl::new(y));
    g.outputs.push(Decl::new(wy));
    g.outputs.push(Decl::new(r));
    g.outputs.push(Decl::new(r2));
    model(g, 17)
}

/// Dropout in inference goes: no training_mode input, or only a ratio. Dropout with
/// training_mode = true, with training_mode from a graph input (unknown), and Dropout whose
/// mask output is read stay.
fn dropout() -> Model {
    let mut g = Graph::new("dropout");
    let x = g.add_value("x", sym_ty(DType::F32)).unwrap();
    let train = g.add_value("train", Some(Type::tensor(DType::Bool, vec![]))).unwrap();
    let ratio = g.add_initializer("ratio", f32_tensor("ratio", &[], &[0.5])).unwrap();
    let on = g.add_initializer("training_on", bool_tensor("training_on", true)).unwrap();
    let d: Vec<ValueId> = (1..=5).map(|i| g.add_value(format!("d{i}"), None).unwrap()).collect();
    let mask = g.add_value("mask", None).unwrap();
    let y = g.add_value("y", sym_ty(DType::F32)).unwrap();
    let z = g.add_value("z", sym_ty(DType::Bool)).unwrap();
    node(&mut g, Op::Dropout, &[x], &[d[0]], "drop_plain");
    node(&mut g, Op::Dropout, &[d[0], ratio], &[d[1]], "drop_ratio_only");
    node(&mut g, Op::Dropout, &[d[1], ratio, on], &[d[2]], "drop_training");
    node(&mut g, Op::Dropout, &[d[2], ratio, train], &[d[3]], "drop_runtime_mode");
    node(&mut g, Op::Dropout, &[d[3]], &[d[4], mask], "drop_mask_used");
    node(&mut g, Op::Relu, &[d[4]], &[y], "relu");
    node(&mut g, Op::Not, &[mask], &[z], "not_mask");
    g.inputs.push(Decl::new(x));
    g.inputs.push(Decl::new(train));
    g.outputs.push(Decl::new(y));
    g.outputs.push(Decl::new(z));
    model(g, 13)
}

/// Dropout-13 whose training_mode is a constant `false` (a bool initializer, the type the ONNX
/// spec requires) is inference: it goes, and dce then drops the unused initializers.
fn dropout_training_mode_false() -> Model {
    let mut g = Graph::new("dropout_training_mode_false");
    let x = g.add_value("x", sym_ty(DType::F32)).unwrap();
    let ratio = g.add_initializer("ratio", f32_tensor("ratio", &[], &[0.5])).unwrap();
    let off = g.add_initializer("training_off", bool_tensor("training_off", false)).unwrap();
    let d = g.add_value("d", None).unwrap();
    let y = g.add_value("y", sym_ty(DType::F32)).unwrap();
    node(&mut g, Op::Dropout, &[x, ratio, off], &[d], "drop_off");
    node(&mut g, Op::Relu, &[d], &[y], "relu");
    g.inputs.push(Decl::new(x));
    g.outputs.push(Decl::new(y));
    model(g, 13)
}

/// Cast f32 -> f32 goes; Cast f32 -> f16 stays.
fn cast() -> Model {
    let mut g = Graph::new("cast");
    let x = g.add_value("x", sym_ty(DType::F32)).unwrap();
    let a = g.add_value("a", sym_ty(DType::F32)).unwrap();
    let b = g.add_value("b", sym_ty(DType::F16)).unwrap();
    let y = g.add_value("y", sym_ty(DType::F16)).unwrap();
    let cast_to = |to: DType| vec![Attribute::int("to", to.onnx_code() as i64)];
    g.add_node(NodeSpec::new(Op::Cast, vec![Some(x)], vec![Some(a)]).named("cast_same").attrs(cast_to(DType::F32)))
        .unwrap();
    g.add_node(NodeSpec::new(Op::Cast, vec![Some(a)], vec![Some(b)]).named("cast_f16").attrs(cast_to(DType::F16)))
        .unwrap();
    node(&mut g, Op::Relu, &[b], &[y], "relu");
    g.inputs.push(Decl::new(x));
    g.outputs.push(Decl::new(y));
    model(g, 17)
}

/// Transpose with perm [0,1,2] goes; perm [0,2,1] stays.
fn transpose() -> Model {
    let mut g = Graph::new("transpose");
    let ty = || Some(Type::tensor(DType::F32, vec![Dim::sym("n"), Dim::known(3), Dim::known(4)]));
    let x = g.add_value("x", ty()).unwrap();
    let a = g.add_value("a", None).unwrap();
    let b = g.add_value("b", None).unwrap();
    let y = g.add_value("y", None).unwrap();
    g.add_node(
        NodeSpec::new(Op::Transpose, vec![Some(x)], vec![Some(a)])
            .named("t_identity")
            .attrs(vec![Attribute::ints("perm", vec![0, 1, 2])]),
    )
    .unwrap();
    g.add_node(
        NodeSpec::new(Op::Transpose, vec![Some(a)], vec![Some(b)])
            .named("t_swap")
            .attrs(vec![Attribute::ints("perm", vec![0, 2, 1])]),
    )
    .unwrap();
    node(&mut g, Op::Relu, &[b], &[y], "relu");
    g.inputs.push(Decl::new(x));
    g.outputs.push(Decl::new(y));
    model(g, 17)
}

/// A dead branch (Relu -> Mul with its own initializer, and a value_info entry), an unused
/// initializer, and the live path y = Add(x, w).
fn dead_branch() -> Model {
    let mut g = Graph::new("dead_branch");
    let x = g.add_value("x", f32_ty(&[2])).unwrap();
    let w = g.add_initializer("w", f32_tensor("w", &[2], &[1.0, 2.0])).unwrap();
    g.add_initializer("unused_w", f32_tensor("unused_w", &[3], &[7.0, 8.0, 9.0])).unwrap();
    let w_dead = g.add_initializer("w_dead", f32_tensor("w_dead", &[2], &[3.0, 4.0])).unwrap();
    let dead1 = g.add_value("dead1", f32_ty(&[2])).unwrap();
    let dead2 = g.add_value("dead2", None).unwrap();
    let y = g.add_value("y", f32_ty(&[2])).unwrap();
    node(&mut g, Op::Relu, &[x], &[dead1], "dead_relu");
    node(&mut g, Op::Mul, &[dead1, w_dead], &[dead2], "dead_mul");
    node(&mut g, Op::Add, &[x, w], &[y], "add");
    g.inputs.push(Decl::new(x));
    g.outputs.push(Decl::new(y));
    g.value_info.push(Decl::new(dead1));
    model(g, 17)
}

/// p = Relu(x) is read only from inside the If's branches, by name: dce must keep the Relu.
/// q = Sigmoid(x) is read only by a dead node inside the else-branch: once dce removes that
/// node, nothing reads q any more and the Sigmoid goes too (captures are recomputed).
/// The then-branch returns Identity(p) (kept: its input is an outer value); the else-branch
/// returns Identity(Neg(p)) (removed: Neg takes over the output name).
fn if_outer_value() -> Model {
    let mut g = Graph::new("if_outer_value");
    let x = g.add_value("x", sym_ty(DType::F32)).unwrap();
    let cond = g.add_value("cond", Some(Type::tensor(DType::Bool, vec![]))).unwrap();
    let p = g.add_value("p", None).unwrap();
    let q = g.add_value("q", None).unwrap();
    let y = g.add_value("y", sym_ty(DType::F32)).unwrap();
    node(&mut g, Op::Relu, &[x], &[p], "producer_of_p");
    node(&mut g, Op::Sigmoid, &[x], &[q], "producer_of_q");

    let mut then_g = Graph::new("then_branch");
    let tp = then_g.add_value("p", None).unwrap();
    then_g.value_mut(tp).outer = true;
    let t_out = then_g.add_value("t_out", sym_ty(DType::F32)).unwrap();
    node(&mut then_g, Op::Identity, &[tp], &[t_out], "then_identity");
    then_g.outputs.push(Decl::new(t_out));

    let mut else_g = Graph::new("else_branch");
    let ep = else_g.add_value("p", None).unwrap();
    else_g.value_mut(ep).outer = true;
    let eq = else_g.add_value("q", None).unwrap();
    else_g.value_mut(eq).outer = true;
    let neg = else_g.add_value("neg", None).unwrap();
    let e_dead = else_g.add_value("e_dead", None).unwrap();
    let e_out = else_g.add_value("e_out", sym_ty(DType::F32)).unwrap();
    node(&mut else_g, Op::Neg, &[ep], &[neg], "else_neg");
    node(&mut else_g, Op::Abs, &[eq], &[e_dead], "else_dead_abs");
    node(&mut else_g, Op::Identity, &[neg], &[e_out], "else_identity");
    else_g.outputs.push(Decl::new(e_out));

    let if_node = g
        .add_node(NodeSpec::new(Op::If, vec![Some(cond)], vec![Some(y)]).named("if").attrs(vec![
            Attribute::new("then_branch", AttrValue::Graph(Box::new(then_g))),
            Attribute::new("else_branch", AttrValue::Graph(Box::new(else_g))),
        ]))
        .unwrap();
    g.set_captures(if_node, vec![p, q]);
    g.inputs.push(Decl::new(x));
    g.inputs.push(Decl::new(cond));
    g.outputs.push(Decl::new(y));
    model(g, 17)
}

/// b = Identity(a), and the If's then-branch reads both a and b by name (Add(a, b)); the
/// else-branch returns a directly. Removing the Identity makes the branch read a twice: the
/// branch's two outer references must become one value named a.
fn if_captures_identity_input_and_output() -> Model {
    let mut g = Graph::new("if_captures_identity_input_and_output");
    let x = g.add_value("x", sym_ty(DType::F32)).unwrap();
    let cond = g.add_value("cond", Some(Type::tensor(DType::Bool, vec![]))).unwrap();
    let a = g.add_value("a", None).unwrap();
    let b = g.add_value("b", None).unwrap();
    let y = g.add_value("y", sym_ty(DType::F32)).unwrap();
    node(&mut g, Op::Relu, &[x], &[a], "relu");
    node(&mut g, Op::Identity, &[a], &[b], "id");

    let mut then_g = Graph::new("then_branch");
    let ta = then_g.add_value("a", None).unwrap();
    then_g.value_mut(ta).outer = true;
    let tb = then_g.add_value("b", None).unwrap();
    then_g.value_mut(tb).outer = true;
    let t = then_g.add_value("t", sym_ty(DType::F32)).unwrap();
    node(&mut then_g, Op::Add, &[ta, tb], &[t], "then_add");
    then_g.outputs.push(Decl::new(t));

    let mut else_g = Graph::new("else_branch");
    let ea = else_g.add_value("a", None).unwrap();
    else_g.value_mut(ea).outer = true;
    else_g.outputs.push(Decl::new(ea));

    let if_node = g
        .add_node(NodeSpec::new(Op::If, vec![Some(cond)], vec![Some(y)]).named("if").attrs(vec![
            Attribute::new("then_branch", AttrValue::Graph(Box::new(then_g))),
            Attribute::new("else_branch", AttrValue::Graph(Box::new(else_g))),
        ]))
        .unwrap();
    g.set_captures(if_node, vec![a, b]);
    g.inputs.push(Decl::new(x));
    g.inputs.push(Decl::new(cond));
    g.outputs.push(Decl::new(y));
    model(g, 17)
}

/// An opaque op and a custom-domain opset survive both passes untouched.
fn opaque_untouched() -> Model {
    let mut g = Graph::new("opaque_untouched");
    let x = g.add_value("x", sym_ty(DType::F32)).unwrap();
    let a = g.add_value("a", None).unwrap();
    let y = g.add_value("y", sym_ty(DType::F32)).unwrap();
    g.add_node(
        NodeSpec::new(Op::Opaque { domain: "com.example".into(), op_type: "Foo".into() }, vec![Some(x)], vec![Some(a)])
            .named("foo")
            .attrs(vec![Attribute::int("k", 3), Attribute::string("mode", "fast")]),
    )
    .unwrap();
    node(&mut g, Op::Identity, &[a], &[y], "id");
    g.inputs.push(Decl::new(x));
    g.outputs.push(Decl::new(y));
    let mut m = model(g, 17);
    m.opset_imports.push(OpsetImport::new("com.example", 1));
    m
}

const CASES: &[(&str, fn() -> Model)] = &[
    ("identity_chain", identity_chain),
    ("identity_feeds_output", identity_feeds_output),
    ("identity_input_to_output", identity_input_to_output),
    ("dropout", dropout),
    ("dropout_training_mode_false", dropout_training_mode_false),
    ("cast", cast),
    ("transpose", transpose),
    ("dead_branch", dead_branch),
    ("if_outer_value", if_outer_value),
    ("if_captures_identity_input_and_output", if_captures_identity_input_and_output),
    ("opaque_untouched", opaque_untouched),
];

// ---- driver -------------------------------------------------------------------------------

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn bless() -> bool {
    std::env::var("OPTC_BLESS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `model_to_text` does not print value_info; dce must drop entries of removed values.
fn value_info_line(g: &Graph) -> String {
    if g.value_info.is_empty() {
        return String::new();
    }
    let names: Vec<String> = g.value_info.iter().map(|d| format!("%{}", g.value(d.value).name)).collect();
    format!("value_info: {}\n", names.join(", "))
}

/// The text of one case: the input, then the model after each pipeline, and the pipelines
/// that failed (a pass error, including an IR invariant the verifier caught after a pass; such
/// a failure is rendered as an `ERROR` line so the mismatch shows what went wrong).
fn render(name: &str, build: fn() -> Model) -> (String, Vec<String>) {
    use optc::ir::text::model_to_text;
    let input = build();
    optc::ir::verify::verify_model(&input)
        .unwrap_or_else(|ps| panic!("case {name}: the input model does not verify: {ps:?}"));
    let mut out =
        format!("# golden case '{name}'\n\n## input\n{}{}", model_to_text(&input), value_info_line(&input.graph));
    let mut errors = Vec::new();
    for pipeline in PIPELINES {
        let mut m = optc::Model::from_ir(build());
        let mut manager = PassManager::new(PassRegistry::with_builtins());
        manager.verify_each = true;
        let mut cx = PassContext::new(Target::cpu());
        let report = match m.run_with(&manager, pipeline, &mut cx) {
            Ok(r) => r,
            Err(e) => {
                out.push_str(&format!("\n## pipeline: {pipeline}  ERROR: {e}\n"));
                errors.push(format!("pipeline {pipeline}: {e}"));
                continue;
            }
        };
        let text = model_to_text(m.ir()) + &value_info_line(&m.ir().graph);
        // The result must survive a byte round trip unchanged.
        let bytes = m.to_bytes().unwrap();
        let again = optc::Model::from_bytes(&bytes)
            .unwrap_or_else(|e| panic!("case {name}, pipeline {pipeline}: re-read failed: {e}"));
        pretty_assertions::assert_eq!(
            text,
            model_to_text(again.ir()) + &value_info_line(&again.ir().graph),
            "case {name}, pipeline {pipeline}: the optimised model changes through a byte round trip"
        );
        out.push_str(&format!("\n## pipeline: {pipeline}  (rewrites: {})\n{text}", report.total_rewrites()));
    }
    (out, errors)
}

/// Lines starting with `#!` are notes for people; they are not compared.
fn strip_notes(text: &str) -> String {
    text.lines().filter(|l| !l.starts_with("#!")).map(|l| format!("{l}\n")).collect()
}

/// A file with a `#! hand-written` note holds an expectation written by hand because the pass
/// got it wrong: plain `OPTC_BLESS=1` never overwrites it with the (wrong) actual output;
/// `OPTC_BLESS=force` does.
fn hand_written(text: &str) -> bool {
    text.lines().any(|l| l.starts_with("#! hand-written"))
}

#[test]
fn golden() {
    let dir = golden_dir();
    let force = std::env::var("OPTC_BLESS").is_ok_and(|v| v == "force");
    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    for (name, build) in CASES {
        let (actual, errors) = render(name, *build);
        let path = dir.join(format!("{name}.txt"));
        let existing = std::fs::read_to_string(&path).ok();
        let matches = existing.as_deref().is_some_and(|e| strip_notes(e) == actual);
        if bless() && !matches {
            if !errors.is_empty() {
                // A failing pipeline is a bug, never an expectation.
                println!("NOT blessed {}: {errors:?}", path.display());
                mismatched.push(name.to_string());
                continue;
            }
            if existing.as_deref().is_some_and(hand_written) && !force {
                println!("NOT blessed {}: it holds a hand-written expectation (OPTC_BLESS=force)", path.display());
                mismatched.push(name.to_string());
                continue;
            }
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &actual).unwrap();
            println!("blessed {}", path.display());
            continue;
        }
        match existing {
            Some(expected) => {
                let expected = strip_notes(&expected);
                if expected != actual {
                    // Print every mismatch before failing, so one run shows them all.
                    println!("golden mismatch: {}", path.display());
                    println!("{}", pretty_assertions::StrComparison::new(&expected, &actual));
                    mismatched.push(name.to_string());
                }
            }
            None => missing.push(path.display().to_string()),
        }
    }
    assert!(missing.is_empty(), "golden files missing (run with OPTC_BLESS=1 to create them): {missing:?}");
    assert!(
        mismatched.is_empty(),
        "golden mismatches (diffs above; OPTC_BLESS=1 rewrites the files after review): {mismatched:?}"
    );
}

/// No stray golden file: every file in tests/golden belongs to a case.
#[test]
fn no_orphan_golden_files() {
    let Ok(rd) = std::fs::read_dir(golden_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(stem) = name.strip_suffix(".txt") {
            assert!(CASES.iter().any(|(c, _)| *c == stem), "tests/golden/{name} belongs to no case in tests/golden.rs");
        }
    }
}
