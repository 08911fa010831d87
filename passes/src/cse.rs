//! `cse`: common subexpression elimination. Nodes with the same op, domain, attributes and
//! inputs compute the same values, so later ones are replaced by the first; initializers with
//! the same dtype, dims and bytes are merged first so that their users become identical too.

use crate::{Exactness, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_ir::{AttrValue, Attribute, Graph, Model, Op, ValueId};
use std::collections::HashMap;

pub struct Cse;

impl Pass for Cse {
    fn name(&self) -> &str {
        "cse"
    }
    fn description(&self) -> &str {
        "merge identical initializers and nodes that compute the same values"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext, _: &PassOptions) -> Result<PassOutcome, PassError> {
        let rewrites = crate::util::for_each_graph(model, &mut |g, _| cse_graph(g, cx));
        Ok(PassOutcome { rewrites })
    }
}

/// A hashable rendering of an attribute list (subgraph attributes make a node unmergeable).
fn attr_key(attrs: &[Attribute]) -> Option<String> {
    let mut s = String::new();
    for a in attrs {
        let v = match &a.value {
            AttrValue::Graph(_) | AttrValue::Graphs(_) => return None,
            AttrValue::Tensor(t) => format!("{:?}{:?}{:?}", t.dtype, t.dims, t.packed_bytes()),
            AttrValue::Float(f) => format!("f{}", f.to_bits()),
            AttrValue::Floats(v) => format!("fs{:?}", v.iter().map(|f| f.to_bits()).collect::<Vec<_>>()),
            other => format!("{other:?}"),
        };
        s.push_str(&a.name);
        s.push('=');
        s.push_str(&v);
        s.push(';');
    }
    Some(s)
}

fn mergeable(op: &Op) -> bool {
    !matches!(
        op,
        Op::RandomNormal
            | Op::RandomNormalLike
            | Op::RandomUniform
            | Op::RandomUniformLike
            | Op::Bernoulli
            | Op::Multinomial
    ) && !op.is_opaque()
}

/// A hash of up to 3 x 64 bytes (start, middle, end): enough to tell most different tensors
/// apart without reading them whole.
fn sample_hash(b: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let n = b.len();
    let w = 64.min(n);
    b[..w].hash(&mut h);
    b[n / 2 - w / 2..n / 2 - w / 2 + w].hash(&mut h);
    b[n - w..].hash(&mut h);
    h.finish()
}

fn cse_graph(g: &mut Graph, cx: &mut PassContext) -> usize {
    let mut rewrites = 0;
    // Identical initializers (not graph inputs, which callers may override). Candidates are
    // grouped by type, dims, size and a hash of a few sampled bytes; only same-group tensors
    // are compared byte for byte, so nothing is copied.
    let mut seen: HashMap<(i32, Vec<i64>, usize, u64), Vec<ValueId>> = HashMap::new();
    for v in g.initializers.clone() {
        if g.is_graph_input(v) || g.is_graph_output(v) {
            continue;
        }
        let (key, dup) = {
            let Some(t) = g.value(v).tensor() else { continue };
            let Some(bytes) = t.packed_bytes() else { continue };
            let key = (t.dtype.onnx_code(), t.dims.clone(), bytes.len(), sample_hash(&bytes));
            let dup = seen.get(&key).and_then(|cands| {
                cands.iter().copied().find(|&f| {
                    g.value(f).tensor().and_then(|ft| ft.packed_bytes()).is_some_and(|fb| fb[..] == bytes[..])
                })
            });
            (key, dup)
        };
        match dup {
            Some(first) => {
                if !cx.rewrite() {
                    return rewrites;
                }
                let (a, b) = (g.value(v).name.clone(), g.value(first).name.clone());
                cx.note(|| format!("initializer '{a}' merged into identical '{b}'"));
                g.replace_uses(v, first);
                g.remove_value(v);
                rewrites += 1;
            }
            None => seen.entry(key).or_default().push(v),
        }
    }
    // Identical nodes, in topological order so chains merge in one sweep.
    let Ok(order) = g.topo_order() else { return rewrites };
    let mut nodes: HashMap<(String, String, Vec<Option<ValueId>>, String), optc_ir::NodeId> = HashMap::new();
    for n in order {
        let node = g.node(n);
        if !mergeable(&node.op) {
            continue;
        }
        let Some(ak) = attr_key(&node.attrs) else { continue };
        let key = (node.op.to_string(), node.domain().unwrap_or("").to_string(), node.inputs().to_vec(), ak);
        let Some(&first) = nodes.get(&key) else {
            nodes.insert(key, n);
            continue;
        };
        let (outs, firsts) = (node.outputs().to_vec(), g.node(first).outputs().to_vec());
        if outs.len() != firsts.len() {
            continue;
        }
        // Graph outputs keep their names: such a node stays.
        if outs.iter().flatten().any(|&o| g.is_graph_output(o)) {
            continue;
        }
        // Every output this node has must exist on the first one too.
        if outs.iter().zip(&firsts).any(|(o, f)| o.is_some() && f.is_none()) {
            continue;
        }
        if !cx.rewrite() {
            break;
        }
        let (name, first_name) = (node.display_name(), g.node(first).display_name());
        cx.note(|| format!("node '{name}' merged into identical '{first_name}'"));
        for (o, f) in outs.iter().zip(&firsts) {
            if let (Some(o), Some(f)) = (o, f) {
                g.replace_uses(*o, *f);
            }
        }
        g.remove_node(n);
        rewrites += 1;
    }
    rewrites
}
