//! Per-node work: how many arithmetic ops each node performs and how many bytes it moves, from
//! inferred types and symbolic shapes bound to concrete sizes. Device-independent: the target's
//! roofline is applied in `model.rs`.

use crate::Precision;
use optc_ir::infer::{self, Facts};
use optc_ir::symexpr::Lin;
use optc_ir::{AttrList, DType, Dim, DimValue, Graph, Node, NodeId, Op, Tensor, Type, ValueId};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet};

/// Symbolic dims with no binding take this size (and the node is flagged [`Flag::UnboundDim`]).
pub const UNBOUND_DIM_DEFAULT: i64 = 1;

/// Head size assumed when an attention node's head count is unknown.
const DEFAULT_HEAD_DIM: f64 = 64.0;

/// Why a node's figures are approximate, or how it was treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flag {
    /// A symbolic dim had no binding; [`UNBOUND_DIM_DEFAULT`] was used.
    UnboundDim,
    /// A shape, rank or dtype was unknown; sizes were estimated from the node's known tensors.
    ShapeEstimated,
    /// The op is not modelled; ops = 2 x the largest tensor's elements, bytes = inputs + outputs.
    OpaqueEstimate,
    /// The ops formula is a rough approximation (Einsum, DFT, RoiAlign, ...).
    ApproxOps,
    /// The node is inside an If/Loop/Scan body, counted once (not per iteration).
    Subgraph,
    /// A weight `DequantizeLinear` whose cost is charged to its consumer (which reads the
    /// quantised weight directly).
    FoldedIntoConsumer,
    /// The row stands for several nodes fused into one kernel ([`Analysis::fuse`]).
    Fused,
    /// The outputs are known before the run (shape arithmetic on static shapes, or every input a
    /// constant): the runtime folds the node at load, so it costs nothing per run.
    ConstantFolded,
}

/// Activation traffic of a node through one value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Traffic {
    /// Value name (qualified with `node/` prefixes inside subgraphs).
    pub value: String,
    /// Bytes moved at the value's dtype width.
    pub bytes: f64,
}

/// The work of one node.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeCost {
    /// Node name (`parent/child` inside subgraphs).
    pub name: String,
    /// Op as optc prints it (`MatMul`, `com.microsoft::MatMulNBits`).
    pub op: String,
    /// Precision the node computes in (the `tops` row used).
    pub precision: Precision,
    /// Arithmetic operations (a multiply-accumulate is 2).
    pub ops: f64,
    /// Bytes of constant weights read, at their stored width (int4 = 0.5 B per element), scales
    /// and zero points included.
    pub weight_bytes: f64,
    /// Elements of the constant weight a matrix kernel multiplies by (the `B` of MatMul or Gemm,
    /// `K x N` of MatMulNBits); 0 for every other node. With `ops` it gives the activation rows
    /// `M = ops / (2 * weight_elems)`, which decide how the runtime's kernel passes over the
    /// weight (see [`crate::WeightPass`]).
    pub weight_elems: f64,
    /// Activations read.
    pub inputs: Vec<Traffic>,
    /// Activations written.
    pub outputs: Vec<Traffic>,
    /// Metadata-only (Reshape, Shape, Identity, ...) or folded: no time, no launch.
    pub free: bool,
    /// Approximations and treatments, see [`Flag`].
    pub flags: Vec<Flag>,
}

impl NodeCost {
    /// All bytes moved: weights plus activations in and out.
    pub fn bytes(&self) -> f64 {
        self.weight_bytes + self.activation_bytes()
    }
    /// Activation bytes in and out.
    pub fn activation_bytes(&self) -> f64 {
        self.inputs.iter().chain(&self.outputs).map(|t| t.bytes).sum()
    }
    fn flag(&mut self, f: Flag) {
        if !self.flags.contains(&f) {
            self.flags.push(f);
        }
    }
}

/// The work of a whole graph, node by node in topological order.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Analysis {
    /// One entry per node (subgraph nodes included, after their parent).
    pub nodes: Vec<NodeCost>,
    /// Values that leave the graph (or a subgraph); fusion never removes their traffic.
    pub graph_outputs: Vec<String>,
    /// Symbolic dims that had no binding (each took [`UNBOUND_DIM_DEFAULT`]).
    pub unbound_dims: Vec<String>,
}

/// Analyses every node of `graph` with its symbolic dims bound from `dims` (`seq` -> 128).
/// Unbound symbols take [`UNBOUND_DIM_DEFAULT`] and are listed in [`Analysis::unbound_dims`].
/// If/Loop/Scan bodies are counted once (flagged); of an If's branches, the costlier is counted.
pub fn analyze(graph: &Graph, opset: i64, dims: &HashMap<String, i64>) -> Analysis {
    analyze_with(graph, opset, dims, true)
}

/// [`analyze`] for a runtime that fuses a QDQ group (`DequantizeLinear` inputs, the op, its
/// `QuantizeLinear`) into an integer kernel only when `qdq_shared_fused` or when every quantised
/// activation the op reads has no other reader: otherwise the op computes in float and its
/// weight's `DequantizeLinear` runs on every call (onnxruntime 1.32's CPU provider, see
/// [`crate::Target::qdq_shared_inputs_fused`]).
pub fn analyze_with(graph: &Graph, opset: i64, dims: &HashMap<String, i64>, qdq_shared_fused: bool) -> Analysis {
    // Bind the user's dims in the declared types before inference, so that shapes the symbolic
    // arithmetic cannot express (a strided Conv over `height`) come out as numbers.
    let bound;
    let graph = if dims.is_empty() {
        graph
    } else {
        bound = bind_dims(graph, dims);
        &bound
    };
    let mut cx = Ctx { dims, opset, unbound: BTreeSet::new(), qdq_shared_fused };
    let scope = Scope { g: graph, facts: infer::infer(graph, opset), parent: None, prefix: String::new() };
    let mut nodes = Vec::new();
    let mut outs = Vec::new();
    scope.walk(&mut cx, false, &mut nodes, &mut outs);
    for d in &graph.outputs {
        outs.push(scope.qual(d.value));
    }
    Analysis { nodes, graph_outputs: outs, unbound_dims: cx.unbound.into_iter().collect() }
}

/// A copy of `graph` whose declared types (inputs, outputs, value_info) have the symbols of
/// `dims` replaced by their values. Tensor data is shared, not copied.
fn bind_dims(graph: &Graph, dims: &HashMap<String, i64>) -> Graph {
    let mut g = graph.clone();
    let decls: Vec<optc_ir::ValueId> =
        g.inputs.iter().chain(&g.outputs).chain(&g.value_info).map(|d| d.value).collect();
    for v in decls {
        if let Some(ty) = g.value_mut(v).ty.as_mut()
            && let optc_ir::TypeKind::Tensor { shape: Some(shape), .. } = &mut ty.kind
        {
            for d in shape.iter_mut() {
                if let optc_ir::DimValue::Sym(s) = &d.value
                    && let Some(&n) = dims.get(s)
                {
                    d.value = optc_ir::DimValue::Known(n);
                }
            }
        }
    }
    g
}

