//! `optc cost` and `optc targets`: LIFE predictions from the command line.

use anyhow::Context;
use clap::Args;
use optc::Model;
use optc::cost::{LlmConfig, Report, Target, estimate, llm_metrics};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Args)]
pub struct CostArgs {
    /// The model (.onnx). Not needed with --llm-config.
    #[arg(required_unless_present = "llm_config")]
    model: Option<PathBuf>,
    /// The device: a built-in (`optc targets`) or a target file (.toml).
    #[arg(long, default_value = "cpu")]
    target: String,
    /// Bind symbolic dims, e.g. --dim batch=1,seq=128 (unbound dims count as 1 and are flagged).
    #[arg(long = "dim", value_name = "SYM=N", value_delimiter = ',')]
    dims: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Per-node rows to print, most expensive first (0: none; the per-op-type table is always printed).
    #[arg(long, default_value_t = 15, value_name = "N")]
    top: usize,
    /// Describe a LLaMA-shaped decoder by its config instead of a model, e.g.
    /// `preset=llama3-8b` or `layers=32,hidden=4096,intermediate=11008,heads=32,kv_heads=32,vocab=32000,wbits=4`.
    #[arg(long = "llm-config", value_name = "K=V,...")]
    llm_config: Option<String>,
    /// LLM workload: prompt tokens, generated tokens, context for TPOT, prefill chunk,
    /// e.g. --llm prompt=512,gen=128 (context defaults to prompt+gen; the default workload
    /// is prompt=512,gen=128). Given with a model, the model must be a decoder with a KV cache
    /// (inputs input_ids and past key/values, as Optimum and onnxruntime-genai export them):
    /// TTFT, TPOT and TPS are predicted from the graph itself, its dims bound per step.
    #[arg(long = "llm", value_name = "K=V,...")]
    llm: Option<String>,
}

/// The symbolic dims of a decoder graph with a KV cache, read from its inputs.
struct DecoderDims {
    /// Symbols of the batch dim.
    batch: Vec<String>,
    /// The new-tokens dim of input_ids.
    seq: String,
    /// The past length of the cache inputs.
    past: String,
    /// The total length (attention_mask's second dim), when it is its own symbol.
    total: Option<String>,
    /// Per cache input: elements per token (heads x head_dim x batch 1) and bytes per element.
    kv: Vec<(u64, u64)>,
}

fn sym(d: &optc::ir::Dim) -> Option<String> {
    match &d.value {
        optc::ir::DimValue::Sym(s) => Some(s.clone()),
        _ => None,
    }
}

/// Finds the dims of a decoder graph: `input_ids [batch, seq]`, cache inputs named `past*`
/// `[batch, heads, past, head_dim]`, `attention_mask [batch, total]`.
fn decoder_dims(g: &optc::ir::Graph) -> Result<DecoderDims, String> {
    let shape = |name: &str| {
        g.find_value(name).and_then(|v| g.value(v).ty.as_ref().and_then(|t| t.shape()).map(|s| s.to_vec()))
    };
    let ids = shape("input_ids").ok_or("the model has no input 'input_ids'")?;
    if ids.len() != 2 {
        return Err("input_ids is not [batch, sequence]".into());
    }
    let seq = sym(&ids[1]).ok_or("input_ids' sequence dim is not symbolic")?;
    let mut batch: Vec<String> = sym(&ids[0]).into_iter().collect();
    let mut past: Option<String> = None;
    let mut kv = Vec::new();
    for d in &g.inputs {
        let v = g.value(d.value);
        if !v.name.to_lowercase().contains("past") {
            continue;
        }
        let Some(sh) = v.ty.as_ref().and_then(|t| t.shape()) else { continue };
        if sh.len() != 4 {
            continue;
        }
        let p = sym(&sh[2]).ok_or_else(|| format!("cache input '{}' has no symbolic length dim", v.name))?;
        if past.as_ref().is_some_and(|q| *q != p) {
            return Err(format!(
                "cache inputs disagree on the past-length dim ('{}' vs '{p}')",
                past.unwrap_or_default()
            ));
        }
        past = Some(p);
        batch.extend(sym(&sh[0]));
        let per_token = [&sh[1], &sh[3]].iter().map(|d| d.as_known().unwrap_or(1).max(1) as u64).product();
        let bytes = v.ty.as_ref().and_then(|t| t.elem()).and_then(|e| e.bits()).map_or(4, |b| (b as u64).div_ceil(8));
        kv.push((per_token, bytes));
    }
    let past = past.ok_or("the model has no past key/value inputs [batch, heads, past, head_dim]")?;
    let total = shape("attention_mask").and_then(|m| m.get(1).and_then(sym)).filter(|t| *t != seq && *t != past);
    batch.sort();
    batch.dedup();
    Ok(DecoderDims { batch, seq, past, total, kv })
}

