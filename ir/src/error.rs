//! Errors raised by IR construction and verification.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum IrError {
    #[error("two values are named '{0}'")]
    DuplicateValue(String),
    #[error("{0}")]
    Invalid(String),
}