impl Analysis {
    /// Index of the first node called `name`.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Total ops.
    pub fn total_ops(&self) -> f64 {
        self.nodes.iter().map(|n| n.ops).sum()
    }

    /// Total bytes moved.
    pub fn total_bytes(&self) -> f64 {
        self.nodes.iter().map(|n| n.bytes()).sum()
    }

    /// Value name -> the indices of the nodes that read it (each node once, in order).
    fn readers(&self) -> HashMap<&str, Vec<usize>> {
        let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for t in &n.inputs {
                let r = readers.entry(t.value.as_str()).or_default();
                if r.last() != Some(&i) {
                    r.push(i);
                }
            }
        }
        readers
    }

    /// The kernels a runtime forms by itself when it loads the graph, as groups of node indices
    /// for [`Analysis::fuse`] (disjoint, each of two or more nodes):
    ///
    /// - `activations`: a Conv/ConvTranspose/Gemm/MatMul whose output is read only by an
    ///   elementwise activation (Relu, Clip, LeakyRelu, Sigmoid, HardSigmoid, HardSwish, Tanh);
    /// - `epilogues`: a Conv/ConvTranspose followed by `BatchNormalization`, or a Gemm/MatMul
    ///   followed by the `Add` of a constant bias, each the only reader of the value before it;
    ///   the runtime folds them into the producer (onnxruntime's ConvBNFusion, MatMulAddFusion).
    ///   Other constant Add/Mul after a Conv are left alone: whether a runtime folds them depends
    ///   on operand order and shapes (onnxruntime 1.32 folds `Mul(conv, c)` but not `Mul(c, conv)`);
    /// - `composites`: a normalisation or GELU written out as elementwise ops and `ReduceMean`
    ///   (LayerNorm, RMSNorm, erf and tanh GELU): the region that a value read by two or more
    ///   nodes reaches through elementwise ops whose other inputs are constants or values of the
    ///   region, not past a value read twice (which starts the next composite; LayerNorm's
    ///   centred `x - mean(x)` excepted), when it holds a `ReduceMean`, `Erf` or `Tanh` and at
    ///   least four nodes (an erf GELU only with `x / sqrt(2)` written as a Div, the form
    ///   runtimes match). An `Add` of two activations that produces the region's input and is
    ///   read only by it joins it (the residual of a SkipLayerNormalization), as it joins a
    ///   `LayerNormalization` (or simplified / RMS normalisation) op that is its only reader.
    ///
    /// A value that leaves the graph always ends a chain (it is written either way).
    pub fn runtime_groups(&self, activations: bool, epilogues: bool, composites: bool) -> Vec<Vec<usize>> {
        const PRODUCERS: &[&str] = &[
            "Conv",
            "ConvTranspose",
            "Gemm",
            "MatMul",
            "com.microsoft::FusedConv",
            "com.microsoft::FusedMatMul",
            "com.microsoft::FusedGemm",
        ];
        const ACTS: &[&str] = &["Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh"];
        const ELEM: &[&str] = &[
            "Add",
            "Sub",
            "Mul",
            "Div",
            "Pow",
            "Sqrt",
            "Reciprocal",
            "Erf",
            "Tanh",
            "ReduceMean",
            "Neg",
            "Exp",
            "Sigmoid",
            "Cast",
        ];
        const SEEDS: &[&str] = &["ReduceMean", "Erf", "Tanh"];
        let readers = self.readers();
        let mut producer: HashMap<&str, usize> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for t in &n.outputs {
                producer.insert(t.value.as_str(), i);
            }
        }
        let outputs: HashSet<&str> = self.graph_outputs.iter().map(String::as_str).collect();
        // The only reader of node i's single output, when there is exactly one and the output
        // stays inside the graph.
        let sole_reader = |i: usize| -> Option<usize> {
            let n = &self.nodes[i];
            if n.outputs.len() != 1 || outputs.contains(n.outputs[0].value.as_str()) {
                return None;
            }
            match readers.get(n.outputs[0].value.as_str()).map(Vec::as_slice) {
                Some([j]) => Some(*j),
                _ => None,
            }
        };
        let mut taken: HashSet<usize> = HashSet::new();
        let mut groups = Vec::new();
        if activations || epilogues {
            for i in 0..self.nodes.len() {
                if !PRODUCERS.contains(&self.nodes[i].op.as_str()) || taken.contains(&i) {
                    continue;
                }
                let mut grp = vec![i];
                let mut last = i;
                if epilogues {
                    while let Some(j) = sole_reader(last) {
                        let r = &self.nodes[j];
                        // One activation input (the chain), the other operands constants.
                        let conv = self.nodes[i].op.contains("Conv");
                        let fits = if conv { r.op == "BatchNormalization" } else { r.op == "Add" };
                        if fits && r.inputs.len() == 1 && r.weight_bytes > 0.0 && !taken.contains(&j) {
                            grp.push(j);
                            last = j;
                        } else {
                            break;
                        }
                    }
                }
                if activations
                    && let Some(j) = sole_reader(last)
                    && ACTS.contains(&self.nodes[j].op.as_str())
                    && !taken.contains(&j)
                {
                    grp.push(j);
                }
                if grp.len() > 1 {
                    taken.extend(grp.iter().copied());
                    groups.push(grp);
                }
            }
        }
        if composites {
            let mut roots: Vec<&str> =
                readers.iter().filter(|(_, r)| r.len() >= 2).map(|(v, _)| *v).collect::<Vec<_>>();
            // Deterministic, in graph order of the roots' first readers.
            roots.sort_by_key(|v| (readers[v].iter().min().copied(), v.to_string()));
            for root in roots {
                let mut region: BTreeSet<usize> = BTreeSet::new();
                let mut avail: HashSet<&str> = HashSet::from([root]);
                let mut frontier: Vec<&str> = vec![root];
                while let Some(v) = frontier.pop() {
                    for &j in readers.get(v).map(Vec::as_slice).unwrap_or(&[]) {
                        let n = &self.nodes[j];
                        if region.contains(&j)
                            || taken.contains(&j)
                            || !ELEM.contains(&n.op.as_str())
                            || !n.inputs.iter().all(|t| avail.contains(t.value.as_str()))
                        {
                            continue;
                        }
                        region.insert(j);
                        for t in &n.outputs {
                            let v = t.value.as_str();
                            // A value read twice ends the region (the next composite starts
                            // there: LayerNorm then GELU are two kernels), except LayerNorm's
                            // centred input `x - mean(x)`, read by the variance and the division.
                            let centred = n.op == "Sub"
                                && n.inputs.iter().any(|i| {
                                    producer.get(i.value.as_str()).is_some_and(|&p| self.nodes[p].op == "ReduceMean")
                                });
                            let fan_out = readers.get(v).map_or(0, Vec::len);
                            if avail.insert(v) && (fan_out < 2 || centred) {
                                frontier.push(v);
                            }
                        }
                    }
                }
                if region.len() < 4 || !region.iter().any(|&j| SEEDS.contains(&self.nodes[j].op.as_str())) {
                    continue;
                }
                // An erf GELU (no ReduceMean) is one kernel only in the form exporters write and
                // runtimes match: `x / sqrt(2)` by a Div (onnxruntime's GeluFusion matches no
                // other; `x * (1 / sqrt(2))` stays five kernels).
                let is_norm = region.iter().any(|&j| self.nodes[j].op == "ReduceMean");
                let erf_by_div = |j: usize| {
                    self.nodes[j]
                        .inputs
                        .first()
                        .and_then(|t| producer.get(t.value.as_str()))
                        .is_some_and(|&p| self.nodes[p].op == "Div" && region.contains(&p))
                };
                if !is_norm && region.iter().any(|&j| self.nodes[j].op == "Erf" && !erf_by_div(j)) {
                    continue;
                }
                if let Some(&h) = producer.get(root)
                    && self.nodes[h].op == "Add"
                    && self.nodes[h].inputs.len() == 2
                    && !taken.contains(&h)
                    && !outputs.contains(root)
                    && readers[root].iter().all(|j| region.contains(j))
                {
                    region.insert(h);
                }
                taken.extend(region.iter().copied());
                groups.push(region.into_iter().collect());
            }
        }
        if composites {
            // A residual Add read only by a normalisation op: one skip-normalisation kernel.
            const NORMS: &[&str] = &["LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization"];
            for (j, n) in self.nodes.iter().enumerate() {
                let bare = n.op.rsplit("::").next().unwrap_or(&n.op);
                if !NORMS.contains(&bare) || taken.contains(&j) {
                    continue;
                }
                let Some(x) = n.inputs.first() else { continue };
                if let Some(&h) = producer.get(x.value.as_str())
                    && self.nodes[h].op == "Add"
                    && self.nodes[h].inputs.len() == 2
                    && !taken.contains(&h)
                    && sole_reader(h) == Some(j)
                {
                    taken.extend([h, j]);
                    groups.push(vec![h, j]);
                }
            }
        }
        groups
    }

    /// The analysis with each group of node indices executed as one fused kernel.
    ///
    /// A fused group is one row (placed where its first member was) with the members' ops and
    /// weight bytes summed; values produced inside the group and read only inside it (and not a
    /// graph output) cost nothing (no write, no read), an input read by several members is read
    /// once, and the group pays one launch overhead instead of one per member. Indices refer to
    /// [`Analysis::nodes`]; groups must be non-empty and disjoint.
    pub fn fuse(&self, groups: &[Vec<usize>]) -> Result<Analysis, crate::CostError> {
        use crate::CostError;
        let mut owner: HashMap<usize, usize> = HashMap::new();
        for (gi, grp) in groups.iter().enumerate() {
            if grp.is_empty() {
                return Err(CostError::Fusion(format!("group {gi} is empty")));
            }
            for &i in grp {
                if i >= self.nodes.len() {
                    return Err(CostError::Fusion(format!(
                        "group {gi}: node index {i} out of range (the analysis has {} nodes)",
                        self.nodes.len()
                    )));
                }
                if let Some(prev) = owner.insert(i, gi) {
                    return Err(CostError::Fusion(format!(
                        "node {i} ('{}') is in groups {prev} and {gi}",
                        self.nodes[i].name
                    )));
                }
            }
        }
        let readers = self.readers();
        let outputs: HashSet<&str> = self.graph_outputs.iter().map(String::as_str).collect();
        let mut fused: HashMap<usize, NodeCost> = HashMap::new();
        for grp in groups {
            let members: BTreeSet<usize> = grp.iter().copied().collect();
            let produced: HashSet<&str> =
                members.iter().flat_map(|&i| self.nodes[i].outputs.iter().map(|t| t.value.as_str())).collect();
            let internal = |v: &str| {
                produced.contains(v)
                    && !outputs.contains(v)
                    && readers.get(v).is_some_and(|r| r.iter().all(|i| members.contains(i)))
            };
            let main = members
                .iter()
                .copied()
                .max_by(|&a, &b| self.nodes[a].ops.total_cmp(&self.nodes[b].ops).then(b.cmp(&a)))
                .unwrap_or(grp[0]);
            let first = *members.iter().next().unwrap_or(&grp[0]);
            let mut row = NodeCost {
                name: self.nodes[first].name.clone(),
                op: format!(
                    "Fused[{}]",
                    members.iter().map(|&i| self.nodes[i].op.as_str()).collect::<Vec<_>>().join("+")
                ),
                precision: self.nodes[main].precision,
                ops: 0.0,
                weight_bytes: 0.0,
                weight_elems: 0.0,
                inputs: Vec::new(),
                outputs: Vec::new(),
                free: members.iter().all(|&i| self.nodes[i].free),
                flags: Vec::new(),
            };
            let mut seen_in: HashSet<&str> = HashSet::new();
            for &i in &members {
                let n = &self.nodes[i];
                row.ops += n.ops;
                row.weight_bytes += n.weight_bytes;
                row.weight_elems += n.weight_elems;
                for t in &n.inputs {
                    if !produced.contains(t.value.as_str()) && seen_in.insert(t.value.as_str()) {
                        row.inputs.push(t.clone());
                    } else if produced.contains(t.value.as_str()) && !internal(&t.value) {
                        // Produced inside but also needed outside: written once, re-read inside.
                        row.inputs.push(t.clone());
                    }
                }
                for t in &n.outputs {
                    if !internal(&t.value) {
                        row.outputs.push(t.clone());
                    }
                }
                for f in &n.flags {
                    row.flag(*f);
                }
            }
            if members.len() > 1 {
                row.flag(Flag::Fused);
            }
            fused.insert(first, row);
        }
        let nodes = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match owner.get(&i) {
                None => Some(n.clone()),
                Some(_) => fused.remove(&i),
            })
            .collect();
        Ok(Analysis { nodes, graph_outputs: self.graph_outputs.clone(), unbound_dims: self.unbound_dims.clone() })
    }
}

