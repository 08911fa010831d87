//! `fuse-pad`: a `Pad` of the spatial dims becomes the `pads` of the op that reads it (added to
//! those it has), where that gives the same values bit for bit:
//! - before a `Conv`, a constant Pad with zeros: convolution pads with zeros;
//! - before a `MaxPool` (dilation 1, `ceil_mode` 0, one output), an `edge` Pad no wider than
//!   kernel - 1 on each side: every window that reaches into the padding also holds the edge
//!   value that the padding repeats, and MaxPool's own pads never win a max.

use super::{drop_dead_from, single_use};
use crate::util::const_ints;
use crate::{Exactness, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_ir::{AttrList, AttrValue, Attribute, Graph, Model, NodeId, Op};

pub struct FusePad;

impl Pass for FusePad {
    fn name(&self) -> &str {
        "fuse-pad"
    }
    fn description(&self) -> &str {
        "fold a Pad of the spatial dims into the pads of the Conv (zero Pad) or MaxPool (edge Pad within the kernel) that reads it"
    }
    fn exactness(&self) -> Exactness {
        Exactness::Exact
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext, _: &PassOptions) -> Result<PassOutcome, PassError> {
        let rewrites = crate::util::for_each_graph(model, &mut |g, opset| run_graph(g, opset, cx));
        Ok(PassOutcome { rewrites })
    }
}

fn run_graph(g: &mut Graph, opset: i64, cx: &mut PassContext) -> usize {
    let Ok(order) = g.topo_order() else { return 0 };
    let mut n = 0;
    for c in order {
        if g.contains_node(c) && matches!(g.node(c).op, Op::Conv | Op::MaxPool) && fold(g, c, opset, cx) {
            n += 1;
        }
    }
    n
}

/// The Pad's begin and end pads per dim, when it pads in `mode` (with zeros for `constant`).
fn pads_of(g: &Graph, p: NodeId, opset: i64, mode: &str) -> Result<Vec<i64>, &'static str> {
    let node = g.node(p);
    if node.attrs.get_string("mode").unwrap_or("constant") != mode {
        return Err(if mode == "constant" { "it is not a constant Pad" } else { "it is not an edge Pad" });
    }
    let pads = if opset >= 11 {
        if node.input(3).is_some() {
            return Err("it names its axes");
        }
        if let Some(v) = node.input(2).filter(|_| mode == "constant") {
            let t = crate::util::const_tensor(g, v).ok_or("its pad value is not a constant")?;
            let zero = t.packed_bytes().is_some_and(|b| b.iter().all(|&x| x == 0));
            if !zero {
                return Err("its pad value is not 0");
            }
        }
        node.input(1).and_then(|v| const_ints(g, v)).ok_or("its pads are not constant")?
    } else {
        if mode == "constant" && node.attrs.get_float("value").unwrap_or(0.0) != 0.0 {
            return Err("its pad value is not 0");
        }
        node.attrs.get_ints("pads").ok_or("it has no pads")?.to_vec()
    };
    Ok(pads)
}

fn fold(g: &mut Graph, c: NodeId, opset: i64, cx: &mut PassContext) -> bool {
    let conv = g.node(c);
    let Some(x) = conv.input(0) else { return false };
    let Some((p, _)) = g.producer(x) else { return false };
    if g.node(p).op != Op::Pad || single_use(g, x).is_none() {
        return false;
    }
    let (cop, cname, pname) = (conv.op.clone(), conv.display_name(), g.node(p).display_name());
    let why = |cx: &mut PassContext, w: &str| {
        cx.note(|| format!("Pad '{pname}' stays before {cop} '{cname}': {w}"));
        false
    };
    let pool = cop == Op::MaxPool;
    if pool {
        let dilated = conv.attrs.get_ints("dilations").is_some_and(|d| d.iter().any(|&x| x != 1));
        if dilated || conv.attrs.get_int("ceil_mode").unwrap_or(0) != 0 {
            return why(cx, "the MaxPool is dilated or uses ceil_mode");
        }
        if conv.outputs().iter().skip(1).flatten().any(|&o| !g.is_unused(o)) {
            return why(cx, "the MaxPool's indices are used");
        }
    }
    let pads = match pads_of(g, p, opset, if pool { "edge" } else { "constant" }) {
        Ok(v) => v,
        Err(w) => return why(cx, w),
    };
    let rank = pads.len() / 2;
    if pads.len() % 2 != 0 || rank < 3 {
        return false;
    }
    let spatial = rank - 2;
    if pads[0] != 0 || pads[1] != 0 || pads[rank] != 0 || pads[rank + 1] != 0 {
        return why(cx, "it pads the batch or channel dim");
    }
    if pads.iter().any(|&v| v < 0) {
        return why(cx, "it crops (negative pads)");
    }
    if conv.attrs.get_string("auto_pad").is_some_and(|a| a != "NOTSET") {
        return why(cx, "it uses auto_pad");
    }
    if pool {
        let Some(k) = conv.attrs.get_ints("kernel_shape").map(|k| k.to_vec()) else { return false };
        let existing = conv.attrs.get_ints("pads").is_some_and(|p| p.iter().any(|&x| x != 0));
        let within = k.len() == spatial && (0..spatial).all(|i| pads[2 + i] < k[i] && pads[rank + 2 + i] < k[i]);
        if existing || !within {
            return why(cx, "the edge padding is wider than the pooling window reaches (or the MaxPool pads already)");
        }
    }
    let mut cp = conv.attrs.get_ints("pads").map(|v| v.to_vec()).unwrap_or_else(|| vec![0; 2 * spatial]);
    if cp.len() != 2 * spatial {
        return false;
    }
    let Some(src) = g.node(p).input(0) else { return false };
    if !cx.rewrite() {
        return false;
    }
    for i in 0..spatial {
        cp[i] += pads[2 + i];
        cp[spatial + i] += pads[rank + 2 + i];
    }
    let attrs = &mut g.node_mut(c).attrs;
    match attrs.iter_mut().find(|a| a.name == "pads") {
        Some(a) => a.value = AttrValue::Ints(cp.clone()),
        None => attrs.push(Attribute::ints("pads", cp.clone())),
    }
    g.set_input(c, 0, Some(src));
    drop_dead_from(g, x);
    cx.note(|| format!("folded Pad '{pname}' into {cop} '{cname}' (pads {cp:?})"));
    true
}
