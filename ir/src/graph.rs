//! The graph: a bipartite petgraph `StableGraph` of operation and value vertices behind typed
//! ids. Edges run value -> node (an input slot, or a capture by a subgraph) and node -> value
//! (an output slot). A node's ordered input/output lists are the truth; the edges mirror them so
//! use lists, producers and topological order are cheap. Nothing outside this module touches
//! petgraph.

use crate::{Attribute, IrError, Op, RawFields, SparseTensor, Tensor, Type};
use petgraph::Direction;
use petgraph::stable_graph::{NodeIndex, StableGraph};
use petgraph::visit::EdgeRef;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

/// An operation in a [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(NodeIndex<u32>);

/// A value (tensor, sequence, ...) in a [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(NodeIndex<u32>);

impl NodeId {
    pub fn index(self) -> usize {
        self.0.index()
    }
}
impl ValueId {
    pub fn index(self) -> usize {
        self.0.index()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    In(u32),
    Out(u32),
    Capture,
}

/// How a node uses a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// As its input number `n`.
    Input(usize),
    /// Read by name from inside one of the node's subgraphs.
    Capture,
}

#[derive(Clone, Debug)]
enum Vertex {
    Node(Node),
    Value(Value),
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: Option<String>,
    pub op: Op,
    /// The `domain` string as stored, kept so that `""`, `"ai.onnx"` and absent round-trip.
    pub domain_raw: Option<String>,
    pub attrs: Vec<Attribute>,
    pub doc_string: Option<String>,
    pub extra: RawFields,
    inputs: Vec<Option<ValueId>>,
    outputs: Vec<Option<ValueId>>,
    captures: Vec<ValueId>,
    seq: u64,
}

impl Node {
    pub fn inputs(&self) -> &[Option<ValueId>] {
        &self.inputs
    }
    pub fn outputs(&self) -> &[Option<ValueId>] {
        &self.outputs
    }
    /// Outer-scope values read by this node's subgraphs.
    pub fn captures(&self) -> &[ValueId] {
        &self.captures
    }
    pub fn input(&self, i: usize) -> Option<ValueId> {
        self.inputs.get(i).copied().flatten()
    }
    pub fn output(&self, i: usize) -> Option<ValueId> {
        self.outputs.get(i).copied().flatten()
    }
    /// The domain to write: the op's own for opaque ops, the stored spelling for standard ones.
    pub fn domain(&self) -> Option<&str> {
        match &self.op {
            Op::Opaque { domain, .. } => {
                if domain.is_empty() && self.domain_raw.is_none() {
                    None
                } else {
                    Some(domain)
                }
            }
            _ => match self.domain_raw.as_deref() {
                Some(d @ ("" | "ai.onnx")) => Some(d),
                _ => None,
            },
        }
    }
    /// A name for messages: the node's name, or its op when it has none.
    pub fn display_name(&self) -> String {
        match &self.name {
            Some(n) if !n.is_empty() => n.clone(),
            _ => format!("<unnamed {}>", self.op),
        }
    }
    /// Subgraphs held in attributes, in attribute order.
    pub fn subgraphs(&self) -> impl Iterator<Item = &Graph> {
        self.attrs.iter().flat_map(|a| match &a.value {
            crate::AttrValue::Graph(g) => std::slice::from_ref(g.as_ref()).iter().collect::<Vec<_>>(),
            crate::AttrValue::Graphs(gs) => gs.iter().collect(),
            _ => Vec::new(),
        })
    }
    pub fn subgraphs_mut(&mut self) -> impl Iterator<Item = &mut Graph> {
        self.attrs.iter_mut().flat_map(|a| match &mut a.value {
            crate::AttrValue::Graph(g) => vec![g.as_mut()],
            crate::AttrValue::Graphs(gs) => gs.iter_mut().collect(),
            _ => Vec::new(),
        })
    }
}

/// A value's initial data, when it is an initializer.
#[derive(Clone, Debug)]
pub enum Init {
    Dense(Tensor),
    Sparse(SparseTensor),
}

#[derive(Clone, Debug)]
pub struct Value {
    pub name: String,
    pub ty: Option<Type>,
    pub init: Option<Init>,
    /// Defined in an enclosing graph and read here by name (subgraphs only).
    pub outer: bool,
}