struct Ctx<'d> {
    dims: &'d HashMap<String, i64>,
    opset: i64,
    unbound: BTreeSet<String>,
    /// Whether the runtime fuses QDQ groups whose quantised inputs have other readers too.
    qdq_shared_fused: bool,
}

/// One graph level: its facts, and the enclosing scope for values read from outside.
struct Scope<'a> {
    g: &'a Graph,
    facts: Facts,
    parent: Option<&'a Scope<'a>>,
    prefix: String,
}

/// What a node sees of one of its inputs or outputs.
struct Operand {
    name: String,
    dtype: Option<DType>,
    shape: Option<Vec<f64>>,
    numel: Option<f64>,
    /// Stored bytes and element type when the value is a constant weight (directly or through a
    /// folded `DequantizeLinear`).
    weight: Option<(f64, DType)>,
    /// Element type before a `DequantizeLinear` that produced this activation.
    dq_from: Option<DType>,
}

impl Operand {
    fn dim(&self, i: isize) -> Option<f64> {
        let s = self.shape.as_ref()?;
        let idx = if i < 0 { s.len().checked_sub(i.unsigned_abs())? } else { i as usize };
        s.get(idx).copied()
    }
    fn rank(&self) -> Option<usize> {
        self.shape.as_ref().map(Vec::len)
    }
}

