//! The interpreter: runs a graph node by node in topological order, resolving subgraph reads of
//! outer values by name through a chain of scopes, freeing values after their last use, and
//! reporting computed values to an observer.

use crate::error::{EvalError, Result};
use crate::ops;
use crate::value::{Tensor, Value};
use optc_ir::{AttrList, Graph, Init, NodeId, ValueId};
use std::collections::HashMap;
use std::sync::Arc;

/// Receives values as they are computed (calibration statistics, debugging).
pub trait Observer {
    /// Whether the observer wants the value named `name` of the main graph.
    fn wants(&self, name: &str) -> bool;
    /// Called once per wanted value, right after it is computed (graph inputs included).
    fn observe(&mut self, name: &str, value: &Value);
}

/// A graph being run and what it has computed so far.
pub(crate) struct Scope<'a> {
    pub graph: &'a Graph,
    pub env: &'a HashMap<ValueId, Arc<Value>>,
    pub parent: Option<&'a Scope<'a>>,
}

impl Scope<'_> {
    /// Looks a value up by name here and in enclosing graphs.
    pub fn lookup(&self, name: &str) -> Option<Arc<Value>> {
        if let Some(v) = self.graph.find_value(name) {
            if let Some(x) = self.env.get(&v) {
                return Some(x.clone());
            }
            if !self.graph.value(v).outer
                && let Some(Init::Dense(t)) = &self.graph.value(v).init
            {
                return Tensor::from_ir(t).ok().map(|t| Arc::new(Value::Tensor(t)));
            }
        }
        self.parent.and_then(|p| p.lookup(name))
    }
}

/// Runs `g` with `inputs` bound to its inputs in order. Returns its outputs in order.
pub(crate) fn run_graph(
    g: &Graph,
    opset: i64,
    inputs: Vec<Option<Value>>,
    parent: Option<&Scope<'_>>,
    mut observer: Option<&mut dyn Observer>,
    init_cache: Option<&HashMap<ValueId, Arc<Value>>>,
) -> Result<Vec<Value>> {
    let mut env: HashMap<ValueId, Arc<Value>> = HashMap::new();
    for (i, d) in g.inputs.iter().enumerate() {
        match inputs.get(i).cloned().flatten() {
            Some(v) => {
                if let Some(o) = observer.as_deref_mut() {
                    let name = &g.value(d.value).name;
                    if o.wants(name) {
                        o.observe(name, &v);
                    }
                }
                env.insert(d.value, Arc::new(v));
            }
            None => {
                // An input with an initializer takes its default; otherwise it is missing.
                if g.value(d.value).init.is_none() {
                    return Err(EvalError::Input {
                        name: g.value(d.value).name.clone(),
                        message: "no value given for this graph input".into(),
                    });
                }
            }
        }
    }
    // Initializers: from the cache when the caller keeps one, converted otherwise.
    for &v in &g.initializers {
        if env.contains_key(&v) {
            continue;
        }
        if let Some(cached) = init_cache.and_then(|c| c.get(&v)) {
            env.insert(v, cached.clone());
        } else if let Some(Init::Dense(t)) = &g.value(v).init {
            env.insert(v, Arc::new(Value::Tensor(Tensor::from_ir(t)?)));
        }
    }
    let order = g.topo_order().map_err(|stuck| {
        EvalError::Other(format!("the graph has a cycle through node '{}'", g.node(stuck[0]).display_name()))
    })?;
    // Remaining reads per value, so intermediate values are freed after their last use.
    let mut remaining: HashMap<ValueId, usize> = HashMap::new();
    // Values a node's subgraphs read by name (captures) count as reads of that node too.
    for &n in &order {
        let node = g.node(n);
        for v in node.inputs().iter().flatten().chain(node.captures()) {
            *remaining.entry(*v).or_default() += 1;
        }
    }
    let keep: Vec<ValueId> = g.outputs.iter().map(|d| d.value).collect();
    for n in order {
        let node = g.node(n);
        if let Some((id, v)) = alias_output(node, &env) {
            if let Some(o) = observer.as_deref_mut() {
                let name = &g.value(id).name;
                if o.wants(name) {
                    o.observe(name, &v);
                }
            }
            env.insert(id, v);
        } else {
            let outs = run_node(g, n, opset, &env, parent)?;
            for (i, v) in outs.into_iter().enumerate() {
                if let Some(id) = node.output(i) {
                    if let Some(o) = observer.as_deref_mut() {
                        let name = &g.value(id).name;
                        if o.wants(name) {
                            o.observe(name, &v);
                        }
                    }
                    env.insert(id, Arc::new(v));
                }
            }
        }
        for v in node.inputs().iter().flatten().chain(node.captures()) {
            if let Some(r) = remaining.get_mut(v) {
                *r -= 1;
                if *r == 0 && !keep.contains(v) && g.producer(*v).is_some() {
                    env.remove(v);
                }
            }
        }
    }
    let scope = Scope { graph: g, env: &env, parent };
    g.outputs
        .iter()
        .map(|d| {
            let name = &g.value(d.value).name;
            scope
                .lookup(name)
                .map(|v| (*v).clone())
                .ok_or_else(|| EvalError::Other(format!("graph output '{name}' was not computed")))
        })
        .collect()
}

/// Nodes whose single output is their input unchanged (Identity, a Cast to the input's own
/// type) share the input's value instead of copying it: returns (output, value).
fn alias_output(node: &optc_ir::Node, env: &HashMap<ValueId, Arc<Value>>) -> Option<(ValueId, Arc<Value>)> {
    if node.outputs().len() != 1 || node.inputs().len() != 1 {
        return None;
    }
    let out = node.output(0)?;
    let input = env.get(node.inputs()[0].as_ref()?)?;
    match node.op {
        optc_ir::Op::Identity => Some((out, input.clone())),
        optc_ir::Op::Cast => {
            let Value::Tensor(t) = &**input else { return None };
            let to = i32::try_from(node.attrs.get_int("to")?).ok().and_then(optc_ir::DType::from_onnx)?;
            let round = node.attrs.get_string("round_mode").unwrap_or("up");
            (to == t.dtype() && matches!(round, "up" | "down" | "nearest")).then(|| (out, input.clone()))
        }
        _ => None,
    }
}

pub(crate) fn run_node(
    g: &Graph,
    n: NodeId,
    opset: i64,
    env: &HashMap<ValueId, Arc<Value>>,
    parent: Option<&Scope<'_>>,
) -> Result<Vec<Value>> {
    let node = g.node(n);
    let scope = Scope { graph: g, env, parent };
    let mut inputs: Vec<Option<Arc<Value>>> = Vec::with_capacity(node.inputs().len());
    for v in node.inputs() {
        inputs.push(match v {
            None => None,
            Some(v) => {
                let val = g.value(*v);
                let found = env.get(v).cloned().or_else(|| scope.lookup(&val.name));
                Some(found.ok_or_else(|| EvalError::Node {
                    node: node.display_name(),
                    op: node.op.to_string(),
                    message: format!("input '{}' has no value", val.name),
                })?)
            }
        });
    }
    let refs: Vec<Option<&Value>> = inputs.iter().map(|v| v.as_deref()).collect();
    let cx = ops::Ctx { node, opset, scope: &scope };
    let outs = ops::dispatch(&cx, &refs)?;
    let needed = node.outputs().iter().rposition(|o| o.is_some()).map_or(0, |i| i + 1);
    if outs.len() < needed {
        return Err(cx.err(format!("produced {} outputs, the node declares {}", outs.len(), node.outputs().len())));
    }
    Ok(outs)
}
