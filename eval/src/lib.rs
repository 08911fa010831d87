//! optc's reference evaluator: runs a model's graph on the CPU.
//!
//! Passes use it to fold constants and to calibrate (activation statistics stream to an
//! [`Observer`] without keeping every activation); the CLI uses it for `optc run` and `optc
//! verify`. Values are [`Tensor`]s (typed `ndarray` arrays), sequences or optionals.

mod error;
pub mod inputs;
mod interp;
pub mod npy;
pub mod ops;
pub mod stats;
mod stepper;
mod value;

pub use error::{EvalError, Result};
pub use interp::Observer;
pub use stepper::Stepper;
pub use value::{Tensor, Value};

use optc_ir::{Init, Model, ValueId};
use std::collections::HashMap;
use std::sync::Arc;

/// Runs one model repeatedly; converted initializers are kept between runs.
pub struct Evaluator<'m> {
    pub(crate) model: &'m Model,
    pub(crate) opset: i64,
    pub(crate) inits: HashMap<ValueId, Arc<Value>>,
}

impl<'m> Evaluator<'m> {
    pub fn new(model: &'m Model) -> Result<Evaluator<'m>> {
        let g = &model.graph;
        let mut inits = HashMap::new();
        for &v in &g.initializers {
            if let Some(Init::Dense(t)) = &g.value(v).init {
                inits.insert(v, Arc::new(Value::Tensor(Tensor::from_ir(t)?)));
                // The evaluator has its own copy: the mapped file's pages need not stay
                // resident beside it (a 656 MB model ran at 2.15x its size in memory).
                t.release_pages();
            }
        }
        Ok(Evaluator { model, opset: model.opset("").unwrap_or(1), inits })
    }

    /// Names of the graph inputs that need a value (inputs with an initializer are optional).
    pub fn input_names(&self) -> Vec<String> {
        let g = &self.model.graph;
        g.inputs.iter().map(|d| g.value(d.value).name.clone()).collect()
    }

    pub fn output_names(&self) -> Vec<String> {
        let g = &self.model.graph;
        g.outputs.iter().map(|d| g.value(d.value).name.clone()).collect()
    }

    /// Runs the model on named inputs; returns the outputs in graph order.
    pub fn run(&self, inputs: &HashMap<String, Value>) -> Result<Vec<(String, Value)>> {
        self.run_observed(inputs, None)
    }

    /// Like [`Evaluator::run`], reporting every value the observer wants.
    pub fn run_observed(
        &self,
        inputs: &HashMap<String, Value>,
        observer: Option<&mut dyn Observer>,
    ) -> Result<Vec<(String, Value)>> {
        let g = &self.model.graph;
        for name in inputs.keys() {
            if !g.inputs.iter().any(|d| &g.value(d.value).name == name) {
                return Err(EvalError::Input {
                    name: name.clone(),
                    message: format!(
                        "the model has no input of that name; its inputs: {}",
                        self.input_names().join(", ")
                    ),
                });
            }
        }
        let bound: Vec<Option<Value>> = g.inputs.iter().map(|d| inputs.get(&g.value(d.value).name).cloned()).collect();
        let outs = interp::run_graph(g, self.opset, bound, None, observer, Some(&self.inits))?;
        Ok(self.output_names().into_iter().zip(outs).collect())
    }
}

/// Evaluates one node of `g` on given input values (constant folding). Subgraph-holding nodes
/// see `g`'s values by name.
pub fn eval_node(g: &optc_ir::Graph, n: optc_ir::NodeId, opset: i64, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let env = HashMap::new();
    let scope = interp::Scope { graph: g, env: &env, parent: None };
    let cx = ops::Ctx { node: g.node(n), opset, scope: &scope };
    ops::dispatch(&cx, inputs)
}

/// Keeps freed activation buffers in the process heap between nodes and runs: with glibc's
/// defaults, every buffer above the (adaptive) mmap threshold is a fresh mapping whose pages
/// fault in zeroed on first touch, and freed heap tops are trimmed back to the kernel, so a run
/// pays page faults for most of its activations. Buffers up to 32 MiB (glibc's largest mmap
/// threshold) then come from the heap and are recycled. Done once per process; it changes a
/// process-wide setting, so the library never calls it itself: programs opt in (the `optc`
/// CLI does for `run` and `verify`; `OPTC_EVAL_MALLOPT=0` turns it off there).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if std::env::var_os("OPTC_EVAL_MALLOPT").is_some_and(|v| v == "0") {
                return;
            }
            unsafe extern "C" {
                fn mallopt(param: i32, value: i32) -> i32;
            }
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_THRESHOLD: i32 = -3;
            // SAFETY: mallopt only changes glibc malloc tunables; it is called before the
            // evaluator allocates its buffers, and any value is valid (rejected ones return 0).
            unsafe {
                mallopt(M_MMAP_THRESHOLD, 32 << 20);
                mallopt(M_TRIM_THRESHOLD, 1 << 30);
            }
        });
    }
}
