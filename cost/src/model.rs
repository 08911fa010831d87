//! The roofline: a node's time on a target from its ops and bytes, the per-node report and its
//! aggregations.

use crate::Precision;
use crate::analysis::{Analysis, Flag, NodeCost, analyze_with};
use crate::target::{Figures, Target};
use optc_ir::Graph;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use thiserror::Error;

/// Errors of the cost model's helpers.
#[derive(Debug, Error)]
pub enum CostError {
    /// Bad fusion groups (empty, overlapping, out of range).
    #[error("fusion: {0}")]
    Fusion(String),
}

/// What limits a node's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    /// `ops / (eff_c * TOPS)` is the larger term.
    Compute,
    /// `bytes / (eff_m * BW)` is the larger term.
    Memory,
    /// The launch overhead exceeds both (or the node does no work).
    Overhead,
}

/// A node's time on a target.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct NodeTime {
    /// `ops / (eff_compute * TOPS[precision])`, seconds.
    pub compute_s: f64,
    /// `bytes / (eff_memory * BW)`, seconds.
    pub memory_s: f64,
    /// Launch overhead, seconds.
    pub overhead_s: f64,
    /// `max(compute_s, memory_s) + overhead_s`.
    pub time_s: f64,
    /// The limiting term.
    pub bound: Bound,
    /// The node runs on the target's fallback device.
    pub fallback: bool,
}

impl Target {
    /// Whether `cost` runs on the device itself (op and precision native).
    pub fn is_native(&self, cost: &NodeCost) -> bool {
        cost.free
            || (self.runs_op(&cost.op) && self.runs_precision(self.compute_precision(cost)))
            || (cost.op.starts_with("Fused[") && self.runs_fused(cost))
    }

    /// The precision `cost` computes in on this device. A weight-only quantised matmul
    /// (MatMulNBits: low-bit weights, float activations) takes the device's preferred float
    /// where the device does not run its activations' precision: an NPU runs W4A16 in bf16.
    pub fn compute_precision(&self, cost: &NodeCost) -> Precision {
        if cost.op.ends_with("MatMulNBits") && !self.runs_precision(cost.precision) {
            self.preferred_float()
        } else {
            cost.precision
        }
    }

    /// The factor `op_efficiency` sets for `op` (`com.microsoft::SkipLayerNormalization`, the
    /// bare op type, or a fused row's printed form such as `Fused[Add+LayerNormalization]`), 1
    /// when none is set.
    ///
    /// A fused row without a factor of its own runs at its slowest member's: the composite GELU
    /// `Fused[Div+Erf+Add+Mul+Mul]` at `Erf`'s.
    pub fn op_efficiency_of(&self, op: &str) -> f64 {
        let own = |op: &str| -> Option<f64> {
            let bare = if op.starts_with("Fused[") { op } else { op.rsplit("::").next().unwrap_or(op) };
            self.op_efficiency.get(op).or_else(|| self.op_efficiency.get(bare)).copied().filter(|k| *k > 0.0)
        };
        if let Some(k) = own(op) {
            return k;
        }
        match op.strip_prefix("Fused[").and_then(|r| r.strip_suffix(']')) {
            Some(inner) => inner.split('+').filter_map(own).fold(1.0, f64::min),
            None => 1.0,
        }
    }

    fn runs_fused(&self, cost: &NodeCost) -> bool {
        let inner = cost.op.trim_start_matches("Fused[").trim_end_matches(']');
        self.runs_precision(cost.precision) && inner.split('+').all(|op| self.runs_op(op))
    }

    /// The roofline time of one node: `max(ops / (eff_c * TOPS[p]), bytes / (eff_m * BW))`
    /// plus the launch overhead, on the fallback figures when the device does not run the op
    /// or precision natively. Metadata-only nodes take no time.
    ///
    /// A graph's node is better costed with [`Target::node_time_in`], which knows how much of the
    /// graph's weights stay in the cache; this one assumes the node's own weights are all there is.
    pub fn node_time(&self, cost: &NodeCost) -> NodeTime {
        self.node_time_in(cost, cost.weight_bytes)
    }

    /// [`Target::node_time`] for a node of a graph one run of which touches `graph_bytes` (the
    /// weights it reads and the activations it writes; see [`footprint`]), which decides the share
    /// of the weights that stays in the cache for the target's [`crate::WeightPass`] (when it has
    /// one).
    pub fn node_time_in(&self, cost: &NodeCost, graph_bytes: f64) -> NodeTime {
        if cost.free {
            return NodeTime {
                compute_s: 0.0,
                memory_s: 0.0,
                overhead_s: 0.0,
                time_s: 0.0,
                bound: Bound::Overhead,
                fallback: false,
            };
        }
        let native = self.is_native(cost);
        let figs = match (&self.fallback, native) {
            (Some(fb), false) => fb.figures(),
            _ => self.figures(),
        };
        let act = cost.activation_bytes();
        let memory_s = cost.weight_bytes / figs.bytes_per_s().max(f64::MIN_POSITIVE)
            + act / figs.act_bytes_per_s(act).max(f64::MIN_POSITIVE);
        let p = if native { self.compute_precision(cost) } else { cost.precision };
        // A kernel the runtime implements below (or above) the device's usual efficiency.
        let k = if native { self.op_efficiency_of(&cost.op) } else { 1.0 };
        let mut t = roofline_with_memory(&figs, cost.ops / k, memory_s / k, p);
        if native {
            let (added, floor) = self.weight_pass_s(cost, p, graph_bytes);
            t = NodeTime::from_parts((t.compute_s + added).max(floor), t.memory_s, t.overhead_s);
        }
        t.fallback = !native && self.fallback.is_some();
        t
    }

