//! End-to-end tests of the `optc` binary: `passes`, `opt` (summary, budget, pipeline errors,
//! verification, atomic and deterministic writes, external data), `inspect`, and how bad input
//! files are refused (exit code 2, a message naming the problem, no panic, no output file).

use optc::ir::{Bytes, DType, Decl, Dim, Graph, NodeSpec, Op, Tensor, Type, ValueId};
use optc_proto::Message;
use optc_proto::onnx as pb;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// ---- helpers ------------------------------------------------------------------------------

fn optc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_optc"))
}

fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = optc();
    for a in args {
        c.arg(a);
    }
    c.output().expect("cannot start the optc binary")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn describe(o: &Output) -> String {
    format!("status: {:?}\n--- stdout\n{}\n--- stderr\n{}", o.status, stdout(o), stderr(o))
}

/// Files in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

fn assert_no_temp_files(dir: &Path) {
    let stray: Vec<String> = listing(dir).into_iter().filter(|n| n.contains("optc-tmp")).collect();
    assert!(stray.is_empty(), "temporary files left behind in {}: {stray:?}", dir.display());
}

fn f32_raw(vals: impl Iterator<Item = f32>) -> Bytes {
    Bytes::from(vals.flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
}

/// x -> Identity -> a -> Identity -> b -> Add(b, w) -> c -> Relu -> y, plus a dead
/// Sigmoid(x). `w` is a 4 KiB f32 initializer (1024 elements), so `--external-data always`
/// moves it out. `identity,dce` leaves 2 nodes (Add, Relu): 3 rewrites.
fn sample_model() -> optc::Model {
    let mut g = Graph::new("sample");
    let ty = || Some(Type::tensor(DType::F32, vec![Dim::sym("n"), Dim::known(1024)]));
    let x = g.add_value("x", ty()).unwrap();
    let a = g.add_value("a", None).unwrap();
    let b = g.add_value("b", None).unwrap();
    let c = g.add_value("c", None).unwrap();
    let y = g.add_value("y", ty()).unwrap();
    let dead = g.add_value("dead", None).unwrap();
    let w = g
        .add_initializer(
            "w",
            Tensor::from_raw(Some("w".into()), DType::F32, vec![1024], f32_raw((0..1024).map(|i| i as f32 * 0.5))),
        )
        .unwrap();
    let mut node = |op: Op, ins: &[ValueId], out: ValueId, name: &str| {
        g.add_node(NodeSpec::new(op, ins.iter().map(|&v| Some(v)).collect(), vec![Some(out)]).named(name)).unwrap();
    };
    node(Op::Identity, &[x], a, "id1");
    node(Op::Identity, &[a], b, "id2");
    node(Op::Add, &[b, w], c, "add");
    node(Op::Relu, &[c], y, "relu");
    node(Op::Sigmoid, &[x], dead, "dead_sigmoid");
    g.inputs.push(Decl::new(x));
    g.outputs.push(Decl::new(y));
    optc::Model::from_ir(optc::ir::Model::new(g, 17))
}

fn write_sample(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    sample_model().save(&p).unwrap();
    p
}

fn node_count(path: &Path) -> usize {
    optc::Model::load(path).unwrap_or_else(|e| panic!("cannot load {}: {e}", path.display())).ir().graph.node_count()
}

// ---- passes / opt -------------------------------------------------------------------------

#[test]
fn passes_lists_builtin_passes() {
    let o = run(&[&"passes"]);
    assert!(o.status.success(), "{}", describe(&o));
    let out = stdout(&o);
    let names: Vec<&str> = out.lines().filter_map(|l| l.split_whitespace().next()).collect();
    for p in ["dce", "identity", "fixpoint(...)"] {
        assert!(names.contains(&p), "`optc passes` does not list '{p}':\n{out}");
    }
    assert!(out.contains("exactness: exact"), "{out}");
}

#[test]
fn opt_prints_summary_and_optimises() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_sample(dir.path(), "in.onnx");
    let out = dir.path().join("out.onnx");
    let o = run(&[&"opt", &input, &"-p", &"identity,dce", &"-o", &out]);
    assert!(o.status.success(), "{}", describe(&o));
    let s = stdout(&o);
    for want in ["nodes", "parameters", "size on disk", "before", "after", "identity", "dce"] {
        assert!(s.contains(want), "summary lacks '{want}':\n{s}");
    }
    // The nodes row says 5 -> 2.
    let row = s.lines().find(|l| l.trim_start().starts_with("nodes ")).unwrap_or_else(|| panic!("no nodes row:\n{s}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[1..3], &["5", "2"], "nodes row: {row}");
    assert_eq!(node_count(&input), 5);
    assert_eq!(node_count(&out), 2);
    let m = optc::Model::load(&out).unwrap();
    assert!(m.verify().is_ok());
    let g = &m.ir().graph;
    let y = g.find_value("y").expect("the output keeps its name");
    assert!(g.is_graph_output(y));
    assert!(g.find_value("dead").is_none());
}

#[test]
fn quiet_prints_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_sample(dir.path(), "in.onnx");
    let out = dir.path().join("out.onnx");
    let o = run(&[&"opt", &input, &"-p", &"dce", &"-q", &"-o", &out]);
    assert!(o.status.success(), "{}", describe(&o));
    assert_eq!(stdout(&o), "");
    assert!(out.exists());
}

#[test]
fn max_rewrites_applies_exactly_that_many() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_sample(dir.path(), "in.onnx");
    for (n, want_nodes) in [(0usize, 5usize), (1, 4), (2, 3), (3, 2), (100, 2)] {
        let out = dir.path().join(format!("out{n}.onnx"));
        let o =
            run(&[&"opt", &input, &"-p", &"fixpoint(identity,dce)", &"--max-rewrites", &n.to_string(), &"-o", &out]);
        assert!(o.status.success(), "--max-rewrites {n}: {}", describe(&o));
        assert_eq!(node_count(&out), want_nodes, "--max-rewrites {n}:\n{}", stdout(&o));
        let m = optc::Model::load(&out).unwrap();
        assert!(m.verify().is_ok(), "--max-rewrites {n} leaves an invalid model");
        if n == 1 {
            assert!(stdout(&o).contains("budget"), "no note that the budget was reached:\n{}", stdout(&o));
        }
    }
}

