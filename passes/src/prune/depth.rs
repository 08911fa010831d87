//! `prune-depth`: training-free depth pruning (the training-free part of UPDP).
//!
//! Candidates are the residual blocks of [`super::blocks`] (and, with `merge`, single activations). Each removal is chosen greedily on
//! calibration data and the remaining blocks are re-scored after it:
//! - `score=output` (default): every candidate is bypassed in turn and the whole model is run;
//!   its score is the relative squared error of all float outputs against the original model's,
//!   `sum |y' - y|^2 / sum |y|^2` over the calibration runs.
//! - `score=block`: one run per removal; a block's score is `1 - cos(x, x + f(x))` at its own
//!   output (cheap on large models; the final model-output error is still measured).
//!
//! How many blocks go: `blocks=N`, `budget=latency:F` (LIFE-predicted latency on the target at
//! most `F` times the original's; candidates are then ranked by error per predicted second
//! saved), `budget=params:F`, or `max_error=E` (remove while the output error stays at most `E`;
//! the default when no criterion is given). `refit=true` refits the first linear layer after each
//! removed block by least squares on the calibration activations ([`super::refit`]) and keeps
//! the refit only where it lowers the measured output error.
//!
//! Besides whole blocks, `merge=true` (default, with `score=output`) offers UPDP's other
//! removal: one activation alone, the two layers around it merged into one ([`super::merge`]),
//! where LIFE predicts the merged layer faster.
//!
//! What the paper does and optc does not: UPDP trains a supernet, removes activations
//! progressively and fine-tunes; none of that is training-free. optc removes an activation in one
//! step and measures what that costs on calibration data.

use super::blocks::{self, Block};
use super::{merge, refit};
use crate::calib::{self, Feed};
use crate::{Exactness, OptionSpec, Pass, PassContext, PassError, PassOptions, PassOutcome};
use optc_eval::{Evaluator, Observer, Value};
use optc_ir::Model;
use std::collections::HashMap;

/// Output error allowed when no criterion is given.
pub const DEFAULT_MAX_ERROR: f64 = 0.01;

pub struct PruneDepth;