    /// The weight pass of a matrix kernel ([`crate::WeightPass`]): seconds added to its compute
    /// time, and a floor under it.
    fn weight_pass_s(&self, cost: &NodeCost, p: Precision, graph_bytes: f64) -> (f64, f64) {
        let Some(w) = &self.weight_pass else { return (0.0, 0.0) };
        let elems = cost.weight_elems;
        if elems <= 0.0 || cost.ops <= 0.0 {
            return (0.0, 0.0);
        }
        // Activation rows; a single row runs as a matrix-vector product.
        let rows = cost.ops / (2.0 * elems);
        let many_rows = rows >= 1.5;
        if cost.op.ends_with("MatMulNBits") {
            return if many_rows { (elems * w.unpack_ns * 1e-9, 0.0) } else { (0.0, elems * w.gemv_unpack_ns * 1e-9) };
        }
        if !many_rows || w.eff_stream <= 0.0 || !matches!(p, Precision::F32 | Precision::F16 | Precision::BF16) {
            return (0.0, 0.0);
        }
        // The share of the graph's weights that stays in the cache between runs costs no pass of its
        // own (it overlaps the multiply-accumulates); the rest streams from memory.
        let resident = if w.resident_mb > 0.0 {
            let exp = if w.resident_exp > 0.0 { w.resident_exp } else { 1.0 };
            (w.resident_mb * 1e6 / graph_bytes.max(cost.weight_bytes).max(1.0)).min(1.0).powf(exp)
        } else {
            0.0
        };
        let s_per_byte = (1.0 - resident) / (self.mem_bw_gbs * 1e9 * w.eff_stream);
        (cost.weight_bytes * s_per_byte, 0.0)
    }

    /// The roofline time of `ops` and `bytes` at precision `p` on the device (or on its
    /// fallback when `native` is false), one launch included.
    pub fn op_time(&self, ops: f64, bytes: f64, p: Precision, native: bool) -> NodeTime {
        let figs = match (&self.fallback, native && self.runs_precision(p)) {
            (Some(fb), false) => fb.figures(),
            _ => self.figures(),
        };
        let mut t = roofline(&figs, ops, bytes, p);
        t.fallback = !(native && self.runs_precision(p)) && self.fallback.is_some();
        t
    }
}

fn roofline(f: &Figures<'_>, ops: f64, bytes: f64, p: Precision) -> NodeTime {
    let memory_s = if bytes <= 0.0 { 0.0 } else { bytes / f.bytes_per_s() };
    roofline_with_memory(f, ops, memory_s, p)
}

fn roofline_with_memory(f: &Figures<'_>, ops: f64, memory_s: f64, p: Precision) -> NodeTime {
    let ops_rate = f.ops_per_s(p);
    let compute_s = if ops <= 0.0 {
        0.0
    } else if ops_rate > 0.0 {
        ops / ops_rate
    } else {
        f64::INFINITY
    };
    NodeTime::from_parts(compute_s, memory_s, f.launch_overhead_us * 1e-6)
}

impl NodeTime {
    /// `max(compute, memory) + overhead`, bound by the largest term; not on the fallback.
    fn from_parts(compute_s: f64, memory_s: f64, overhead_s: f64) -> NodeTime {
        let bound = if overhead_s >= compute_s.max(memory_s) {
            Bound::Overhead
        } else if compute_s >= memory_s {
            Bound::Compute
        } else {
            Bound::Memory
        };
        NodeTime {
            compute_s,
            memory_s,
            overhead_s,
            time_s: compute_s.max(memory_s) + overhead_s,
            bound,
            fallback: false,
        }
    }
}

/// One node of a [`Report`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeRow {
    pub name: String,
    pub op: String,
    pub precision: Precision,
    pub ops: f64,
    pub bytes: f64,
    pub weight_bytes: f64,
    /// Elements of a matrix kernel's constant weight (see [`NodeCost::weight_elems`]).
    pub weight_elems: f64,
    /// Activation bytes the node writes.
    pub output_bytes: f64,
    pub compute_s: f64,
    pub memory_s: f64,
    pub time_s: f64,
    pub bound: Bound,
    pub fallback: bool,
    pub flags: Vec<Flag>,
}

