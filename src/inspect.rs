//! What `optc inspect` prints and the before/after summary of `optc opt`.

use optc::ir::{AttrValue, DType, Graph, Init, Model, TensorData};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

pub fn fmt_bytes(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2} GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.2} MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1} KB", f / 1e3)
    } else {
        format!("{n} B")
    }
}

pub fn fmt_count(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2} G", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.2} M", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1} K", f / 1e3)
    } else {
        n.to_string()
    }
}

pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 { format!("{s:.2} s") } else { format!("{:.2} ms", s * 1e3) }
}

pub struct Stats {
    nodes: u64,
    nodes_deep: u64,
    params: u64,
    size: u64,
}

impl Stats {
    pub fn of(m: &Model, size: u64) -> Stats {
        Stats {
            nodes: m.graph.node_count() as u64,
            nodes_deep: m.graph.node_count_deep() as u64,
            params: m.graph.param_count(),
            size,
        }
    }
}

pub fn summary_table(b: &Stats, a: &Stats) -> String {
    let mut s = String::new();
    let change = |x: u64, y: u64| {
        if x == 0 { "".to_string() } else { format!("{:+.1}%", (y as f64 - x as f64) / x as f64 * 100.0) }
    };
    let _ = writeln!(s, "{:<22} {:>12} {:>12} {:>9}", "", "before", "after", "change");
    let rows = [
        ("nodes", b.nodes.to_string(), a.nodes.to_string(), change(b.nodes, a.nodes)),
        (
            "nodes (w/ subgraphs)",
            b.nodes_deep.to_string(),
            a.nodes_deep.to_string(),
            change(b.nodes_deep, a.nodes_deep),
        ),
        ("parameters", fmt_count(b.params), fmt_count(a.params), change(b.params, a.params)),
        ("size on disk", fmt_bytes(b.size), fmt_bytes(a.size), change(b.size, a.size)),
    ];
    for (k, x, y, c) in rows {
        let _ = writeln!(s, "{k:<22} {x:>12} {y:>12} {c:>9}");
    }
    s
}

/// External data files referenced by a graph and its subgraphs.
pub fn external_files(g: &Graph, out: &mut BTreeSet<String>) {
    for &v in &g.initializers {
        if let Some(Init::Dense(t)) = &g.value(v).init
            && let TensorData::External { reference, .. } = &t.data
        {
            out.insert(reference.location.clone());
        }
    }
    for n in g.nodes() {
        for sg in g.node(n).subgraphs() {
            external_files(sg, out);
        }
    }
}

fn op_histogram(g: &Graph, hist: &mut BTreeMap<String, usize>) {
    for n in g.nodes() {
        let node = g.node(n);
        *hist.entry(node.op.to_string()).or_default() += 1;
        for sg in node.subgraphs() {
            op_histogram(sg, hist);
        }
    }
}

fn dtype_histogram(g: &Graph, hist: &mut BTreeMap<DType, (usize, u64)>) {
    for &v in &g.initializers {
        if let Some(t) = g.value(v).tensor() {
            let e = hist.entry(t.dtype).or_default();
            e.0 += 1;
            e.1 += t.byte_size();
        }
    }
    for n in g.nodes() {
        for sg in g.node(n).subgraphs() {
            dtype_histogram(sg, hist);
        }
    }
}

fn subgraph_lines(g: &Graph, depth: usize, out: &mut String) {
    for n in g.nodes() {
        let node = g.node(n);
        for a in &node.attrs {
            let graphs: Vec<&Graph> = match &a.value {
                AttrValue::Graph(sg) => vec![sg.as_ref()],
                AttrValue::Graphs(v) => v.iter().collect(),
                _ => continue,
            };
            for sg in graphs {
                let _ = writeln!(
                    out,
                    "{}{} '{}'.{}: {} nodes, {} inputs, {} outputs, reads {} outer values",
                    "  ".repeat(depth + 1),
                    node.op,
                    node.display_name(),
                    a.name,
                    sg.node_count(),
                    sg.inputs.len(),
                    sg.outputs.len(),
                    sg.values().filter(|&v| sg.value(v).outer).count()
                );
                subgraph_lines(sg, depth + 1, out);
            }
        }
    }
}

