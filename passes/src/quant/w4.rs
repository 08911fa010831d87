//! `quant-w4`: weight-only 4-bit (and 2-bit gate/up) quantisation of MatMul and Gemm weights.
//!
//! A `MatMul(x, W)` (or `Gemm(x, B)` with `transA = 0`) whose weight is a 2-D float32 constant
//! `[K, N]` (`[N, K]` with `transB = 1`) of at least `min_size` elements gets its weight rounded
//! to 4-bit codes in blocks of `block` consecutive K values per output column, each block with a
//! float32 scale and (asymmetric, the default) a 4-bit zero point, or (symmetric) codes `q + 8`,
//! `q` in `-7..=7`.
//!
//! Formats: `nbits` replaces the node by `com.microsoft::MatMulNBits` (B `[N, K/block, block/2]`
//! uint8, scales `[N, K/block]`, packed uint8 zero points; a Gemm's alpha is folded into the
//! weight and a `[N]` bias, times beta, becomes MatMulNBits' bias input, any other C a separate
//! Add); `qdq` keeps the node and feeds its weight from a blocked uint4/int4 `DequantizeLinear`
//! (opset 21: the model's opset is raised when its other ops allow it, see [`super::opset`]);
//! `auto` follows the target's `quant.weight_format`.
//!
//! Methods: `rtn` rounds to nearest. `awq` (activation-aware, training-free) runs the model on
//! the context's calibration inputs (seeded random ones when there are none), keeps per input
//! channel mean |x| and a few hundred sample rows of each quantised node's input, and for every
//! weight searches `s = mean|x|^alpha` over `alpha in {0, 1/grid, ..}` minimising
//! `|| X W - X diag(1/s) Q(diag(s) W) ||` on those rows. The weight is stored as `Q(diag(s) W)`
//! and the input is multiplied by `1/s` with an extra elementwise `Mul` before the node (`1/s`
//! is per K row while the block scales are per block and column, so it cannot fold into them).
//! alpha 0 is plain RTN and adds no Mul. Then (`clip=true`, AWQ's second step) each block's
//! range may shrink (ratio 1 down to 0.5) where that lowers the block's output error on the
//! sample rows. `gptq` ([`super::gptq`]) accumulates the Hessian `2 X^T X / rows` of every
//! quantised node's input in one calibration pass over the float model (one-shot: one Hessian
//! per input value, shared by the nodes that read it, such as Q/K/V and gate/up) and rounds
//! each weight channel by channel, compensating each rounding error on the channels not yet
//! rounded (`damp`, `act_order`). Reference GPTQ (`shrink=0`) trusts the Hessian fully: with
//! few calibration rows for its input channels (512 rows for SmolLM2's 576 and 1536 channels)
//! it fits those rows and pushes error into directions other inputs use. The default,
//! `shrink=auto`, shrinks the off-diagonal of `H` by `K / (K + rows)` (AWQ's error estimate
//! does the same), which vanishes as calibration grows (SmolLM2 W4 perplexity over 2048 tokens:
//! RTN 47.8, reference GPTQ 46.6, GPTQ with `shrink=auto` 38.6). Weights in subgraphs, and all
//! weights when calibration fails, get RTN; the per-node notes name the method each weight
//! actually got.
//!
//! `gateup=w2` gives the gate and up projections of LLaMA-style SwiGLU MLPs
//! (`Mul(SiLU(x Wg), x Wu)`, SiLU as `x * Sigmoid(x)`, as `com.microsoft::QuickGelu` with
//! alpha 1 or as `Swish` with alpha 1; gate and up also when `fuse-qkv` merged them into one
//! MatMul + Split) 2-bit codes (4 levels, asymmetric with a 2-bit zero point, or symmetric
//! `q + 2`, `q` in `-1..=1`) and every other weight 4 bits: the W4/W2-GateUp configuration.
//! MatMulNBits stores them with `bits = 2` (B `[N, K/block, block/4]`); the `qdq` form keeps
//! the 2-bit codes in a uint4/int4 `DequantizeLinear` (ONNX has no 2-bit type at opset 21), so
//! only MatMulNBits gets the smaller file.
//!
//! Lossy: weights are rounded to 4 (or 2) bits; with RTN every element is within half a block
//! step of the (scaled) original.

use super::awq::{self, ActStats};
use super::gptq::{self, GptqOptions};
use super::{opset, pack_int4, quantize_rows_bits, sym_zp};
use crate::fuse::{add_f32, add_op, ensure_domain};
use crate::hessian::{Hessian, HessianObserver};
use crate::util::{const_tensor, forward_output};
use crate::{Exactness, OptionSpec, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_cost::WeightFormat;
use optc_eval::stats::Gram;
use optc_ir::{AttrList, Attribute, DType, Graph, Model, NodeId, Op, Tensor, ValueId};
use std::collections::{HashMap, HashSet};

pub struct QuantW4;

const OPTIONS: &[OptionSpec] = &[
    OptionSpec { name: "block", default: "128", help: "K values per block: 16, 32, 64, 128 or 256" },
    OptionSpec {
        name: "sym",
        default: "false",
        help: "symmetric blocks (zero point 8) instead of asymmetric uint4 with a zero point per block",
    },
    OptionSpec {
        name: "method",
        default: "rtn",
        help: "rtn (round to nearest), awq (activation-aware scaling) or gptq (Hessian-aware rounding)",
    },
    OptionSpec {
        name: "gateup",
        default: "w4",
        help: "bits of the gate/up projections of SwiGLU MLPs: w4, or w2 (2-bit codes, everything else 4 bits)",
    },
    OptionSpec {
        name: "format",
        default: "auto",
        help: "nbits (com.microsoft::MatMulNBits), qdq (int4 DequantizeLinear, opset 21) or auto (the target's)",
    },
    OptionSpec { name: "min_size", default: "4096", help: "leave weights with fewer elements in float" },
    OptionSpec { name: "exclude", default: "", help: "node-name substrings to leave alone, separated by '|'" },
    OptionSpec { name: "grid", default: "20", help: "awq: alpha values searched (0, 1/grid, ...)" },
    OptionSpec { name: "clip", default: "true", help: "awq: also search a range shrink per block (AWQ's clipping)" },
    OptionSpec { name: "rows", default: "256", help: "awq: calibration rows kept per node input for the search" },
    OptionSpec {
        name: "runs",
        default: "4",
        help: "awq/gptq: random input sets to calibrate on when the context has no calibration data",
    },
    OptionSpec {
        name: "damp",
        default: "0.01",
        help: "gptq: damping added to the Hessian's diagonal, a fraction of its mean (raised when it does not factor)",
    },
    OptionSpec {
        name: "shrink",
        default: "auto",
        help: "gptq: shrink the Hessian's off-diagonal by this fraction (0..1; 0 is reference GPTQ), or auto: \
               K / (K + calibration rows)",
    },
    OptionSpec {
        name: "hessian_mem",
        default: "auto",
        help: "gptq: MiB of Hessians held at once while calibrating (auto: half the model's weights, at least 64); \
               inputs that do not fit wait for another calibration pass",
    },
    OptionSpec {
        name: "act_order",
        default: "false",
        help: "gptq: round input channels by descending Hessian diagonal (scales from the unrounded weight)",
    },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Rtn,
    Awq,
    Gptq,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Awq => "awq",
            Method::Gptq => "gptq",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    NBits,
    Qdq,
}

struct Config {
    /// The context's layer filter, as the pass started.
    layers: crate::LayerFilter,
    block: usize,
    sym: bool,
    method: Method,
    format: Format,
    min_size: usize,
    exclude: Vec<String>,
    grid: usize,
    clip: bool,
    rows: usize,
    runs: usize,
    /// Bits of SwiGLU gate/up projections (4 or 2).
    gateup: u8,
    damp: f64,
    /// Hessian shrinkage towards its diagonal; `None`: `K / (K + rows)`.
    shrink: Option<f64>,
    act_order: bool,
    /// Bytes of Hessians held at once; `None`: half the model's weights, at least 64 MiB.
    hessian_mem: Option<u64>,
}

impl Config {
    /// The scheme as configured.
    fn scheme(&self) -> String {
        self.scheme_of(self.method, 4)
    }
    /// The scheme one weight got.
    fn scheme_of(&self, method: Method, bits: u8) -> String {
        let f = match self.format {
            Format::NBits => "MatMulNBits",
            Format::Qdq if bits < 4 => "2-bit codes in int4 DequantizeLinear",
            Format::Qdq => "DequantizeLinear",
        };
        let b = if bits == 4 { String::new() } else { format!("{bits} bits, ") };
        format!("{}, {b}block {}, {}, {f}", method.name(), self.block, if self.sym { "sym" } else { "asym" })
    }
}

impl Pass for QuantW4 {
    fn name(&self) -> &str {
        "quant-w4"
    }
    fn description(&self) -> &str {
        "weight-only int4 quantisation of MatMul/Gemm weights in blocks along K (RTN, AWQ or GPTQ) as MatMulNBits \
         or int4 DequantizeLinear, optionally 2-bit SwiGLU gate/up projections (gateup=w2); lossy: weights rounded \
         to 4 (or 2) bits (AWQ adds a Mul by 1/s before each node it scales)"
    }
    fn options(&self) -> &[OptionSpec] {
        OPTIONS
    }
    fn exactness(&self) -> Exactness {
        Exactness::Lossy
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext, opts: &PassOptions) -> Result<PassOutcome, PassError> {
        let Some(cfg) = config(opts, cx)? else { return Ok(PassOutcome::default()) };
        // The float model, to measure the output error against (a clone shares the weight data).
        let before = model.clone();
        let rewrites = run(model, cx, &cfg)?;
        if rewrites > 0 && cx.measure_error {
            super::report_error(&before, model, None, cx);
        }
        Ok(PassOutcome { rewrites })
    }
}

fn bad(message: String) -> PassError {
    PassError::BadOption { pass: "quant-w4".into(), message }
}

/// The options, or `None` when the target wants no int4 weights (said in a note).
fn config(opts: &PassOptions, cx: &mut PassContext) -> Result<Option<Config>, PassError> {
    let block = opts.usize("block")?;
    if !matches!(block, 16 | 32 | 64 | 128 | 256) {
        return Err(bad(format!("option 'block' must be 16, 32, 64, 128 or 256, got {block}")));
    }
    let method = match opts.get("method").unwrap_or("rtn") {
        "rtn" => Method::Rtn,
        "awq" => Method::Awq,
        "gptq" => Method::Gptq,
        m => return Err(bad(format!("option 'method' must be rtn, awq or gptq, got '{m}'"))),
    };
    let gateup = match opts.get("gateup").unwrap_or("w4") {
        "w4" | "4" => 4,
        "w2" | "2" => 2,
        v => return Err(bad(format!("option 'gateup' must be w4 or w2, got '{v}'"))),
    };
    let shrink = match opts.get("shrink").unwrap_or("auto") {
        "auto" => None,
        _ => {
            let v = opts.f64("shrink")?;
            if !(0.0..=1.0).contains(&v) {
                return Err(bad(format!("option 'shrink' must be auto or a number in 0..1, got {v}")));
            }
            Some(v)
        }
    };
    let hessian_mem = match opts.get("hessian_mem").unwrap_or("auto") {
        "auto" => None,
        _ => {
            let v = opts.f64("hessian_mem")?;
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(format!("option 'hessian_mem' must be auto or a positive number of MiB, got {v}")));
            }
            Some((v * (1u64 << 20) as f64) as u64)
        }
    };
    let damp = opts.f64("damp")?;
    if !(damp.is_finite() && damp >= 0.0) {
        return Err(bad(format!("option 'damp' must be a non-negative number, got {damp}")));
    }
    let format = match opts.get("format").unwrap_or("auto") {
        "nbits" => {
            if !cx.target.contrib_ops {
                let t = cx.target.name.clone();
                cx.note(|| {
                    format!("warning: format=nbits emits com.microsoft::MatMulNBits, which target '{t}' does not run")
                });
            }
            Format::NBits
        }
        "qdq" => Format::Qdq,
        "auto" => match cx.target.quant.weight_format {
            WeightFormat::Int4MatMulNBits if cx.target.contrib_ops => Format::NBits,
            WeightFormat::Int4MatMulNBits => {
                let t = cx.target.name.clone();
                cx.note(|| format!("target '{t}' prefers MatMulNBits but runs no contrib ops: using DequantizeLinear"));
                Format::Qdq
            }
            WeightFormat::Int4Dq => Format::Qdq,
            other => {
                let t = cx.target.name.clone();
                cx.note(|| {
                    format!(
                        "target '{t}' wants {other:?} weights, not int4: nothing done \
                         (format=nbits or format=qdq forces it)"
                    )
                });
                return Ok(None);
            }
        },
        f => return Err(bad(format!("option 'format' must be auto, nbits or qdq, got '{f}'"))),
    };
    let exclude = opts
        .get("exclude")
        .unwrap_or("")
        .split('|')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    Ok(Some(Config {
        layers: cx.layers.clone(),
        block,
        sym: opts.bool("sym")?,
        method,
        format,
        min_size: opts.usize("min_size")?,
        exclude,
        grid: opts.usize("grid")?.max(1),
        clip: opts.bool("clip")?,
        rows: opts.usize("rows")?.max(1),
        runs: opts.usize("runs")?.max(1),
        gateup,
        damp,
        shrink,
        act_order: opts.bool("act_order")?,
        hessian_mem,
    }))
}

