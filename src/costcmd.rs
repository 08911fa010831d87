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
    /// e.g. --llm prompt=512,gen=128 (context defaults to prompt+gen).
    #[arg(long = "llm", value_name = "K=V,...", default_value = "prompt=512,gen=128")]
    llm: String,
}

/// `--dim` bindings for the cost model: as `optc run` parses them, and every size positive.
pub fn parse_dims(dims: &[String]) -> anyhow::Result<HashMap<String, i64>> {
    let dims = crate::runcmd::parse_dims(dims)?;
    if let Some((k, n)) = dims.iter().find(|&(_, &n)| n <= 0) {
        anyhow::bail!("--dim '{k}={n}': N must be positive");
    }
    Ok(dims)
}

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

pub fn fmt_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} us", s * 1e6)
    }
}

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
        let w = parse_workload(&a.llm)?;
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