fn elem_bytes(d: Option<DType>) -> f64 {
    d.and_then(DType::bits).map(|b| f64::from(b) / 8.0).unwrap_or(4.0)
}

fn tensor_bytes(t: &Tensor) -> f64 {
    let n = t.numel().unwrap_or(0) as f64;
    n * t.dtype.bits().map(|b| f64::from(b) / 8.0).unwrap_or(0.0)
}

impl<'a> Scope<'a> {
    fn ty(&self, v: ValueId) -> Option<&Type> {
        if let Some(t) = self.facts.ty(v) {
            return Some(t);
        }
        let val = self.g.value(v);
        if val.outer {
            let p = self.parent?;
            return p.g.find_value(&val.name).and_then(|pv| p.ty(pv));
        }
        None
    }

    fn qual(&self, v: ValueId) -> String {
        let val = self.g.value(v);
        if val.outer
            && let Some(p) = self.parent
            && let Some(pv) = p.g.find_value(&val.name)
        {
            return p.qual(pv);
        }
        format!("{}{}", self.prefix, val.name)
    }

    /// A constant tensor: an initializer (here or outside) or a `Constant` node's value.
    fn const_tensor(&self, v: ValueId) -> Option<&Tensor> {
        if let Some(t) = self.g.const_tensor(v) {
            return Some(t);
        }
        let val = self.g.value(v);
        if val.outer {
            let p = self.parent?;
            return p.g.find_value(&val.name).and_then(|pv| p.const_tensor(pv));
        }
        let (n, _) = self.g.producer(v)?;
        let node = self.g.node(n);
        (node.op == Op::Constant).then(|| node.attrs.get_tensor("value")).flatten()
    }

    /// Whether `n` is a `DequantizeLinear` of a constant (a weight): its consumers read the
    /// quantised data directly.
    fn is_weight_dq(&self, n: NodeId) -> bool {
        let node = self.g.node(n);
        node.op == Op::DequantizeLinear && node.input(0).and_then(|x| self.const_tensor(x)).is_some()
    }

    /// Whether the runtime leaves node `n` unfused because a quantised activation it reads
    /// (through a `DequantizeLinear` of a `QuantizeLinear` output) has other readers: of the DQ
    /// output, or of the quantised tensor itself.
    fn qdq_blocked(&self, n: NodeId, cx: &Ctx<'_>) -> bool {
        if cx.qdq_shared_fused {
            return false;
        }
        self.g.node(n).inputs().iter().flatten().any(|&v| {
            let Some((p, _)) = self.g.producer(v) else { return false };
            let pn = self.g.node(p);
            pn.op == Op::DequantizeLinear
                && !self.is_weight_dq(p)
                && (self.g.uses(v).len() > 1 || pn.input(0).is_some_and(|q| self.g.uses(q).len() > 1))
        })
    }

    /// Whether weight `DequantizeLinear` `n` is folded into its readers (they read the quantised
    /// weight): it is a weight DQ and no reader is left unfused by [`Self::qdq_blocked`].
    fn weight_dq_folded(&self, n: NodeId, cx: &Ctx<'_>) -> bool {
        self.is_weight_dq(n)
            && self
                .g
                .node(n)
                .outputs()
                .iter()
                .flatten()
                .all(|&o| self.g.uses(o).iter().all(|&(r, _)| !self.qdq_blocked(r, cx)))
    }

    fn shape(&self, v: ValueId, cx: &mut Ctx<'_>, flags: &mut BTreeSet<Flag>) -> Option<Vec<f64>> {
        let shape = self.ty(v)?.shape()?;
        Some(shape.iter().map(|d| eval_dim(d, cx, flags)).collect())
    }

    fn operand(&self, v: ValueId, cx: &mut Ctx<'_>, flags: &mut BTreeSet<Flag>) -> Operand {
        let shape = self.shape(v, cx, flags);
        let numel = shape.as_ref().map(|s| s.iter().product::<f64>());
        let dtype = self.ty(v).and_then(Type::elem);
        let mut weight = self.const_tensor(v).map(|t| (tensor_bytes(t), t.dtype));
        let mut dq_from = None;
        if let Some((p, _)) = self.g.producer(v) {
            let pn = self.g.node(p);
            if pn.op == Op::DequantizeLinear {
                // A weight DQ the runtime runs on every call leaves a float tensor here.
                if self.weight_dq_folded(p, cx) {
                    let bytes: f64 =
                        pn.inputs().iter().flatten().filter_map(|&x| self.const_tensor(x)).map(tensor_bytes).sum();
                    let qd = pn.input(0).and_then(|x| self.const_tensor(x)).map(|t| t.dtype).unwrap_or(DType::I8);
                    weight = Some((bytes, qd));
                } else if !self.is_weight_dq(p) {
                    dq_from = pn.input(0).and_then(|x| self.ty(x)).and_then(Type::elem);
                }
            }
        }
        Operand { name: self.qual(v), dtype, shape, numel, weight, dq_from }
    }

    /// Appends the cost of every node (and of subgraph bodies) to `out`.
    fn walk(&self, cx: &mut Ctx<'_>, in_sub: bool, out: &mut Vec<NodeCost>, outs: &mut Vec<String>) {
        let order = self.g.topo_order().unwrap_or_else(|_| self.g.nodes().collect());
        for n in order {
            let mut row = self.node_cost(n, cx);
            if in_sub {
                row.flag(Flag::Subgraph);
            }
            out.push(row);
            let node = self.g.node(n);
            let bodies: Vec<&Graph> = node.subgraphs().collect();
            if bodies.is_empty() {
                continue;
            }
            let base = format!("{}{}/", self.prefix, node.display_name());
            let mut runs: Vec<(Vec<NodeCost>, Vec<String>)> = Vec::new();
            for (bi, body) in bodies.iter().enumerate() {
                let prefix = if bodies.len() > 1 { format!("{base}{bi}/") } else { base.clone() };
                let sub = Scope { g: body, facts: infer::infer(body, cx.opset), parent: Some(self), prefix };
                let mut rows = Vec::new();
                let mut sub_outs: Vec<String> = body.outputs.iter().map(|d| sub.qual(d.value)).collect();
                sub.walk(cx, true, &mut rows, &mut sub_outs);
                runs.push((rows, sub_outs));
            }
            if node.op == Op::If {
                // One branch runs: count the costlier.
                let weight = |r: &Vec<NodeCost>| r.iter().map(|c| c.ops + c.bytes()).sum::<f64>();
                if let Some(best) = runs.into_iter().max_by(|a, b| weight(&a.0).total_cmp(&weight(&b.0))) {
                    out.extend(best.0);
                    outs.extend(best.1);
                }
            } else {
                for (rows, o) in runs {
                    out.extend(rows);
                    outs.extend(o);
                }
            }
        }
    }

