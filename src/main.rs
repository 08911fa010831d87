//! The `optc` command line.

mod costcmd;
mod ggufcmd;
mod inspect;
mod llmcmd;
mod quantreport;
mod runcmd;
mod tokcmd;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use optc::backends::{ExternalData, SaveOptions};
use optc::passes::{Budget, PassContext, PassManager, PassRegistry};
use optc::{Model, Target};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "optc",
    version,
    about = "A compiler-style optimiser for neural-network models: ONNX in, passes, ONNX out.",
    long_about = "optc reads an ONNX model, lifts it into its graph IR, runs a pipeline of passes and \
writes ONNX again.\n\nExamples:\n  optc inspect model.onnx\n  optc opt model.onnx -p dce,identity,shape-fold -o model.opt.onnx\n  \
optc opt model.onnx -p 'fixpoint(identity,dce)' --verify-each --time-passes -o out.onnx\n  optc passes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Optimise a model with a pipeline of passes and write the result.
    #[command(long_about = "Optimise a model with a pipeline of passes and write the result.\n\n\
The pipeline is a comma-separated list of passes, each with optional key=value options:\n  \
-p O2   (constant folding, clean-up and fusions; O1: the exact clean-up only)\n  -p dce,identity\n  -p 'shape-fold,fixpoint(identity,dce,max_iter=5)'\n  -p ''   (no passes: a lossless round trip)\n\
Run `optc passes` for every pass, its options and its exactness.")]
    Opt(OptArgs),
    /// Show what is in a model: opsets, op histogram, parameters, inputs and outputs, subgraphs.
    Inspect(InspectArgs),
    /// List every registered pass with its options and exactness.
    Passes,
    /// Write a seeded synthetic model (for examples, tests and benchmarks).
    Gen(GenArgs),
    /// Run a model with optc's evaluator; inputs from .npy files or seeded random data.
    Run(runcmd::RunArgs),
    /// Run two models on the same inputs and compare their outputs (exit 1 when out of tolerance).
    Verify(runcmd::VerifyArgs),
    /// Predict latency on a target with the LIFE cost model (per op type, per node, totals; LLM TTFT/TPOT/TPS).
    #[command(long_about = "Predict latency on a target with the LIFE analytical cost model.\n\n\
Each node's time is max(ops / (eff_c * TOPS[precision]), bytes / (eff_m * bandwidth)) + launch overhead, \
from the target's figures alone; ops the target does not run natively are costed on its fallback device. \
No tensor data is read.\n\nExamples:\n  optc cost model.onnx --target npu --dim batch=1,seq=128\n  \
optc cost model.onnx --target my-board.toml --json\n  \
optc cost --llm-config preset=llama3-8b,wbits=4 --target npu --llm prompt=1024,gen=128\n  \
optc cost --llm-config preset=llama3-8b,wbits=4,gate_up_bits=2 --target igpu --llm prompt=512,gen=128,context=4096")]
    Cost(costcmd::CostArgs),
    /// Per-layer quantisation sensitivity: the output error with only that layer quantised,
    /// most sensitive first, and the layers to leave float (`optc opt --exclude-auto K`).
    QuantReport(quantreport::QuantReportArgs),
    /// List the built-in targets (or print one's target file with --show NAME).
    Targets(TargetsArgs),
    /// Show a GGUF file's metadata and tensors; write tensors dequantised as .npy (--tensor/--all -o DIR).
    Gguf(ggufcmd::GgufArgs),
    /// Encode text to token ids (or --decode ids to text) with a byte-level BPE tokenizer.json.
    Tokenize(tokcmd::TokenizeArgs),
    /// Import a GGUF LLM (llama architecture) as an ONNX decoder with a KV cache, plus tokenizer.json.
    #[command(long_about = "Import a GGUF LLM (llama architecture: LLaMA, SmolLM, Mistral-style) as an ONNX \