/// A candidate the pass examines but keeps must not use up the budget: here the first Identity
/// (graph input -> graph output) has to stay, and `--max-rewrites 1` must still remove the
/// second one.
#[test]
fn max_rewrites_counts_only_applied_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Graph::new("budget");
    let ty = || Some(Type::tensor(DType::F32, vec![Dim::sym("n")]));
    let x = g.add_value("x", ty()).unwrap();
    let y = g.add_value("y", ty()).unwrap();
    let a = g.add_value("a", None).unwrap();
    let z = g.add_value("z", ty()).unwrap();
    g.add_node(NodeSpec::new(Op::Identity, vec![Some(x)], vec![Some(y)]).named("kept")).unwrap();
    g.add_node(NodeSpec::new(Op::Identity, vec![Some(x)], vec![Some(a)]).named("removable")).unwrap();
    g.add_node(NodeSpec::new(Op::Relu, vec![Some(a)], vec![Some(z)]).named("relu")).unwrap();
    g.inputs.push(Decl::new(x));
    g.outputs.push(Decl::new(y));
    g.outputs.push(Decl::new(z));
    let input = dir.path().join("budget.onnx");
    optc::Model::from_ir(optc::ir::Model::new(g, 17)).save(&input).unwrap();

    let unlimited = dir.path().join("unlimited.onnx");
    let o = run(&[&"opt", &input, &"-p", &"identity", &"-o", &unlimited]);
    assert!(o.status.success(), "{}", describe(&o));
    assert_eq!(node_count(&unlimited), 2, "without a budget the pass removes exactly one Identity");

    let out = dir.path().join("out.onnx");
    let o = run(&[&"opt", &input, &"-p", &"identity", &"--max-rewrites", &"1", &"--explain", &"-o", &out]);
    assert!(o.status.success(), "{}", describe(&o));
    assert_eq!(
        node_count(&out),
        2,
        "--max-rewrites 1 applied no rewrite: the kept Identity used up the budget\n{}",
        stdout(&o)
    );
}