/// A node whose weight will be quantised.
struct Cand {
    node: NodeId,
    name: String,
    op: Op,
    x: ValueId,
    w: ValueId,
    k: usize,
    n: usize,
    /// The weight is stored `[N, K]` (Gemm with transB = 1).
    trans_b: bool,
    alpha: f32,
    beta: f32,
    c: Option<ValueId>,
}

/// Nodes to quantise in `g` (not its subgraphs) and, for the others that could have been, why not.
fn select(g: &Graph, opset: i64, cfg: &Config) -> (Vec<Cand>, Vec<String>) {
    let mut out = Vec::new();
    let mut why = Vec::new();
    let Ok(order) = g.topo_order() else {
        why.push("the graph has a cycle: nothing quantised".into());
        return (out, why);
    };
    let mut facts = None;
    for id in order {
        let node = g.node(id);
        if !matches!(node.op, Op::MatMul | Op::Gemm) {
            continue;
        }
        let op = node.op.clone();
        let name = node.display_name();
        let (Some(x), Some(w)) = (node.input(0), node.input(1)) else { continue };
        if node.outputs().len() != 1 {
            continue;
        }
        if let Some(pat) = cfg.exclude.iter().find(|p| name.contains(p.as_str())) {
            why.push(format!("{op} at '{name}': excluded (matches '{pat}')"));
            continue;
        }
        if let Some(reason) = cfg.layers.refuses(&name) {
            why.push(format!("{op} at '{name}': {reason}"));
            continue;
        }
        let Some(t) = const_tensor(g, w) else {
            why.push(format!("{op} at '{name}': weight is not a constant"));
            continue;
        };
        if t.dtype != DType::F32 {
            why.push(format!("{op} at '{name}': weight is {}, not float32", t.dtype));
            continue;
        }
        if t.dims.len() != 2 || t.dims.iter().any(|&d| d <= 0) {
            why.push(format!("{op} at '{name}': weight has shape {:?}, not 2-D", t.dims));
            continue;
        }
        let numel = (t.dims[0] * t.dims[1]) as usize;
        if numel < cfg.min_size {
            why.push(format!("{op} at '{name}': weight too small ({numel} elements < min_size {})", cfg.min_size));
            continue;
        }
        let facts = facts.get_or_insert_with(|| optc_ir::infer::infer(g, opset));
        if let Some(dt) = facts.elem(x)
            && dt != DType::F32
        {
            why.push(format!("{op} at '{name}': input is {dt}, not float32"));
            continue;
        }
        if let Some(s) = facts.shape(x)
            && s.len() < 2
        {
            why.push(format!("{op} at '{name}': input has rank {}, MatMulNBits needs 2 or more", s.len()));
            continue;
        }
        let (mut trans_b, mut alpha, mut beta, mut c) = (false, 1.0, 1.0, None);
        if op == Op::Gemm {
            if node.attrs.get_int("transA").unwrap_or(0) != 0 {
                why.push(format!("Gemm at '{name}': transA = 1 is not handled"));
                continue;
            }
            trans_b = node.attrs.get_int("transB").unwrap_or(0) != 0;
            alpha = node.attrs.get_float("alpha").unwrap_or(1.0);
            beta = node.attrs.get_float("beta").unwrap_or(1.0);
            c = node.input(2);
            if cfg.format == Format::NBits
                && let Some(cv) = c
                && beta != 1.0
                && const_tensor(g, cv).is_none()
            {
                why.push(format!("Gemm at '{name}': C is not a constant and beta = {beta} (MatMulNBits has no beta)"));
                continue;
            }
            if !alpha.is_finite() || alpha == 0.0 {
                why.push(format!("Gemm at '{name}': alpha = {alpha}"));
                continue;
            }
        }
        let (k, n) =
            if trans_b { (t.dims[1] as usize, t.dims[0] as usize) } else { (t.dims[0] as usize, t.dims[1] as usize) };
        out.push(Cand { node: id, name, op, x, w, k, n, trans_b, alpha, beta, c });
    }
    (out, why)
}

/// Counts of what the pass did.
#[derive(Default)]
struct Totals {
    weights: usize,
    /// Of which with 2-bit codes.
    w2: usize,
    awq_scaled: usize,
    gptq: usize,
    /// Weights that got RTN although the method asked for calibration.
    fallback: usize,
    bytes_before: u64,
    bytes_after: u64,
    skipped: usize,
}

/// What calibration gathered for the main graph.
#[derive(Default)]
struct Calib {
    act: Option<HashMap<String, ActStats>>,
    /// GPTQ: calibrated in stages, each gathering the Hessians of a group of inputs.
    staged: Option<Staged>,
}

/// GPTQ's calibration in stages. One Hessian per distinct input is `8 K (K + 1) / 2` bytes,
/// together about 0.9x a decoder's float weights, on top of the evaluator's copy of the weights:
/// held all at once they put calibration of a large model well past twice its size. The inputs
/// are grouped in graph order so that a group's Hessians fit the budget; each group takes one
/// calibration pass over the model as it came in (`model`, sharing its weight data), and its
/// weights are quantised and its Hessians dropped before the next pass. With one group (the
/// common case for small models) this is a single pass, as if all were held at once.
struct Staged {
    model: Model,
    feeds: Vec<HashMap<String, optc_eval::Value>>,
    /// Input names, grouped; a group's Hessians fit the budget (or it holds one input).
    groups: Vec<Vec<String>>,
}

impl Staged {
    fn plan(model: &Model, cx: &mut PassContext, cands: &[Cand], cfg: &Config) -> Result<Staged, String> {
        let g = &model.graph;
        let budget = cfg.hessian_mem.unwrap_or((g.param_bytes() / 2).max(64 << 20));
        let mut seen = HashSet::new();
        let mut groups: Vec<Vec<String>> = Vec::new();
        let (mut used, mut total) = (0u64, 0u64);
        for c in cands {
            let name = g.value(c.x).name.clone();
            if !seen.insert(name.clone()) {
                continue;
            }
            let b = Gram::bytes(c.k);
            total += b;
            match groups.last_mut() {
                Some(last) if used + b <= budget => {
                    last.push(name);
                    used += b;
                }
                _ => {
                    groups.push(vec![name]);
                    used = b;
                }
            }
        }
        let feeds = awq::calibration_feeds(model, cx, cfg.runs, "GPTQ")?;
        let (n, inputs) = (groups.len(), seen.len());
        cx.note(|| {
            format!(
                "GPTQ: Hessians of {inputs} input(s), {} in all, gathered in {n} calibration pass(es) of at most \
                 {} each (hessian_mem)",
                fmt_bytes(total),
                fmt_bytes(budget)
            )
        });
        Ok(Staged { model: model.clone(), feeds, groups })
    }

    /// One calibration pass: the Gram matrices of the inputs of `group`.
    fn gather(&self, group: &[String]) -> Result<HashMap<String, Gram>, String> {
        let mut obs = HessianObserver::new(group.iter().cloned().collect());
        awq::run_observed(&self.model, &self.feeds, &mut obs)?;
        Ok(obs.finish())
    }
}