decoder with a KV cache, and write its tokenizer as tokenizer.json beside it.\n\n\
The graph takes input_ids, attention_mask, position_ids and past_key_values.N.key/value and returns logits and \
present.N.key/value (Optimum and onnxruntime-genai names), so one model serves prefill and decode. 4- and 8-bit \
block weights stay quantised as com.microsoft::MatMulNBits (the model is about the GGUF's size); --dequantize \
writes float32 weights instead. Every optc command also accepts a .gguf directly.\n\nExamples:\n  \
optc import SmolLM2-135M-Instruct.Q4_1.gguf -o smollm2/model.onnx\n  \
optc eval ppl smollm2/model.onnx --text lee_background.cor --ctx 512\n  \
optc generate smollm2/model.onnx --chat --prompt 'What is the capital of France?'")]
    Import(llmcmd::ImportArgs),
    /// Evaluate a model on data: `optc eval ppl MODEL --text FILE` (perplexity).
    Eval(llmcmd::EvalArgs),
    /// Generate text greedily from a causal LM (.onnx with tokenizer.json beside it, or .gguf).
    Generate(llmcmd::GenerateArgs),
}

#[derive(Args)]
struct TargetsArgs {
    /// Print this built-in target's TOML file.
    #[arg(long, value_name = "NAME")]
    show: Option<String>,
}

#[derive(Args)]
struct GenArgs {
    /// Which model (`optc gen --list` shows them).
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// Where to write it.
    #[arg(short = 'o', long = "output", required_unless_present = "list")]
    output: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// List the generators.
    #[arg(long)]
    list: bool,
}

#[derive(Args)]
struct OptArgs {
    /// The input model (.onnx).
    input: PathBuf,
    /// The pipeline, e.g. `dce,identity,shape-fold` (empty: round trip only).
    #[arg(short = 'p', long = "pipeline", default_value = "")]
    pipeline: String,
    /// Where to write the optimised model.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// The device to optimise for (built-in name or target file).
    #[arg(long, default_value = "cpu")]
    target: String,
    /// Where tensor data goes: `auto` keeps external data external and moves tensors out past
    /// 2 GiB; `always` moves every tensor of 1 KiB or more out; `never` keeps all inline.
    #[arg(long = "external-data", default_value = "auto", value_parser = parse_external)]
    external_data: ExternalData,
    /// Run the IR verifier after every pass and name the pass that broke an invariant.
    #[arg(long)]
    verify_each: bool,
    /// Print a timing table: load, each pass, save.
    #[arg(long)]
    time_passes: bool,
    /// Stop rewriting after N rewrites in total (bisects a miscompile to one rewrite).
    #[arg(long, value_name = "N")]
    max_rewrites: Option<usize>,
    /// Print why each rewrite fired or did not.
    #[arg(long)]
    explain: bool,
    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
    /// Bind symbolic dims for the predicted latency, e.g. --dim batch=1,seq=128.
    #[arg(long = "dim", value_name = "SYM=N", value_delimiter = ',')]
    dims: Vec<String>,
    /// Calibration inputs for passes that need them (quant-w4 method=awq): DIR/<input>.npy is
    /// one run, or DIR/<run>/<input>.npy one run per subfolder.
    #[arg(long, value_name = "DIR")]
    calib: Option<PathBuf>,
    /// Measure every layer's quantisation sensitivity first (as `optc quant-report` does) and
    /// leave the K most sensitive layers float.
    #[arg(long = "exclude-auto", value_name = "K")]
    exclude_auto: Option<usize>,
}

fn parse_external(s: &str) -> Result<ExternalData, String> {
    s.parse()
}