#[test]
fn misspelt_pass_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_sample(dir.path(), "in.onnx");
    let out = dir.path().join("out.onnx");
    let o = run(&[&"opt", &input, &"-p", &"dcee", &"-o", &out]);
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
    let err = stderr(&o);
    assert!(err.contains("dcee"), "{err}");
    assert!(err.contains("'dce'") || err.contains("dce?") || err.contains(" dce"), "no suggestion of dce: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists());
    assert_no_temp_files(dir.path());
}

#[test]
fn pipeline_syntax_and_option_errors_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_sample(dir.path(), "in.onnx");
    let out = dir.path().join("out.onnx");
    for p in ["dce(", "fixpoint()", "dce(bogus=1)", "fixpoint(dce,max_iter=x)", "identity,,dce"] {
        let o = run(&[&"opt", &input, &"-p", &p, &"-o", &out]);
        assert_eq!(o.status.code(), Some(2), "pipeline {p:?}: {}", describe(&o));
        assert!(!stderr(&o).contains("panicked"), "pipeline {p:?}: {}", describe(&o));
        assert!(!out.exists(), "pipeline {p:?} wrote an output");
    }
    assert_no_temp_files(dir.path());
}

#[test]
fn verify_each_runs_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_sample(dir.path(), "in.onnx");
    let plain = dir.path().join("plain.onnx");
    let verified = dir.path().join("verified.onnx");
    let p = "fixpoint(identity,dce)";
    let o1 = run(&[&"opt", &input, &"-p", &p, &"-o", &plain]);
    let o2 = run(&[&"opt", &input, &"-p", &p, &"--verify-each", &"--time-passes", &"-o", &verified]);
    assert!(o1.status.success(), "{}", describe(&o1));
    assert!(o2.status.success(), "{}", describe(&o2));
    assert!(stdout(&o2).contains("time:"), "--time-passes prints no timing:\n{}", stdout(&o2));
    assert_eq!(std::fs::read(&plain).unwrap(), std::fs::read(&verified).unwrap());
}

#[test]
fn explain_says_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_sample(dir.path(), "in.onnx");
    let out = dir.path().join("out.onnx");
    let o = run(&[&"opt", &input, &"-p", &"identity,dce", &"--explain", &"-o", &out]);
    assert!(o.status.success(), "{}", describe(&o));
    let s = stdout(&o);
    assert!(s.contains("id1") && s.contains("dead_sigmoid"), "--explain does not name the rewritten nodes:\n{s}");
}

#[test]
fn failing_runs_leave_no_output_and_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_sample(dir.path(), "in.onnx");
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"\xff\xff\xff\xff not a model").unwrap();
    let before = listing(dir.path());
    let out = dir.path().join("out.onnx");
    let missing = dir.path().join("missing.onnx");
    for args in [
        vec![input.as_os_str(), "-p".as_ref(), "no_such_pass".as_ref()],
        vec![garbage.as_os_str()],
        vec![missing.as_os_str()],
        vec![input.as_os_str(), "--target".as_ref(), "no-such-target".as_ref()],
    ] {
        let o = optc().arg("opt").args(&args).arg("-o").arg(&out).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", describe(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", describe(&o));
        assert_eq!(listing(dir.path()), before, "{args:?} changed the directory");
    }
    // An existing output is left as it was by a failing run.
    std::fs::write(&out, b"previous contents").unwrap();
    let o = optc().arg("opt").arg(&garbage).arg("-o").arg(&out).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", describe(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b"previous contents");
    assert_no_temp_files(dir.path());
}

