//! `optc run` and `optc verify`.

use anyhow::Context;
use clap::Args;
use optc::Model;
use optc::eval::inputs::{compare, random_inputs};
use optc::eval::{Evaluator, Value, npy};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Args)]
pub struct InputArgs {
    /// An input as NAME=FILE.npy (repeat for each input).
    #[arg(long = "input", value_name = "NAME=FILE")]
    inputs: Vec<String>,
    /// Use seeded random data for inputs not given with --input.
    #[arg(long)]
    random: bool,
    /// Bind symbolic dims for random inputs, e.g. --dim batch=1,seq=128.
    #[arg(long = "dim", value_name = "SYM=N", value_delimiter = ',')]
    dims: Vec<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Random integer inputs are drawn from [0, N).
    #[arg(long, default_value_t = 100)]
    int_high: i64,
}

#[derive(Args)]
pub struct RunArgs {
    /// The model.
    model: PathBuf,
    #[command(flatten)]
    inputs: InputArgs,
    /// Write every output to DIR/<name>.npy.
    #[arg(short = 'o', long = "output-dir")]
    output: Option<PathBuf>,
    /// Run N times and report the fastest and the median run (timing; outputs are the last run's).
    #[arg(long, default_value_t = 1, value_name = "N")]
    repeat: usize,
    /// Worker threads for the kernels (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The reference model.
    a: PathBuf,
    /// The model to check against it.
    b: PathBuf,
    #[command(flatten)]
    inputs: InputArgs,
    #[arg(long, default_value_t = 1e-4)]
    rtol: f64,
    #[arg(long, default_value_t = 1e-5)]
    atol: f64,
}

/// `--dim SYM=N` bindings (empty pieces, as from a trailing comma, are skipped).
pub fn parse_dims(dims: &[String]) -> anyhow::Result<HashMap<String, i64>> {
    dims.iter()
        .filter(|d| !d.trim().is_empty())
        .map(|d| {
            let (k, v) = d.split_once('=').with_context(|| format!("--dim '{d}' must be SYM=N"))?;
            Ok((
                k.trim().to_string(),
                v.trim().parse::<i64>().with_context(|| format!("--dim '{d}': N must be an integer"))?,
            ))
        })
        .collect()
}

fn gather_inputs(model: &optc::ir::Model, a: &InputArgs) -> anyhow::Result<HashMap<String, Value>> {
    let mut out = HashMap::new();
    for spec in &a.inputs {
        let (name, file) = spec.split_once('=').with_context(|| format!("--input '{spec}' must be NAME=FILE.npy"))?;
        let t = npy::read_npy(std::path::Path::new(file))?;
        out.insert(name.to_string(), Value::Tensor(t));
    }
    let g = &model.graph;
    let missing: Vec<String> = g
        .inputs
        .iter()
        .map(|d| g.value(d.value))
        .filter(|v| v.init.is_none() && !out.contains_key(&v.name))
        .map(|v| v.name.clone())
        .collect();
    if !missing.is_empty() {
        if !a.random {
            return Err(optc_usage(format!(
                "no data for input(s) {}: give --input NAME=FILE.npy or --random",
                missing.join(", ")
            )));
        }
        let dims = parse_dims(&a.dims)?;
        let rnd = random_inputs(g, &dims, a.seed, a.int_high)?;
        for name in missing {
            if let Some(v) = rnd.get(&name) {
                out.insert(name, v.clone());
            }
        }
    }
    Ok(out)
}

fn describe(v: &Value) -> String {
    match v {
        Value::Tensor(t) => {
            let stats = t
                .to_f64_vec()
                .filter(|x| !x.is_empty())
                .map(|x| {
                    let min = x.iter().copied().fold(f64::INFINITY, f64::min);
                    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let mean = x.iter().sum::<f64>() / x.len() as f64;
                    format!("  min {min:.6} max {max:.6} mean {mean:.6}")
                })
                .unwrap_or_default();
            format!("{}{:?}{stats}", t.dtype(), t.shape())
        }
        Value::Sequence(s) => format!("sequence of {} tensors", s.len()),
        Value::Optional(o) => {
            if o.is_some() {
                "optional (present)".into()
            } else {
                "optional (empty)".into()
            }
        }
    }
}

fn file_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect()
}

pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let model = Model::load(&a.model)?;
    let inputs = gather_inputs(model.ir(), &a.inputs)?;
    optc::eval::tune_allocator();
    let ev = Evaluator::new(model.ir())?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads.unwrap_or(0))
        .build()
        .context("starting the kernel thread pool")?;
    let mut times = Vec::new();
    let mut outs = Vec::new();
    for _ in 0..a.repeat.max(1) {
        let start = std::time::Instant::now();
        outs = pool.install(|| ev.run(&inputs))?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    for (name, v) in &outs {
        println!("{name}: {}", describe(v));
    }
    if times.len() == 1 {
        println!("ran in {:.2} ms", times[0]);
    } else {
        let mut sorted = times.clone();
        sorted.sort_by(f64::total_cmp);
        println!("ran {} times: fastest {:.2} ms, median {:.2} ms", sorted.len(), sorted[0], sorted[sorted.len() / 2]);
    }
    if let Some(dir) = &a.output {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, v) in &outs {
            if let Value::Tensor(t) = v {
                let p = dir.join(format!("{}.npy", file_name(name)));
                npy::write_npy(&p, t)?;
            }
        }
        println!("outputs written to {}", dir.display());
    }
    Ok(())
}

pub fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let ma = Model::load(&a.a)?;
    let mb = Model::load(&a.b)?;
    let (ga, gb) = (&ma.ir().graph, &mb.ir().graph);
    let names = |g: &optc::ir::Graph, list: &[optc::ir::Decl]| -> Vec<String> {
        list.iter().map(|d| g.value(d.value).name.clone()).collect()
    };
    let (ia, ib) = (names(ga, &ga.inputs), names(gb, &gb.inputs));
    for n in &ia {
        if !ib.contains(n) && ga.value(ga.find_value(n).expect("listed")).init.is_none() {
            return Err(optc_usage(format!("input '{n}' of {} is not an input of {}", a.a.display(), a.b.display())));
        }
    }
    let (oa, ob) = (names(ga, &ga.outputs), names(gb, &gb.outputs));
    if oa != ob {
        let only_a: Vec<&String> = oa.iter().filter(|n| !ob.contains(n)).collect();
        let only_b: Vec<&String> = ob.iter().filter(|n| !oa.contains(n)).collect();
        return Err(optc_usage(format!(
            "the models' outputs differ: only in {}: {only_a:?}; only in {}: {only_b:?}",
            a.a.display(),
            a.b.display()
        )));
    }
    let inputs = gather_inputs(ma.ir(), &a.inputs)?;
    optc::eval::tune_allocator();
    let outs_a = Evaluator::new(ma.ir())?.run(&inputs)?;
    let inputs_b: HashMap<String, Value> = inputs.into_iter().filter(|(k, _)| ib.contains(k)).collect();
    let outs_b = Evaluator::new(mb.ir())?.run(&inputs_b)?;
    let mut ok = true;
    println!("{:<28} {:>12} {:>12} {:>10} {:>8}  verdict", "output", "max|diff|", "max rel", "cosine", "argmax");
    for ((name, va), (_, vb)) in outs_a.iter().zip(&outs_b) {
        let (Some(ta), Some(tb)) = (va.tensor(), vb.tensor()) else {
            let same = va == vb;
            ok &= same;
            println!("{name:<28} {:>47}  {}", "(non-tensor)", if same { "ok" } else { "DIFFERENT" });
            continue;
        };
        match compare(ta, tb) {
            Ok(d) => {
                let pass = d.within(ta, tb, a.rtol, a.atol);
                ok &= pass;
                println!(
                    "{name:<28} {:>12.3e} {:>12.3e} {:>10.6} {:>7.1}%  {}",
                    d.max_abs,
                    d.max_rel,
                    d.cosine,
                    d.argmax_agree * 100.0,
                    if d.identical {
                        "identical"
                    } else if pass {
                        "ok"
                    } else {
                        "OUT OF TOLERANCE"
                    }
                );
            }
            Err(e) => {
                ok = false;
                println!("{name:<28} {e}");
            }
        }
    }
    if !ok {
        eprintln!("outputs differ beyond rtol={} atol={}", a.rtol, a.atol);
        std::process::exit(1);
    }
    Ok(())
}

fn optc_usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg))
}

/// A mismatch in what the user gave (exit code 2).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageError {}
