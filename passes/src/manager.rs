//! The pass manager: plans a pipeline (every name and option checked before anything runs),
//! runs it, times each pass, and under `verify_each` checks the IR after every pass, naming the
//! pass that broke an invariant.

use crate::pipeline::{self, Item};
use crate::{Exactness, Pass, PassContext, PassError, PassOptions, PassRegistry};
use optc_ir::Model;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pipeline items that are not passes but combine them.
pub const COMBINATORS: &[&str] = &["fixpoint"];

enum Step {
    Pass { pass: Arc<dyn Pass>, opts: PassOptions, label: String },
    Fixpoint { steps: Vec<Step>, max_iter: usize },
}

/// One pass execution.
#[derive(Clone, Debug)]
pub struct PassRun {
    /// The pass as written in the pipeline (with options).
    pub label: String,
    pub time: Duration,
    pub rewrites: usize,
    pub nodes_before: usize,
    pub nodes_after: usize,
    /// LIFE-predicted latency before and after the pass, seconds (with `PassContext::cost_each`).
    pub predicted: Option<(f64, f64)>,
}

#[derive(Clone, Debug)]
pub struct PipelineReport {
    pub runs: Vec<PassRun>,
    /// The weakest exactness of the passes in the pipeline.
    pub exactness: Exactness,
    /// True when `--max-rewrites` stopped rewriting.
    pub budget_exhausted: bool,
}

impl PipelineReport {
    pub fn total_rewrites(&self) -> usize {
        self.runs.iter().map(|r| r.rewrites).sum()
    }
}

pub struct PassManager {
    pub registry: PassRegistry,
    /// Run the IR verifier after every pass.
    pub verify_each: bool,
}

impl PassManager {
    pub fn new(registry: PassRegistry) -> PassManager {
        PassManager { registry, verify_each: false }
    }

    /// Checks a pipeline without running it; returns its exactness.
    pub fn check(&self, src: &str) -> Result<Exactness, PassError> {
        let steps = self.plan(&pipeline::parse(src)?)?;
        Ok(exactness(&steps))
    }

    fn plan(&self, items: &[Item]) -> Result<Vec<Step>, PassError> {
        items.iter().map(|it| self.plan_item(it)).collect()
    }

    fn plan_item(&self, it: &Item) -> Result<Step, PassError> {
        if it.name == "fixpoint" {
            if it.children.is_empty() {
                return Err(PassError::BadOption {
                    pass: "fixpoint".into(),
                    message: "needs passes to repeat, e.g. fixpoint(identity,dce)".into(),
                });
            }
            let spec = [crate::OptionSpec { name: "max_iter", default: "10", help: "" }];
            let opts = PassOptions::resolve("fixpoint", &spec, &it.options)?;
            return Ok(Step::Fixpoint { steps: self.plan(&it.children)?, max_iter: opts.usize("max_iter")? });
        }
        if self.registry.lookup(&it.name).is_err()
            && let Some(src) = pipeline::preset(&it.name)
        {
            if !it.children.is_empty() || !it.options.is_empty() {
                return Err(PassError::BadOption {
                    pass: it.name.clone(),
                    message: "a preset takes no options".into(),
                });
            }
            return Ok(Step::Fixpoint { steps: self.plan(&pipeline::parse(src)?)?, max_iter: 1 });
        }
        let pass = self.registry.lookup(&it.name)?;
        if !it.children.is_empty() {
            return Err(PassError::BadOption {
                pass: it.name.clone(),
                message: format!("takes options as key=value, not '{}'", it.children[0]),
            });
        }
        let opts = PassOptions::resolve(&it.name, pass.options(), &it.options)?;
        Ok(Step::Pass { pass, opts, label: it.to_string() })
    }

    /// Parses, checks and runs a pipeline on `model`.
    pub fn run(&self, model: &mut Model, src: &str, cx: &mut PassContext) -> Result<PipelineReport, PassError> {
        let steps = self.plan(&pipeline::parse(src)?)?;
        // Problems the input already has are not blamed on any pass.
        let baseline: HashSet<String> = if self.verify_each {
            match optc_ir::verify::verify_model(model) {
                Ok(()) => HashSet::new(),
                Err(ps) => ps.iter().map(|p| p.to_string()).collect(),
            }
        } else {
            HashSet::new()
        };
        let mut report = PipelineReport { runs: Vec::new(), exactness: exactness(&steps), budget_exhausted: false };
        self.run_steps(&steps, model, cx, &baseline, &mut report)?;
        report.budget_exhausted = cx.budget.exhausted();
        Ok(report)
    }

    fn run_steps(
        &self,
        steps: &[Step],
        model: &mut Model,
        cx: &mut PassContext,
        baseline: &HashSet<String>,
        report: &mut PipelineReport,
    ) -> Result<usize, PassError> {
        let mut total = 0;
        for step in steps {
            match step {
                Step::Pass { pass, opts, label } => {
                    let nodes_before = model.graph.node_count();
                    let predicted_before = if cx.cost_each {
                        Some(report.runs.last().and_then(|r| r.predicted).map_or_else(|| cx.predict(model), |p| p.1))
                    } else {
                        None
                    };
                    cx.enter(pass.name());
                    let start = Instant::now();
                    let outcome = pass.run(model, cx, opts)?;
                    // Node names a pass gave twice (its own, or one the model already had).
                    model.graph.uniquify_node_names();
                    let time = start.elapsed();
                    if self.verify_each
                        && let Err(problems) = optc_ir::verify::verify_model(model)
                    {
                        let new: Vec<String> =
                            problems.iter().map(|p| p.to_string()).filter(|p| !baseline.contains(p)).collect();
                        if !new.is_empty() {
                            return Err(PassError::Verify { pass: label.clone(), problems: new });
                        }
                    }
                    total += outcome.rewrites;
                    report.runs.push(PassRun {
                        label: label.clone(),
                        time,
                        rewrites: outcome.rewrites,
                        nodes_before,
                        nodes_after: model.graph.node_count(),
                        // A pass that rewrote nothing left the model as it was.
                        predicted: predicted_before
                            .map(|b| (b, if outcome.rewrites == 0 { b } else { cx.predict(model) })),
                    });
                }
                Step::Fixpoint { steps, max_iter } => {
                    for _ in 0..*max_iter {
                        let n = self.run_steps(steps, model, cx, baseline, report)?;
                        total += n;
                        if n == 0 || cx.budget.exhausted() {
                            break;
                        }
                    }
                }
            }
        }
        Ok(total)
    }
}

fn exactness(steps: &[Step]) -> Exactness {
    steps.iter().fold(Exactness::Exact, |acc, s| match s {
        Step::Pass { pass, .. } => acc.combine(pass.exactness()),
        Step::Fixpoint { steps, .. } => acc.combine(exactness(steps)),
    })
}