#[test]
fn failing_write_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_sample(dir.path(), "in.onnx");
    // The output path is an existing non-empty directory: the final rename must fail.
    let out = dir.path().join("out_dir");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep"), b"x").unwrap();
    let o = run(&[&"opt", &input, &"-o", &out]);
    assert!(!o.status.success(), "{}", describe(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", describe(&o));
    assert!(out.is_dir());
    assert_no_temp_files(dir.path());
    // The output's folder would have to be created where a file is.
    let o = run(&[&"opt", &input, &"-o", &dir.path().join("in.onnx/out.onnx")]);
    assert!(!o.status.success(), "{}", describe(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", describe(&o));
    assert_no_temp_files(dir.path());
}

#[test]
fn writer_creates_the_output_folder() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_sample(dir.path(), "in.onnx");
    let out = dir.path().join("new/sub/out.onnx");
    let o = run(&[&"opt", &input, &"--external-data", &"always", &"-o", &out]);
    assert!(o.status.success(), "{}", describe(&o));
    assert!(out.is_file() && dir.path().join("new/sub/out.onnx.data").is_file());
    assert_eq!(node_count(&out), 5);
    assert_no_temp_files(&dir.path().join("new/sub"));
}

#[test]
fn outputs_are_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_sample(dir.path(), "in.onnx");
    for (p, ext) in [("fixpoint(identity,dce)", "never"), ("", "auto"), ("identity", "always")] {
        let mut outs = Vec::new();
        for k in 0..2 {
            let sub = dir.path().join(format!("run{k}"));
            std::fs::create_dir_all(&sub).unwrap();
            let out = sub.join("out.onnx");
            let o = run(&[&"opt", &input, &"-p", &p, &"--external-data", &ext, &"-o", &out]);
            assert!(o.status.success(), "{}", describe(&o));
            let data = std::fs::read(sub.join("out.onnx.data")).ok();
            outs.push((std::fs::read(&out).unwrap(), data));
            let _ = std::fs::remove_file(sub.join("out.onnx.data"));
        }
        assert!(outs[0] == outs[1], "pipeline {p:?} --external-data {ext}: two runs differ");
    }
}

#[test]
fn empty_pipeline_is_a_lossless_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_sample(dir.path(), "in.onnx");
    let out = dir.path().join("out.onnx");
    let o = run(&[&"opt", &input, &"-o", &out]);
    assert!(o.status.success(), "{}", describe(&o));
    assert_eq!(std::fs::read(&input).unwrap(), std::fs::read(&out).unwrap());
}

#[test]
fn external_data_always_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_sample(dir.path(), "in.onnx");
    let out = dir.path().join("out.onnx");
    let o = run(&[&"opt", &input, &"--external-data", &"always", &"-o", &out]);
    assert!(o.status.success(), "{}", describe(&o));
    let data = dir.path().join("out.onnx.data");
    assert!(data.is_file(), "no {} written; dir: {:?}", data.display(), listing(dir.path()));
    assert!(stdout(&o).contains("external data"), "{}", stdout(&o));
    assert!(std::fs::metadata(&out).unwrap().len() < 4096, "the 4 KiB tensor is still inline");

    let original = optc::Model::load(&input).unwrap();
    let reread = optc::Model::load(&out).unwrap();
    let tensor = |m: &optc::Model| {
        let g = &m.ir().graph;
        g.value(g.find_value("w").unwrap()).tensor().unwrap().clone()
    };
    let (a, b) = (tensor(&original), tensor(&reread));
    assert!(b.is_external(), "w was not written externally");
    assert_eq!(a.dims, b.dims);
    assert_eq!(a.dtype, b.dtype);
    assert_eq!(a.packed_bytes().unwrap(), b.packed_bytes().unwrap(), "external bytes differ from the original");
    assert_eq!(
        optc::ir::text::model_to_text(original.ir()).replace(" <4096 B>", ""),
        optc::ir::text::model_to_text(reread.ir()).replace(" <4096 B external:out.onnx.data>", ""),
    );

    // Writing it again keeps it external (auto) and the data identical; `never` brings it inline.
    let out2 = dir.path().join("out2.onnx");
    let o = run(&[&"opt", &out, &"-o", &out2]);
    assert!(o.status.success(), "{}", describe(&o));
    let again = optc::Model::load(&out2).unwrap();
    assert!(tensor(&again).is_external());
    assert_eq!(tensor(&again).packed_bytes().unwrap(), a.packed_bytes().unwrap());
    let out3 = dir.path().join("out3.onnx");
    let o = run(&[&"opt", &out, &"--external-data", &"never", &"-o", &out3]);
    assert!(o.status.success(), "{}", describe(&o));
    assert!(!dir.path().join("out3.onnx.data").exists());
    assert_eq!(std::fs::read(&out3).unwrap(), std::fs::read(&input).unwrap(), "inline again: the original bytes");
}