/// LIFE's LLM metrics of a decoder graph, each step's dims bound on the graph.
struct GraphLlmMetrics {
    target: String,
    prompt: usize,
    generated: usize,
    context: usize,
    chunk: Option<usize>,
    ttft_s: f64,
    tpot_s: f64,
    tps: f64,
    e2e_s: f64,
    kv_cache_bytes: f64,
    weight_bytes: f64,
    decode_bytes: f64,
    decode_ops: f64,
    prefill_ops: f64,
    fallback_ops: Vec<String>,
}

impl GraphLlmMetrics {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "target": self.target, "prompt": self.prompt, "generated": self.generated,
            "context": self.context, "chunk": self.chunk, "ttft_s": self.ttft_s, "tpot_s": self.tpot_s,
            "tps": self.tps, "e2e_s": self.e2e_s, "kv_cache_bytes": self.kv_cache_bytes,
            "weight_bytes": self.weight_bytes, "decode_bytes": self.decode_bytes,
            "decode_ops": self.decode_ops, "prefill_ops": self.prefill_ops, "fallback_ops": self.fallback_ops,
        })
    }
}

fn graph_llm(
    model: &optc::ir::Model,
    target: &Target,
    w: &Workload,
    base: &HashMap<String, i64>,
) -> anyhow::Result<GraphLlmMetrics> {
    let g = &model.graph;
    let d = decoder_dims(g).map_err(|e| crate::runcmd::UsageError(format!("--llm on a model: {e}")))?;
    let opset = model.opset("").unwrap_or(1);
    let step = |new: usize, past: usize| -> Report {
        let mut dims = base.clone();
        for b in &d.batch {
            dims.entry(b.clone()).or_insert(1);
        }
        dims.insert(d.seq.clone(), new as i64);
        dims.insert(d.past.clone(), past as i64);
        if let Some(t) = &d.total {
            dims.insert(t.clone(), (past + new) as i64);
        }
        estimate(g, opset, target, &dims)
    };
    let context = w.context.unwrap_or(w.prompt + w.generated).max(1);
    let chunk = w.chunk.unwrap_or(w.prompt).clamp(1, w.prompt.max(1));
    let (mut ttft, mut prefill_ops, mut done) = (0.0, 0.0, 0usize);
    while done < w.prompt.max(1) {
        let n = chunk.min(w.prompt.max(1) - done);
        let r = step(n, done);
        ttft += r.totals.time_s;
        prefill_ops += r.totals.ops;
        done += n;
    }
    let decode = step(1, context - 1);
    // Decode cost grows linearly with the context: the mean step is the one at the mid context.
    let mid = step(1, w.prompt + w.generated / 2);
    let kv_cache_bytes = d.kv.iter().map(|&(per, b)| (per * b) as f64 * context as f64).sum();
    let mut fallback_ops: Vec<String> = decode
        .nodes
        .iter()
        .filter(|n| n.fallback)
        .map(|n| n.op.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    fallback_ops.dedup();
    Ok(GraphLlmMetrics {
        target: target.name.clone(),
        prompt: w.prompt,
        generated: w.generated,
        context,
        chunk: w.chunk,
        ttft_s: ttft,
        tpot_s: decode.totals.time_s,
        tps: if decode.totals.time_s > 0.0 { 1.0 / decode.totals.time_s } else { 0.0 },
        e2e_s: ttft + w.generated as f64 * mid.totals.time_s,
        kv_cache_bytes,
        weight_bytes: decode.totals.weight_bytes,
        decode_bytes: decode.totals.bytes,
        decode_ops: decode.totals.ops,
        prefill_ops,
        fallback_ops,
    })
}

/// `--dim` bindings for the cost model: as `optc run` parses them, no size negative (0 is an
/// empty dim, as a decoder's past length is on its first step).
pub fn parse_dims(dims: &[String]) -> anyhow::Result<HashMap<String, i64>> {
    let dims = crate::runcmd::parse_dims(dims)?;
    if let Some((k, n)) = dims.iter().find(|&(_, &n)| n < 0) {
        anyhow::bail!("--dim '{k}={n}': N must not be negative");
    }
    Ok(dims)
}

const DEFAULT_WORKLOAD: &str = "prompt=512,gen=128";

struct Workload {
    prompt: usize,
    generated: usize,
    context: Option<usize>,
    chunk: Option<usize>,
}

fn parse_workload(s: &str) -> anyhow::Result<Workload> {
    let mut w = Workload { prompt: 512, generated: 128, context: None, chunk: None };
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').with_context(|| format!("--llm '{part}' must be KEY=N"))?;
        let n: usize = v.trim().parse().with_context(|| format!("--llm '{part}': N must be a whole number"))?;
        match k.trim() {
            "prompt" => w.prompt = n,
            "gen" | "generated" => w.generated = n,
            "context" => w.context = Some(n),
            "chunk" => w.chunk = Some(n),
            other => anyhow::bail!("--llm: unknown key '{other}' (keys: prompt, gen, context, chunk)"),
        }
    }
    Ok(w)
}