const OPTIONS: &[OptionSpec] = &[
    OptionSpec { name: "blocks", default: "", help: "remove exactly this many blocks" },
    OptionSpec {
        name: "budget",
        default: "",
        help: "latency:F or params:F - remove blocks until the LIFE-predicted latency (or parameter count) is at most F of the original's",
    },
    OptionSpec {
        name: "max_error",
        default: "",
        help: "remove blocks while the relative output error stays at most this (default 0.01 when no criterion is given)",
    },
    OptionSpec {
        name: "score",
        default: "output",
        help: "output (run the model per candidate) or block (1 - cos at the block)",
    },
    OptionSpec {
        name: "refit",
        default: "false",
        help: "least-squares refit of the next linear layer after each removed block",
    },
    OptionSpec {
        name: "merge",
        default: "true",
        help: "also consider removing an activation alone and merging the two layers around it (where LIFE predicts that faster)",
    },
    OptionSpec { name: "keep", default: "", help: "block-name substrings never to remove, separated by '|'" },
    OptionSpec {
        name: "runs",
        default: "4",
        help: "random input sets to score on when the context has no calibration data",
    },
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Goal {
    Blocks(usize),
    Latency(f64),
    Params(f64),
    MaxError(f64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Score {
    Output,
    Block,
}

struct Config {
    goal: Goal,
    score: Score,
    refit: bool,
    merge: bool,
    keep: Vec<String>,
    runs: usize,
}

fn bad(message: String) -> PassError {
    PassError::BadOption { pass: "prune-depth".into(), message }
}

fn failed(message: String) -> PassError {
    PassError::Failed { pass: "prune-depth".into(), message }
}

impl Config {
    fn parse(opts: &PassOptions) -> Result<Config, PassError> {
        let given = |k: &str| opts.get(k).is_some_and(|v| !v.is_empty());
        let n_goals = ["blocks", "budget", "max_error"].iter().filter(|k| given(k)).count();
        if n_goals > 1 {
            return Err(bad("takes one of blocks=, budget= and max_error=, not several".into()));
        }
        let goal = if given("blocks") {
            Goal::Blocks(opts.usize("blocks")?)
        } else if given("budget") {
            let raw = opts.get("budget").unwrap_or("");
            let (what, frac) = raw.split_once(':').ok_or_else(|| {
                bad(format!("budget must be latency:F or params:F with F between 0 and 1, got '{raw}'"))
            })?;
            let f: f64 =
                frac.trim().parse().map_err(|_| bad(format!("budget fraction must be a number, got '{frac}'")))?;
            if !(f > 0.0 && f < 1.0) {
                return Err(bad(format!("budget={raw}: the fraction must be between 0 and 1 (exclusive)")));
            }
            match what.trim() {
                "latency" => Goal::Latency(f),
                "params" => Goal::Params(f),
                other => return Err(bad(format!("budget '{other}' is unknown; use latency:F or params:F"))),
            }
        } else if given("max_error") {
            let e = opts.f64("max_error")?;
            if !(e >= 0.0 && e.is_finite()) {
                return Err(bad(format!("max_error must be a non-negative number, got {e}")));
            }
            Goal::MaxError(e)
        } else {
            Goal::MaxError(DEFAULT_MAX_ERROR)
        };
        let score = match opts.get("score").unwrap_or("output") {
            "output" => Score::Output,
            "block" => Score::Block,
            other => return Err(bad(format!("score must be output or block, got '{other}'"))),
        };
        let keep = opts.get("keep").unwrap_or("").split('|').filter(|s| !s.is_empty()).map(String::from).collect();
        Ok(Config {
            goal,
            score,
            refit: opts.bool("refit")?,
            merge: opts.bool("merge")?,
            keep,
            runs: opts.usize("runs")?.max(1),
        })
    }
}

impl Pass for PruneDepth {
    fn name(&self) -> &str {
        "prune-depth"
    }
    fn description(&self) -> &str {
        "remove whole residual blocks (CNN blocks, attention/MLP halves of transformer layers) chosen on calibration data and LIFE"
    }
    fn options(&self) -> &[OptionSpec] {
        OPTIONS
    }
    fn exactness(&self) -> Exactness {
        Exactness::Lossy
    }
    fn run(&self, model: &mut Model, cx: &mut PassContext, opts: &PassOptions) -> Result<PassOutcome, PassError> {
        let cfg = Config::parse(opts)?;
        let removed = prune(model, cx, &cfg)?;
        Ok(PassOutcome { rewrites: removed })
    }
}

/// The outputs of `model` on every feed (float outputs only, flattened), in feed order.
pub fn run_all(model: &Model, feeds: &[Feed]) -> Result<Vec<Vec<Vec<f32>>>, String> {
    let ev = Evaluator::new(model).map_err(|e| e.to_string())?;
    let mut all = Vec::with_capacity(feeds.len());
    for f in feeds {
        let outs = ev.run(f).map_err(|e| e.to_string())?;
        all.push(float_outputs(&outs));
    }
    Ok(all)
}

/// The float outputs of one run, flattened (an empty vector for each other output).
pub fn float_outputs(outs: &[(String, optc_eval::Value)]) -> Vec<Vec<f32>> {
    outs.iter()
        .map(|(_, v)| match v.tensor() {
            Some(t) if t.dtype().is_float() => {
                t.to_f64_vec().unwrap_or_default().into_iter().map(|x| x as f32).collect()
            }
            _ => Vec::new(),
        })
        .collect()
}

/// Relative squared error and cosine similarity of `got` against `reference`, over all runs and
/// float outputs.
pub fn output_error(reference: &[Vec<Vec<f32>>], got: &[Vec<Vec<f32>>]) -> (f64, f64) {
    let (mut num, mut den, mut dot, mut gg) = (0f64, 0f64, 0f64, 0f64);
    for (r, g) in reference.iter().zip(got) {
        for (a, b) in r.iter().zip(g) {
            if a.len() != b.len() {
                return (f64::INFINITY, 0.0);
            }
            for (&x, &y) in a.iter().zip(b) {
                let (x, y) = (x as f64, y as f64);
                if !y.is_finite() {
                    return (f64::INFINITY, 0.0);
                }
                num += (y - x) * (y - x);
                den += x * x;
                dot += x * y;
                gg += y * y;
            }
        }
    }
    let err = if den > 0.0 { num / den } else { num };
    let cos = if den > 0.0 && gg > 0.0 { dot / (den.sqrt() * gg.sqrt()) } else { 1.0 };
    (err, cos)
}

/// `1 - cos(x, y)` of each block's skip input and output on the feeds.
fn block_scores(model: &Model, feeds: &[Feed], blocks: &[Block]) -> Result<Vec<f64>, String> {
    struct Obs {
        want: HashMap<String, Vec<usize>>,
        // per block: (x.y, x.x, y.y), with the last skip value seen per block
        acc: Vec<(f64, f64, f64)>,
        pending: Vec<Option<Vec<f32>>>,
        is_skip: HashMap<String, Vec<usize>>,
    }
    impl Observer for Obs {
        fn wants(&self, name: &str) -> bool {
            self.want.contains_key(name)
        }
        fn observe(&mut self, name: &str, value: &Value) {
            let Some(t) = value.tensor() else { return };
            let data: Vec<f32> = t.to_f64_vec().unwrap_or_default().into_iter().map(|x| x as f32).collect();
            if let Some(ids) = self.is_skip.get(name) {
                for &i in ids {
                    self.pending[i] = Some(data.clone());
                }
            }
            let outs: Vec<usize> = self.want.get(name).cloned().unwrap_or_default();
            for i in outs {
                if self.is_skip.get(name).is_some_and(|v| v.contains(&i)) {
                    continue;
                }
                if let Some(x) = self.pending[i].take() {
                    let a = &mut self.acc[i];
                    for (&p, &q) in x.iter().zip(&data) {
                        a.0 += p as f64 * q as f64;
                        a.1 += p as f64 * p as f64;
                        a.2 += q as f64 * q as f64;
                    }
                }
            }
        }
    }
    let g = &model.graph;
    let mut obs = Obs {
        want: HashMap::new(),
        acc: vec![(0.0, 0.0, 0.0); blocks.len()],
        pending: vec![None; blocks.len()],
        is_skip: HashMap::new(),
    };
    for (i, b) in blocks.iter().enumerate() {
        let (x, y) = (g.value(b.skip).name.clone(), g.value(b.out).name.clone());
        obs.want.entry(x.clone()).or_default().push(i);
        obs.want.entry(y).or_default().push(i);
        obs.is_skip.entry(x).or_default().push(i);
    }
    let ev = Evaluator::new(model).map_err(|e| e.to_string())?;
    for f in feeds {
        ev.run_observed(f, Some(&mut obs)).map_err(|e| e.to_string())?;
    }
    Ok(obs
        .acc
        .iter()
        .map(|&(xy, xx, yy)| if xx > 0.0 && yy > 0.0 { 1.0 - xy / (xx.sqrt() * yy.sqrt()) } else { 1.0 })
        .collect())
}

/// Drops the blocks whose skip input and output shapes inference could not prove equal and
/// that differ when the model runs on `feed` (or that the run does not compute).
fn check_shapes(model: &Model, feed: &Feed, blocks: Vec<Block>, cx: &mut PassContext) -> Result<Vec<Block>, String> {
    struct Shapes(HashMap<String, Option<Vec<usize>>>);
    impl Observer for Shapes {
        fn wants(&self, name: &str) -> bool {
            self.0.contains_key(name)
        }
        fn observe(&mut self, name: &str, value: &Value) {
            self.0.insert(name.to_string(), value.tensor().map(|t| t.shape()));
        }
    }
    let g = &model.graph;
    let names = |b: &Block| (g.value(b.skip).name.clone(), g.value(b.out).name.clone());
    let mut obs = Shapes(HashMap::new());
    for b in blocks.iter().filter(|b| !b.shape_proven) {
        let (x, y) = names(b);
        obs.0.insert(x, None);
        obs.0.insert(y, None);
    }
    if obs.0.is_empty() {
        return Ok(blocks);
    }
    Evaluator::new(model).map_err(|e| e.to_string())?.run_observed(feed, Some(&mut obs)).map_err(|e| e.to_string())?;
    let mut keep = Vec::new();
    for b in blocks {
        if b.shape_proven {
            keep.push(b);
            continue;
        }
        let (x, y) = names(&b);
        match (obs.0.get(&x).cloned().flatten(), obs.0.get(&y).cloned().flatten()) {
            (Some(sx), Some(sy)) if sx == sy => keep.push(b),
            (sx, sy) => {
                let name = b.name.clone();
                cx.note(|| format!("Add '{name}' is not a prunable block: on the calibration data its skip input is {sx:?} but its output {sy:?}"));
            }
        }
    }
    Ok(keep)
}

/// A block bypassed in a copy of `model`.
fn without(model: &Model, block: &Block) -> Option<Model> {
    let mut m = model.clone();
    blocks::bypass(&mut m.graph, block).then_some(m)
}

struct Candidate {
    name: String,
    /// `conv`, `attention`, `mlp` (whole residual blocks) or `activation` (a merge).
    kind: &'static str,
    nodes: usize,
    weights: u64,
    /// The residual stream value after a removed block (for refit); None for a merge.
    out_name: Option<String>,
    model: Model,
    /// The score ranking it (output error, or 1 - cos at the block).
    score: f64,
    latency: f64,
    params: u64,
}

/// How a report names a candidate kind.
fn what(kind: &str) -> String {
    if kind == "activation" { "activation (layers merged)".into() } else { format!("{kind} block") }
}

/// Removes blocks from `model` as `cfg` says; returns how many.
fn prune(model: &mut Model, cx: &mut PassContext, cfg: &Config) -> Result<usize, PassError> {
    let first = blocks::find(model);
    for (name, why) in &first.rejected {
        cx.note(|| format!("Add '{name}' is not a prunable block: {why}"));
    }
    let merges = if cfg.merge && cfg.score == Score::Output { merge::find(&model.graph).len() } else { 0 };
    if first.blocks.is_empty() && merges == 0 {
        cx.note(|| "no prunable residual blocks found: nothing removed".to_string());
        if let Goal::Blocks(n) = cfg.goal
            && n > 0
        {
            return Err(failed(format!("blocks={n}: the model has no prunable residual blocks")));
        }
        return Ok(0);
    }
    let n_cands =
        first.blocks.iter().filter(|b| !cfg.keep.iter().any(|k| b.name.contains(k.as_str()))).count() + merges;
    if let Goal::Blocks(n) = cfg.goal
        && n > n_cands
    {
        return Err(failed(format!(
            "blocks={n}: the model has only {n_cands} prunable block(s) and mergeable activation(s) (`optc inspect --blocks` lists them)"
        )));
    }
    if matches!(cfg.goal, Goal::Blocks(0)) {
        return Ok(0);
    }
    let feeds = calib::feeds(model, cx, cfg.runs, "prune-depth").map_err(failed)?;
    if feeds.is_empty() {
        return Err(failed("no calibration inputs".into()));
    }
    let dims = calib::dims_from_feed(model, feeds.first(), &cx.dims);
    let opset = model.opset("").unwrap_or(1);
    let target = cx.target.clone();
    let predict = |m: &Model| optc_cost::estimate(&m.graph, opset, &target, &dims).totals.time_s;
    let reference = run_all(model, &feeds).map_err(|e| failed(format!("running the original model: {e}")))?;
    let original = model.clone();
    let lat0 = predict(model);
    let params0 = model.graph.param_count().max(1);
    let mut current = model.clone();
    let mut removed = 0usize;
    let mut error = 0.0f64;
    let mut last_scores: HashMap<String, f64> = HashMap::new();
    loop {
        let (lat_now, params_now) = (predict(&current), current.graph.param_count());
        match cfg.goal {
            Goal::Blocks(n) if removed >= n => break,
            Goal::Latency(f) if lat_now <= f * lat0 => break,
            Goal::Params(f) if params_now as f64 <= f * params0 as f64 => break,
            _ => {}
        }
        let det = blocks::find(&current);
        let cands: Vec<Block> =
            det.blocks.into_iter().filter(|b| !cfg.keep.iter().any(|k| b.name.contains(k.as_str()))).collect();
        let cands = check_shapes(&current, &feeds[0], cands, cx).map_err(failed)?;
        let any_merge = cfg.merge && cfg.score == Score::Output && !merge::find(&current.graph).is_empty();
        if cands.is_empty() && !any_merge {
            match cfg.goal {
                Goal::Latency(f) => {
                    return Err(failed(format!(
                        "budget=latency:{f}: removing every prunable block leaves {:.1}% of the predicted latency on {}",
                        100.0 * lat_now / lat0.max(1e-30),
                        cx.target.name
                    )));
                }
                Goal::Params(f) => {
                    return Err(failed(format!(
                        "budget=params:{f}: removing every prunable block leaves {:.1}% of the parameters",
                        100.0 * params_now as f64 / params0 as f64
                    )));
                }
                Goal::Blocks(n) => {
                    cx.report(format!("blocks={n}: no candidate is left after {removed} removal(s)"));
                    break;
                }
                _ => break,
            }
        }
        let block_score = match cfg.score {
            Score::Block => Some(block_scores(&current, &feeds, &cands).map_err(failed)?),
            Score::Output => None,
        };
        let mut scored: Vec<Candidate> = Vec::new();
        for (i, b) in cands.into_iter().enumerate() {
            let Some(m) = without(&current, &b) else {
                cx.note(|| format!("block '{}' writes a graph output that cannot be rerouted: kept", b.name));
                continue;
            };
            let score = match &block_score {
                Some(s) => s[i],
                None => {
                    let got = run_all(&m, &feeds).map_err(|e| failed(format!("without block '{}': {e}", b.name)))?;
                    output_error(&reference, &got).0
                }
            };
            let (latency, params) = (predict(&m), m.graph.param_count());
            let out_name = Some(current.graph.value(b.out).name.clone());
            scored.push(Candidate {
                name: b.name.clone(),
                kind: b.kind.as_str(),
                nodes: b.branch.len() + 1,
                weights: b.params,
                out_name,
                model: m,
                score,
                latency,
                params,
            });
        }
        // Activation removals with the two layers merged, where LIFE predicts them cheaper.
        if cfg.merge && cfg.score == Score::Output {
            for c in merge::find(&current.graph) {
                let name = merge::label(&current.graph, &c);
                if cfg.keep.iter().any(|k| name.contains(k.as_str())) {
                    continue;
                }
                let mut m = current.clone();
                if !merge::merge(&mut m.graph, &c) {
                    continue;
                }
                let latency = predict(&m);
                if latency >= lat_now {
                    let pct = 100.0 * (latency - lat_now) / lat0.max(1e-30);
                    cx.note(|| format!("activation '{name}': merging its two layers would not be faster (+{pct:.1}% predicted latency): not a candidate"));
                    continue;
                }
                let got = run_all(&m, &feeds).map_err(|e| failed(format!("without activation '{name}': {e}")))?;
                let score = output_error(&reference, &got).0;
                let params = m.graph.param_count();
                let weights = merge::params(&current.graph, &c);
                scored.push(Candidate {
                    name,
                    kind: "activation",
                    nodes: 3 + usize::from(c.bias_add.is_some()),
                    weights,
                    out_name: None,
                    model: m,
                    score,
                    latency,
                    params,
                });
            }
        }
        if scored.is_empty() {
            break;
        }
        // Rank: lowest score; under a budget, lowest score per unit of what the budget counts.
        let rank = |c: &Candidate| -> f64 {
            let saved = match cfg.goal {
                Goal::Latency(_) => (lat_now - c.latency) / lat0.max(1e-30),
                Goal::Params(_) => params_now.saturating_sub(c.params) as f64 / params0 as f64,
                _ => return c.score,
            };
            if saved <= 0.0 { f64::INFINITY } else { (c.score + 1e-9) / saved }
        };
        scored.sort_by(|a, b| rank(a).total_cmp(&rank(b)));
        if cx.explain {
            for c in &scored {
                let (name, kind, score) = (c.name.clone(), c.kind, c.score);
                let saved = 100.0 * (lat_now - c.latency) / lat0.max(1e-30);
                cx.note(|| {
                    format!(
                        "step {}: {} '{name}' scores {score:.3e} ({}), saves {saved:.1}% predicted latency",
                        removed + 1,
                        what(kind),
                        match cfg.score {
                            Score::Output => "output error without it",
                            Score::Block => "1 - cos at the block",
                        }
                    )
                });
            }
        }
        let best = scored.swap_remove(0);
        if matches!(cfg.goal, Goal::Latency(_) | Goal::Params(_)) && rank(&best).is_infinite() {
            return Err(failed(format!(
                "budget cannot be met: no remaining block lowers the predicted latency or parameters (at {:.1}% of the latency)",
                100.0 * lat_now / lat0.max(1e-30)
            )));
        }
        last_scores = std::iter::once(&best).chain(scored.iter()).map(|c| (c.name.clone(), c.score)).collect();
        let mut next = best.model;
        let out_name = best.out_name.clone();
        // The model-output error after this removal (block scores are only a ranking).
        let mut err = match cfg.score {
            Score::Output => best.score,
            Score::Block => output_error(&reference, &run_all(&next, &feeds).map_err(failed)?).0,
        };
        if let Goal::MaxError(limit) = cfg.goal
            && err > limit
        {
            break;
        }
        if !cx.rewrite() {
            break;
        }
        let mut refit_note = String::new();
        if cfg.refit {
            // Fit on some runs, judge on the others: a refit that only fits the calibration
            // data is not kept.
            let (fit, held): (Vec<usize>, Vec<usize>) = match feeds.len() {
                1 => (vec![0], vec![0]),
                2 => (vec![0], vec![1]),
                n => (0..n).partition(|i| i % 3 != 2),
            };
            let pick = |ix: &[usize]| -> Vec<Feed> { ix.iter().map(|&i| feeds[i].clone()).collect() };
            let (fit_feeds, held_feeds) = (pick(&fit), pick(&held));
            let held_ref: Vec<Vec<Vec<f32>>> = held.iter().map(|&i| reference[i].clone()).collect();
            let fitted = match &out_name {
                Some(o) => refit::refit_next(&original, &current, &next, o, &fit_feeds),
                None => Ok(None),
            };
            match fitted {
                Ok(Some((refitted, what))) => {
                    let before = output_error(&held_ref, &run_all(&next, &held_feeds).map_err(failed)?).0;
                    let after = output_error(&held_ref, &run_all(&refitted, &held_feeds).map_err(failed)?).0;
                    let judged =
                        if feeds.len() == 1 { "on the calibration run (no held-out run)" } else { "on held-out runs" };
                    if after < before {
                        refit_note = format!("; refit {what}: error {before:.3e} -> {after:.3e} {judged}");
                        next = refitted;
                        err = output_error(&reference, &run_all(&next, &feeds).map_err(failed)?).0;
                    } else {
                        refit_note = format!(
                            "; refit of {what} did not lower the error {judged} ({before:.3e} -> {after:.3e}): not kept"
                        );
                    }
                }
                Ok(None) => refit_note = "; no linear layer after it to refit".into(),
                Err(e) => refit_note = format!("; refit skipped: {e}"),
            }
        }
        let lat_next = predict(&next);
        cx.report(format!(
            "removed {} '{}' ({} nodes, {} weights): output error {:.3e}, predicted latency on {} {:.1}% -> {:.1}%{}",
            what(best.kind),
            best.name,
            best.nodes,
            best.weights,
            err,
            cx.target.name,
            100.0 * lat_now / lat0.max(1e-30),
            100.0 * lat_next / lat0.max(1e-30),
            refit_note
        ));
        current = next;
        error = err;
        removed += 1;
    }
    if cx.explain {
        let why = match cfg.goal {
            Goal::Blocks(n) => format!("blocks={n} were removed already"),
            Goal::Latency(f) => format!("the latency budget {f} is met"),
            Goal::Params(f) => format!("the parameter budget {f} is met"),
            Goal::MaxError(e) => format!("removing it would take the output error above max_error={e}"),
        };
        let mut kept: Vec<(String, &str)> =
            blocks::find(&current).blocks.into_iter().map(|b| (b.name, b.kind.as_str())).collect();
        if cfg.merge && cfg.score == Score::Output {
            kept.extend(merge::find(&current.graph).iter().map(|c| (merge::label(&current.graph, c), "activation")));
        }
        for (name, kind) in kept {
            let Some(score) = last_scores.get(&name) else { continue };
            let kind = what(kind);
            cx.note(|| format!("kept {kind} '{name}', score {score:.3e}: {why}"));
        }
    }
    if removed == 0 {
        cx.report("no block removed".to_string());
    } else {
        let (_, cos) = output_error(&reference, &run_all(&current, &feeds).map_err(failed)?);
        cx.report(format!(
            "{removed} block(s) removed: output error {error:.3e} (cosine {cos:.5}) on {} calibration run(s); predicted latency {:.1}% of the original on {}",
            feeds.len(),
            100.0 * predict(&current) / lat0.max(1e-30),
            cx.target.name
        ));
    }
    *model = current;
    crate::dce::Dce.run(model, cx, &PassOptions::default())?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::f32_value;
    use crate::{Calibration, PassManager, PassRegistry};
    use optc_ir::builder::{GraphBuilder, Rng};
    use optc_ir::{Attribute, DType, Dim, Op, Type};

    const ROWS: i64 = 16;
    const D: i64 = 32;

    /// `h = x; h = h + Relu(h W1_i) W2_i` for each scale in `scales`; `y = h Wout`.
    fn residual_mlp(scales: &[f32]) -> Model {
        let mut rng = Rng::new(7);
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(ROWS), Dim::known(D)]).unwrap();
        let mut h = x;
        for (i, &s) in scales.iter().enumerate() {
            let w1: Vec<f32> = rng.vec((D * 2 * D) as usize, 0.3);
            let w2: Vec<f32> = rng.vec((2 * D * D) as usize, 0.3).into_iter().map(|v| v * s).collect();
            let w1 = b.init_f32(&format!("w1_{i}"), &[D, 2 * D], &w1).unwrap();
            let w2 = b.init_f32(&format!("w2_{i}"), &[2 * D, D], &w2).unwrap();
            let a = b.op(Op::MatMul, &[h, w1], vec![]).unwrap();
            let r = b.op(Op::Relu, &[a], vec![]).unwrap();
            let f = b.op(Op::MatMul, &[r, w2], vec![]).unwrap();
            h = b.op(Op::Add, &[h, f], vec![]).unwrap();
        }
        let wo = b.init_f32("wout", &[D, D], &rng.vec((D * D) as usize, 0.3)).unwrap();
        let y = b.op(Op::MatMul, &[h, wo], vec![]).unwrap();
        b.output(y, "y", Some(Type::tensor(DType::F32, vec![Dim::known(ROWS), Dim::known(D)]))).unwrap();
        Model::new(b.finish(), 17)
    }

    fn feeds(n: usize) -> Vec<Feed> {
        let mut rng = Rng::new(11);
        (0..n)
            .map(|_| {
                let data: Vec<f32> = rng.vec((ROWS * D) as usize, 2.0);
                [("x".to_string(), f32_value(&[ROWS, D], &data))].into_iter().collect()
            })
            .collect()
    }

    fn run(model: &mut Model, pipeline: &str) -> Result<PassContext, PassError> {
        let mut cx = PassContext::new(optc_cost::Target::cpu());
        cx.explain = true;
        cx.calib = Some(Calibration { feeds: feeds(4) });
        PassManager::new(PassRegistry::with_builtins()).run(model, pipeline, &mut cx)?;
        optc_ir::verify::verify_model(model).unwrap();
        Ok(cx)
    }

    fn count(model: &Model, op: Op) -> usize {
        model.graph.nodes().filter(|&n| model.graph.node(n).op == op).count()
    }

    #[test]
    fn finds_residual_blocks() {
        let m = residual_mlp(&[1.0, 1.0, 1.0]);
        let det = blocks::find(&m);
        assert_eq!(det.blocks.len(), 3, "{:?}", det.rejected);
        for b in &det.blocks {
            assert_eq!(b.kind, super::super::blocks::BlockKind::Mlp);
            assert_eq!(b.branch.len(), 3);
            assert_eq!(b.params, (2 * D * D * 2) as u64);
            assert!(b.shape_proven);
        }
    }

    #[test]
    fn removes_the_block_that_matters_least() {
        let mut m = residual_mlp(&[1.0, 0.01, 1.0]);
        let (want, _) = (blocks::find(&m).blocks[1].name.clone(), ());
        let cx = run(&mut m, "prune-depth(blocks=1,merge=false)").unwrap();
        assert_eq!(count(&m, Op::Add), 2);
        assert_eq!(count(&m, Op::MatMul), 5);
        let reports: Vec<&str> = cx.reports().iter().map(|(_, l)| l.as_str()).collect();
        assert!(reports[0].contains(&format!("'{want}'")), "{reports:?}");
        // The tiny block's removal barely changes the output.
        let err: f64 = reports[0].split("output error ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
        assert!(err < 1e-3, "{err}");
        assert!(cx.explanations().iter().any(|(_, l)| l.starts_with("kept mlp block")));
    }

    #[test]
    fn max_error_stops_before_the_limit() {
        let mut m = residual_mlp(&[1.0, 0.01, 0.02]);
        run(&mut m, "prune-depth(max_error=0.001)").unwrap();
        // The two small blocks go; the big one would exceed the limit.
        assert_eq!(count(&m, Op::Add), 1);
    }

    #[test]
    fn latency_budget_is_met() {
        let mut m = residual_mlp(&[1.0, 1.0, 1.0]);
        let cx = PassContext::new(optc_cost::Target::cpu());
        let before = cx.predict(&m);
        run(&mut m, "prune-depth(budget=latency:0.6)").unwrap();
        let after = cx.predict(&m);
        assert!(after <= 0.6 * before, "{after} vs {before}");
        assert!(count(&m, Op::Add) < 3);
    }

    #[test]
    fn bad_options_are_clear_errors() {
        let mut m = residual_mlp(&[1.0, 1.0]);
        let e = run(&mut m, "prune-depth(blocks=5,merge=false)").err().unwrap().to_string();
        assert!(e.contains("only 2 prunable block"), "{e}");
        let e = run(&mut m, "prune-depth(blocks=5)").err().unwrap().to_string();
        assert!(e.contains("only 4 prunable block(s) and mergeable activation(s)"), "{e}");
        let e = run(&mut m, "prune-depth(budget=latency:2)").err().unwrap().to_string();
        assert!(e.contains("between 0 and 1"), "{e}");
        let e = run(&mut m, "prune-depth(blocks=1,max_error=0.1)").err().unwrap().to_string();
        assert!(e.contains("one of"), "{e}");
        let e = run(&mut m, "prune-depth(budget=flops:0.5)").err().unwrap().to_string();
        assert!(e.contains("unknown"), "{e}");
    }

    #[test]
    fn a_block_read_outside_its_branch_is_not_prunable() {
        // h1 = x + f(x), and f's hidden activation is also a graph output.
        let mut rng = Rng::new(3);
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(ROWS), Dim::known(D)]).unwrap();
        let w = b.init_f32("w", &[D, D], &rng.vec((D * D) as usize, 0.3)).unwrap();
        let a = b.op(Op::MatMul, &[x, w], vec![]).unwrap();
        let r = b.op(Op::Relu, &[a], vec![]).unwrap();
        let h = b.op(Op::Add, &[x, r], vec![]).unwrap();
        let other = b.op(Op::Sigmoid, &[a], vec![]).unwrap();
        b.output(h, "y", None).unwrap();
        b.output(other, "z", None).unwrap();
        let m = Model::new(b.finish(), 17);
        let det = blocks::find(&m);
        assert!(det.blocks.is_empty());
        assert!(det.rejected[0].1.contains("also read by Sigmoid"), "{:?}", det.rejected);
    }

    #[test]
    fn skip_norm_bypass_is_exact() {
        // y = SkipLayerNormalization(f(x), x) with the block removed must be LayerNorm(x).
        let build = |with_block: bool| {
            let rng = &mut Rng::new(5);
            let mut b = GraphBuilder::new("g");
            let x = b.input("x", DType::F32, vec![Dim::known(ROWS), Dim::known(D)]).unwrap();
            let gamma = b.init_f32("gamma", &[D], &rng.vec(D as usize, 1.0)).unwrap();
            let beta = b.init_f32("beta", &[D], &rng.vec(D as usize, 1.0)).unwrap();
            let y = if with_block {
                let w = b.init_f32("w", &[D, D], &rng.vec((D * D) as usize, 0.3)).unwrap();
                let f = b.op(Op::MatMul, &[x, w], vec![]).unwrap();
                let op = Op::from_onnx("com.microsoft", "SkipLayerNormalization");
                b.op(op, &[f, x, gamma, beta], vec![Attribute::float("epsilon", 1e-5)]).unwrap()
            } else {
                b.op(Op::LayerNormalization, &[x, gamma, beta], vec![Attribute::float("epsilon", 1e-5)]).unwrap()
            };
            b.output(y, "y", None).unwrap();
            let mut m = Model::new(b.finish(), 17);
            m.opset_imports.push(optc_ir::OpsetImport::new("com.microsoft", 1));
            m
        };
        let mut with = build(true);
        let reference = build(false);
        let det = blocks::find(&with);
        assert_eq!(det.blocks.len(), 1, "{:?}", det.rejected);
        assert!(blocks::bypass(&mut with.graph, &det.blocks[0]));
        let fs = feeds(2);
        let (a, b) = (run_all(&with, &fs).unwrap(), run_all(&reference, &fs).unwrap());
        let (err, _) = output_error(&b, &a);
        assert!(err < 1e-10, "{err}");
    }

    #[test]
    fn refit_lowers_the_error_of_the_next_layer() {
        let m = residual_mlp(&[1.0, 1.0]);
        let fs = feeds(6);
        let reference = run_all(&m, &fs).unwrap();
        let det = blocks::find(&m);
        let block = &det.blocks[1];
        let out = m.graph.value(block.out).name.clone();
        let pruned = without(&m, block).unwrap();
        let (e0, _) = output_error(&reference, &run_all(&pruned, &fs).unwrap());
        let (refitted, what) = refit::refit_next(&m, &m, &pruned, &out, &fs).unwrap().unwrap();
        assert!(what.contains("MatMul"), "{what}");
        let (e1, _) = output_error(&reference, &run_all(&refitted, &fs).unwrap());
        assert!(e1 < 0.5 * e0, "{e1} vs {e0}");
    }
}