#[derive(Args)]
struct InspectArgs {
    /// The model (.onnx).
    input: PathBuf,
    /// Print the whole IR as text.
    #[arg(long)]
    ir: bool,
    /// Print the inferred type and shape of every value, node by node.
    #[arg(long)]
    shapes: bool,
    /// List the residual blocks `prune-depth` can remove, with their parameters and the
    /// LIFE-predicted latency each one costs on --target.
    #[arg(long)]
    blocks: bool,
    /// Target for --blocks: a built-in name (cpu, npu, igpu, gpu) or a target file.
    #[arg(long, default_value = "cpu", requires = "blocks")]
    target: String,
    /// Bind symbolic dims for --blocks, e.g. --dim batch=1,seq=128.
    #[arg(long = "dim", value_name = "SYM=N", value_delimiter = ',', requires = "blocks")]
    dims: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Opt(a) => cmd_opt(a),
        Command::Inspect(a) => cmd_inspect(a),
        Command::Passes => cmd_passes(),
        Command::Gen(a) => cmd_gen(a),
        Command::Run(a) => runcmd::run(a),
        Command::Verify(a) => runcmd::verify(a),
        Command::Cost(a) => costcmd::run(a),
        Command::QuantReport(a) => quantreport::run(a),
        Command::Targets(a) => match a.show {
            Some(name) => costcmd::show_target(&name),
            None => costcmd::targets(),
        },
        Command::Gguf(a) => ggufcmd::run(a),
        Command::Tokenize(a) => tokcmd::run(a),
        Command::Import(a) => llmcmd::import(a),
        Command::Eval(a) => llmcmd::eval(a),
        Command::Generate(a) => llmcmd::generate_cmd(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = if e.downcast_ref::<runcmd::UsageError>().is_some()
                || e.downcast_ref::<optc::eval::EvalError>()
                    .is_some_and(|e| matches!(e, optc::eval::EvalError::Input { .. }))
            {
                2
            } else {
                e.downcast_ref::<optc::Error>().map(|e| e.exit_code()).unwrap_or(1)
            };
            eprintln!("error: {e:#}");
            ExitCode::from(code as u8)
        }
    }
}