pub use optc::cost::fmt_time;

fn fmt_num(x: f64) -> String {
    let (v, u) = if x >= 1e12 {
        (x / 1e12, "T")
    } else if x >= 1e9 {
        (x / 1e9, "G")
    } else if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    if u.is_empty() { format!("{v:.0}") } else { format!("{v:.2}{u}") }
}

pub fn run(a: CostArgs) -> anyhow::Result<()> {
    let target = Target::load(&a.target).map_err(optc::Error::from)?;
    if let Some(cfg) = &a.llm_config {
        let cfg = LlmConfig::parse(cfg).map_err(|e| crate::runcmd::UsageError(format!("--llm-config: {e}")))?;
        let w = parse_workload(a.llm.as_deref().unwrap_or(DEFAULT_WORKLOAD))?;
        let context = w.context.unwrap_or(w.prompt + w.generated);
        let m = llm_metrics(&cfg, &target, w.prompt, w.generated, context, w.chunk)
            .map_err(|e| crate::runcmd::UsageError(format!("--llm-config: {e}")))?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&m)?);
            return Ok(());
        }
        println!("LLM forecast on target '{}' (LIFE roofline)", target.name);
        println!("  weights          {:>12}", crate::inspect::fmt_bytes(m.weight_bytes as u64));
        println!("  KV cache         {:>12}  at {context} tokens", crate::inspect::fmt_bytes(m.kv_cache_bytes as u64));
        let chunk = w.chunk.map(|c| format!(", chunks of {c}")).unwrap_or_default();
        println!(
            "  TTFT             {:>12}  prompt {} tokens{chunk}, {:?}-bound",
            fmt_time(m.ttft_s),
            w.prompt,
            m.prefill_bound
        );
        println!("  TPOT             {:>12}  at context {context}, {:?}-bound", fmt_time(m.tpot_s), m.decode_bound);
        println!("  TPS              {:>12.2}", m.tps);
        println!("  end to end       {:>12}  prompt {} + {} generated", fmt_time(m.e2e_s), w.prompt, w.generated);
        if !m.fallback_ops.is_empty() {
            println!("  on the fallback device: {}", m.fallback_ops.join(", "));
        }
        if m.fits_in_memory == Some(false) {
            println!("  warning: weights + KV cache exceed the target's memory");
        }
        return Ok(());
    }
    let path = a.model.as_ref().context("a model is required")?;
    let dims = parse_dims(&a.dims)?;
    let model = Model::load(path)?;
    let ir = model.ir();
    let opset = ir.opset("").unwrap_or(1);
    if let Some(llm) = &a.llm {
        let w = parse_workload(llm)?;
        let m = graph_llm(ir, &target, &w, &dims)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&m.to_json())?);
            return Ok(());
        }
        println!("LLM forecast of {} on target '{}' (LIFE, dims bound per step)", path.display(), target.name);
        println!("  weights          {:>12}", crate::inspect::fmt_bytes(m.weight_bytes as u64));
        println!(
            "  KV cache         {:>12}  at {} tokens",
            crate::inspect::fmt_bytes(m.kv_cache_bytes as u64),
            m.context
        );
        let chunk = w.chunk.map(|c| format!(", chunks of {c}")).unwrap_or_default();
        println!("  TTFT             {:>12}  prompt {} tokens{chunk}", fmt_time(m.ttft_s), w.prompt);
        println!("  TPOT             {:>12}  at context {}", fmt_time(m.tpot_s), m.context);
        println!("  TPS              {:>12.2}", m.tps);
        println!("  end to end       {:>12}  prompt {} + {} generated", fmt_time(m.e2e_s), w.prompt, w.generated);
        if !m.fallback_ops.is_empty() {
            println!("  on the fallback device: {}", m.fallback_ops.join(", "));
        }
        return Ok(());
    }
    let r = estimate(&ir.graph, opset, &target, &dims);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    print!("{}", render(&r, a.top));
    Ok(())
}