/// Per-op-type totals of a [`Report`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpSummary {
    pub op: String,
    pub count: usize,
    pub ops: f64,
    pub bytes: f64,
    pub time_s: f64,
    /// Share of the total time, 0..1.
    pub time_share: f64,
    pub fallback_count: usize,
}

/// Whole-graph totals of a [`Report`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Sum of node times (nodes run one after another), seconds.
    pub time_s: f64,
    pub ops: f64,
    pub bytes: f64,
    pub weight_bytes: f64,
    /// Nodes costed (metadata-only ones included).
    pub nodes: usize,
    /// Nodes on the fallback device.
    pub fallback_nodes: usize,
    /// Time spent on the fallback device, seconds.
    pub fallback_time_s: f64,
    pub compute_bound: usize,
    pub memory_bound: usize,
    pub overhead_bound: usize,
    /// Nodes with any approximation flag.
    pub estimated_nodes: usize,
}

/// The cost of a graph on a target.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub target: String,
    /// Every node, in execution order.
    pub nodes: Vec<NodeRow>,
    /// By op type, most time first.
    pub by_op: Vec<OpSummary>,
    pub totals: Totals,
    /// Symbolic dims that had no binding and took the default size 1.
    pub unbound_dims: Vec<String>,
}

/// The bytes one run of a graph touches: the weights its nodes read plus the activations they
/// write (each written once; a fused group's intermediates not at all). The cache holds both, so
/// this, not the weights alone, decides how much of the weights stays resident between runs.
pub fn footprint(analysis: &Analysis) -> f64 {
    analysis.nodes.iter().map(|c| c.weight_bytes + c.outputs.iter().map(|t| t.bytes).sum::<f64>()).sum()
}

/// Costs an [`Analysis`] (possibly fused with [`Analysis::fuse`]) on `target`.
pub fn report(analysis: &Analysis, target: &Target) -> Report {
    let mut totals = Totals::default();
    let mut nodes = Vec::with_capacity(analysis.nodes.len());
    let mut by_op: BTreeMap<&str, OpSummary> = BTreeMap::new();
    let graph_bytes = footprint(analysis);
    for c in &analysis.nodes {
        let t = target.node_time_in(c, graph_bytes);
        let bytes = c.bytes();
        totals.time_s += t.time_s;
        totals.ops += c.ops;
        totals.bytes += bytes;
        totals.weight_bytes += c.weight_bytes;
        totals.nodes += 1;
        if t.fallback {
            totals.fallback_nodes += 1;
            totals.fallback_time_s += t.time_s;
        }
        if !c.free {
            match t.bound {
                Bound::Compute => totals.compute_bound += 1,
                Bound::Memory => totals.memory_bound += 1,
                Bound::Overhead => totals.overhead_bound += 1,
            }
        }
        if c.flags.iter().any(|f| {
            matches!(
                f,
                Flag::UnboundDim | Flag::ShapeEstimated | Flag::OpaqueEstimate | Flag::ApproxOps | Flag::Subgraph
            )
        }) {
            totals.estimated_nodes += 1;
        }
        let s = by_op.entry(c.op.as_str()).or_insert_with(|| OpSummary {
            op: c.op.clone(),
            count: 0,
            ops: 0.0,
            bytes: 0.0,
            time_s: 0.0,
            time_share: 0.0,
            fallback_count: 0,
        });
        s.count += 1;
        s.ops += c.ops;
        s.bytes += bytes;
        s.time_s += t.time_s;
        s.fallback_count += usize::from(t.fallback);
        nodes.push(NodeRow {
            name: c.name.clone(),
            op: c.op.clone(),
            precision: c.precision,
            ops: c.ops,
            bytes,
            weight_bytes: c.weight_bytes,
            weight_elems: c.weight_elems,
            output_bytes: c.outputs.iter().map(|t| t.bytes).sum(),
            compute_s: t.compute_s,
            memory_s: t.memory_s,
            time_s: t.time_s,
            bound: t.bound,
            fallback: t.fallback,
            flags: c.flags.clone(),
        });
    }
    let mut by_op: Vec<OpSummary> = by_op.into_values().collect();
    for s in &mut by_op {
        s.time_share = if totals.time_s > 0.0 { s.time_s / totals.time_s } else { 0.0 };
    }
    by_op.sort_by(|a, b| b.time_s.total_cmp(&a.time_s).then_with(|| a.op.cmp(&b.op)));
    Report { target: target.name.clone(), nodes, by_op, totals, unbound_dims: analysis.unbound_dims.clone() }
}

/// Analyses `graph` (symbolic dims bound from `dims`) and costs it on `target`.
pub fn estimate(graph: &Graph, opset: i64, target: &Target, dims: &HashMap<String, i64>) -> Report {
    let analysis = analyze_with(graph, opset, dims, target.qdq_shared_inputs_fused);
    if target.fused_activations || target.fused_epilogues || target.fused_composites {
        let groups = analysis.runtime_groups(target.fused_activations, target.fused_epilogues, target.fused_composites);
        if let Ok(fused) = analysis.fuse(&groups) {
            return report(&fused, target);
        }
    }
    report(&analysis, target)
}
