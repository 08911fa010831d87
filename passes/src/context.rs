//! What a pass sees besides the model: the target, the rewrite budget and the explanation log.
//! Calibration data and the cost model join here.

use optc_cost::Target;

/// A global limit on rewrites, so a miscompile can be bisected (`--max-rewrites N`).
#[derive(Clone, Debug, Default)]
pub struct Budget {
    limit: Option<usize>,
    used: usize,
}

impl Budget {
    pub fn unlimited() -> Budget {
        Budget::default()
    }
    pub fn limited(n: usize) -> Budget {
        Budget { limit: Some(n), used: 0 }
    }
    /// Takes one rewrite from the budget; false when it is spent (the pass must then stop).
    pub fn take(&mut self) -> bool {
        match self.limit {
            Some(l) if self.used >= l => false,
            _ => {
                self.used += 1;
                true
            }
        }
    }
    pub fn used(&self) -> usize {
        self.used
    }
    pub fn exhausted(&self) -> bool {
        matches!(self.limit, Some(l) if self.used >= l)
    }
}

/// Calibration data for passes that need activation statistics (AWQ, later GPTQ and static
/// quantisation): one feed per run, graph input name to value.
#[derive(Clone, Debug, Default)]
pub struct Calibration {
    pub feeds: Vec<std::collections::HashMap<String, optc_eval::Value>>,
}

/// Which layers (weighted nodes, by name) a quantiser may touch: `optc quant-report` quantises
/// one layer at a time with `only`, `optc opt --exclude-auto K` leaves the K most sensitive
/// ones float with `exclude`.
#[derive(Clone, Debug, Default)]
pub struct LayerFilter {
    pub only: Option<std::collections::HashSet<String>>,
    pub exclude: std::collections::HashSet<String>,
}

impl LayerFilter {
    /// Why the layer `name` must stay as it is, if it must.
    pub fn refuses(&self, name: &str) -> Option<&'static str> {
        if self.only.as_ref().is_some_and(|o| !o.contains(name)) {
            Some("not among the layers being measured")
        } else if self.exclude.contains(name) {
            Some("excluded by --exclude-auto (among the most sensitive layers)")
        } else {
            None
        }
    }
}

/// Told how far a long pass has come: `(pass, what it is doing, done, total)`. `optc opt`
/// draws it as a progress bar; a library caller may log it or leave it unset.
pub type ProgressFn = std::sync::Arc<dyn Fn(&str, &str, usize, usize) + Send + Sync>;

pub struct PassContext {
    pub target: Target,
    pub budget: Budget,
    /// Collect `--explain` lines.
    pub explain: bool,
    /// Symbolic dim bindings for the cost model (`--dim seq=128`); unbound dims count as 1.
    pub dims: std::collections::HashMap<String, i64>,
    /// Predict the latency on `target` (LIFE) before and after each pass, for the report.
    pub cost_each: bool,
    /// Quantisers measure their output error against the float model for the report (one more
    /// run of the model on one input); `optc opt` asks for it unless `-q`.
    pub measure_error: bool,
    /// Calibration inputs (`--calib`); passes that need some make seeded random ones without.
    pub calib: Option<Calibration>,
    /// The layers quantisers may touch.
    pub layers: LayerFilter,
    /// Where long passes report their progress ([`PassContext::progress`]).
    pub progress: Option<ProgressFn>,
    explanations: Vec<(String, String)>,
    reports: Vec<(String, String)>,
    current_pass: String,
}

impl PassContext {
    pub fn new(target: Target) -> PassContext {
        PassContext {
            target,
            budget: Budget::unlimited(),
            explain: false,
            dims: Default::default(),
            cost_each: false,
            measure_error: false,
            calib: None,
            layers: LayerFilter::default(),
            progress: None,
            explanations: Vec::new(),
            reports: Vec::new(),
            current_pass: String::new(),
        }
    }

    /// The LIFE-predicted latency of `model` on the context's target, in seconds.
    pub fn predict(&self, model: &optc_ir::Model) -> f64 {
        let opset = model.opset("").unwrap_or(1);
        optc_cost::estimate(&model.graph, opset, &self.target, &self.dims).totals.time_s
    }

    /// Asks to apply one rewrite; false when the budget is spent.
    pub fn rewrite(&mut self) -> bool {
        self.budget.take()
    }

    /// Records why a rewrite did or did not fire (shown with `--explain`).
    pub fn note(&mut self, message: impl FnOnce() -> String) {
        if self.explain {
            self.explanations.push((self.current_pass.clone(), message()));
        }
    }

    /// Reports that `done` of `total` steps of `what` are finished (a no-op without a
    /// [`ProgressFn`]). A pass reports `done == total` when it is through.
    pub fn progress(&self, what: &str, done: usize, total: usize) {
        if let Some(f) = &self.progress {
            f(&self.current_pass, what, done, total);
        }
    }

    pub fn explanations(&self) -> &[(String, String)] {
        &self.explanations
    }

    /// Records a line of the pass's result report (what it removed, what that cost), which
    /// `optc opt` prints after its summary with or without `--explain`.
    pub fn report(&mut self, line: impl Into<String>) {
        self.reports.push((self.current_pass.clone(), line.into()));
    }

    pub fn reports(&self) -> &[(String, String)] {
        &self.reports
    }

    pub(crate) fn enter(&mut self, pass: &str) {
        self.current_pass = pass.to_string();
    }
}
