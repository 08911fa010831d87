//! Evaluation errors name the node, the op and what is wrong.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum EvalError {
    #[error("node '{node}' ({op}): op not supported by optc's evaluator (opset {opset})")]
    Unsupported { node: String, op: String, opset: i64 },
    #[error("node '{node}' ({op}): {message}")]
    Node { node: String, op: String, message: String },
    #[error("input '{name}': {message}")]
    Input { name: String, message: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, EvalError>;