pub fn describe(m: &Model, path: &Path, disk: u64) -> String {
    let mut s = String::new();
    let g = &m.graph;
    let _ = writeln!(s, "model: {} ({})", path.display(), fmt_bytes(disk));
    let opsets: Vec<String> = m
        .opset_imports
        .iter()
        .map(|o| {
            let d = if o.domain_name().is_empty() { "ai.onnx" } else { o.domain_name() };
            format!("{d} {}", o.version.map(|v| v.to_string()).unwrap_or("?".into()))
        })
        .collect();
    let _ = writeln!(
        s,
        "ir_version: {}   opsets: {}",
        m.ir_version.map(|v| v.to_string()).unwrap_or("?".into()),
        opsets.join(", ")
    );
    if m.producer_name.is_some() || m.producer_version.is_some() {
        let _ = writeln!(
            s,
            "producer: {} {}",
            m.producer_name.as_deref().unwrap_or(""),
            m.producer_version.as_deref().unwrap_or("")
        );
    }
    for p in &m.metadata_props {
        let _ = writeln!(s, "metadata: {} = {}", p.key.as_deref().unwrap_or(""), p.value.as_deref().unwrap_or(""));
    }
    let functions = m.extra.numbers().filter(|&n| n == 25).count();
    if functions > 0 {
        let _ = writeln!(s, "functions: {functions} model-local functions");
    }
    let _ = writeln!(
        s,
        "graph '{}': {} nodes ({} with subgraphs), {} parameters in {} initializers ({})",
        g.name.as_deref().unwrap_or(""),
        g.node_count(),
        g.node_count_deep(),
        fmt_count(g.param_count()),
        g.initializers.len() + g.sparse_initializers.len(),
        fmt_bytes(g.param_bytes())
    );
    let ty = |v| g.value(v).ty.as_ref().map(|t| t.to_string()).unwrap_or_else(|| "?".into());
    let _ = writeln!(s, "inputs:");
    for d in &g.inputs {
        let init = if g.value(d.value).init.is_some() { "  (has initializer)" } else { "" };
        let _ = writeln!(s, "  {}: {}{init}", g.value(d.value).name, ty(d.value));
    }
    let _ = writeln!(s, "outputs:");
    for d in &g.outputs {
        let _ = writeln!(s, "  {}: {}", g.value(d.value).name, ty(d.value));
    }
    let mut hist = BTreeMap::new();
    op_histogram(g, &mut hist);
    let mut ops: Vec<(String, usize)> = hist.into_iter().collect();
    ops.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let _ = writeln!(s, "ops ({} kinds):", ops.len());
    for (op, n) in &ops {
        let _ = writeln!(s, "  {n:>6}  {op}");
    }
    let mut dt = BTreeMap::new();
    dtype_histogram(g, &mut dt);
    if !dt.is_empty() {
        let _ = writeln!(s, "initializer dtypes:");
        for (d, (n, b)) in dt {
            let _ = writeln!(s, "  {:<10} {n:>6} tensors  {}", d.name(), fmt_bytes(b));
        }
    }
    let mut sub = String::new();
    subgraph_lines(g, 0, &mut sub);
    if !sub.is_empty() {
        let _ = writeln!(s, "subgraphs:");
        s.push_str(&sub);
    }
    let mut files = BTreeSet::new();
    external_files(g, &mut files);
    if !files.is_empty() {
        let _ = writeln!(s, "external data files:");
        for f in files {
            let _ = writeln!(s, "  {f}");
        }
    }
    s
}