/// The human-readable report: per-op-type table, the most expensive nodes, totals.
pub fn render(r: &Report, top: usize) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "LIFE cost on target '{}'", r.target);
    if !r.unbound_dims.is_empty() {
        let _ = writeln!(s, "unbound symbolic dims (counted as 1; bind with --dim): {}", r.unbound_dims.join(", "));
    }
    let _ = writeln!(
        s,
        "\n{:<24} {:>6} {:>10} {:>10} {:>12} {:>7} {:>9}",
        "op", "count", "ops", "bytes", "time", "share", "fallback"
    );
    for o in &r.by_op {
        let _ = writeln!(
            s,
            "{:<24} {:>6} {:>10} {:>10} {:>12} {:>6.1}% {:>9}",
            o.op,
            o.count,
            fmt_num(o.ops),
            fmt_num(o.bytes),
            fmt_time(o.time_s),
            o.time_share * 100.0,
            o.fallback_count
        );
    }
    if top > 0 {
        let mut rows: Vec<_> = r.nodes.iter().collect();
        rows.sort_by(|a, b| b.time_s.total_cmp(&a.time_s));
        let _ = writeln!(s, "\nmost expensive nodes:");
        let _ = writeln!(
            s,
            "{:<40} {:<18} {:>10} {:>10} {:<8} {:>11} {:<8} flags",
            "node", "op", "ops", "bytes", "bound", "time", "device"
        );
        for n in rows.into_iter().take(top) {
            let name = if n.name.chars().count() > 40 {
                format!("…{}", n.name.chars().rev().take(39).collect::<Vec<_>>().into_iter().rev().collect::<String>())
            } else {
                n.name.clone()
            };
            let flags: Vec<String> = n
                .flags
                .iter()
                .map(|f| serde_json::to_value(f).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default())
                .collect();
            let _ = writeln!(
                s,
                "{:<40} {:<18} {:>10} {:>10} {:<8} {:>11} {:<8} {}",
                name,
                n.op,
                fmt_num(n.ops),
                fmt_num(n.bytes),
                format!("{:?}", n.bound).to_lowercase(),
                fmt_time(n.time_s),
                if n.fallback { "fallback" } else { "native" },
                flags.join(",")
            );
        }
    }
    let t = &r.totals;
    let _ = writeln!(
        s,
        "\ntotal: {} predicted; {} ops, {} bytes moved ({} weights); {} nodes: {} compute-bound, {} memory-bound, {} overhead-bound",
        fmt_time(t.time_s),
        fmt_num(t.ops),
        fmt_num(t.bytes),
        fmt_num(t.weight_bytes),
        t.nodes,
        t.compute_bound,
        t.memory_bound,
        t.overhead_bound
    );
    if t.fallback_nodes > 0 {
        let _ = writeln!(
            s,
            "fallback: {} nodes run on the fallback device ({})",
            t.fallback_nodes,
            fmt_time(t.fallback_time_s)
        );
    }
    if t.estimated_nodes > 0 {
        let _ = writeln!(s, "estimated: {} nodes have approximate figures (see flags)", t.estimated_nodes);
    }
    s
}

pub fn targets() -> anyhow::Result<()> {
    println!("Built-in targets (use --target NAME, or --target path/to/file.toml; fields in docs/TARGETS.md):\n");
    for name in Target::BUILTINS {
        let t = Target::builtin(name).map_err(optc::Error::from)?;
        let tops: Vec<String> = t.tops.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  {:<6} {}", t.name, t.description);
        println!("  {:<6} TOPS: {}; memory {} GB/s, {} GB", "", tops.join(", "), t.mem_bw_gbs, t.mem_gb);
    }
    println!("\nPrint one as a starting point for your own: optc targets --show NAME");
    Ok(())
}

pub fn show_target(name: &str) -> anyhow::Result<()> {
    match Target::builtin_toml(name) {
        Some(text) => {
            print!("{text}");
            Ok(())
        }
        None => Err(crate::runcmd::UsageError(format!(
            "unknown built-in target '{name}'; built-ins: {}",
            Target::BUILTINS.join(", ")
        ))
        .into()),
    }
}