fn run(model: &mut Model, cx: &mut PassContext, cfg: &Config) -> Result<usize, PassError> {
    let opset = model.opset("").unwrap_or(1);
    let (main, _) = select(&model.graph, opset, cfg);
    let any = !main.is_empty() || any_in_subgraphs(&model.graph, opset, cfg);
    if !any {
        cx.note(|| "no MatMul/Gemm with a quantisable weight".to_string());
    }
    // Calibration sees the model as it came in.
    let mut calib = Calib::default();
    if cfg.method != Method::Rtn && !main.is_empty() {
        let names: HashSet<String> = main.iter().map(|c| model.graph.value(c.x).name.clone()).collect();
        if cfg.method == Method::Awq {
            cx.progress("AWQ calibration", 0, main.len());
        }
        match cfg.method {
            Method::Awq => match awq::calibrate(model, cx, names, cfg.rows, cfg.runs) {
                Ok(s) => calib.act = Some(s),
                Err(e) => cx.note(|| format!("warning: AWQ calibration failed ({e}): falling back to RTN")),
            },
            _ => match Staged::plan(model, cx, &main, cfg) {
                Ok(st) => calib.staged = Some(st),
                Err(e) => cx.note(|| format!("warning: GPTQ calibration failed ({e}): falling back to RTN")),
            },
        }
    }
    let mut opset = opset;
    if cfg.format == Format::Qdq && any && opset < opset::QDQ_OPSET {
        if let Some(why) = opset::upgrade_blocker(model) {
            cx.note(|| {
                format!(
                    "format=qdq needs opset {} for blocked int4 DequantizeLinear, and {why}: nothing quantised \
                     (format=nbits works at any opset)",
                    opset::QDQ_OPSET
                )
            });
            return Ok(0);
        }
        let n = opset::upgrade(model);
        cx.note(|| format!("raised the model from opset {opset} to {} ({n} node(s) rewritten)", opset::QDQ_OPSET));
        opset = opset::QDQ_OPSET;
    }
    let mut totals = Totals::default();
    let rewrites = process(&mut model.graph, opset, cfg, Some(&calib), cx, &mut totals);
    drop(calib);
    if totals.weights > 0 && cfg.format == Format::NBits {
        ensure_domain(model, "com.microsoft");
    }
    let t = &totals;
    let ratio = if t.bytes_after > 0 { t.bytes_before as f64 / t.bytes_after as f64 } else { 0.0 };
    let scheme = cfg.scheme();
    let (s, b, af) = (t.skipped, t.bytes_before, t.bytes_after);
    let counts = if t.w2 > 0 {
        format!("{} weight(s) to 4 bits and {} to 2 bits", t.weights - t.w2, t.w2)
    } else {
        format!("{} weight(s) to 4 bits", t.weights)
    };
    let mut extra = match cfg.method {
        Method::Awq => format!(", {} AWQ-scaled", t.awq_scaled),
        Method::Gptq => format!(", {} by GPTQ", t.gptq),
        Method::Rtn => String::new(),
    };
    if t.fallback > 0 {
        extra.push_str(&format!(", {} fell back to RTN", t.fallback));
    }
    cx.note(|| {
        format!(
            "quantised {counts} ({scheme}{extra}): {} -> {} ({ratio:.2}x smaller); \
             {s} MatMul/Gemm node(s) left alone",
            fmt_bytes(b),
            fmt_bytes(af),
        )
    });
    Ok(rewrites)
}

fn any_in_subgraphs(g: &Graph, opset: i64, cfg: &Config) -> bool {
    g.nodes().any(|id| {
        g.node(id).subgraphs().any(|sg| !select(sg, opset, cfg).0.is_empty() || any_in_subgraphs(sg, opset, cfg))
    })
}

fn fmt_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// How one weight is quantised.
#[derive(Clone, Copy)]
struct Plan<'a> {
    bits: u8,
    method: Method,
    act: Option<&'a ActStats>,
    hess: Option<&'a Hessian>,
}

/// Quantises the candidates of `g`, its subgraphs first (with RTN: calibration sees the main
/// graph only; `calib` is `None` there).
fn process(
    g: &mut Graph,
    opset: i64,
    cfg: &Config,
    calib: Option<&Calib>,
    cx: &mut PassContext,
    totals: &mut Totals,
) -> usize {
    let mut n = 0;
    let ids: Vec<NodeId> = g.nodes().collect();
    for id in ids {
        for sg in g.node_mut(id).subgraphs_mut() {
            n += process(sg, opset, cfg, None, cx, totals);
        }
    }
    let (cands, why) = select(g, opset, cfg);
    totals.skipped += why.len();
    for w in why {
        cx.note(|| w);
    }
    let low_bits = if cfg.gateup < 4 { swiglu_projections(g, &cands, cfg.gateup, cx) } else { HashSet::new() };
    // Progress is reported for the main graph (the one `calib` belongs to).
    let total = if calib.is_some() { cands.len() } else { 0 };
    let what = format!("quantising weights ({})", cfg.method.name());
    let mut q = Quantiser { cfg, low_bits, cache: HashMap::new(), n: 0, stopped: false, done: 0, total, what };
    let staged = calib.and_then(|c| c.staged.as_ref()).filter(|_| cfg.method == Method::Gptq);
    match staged {
        Some(st) => {
            let mut by_x: HashMap<String, Vec<&Cand>> = HashMap::new();
            for c in &cands {
                by_x.entry(g.value(c.x).name.clone()).or_default().push(c);
            }
            let passes = st.groups.len();
            for (i, group) in st.groups.iter().enumerate() {
                if total > 0 {
                    cx.progress(&format!("GPTQ calibration pass {} of {passes}", i + 1), q.done, total);
                }
                let mut grams = st.gather(group);
                if let Err(e) = &grams {
                    cx.note(|| format!("warning: GPTQ calibration failed ({e}): RTN for the inputs of this pass"));
                }
                for xname in group {
                    let gram = grams.as_mut().ok().and_then(|m| m.remove(xname));
                    let h = gram.filter(|gm| gm.rows > 0).map(|gm| Hessian::from_gram(&gm));
                    for c in by_x.remove(xname).unwrap_or_default() {
                        let hess = match &h {
                            Some(h) if h.dim == c.k => Ok(h),
                            _ if grams.is_err() => Err("GPTQ calibration failed"),
                            _ => Err("no calibration rows for its input"),
                        };
                        let plan = match hess {
                            Ok(h) => Plan { bits: q.bits(c), method: Method::Gptq, act: None, hess: Some(h) },
                            Err(why) => {
                                let (op, name) = (c.op.clone(), c.name.clone());
                                cx.note(|| format!("{op} at '{name}': {why}: RTN"));
                                q.rtn(c)
                            }
                        };
                        q.quantise(g, c, plan, cx, totals);
                    }
                    // GPTQ's work buffers (K x K and N x K, a different size per input) would
                    // otherwise stay with the allocator and add up over the layers.
                    optc_ir::mem::trim_heap();
                    if q.stopped {
                        return n + q.n;
                    }
                }
                drop(grams);
                optc_ir::mem::trim_heap();
            }
            // Inputs the plan did not know (none when it saw the same graph): RTN.
            for c in by_x.into_values().flatten() {
                let plan = q.rtn(c);
                q.quantise(g, c, plan, cx, totals);
            }
        }
        None => {
            for c in &cands {
                let xname = g.value(c.x).name.clone();
                let name = c.name.clone();
                let mut plan = q.rtn(c);
                match (cfg.method, calib) {
                    (Method::Rtn, _) => {}
                    (m, None) => {
                        let what = m.name().to_uppercase();
                        cx.note(|| {
                            format!("{} at '{name}': in a subgraph, which {what} calibration does not see: RTN", c.op)
                        });
                    }
                    (Method::Awq, Some(cal)) => match cal.act.as_ref().map(|st| st.get(&xname)) {
                        Some(Some(a)) if a.k == c.k && a.sample_rows() > 0 => {
                            plan.method = Method::Awq;
                            plan.act = Some(a);
                        }
                        Some(_) => cx.note(|| format!("{} at '{name}': no calibration rows for its input: RTN", c.op)),
                        None => cx.note(|| format!("{} at '{name}': AWQ calibration failed: RTN", c.op)),
                    },
                    (Method::Gptq, Some(_)) => {
                        cx.note(|| format!("{} at '{name}': GPTQ calibration failed: RTN", c.op));
                    }
                }
                q.quantise(g, c, plan, cx, totals);
                if q.stopped {
                    break;
                }
            }
        }
    }
    n + q.n
}

/// Quantises candidates one by one, counting rewrites and stopping when the context says so.
struct Quantiser<'c> {
    cfg: &'c Config,
    /// SwiGLU gate/up projections that get `cfg.gateup` bits.
    low_bits: HashSet<NodeId>,
    /// Quantised weights by (weight, layout key, bits), reused by nodes sharing a weight (RTN only).
    cache: HashMap<(ValueId, u32, u8), Shared>,
    n: usize,
    stopped: bool,
    /// Candidates handled, of `total` (0: no progress reports), doing `what`.
    done: usize,
    total: usize,
    what: String,
}

impl Quantiser<'_> {
    fn bits(&self, c: &Cand) -> u8 {
        if self.low_bits.contains(&c.node) { self.cfg.gateup } else { 4 }
    }

    fn rtn(&self, c: &Cand) -> Plan<'static> {
        Plan { bits: self.bits(c), method: Method::Rtn, act: None, hess: None }
    }

    fn quantise(&mut self, g: &mut Graph, c: &Cand, plan: Plan, cx: &mut PassContext, totals: &mut Totals) {
        if self.stopped || !cx.rewrite() {
            self.stopped = true;
            return;
        }
        if quantise(g, c, self.cfg, plan, &mut self.cache, cx, totals) {
            self.n += 1;
        } else {
            totals.skipped += 1;
        }
        self.done += 1;
        if self.total > 0 {
            cx.progress(&self.what, self.done, self.total);
        }
    }
}