#[cfg(test)]
mod merge_tests {
    use super::*;
    use crate::test_support::f32_value;
    use optc_ir::builder::{GraphBuilder, Rng};
    use optc_ir::{Attribute, DType, Dim, Op, Type};

    fn positive(rng: &mut Rng, n: usize) -> Vec<f32> {
        rng.vec(n, 1.0).into_iter().map(|v| v.abs() + 0.01).collect()
    }

    /// With positive inputs, weights and biases the Relu is the identity, so merging the two
    /// layers around it must give the same outputs.
    fn check_exact(m: &Model, x: Value) {
        let chains = merge::find(&m.graph);
        assert_eq!(chains.len(), 1);
        let mut merged = m.clone();
        assert!(merge::merge(&mut merged.graph, &chains[0]));
        optc_ir::verify::verify_model(&merged).unwrap();
        assert_eq!(merged.graph.nodes().filter(|&n| merged.graph.node(n).op == Op::Relu).count(), 0);
        let feeds = vec![[("x".to_string(), x)].into_iter().collect()];
        let (a, b) = (run_all(m, &feeds).unwrap(), run_all(&merged, &feeds).unwrap());
        let (err, _) = output_error(&a, &b);
        assert!(err < 1e-10, "{err}");
    }

    #[test]
    fn matmul_chain_merges_exactly() {
        let mut rng = Rng::new(1);
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(2), Dim::known(3), Dim::known(8)]).unwrap();
        let w1 = b.init_f32("w1", &[8, 32], &positive(&mut rng, 256)).unwrap();
        let b1 = b.init_f32("b1", &[32], &positive(&mut rng, 32)).unwrap();
        let w2 = b.init_f32("w2", &[32, 8], &rng.vec(256, 1.0)).unwrap();
        let h = b.op(Op::MatMul, &[x, w1], vec![]).unwrap();
        let h = b.op(Op::Add, &[h, b1], vec![]).unwrap();
        let h = b.op(Op::Relu, &[h], vec![]).unwrap();
        let y = b.op(Op::MatMul, &[h, w2], vec![]).unwrap();
        b.output(y, "y", None).unwrap();
        let m = Model::new(b.finish(), 17);
        check_exact(&m, f32_value(&[2, 3, 8], &positive(&mut rng, 48)));
    }

    #[test]
    fn grouped_padded_conv_chain_merges_exactly() {
        let mut rng = Rng::new(2);
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(1), Dim::known(4), Dim::known(7), Dim::known(6)]).unwrap();
        // 4 -> 8 channels, groups 2, 3x3, stride 2, pads 1; then 1x1 8 -> 5.
        let w1 = b.init_f32("w1", &[8, 2, 3, 3], &positive(&mut rng, 144)).unwrap();
        let b1 = b.init_f32("b1", &[8], &positive(&mut rng, 8)).unwrap();
        let w2 = b.init_f32("w2", &[5, 8, 1, 1], &rng.vec(40, 1.0)).unwrap();
        let b2 = b.init_f32("b2", &[5], &rng.vec(5, 1.0)).unwrap();
        let attrs = vec![
            Attribute::int("group", 2),
            Attribute::ints("pads", vec![1, 1, 1, 1]),
            Attribute::ints("strides", vec![2, 2]),
            Attribute::ints("kernel_shape", vec![3, 3]),
        ];
        let h = b.op(Op::Conv, &[x, w1, b1], attrs).unwrap();
        let h = b.op(Op::Relu, &[h], vec![]).unwrap();
        let y = b.op(Op::Conv, &[h, w2, b2], vec![]).unwrap();
        b.output(
            y,
            "y",
            Some(Type::tensor(DType::F32, vec![Dim::known(1), Dim::known(5), Dim::known(4), Dim::known(3)])),
        )
        .unwrap();
        let m = Model::new(b.finish(), 17);
        check_exact(&m, f32_value(&[1, 4, 7, 6], &positive(&mut rng, 168)));
    }

    #[test]
    fn a_merge_that_is_not_faster_is_not_chosen() {
        // Depthwise 3x3 over 64 channels then 1x1 64 -> 64: merged it is a full 3x3 conv, 9x the
        // work of the pointwise one; LIFE says slower, so max_error=1 still removes nothing.
        let mut rng = Rng::new(3);
        let mut b = GraphBuilder::new("g");
        let x = b.input("x", DType::F32, vec![Dim::known(1), Dim::known(64), Dim::known(16), Dim::known(16)]).unwrap();
        let w1 = b.init_f32("w1", &[64, 1, 3, 3], &rng.vec(576, 1.0)).unwrap();
        let w2 = b.init_f32("w2", &[64, 64, 1, 1], &rng.vec(4096, 1.0)).unwrap();
        let attrs = vec![Attribute::int("group", 64), Attribute::ints("pads", vec![1, 1, 1, 1])];
        let h = b.op(Op::Conv, &[x, w1], attrs).unwrap();
        let h = b.op(Op::Relu, &[h], vec![]).unwrap();
        let y = b.op(Op::Conv, &[h, w2], vec![]).unwrap();
        b.output(y, "y", None).unwrap();
        let mut m = Model::new(b.finish(), 17);
        let mut cx = PassContext::new(optc_cost::Target::cpu());
        cx.explain = true;
        let pm = crate::PassManager::new(crate::PassRegistry::with_builtins());
        pm.run(&mut m, "prune-depth(max_error=1)", &mut cx).unwrap();
        assert_eq!(m.graph.nodes().filter(|&n| m.graph.node(n).op == Op::Relu).count(), 1);
        assert!(cx.explanations().iter().any(|(_, l)| l.contains("would not be faster")), "{:?}", cx.explanations());
    }
}
