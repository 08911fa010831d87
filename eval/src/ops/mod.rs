//! Kernels, one module per family. [`dispatch`] asks each family in turn; a family's `run`
//! returns `None` for ops it does not implement, so adding an op touches one file.
//!
//! A kernel receives the node's inputs (`None` for absent optional inputs) and returns one
//! value per declared output slot (it may compute optional outputs nobody reads).

use crate::error::{EvalError, Result};
use crate::interp::Scope;
use crate::value::{Tensor, Value};
use optc_ir::{AttrList, AttrValue, Graph, Node};

pub mod contrib;
pub mod control;
pub mod elementwise;
pub mod extra;
pub mod linalg;
pub mod misc;
pub mod nn;
pub mod quant;
pub mod reduce;
pub mod rnn;
pub mod shape;

/// What a kernel knows about the node it runs.
pub struct Ctx<'a> {
    pub node: &'a Node,
    pub opset: i64,
    pub(crate) scope: &'a Scope<'a>,
}

impl Ctx<'_> {
    /// An error naming this node and op.
    pub fn err(&self, message: impl Into<String>) -> EvalError {
        EvalError::Node { node: self.node.display_name(), op: self.node.op.to_string(), message: message.into() }
    }

    pub fn attr_int(&self, name: &str, default: i64) -> i64 {
        self.node.attrs.get_int(name).unwrap_or(default)
    }
    pub fn attr_float(&self, name: &str, default: f32) -> f32 {
        self.node.attrs.get_float(name).unwrap_or(default)
    }
    pub fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.node.attrs.get_ints(name).map(|v| v.to_vec())
    }
    pub fn attr_floats(&self, name: &str) -> Option<Vec<f32>> {
        self.node.attrs.get_floats(name).map(|v| v.to_vec())
    }
    pub fn attr_string(&self, name: &str, default: &str) -> String {
        self.node.attrs.get_string(name).unwrap_or(default).to_string()
    }
    pub fn attr_tensor(&self, name: &str) -> Result<Option<Tensor>> {
        self.node.attrs.get_tensor(name).map(Tensor::from_ir).transpose()
    }
    pub fn attr_graph(&self, name: &str) -> Option<&Graph> {
        match &self.node.attrs.attr(name)?.value {
            AttrValue::Graph(g) => Some(g),
            _ => None,
        }
    }

    /// Required tensor input `i`.
    pub fn tensor<'v>(&self, inputs: &[Option<&'v Value>], i: usize) -> Result<&'v Tensor> {
        match inputs.get(i).copied().flatten() {
            Some(Value::Tensor(t)) => Ok(t),
            Some(_) => Err(self.err(format!("input {i} must be a tensor"))),
            None => Err(self.err(format!("input {i} is required"))),
        }
    }

    /// Optional tensor input `i`.
    pub fn opt_tensor<'v>(&self, inputs: &[Option<&'v Value>], i: usize) -> Result<Option<&'v Tensor>> {
        match inputs.get(i).copied().flatten() {
            Some(Value::Tensor(t)) => Ok(Some(t)),
            Some(_) => Err(self.err(format!("input {i} must be a tensor"))),
            None => Ok(None),
        }
    }

    /// Integer input `i` as i64s (shapes, axes, indices).
    pub fn ints(&self, inputs: &[Option<&Value>], i: usize) -> Result<Vec<i64>> {
        self.tensor(inputs, i)?.to_i64_vec().ok_or_else(|| self.err(format!("input {i} must be an integer tensor")))
    }

    /// Runs a subgraph of this node (If/Loop/Scan body) with `inputs` bound to its inputs; the
    /// subgraph sees this graph's values by name.
    pub fn run_subgraph(&self, g: &Graph, inputs: Vec<Option<Value>>) -> Result<Vec<Value>> {
        crate::interp::run_graph(g, self.opset, inputs, Some(self.scope), None, None)
    }
}

/// Runs a node's kernel.
pub fn dispatch(cx: &Ctx, inputs: &[Option<&Value>]) -> Result<Vec<Value>> {
    let families: [fn(&Ctx, &[Option<&Value>]) -> Option<Result<Vec<Value>>>; 11] = [
        elementwise::run,
        shape::run,
        reduce::run,
        linalg::run,
        nn::run,
        quant::run,
        control::run,
        rnn::run,
        misc::run,
        extra::run,
        contrib::run,
    ];
    for f in families {
        if let Some(r) = f(cx, inputs) {
            return r;
        }
    }
    Err(EvalError::Unsupported { node: cx.node.display_name(), op: cx.node.op.to_string(), opset: cx.opset })
}

/// One output.
pub fn one(t: Tensor) -> Option<Result<Vec<Value>>> {
    Some(Ok(vec![Value::Tensor(t)]))
}