/// What a value is, as the input of a SiLU.
enum Silu {
    /// `SiLU(x)`, and how it is written.
    Of(ValueId, &'static str),
    /// A gated activation that is not SiLU (said why).
    Other(String),
    No,
}

/// Whether `v` is `SiLU(x)`: `x * Sigmoid(x)`, `com.microsoft::QuickGelu(x)` with alpha 1 or
/// `Swish(x)` with alpha 1 (`-p O2` writes the first as QuickGelu(alpha=1) on contrib targets).
fn silu_of(g: &Graph, v: ValueId) -> Silu {
    let Some((p, _)) = g.producer(v) else { return Silu::No };
    let node = g.node(p);
    let alpha = |default: f32| node.attrs.get_float("alpha").unwrap_or(default);
    match &node.op {
        Op::Mul => {
            let (Some(a), Some(b)) = (node.input(0), node.input(1)) else { return Silu::No };
            for (x, s) in [(a, b), (b, a)] {
                if let Some((sp, _)) = g.producer(s)
                    && g.node(sp).op == Op::Sigmoid
                {
                    if g.node(sp).input(0) == Some(x) {
                        return Silu::Of(x, "x * Sigmoid(x)");
                    }
                    return Silu::Other("x * Sigmoid(y) with y not x (not SiLU)".into());
                }
            }
            Silu::No
        }
        Op::Swish => match node.input(0) {
            Some(x) if alpha(1.0) == 1.0 => Silu::Of(x, "Swish"),
            _ => Silu::Other(format!("Swish with alpha {} (not SiLU)", alpha(1.0))),
        },
        op if op.domain() == "com.microsoft" && op.op_type() == "QuickGelu" => match node.input(0) {
            Some(x) if (alpha(1.702) - 1.0).abs() < 1e-6 => Silu::Of(x, "com.microsoft QuickGelu(alpha=1)"),
            _ => Silu::Other(format!("QuickGelu with alpha {} (a GELU approximation, not SiLU)", alpha(1.702))),
        },
        _ => Silu::No,
    }
}

/// Where a SwiGLU operand comes from.
enum Proj {
    /// A candidate's output (possibly through a constant bias Add).
    One(NodeId),
    /// Output `i` of a Split of a candidate's output (`fuse-qkv`'s merged projections).
    Split {
        cand: NodeId,
        split: NodeId,
    },
    Not(String),
}

fn projection(g: &Graph, v: ValueId, by_out: &HashMap<ValueId, NodeId>) -> Proj {
    let direct = |v: ValueId| -> Option<NodeId> {
        if let Some(&n) = by_out.get(&v) {
            return Some(n);
        }
        // Through an Add of a constant (a bias).
        let (p, _) = g.producer(v)?;
        let node = g.node(p);
        if node.op != Op::Add {
            return None;
        }
        let (a, b) = (node.input(0)?, node.input(1)?);
        [(a, b), (b, a)].into_iter().find_map(|(x, c)| const_tensor(g, c).and(by_out.get(&x).copied()))
    };
    if let Some(n) = direct(v) {
        return Proj::One(n);
    }
    let vname = &g.value(v).name;
    if const_tensor(g, v).is_some() {
        return Proj::Not(format!("'{vname}' is a constant"));
    }
    let Some((p, _)) = g.producer(v) else { return Proj::Not(format!("'{vname}' is a graph input")) };
    let node = g.node(p);
    if node.op == Op::Split
        && let Some(src) = node.input(0)
        && let Some(n) = direct(src)
    {
        return Proj::Split { cand: n, split: p };
    }
    let what = if matches!(node.op, Op::MatMul | Op::Gemm) {
        format!("{} '{}' that is not quantised (see its note)", node.op, node.display_name())
    } else {
        format!("{} '{}', not a MatMul with a constant weight", node.op, node.display_name())
    };
    Proj::Not(format!("'{}' comes from {what}", g.value(v).name))
}

/// The candidates that are gate or up projections of a SwiGLU MLP, `Mul(SiLU(x Wg), x Wu)`, with
/// a note for each match (and for each gated Mul that looked like one but did not match).
fn swiglu_projections(g: &Graph, cands: &[Cand], bits: u8, cx: &mut PassContext) -> HashSet<NodeId> {
    let by_out: HashMap<ValueId, NodeId> =
        cands.iter().filter_map(|c| g.node(c.node).output(0).map(|o| (o, c.node))).collect();
    let name_of = |n: NodeId| g.node(n).display_name();
    let mut out = HashSet::new();
    let mut found = 0usize;
    let Ok(order) = g.topo_order() else { return out };
    for m in order {
        let node = g.node(m);
        if node.op != Op::Mul || node.inputs().len() != 2 {
            continue;
        }
        let (Some(a), Some(b)) = (node.input(0), node.input(1)) else { continue };
        let mname = node.display_name();
        for (s, u) in [(a, b), (b, a)] {
            match silu_of(g, s) {
                Silu::No => continue,
                Silu::Other(why) => {
                    cx.note(|| format!("Mul at '{mname}': a gated activation, but {why}: not a SwiGLU gate/up"));
                }
                Silu::Of(x, form) => match (projection(g, x, &by_out), projection(g, u, &by_out)) {
                    (Proj::One(gn), Proj::One(un)) if gn != un => {
                        out.insert(gn);
                        out.insert(un);
                        found += 1;
                        let (gs, us) = (name_of(gn), name_of(un));
                        cx.note(|| {
                            format!(
                                "SwiGLU at '{mname}' (SiLU as {form}): gate '{gs}' and up '{us}' get {bits} bits \
                                 (gateup=w{bits})"
                            )
                        });
                    }
                    (Proj::Split { cand: c1, split: s1 }, Proj::Split { cand: c2, split: s2 })
                        if c1 == c2 && s1 == s2 =>
                    {
                        let outs = g.node(s1).outputs().iter().filter(|o| o.is_some()).count();
                        let cs = name_of(c1);
                        if outs == 2 {
                            out.insert(c1);
                            found += 1;
                            cx.note(|| {
                                format!(
                                    "SwiGLU at '{mname}' (SiLU as {form}): merged gate/up projection '{cs}' \
                                     (split in two) gets {bits} bits (gateup=w{bits})"
                                )
                            });
                        } else {
                            cx.note(|| {
                                format!(
                                    "SwiGLU at '{mname}': gate and up come from '{cs}' split in {outs}, which also \
                                     computes other projections: kept at 4 bits"
                                )
                            });
                        }
                    }
                    (gp, up) => {
                        let why = match (gp, up) {
                            (Proj::Not(w), _) => format!("the gate {w}"),
                            (_, Proj::Not(w)) => format!("the up {w}"),
                            _ => "gate and up are not two separate projections (nor one split in two)".into(),
                        };
                        cx.note(|| format!("Mul at '{mname}': SwiGLU-shaped, but {why}: not given {bits} bits"));
                    }
                },
            }
            break;
        }
    }
    if found == 0 {
        cx.note(|| format!("gateup=w{bits}: no SwiGLU gate/up projections found; every weight gets 4 bits"));
    }
    out
}

/// Initializers (or a DequantizeLinear output) made for one weight, for nodes sharing it.
#[derive(Clone)]
enum Shared {
    NBits { b: ValueId, scales: ValueId, zp: Option<ValueId> },
    Qdq { w: ValueId },
}

/// The weight `[n, k]` (rows are output columns).
fn weight_rows(g: &Graph, c: &Cand) -> Option<Vec<f32>> {
    let t = const_tensor(g, c.w)?;
    let data = t.to_f32_vec()?;
    // The pass works on its own copy: a weight mapped from the model file need not stay
    // resident beside it (read back from the file if still used).
    t.release_pages();
    if data.len() != c.k * c.n {
        return None;
    }
    if c.trans_b {
        return Some(data);
    }
    let mut wt = vec![0f32; c.k * c.n];
    for ki in 0..c.k {
        for ni in 0..c.n {
            wt[ni * c.k + ki] = data[ki * c.n + ni];
        }
    }
    Some(wt)
}

fn add_init(g: &mut Graph, base: &str, dtype: DType, dims: Vec<i64>, bytes: Vec<u8>) -> Option<ValueId> {
    let name = g.fresh_name(base);
    g.add_initializer(name.clone(), Tensor::from_raw(Some(name), dtype, dims, bytes.into())).ok()
}

#[allow(clippy::too_many_arguments)]
fn quantise(
    g: &mut Graph,
    c: &Cand,
    cfg: &Config,
    plan: Plan,
    cache: &mut HashMap<(ValueId, u32, u8), Shared>,
    cx: &mut PassContext,
    totals: &mut Totals,
) -> bool {
    let (k, n, block, bits) = (c.k, c.n, cfg.block, plan.bits);
    let act = plan.act;
    let name = c.name.clone();
    let op = c.op.clone();
    let Some(mut wt) = weight_rows(g, c) else {
        cx.note(|| format!("{op} at '{name}': cannot read the weight"));
        return false;
    };
    if wt.iter().any(|x| !x.is_finite()) {
        cx.note(|| format!("{op} at '{name}': weight has non-finite values"));
        return false;
    }
    // MatMulNBits has no alpha: fold it into the weight (qdq keeps the Gemm and its alpha).
    let fold_alpha = cfg.format == Format::NBits && c.alpha != 1.0;
    if fold_alpha {
        wt.iter_mut().for_each(|v| *v *= c.alpha);
    }
    // AWQ: the per-channel scale s (None when alpha 0 wins) and the per-block clipping.
    let mut s: Option<Vec<f32>> = None;
    let mut clip: Option<Vec<f32>> = None;
    if let Some(a) = act {
        let acts = a.acts();
        let res = awq::search(&wt, n, k, block, cfg.sym, bits, &a.mean_abs(), &acts, cfg.grid);
        let gain = if res.err_rtn > 0.0 { 100.0 * (1.0 - res.err / res.err_rtn) } else { 0.0 };
        let rows = a.sample_rows();
        cx.note(|| {
            format!(
                "{op} at '{name}': AWQ alpha {:.2} on {rows} rows, estimated output error {:.3e} \
                 vs RTN {:.3e} ({gain:.1}% lower)",
                res.alpha, res.err, res.err_rtn
            )
        });
        if res.alpha > 0.0 {
            for row in wt.chunks_mut(k) {
                row.iter_mut().zip(&res.s).for_each(|(v, f)| *v *= f);
            }
            s = Some(res.s);
        }
        if cfg.clip {
            let xs = match &s {
                Some(s) => acts.scaled_by_inverse(s),
                None => acts,
            };
            let (ratios, err, err1) = awq::clip_search(&wt, n, k, block, cfg.sym, bits, &xs, cfg.grid);
            let clipped = ratios.iter().filter(|&&r| r < 1.0).count();
            let gain = if err1 > 0.0 { 100.0 * (1.0 - err / err1) } else { 0.0 };
            let total = ratios.len();
            cx.note(|| {
                format!(
                    "{op} at '{name}': AWQ clipping shrinks {clipped} of {total} blocks, block error {err:.3e} vs \
                     {err1:.3e} ({gain:.1}% lower)"
                )
            });
            if clipped > 0 {
                clip = Some(ratios);
            }
        }
    }
    let key = (c.w, if fold_alpha { c.alpha.to_bits() } else { 0 }, bits);
    let mut used = plan.method;
    let cacheable = used == Method::Rtn;
    let cached = if cacheable { cache.get(&key).cloned() } else { None };
    let wname = g.value(c.w).name.clone();
    let before = 4 * (k * n) as u64;
    let mut after = 0u64;
    // The node's input, divided by s.
    let x = match &s {
        Some(s) => {
            let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
            let Some(iv) = add_f32(g, &format!("{wname}.awq_inv_s"), vec![k as i64], &inv) else { return false };
            after += 4 * k as u64;
            let Some(xs) = add_op(g, Op::Mul, vec![Some(c.x), Some(iv)], vec![], &format!("{name}_awq_scale"), c.node)
            else {
                return false;
            };
            xs
        }
        None => c.x,
    };
    let shared = match cached {
        Some(sh) => sh,
        None => {
            let gq = plan.hess.map(|h0| {
                let o = GptqOptions { block, sym: cfg.sym, bits, act_order: cfg.act_order, damp: cfg.damp };
                let lambda = cfg.shrink.unwrap_or_else(|| crate::hessian::auto_shrink(k, h0.rows));
                let r = if lambda > 0.0 {
                    gptq::quantize(&wt, n, k, &h0.shrunk(lambda), &o)
                } else {
                    gptq::quantize(&wt, n, k, h0, &o)
                };
                (h0, r)
            });
            let q = match gq {
                Some((h, Ok(r))) => {
                    note_gptq(cx, c, &wt, h, &r, cfg);
                    r.blocks
                }
                Some((_, Err(e))) => {
                    cx.note(|| format!("{op} at '{name}': GPTQ failed ({e}): RTN"));
                    used = Method::Rtn;
                    quantize_rows_bits(&wt, n, k, block, cfg.sym, bits, None)
                }
                None => quantize_rows_bits(&wt, n, k, block, cfg.sym, bits, clip.as_deref()),
            };
            let nb = q.nblocks();
            let qname = format!("{wname}.q{bits}");
            let sh = match cfg.format {
                Format::NBits => {
                    let packed = q.pack_nbits();
                    let sbytes: Vec<u8> = q.scales.iter().flat_map(|v| v.to_le_bytes()).collect();
                    after += (packed.len() + sbytes.len()) as u64;
                    let dims = vec![n as i64, nb as i64, (block * bits as usize / 8) as i64];
                    let Some(b) = add_init(g, &qname, DType::U8, dims, packed) else { return false };
                    let Some(sc) =
                        add_init(g, &format!("{wname}.scales"), DType::F32, vec![n as i64, nb as i64], sbytes)
                    else {
                        return false;
                    };
                    let zp = if cfg.sym {
                        None
                    } else {
                        let z = q.pack_zero_points();
                        after += z.len() as u64;
                        let len = z.len() as i64;
                        let Some(zv) = add_init(g, &format!("{wname}.zero_points"), DType::U8, vec![len], z) else {
                            return false;
                        };
                        Some(zv)
                    };
                    Shared::NBits { b, scales: sc, zp }
                }
                Format::Qdq => {
                    // The stored weight keeps B's layout: [N, K] blocked on axis 1 (transB) or
                    // [K, N] blocked on axis 0.
                    let (codes, scales, zps, wdims, sdims, axis) = if c.trans_b {
                        (q.codes.clone(), q.scales.clone(), q.zero_points.clone(), [n, k], [n, nb], 1)
                    } else {
                        let mut codes = vec![0u8; k * n];
                        for ni in 0..n {
                            for ki in 0..k {
                                codes[ki * n + ni] = q.codes[ni * k + ki];
                            }
                        }
                        let (mut sc, mut zp) = (vec![0f32; nb * n], vec![0u8; nb * n]);
                        for ni in 0..n {
                            for b in 0..nb {
                                sc[b * n + ni] = q.scales[ni * nb + b];
                                zp[b * n + ni] = q.zero_points[ni * nb + b];
                            }
                        }
                        (codes, sc, zp, [k, n], [nb, n], 0)
                    };
                    let (dt, codes) = if cfg.sym {
                        // int4 two's complement of q = code - zp (8, or 2 for 2-bit codes); no
                        // zero point.
                        let zp = sym_zp(bits) as i8;
                        (DType::I4, codes.iter().map(|&c| (c as i8 - zp) as u8 & 0x0F).collect())
                    } else {
                        (DType::U4, codes)
                    };
                    let packed = pack_int4(&codes);
                    let sbytes: Vec<u8> = scales.iter().flat_map(|v| v.to_le_bytes()).collect();
                    after += (packed.len() + sbytes.len()) as u64;
                    let wd: Vec<i64> = wdims.iter().map(|&d| d as i64).collect();
                    let sd: Vec<i64> = sdims.iter().map(|&d| d as i64).collect();
                    let Some(qv) = add_init(g, &qname, dt, wd, packed) else { return false };
                    let Some(sv) = add_init(g, &format!("{wname}.scales"), DType::F32, sd.clone(), sbytes) else {
                        return false;
                    };
                    let zv = if cfg.sym {
                        None
                    } else {
                        let z = pack_int4(&zps);
                        after += z.len() as u64;
                        let Some(zv) = add_init(g, &format!("{wname}.zero_points"), DType::U4, sd, z) else {
                            return false;
                        };
                        Some(zv)
                    };
                    let attrs = vec![Attribute::int("axis", axis), Attribute::int("block_size", block as i64)];
                    let dq_name = format!("{wname}_DequantizeLinear");
                    let Some(w) =
                        add_op(g, Op::DequantizeLinear, vec![Some(qv), Some(sv), zv], attrs, &dq_name, c.node)
                    else {
                        return false;
                    };
                    Shared::Qdq { w }
                }
            };
            if cacheable {
                cache.insert(key, sh.clone());
            }
            sh
        }
    };
    let ok = match &shared {
        Shared::Qdq { w } => {
            g.set_input(c.node, 1, Some(*w));
            if x != c.x {
                g.set_input(c.node, 0, Some(x));
            }
            true
        }
        Shared::NBits { b, scales, zp } => to_nbits(g, c, cfg, bits, x, *b, *scales, *zp, &mut after, cx),
    };
    if !ok {
        return false;
    }
    if g.contains_value(c.w) && g.is_unused(c.w) {
        // The float weight is gone (a Constant producing it is dropped too).
        if g.producer(c.w).is_some() {
            crate::fuse::drop_dead_from(g, c.w);
        } else if !g.is_graph_input(c.w) {
            g.remove_value(c.w);
        }
        totals.bytes_before += before;
    } else {
        let wn = wname.clone();
        cx.note(|| format!("{op} at '{name}': float weight '{wn}' still read by other nodes"));
    }
    totals.bytes_after += after;
    totals.weights += 1;
    totals.w2 += usize::from(bits < 4);
    totals.awq_scaled += usize::from(s.is_some());
    totals.gptq += usize::from(used == Method::Gptq);
    totals.fallback += usize::from(cfg.method != Method::Rtn && used == Method::Rtn);
    let (sch, fb, fa) = (cfg.scheme_of(used, bits), fmt_bytes(before), fmt_bytes(after));
    cx.note(|| format!("{op} at '{name}': [K={k}, N={n}] weight quantised ({sch}): {fb} -> {fa}"));
    true
}

/// The `--explain` line of a GPTQ-quantised weight: the objective `sum (W - Q)^T H (W - Q) / 2`
/// (the mean squared output error on the calibration rows) against RTN's at the same bits,
/// estimated on at most 64 output columns.
fn note_gptq(cx: &mut PassContext, c: &Cand, wt: &[f32], h: &Hessian, r: &gptq::Gptq, cfg: &Config) {
    let (k, n) = (c.k, c.n);
    let name = c.name.clone();
    let op = c.op.clone();
    cx.note(|| {
        let step = n.div_ceil(64).max(1);
        let cols: Vec<usize> = (0..n).step_by(step).collect();
        let deq = r.blocks.dequantize();
        let pick = |src: &[f32]| -> Vec<f32> { cols.iter().flat_map(|&i| src[i * k..(i + 1) * k].to_vec()).collect() };
        let w = pick(wt);
        let rtn = quantize_rows_bits(&w, cols.len(), k, cfg.block, cfg.sym, r.blocks.bits, None).dequantize();
        let diff = |q: &[f32]| -> Vec<f32> { w.iter().zip(q).map(|(a, b)| a - b).collect() };
        let e = h.quadratic(&diff(&pick(&deq)), cols.len());
        let e_rtn = h.quadratic(&diff(&rtn), cols.len());
        let gain = if e_rtn > 0.0 { 100.0 * (1.0 - e / e_rtn) } else { 0.0 };
        let mut extra = String::new();
        if r.dead > 0 {
            extra.push_str(&format!("; {} dead input channel(s) zeroed", r.dead));
        }
        if r.retries > 0 {
            extra.push_str(&format!("; damping raised {} time(s) to {:.3e}", r.retries, r.damp));
        }
        format!(
            "{op} at '{name}': GPTQ on {} calibration rows{}, estimated output error {e:.3e} vs RTN {e_rtn:.3e} \
             ({gain:.1}% lower, on {} of {n} columns){extra}",
            h.rows,
            if cfg.act_order { " (act_order)" } else { "" },
            cols.len()
        )
    });
}

/// Whether a C of `dims` (with `len` values) is one value per output column (or one in all).
fn per_column(dims: &[i64], len: usize, n: usize) -> bool {
    let leading_ones = dims.iter().rev().skip(1).all(|&d| d == 1);
    leading_ones && (len == 1 || len == n && dims.last() == Some(&(n as i64)))
}

/// Rewrites the node as MatMulNBits reading `x` (a Gemm's C as the bias input or an Add).
#[allow(clippy::too_many_arguments)]
fn to_nbits(
    g: &mut Graph,
    c: &Cand,
    cfg: &Config,
    bits: u8,
    x: ValueId,
    b: ValueId,
    scales: ValueId,
    zp: Option<ValueId>,
    after: &mut u64,
    cx: &mut PassContext,
) -> bool {
    let attrs = vec![
        Attribute::int("K", c.k as i64),
        Attribute::int("N", c.n as i64),
        Attribute::int("bits", bits as i64),
        Attribute::int("block_size", cfg.block as i64),
        Attribute::int("accuracy_level", 0),
    ];
    let nbits = Op::from_onnx("com.microsoft", "MatMulNBits");
    let mut inputs = vec![Some(x), Some(b), Some(scales), zp];
    // A Gemm's C: a [N] (or [1, N], or scalar) constant becomes the bias input, times beta;
    // anything else is added after the MatMulNBits.
    let mut add_after: Option<ValueId> = None;
    if let Some(cv) = c.c {
        match const_tensor(g, cv).and_then(|t| Some((t.to_f32_vec()?, t.dims.clone()))) {
            Some((data, dims)) if per_column(&dims, data.len(), c.n) => {
                let bias: Vec<f32> = if data.len() == 1 {
                    vec![data[0] * c.beta; c.n]
                } else {
                    data.iter().map(|v| v * c.beta).collect()
                };
                let wname = g.value(c.w).name.clone();
                let Some(bv) = add_f32(g, &format!("{wname}.bias"), vec![c.n as i64], &bias) else { return false };
                *after += 4 * c.n as u64;
                inputs.extend([None, Some(bv)]);
            }
            Some((data, dims)) => {
                let scaled: Vec<f32> = data.iter().map(|v| v * c.beta).collect();
                let wname = g.value(c.w).name.clone();
                let Some(cv2) = add_f32(g, &format!("{wname}.c"), dims, &scaled) else { return false };
                add_after = Some(cv2);
            }
            None => add_after = Some(cv),
        }
    }
    match add_after {
        None => {
            while inputs.last() == Some(&None) {
                inputs.pop();
            }
            let node = g.node_mut(c.node);
            node.op = nbits;
            node.domain_raw = None;
            node.attrs = attrs;
            g.set_inputs(c.node, inputs);
            true
        }
        Some(cv) => {
            while inputs.last() == Some(&None) {
                inputs.pop();
            }
            let base = c.name.clone();
            let Some(y) = add_op(g, nbits, inputs, attrs, &format!("{base}_MatMulNBits"), c.node) else { return false };
            let Some(z) = add_op(g, Op::Add, vec![Some(y), Some(cv)], vec![], &format!("{base}_bias"), c.node) else {
                return false;
            };
            if !forward_output(g, c.node, z) {
                let name = c.name.clone();
                cx.note(|| format!("Gemm at '{name}': writes a graph output that cannot be renamed"));
                crate::fuse::drop_dead_from(g, z);
                return false;
            }
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::Rng;
    use crate::test_support::f32_value;
    use crate::{PassManager, PassRegistry};
    use optc_eval::{Evaluator, Value};
    use optc_ir::builder::GraphBuilder;
    use optc_ir::{Dim, Type};

    fn randn(n: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng(seed);
        (0..n).map(|_| r.normal()).collect()
    }

    /// MatMul(x [m, k], W [k, n]) -> y.
    fn matmul_model(m: i64, k: i64, n: i64, w: &[f32], opset: i64) -> Model {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(m), Dim::known(k)]).unwrap();
        let wv = b.init_f32("W", &[k, n], w).unwrap();
        let y = b.op(Op::MatMul, &[x, wv], vec![]).unwrap();
        b.output(y, "y", Some(Type::tensor(DType::F32, vec![Dim::known(m), Dim::known(n)]))).unwrap();
        Model::new(b.finish(), opset)
    }

    fn run_pipeline(model: &mut Model, pipeline: &str) -> Vec<(String, String)> {
        let mut cx = PassContext::new(optc_cost::Target::cpu());
        cx.explain = true;
        let pm = PassManager::new(PassRegistry::with_builtins());
        pm.run(model, pipeline, &mut cx).unwrap();
        optc_ir::verify::verify_model(model).unwrap();
        cx.explanations().to_vec()
    }

    fn eval(model: &Model, x: &Value) -> Vec<f32> {
        let ev = Evaluator::new(model).unwrap();
        let feeds = [("x".to_string(), x.clone())].into_iter().collect();
        let out = ev.run(&feeds).unwrap();
        out[0].1.tensor().unwrap().to_f64_vec().unwrap().into_iter().map(|v| v as f32).collect()
    }

    fn ops(model: &Model) -> Vec<String> {
        let g = &model.graph;
        let mut v: Vec<String> = g.nodes().map(|id| g.node(id).op.op_type().to_string()).collect();
        v.sort();
        v
    }

    /// Output error bound: sum_k |x_k| * scale/2 of the worst block per column, with slack.
    #[allow(clippy::too_many_arguments)]
    fn check_close(x: &[f32], want: &[f32], got: &[f32], m: usize, k: usize, n: usize, w: &[f32], block: usize) {
        // scale <= (max - min) / 15 of a block <= 2 max|w| / 15 overall.
        let wmax = w.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let step = 2.0 * wmax / 15.0;
        for r in 0..m {
            let xs: f32 = x[r * k..(r + 1) * k].iter().map(|v| v.abs()).sum();
            for c in 0..n {
                let (a, b) = (want[r * n + c], got[r * n + c]);
                assert!((a - b).abs() <= xs * step / 2.0 * 1.01 + 1e-4, "[{r},{c}] {a} vs {b} (block {block})");
            }
        }
    }

    #[test]
    fn matmul_becomes_matmulnbits_and_matches_within_the_step() {
        let (m, k, n) = (3usize, 100usize, 48usize);
        let w = randn(k * n, 1);
        let xv = randn(m * k, 2);
        let x = f32_value(&[m as i64, k as i64], &xv);
        for (block, sym) in [(32, false), (64, true), (128, false)] {
            let mut model = matmul_model(m as i64, k as i64, n as i64, &w, 17);
            let want = eval(&model, &x);
            let notes =
                run_pipeline(&mut model, &format!("quant-w4(block={block},sym={sym},min_size=16,format=nbits)"));
            assert_eq!(ops(&model), vec!["MatMulNBits"], "{notes:?}");
            assert_eq!(model.opset("com.microsoft"), Some(1));
            let g = &model.graph;
            let id = g.nodes().next().unwrap();
            let node = g.node(id);
            assert_eq!(node.attrs.get_int("K"), Some(k as i64));
            assert_eq!(node.attrs.get_int("N"), Some(n as i64));
            assert_eq!(node.attrs.get_int("block_size"), Some(block as i64));
            let nb = k.div_ceil(block) as i64;
            let dims = |i: usize| g.const_tensor(node.input(i).unwrap()).unwrap().dims.clone();
            assert_eq!(dims(1), vec![n as i64, nb, block as i64 / 2]);
            assert_eq!(dims(2), vec![n as i64, nb]);
            if sym {
                assert_eq!(node.input(3), None);
            } else {
                assert_eq!(dims(3), vec![n as i64 * ((nb + 1) / 2)]);
            }
            // The float weight is gone.
            assert!(g.find_value("W_1").is_none());
            let got = eval(&model, &x);
            check_close(&xv, &want, &got, m, k, n, &w, block);
            assert!(notes.iter().any(|(_, l)| l.contains("quantised 1 weight(s)")), "{notes:?}");
        }
    }

    #[test]
    fn qdq_format_raises_the_opset_and_matches() {
        let (m, k, n) = (2usize, 64usize, 40usize);
        let w = randn(k * n, 3);
        let xv = randn(m * k, 4);
        let x = f32_value(&[m as i64, k as i64], &xv);
        for sym in [false, true] {
            let mut model = matmul_model(m as i64, k as i64, n as i64, &w, 17);
            let want = eval(&model, &x);
            run_pipeline(&mut model, &format!("quant-w4(block=32,sym={sym},min_size=16,format=qdq)"));
            assert_eq!(ops(&model), vec!["DequantizeLinear", "MatMul"]);
            assert_eq!(model.opset(""), Some(21));
            assert_eq!(model.ir_version, Some(10));
            let got = eval(&model, &x);
            check_close(&xv, &want, &got, m, k, n, &w, 32);
            // Same codes as the MatMulNBits form (up to the order of the float sums).
            let mut nb = matmul_model(m as i64, k as i64, n as i64, &w, 17);
            run_pipeline(&mut nb, &format!("quant-w4(block=32,sym={sym},min_size=16,format=nbits)"));
            for (a, b) in eval(&nb, &x).iter().zip(&got) {
                assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
            }
        }
        // Opset 11 cannot move to 21: explained, nothing done.
        let mut model = matmul_model(m as i64, k as i64, n as i64, &w, 11);
        let notes = run_pipeline(&mut model, "quant-w4(min_size=16,format=qdq)");
        assert_eq!(ops(&model), vec!["MatMul"]);
        assert!(notes.iter().any(|(_, l)| l.contains("opset 11")), "{notes:?}");
    }

    #[test]
    fn gemm_with_trans_b_alpha_and_bias() {
        let (m, k, n) = (4usize, 64usize, 24usize);
        let bt = randn(n * k, 5); // [N, K]
        let bias = randn(n, 6);
        let xv = randn(m * k, 7);
        let x = f32_value(&[m as i64, k as i64], &xv);
        for (c_dims, fmt) in [(vec![n as i64], "nbits"), (vec![m as i64, n as i64], "nbits"), (vec![n as i64], "qdq")] {
            let cdata: Vec<f32> = if c_dims.len() == 2 { randn(m * n, 8) } else { bias.clone() };
            let mut b = GraphBuilder::new("g");
            let xi = b.input("x", DType::F32, vec![Dim::known(m as i64), Dim::known(k as i64)]).unwrap();
            let wv = b.init_f32("B", &[n as i64, k as i64], &bt).unwrap();
            let cv = b.init_f32("C", &c_dims, &cdata).unwrap();
            let attrs =
                vec![Attribute::int("transB", 1), Attribute::float("alpha", 0.5), Attribute::float("beta", 2.0)];
            let y = b.op(Op::Gemm, &[xi, wv, cv], attrs).unwrap();
            b.output(y, "y", Some(Type::tensor(DType::F32, vec![Dim::known(m as i64), Dim::known(n as i64)]))).unwrap();
            let mut model = Model::new(b.finish(), 17);
            let want = eval(&model, &x);
            run_pipeline(&mut model, &format!("quant-w4(block=32,min_size=16,format={fmt})"));
            let o = ops(&model);
            match (fmt, c_dims.len()) {
                ("nbits", 1) => assert_eq!(o, vec!["MatMulNBits"]),
                ("nbits", _) => assert_eq!(o, vec!["Add", "MatMulNBits"]),
                _ => assert_eq!(o, vec!["DequantizeLinear", "Gemm"]),
            }
            let got = eval(&model, &x);
            // alpha 0.5 scales the weight error too.
            let half: Vec<f32> = bt.iter().map(|v| v * 0.5).collect();
            let wkn: Vec<f32> = (0..k * n).map(|i| half[(i % n) * k + i / n]).collect();
            check_close(&xv, &want, &got, m, k, n, &wkn, 32);
        }
    }

    #[test]
    fn skipped_nodes_are_explained() {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(2), Dim::known(64)]).unwrap();
        let x2 = b.input("x2", DType::F32, vec![Dim::known(64), Dim::known(64)]).unwrap();
        let small = b.init_f32("small", &[64, 8], &randn(64 * 8, 1)).unwrap();
        let big = b.init_f32("big", &[64, 128], &randn(64 * 128, 2)).unwrap();
        let y1 = b.op(Op::MatMul, &[x, x2], vec![]).unwrap();
        let y2 = b.op(Op::MatMul, &[y1, small], vec![]).unwrap();
        let y3 = b.op(Op::MatMul, &[x, big], vec![]).unwrap();
        b.output(y2, "y2", None).unwrap();
        b.output(y3, "y3", None).unwrap();
        let g = b.finish();
        let names: Vec<String> = g.nodes().map(|id| g.node(id).display_name()).collect();
        let mut model = Model::new(g, 17);
        let notes = run_pipeline(&mut model, &format!("quant-w4(format=nbits,exclude=zzz|{})", names[2]));
        let text: Vec<&str> = notes.iter().map(|(_, l)| l.as_str()).collect();
        let has = |s: &str| text.iter().any(|l| l.contains(s));
        assert!(has(&format!("MatMul at '{}': weight is not a constant", names[0])), "{text:?}");
        assert!(has(&format!("MatMul at '{}': weight too small (512 elements < min_size 4096)", names[1])), "{text:?}");
        assert!(has(&format!("MatMul at '{}': excluded", names[2])), "{text:?}");
        assert!(has("quantised 0 weight(s)"), "{text:?}");
        assert_eq!(ops(&model), vec!["MatMul"; 3]);
        // Targets that keep float weights: nothing happens unless a format is forced.
        let mut t = optc_cost::Target::cpu();
        t.quant.weight_format = WeightFormat::None;
        let mut cx = PassContext::new(t);
        cx.explain = true;
        let pm = PassManager::new(PassRegistry::with_builtins());
        let r = pm.run(&mut model, "quant-w4", &mut cx).unwrap();
        assert_eq!(r.total_rewrites(), 0);
        assert!(cx.explanations().iter().any(|(_, l)| l.contains("not int4")));
        let e = pm.run(&mut model, "quant-w4(block=48)", &mut cx).err().unwrap().to_string();
        assert!(e.contains("block"), "{e}");
    }

    #[test]
    fn shared_weights_are_quantised_once() {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(2), Dim::known(64)]).unwrap();
        let w = b.init_f32("w", &[64, 64], &randn(64 * 64, 9)).unwrap();
        let y1 = b.op(Op::MatMul, &[x, w], vec![]).unwrap();
        let y2 = b.op(Op::MatMul, &[y1, w], vec![]).unwrap();
        b.output(y2, "y", None).unwrap();
        let mut model = Model::new(b.finish(), 17);
        run_pipeline(&mut model, "quant-w4(format=nbits,block=32)");
        assert_eq!(ops(&model), vec!["MatMulNBits"; 2]);
        // B, scales and zero points once.
        assert_eq!(model.graph.initializers.len(), 3);
    }

    #[test]
    fn awq_scales_inputs_and_is_no_worse_than_rtn() {
        // Inputs with outlier channels, given as calibration data.
        let (m, k, n) = (64usize, 128usize, 64usize);
        let w = randn(k * n, 10);
        let mut r = Rng(11);
        let xv: Vec<f32> = (0..m * k).map(|i| r.normal() * if i % k % 32 == 5 { 25.0 } else { 1.0 }).collect();
        let x = f32_value(&[m as i64, k as i64], &xv);
        let base = matmul_model(m as i64, k as i64, n as i64, &w, 17);
        let want = eval(&base, &x);
        let mse = |got: &[f32]| got.iter().zip(&want).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
        let mut rtn = base.clone();
        run_pipeline(&mut rtn, "quant-w4(format=nbits,block=32)");
        let mut awq = base.clone();
        let mut cx = PassContext::new(optc_cost::Target::cpu());
        cx.explain = true;
        cx.calib = Some(crate::Calibration { feeds: vec![[("x".to_string(), x.clone())].into_iter().collect()] });
        PassManager::new(PassRegistry::with_builtins())
            .run(&mut awq, "quant-w4(format=nbits,block=32,method=awq)", &mut cx)
            .unwrap();
        optc_ir::verify::verify_model(&awq).unwrap();
        assert_eq!(ops(&awq), vec!["MatMulNBits", "Mul"], "{:?}", cx.explanations());
        let (e_rtn, e_awq) = (mse(&eval(&rtn, &x)), mse(&eval(&awq, &x)));
        assert!(e_awq < 0.9 * e_rtn, "awq {e_awq} rtn {e_rtn}");
        // Without calibration data: random inputs, with a warning.
        let mut awq2 = base.clone();
        let notes = run_pipeline(&mut awq2, "quant-w4(format=qdq,block=32,method=awq)");
        assert!(notes.iter().any(|(_, l)| l.contains("no calibration data")), "{notes:?}");
        assert!(notes.iter().any(|(_, l)| l.contains("AWQ alpha")), "{notes:?}");
    }

    /// Rows with correlated channels: a few latent factors plus noise, some channels large.
    fn correlated_rows(rows: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut r = Rng(seed);
        // The same mixing for every seed: one distribution, different draws.
        let mix = randn(6 * k, 0x55);
        (0..rows)
            .flat_map(|_| {
                let z: Vec<f32> = (0..6).map(|_| r.normal()).collect();
                (0..k)
                    .map(|j| {
                        let v: f32 = (0..6).map(|f| z[f] * mix[f * k + j]).sum::<f32>() + 0.3 * r.normal();
                        v * if j % 19 == 4 { 5.0 } else { 1.0 }
                    })
                    .collect::<Vec<f32>>()
            })
            .collect()
    }

    fn run_with_calib(model: &mut Model, pipeline: &str, calib: Vec<Value>) -> Vec<(String, String)> {
        let mut cx = PassContext::new(optc_cost::Target::cpu());
        cx.explain = true;
        cx.calib = Some(crate::Calibration {
            feeds: calib.into_iter().map(|x| [("x".to_string(), x)].into_iter().collect()).collect(),
        });
        PassManager::new(PassRegistry::with_builtins()).run(model, pipeline, &mut cx).unwrap();
        optc_ir::verify::verify_model(model).unwrap();
        cx.explanations().to_vec()
    }

    #[test]
    fn gptq_beats_rtn_on_held_out_correlated_inputs() {
        let (m, k, n) = (128usize, 256usize, 96usize);
        let w = randn(k * n, 30);
        let calib: Vec<Value> =
            (0..3).map(|i| f32_value(&[m as i64, k as i64], &correlated_rows(m, k, 31 + i))).collect();
        let held = f32_value(&[m as i64, k as i64], &correlated_rows(m, k, 99));
        let base = matmul_model(m as i64, k as i64, n as i64, &w, 17);
        let want = eval(&base, &held);
        let mse = |got: &[f32]| got.iter().zip(&want).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
        for (block, act_order) in [(128, false), (32, false), (64, true)] {
            let mut rtn = base.clone();
            run_pipeline(&mut rtn, &format!("quant-w4(format=nbits,block={block})"));
            let mut gq = base.clone();
            let notes = run_with_calib(
                &mut gq,
                &format!("quant-w4(format=nbits,block={block},method=gptq,act_order={act_order})"),
                calib.clone(),
            );
            assert_eq!(ops(&gq), vec!["MatMulNBits"], "{notes:?}");
            let text: Vec<&str> = notes.iter().map(|(_, l)| l.as_str()).collect();
            assert!(text.iter().any(|l| l.contains("GPTQ on 384 calibration rows")), "{text:?}");
            assert!(text.iter().any(|l| l.contains("(gptq, block")), "{text:?}");
            assert!(text.iter().any(|l| l.contains("1 by GPTQ")), "{text:?}");
            let (e_rtn, e_gptq) = (mse(&eval(&rtn, &held)), mse(&eval(&gq, &held)));
            assert!(e_gptq < 0.8 * e_rtn, "block {block} act_order {act_order}: gptq {e_gptq:.4e} rtn {e_rtn:.4e}");
        }
    }

    /// The pass reports the output error it measured against the float model, with LIFE's
    /// prediction and the weight bytes; nothing when it quantised nothing.
    #[test]
    fn reports_measured_output_error_with_life() {
        let (m, k, n) = (8i64, 256i64, 64i64);
        let base = matmul_model(m, k, n, &randn((k * n) as usize, 60), 17);
        let x = f32_value(&[m, k], &randn((m * k) as usize, 61));
        let mut cx = PassContext::new(optc_cost::Target::cpu());
        cx.measure_error = true;
        cx.calib = Some(crate::Calibration { feeds: vec![[("x".to_string(), x.clone())].into_iter().collect()] });
        let pm = PassManager::new(PassRegistry::with_builtins());
        let mut q = base.clone();
        pm.run(&mut q, "quant-w4(format=nbits,block=32)", &mut cx).unwrap();
        let lines: Vec<&str> = cx.reports().iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        // The figure is the evaluator's: recompute it.
        let (want, got) = (eval(&base, &x), eval(&q, &x));
        let num: f64 = want.iter().zip(&got).map(|(a, b)| ((b - a) as f64).powi(2)).sum();
        let den: f64 = want.iter().map(|a| (*a as f64).powi(2)).sum();
        assert!(num > 0.0);
        let text = format!("output error {:.3e} (relative squared)", num / den);
        assert!(lines[0].starts_with(&text), "{} vs {text}", lines[0]);
        assert!(lines[0].contains("on the first calibration input; LIFE on 'cpu': "), "{}", lines[0]);
        assert!(lines[0].contains("weights 0.07 MB -> 0.01 MB"), "{}", lines[0]);
        // Nothing quantised (every node excluded): no report; none either unless asked for.
        for (min_size, measure) in [(100000000, true), (16, false)] {
            let mut cx = PassContext::new(optc_cost::Target::cpu());
            cx.measure_error = measure;
            pm.run(&mut base.clone(), &format!("quant-w4(min_size={min_size})"), &mut cx).unwrap();
            assert!(cx.reports().is_empty(), "{:?}", cx.reports());
        }
    }

    /// Hessians gathered over several calibration passes (a small `hessian_mem`) give the same
    /// weights as one pass, on a chain whose later inputs depend on earlier layers.
    #[test]
    fn gptq_in_several_calibration_passes_matches_one() {
        let (m, k, h, n) = (64usize, 128usize, 160usize, 96usize);
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(m as i64), Dim::known(k as i64)]).unwrap();
        let w1 = b.init_f32("W1", &[k as i64, h as i64], &randn(k * h, 40)).unwrap();
        let w2 = b.init_f32("W2", &[h as i64, n as i64], &randn(h * n, 41)).unwrap();
        let w3 = b.init_f32("W3", &[h as i64, n as i64], &randn(h * n, 42)).unwrap();
        let y1 = b.op(Op::MatMul, &[x, w1], vec![]).unwrap();
        let r = b.op(Op::Relu, &[y1], vec![]).unwrap();
        let y2 = b.op(Op::MatMul, &[r, w2], vec![]).unwrap();
        let y3 = b.op(Op::MatMul, &[r, w3], vec![]).unwrap();
        let y = b.op(Op::Add, &[y2, y3], vec![]).unwrap();
        b.output(y, "y", None).unwrap();
        let base = Model::new(b.finish(), 17);
        let calib: Vec<Value> =
            (0..2).map(|i| f32_value(&[m as i64, k as i64], &correlated_rows(m, k, 50 + i))).collect();
        let inits = |model: &Model| -> Vec<(String, Vec<u8>)> {
            let g = &model.graph;
            let mut v: Vec<(String, Vec<u8>)> = g
                .initializers
                .iter()
                .map(|&id| {
                    let t = const_tensor(g, id).unwrap();
                    (g.value(id).name.clone(), t.packed_bytes().unwrap().to_vec())
                })
                .collect();
            v.sort();
            v
        };
        let mut one = base.clone();
        let notes1 = run_with_calib(&mut one, "quant-w4(format=nbits,block=32,method=gptq)", calib.clone());
        let mut many = base.clone();
        // 0.1 MiB holds one 128- or 160-channel Gram (66 or 103 KB), not both: two passes.
        let notes2 =
            run_with_calib(&mut many, "quant-w4(format=nbits,block=32,method=gptq,hessian_mem=0.1)", calib.clone());
        let said = |notes: &[(String, String)], what: &str| notes.iter().any(|(_, l)| l.contains(what));
        assert!(said(&notes1, "Hessians of 2 input(s)") && said(&notes1, "in 1 calibration pass(es)"), "{notes1:?}");
        assert!(said(&notes2, "in 2 calibration pass(es)"), "{notes2:?}");
        assert!(said(&notes2, "3 weight(s) to 4 bits (gptq, block 32") && said(&notes2, "3 by GPTQ"), "{notes2:?}");
        assert_eq!(ops(&many), ops(&one));
        assert_eq!(inits(&many), inits(&one));
        // Progress: each calibration pass, then each weight, ending at 3 of 3.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut cx = PassContext::new(optc_cost::Target::cpu());
        cx.calib = Some(crate::Calibration {
            feeds: calib.into_iter().map(|x| [("x".to_string(), x)].into_iter().collect()).collect(),
        });
        let s2 = seen.clone();
        cx.progress = Some(std::sync::Arc::new(move |pass: &str, what: &str, done, total| {
            s2.lock().unwrap().push(format!("{pass}: {what} {done}/{total}"));
        }));
        let pm = PassManager::new(PassRegistry::with_builtins());
        pm.run(&mut base.clone(), "quant-w4(format=nbits,block=32,method=gptq,hessian_mem=0.1)", &mut cx).unwrap();
        let seen = seen.lock().unwrap().clone();
        let want = [
            "quant-w4: GPTQ calibration pass 1 of 2 0/3",
            "quant-w4: quantising weights (gptq) 1/3",
            "quant-w4: GPTQ calibration pass 2 of 2 1/3",
            "quant-w4: quantising weights (gptq) 2/3",
            "quant-w4: quantising weights (gptq) 3/3",
        ];
        assert_eq!(seen, want);
    }

    #[test]
    fn gptq_without_calibration_data_and_bad_options() {
        let (m, k, n) = (8i64, 64i64, 32i64);
        let mut model = matmul_model(m, k, n, &randn((k * n) as usize, 40), 17);
        let notes = run_pipeline(&mut model, "quant-w4(format=nbits,block=32,min_size=16,method=gptq)");
        let text: Vec<&str> = notes.iter().map(|(_, l)| l.as_str()).collect();
        assert!(text.iter().any(|l| l.contains("no calibration data; GPTQ calibrates on 4 seeded")), "{text:?}");
        assert!(text.iter().any(|l| l.contains("GPTQ on")), "{text:?}");
        let mut cx = PassContext::new(optc_cost::Target::cpu());
        let pm = PassManager::new(PassRegistry::with_builtins());
        for (opt, what) in [
            ("method=gptq2", "rtn, awq or gptq"),
            ("gateup=w3", "w4 or w2"),
            ("damp=-1", "damp"),
            ("hessian_mem=0", "hessian_mem"),
        ] {
            let e = pm.run(&mut model.clone(), &format!("quant-w4({opt})"), &mut cx).err().unwrap().to_string();
            assert!(e.contains(what), "{e}");
        }
    }

    /// x [4, 64] -> SwiGLU MLP (gate/up 64x128, down 128x64) -> y, with SiLU written as
    /// `g * Sigmoid(g)`.
    fn swiglu_model() -> Model {
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(4), Dim::known(64)]).unwrap();
        let wg = b.init_f32("gate.weight", &[64, 128], &randn(64 * 128, 50)).unwrap();
        let wu = b.init_f32("up.weight", &[64, 128], &randn(64 * 128, 51)).unwrap();
        let wd = b.init_f32("down.weight", &[128, 64], &randn(128 * 64, 52)).unwrap();
        let g = b.op(Op::MatMul, &[x, wg], vec![]).unwrap();
        let s = b.op(Op::Sigmoid, &[g], vec![]).unwrap();
        let act = b.op(Op::Mul, &[g, s], vec![]).unwrap();
        let u = b.op(Op::MatMul, &[x, wu], vec![]).unwrap();
        let gu = b.op(Op::Mul, &[act, u], vec![]).unwrap();
        let y = b.op(Op::MatMul, &[gu, wd], vec![]).unwrap();
        b.output(y, "y", Some(Type::tensor(DType::F32, vec![Dim::known(4), Dim::known(64)]))).unwrap();
        Model::new(b.finish(), 17)
    }

    /// The `bits` of each MatMulNBits, by the name of the node's weight initializer (its `.qN` B)
    /// less the builder's `_N` suffix of the float weight.
    fn nbits_bits(model: &Model) -> Vec<(String, i64)> {
        let g = &model.graph;
        let mut v: Vec<(String, i64)> = g
            .nodes()
            .filter(|&id| g.node(id).op.op_type() == "MatMulNBits")
            .map(|id| {
                let node = g.node(id);
                let name = g.value(node.input(1).unwrap()).name.clone();
                let (stem, q) = name.rsplit_once('.').unwrap();
                let stem = stem.rsplit_once('_').map_or(stem, |(a, _)| a);
                (format!("{stem}.{q}"), node.attrs.get_int("bits").unwrap())
            })
            .collect();
        v.sort();
        v
    }

    /// The value whose name starts with `stem` and ends like a quantised weight or is the float weight.
    fn value_starting(model: &Model, stem: &str) -> ValueId {
        let g = &model.graph;
        let mut names: Vec<&str> = g.initializers.iter().map(|&v| g.value(v).name.as_str()).collect();
        names.sort();
        let name = names
            .iter()
            .find(|n| n.starts_with(stem) && n.ends_with(".q2"))
            .or_else(|| names.iter().find(|n| n.starts_with(stem)))
            .unwrap();
        g.find_value(name).unwrap()
    }

    #[test]
    fn gateup_w2_gives_swiglu_gate_and_up_two_bits() {
        let x = f32_value(&[4, 64], &randn(4 * 64, 53));
        for (pipeline, silu) in [
            ("quant-w4(format=nbits,block=32,gateup=w2)", "x * Sigmoid(x)"),
            ("fuse-act,quant-w4(format=nbits,block=32,gateup=w2)", "QuickGelu(alpha=1)"),
        ] {
            let mut model = swiglu_model();
            let want = eval(&model, &x);
            let notes = run_pipeline(&mut model, pipeline);
            let text: Vec<&str> = notes.iter().map(|(_, l)| l.as_str()).collect();
            assert_eq!(
                nbits_bits(&model),
                vec![("down.weight.q4".into(), 4), ("gate.weight.q2".into(), 2), ("up.weight.q2".into(), 2)],
                "{text:?}"
            );
            assert!(text.iter().any(|l| l.contains("SwiGLU at") && l.contains(silu)), "{text:?}");
            assert!(text.iter().any(|l| l.contains("1 weight(s) to 4 bits and 2 to 2 bits")), "{text:?}");
            // B is [N, K/block, block/4] for 2 bits.
            let g = &model.graph;
            let b2 = g.const_tensor(value_starting(&model, "gate.weight")).unwrap();
            assert_eq!(b2.dims, vec![128, 2, 8]);
            // 2-bit gate/up: a coarse but working MLP.
            let got = eval(&model, &x);
            let dot: f64 = want.iter().zip(&got).map(|(a, b)| *a as f64 * *b as f64).sum();
            let na: f64 = want.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = got.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            assert!(dot / (na * nb) > 0.8, "cosine {}", dot / (na * nb));
        }
        // Merged by fuse-qkv into one MatMul + Split: that MatMul gets 2 bits.
        let mut model = swiglu_model();
        let notes = run_pipeline(&mut model, "fuse-qkv,quant-w4(format=nbits,block=32,gateup=w2)");
        let text: Vec<&str> = notes.iter().map(|(_, l)| l.as_str()).collect();
        let bits: Vec<i64> = nbits_bits(&model).into_iter().map(|(_, b)| b).collect();
        let mut sorted = bits.clone();
        sorted.sort();
        assert_eq!(sorted, vec![2, 4], "{text:?}");
        assert!(text.iter().any(|l| l.contains("merged gate/up projection")), "{text:?}");
        // Default gateup=w4: everything 4 bits, nothing said about SwiGLU.
        let mut model = swiglu_model();
        let notes = run_pipeline(&mut model, "quant-w4(format=nbits,block=32)");
        assert!(nbits_bits(&model).iter().all(|(_, b)| *b == 4));
        assert!(!notes.iter().any(|(_, l)| l.contains("SwiGLU")));
    }

    #[test]
    fn gateup_w2_explains_what_it_did_not_match() {
        // A GELU-style gate (Sigmoid(1.702 x) * x) is not SiLU; an excluded up projection
        // leaves the pair unmatched.
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(4), Dim::known(64)]).unwrap();
        let wg = b.init_f32("gate.weight", &[64, 128], &randn(64 * 128, 60)).unwrap();
        let wu = b.init_f32("up.weight", &[64, 128], &randn(64 * 128, 61)).unwrap();
        let g = b.op(Op::MatMul, &[x, wg], vec![]).unwrap();
        let u = b.op(Op::MatMul, &[x, wu], vec![]).unwrap();
        let k = b.init_f32("k", &[], &[1.702]).unwrap();
        let gk = b.op(Op::Mul, &[g, k], vec![]).unwrap();
        let s = b.op(Op::Sigmoid, &[gk], vec![]).unwrap();
        let act = b.op(Op::Mul, &[g, s], vec![]).unwrap();
        let y = b.op(Op::Mul, &[act, u], vec![]).unwrap();
        b.output(y, "y", None).unwrap();
        let mut model = Model::new(b.finish(), 17);
        let notes = run_pipeline(&mut model, "quant-w4(format=nbits,block=32,gateup=w2)");
        let text: Vec<&str> = notes.iter().map(|(_, l)| l.as_str()).collect();
        assert!(text.iter().any(|l| l.contains("not SiLU")), "{text:?}");
        assert!(text.iter().any(|l| l.contains("no SwiGLU gate/up projections found")), "{text:?}");
        assert!(nbits_bits(&model).iter().all(|(_, b)| *b == 4));

        let mut model = swiglu_model();
        let up = {
            let g = &model.graph;
            let wu = value_starting(&model, "up.weight");
            g.node(g.uses(wu)[0].0).display_name()
        };
        let notes = run_pipeline(&mut model, &format!("quant-w4(format=nbits,block=32,gateup=w2,exclude={up})"));
        let text: Vec<&str> = notes.iter().map(|(_, l)| l.as_str()).collect();
        assert!(
            text.iter().any(|l| l.contains("SwiGLU-shaped, but the up") && l.contains("not quantised")),
            "{text:?}"
        );
        assert!(nbits_bits(&model).iter().all(|(_, b)| *b == 4), "{text:?}");
    }

    #[test]
    fn gptq_and_awq_work_with_two_bits() {
        let xs: Vec<Value> = (0..2).map(|i| f32_value(&[64, 64], &correlated_rows(64, 64, 70 + i))).collect();
        let held = f32_value(&[4, 64], &correlated_rows(4, 64, 80));
        let mut rtn = swiglu_model();
        run_pipeline(&mut rtn, "quant-w4(format=nbits,block=32,gateup=w2)");
        let base = swiglu_model();
        let want = eval(&base, &held);
        let mse = |m: &Model| eval(m, &held).iter().zip(&want).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
        let e_rtn = mse(&rtn);
        for method in ["gptq", "awq"] {
            let mut m = base.clone();
            let notes = run_with_calib(
                &mut m,
                &format!("quant-w4(format=nbits,block=32,gateup=w2,method={method})"),
                xs.clone(),
            );
            let bits: Vec<i64> = nbits_bits(&m).into_iter().map(|(_, b)| b).collect();
            assert_eq!(bits, vec![4, 2, 2], "{notes:?}");
            let e = mse(&m);
            assert!(e < e_rtn, "{method}: {e:.4e} vs rtn {e_rtn:.4e}");
        }
        // qdq keeps 2-bit codes in uint4.
        let mut q = swiglu_model();
        let notes = run_pipeline(&mut q, "quant-w4(format=qdq,block=32,gateup=w2)");
        let g = &q.graph;
        let t = g.const_tensor(value_starting(&q, "gate.weight")).unwrap();
        assert_eq!(t.dtype, DType::U4);
        assert!(notes.iter().any(|(_, l)| l.contains("2-bit codes in int4 DequantizeLinear")), "{notes:?}");
        let (a, b) = (eval(&q, &held), eval(&rtn, &held));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-3 * x.abs().max(1.0), "{x} vs {y}");
        }
    }
}