/// Every value of the main graph with its inferred type, in topological order.
pub fn shapes(m: &Model) -> String {
    let g = &m.graph;
    let facts = optc::ir::infer::infer(g, m.opset("").unwrap_or(1));
    let ty = |v| facts.ty(v).map(|t| t.to_string()).unwrap_or_else(|| "?".into());
    let mut s = String::new();
    for d in &g.inputs {
        let _ = writeln!(s, "input  {}: {}", g.value(d.value).name, ty(d.value));
    }
    let order = g.topo_order().unwrap_or_else(|_| g.nodes().collect());
    let (mut known, mut total) = (0, 0);
    for n in order {
        let node = g.node(n);
        for o in node.outputs().iter().flatten() {
            total += 1;
            if facts.shape(*o).is_some() {
                known += 1;
            }
            let _ =
                writeln!(s, "{:<24} {}: {}", format!("{} {}", node.op, node.display_name()), g.value(*o).name, ty(*o));
        }
    }
    let _ = writeln!(s, "shapes known for {known} of {total} node outputs");
    s
}

/// `optc inspect --blocks`: the residual blocks `prune-depth` can remove, with what each costs
/// on `target` (the LIFE-predicted latency of the model minus that of the model without it).
pub fn blocks(m: &Model, target: &optc::Target, dims: &std::collections::HashMap<String, i64>) -> String {
    use optc::passes::prune::blocks as pb;
    let det = pb::find(m);
    let opset = m.opset("").unwrap_or(1);
    let predict = |g: &Graph| optc::cost::estimate(g, opset, target, dims).totals.time_s;
    let total = predict(&m.graph);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} prunable block(s); predicted latency of the whole model on {}: {}",
        det.blocks.len(),
        target.name,
        crate::costcmd::fmt_time(total)
    );
    if !det.blocks.is_empty() {
        let _ = writeln!(
            s,
            "\n{:>3}  {:<10} {:>6} {:>10} {:>12} {:>7}  name",
            "#", "kind", "nodes", "params", "latency", "share"
        );
    }
    for (i, b) in det.blocks.iter().enumerate() {
        let mut g = m.graph.clone();
        let without = if pb::bypass(&mut g, b) { predict(&g) } else { total };
        let saved = (total - without).max(0.0);
        let _ = writeln!(
            s,
            "{:>3}  {:<10} {:>6} {:>10} {:>12} {:>6.1}%  {}{}",
            i + 1,
            b.kind.as_str(),
            b.branch.len() + 1,
            fmt_count(b.params),
            crate::costcmd::fmt_time(saved),
            if total > 0.0 { 100.0 * saved / total } else { 0.0 },
            b.name,
            if b.shape_proven { "" } else { "  (shapes checked on data when pruning)" }
        );
    }
    let chains = optc::passes::prune::merge::find(&m.graph);
    if !chains.is_empty() {
        let _ = writeln!(
            s,
            "\n{} activation(s) whose removal merges the layers around them (prune-depth merge=true):",
            chains.len()
        );
        for c in &chains {
            let mut g = m.graph.clone();
            let without = if optc::passes::prune::merge::merge(&mut g, c) { predict(&g) } else { total };
            let saved = total - without;
            let _ = writeln!(
                s,
                "  {:<10} {:>10} {:>12}  {}{}",
                "activation",
                fmt_count(optc::passes::prune::merge::params(&m.graph, c)),
                crate::costcmd::fmt_time(saved.abs()),
                optc::passes::prune::merge::label(&m.graph, c),
                if saved > 0.0 { "" } else { "  (merged is slower: not a candidate)" }
            );
        }
    }
    if !det.rejected.is_empty() {
        let _ = writeln!(s, "\n{} residual-looking Add(s) that are not prunable blocks:", det.rejected.len());
        for (name, why) in &det.rejected {
            let _ = writeln!(s, "  {name}: {why}");
        }
    }
    s
}