    fn node_cost(&self, n: NodeId, cx: &mut Ctx<'_>) -> NodeCost {
        let node = self.g.node(n);
        let mut flags = BTreeSet::new();
        let mut ins: Vec<Option<Operand>> =
            node.inputs().iter().map(|v| v.map(|v| self.operand(v, cx, &mut flags))).collect();
        // A QDQ group the runtime does not fuse computes in float.
        if self.qdq_blocked(n, cx) {
            for o in ins.iter_mut().flatten() {
                o.dq_from = None;
            }
        }
        let outs: Vec<Option<Operand>> =
            node.outputs().iter().map(|v| v.map(|v| self.operand(v, cx, &mut flags))).collect();
        let kind = classify(&node.op);
        let mut row = NodeCost {
            name: format!("{}{}", self.prefix, node.display_name()),
            op: node.op.to_string(),
            precision: Precision::F32,
            ops: 0.0,
            weight_bytes: 0.0,
            weight_elems: 0.0,
            inputs: Vec::new(),
            outputs: Vec::new(),
            free: false,
            flags: Vec::new(),
        };
        let folded = self.weight_dq_folded(n, cx);
        // A Cast to the type it already has is a no-op every runtime removes.
        let first_dtype = |v: &[Option<Operand>]| v.first().and_then(|o| o.as_ref()).and_then(|o| o.dtype);
        let noop_cast = matches!(node.op, Op::Cast | Op::CastLike)
            && first_dtype(&ins).is_some()
            && first_dtype(&ins) == first_dtype(&outs);
        // Outputs known before the run (shape arithmetic on static shapes, or every input a
        // constant): the runtime's constant folding computes them once, at load.
        let const_folded = !folded
            && !matches!(kind, Kind::Free | Kind::Control)
            && node.subgraphs().next().is_none()
            && !node.outputs().is_empty()
            && (node
                .outputs()
                .iter()
                .all(|v| v.is_some_and(|v| self.facts.values.get(&v).is_some_and(|t| t.known().is_some())))
                || (!node.inputs().is_empty()
                    && node.inputs().iter().flatten().all(|&v| self.const_tensor(v).is_some())
                    && !matches!(node.op, Op::DequantizeLinear | Op::QuantizeLinear)));
        if const_folded {
            flags.insert(Flag::ConstantFolded);
        }
        let free = folded || noop_cast || const_folded || matches!(kind, Kind::Free | Kind::Control);

        // Fill unknown activation sizes from the node's known ones.
        let known_max = ins
            .iter()
            .chain(&outs)
            .flatten()
            .filter(|o| o.weight.is_none())
            .filter_map(|o| o.numel)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        let est_numel = |o: &Operand, flags: &mut BTreeSet<Flag>| -> f64 {
            match o.numel {
                Some(n) => n,
                None => {
                    flags.insert(Flag::ShapeEstimated);
                    known_max.unwrap_or(0.0)
                }
            }
        };
        let est_out = |outs: &[Option<Operand>], i: usize, flags: &mut BTreeSet<Flag>| {
            outs.get(i).and_then(|o| o.as_ref()).map_or(0.0, |o| est_numel(o, flags))
        };

        // Precision.
        let act_dtype = ins.first().and_then(|o| o.as_ref()).and_then(|o| o.dtype);
        let out_dtype = outs.first().and_then(|o| o.as_ref()).and_then(|o| o.dtype);
        let base_prec = Precision::of_dtype(out_dtype.or(act_dtype).unwrap_or(DType::F32));
        row.precision = match kind {
            Kind::MatMul { integer: true, .. } | Kind::Conv { integer: true, .. } => {
                act_dtype.filter(|d| d.is_int()).map(Precision::of_dtype).unwrap_or(Precision::Int8)
            }
            Kind::MatMul { .. }
            | Kind::Gemm
            | Kind::Conv { .. }
            | Kind::ConvTranspose
            | Kind::Attention(_)
            | Kind::MatMulNBits => {
                let a = ins.first().and_then(|o| o.as_ref());
                match a.and_then(|a| a.dq_from) {
                    Some(q) if q.is_int() => Precision::of_dtype(q),
                    _ => Precision::of_dtype(act_dtype.unwrap_or(DType::F32)),
                }
            }
            Kind::Quantize => Precision::of_dtype(act_dtype.unwrap_or(DType::F32)),
            _ => base_prec,
        };

        if !free {
            // Bytes: weights at stored width, activations at dtype width.
            for o in ins.iter().flatten() {
                if let Some((b, _)) = o.weight {
                    if !matches!(kind, Kind::Gather) {
                        row.weight_bytes += b;
                    }
                } else {
                    let b = est_numel(o, &mut flags) * elem_bytes(o.dtype);
                    row.inputs.push(Traffic { value: o.name.clone(), bytes: b });
                }
            }
            for (i, o) in outs.iter().enumerate() {
                if let Some(o) = o {
                    let mut numel = est_numel(o, &mut flags);
                    if o.numel.is_none()
                        && let Some(n) = special_out_numel(&kind, node, &ins)
                    {
                        numel = n;
                    }
                    let dt = o.dtype.or(if i == 0 { act_dtype } else { None });
                    row.outputs.push(Traffic { value: o.name.clone(), bytes: numel * elem_bytes(dt) });
                }
            }
        } else {
            // Metadata-only: keep the edges (fusion needs them) at zero bytes.
            for o in ins.iter().flatten().filter(|o| o.weight.is_none()) {
                row.inputs.push(Traffic { value: o.name.clone(), bytes: 0.0 });
            }
            for o in outs.iter().flatten() {
                row.outputs.push(Traffic { value: o.name.clone(), bytes: 0.0 });
            }
        }

        let out0 = est_out(&outs, 0, &mut flags);
        let in_op = |i: usize| ins.get(i).and_then(|o| o.as_ref());
        let in_numel = |i: usize, flags: &mut BTreeSet<Flag>| in_op(i).map(|o| est_numel(o, flags)).unwrap_or(0.0);
        row.ops = match &kind {
            Kind::Free | Kind::Control | Kind::Move => 0.0,
            _ if free => 0.0,
            Kind::Gather => {
                // Only the gathered rows of the table are read.
                let rows = out0;
                if let Some(d) = in_op(0) {
                    let per = match d.weight {
                        Some((b, _)) => b / d.numel.filter(|&n| n > 0.0).unwrap_or(1.0),
                        None => elem_bytes(d.dtype),
                    };
                    let b = rows * per;
                    if d.weight.is_some() {
                        row.weight_bytes += b;
                        // Scales of a blocked table (GatherBlockQuantized) read alongside.
                        for o in ins.iter().skip(2).flatten() {
                            if let Some((sb, _)) = o.weight {
                                let frac = d.numel.filter(|&n| n > 0.0).map(|n| (rows / n).min(1.0)).unwrap_or(1.0);
                                row.weight_bytes += sb * frac;
                            }
                        }
                    } else if let Some(t) = row.inputs.iter_mut().find(|t| t.value == d.name) {
                        t.bytes = b.min(t.bytes);
                    }
                }
                0.0
            }
            Kind::Elementwise(f) => f * out0.max(in_numel(0, &mut flags)),
            Kind::Quantize => 2.0 * out0,
            Kind::Norm(f) => f * out0.max(in_numel(0, &mut flags)),
            Kind::Reduce(f) => f * in_numel(0, &mut flags).max(out0),
            Kind::TopK => {
                let k = ins.get(1).and_then(|o| o.as_ref()).map(|_| out0).unwrap_or(1.0);
                let n = in_numel(0, &mut flags);
                n * (1.0 + k.max(2.0).log2().min(16.0))
            }
            Kind::Pool => {
                let k: f64 = node
                    .attrs
                    .get_ints("kernel_shape")
                    .map(|k| k.iter().map(|&x| x.max(1) as f64).product())
                    .unwrap_or(1.0);
                out0 * k
            }
            Kind::Resize(f) => f * out0,
            Kind::MatMul { a, b, .. } => {
                let (a, b) = (in_op(*a), in_op(*b));
                let trans_a = node.attrs.get_int("transA").unwrap_or(0) != 0;
                let k = a
                    .and_then(|a| if trans_a { a.dim(-2) } else { a.dim(-1) })
                    .or_else(|| b.and_then(|b| if b.rank() == Some(1) { b.dim(0) } else { b.dim(-2) }));
                let k = k.unwrap_or_else(|| {
                    flags.insert(Flag::ShapeEstimated);
                    1.0
                });
                2.0 * out0 * k
            }
            Kind::Gemm => {
                let a = in_op(0);
                let trans_a = node.attrs.get_int("transA").unwrap_or(0) != 0;
                let k = a.and_then(|a| if trans_a { a.dim(0) } else { a.dim(1) }).unwrap_or_else(|| {
                    flags.insert(Flag::ShapeEstimated);
                    1.0
                });
                2.0 * out0 * k + if in_op(2).is_some() { out0 } else { 0.0 }
            }
            Kind::Conv { w, .. } => {
                let per = in_op(*w).and_then(|w| Some(w.numel? / w.dim(0)?.max(1.0))).unwrap_or_else(|| {
                    flags.insert(Flag::ShapeEstimated);
                    1.0
                });
                let bias = node.inputs().len() > w + 1 && in_op(w + 1).is_some();
                2.0 * out0 * per + if bias { out0 } else { 0.0 }
            }
            Kind::ConvTranspose => {
                let per = in_op(1).and_then(|w| Some(w.numel? / w.dim(0)?.max(1.0))).unwrap_or_else(|| {
                    flags.insert(Flag::ShapeEstimated);
                    1.0
                });
                2.0 * in_numel(0, &mut flags) * per
            }
            Kind::MatMulNBits => {
                let n = node.attrs.get_int("N").map(|n| n as f64);
                let k = node.attrs.get_int("K").map(|k| k as f64);
                let a = in_numel(0, &mut flags);
                match (n, k) {
                    (Some(n), Some(_)) => 2.0 * a * n,
                    _ => {
                        flags.insert(Flag::ShapeEstimated);
                        let k = in_op(0).and_then(|a| a.dim(-1)).unwrap_or(1.0);
                        2.0 * out0 * k
                    }
                }
            }
            Kind::Attention(a) => attention_ops(*a, node, &ins, &mut flags),
            Kind::Rnn(gates) => {
                // X [seq, batch, input], W [dirs, gates*hidden, input], R [dirs, gates*hidden, hidden].
                let x = in_op(0);
                let w = in_op(1);
                let r = in_op(2);
                match (x.and_then(|x| Some(x.dim(0)? * x.dim(1)?)), w, r) {
                    (Some(sb), Some(w), Some(r)) => {
                        let dirs = w.dim(0).unwrap_or(1.0);
                        let gh = w.dim(1).unwrap_or(0.0);
                        let inp = w.dim(2).unwrap_or(0.0);
                        let hid = r.dim(2).unwrap_or(gh / gates);
                        dirs * sb * (2.0 * gh * (inp + hid) + 8.0 * gh)
                    }
                    _ => {
                        flags.insert(Flag::ShapeEstimated);
                        2.0 * out0.max(in_numel(0, &mut flags))
                    }
                }
            }
            Kind::Einsum => {
                flags.insert(Flag::ApproxOps);
                let prod: f64 = ins.iter().flatten().map(|o| est_numel(o, &mut flags).max(1.0)).product();
                let terms = ins.iter().flatten().count() as f64;
                if terms >= 2.0 { 2.0 * (prod * out0.max(1.0)).sqrt() } else { in_numel(0, &mut flags) }
            }
            Kind::Approx(f) => {
                flags.insert(Flag::ApproxOps);
                f * out0.max(in_numel(0, &mut flags))
            }
            Kind::Opaque => {
                flags.insert(Flag::OpaqueEstimate);
                let biggest = ins.iter().chain(&outs).flatten().filter_map(|o| o.numel).fold(0.0, f64::max);
                2.0 * biggest.max(out0)
            }
        };
        if !free {
            let weight_numel = |i: usize| in_op(i).filter(|o| o.weight.is_some()).and_then(|o| o.numel);
            row.weight_elems = match &kind {
                Kind::MatMul { b, integer: false, .. } => weight_numel(*b).unwrap_or(0.0),
                Kind::Gemm => weight_numel(1).unwrap_or(0.0),
                // The QKV projection of onnxruntime's packed Attention is a GEMM over its weight input.
                Kind::Attention(AttnKind::Packed) => weight_numel(1).unwrap_or(0.0),
                Kind::MatMulNBits => match (node.attrs.get_int("K"), node.attrs.get_int("N")) {
                    (Some(k), Some(n)) if k > 0 && n > 0 => (k * n) as f64,
                    _ => 0.0,
                },
                _ => 0.0,
            };
        }
        if folded {
            flags.insert(Flag::FoldedIntoConsumer);
        }
        row.free = free;
        for f in flags {
            row.flag(f);
        }
        row
    }
}

