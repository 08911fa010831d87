//! `optc quant-report` and `optc opt --exclude-auto K`: per-layer quantisation sensitivity.
//!
//! The pipeline (e.g. `quant-w8`, `fuse,quant-w4(method=gptq)`) is run once per weighted layer
//! (Conv, MatMul, Gemm) with the quantiser restricted to that layer alone
//! ([`optc::passes::LayerFilter`]); the layer's sensitivity is the output error of that model
//! against the float one on the calibration inputs (relative squared error over all float
//! outputs, as `prune-depth` measures it). The layer names are read off the model the
//! quantiser sees (after the pipeline's earlier passes), from a run with every layer refused.

use anyhow::Context;
use clap::Args;
use optc::Target;
use optc::ir::{Model as IrModel, Op};
use optc::passes::prune::depth::{output_error, run_all};
use optc::passes::{PassContext, PassManager, PassRegistry};
use std::collections::HashSet;
use std::path::PathBuf;

#[derive(Args)]
pub struct QuantReportArgs {
    /// The model (.onnx or .gguf).
    input: PathBuf,
    /// The quantisation pipeline to measure, e.g. -p quant-w8 or -p "fuse,quant-w4(method=awq)".
    #[arg(short = 'p', long = "pipeline")]
    pipeline: String,
    /// Calibration inputs (DIR/<input>.npy or DIR/<run>/<input>.npy), used by the quantiser and to
    /// measure the errors; seeded random inputs (with a warning) without it.
    #[arg(long, value_name = "DIR")]
    calib: Option<PathBuf>,
    /// Target (its quantisation defaults apply, e.g. npu's power-of-two scales).
    #[arg(long, default_value = "cpu")]
    target: String,
    /// Bind symbolic dims (for random calibration inputs), e.g. --dim batch=1,seq=128.
    #[arg(long = "dim", value_name = "SYM=N", value_delimiter = ',')]
    dims: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// One layer's sensitivity.
pub struct Layer {
    pub name: String,
    pub op: String,
    /// Output error with only this layer quantised.
    pub error: f64,
    pub cosine: f64,
}

pub struct Report {
    /// Most sensitive first.
    pub layers: Vec<Layer>,
    /// Output error with every layer quantised.
    pub full_error: f64,
    pub full_cosine: f64,
    /// How many of the first layers the report suggests leaving float.
    pub suggested: usize,
    pub runs: usize,
}

fn fresh_cx(target: &Target, template: &PassContext) -> PassContext {
    let mut cx = PassContext::new(target.clone());
    cx.dims = template.dims.clone();
    cx.calib = template.calib.clone();
    cx
}

/// Measures every layer's sensitivity to `pipeline` on `model`.
pub fn sensitivity(model: &IrModel, pipeline: &str, target: &Target, template: &PassContext) -> anyhow::Result<Report> {
    let manager = PassManager::new(PassRegistry::with_builtins());
    manager.check(pipeline).map_err(optc::Error::from)?;
    let mut cx = fresh_cx(target, template);
    let feeds = optc::passes::calib::feeds(model, &mut cx, 4, "quant-report").map_err(anyhow::Error::msg)?;
    let reference = run_all(model, &feeds).map_err(anyhow::Error::msg).context("running the float model")?;
    let run = |filter: optc::passes::LayerFilter| -> anyhow::Result<(IrModel, f64, f64)> {
        let mut m = model.clone();
        let mut cx = fresh_cx(target, template);
        cx.layers = filter;
        manager.run(&mut m, pipeline, &mut cx).map_err(optc::Error::from)?;
        let got = run_all(&m, &feeds).map_err(anyhow::Error::msg)?;
        let (e, c) = output_error(&reference, &got);
        Ok((m, e, c))
    };
    // The layers as the quantiser sees them: the pipeline with every layer refused.
    let (seen, _, _) = run(optc::passes::LayerFilter { only: Some(HashSet::new()), ..Default::default() })?;
    let g = &seen.graph;
    let mut names: Vec<(String, String)> = g
        .nodes()
        .filter(|&n| matches!(g.node(n).op, Op::Conv | Op::MatMul | Op::Gemm))
        .filter(|&n| g.node(n).input(1).is_some_and(|w| optc::passes::util::const_tensor(g, w).is_some()))
        .map(|n| (g.node(n).display_name(), g.node(n).op.to_string()))
        .collect();
    names.dedup();
    anyhow::ensure!(!names.is_empty(), "the model has no Conv, MatMul or Gemm with a constant weight to measure");
    let bar = indicatif::ProgressBar::new(names.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("measuring layers {bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut layers = Vec::new();
    for (name, op) in names {
        bar.set_message(name.clone());
        let (_, error, cosine) =
            run(optc::passes::LayerFilter { only: Some(HashSet::from([name.clone()])), ..Default::default() })?;
        layers.push(Layer { name, op, error, cosine });
        bar.inc(1);
    }
    bar.finish_and_clear();
    layers.sort_by(|a, b| b.error.total_cmp(&a.error));
    let (_, full_error, full_cosine) = run(optc::passes::LayerFilter::default())?;
    // Suggested: the layers at least 4x as sensitive as the median one (at most 5), the outliers
    // a mixed-precision model keeps float.
    let mut errs: Vec<f64> = layers.iter().map(|l| l.error).collect();
    errs.sort_by(f64::total_cmp);
    let median = errs[errs.len() / 2];
    let suggested = layers.iter().take_while(|l| l.error > 0.0 && l.error >= 4.0 * median).count().min(5);
    Ok(Report { layers, full_error, full_cosine, suggested, runs: feeds.len() })
}

pub fn run(a: QuantReportArgs) -> anyhow::Result<()> {
    let target = crate::target(&a.target)?;
    let model = optc::Model::load(&a.input)?;
    let mut template = PassContext::new(target.clone());
    template.dims = crate::costcmd::parse_dims(&a.dims)?;
    if let Some(dir) = &a.calib {
        template.calib = Some(crate::load_calib(dir)?);
    }
    let r = sensitivity(model.ir(), &a.pipeline, &target, &template)?;
    if a.json {
        let layers: Vec<serde_json::Value> = r
            .layers
            .iter()
            .map(|l| serde_json::json!({"name": l.name, "op": l.op, "error": l.error, "cosine": l.cosine}))
            .collect();
        let out = serde_json::json!({
            "pipeline": a.pipeline, "runs": r.runs, "full_error": r.full_error, "full_cosine": r.full_cosine,
            "suggested_exclude": r.layers.iter().take(r.suggested).map(|l| l.name.clone()).collect::<Vec<_>>(),
            "layers": layers,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "quant-report: {}  pipeline: {}  target: {}  ({} calibration run(s))",
        a.input.display(),
        a.pipeline,
        target.name,
        r.runs
    );
    println!("all layers quantised: output error {:.3e}, cosine {:.5}\n", r.full_error, r.full_cosine);
    println!("{:>4}  {:<8} {:>11} {:>9}  layer (only this one quantised)", "rank", "op", "error", "cosine");
    for (i, l) in r.layers.iter().enumerate() {
        println!("{:>4}  {:<8} {:>11.3e} {:>9.5}  {}", i + 1, l.op, l.error, l.cosine, l.name);
    }
    if r.suggested > 0 {
        let names: Vec<&str> = r.layers.iter().take(r.suggested).map(|l| l.name.as_str()).collect();
        println!(
            "\nsuggested: leave the {} most sensitive layer(s) float: `optc opt ... -p \"{}\" --exclude-auto {}` ({})",
            r.suggested,
            a.pipeline,
            r.suggested,
            names.join(", ")
        );
    } else {
        println!("\nno layer stands out (none is 4x as sensitive as the median): nothing to exclude");
    }
    Ok(())
}