impl Value {
    pub fn tensor(&self) -> Option<&Tensor> {
        match &self.init {
            Some(Init::Dense(t)) => Some(t),
            _ => None,
        }
    }
}

/// One entry of a graph's `input`, `output` or `value_info` list.
#[derive(Clone, Debug)]
pub struct Decl {
    pub value: ValueId,
    pub doc_string: Option<String>,
    /// Whether the entry carries a type (written from the value's type).
    pub typed: bool,
    pub extra: RawFields,
}

impl Decl {
    pub fn new(value: ValueId) -> Decl {
        Decl { value, doc_string: None, typed: true, extra: RawFields::default() }
    }
}

/// A computation graph (the main graph or a subgraph of If/Loop/Scan).
#[derive(Clone, Debug, Default)]
pub struct Graph {
    g: StableGraph<Vertex, Port>,
    pub name: Option<String>,
    pub doc_string: Option<String>,
    pub extra: RawFields,
    pub inputs: Vec<Decl>,
    pub outputs: Vec<Decl>,
    pub value_info: Vec<Decl>,
    /// Initializer order as in the file (dense, then sparse lists).
    pub initializers: Vec<ValueId>,
    pub sparse_initializers: Vec<ValueId>,
    by_name: HashMap<String, ValueId>,
    next_seq: u64,
}

/// Arguments for [`Graph::add_node`].
pub struct NodeSpec {
    pub name: Option<String>,
    pub op: Op,
    pub attrs: Vec<Attribute>,
    pub inputs: Vec<Option<ValueId>>,
    pub outputs: Vec<Option<ValueId>>,
}

impl NodeSpec {
    pub fn new(op: Op, inputs: Vec<Option<ValueId>>, outputs: Vec<Option<ValueId>>) -> NodeSpec {
        NodeSpec { name: None, op, attrs: Vec::new(), inputs, outputs }
    }
    pub fn named(mut self, name: impl Into<String>) -> NodeSpec {
        self.name = Some(name.into());
        self
    }
    pub fn attrs(mut self, attrs: Vec<Attribute>) -> NodeSpec {
        self.attrs = attrs;
        self
    }
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Graph {
        Graph { name: Some(name.into()), ..Default::default() }
    }

    // ---- values -------------------------------------------------------------------------

    /// Adds a value with a fresh, unique name.
    pub fn add_value(&mut self, name: impl Into<String>, ty: Option<Type>) -> Result<ValueId, IrError> {
        let name = name.into();
        if self.by_name.contains_key(&name) {
            return Err(IrError::DuplicateValue(name));
        }
        let id = ValueId(self.g.add_node(Vertex::Value(Value { name: name.clone(), ty, init: None, outer: false })));
        self.by_name.insert(name, id);
        Ok(id)
    }

    /// A name not used in this graph, built from `base`.
    pub fn fresh_name(&self, base: &str) -> String {
        if !self.by_name.contains_key(base) {
            return base.to_string();
        }
        (1..).map(|i| format!("{base}_{i}")).find(|n| !self.by_name.contains_key(n)).unwrap_or_default()
    }

    /// Renames nodes whose name an earlier node (in [`Graph::nodes`] order) already has, to
    /// `{name}_{i}` with the first `i` no node uses, here and in every subgraph; onnxruntime
    /// refuses a graph with two nodes of one name. Returns the number of nodes renamed.
    pub fn uniquify_node_names(&mut self) -> usize {
        let ids: Vec<NodeId> = self.nodes().collect();
        let mut all: HashSet<String> = ids.iter().filter_map(|&n| self.node(n).name.clone()).collect();
        let mut seen: HashSet<String> = HashSet::new();
        let mut renamed = 0;
        for &n in &ids {
            if let Some(name) = self.node(n).name.clone()
                && !name.is_empty()
                && !seen.insert(name.clone())
            {
                let fresh = (1..).map(|i| format!("{name}_{i}")).find(|c| !all.contains(c)).unwrap_or_default();
                all.insert(fresh.clone());
                seen.insert(fresh.clone());
                self.node_mut(n).name = Some(fresh);
                renamed += 1;
            }
            for sg in self.node_mut(n).subgraphs_mut() {
                renamed += sg.uniquify_node_names();
            }
        }
        renamed
    }

