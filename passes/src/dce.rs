//! `dce`: removes nodes whose outputs nobody reads, initializers nobody reads, and declarations
//! of values that no longer exist, in every graph (subgraphs first, then the captures of their
//! nodes are recomputed).

use crate::{Exactness, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_ir::{Graph, Model, NodeId, ValueId};

pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &str {
        "dce"
    }
    fn description(&self) -> &str {
        "remove nodes, initializers and value declarations that no output depends on"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext, _: &PassOptions) -> Result<PassOutcome, PassError> {
        let rewrites = crate::util::for_each_graph(model, &mut |g, _| dce_graph(g, cx));
        Ok(PassOutcome { rewrites })
    }
}

/// Recomputes which outer values a node's subgraphs read.
pub fn recompute_captures(g: &mut Graph, n: NodeId) {
    let mut names: Vec<String> = Vec::new();
    for sg in g.node(n).subgraphs() {
        for v in sg.values() {
            let val = sg.value(v);
            if val.outer && !names.contains(&val.name) {
                names.push(val.name.clone());
            }
        }
    }
    let caps: Vec<ValueId> = names.iter().filter_map(|name| g.find_value(name)).collect();
    if caps != g.node(n).captures() {
        g.set_captures(n, caps);
    }
}

fn dce_graph(g: &mut Graph, cx: &mut PassContext) -> usize {
    let with_subgraphs: Vec<NodeId> = g.nodes().filter(|&n| g.node(n).subgraphs().next().is_some()).collect();
    for n in with_subgraphs {
        recompute_captures(g, n);
    }
    let order = match g.topo_order() {
        Ok(o) => o,
        Err(_) => return 0,
    };
    let mut removed = 0;
    for n in order.into_iter().rev() {
        let node = g.node(n);
        let outs: Vec<ValueId> = node.outputs().iter().flatten().copied().collect();
        if node.outputs().is_empty() || !outs.iter().all(|&v| g.is_unused(v)) {
            continue;
        }
        if !cx.rewrite() {
            return removed;
        }
        cx.note(|| format!("removed unused {} '{}'", g.node(n).op, g.node(n).display_name()));
        g.remove_node(n);
        removed += 1;
    }
    // Values left without producer or reader: dead initializers, stale value_info entries,
    // outer references nothing reads any more.
    let dead: Vec<ValueId> =
        g.values().filter(|&v| g.producer(v).is_none() && g.is_unused(v) && !g.is_graph_input(v)).collect();
    for v in dead {
        if !cx.rewrite() {
            break;
        }
        g.remove_value(v);
        removed += 1;
    }
    removed
}