fn eval_dim(d: &Dim, cx: &mut Ctx<'_>, flags: &mut BTreeSet<Flag>) -> f64 {
    match &d.value {
        DimValue::Known(n) => (*n).max(0) as f64,
        DimValue::Sym(s) => {
            let lin = Lin::parse(s);
            let mut v = lin.constant as f64;
            for (sym, coef) in &lin.terms {
                let b = match cx.dims.get(sym) {
                    Some(&b) => b,
                    None => {
                        cx.unbound.insert(sym.clone());
                        flags.insert(Flag::UnboundDim);
                        UNBOUND_DIM_DEFAULT
                    }
                };
                v += (*coef as f64) * (b as f64);
            }
            v.max(0.0)
        }
        DimValue::Unknown => {
            flags.insert(Flag::ShapeEstimated);
            1.0
        }
    }
}

/// Output elements of contrib ops whose outputs inference leaves unknown.
fn special_out_numel(kind: &Kind, node: &Node, ins: &[Option<Operand>]) -> Option<f64> {
    let a = ins.first()?.as_ref()?;
    match kind {
        Kind::MatMulNBits => {
            let n = node.attrs.get_int("N")? as f64;
            let k = node.attrs.get_int("K")? as f64;
            Some(a.numel? / k.max(1.0) * n)
        }
        Kind::MatMul { a: ai, b: bi, .. } => {
            let a = ins.get(*ai)?.as_ref()?;
            let b = ins.get(*bi)?.as_ref()?;
            Some(a.numel? / a.dim(-1)?.max(1.0) * b.dim(-1)?)
        }
        _ => None,
    }
}

