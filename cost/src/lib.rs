//! Targets and the LIFE analytical cost model.
//!
//! A [`Target`] names the device a pipeline optimises for (passes read its capabilities through
//! the pass context) and carries the figures LIFE needs: peak TOPS per precision, memory
//! bandwidth, efficiency factors and a launch overhead. [`analyze`] turns a graph into per-node
//! `ops` and `bytes`; [`report`] / [`estimate`] apply a target's roofline
//! (`time = max(ops / (eff_c * TOPS[p]), bytes / (eff_m * BW)) + overhead`), with ops the device
//! does not run natively costed on its fallback. [`llm_metrics`] forecasts TTFT, TPOT and TPS of
//! a LLaMA-shaped decoder from an [`LlmConfig`]. `docs/TARGETS.md` documents the target fields.

mod analysis;
mod llm;
mod model;
mod target;

pub use analysis::{Analysis, Flag, NodeCost, Traffic, analyze, analyze_with};
pub use llm::{LlmConfig, LlmConfigError, LlmMetrics, LlmProj, llm_metrics};
pub use model::{Bound, CostError, NodeRow, NodeTime, OpSummary, Report, Totals, estimate, footprint, report};
pub use target::{Fallback, QuantPrefs, Target, TargetError, WeightFormat, WeightPass};

use optc_ir::DType;
use serde::{Deserialize, Serialize};

/// The arithmetic precision an operator computes in: the row of a target's `tops` table used to
/// cost it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F64,
    F32,
    F16,
    BF16,
    FP8,
    Int32,
    Int16,
    Int8,
    Int4,
    Int2,
}

impl Precision {
    /// Every precision, widest float first.
    pub const ALL: [Precision; 10] = [
        Precision::F64,
        Precision::F32,
        Precision::F16,
        Precision::BF16,
        Precision::FP8,
        Precision::Int32,
        Precision::Int16,
        Precision::Int8,
        Precision::Int4,
        Precision::Int2,
    ];

    /// The key used in target files (`f32`, `bf16`, `int8`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Precision::F64 => "f64",
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::BF16 => "bf16",
            Precision::FP8 => "fp8",
            Precision::Int32 => "int32",
            Precision::Int16 => "int16",
            Precision::Int8 => "int8",
            Precision::Int4 => "int4",
            Precision::Int2 => "int2",
        }
    }

    /// The precision for a target-file key.
    pub fn from_name(s: &str) -> Option<Precision> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }

    /// All keys, comma-separated, for error messages.
    pub fn names() -> String {
        Self::ALL.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
    }

    /// The precision arithmetic on `dtype` elements runs in.
    pub fn of_dtype(dtype: DType) -> Precision {
        use DType::*;
        match dtype {
            F64 | C128 => Precision::F64,
            F16 => Precision::F16,
            BF16 => Precision::BF16,
            F8E4M3FN | F8E4M3FNUZ | F8E5M2 | F8E5M2FNUZ | F8E8M0 => Precision::FP8,
            I8 | U8 => Precision::Int8,
            I16 | U16 => Precision::Int16,
            I4 | U4 | F4E2M1 => Precision::Int4,
            I2 | U2 => Precision::Int2,
            I32 | U32 | I64 | U64 | Bool | String => Precision::Int32,
            F32 | C64 | Undefined => Precision::F32,
        }
    }

    /// The `tops` keys tried, in order, when a target has no figure for this precision:
    /// narrower integer types run on wider MAC arrays, bf16 and f16 stand in for each other, and
    /// everything ends at `f32`.
    pub fn lookup_chain(self) -> &'static [Precision] {
        use Precision::*;
        match self {
            F64 => &[F64, F32],
            F32 => &[F32],
            F16 => &[F16, BF16, F32],
            BF16 => &[BF16, F16, F32],
            FP8 => &[FP8, F16, BF16, F32],
            Int32 => &[Int32, F32],
            Int16 => &[Int16, BF16, F16, F32],
            Int8 => &[Int8, F16, BF16, F32],
            Int4 => &[Int4, Int8, F16, BF16, F32],
            Int2 => &[Int2, Int4, Int8, F16, BF16, F32],
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A time in seconds as people read it: `1.234 s`, `12.345 ms` or `123.4 us`.
pub fn fmt_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} us", s * 1e6)
    }
}