#[test]
fn inspect_prints_histogram_and_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_sample(dir.path(), "in.onnx");
    let o = run(&[&"inspect", &input]);
    assert!(o.status.success(), "{}", describe(&o));
    let s = stdout(&o);
    assert!(s.contains("inputs:") && s.contains("outputs:"), "{s}");
    assert!(s.lines().any(|l| l.trim() == "x: f32[n,1024]"), "input x not listed:\n{s}");
    assert!(s.lines().any(|l| l.trim() == "y: f32[n,1024]"), "output y not listed:\n{s}");
    assert!(s.contains("ops (4 kinds)"), "{s}");
    let count = |op: &str| {
        s.lines().find_map(|l| {
            let mut it = l.split_whitespace();
            let n = it.next()?.parse::<usize>().ok()?;
            (it.next()? == op && it.next().is_none()).then_some(n)
        })
    };
    assert_eq!(count("Identity"), Some(2), "{s}");
    assert_eq!(count("Add"), Some(1), "{s}");
    assert_eq!(count("Relu"), Some(1), "{s}");
    assert_eq!(count("Sigmoid"), Some(1), "{s}");
}

#[test]
fn inspect_ir_prints_the_text_form() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_sample(dir.path(), "in.onnx");
    let o = run(&[&"inspect", &"--ir", &input]);
    assert!(o.status.success(), "{}", describe(&o));
    let m = optc::Model::load(&input).unwrap();
    assert_eq!(stdout(&o), optc::ir::text::model_to_text(m.ir()));
    assert!(stdout(&o).contains("%a = Identity(%x)  # id1"), "{}", stdout(&o));
}

// ---- bad inputs ---------------------------------------------------------------------------

/// Runs `opt` and `inspect` on a bad file: both must exit 2 without a panic, name the problem
/// (every string in `want`, case-insensitive) and write nothing.
fn assert_refused(dir: &Path, input: &Path, want: &[&str]) {
    let before = listing(dir);
    let out = dir.join("refused.out.onnx");
    for cmd in ["opt", "inspect"] {
        let mut c = optc();
        c.arg(cmd).arg(input);
        if cmd == "opt" {
            c.arg("-p").arg("identity,dce").arg("-o").arg(&out);
        }
        let o = c.output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{cmd} {}: {}", input.display(), describe(&o));
        assert!(!err.contains("panicked"), "{cmd} {}: {}", input.display(), describe(&o));
        for w in want {
            assert!(
                err.to_lowercase().contains(&w.to_lowercase()),
                "{cmd} {}: stderr does not mention {w:?}:\n{err}",
                input.display()
            );
        }
        assert!(!out.exists(), "{cmd} wrote an output for a bad input");
    }
    assert_eq!(listing(dir), before, "the directory changed");
}

fn tensor_type(elem: i32) -> pb::TypeProto {
    pb::TypeProto {
        value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor { elem_type: Some(elem), shape: None })),
        denotation: None,
    }
}

