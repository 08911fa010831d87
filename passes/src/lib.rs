//! Passes and the machinery that runs them.
//!
//! A [`Pass`] declares its name, a one-line description, its options with defaults and its
//! [`Exactness`], and rewrites a [`Model`] given a [`PassContext`] (target, rewrite budget,
//! explanations; later calibration data and the cost model). Passes live in a [`PassRegistry`];
//! a [`Plugin`] adds passes to it. A pipeline string (see [`pipeline`]) is run by the
//! [`PassManager`], which times every pass, can verify the IR after each one and names the pass
//! that broke it.

pub mod calib;
mod context;
mod manager;
pub mod pipeline;
mod registry;

pub mod cse;
pub mod dce;
pub mod fold;
pub mod fuse;
pub mod hessian;
pub mod identity;
pub mod prune;
pub mod quant;
pub mod shape_fold;
pub mod simplify;
#[cfg(test)]
mod test_support;
pub mod util;

pub use context::{Budget, Calibration, LayerFilter, PassContext};
pub use manager::{PassManager, PassRun, PipelineReport};
pub use registry::{PassRegistry, Plugin};

use optc_ir::Model;
use std::collections::BTreeMap;
use std::fmt;
use thiserror::Error;

/// How close a pass keeps the model's outputs to the original's. Tests compare outputs with it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Exactness {
    /// Bit-identical outputs.
    Exact,
    /// Floating-point re-association or folding: outputs within the tolerances.
    Rounding { rtol: f32, atol: f32 },
    /// Changes the function on purpose (quantisation, pruning): judged by a task metric.
    Lossy,
}

impl Exactness {
    /// The weaker of two (the exactness of a pipeline is the weakest of its passes).
    pub fn combine(self, other: Exactness) -> Exactness {
        use Exactness::*;
        match (self, other) {
            (Lossy, _) | (_, Lossy) => Lossy,
            (Rounding { rtol: a, atol: b }, Rounding { rtol: c, atol: d }) => {
                Rounding { rtol: a.max(c), atol: b.max(d) }
            }
            (r @ Rounding { .. }, Exact) | (Exact, r @ Rounding { .. }) => r,
            (Exact, Exact) => Exact,
        }
    }
}

impl fmt::Display for Exactness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exactness::Exact => write!(f, "exact"),
            Exactness::Rounding { rtol, atol } => {
                write!(f, "rounding(rtol={rtol:e}, atol={atol:e})")
            }
            Exactness::Lossy => write!(f, "lossy"),
        }
    }
}

/// One option a pass accepts.
#[derive(Clone, Debug)]
pub struct OptionSpec {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// Option values given to a pass, defaults filled in.
#[derive(Clone, Debug, Default)]
pub struct PassOptions {
    values: BTreeMap<String, String>,
    pass: String,
}

impl PassOptions {
    /// Checks `given` against `specs` and fills in defaults.
    pub fn resolve(pass: &str, specs: &[OptionSpec], given: &[(String, String)]) -> Result<PassOptions, PassError> {
        let mut values: BTreeMap<String, String> =
            specs.iter().map(|s| (s.name.to_string(), s.default.to_string())).collect();
        for (k, v) in given {
            if !values.contains_key(k) {
                let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
                return Err(PassError::BadOption {
                    pass: pass.into(),
                    message: if known.is_empty() {
                        format!("takes no options, but got '{k}'")
                    } else {
                        format!("has no option '{k}'; its options are: {}", known.join(", "))
                    },
                });
            }
            values.insert(k.clone(), v.clone());
        }
        Ok(PassOptions { values, pass: pass.into() })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn parse<T: std::str::FromStr>(&self, name: &str, what: &str) -> Result<T, PassError> {
        let raw = self.get(name).unwrap_or("");
        raw.parse().map_err(|_| PassError::BadOption {
            pass: self.pass.clone(),
            message: format!("option '{name}' must be {what}, got '{raw}'"),
        })
    }
    pub fn usize(&self, name: &str) -> Result<usize, PassError> {
        self.parse(name, "a non-negative integer")
    }
    pub fn f64(&self, name: &str) -> Result<f64, PassError> {
        self.parse(name, "a number")
    }
    pub fn bool(&self, name: &str) -> Result<bool, PassError> {
        match self.get(name) {
            Some("true" | "1" | "yes" | "on") => Ok(true),
            Some("false" | "0" | "no" | "off") => Ok(false),
            other => Err(PassError::BadOption {
                pass: self.pass.clone(),
                message: format!("option '{name}' must be true or false, got '{}'", other.unwrap_or("")),
            }),
        }
    }
}

/// What a pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassOutcome {
    /// Rewrites applied (each counted against the rewrite budget).
    pub rewrites: usize,
}

impl PassOutcome {
    pub fn changed(&self) -> bool {
        self.rewrites > 0
    }
}

#[derive(Debug, Error)]
pub enum PassError {
    #[error("unknown pass '{name}'{}", suggest(.suggestions))]
    UnknownPass { name: String, suggestions: Vec<String> },
    #[error("pass '{pass}' {message}")]
    BadOption { pass: String, message: String },
    #[error(transparent)]
    Syntax(#[from] pipeline::ParseError),
    #[error("pass '{pass}' failed: {message}")]
    Failed { pass: String, message: String },
    #[error("the IR is invalid after pass '{pass}':\n  {}", .problems.join("\n  "))]
    Verify { pass: String, problems: Vec<String> },
}

fn suggest(s: &[String]) -> String {
    if s.is_empty() { "; run `optc passes` for the list".into() } else { format!("; did you mean {}?", s.join(" or ")) }
}

/// A transformation of a model.
pub trait Pass: Send + Sync {
    /// The name used in pipelines (`dce`, `fold`, ...).
    fn name(&self) -> &str;
    /// One line for `optc passes`.
    fn description(&self) -> &str;
    fn options(&self) -> &[OptionSpec] {
        &[]
    }
    fn exactness(&self) -> Exactness;
    fn run(&self, model: &mut Model, cx: &mut PassContext, opts: &PassOptions) -> Result<PassOutcome, PassError>;
}