fn target(name: &str) -> Result<Target, optc::Error> {
    Ok(Target::load(name)?)
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Bytes of a model on disk, its external data files included.
fn model_disk_size(path: &Path, m: &optc::ir::Model) -> u64 {
    let mut files = std::collections::BTreeSet::new();
    inspect::external_files(&m.graph, &mut files);
    let dir = path.parent().unwrap_or(Path::new("."));
    file_size(path) + files.iter().map(|f| file_size(&dir.join(f))).sum::<u64>()
}

/// `--calib DIR`: the .npy files in DIR (one run), then those of each subfolder (one run each),
/// in name order; a file's stem names the graph input.
fn load_calib(dir: &Path) -> anyhow::Result<optc::passes::Calibration> {
    let sorted = |d: &Path| -> anyhow::Result<Vec<PathBuf>> {
        let rd = std::fs::read_dir(d).with_context(|| format!("--calib: reading {}", d.display()))?;
        let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        v.sort();
        Ok(v)
    };
    let run = |d: &Path| -> anyhow::Result<std::collections::HashMap<String, optc::eval::Value>> {
        let mut feed = std::collections::HashMap::new();
        for p in sorted(d)?.into_iter().filter(|p| p.extension().is_some_and(|e| e == "npy")) {
            let t = optc::eval::npy::read_npy(&p).with_context(|| format!("--calib: reading {}", p.display()))?;
            let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            feed.insert(name, optc::eval::Value::Tensor(t));
        }
        Ok(feed)
    };
    let mut feeds = vec![run(dir)?];
    for sub in sorted(dir)?.into_iter().filter(|p| p.is_dir()) {
        feeds.push(run(&sub)?);
    }
    feeds.retain(|f| !f.is_empty());
    anyhow::ensure!(!feeds.is_empty(), "--calib {}: no .npy files in it or its subfolders", dir.display());
    Ok(optc::passes::Calibration { feeds })
}

fn cmd_opt(a: OptArgs) -> anyhow::Result<()> {
    let target = target(&a.target)?;
    let manager = {
        let mut m = PassManager::new(PassRegistry::with_builtins());
        m.verify_each = a.verify_each;
        m
    };
    // Check the pipeline before reading a possibly large model.
    let exactness = manager.check(&a.pipeline).map_err(optc::Error::from)?;
    let t0 = Instant::now();
    let mut model = Model::load(&a.input)?;
    let load_time = t0.elapsed();
    let before = inspect::Stats::of(model.ir(), model_disk_size(&a.input, model.ir()));
    let mut cx = PassContext::new(target.clone());
    cx.explain = a.explain;
    cx.dims = costcmd::parse_dims(&a.dims)?;
    cx.cost_each = !a.quiet;
    cx.measure_error = !a.quiet;
    if let Some(dir) = &a.calib {
        cx.calib = Some(load_calib(dir)?);
    }
    if let Some(k) = a.exclude_auto.filter(|&k| k > 0) {
        let r = quantreport::sensitivity(model.ir(), &a.pipeline, &target, &cx)?;
        cx.layers.exclude = r.layers.iter().take(k).map(|l| l.name.clone()).collect();
        if !a.quiet {
            let names: Vec<String> = r.layers.iter().take(k).map(|l| format!("{} ({:.2e})", l.name, l.error)).collect();
            println!("exclude-auto: the {k} most sensitive layer(s) stay float: {}", names.join(", "));
        }
    }
    let predicted_before = (!a.quiet).then(|| cx.predict(model.ir()));
    if let Some(n) = a.max_rewrites {
        cx.budget = Budget::limited(n);
    }
    // Long passes (calibrated quantisation) report their progress (drawn only on a terminal).
    let pass_bar = indicatif::ProgressBar::new(0);
    if !a.quiet {
        pass_bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} ({elapsed}, {eta} left)")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let b = pass_bar.clone();
        let last = std::sync::Mutex::new(String::new());
        cx.progress = Some(std::sync::Arc::new(move |pass: &str, what: &str, done: usize, total: usize| {
            // A new pass starts its own clock.
            if let Ok(mut l) = last.lock()
                && *l != pass
            {
                b.reset();
                *l = pass.to_string();
            }
            b.set_message(format!("[{pass}] {what}"));
            b.set_length(total as u64);
            b.set_position(done as u64);
        }));
    }
    let t1 = Instant::now();
    let report = model.run_with(&manager, &a.pipeline, &mut cx);
    pass_bar.finish_and_clear();
    let report = report?;
    let pass_time = t1.elapsed();
    let t2 = Instant::now();
    let mut opts = SaveOptions { external: a.external_data, ..SaveOptions::default() };
    // A progress bar for large writes (indicatif draws only on a terminal).
    let bar = indicatif::ProgressBar::new(0);
    if !a.quiet && model.ir().graph.param_bytes() > (256 << 20) {
        bar.set_style(
            indicatif::ProgressStyle::with_template("writing {bar:40} {bytes}/{total_bytes} ({bytes_per_sec})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let b = bar.clone();
        opts.progress = Some(std::sync::Arc::new(move |done, total| {
            b.set_length(total);
            b.set_position(done);
        }));
    }
    let saved = model.save_with(&a.output, &opts).with_context(|| format!("writing {}", a.output.display()))?;
    bar.finish_and_clear();
    let save_time = t2.elapsed();
    let after_size = saved.model_bytes + saved.external.as_ref().map(|e| e.1).unwrap_or(0);
    let after = inspect::Stats::of(model.ir(), after_size);
    if a.explain {
        for (pass, line) in cx.explanations() {
            println!("[{pass}] {line}");
        }
    }
    if !a.quiet {
        let pipeline = if a.pipeline.trim().is_empty() { "(none)" } else { a.pipeline.as_str() };
        println!(
            "optc opt: {} -> {}  pipeline: {pipeline}  target: {}  exactness: {exactness}",
            a.input.display(),
            a.output.display(),
            target.name
        );
        print!("{}", inspect::summary_table(&before, &after));
        if let Some(b) = predicted_before {
            let after = report.runs.last().and_then(|r| r.predicted).map_or(b, |p| p.1);
            println!(
                "{:<22} {:>12} {:>12} {:>9}",
                format!("predicted ({})", target.name),
                costcmd::fmt_time(b),
                costcmd::fmt_time(after),
                if b > 0.0 { format!("{:+.1}%", (after - b) / b * 100.0) } else { String::new() }
            );
        }
        if !report.runs.is_empty() {
            println!("\n{:<32} {:>10} {:>9} {:>16} {:>24}", "pass", "time", "rewrites", "nodes", "predicted latency");
            for r in &report.runs {
                let lat = r
                    .predicted
                    .map_or(String::new(), |(b, a)| format!("{} -> {}", costcmd::fmt_time(b), costcmd::fmt_time(a)));
                println!(
                    "{:<32} {:>10} {:>9} {:>16} {:>24}",
                    r.label,
                    inspect::fmt_duration(r.time),
                    r.rewrites,
                    format!("{} -> {}", r.nodes_before, r.nodes_after),
                    lat
                );
            }
        }
        if !cx.reports().is_empty() {
            println!();
            for (pass, line) in cx.reports() {
                println!("[{pass}] {line}");
            }
        }
        if report.budget_exhausted {
            println!("rewrite budget of {} reached: later rewrites were skipped", a.max_rewrites.unwrap_or(0));
        }
        if let Some((p, n)) = &saved.external {
            println!("external data: {} ({})", p.display(), inspect::fmt_bytes(*n));
        }
        if a.time_passes {
            println!(
                "time: load {}, passes {}, save {}, total {}",
                inspect::fmt_duration(load_time),
                inspect::fmt_duration(pass_time),
                inspect::fmt_duration(save_time),
                inspect::fmt_duration(t0.elapsed())
            );
        }
    }
    Ok(())
}

fn cmd_inspect(a: InspectArgs) -> anyhow::Result<()> {
    let model = Model::load(&a.input)?;
    if a.blocks {
        let target = target(&a.target)?;
        let dims = costcmd::parse_dims(&a.dims)?;
        print!("{}", inspect::blocks(model.ir(), &target, &dims));
    } else if a.shapes {
        print!("{}", inspect::shapes(model.ir()));
    } else if a.ir {
        print!("{}", optc::ir::text::model_to_text(model.ir()));
    } else {
        print!("{}", inspect::describe(model.ir(), &a.input, model_disk_size(&a.input, model.ir())));
    }
    Ok(())
}

fn cmd_passes() -> anyhow::Result<()> {
    let r = PassRegistry::with_builtins();
    println!("Passes (use them in -p, e.g. -p dce,identity; options as name(key=value)):\n");
    for p in r.passes() {
        println!("  {:<14} {}", p.name(), p.description());
        println!("  {:<14} exactness: {}", "", p.exactness());
        for o in p.options() {
            println!("  {:<14} option {}={} ({})", "", o.name, o.default, o.help);
        }
    }
    println!("\nCombinators:\n");
    println!("  {:<14} run the listed passes again until none of them changes anything", "fixpoint(...)");
    println!("  {:<14} option max_iter=10", "");
    println!("\nPresets (names that stand for a pipeline, e.g. -p O2):\n");
    for (name, pipeline, about) in optc::passes::pipeline::PRESETS {
        println!("  {name:<14} {about}");
        println!("  {:<14} = {pipeline}", "");
    }
    Ok(())
}

fn cmd_gen(a: GenArgs) -> anyhow::Result<()> {
    if a.list {
        for (name, about) in optc::zoo::MODELS {
            println!("{name:<12} {about}");
        }
        return Ok(());
    }
    let (Some(name), Some(out)) = (a.name, a.output) else { anyhow::bail!("give a model name and -o OUT") };
    let model = optc::zoo::build(&name, a.seed).map_err(|e| anyhow::anyhow!(e))?;
    let model = Model::from_ir(model);
    model.save(&out)?;
    println!("wrote {} ({})", out.display(), inspect::fmt_bytes(file_size(&out)));
    Ok(())
}