fn vi(name: &str) -> pb::ValueInfoProto {
    pb::ValueInfoProto { name: Some(name.into()), r#type: Some(tensor_type(1)), ..Default::default() }
}

fn pnode(op: &str, ins: &[&str], outs: &[&str], name: &str) -> pb::NodeProto {
    pb::NodeProto {
        op_type: Some(op.into()),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        name: Some(name.into()),
        ..Default::default()
    }
}

fn pmodel(
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    inputs: &[&str],
    outputs: &[&str],
    opset: i64,
) -> Vec<u8> {
    pb::ModelProto {
        ir_version: Some(8),
        opset_import: vec![pb::OperatorSetIdProto { domain: Some(String::new()), version: Some(opset) }],
        producer_name: Some("handmade".into()),
        graph: Some(pb::GraphProto {
            name: Some("g".into()),
            node: nodes,
            initializer: inits,
            input: inputs.iter().map(|n| vi(n)).collect(),
            output: outputs.iter().map(|n| vi(n)).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A model y = Add(x, w) where `w` is the given tensor.
fn model_with_init(w: pb::TensorProto) -> Vec<u8> {
    pmodel(vec![pnode("Add", &["x", "w"], &["y"], "add")], vec![w], &["x"], &["y"], 17)
}

fn external_tensor(location: &str, length: usize) -> pb::TensorProto {
    let entry = |k: &str, v: &str| pb::StringStringEntryProto { key: Some(k.into()), value: Some(v.into()) };
    pb::TensorProto {
        name: Some("w".into()),
        data_type: Some(1),
        dims: vec![(length / 4) as i64],
        data_location: Some(1),
        external_data: vec![entry("location", location), entry("offset", "0"), entry("length", &length.to_string())],
        ..Default::default()
    }
}

/// The hand-built proto helpers make a valid model when nothing is wrong with it.
#[test]
fn handmade_control_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let good = pb::TensorProto {
        name: Some("w".into()),
        data_type: Some(1),
        dims: vec![4],
        raw_data: Some(f32_raw([1.0f32, 2.0, 3.0, 4.0].into_iter())),
        ..Default::default()
    };
    let p = dir.path().join("good.onnx");
    std::fs::write(&p, model_with_init(good)).unwrap();
    let out = dir.path().join("out.onnx");
    let o = run(&[&"opt", &p, &"-o", &out]);
    assert!(o.status.success(), "{}", describe(&o));
    // And external data inside the folder is accepted.
    std::fs::write(dir.path().join("w.bin"), f32_raw([1.0f32, 2.0].into_iter())).unwrap();
    let p = dir.path().join("ext.onnx");
    std::fs::write(&p, model_with_init(external_tensor("w.bin", 8))).unwrap();
    let o = run(&[&"inspect", &p]);
    assert!(o.status.success(), "{}", describe(&o));
    assert!(stdout(&o).contains("w.bin"), "{}", stdout(&o));
}

#[test]
fn bad_input_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.onnx");
    std::fs::write(&p, b"").unwrap();
    assert_refused(dir.path(), &p, &["empty"]);
}

#[test]
fn bad_input_random_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = 0x1234_5678_9abc_def0u64;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let p = dir.path().join("random.onnx");
    std::fs::write(&p, bytes).unwrap();
    assert_refused(dir.path(), &p, &["random.onnx", "onnx"]);
}

#[test]
fn bad_input_truncated_model() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.onnx");
    let mut g = Graph::new("big");
    let x = g.add_value("x", Some(Type::tensor(DType::F32, vec![Dim::known(65536)]))).unwrap();
    let y = g.add_value("y", None).unwrap();
    let w = g
        .add_initializer(
            "w",
            Tensor::from_raw(Some("w".into()), DType::F32, vec![65536], f32_raw((0..65536).map(|i| i as f32))),
        )
        .unwrap();
    g.add_node(NodeSpec::new(Op::Add, vec![Some(x), Some(w)], vec![Some(y)])).unwrap();
    g.inputs.push(Decl::new(x));
    g.outputs.push(Decl::new(y));
    optc::Model::from_ir(optc::ir::Model::new(g, 17)).save(&full).unwrap();
    let bytes = std::fs::read(&full).unwrap();
    assert!(bytes.len() > 256 * 1024);
    let p = dir.path().join("truncated.onnx");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::remove_file(&full).unwrap();
    assert_refused(dir.path(), &p, &["truncated.onnx", "decode"]);
}

#[test]
fn bad_input_raw_data_length_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let w = pb::TensorProto {
        name: Some("w".into()),
        data_type: Some(1),
        dims: vec![4],
        raw_data: Some(Bytes::from_static(&[0u8; 15])),
        ..Default::default()
    };
    let p = dir.path().join("mismatch.onnx");
    std::fs::write(&p, model_with_init(w)).unwrap();
    assert_refused(dir.path(), &p, &["'w'", "raw_data", "15", "16"]);
}