#[derive(Clone, Copy, Debug)]
enum AttnKind {
    /// ONNX `Attention` (opset 23): Q, K, V, mask, past_key, past_value.
    Onnx,
    /// `com.microsoft::MultiHeadAttention`: query, key, value, bias, mask, bias, past_key (6).
    Mha,
    /// `com.microsoft::GroupQueryAttention`: query, key, value, past_key (3).
    Gqa,
    /// `com.microsoft::Attention`: input, weights (QKV projection), bias, mask, past (4).
    Packed,
}

#[derive(Clone, Debug)]
enum Kind {
    Free,
    Control,
    Move,
    Gather,
    Elementwise(f64),
    Quantize,
    Norm(f64),
    Reduce(f64),
    TopK,
    Pool,
    Resize(f64),
    MatMul { a: usize, b: usize, integer: bool },
    Gemm,
    Conv { w: usize, integer: bool },
    ConvTranspose,
    MatMulNBits,
    Attention(AttnKind),
    Rnn(f64),
    Einsum,
    Approx(f64),
    Opaque,
}

fn classify(op: &Op) -> Kind {
    use Kind::*;
    match op {
        Op::Opaque { domain, op_type } if domain == "com.microsoft" => match op_type.as_str() {
            "MatMulNBits" => MatMulNBits,
            "FusedMatMul" | "TransposeMatMul" => MatMul { a: 0, b: 1, integer: false },
            "MatMulIntegerToFloat" | "DynamicQuantizeMatMul" => MatMul { a: 0, b: 1, integer: true },
            "FusedConv" | "NhwcConv" => Conv { w: 1, integer: false },
            "QGemm" => MatMul { a: 0, b: 3, integer: true },
            "MultiHeadAttention" => Attention(AttnKind::Mha),
            "GroupQueryAttention" => Attention(AttnKind::Gqa),
            "Attention" | "QAttention" => Attention(AttnKind::Packed),
            "SkipLayerNormalization" => Norm(9.0),
            "SkipSimplifiedLayerNormalization" => Norm(7.0),
            "SimplifiedLayerNormalization" => Norm(6.0),
            "LayerNormalization" => Norm(8.0),
            "SkipGroupNorm" | "GroupNorm" => Norm(9.0),
            "EmbedLayerNormalization" => Norm(10.0),
            "RotaryEmbedding" => Elementwise(3.0),
            "FastGelu" | "Gelu" => Elementwise(8.0),
            "BiasGelu" | "BiasSplitGelu" => Elementwise(9.0),
            "QuickGelu" => Elementwise(5.0),
            "BiasAdd" => Elementwise(2.0),
            "QLinearAdd" | "QLinearMul" => Elementwise(4.0),
            "QLinearSigmoid" | "QLinearLeakyRelu" => Elementwise(6.0),
            "QLinearSoftmax" => Norm(7.0),
            "QLinearGlobalAveragePool" => Reduce(1.0),
            "QLinearConcat" => Move,
            "GatherBlockQuantized" => Gather,
            _ => Opaque,
        },
        Op::Opaque { .. } => Opaque,
        Op::Reshape
        | Op::Squeeze
        | Op::Unsqueeze
        | Op::Flatten
        | Op::Identity
        | Op::Shape
        | Op::Size
        | Op::Constant
        | Op::Dropout
        | Op::Optional
        | Op::OptionalGetElement
        | Op::OptionalHasElement
        | Op::SequenceEmpty
        | Op::SequenceLength => Free,
        Op::If | Op::Loop | Op::Scan | Op::SequenceMap => Control,
        Op::Transpose
        | Op::Concat
        | Op::Slice
        | Op::Split
        | Op::Tile
        | Op::Expand
        | Op::Pad
        | Op::DepthToSpace
        | Op::SpaceToDepth
        | Op::Compress
        | Op::Trilu
        | Op::OneHot
        | Op::ReverseSequence
        | Op::NonZero
        | Op::Range
        | Op::ConstantOfShape
        | Op::Scatter
        | Op::ScatterElements
        | Op::ScatterND
        | Op::TensorScatter
        | Op::CenterCropPad
        | Op::Col2Im
        | Op::Unique
        | Op::EyeLike
        | Op::SequenceAt
        | Op::SequenceConstruct
        | Op::SequenceErase
        | Op::SequenceInsert
        | Op::SplitToSequence
        | Op::ConcatFromSequence
        | Op::BitCast => Move,
        Op::Gather | Op::GatherElements | Op::GatherND => Gather,
        Op::Add
        | Op::Sub
        | Op::Mul
        | Op::Div
        | Op::Neg
        | Op::Abs
        | Op::Relu
        | Op::Max
        | Op::Min
        | Op::Sum
        | Op::Mean
        | Op::Where
        | Op::Equal
        | Op::Greater
        | Op::Less
        | Op::GreaterOrEqual
        | Op::LessOrEqual
        | Op::And
        | Op::Or
        | Op::Xor
        | Op::Not
        | Op::Sign
        | Op::Floor
        | Op::Ceil
        | Op::Round
        | Op::Mod
        | Op::BitShift
        | Op::BitwiseAnd
        | Op::BitwiseNot
        | Op::BitwiseOr
        | Op::BitwiseXor
        | Op::Cast
        | Op::CastLike
        | Op::IsNaN
        | Op::IsInf
        | Op::Reciprocal => Elementwise(1.0),
        Op::Clip | Op::PRelu | Op::LeakyRelu | Op::ThresholdedRelu | Op::Shrink | Op::Sqrt => Elementwise(2.0),
        Op::HardSigmoid | Op::Softsign => Elementwise(3.0),
        Op::Sigmoid
        | Op::Tanh
        | Op::Exp
        | Op::Log
        | Op::Pow
        | Op::Erf
        | Op::Sin
        | Op::Cos
        | Op::Tan
        | Op::Asin
        | Op::Acos
        | Op::Atan
        | Op::Sinh
        | Op::Cosh
        | Op::Asinh
        | Op::Acosh
        | Op::Atanh
        | Op::Softplus
        | Op::Elu
        | Op::Selu
        | Op::Celu
        | Op::HardSwish
        | Op::Swish
        | Op::Bernoulli
        | Op::RandomNormal
        | Op::RandomNormalLike
        | Op::RandomUniform
        | Op::RandomUniformLike => Elementwise(4.0),
        Op::Gelu | Op::Mish => Elementwise(8.0),
        Op::RotaryEmbedding => Elementwise(3.0),
        Op::BatchNormalization => Elementwise(2.0),
        Op::QuantizeLinear | Op::DequantizeLinear | Op::DynamicQuantizeLinear => Quantize,
        Op::Softmax => Norm(5.0),
        Op::LogSoftmax => Norm(6.0),
        Op::Hardmax => Norm(2.0),
        Op::LayerNormalization | Op::GroupNormalization | Op::InstanceNormalization | Op::MeanVarianceNormalization => {
            Norm(8.0)
        }
        Op::RMSNormalization => Norm(6.0),
        Op::LpNormalization => Norm(4.0),
        Op::LRN => Norm(8.0),
        Op::ReduceSum
        | Op::ReduceMean
        | Op::ReduceMax
        | Op::ReduceMin
        | Op::ReduceProd
        | Op::ReduceL1
        | Op::ReduceLogSum
        | Op::ArgMax
        | Op::ArgMin
        | Op::GlobalAveragePool
        | Op::GlobalMaxPool
        | Op::CumSum
        | Op::CumProd => Reduce(1.0),
        Op::ReduceL2 | Op::ReduceSumSquare | Op::GlobalLpPool => Reduce(2.0),
        Op::ReduceLogSumExp => Reduce(5.0),
        Op::TopK => TopK,
        Op::MaxPool | Op::AveragePool | Op::LpPool => Pool,
        Op::Resize | Op::Upsample => Resize(4.0),
        Op::GridSample => Resize(8.0),
        Op::AffineGrid => Resize(2.0),
        Op::MatMul => MatMul { a: 0, b: 1, integer: false },
        Op::MatMulInteger => MatMul { a: 0, b: 1, integer: true },
        Op::QLinearMatMul => MatMul { a: 0, b: 3, integer: true },
        Op::Gemm => Gemm,
        Op::Conv => Conv { w: 1, integer: false },
        Op::ConvInteger => Conv { w: 1, integer: true },
        Op::QLinearConv => Conv { w: 3, integer: true },
        Op::DeformConv => Conv { w: 1, integer: false },
        Op::ConvTranspose => ConvTranspose,
        Op::Attention => Attention(AttnKind::Onnx),
        Op::LSTM => Rnn(4.0),
        Op::GRU => Rnn(3.0),
        Op::RNN => Rnn(1.0),
        Op::Einsum => Einsum,
        Op::DFT | Op::STFT => Approx(20.0),
        Op::RoiAlign | Op::MaxRoiPool | Op::MaxUnpool => Approx(4.0),
        Op::NonMaxSuppression => Approx(10.0),
        Op::Det => Approx(10.0),
        _ => Opaque,
    }
}