    /// Adds a dense initializer (appended to the initializer list).
    pub fn add_initializer(&mut self, name: impl Into<String>, tensor: Tensor) -> Result<ValueId, IrError> {
        let ty = Type::tensor(tensor.dtype, tensor.dims.iter().map(|&d| crate::Dim::known(d)).collect());
        let id = self.add_value(name, Some(ty))?;
        self.value_mut(id).init = Some(Init::Dense(tensor));
        self.initializers.push(id);
        Ok(id)
    }

    pub fn value(&self, id: ValueId) -> &Value {
        match &self.g[id.0] {
            Vertex::Value(v) => v,
            Vertex::Node(_) => unreachable!("ValueId always indexes a value vertex"),
        }
    }

    pub fn value_mut(&mut self, id: ValueId) -> &mut Value {
        match &mut self.g[id.0] {
            Vertex::Value(v) => v,
            Vertex::Node(_) => unreachable!("ValueId always indexes a value vertex"),
        }
    }

    pub fn contains_value(&self, id: ValueId) -> bool {
        matches!(self.g.node_weight(id.0), Some(Vertex::Value(_)))
    }

    pub fn find_value(&self, name: &str) -> Option<ValueId> {
        self.by_name.get(name).copied()
    }

    pub fn values(&self) -> impl Iterator<Item = ValueId> + '_ {
        self.g.node_indices().filter(|&i| matches!(self.g[i], Vertex::Value(_))).map(ValueId)
    }

    pub fn rename_value(&mut self, id: ValueId, new_name: impl Into<String>) -> Result<(), IrError> {
        let new_name = new_name.into();
        if self.by_name.contains_key(&new_name) {
            return Err(IrError::DuplicateValue(new_name));
        }
        let old = std::mem::replace(&mut self.value_mut(id).name, new_name.clone());
        self.by_name.remove(&old);
        self.by_name.insert(new_name.clone(), id);
        if let Some(Init::Dense(t)) = &mut self.value_mut(id).init
            && t.name.is_some()
        {
            t.name = Some(new_name.clone());
        }
        // Subgraphs that read the value by name follow the rename.
        let readers: Vec<NodeId> = self.uses(id).into_iter().filter(|u| u.1 == Use::Capture).map(|u| u.0).collect();
        for n in readers {
            for sg in self.node_mut(n).subgraphs_mut() {
                sg.rename_outer(&old, &new_name);
            }
        }
        Ok(())
    }

    fn rename_outer(&mut self, old: &str, new: &str) {
        if let Some(id) = self.find_value(old)
            && self.value(id).outer
        {
            match self.find_value(new) {
                // The subgraph already reads `new` from outside: merge the two reads.
                Some(existing) if existing != id && self.value(existing).outer => {
                    self.replace_uses(id, existing);
                    for d in self.outputs.iter_mut() {
                        if d.value == id {
                            d.value = existing;
                        }
                    }
                    self.remove_value(id);
                }
                _ => {
                    self.by_name.remove(old);
                    self.by_name.insert(new.to_string(), id);
                    self.value_mut(id).name = new.to_string();
                }
            }
        }
        let nodes: Vec<NodeId> = self.nodes().collect();
        for n in nodes {
            for sg in self.node_mut(n).subgraphs_mut() {
                sg.rename_outer(old, new);
            }
        }
    }

    /// The node and output slot producing `v`, if a node produces it.
    pub fn producer(&self, v: ValueId) -> Option<(NodeId, usize)> {
        self.g.edges_directed(v.0, Direction::Incoming).find_map(|e| match e.weight() {
            Port::Out(i) => Some((NodeId(e.source()), *i as usize)),
            _ => None,
        })
    }

    /// Every use of `v` by a node, in no particular order.
    pub fn uses(&self, v: ValueId) -> Vec<(NodeId, Use)> {
        self.g
            .edges_directed(v.0, Direction::Outgoing)
            .map(|e| {
                let u = match e.weight() {
                    Port::In(i) => Use::Input(*i as usize),
                    _ => Use::Capture,
                };
                (NodeId(e.target()), u)
            })
            .collect()
    }

    pub fn is_graph_output(&self, v: ValueId) -> bool {
        self.outputs.iter().any(|d| d.value == v)
    }

    pub fn is_graph_input(&self, v: ValueId) -> bool {
        self.inputs.iter().any(|d| d.value == v)
    }

    /// True when nothing reads `v`: no node, no subgraph and no graph output.
    pub fn is_unused(&self, v: ValueId) -> bool {
        self.g.edges_directed(v.0, Direction::Outgoing).next().is_none() && !self.is_graph_output(v)
    }

    /// A constant initializer's tensor (not one overridable as a graph input).
    pub fn const_tensor(&self, v: ValueId) -> Option<&Tensor> {
        if self.is_graph_input(v) {
            return None;
        }
        self.value(v).tensor()
    }

    /// Removes a value nobody produces or uses, and its list entries.
    pub fn remove_value(&mut self, v: ValueId) {
        let name = self.value(v).name.clone();
        self.by_name.remove(&name);
        self.inputs.retain(|d| d.value != v);
        self.outputs.retain(|d| d.value != v);
        self.value_info.retain(|d| d.value != v);
        self.initializers.retain(|&i| i != v);
        self.sparse_initializers.retain(|&i| i != v);
        self.g.remove_node(v.0);
    }

    // ---- nodes --------------------------------------------------------------------------

    pub fn node(&self, id: NodeId) -> &Node {
        match &self.g[id.0] {
            Vertex::Node(n) => n,
            Vertex::Value(_) => unreachable!("NodeId always indexes a node vertex"),
        }
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        match &mut self.g[id.0] {
            Vertex::Node(n) => n,
            Vertex::Value(_) => unreachable!("NodeId always indexes a node vertex"),
        }
    }

    pub fn contains_node(&self, id: NodeId) -> bool {
        matches!(self.g.node_weight(id.0), Some(Vertex::Node(_)))
    }

    /// Node ids in storage order (not necessarily topological: see [`Graph::topo_order`]).
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.g.node_indices().filter(|&i| matches!(self.g[i], Vertex::Node(_))).map(NodeId)
    }

    pub fn node_count(&self) -> usize {
        self.nodes().count()
    }

    /// Adds a node. Output values must exist and have no producer yet. The node is ordered
    /// after existing nodes unless placed with [`Graph::place_like`].
    pub fn add_node(&mut self, spec: NodeSpec) -> Result<NodeId, IrError> {
        for o in spec.outputs.iter().flatten() {
            if let Some((p, _)) = self.producer(*o) {
                return Err(IrError::Invalid(format!(
                    "value '{}' is already produced by node '{}'",
                    self.value(*o).name,
                    self.node(p).display_name()
                )));
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let node = Node {
            name: spec.name,
            op: spec.op,
            domain_raw: None,
            attrs: spec.attrs,
            doc_string: None,
            extra: RawFields::default(),
            inputs: spec.inputs.clone(),
            outputs: spec.outputs.clone(),
            captures: Vec::new(),
            seq,
        };
        let id = NodeId(self.g.add_node(Vertex::Node(node)));
        for (i, v) in spec.inputs.iter().enumerate() {
            if let Some(v) = v {
                self.g.add_edge(v.0, id.0, Port::In(i as u32));
            }
        }
        for (i, v) in spec.outputs.iter().enumerate() {
            if let Some(v) = v {
                self.g.add_edge(id.0, v.0, Port::Out(i as u32));
            }
        }
        Ok(id)
    }

    /// Orders `node` where `like` was in the original order (used when a rewrite replaces `like`).
    pub fn place_like(&mut self, node: NodeId, like: NodeId) {
        let seq = self.node(like).seq;
        self.node_mut(node).seq = seq;
    }

    /// The sequence key used to keep file order stable.
    pub fn seq(&self, node: NodeId) -> u64 {
        self.node(node).seq
    }

    /// Sets (or clears) input `slot` of `node`, growing the input list if needed.
    pub fn set_input(&mut self, node: NodeId, slot: usize, v: Option<ValueId>) {
        if let Some(e) = self
            .g
            .edges_directed(node.0, Direction::Incoming)
            .find(|e| *e.weight() == Port::In(slot as u32))
            .map(|e| e.id())
        {
            self.g.remove_edge(e);
        }
        {
            let n = self.node_mut(node);
            if n.inputs.len() <= slot {
                n.inputs.resize(slot + 1, None);
            }
            n.inputs[slot] = v;
        }
        if let Some(v) = v {
            self.g.add_edge(v.0, node.0, Port::In(slot as u32));
        }
    }

    /// Replaces the whole input list of `node`.
    pub fn set_inputs(&mut self, node: NodeId, inputs: Vec<Option<ValueId>>) {
        let old: Vec<_> = self
            .g
            .edges_directed(node.0, Direction::Incoming)
            .filter(|e| matches!(e.weight(), Port::In(_)))
            .map(|e| e.id())
            .collect();
        for e in old {
            self.g.remove_edge(e);
        }
        for (i, v) in inputs.iter().enumerate() {
            if let Some(v) = v {
                self.g.add_edge(v.0, node.0, Port::In(i as u32));
            }
        }
        self.node_mut(node).inputs = inputs;
    }

    /// Records the outer values a node's subgraphs read by name.
    pub fn set_captures(&mut self, node: NodeId, captures: Vec<ValueId>) {
        let old: Vec<_> = self
            .g
            .edges_directed(node.0, Direction::Incoming)
            .filter(|e| *e.weight() == Port::Capture)
            .map(|e| e.id())
            .collect();
        for e in old {
            self.g.remove_edge(e);
        }
        for v in &captures {
            self.g.add_edge(v.0, node.0, Port::Capture);
        }
        self.node_mut(node).captures = captures;
    }

    /// Makes every node input (and subgraph capture) reading `old` read `new` instead.
    /// Graph outputs are not touched: their names are the model's interface.
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) {
        if old == new {
            return;
        }
        for (n, u) in self.uses(old) {
            match u {
                Use::Input(slot) => self.set_input(n, slot, Some(new)),
                Use::Capture => {
                    let (old_name, new_name) = (self.value(old).name.clone(), self.value(new).name.clone());
                    for sg in self.node_mut(n).subgraphs_mut() {
                        sg.rename_outer(&old_name, &new_name);
                    }
                    let caps: Vec<ValueId> =
                        self.node(n).captures.iter().map(|&c| if c == old { new } else { c }).collect();
                    let mut dedup = Vec::new();
                    for c in caps {
                        if !dedup.contains(&c) {
                            dedup.push(c);
                        }
                    }
                    self.set_captures(n, dedup);
                }
            }
        }
    }

    /// Removes a node; its output values stay (without producer) unless unused, in which case
    /// they are removed too.
    pub fn remove_node(&mut self, id: NodeId) {
        let outs: Vec<ValueId> = self.node(id).outputs.iter().flatten().copied().collect();
        self.g.remove_node(id.0);
        for v in outs {
            if self.contains_value(v) && self.is_unused(v) && !self.is_graph_input(v) {
                self.remove_value(v);
            }
        }
    }

    /// Nodes in a topological order that keeps the original file order wherever it is legal.
    /// On a cycle, returns the nodes that are part of (or wait on) it.
    pub fn topo_order(&self) -> Result<Vec<NodeId>, Vec<NodeId>> {
        let mut indeg: HashMap<NodeIndex<u32>, usize> = HashMap::new();
        let mut heap = BinaryHeap::new();
        let mut total = 0;
        for n in self.nodes() {
            total += 1;
            let d = self
                .g
                .edges_directed(n.0, Direction::Incoming)
                .filter(|e| self.producer(ValueId(e.source())).is_some())
                .count();
            if d == 0 {
                heap.push(Reverse((self.node(n).seq, n.0.index())));
            }
            indeg.insert(n.0, d);
        }
        let mut order = Vec::with_capacity(total);
        while let Some(Reverse((_, idx))) = heap.pop() {
            let n = NodeIndex::new(idx);
            order.push(NodeId(n));
            for out in self.g.edges_directed(n, Direction::Outgoing) {
                for e in self.g.edges_directed(out.target(), Direction::Outgoing) {
                    let c = e.target();
                    if let Some(d) = indeg.get_mut(&c) {
                        *d -= 1;
                        if *d == 0 {
                            heap.push(Reverse((self.node(NodeId(c)).seq, c.index())));
                        }
                    }
                }
            }
        }
        if order.len() == total {
            Ok(order)
        } else {
            // Report the nodes that lie on a cycle, not everything waiting behind one.
            let mut on_cycle: Vec<NodeId> = petgraph::algo::kosaraju_scc(&self.g)
                .into_iter()
                .filter(|scc| scc.len() > 1 || self.g.contains_edge(scc[0], scc[0]))
                .flatten()
                .filter(|&i| matches!(self.g[i], Vertex::Node(_)))
                .map(NodeId)
                .collect();
            if on_cycle.is_empty() {
                on_cycle = indeg.iter().filter(|(_, d)| **d > 0).map(|(n, _)| NodeId(*n)).collect();
            }
            on_cycle.sort_by_key(|n| self.node(*n).seq);
            Err(on_cycle)
        }
    }

    /// Number of edges (for the verifier).
    pub(crate) fn edges_of(&self, n: NodeId) -> (Vec<(ValueId, Use)>, Vec<(ValueId, usize)>) {
        let ins = self
            .g
            .edges_directed(n.0, Direction::Incoming)
            .map(|e| {
                let u = match e.weight() {
                    Port::In(i) => Use::Input(*i as usize),
                    _ => Use::Capture,
                };
                (ValueId(e.source()), u)
            })
            .collect();
        let outs = self
            .g
            .edges_directed(n.0, Direction::Outgoing)
            .filter_map(|e| match e.weight() {
                Port::Out(i) => Some((ValueId(e.target()), *i as usize)),
                _ => None,
            })
            .collect();
        (ins, outs)
    }

    pub(crate) fn name_index_ok(&self) -> Option<String> {
        for v in self.values() {
            let name = &self.value(v).name;
            if self.by_name.get(name) != Some(&v) {
                return Some(name.clone());
            }
        }
        None
    }

    /// Total parameters (elements of dense initializers and of `Constant` nodes' tensors; some
    /// exporters store every weight as a `Constant` node), recursively through subgraphs.
    pub fn param_count(&self) -> u64 {
        let own: u64 = self.initializers.iter().filter_map(|&v| self.value(v).tensor()).filter_map(|t| t.numel()).sum();
        let constants: u64 = self
            .nodes()
            .filter(|&n| self.node(n).op == crate::Op::Constant)
            .filter_map(|n| crate::AttrList::get_tensor(&self.node(n).attrs, "value").and_then(|t| t.numel()))
            .sum();
        own + constants
            + self.nodes().map(|n| self.node(n).subgraphs().map(|g| g.param_count()).sum::<u64>()).sum::<u64>()
    }

    /// Bytes of initializer data, recursively.
    pub fn param_bytes(&self) -> u64 {
        let own: u64 = self.initializers.iter().filter_map(|&v| self.value(v).tensor()).map(|t| t.byte_size()).sum();
        own + self.nodes().map(|n| self.node(n).subgraphs().map(|g| g.param_bytes()).sum::<u64>()).sum::<u64>()
    }

    /// Node count including nodes of subgraphs.
    pub fn node_count_deep(&self) -> usize {
        self.nodes().map(|n| 1 + self.node(n).subgraphs().map(|g| g.node_count_deep()).sum::<usize>()).sum()
    }
}

#[cfg(test)]
mod tests {
    use crate::builder::GraphBuilder;
    use crate::{DType, Dim, Op};

    #[test]
    fn uniquify_node_names_renames_only_repeats() {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(2)]).unwrap();
        let mut v = x;
        for _ in 0..4 {
            v = b.op(Op::Relu, &[v], vec![]).unwrap();
        }
        b.output(v, "y", None).unwrap();
        let mut g = b.finish();
        let ids: Vec<_> = g.nodes().collect();
        // names: a, a, a_1, (none)
        g.node_mut(ids[0]).name = Some("a".into());
        g.node_mut(ids[1]).name = Some("a".into());
        g.node_mut(ids[2]).name = Some("a_1".into());
        g.node_mut(ids[3]).name = None;
        assert_eq!(g.uniquify_node_names(), 1);
        let names: Vec<Option<String>> = ids.iter().map(|&n| g.node(n).name.clone()).collect();
        assert_eq!(names, vec![Some("a".into()), Some("a_2".into()), Some("a_1".into()), None]);
        assert_eq!(g.uniquify_node_names(), 0);
    }
}