#[test]
fn bad_input_node_reads_unknown_value() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = pmodel(vec![pnode("Add", &["x", "ghost"], &["y"], "adder")], vec![], &["x"], &["y"], 17);
    let p = dir.path().join("unknown_value.onnx");
    std::fs::write(&p, bytes).unwrap();
    assert_refused(dir.path(), &p, &["ghost", "adder"]);
}

#[test]
fn bad_input_two_node_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = pmodel(
        vec![pnode("Add", &["x", "b"], &["a"], "node_a"), pnode("Relu", &["a"], &["b"], "node_b")],
        vec![],
        &["x"],
        &["a"],
        17,
    );
    let p = dir.path().join("cycle.onnx");
    std::fs::write(&p, bytes).unwrap();
    assert_refused(dir.path(), &p, &["cycle", "node_a", "node_b"]);
}

#[test]
fn bad_input_missing_external_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("missing_ext.onnx");
    std::fs::write(&p, model_with_init(external_tensor("weights.bin", 16))).unwrap();
    assert_refused(dir.path(), &p, &["weights.bin", "not found"]);
}

#[test]
fn bad_input_external_location_with_dotdot() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    // The file exists, outside the model's folder: it must still be refused.
    std::fs::write(root.path().join("secret.bin"), [7u8; 16]).unwrap();
    let p = dir.join("dotdot.onnx");
    std::fs::write(&p, model_with_init(external_tensor("../secret.bin", 16))).unwrap();
    assert_refused(&dir, &p, &["../secret.bin", ".."]);
    // Also when hidden inside the path.
    std::fs::create_dir(dir.join("sub")).unwrap();
    let p2 = dir.join("dotdot2.onnx");
    std::fs::write(&p2, model_with_init(external_tensor("sub/../../secret.bin", 16))).unwrap();
    assert_refused(&dir, &p2, &[".."]);
}

#[test]
fn bad_input_absolute_external_location() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("abs.bin");
    std::fs::write(&data, [7u8; 16]).unwrap();
    let p = dir.path().join("absolute.onnx");
    std::fs::write(&p, model_with_init(external_tensor(data.to_str().unwrap(), 16))).unwrap();
    assert_refused(dir.path(), &p, &["absolute"]);
}

#[cfg(unix)]
#[test]
fn bad_input_external_data_through_symlink() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(root.path().join("outside.bin"), [7u8; 16]).unwrap();
    std::os::unix::fs::symlink(root.path().join("outside.bin"), dir.join("link.bin")).unwrap();
    let p = dir.join("symlink.onnx");
    std::fs::write(&p, model_with_init(external_tensor("link.bin", 16))).unwrap();
    assert_refused(&dir, &p, &["link.bin", "symbolic link"]);
    // A linked folder on the way is refused too.
    std::fs::create_dir(root.path().join("real_dir")).unwrap();
    std::fs::write(root.path().join("real_dir/w.bin"), [7u8; 16]).unwrap();
    std::os::unix::fs::symlink(root.path().join("real_dir"), dir.join("linked_dir")).unwrap();
    let p2 = dir.join("symlink_dir.onnx");
    std::fs::write(&p2, model_with_init(external_tensor("linked_dir/w.bin", 16))).unwrap();
    assert_refused(&dir, &p2, &["symbolic link"]);
}

#[test]
fn bad_input_external_range_outside_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("short.bin"), [7u8; 8]).unwrap();
    let p = dir.path().join("range.onnx");
    std::fs::write(&p, model_with_init(external_tensor("short.bin", 16))).unwrap();
    assert_refused(dir.path(), &p, &["short.bin", "outside"]);
}

#[test]
fn bad_input_unknown_opset_version() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = pmodel(vec![pnode("Relu", &["x"], &["y"], "relu")], vec![], &["x"], &["y"], 99);
    let p = dir.path().join("opset99.onnx");
    std::fs::write(&p, bytes).unwrap();
    assert_refused(dir.path(), &p, &["opset", "99"]);
}

#[test]
fn bad_input_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(dir.path(), &dir.path().join("does_not_exist.onnx"), &["does_not_exist.onnx"]);
}