/// Ops of a scaled-dot-product attention: QK^T and PV (2 MACs per query element per key) plus
/// softmax on the scores, plus the QKV projection for the packed contrib form. Masks and
/// causality are ignored (full attention is counted).
fn attention_ops(kind: AttnKind, node: &Node, ins: &[Option<Operand>], flags: &mut BTreeSet<Flag>) -> f64 {
    let get = |i: usize| ins.get(i).and_then(|o| o.as_ref());
    let Some(q) = get(0) else {
        flags.insert(Flag::ShapeEstimated);
        return 0.0;
    };
    let heads = node.attrs.get_int("num_heads").or_else(|| node.attrs.get_int("q_num_heads")).map(|h| h.max(1) as f64);
    let (seq, head_dim) = match q.rank() {
        Some(4) => (q.dim(2), q.dim(3)),
        Some(3) => (q.dim(1), heads.and_then(|h| Some(q.dim(2)? / h))),
        _ => (None, None),
    };
    let past_idx = match kind {
        AttnKind::Onnx => 4,
        AttnKind::Mha => 6,
        AttnKind::Gqa => 3,
        AttnKind::Packed => 4,
    };
    let past = get(past_idx)
        .and_then(|p| match (kind, p.rank()) {
            (AttnKind::Packed, Some(5)) => p.dim(3),
            (_, Some(4)) => p.dim(2),
            _ => None,
        })
        .unwrap_or(0.0);
    let kv_len = match kind {
        AttnKind::Packed => seq,
        _ => get(1).and_then(|k| match k.rank() {
            Some(4) => k.dim(2),
            Some(3) => k.dim(1),
            _ => None,
        }),
    }
    .or(seq);
    let Some(q_elems) = q.numel else {
        flags.insert(Flag::ShapeEstimated);
        return 0.0;
    };
    let (proj_ops, q_elems) = match kind {
        AttnKind::Packed => match get(1).and_then(|w| Some((w.dim(0)?, w.dim(1)?))) {
            Some((hin, h3)) => {
                let tokens = q_elems / hin.max(1.0);
                (2.0 * tokens * hin * h3, tokens * h3 / 3.0)
            }
            None => {
                flags.insert(Flag::ShapeEstimated);
                (0.0, q_elems)
            }
        },
        _ => (0.0, q_elems),
    };
    let head_dim = head_dim.unwrap_or_else(|| {
        flags.insert(Flag::ShapeEstimated);
        DEFAULT_HEAD_DIM
    });
    let l = kv_len.unwrap_or_else(|| {
        flags.insert(Flag::ShapeEstimated);
        1.0
    }) + past;
    let scores = q_elems / head_dim.max(1.0) * l;
    proj_ops + 4.0 * q_elems * l + 5.0 * scores
}
