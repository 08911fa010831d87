//! Targets and cost. A [`Target`] names the device a pipeline optimises for; passes read its
//! capabilities through the pass context. The LIFE cost model (ops and bytes per node, roofline
//! time per target) builds on this crate.

use thiserror::Error;

/// A device to optimise for.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub name: String,
    /// Whether the device runs `com.microsoft` contrib ops (onnxruntime's CPU provider does).
    pub contrib_ops: bool,
}

#[derive(Debug, Error)]
pub enum TargetError {
    #[error("unknown target '{name}'; built-in targets: {builtins}")]
    Unknown { name: String, builtins: String },
}

impl Target {
    /// Names of the built-in targets.
    pub const BUILTINS: &'static [&'static str] = &["cpu"];

    /// The default target: a CPU running onnxruntime.
    pub fn cpu() -> Target {
        Target { name: "cpu".into(), contrib_ops: true }
    }

    /// A built-in target by name.
    pub fn builtin(name: &str) -> Result<Target, TargetError> {
        match name {
            "cpu" => Ok(Target::cpu()),
            _ => Err(TargetError::Unknown { name: name.into(), builtins: Self::BUILTINS.join(", ") }),
        }
    }
}

impl Default for Target {
    fn default() -> Self {
        Target::cpu()
    }
}
