//! Target files: what a device can do, in the figures the LIFE model needs (peak TOPS per
//! precision, memory bandwidth, efficiency factors, launch overhead), which ops and precisions it
//! runs natively, and where the rest falls back to. Built-ins are TOML files embedded in the crate.

use crate::Precision;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A device to optimise for and to cost against.
///
/// Every figure is documented in `docs/TARGETS.md`; the roofline that uses them is
/// [`Target::node_time`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Short name (`cpu`, `npu`, ...), used in reports.
    pub name: String,
    /// One line on what the target models.
    #[serde(default)]
    pub description: String,
    /// Where the figures come from (vendor spec pages, papers).
    #[serde(default)]
    pub sources: Vec<String>,
    /// Peak throughput in tera-operations per second (one MAC = 2 ops), by precision name
    /// (`f32`, `f16`, `bf16`, `int8`, `int4`, ...). Every native precision must find a figure
    /// along its [`Precision::lookup_chain`] (so `f32` is needed when `native_dtypes` is empty).
    pub tops: BTreeMap<String, f64>,
    /// Peak memory bandwidth in GB/s (10^9 bytes per second).
    pub mem_bw_gbs: f64,
    /// Memory the device can use, in GB (10^9 bytes); 0 when unknown.
    #[serde(default)]
    pub mem_gb: f64,
    /// Fraction of peak TOPS reached by real kernels, in (0, 1].
    pub eff_compute: f64,
    /// Fraction of peak bandwidth reached by real kernels, in (0, 1].
    pub eff_memory: f64,
    /// Fixed cost per operator launch (dispatch, synchronisation), in microseconds.
    #[serde(default)]
    pub launch_overhead_us: f64,
    /// On-chip cache (or scratchpad) size in MB (10^6 bytes); 0 when not modelled. An operator
    /// whose activations (inputs and outputs, weights excluded) fit in it moves them at
    /// `cache_bw_gbs` instead of `mem_bw_gbs`.
    #[serde(default)]
    pub cache_mb: f64,
    /// Bandwidth of that cache in GB/s; 0 when not modelled.
    #[serde(default)]
    pub cache_bw_gbs: f64,
    /// Whether the device runs an activation (Relu, Clip, LeakyRelu, Sigmoid, HardSigmoid,
    /// HardSwish, Tanh) that directly follows a Conv/Gemm/MatMul inside that kernel, so the
    /// activation costs no launch and no memory traffic of its own.
    #[serde(default)]
    pub fused_activations: bool,
    /// Whether the runtime folds a `BatchNormalization` that directly follows a Conv, and the
    /// constant bias `Add` that directly follows a Gemm/MatMul, into that kernel: no launch and no
    /// traffic of their own. See [`crate::Analysis::runtime_groups`].
    #[serde(default)]
    pub fused_epilogues: bool,
    /// Whether the runtime runs a normalisation or GELU written out as elementwise ops and
    /// `ReduceMean` (LayerNorm, RMSNorm, erf/tanh GELU, with a residual Add before a norm) as one
    /// kernel. See [`crate::Analysis::runtime_groups`].
    #[serde(default)]
    pub fused_composites: bool,
    /// Whether the runtime fuses a QDQ group (`DequantizeLinear` inputs -> op -> `QuantizeLinear`)
    /// into an integer kernel when a quantised activation it reads has other readers too. When
    /// false, such an op computes in float and its weight's `DequantizeLinear` runs on every call:
    /// onnxruntime 1.32's CPU provider fuses a QDQ MatMul or Conv only when the quantised tensor
    /// has that one reader. Default true.
    #[serde(default = "yes")]
    pub qdq_shared_inputs_fused: bool,
    /// Per-op factor on `eff_compute` and `eff_memory` for kernels the runtime implements far
    /// from the device's usual efficiency (keys as in `native_ops`; 1 = as the rest). Measured:
    /// onnxruntime 1.32's one-thread CPU `SkipLayerNormalization` runs at about 0.15 of
    /// `Add` + `LayerNormalization`.
    #[serde(default)]
    pub op_efficiency: BTreeMap<String, f64>,
    /// How the runtime's matrix kernels pass over a constant weight on every call, on top of the
    /// multiply-accumulates; absent = the plain roofline. See [`WeightPass`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_pass: Option<WeightPass>,
    /// Op types the device runs natively (`MatMul`, `com.microsoft::MatMulNBits`, or a bare
    /// contrib op type), or `["*"]` for every op.
    #[serde(default = "all_ops")]
    pub native_ops: Vec<String>,
    /// Precisions the device computes in natively; empty means every precision in `tops`.
    #[serde(default)]
    pub native_dtypes: Vec<String>,
    /// Figures for ops this device does not run natively (they run on the host CPU).
    /// Required when `native_ops` or `native_dtypes` restrict anything.
    #[serde(default)]
    pub fallback: Option<Fallback>,
    /// Whether the device runs `com.microsoft` contrib ops (onnxruntime's CPU provider does).
    #[serde(default)]
    pub contrib_ops: bool,
    /// Quantisation formats the device prefers; read by quantisation passes.
    #[serde(default)]
    pub quant: QuantPrefs,
}

/// The device that runs what a [`Target`] cannot (usually the host CPU).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    /// Name of the fallback device, for reports.
    pub name: String,
    /// Peak TOPS by precision, as in [`Target::tops`]; `f32` is required.
    pub tops: BTreeMap<String, f64>,
    /// Bandwidth available to the fallback device, GB/s.
    pub mem_bw_gbs: f64,
    /// Compute efficiency, (0, 1].
    pub eff_compute: f64,
    /// Memory efficiency, (0, 1].
    pub eff_memory: f64,
    /// Launch overhead per op on the fallback device, microseconds (including the hand-off).
    #[serde(default)]
    pub launch_overhead_us: f64,
}

/// The per-call pass a runtime's matrix kernels make over a constant weight, which the plain
/// roofline (`max(compute, memory)`) hides. A one-thread CPU GEMM with a few activation rows
/// streams each weight panel from memory and then multiplies with it, one after the other; a
/// weight-only quantised matmul unpacks its low-bit weights to float before its float GEMM.
/// Measured on onnxruntime 1.32's CPU provider (MLAS, one thread, 16 rows): f32 MatMuls over
/// 134 MB of weights take about 0.18 ns per weight element beyond their multiply-accumulates,
/// over 4 MB (in the cache) almost nothing; MatMulNBits (4-bit) takes about 0.1 ns per element
/// to unpack, wherever its weights are.
///
/// The terms apply to MatMul and Gemm (and their fused forms) with a constant float weight, and to
/// MatMulNBits, when the activation has more than one row (`M = ops / (2 * weight elements)`);
/// a single row (a GEMV) streams the weight once and stays on the roofline, but for a low-bit
/// weight's unpacking ([`WeightPass::gemv_unpack_ns`]). Every field defaults to 0, which leaves
/// its term out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WeightPass {
    /// Fraction of `mem_bw_gbs` at which a float weight that is not resident in the cache streams
    /// through a matrix kernel, added to its compute time. In (0, 1]; 0 = not modelled.
    pub eff_stream: f64,
    /// How much of a graph's weights stays in the cache from one run to the next, in MB (10^6 B):
    /// of a graph one run of which touches F MB (weights read and activations written, see
    /// [`crate::footprint`]), the share `min(1, resident_mb / F) ^ resident_exp` of the weights
    /// costs no pass. Usually less than `cache_mb`, which other processes share.
    pub resident_mb: f64,
    /// How fast the resident share falls once a graph's weights outgrow `resident_mb`: 1 = in
    /// proportion; larger = faster, as when each run's pass over the weights evicts its own lines
    /// before they are read again. In one bench run 16.8 MB of f32 weights stayed 97 % resident, 33.6 MB
    /// 32 % (exponent 1.6). Default 1 (0 is read as 1).
    #[serde(skip_serializing_if = "is_zero")]
    pub resident_exp: f64,
    /// Nanoseconds per weight element to unpack a low-bit weight (MatMulNBits) to float, once per
    /// call with more than one activation row, added to the compute time.
    pub unpack_ns: f64,
    /// Nanoseconds per weight element of the single-row low-bit kernel (M = 1), which unpacks in
    /// registers as it multiplies: the node takes at least this long.
    pub gemv_unpack_ns: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// Weight formats a quantisation pass can emit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightFormat {
    /// `com.microsoft::MatMulNBits`, 4-bit blocks (onnxruntime CPU/GPU and Ryzen AI hybrid flows).
    #[serde(rename = "int4-matmulnbits")]
    Int4MatMulNBits,
    /// 4-bit weights with a standard `DequantizeLinear` (blocked, opset 21+).
    #[serde(rename = "int4-dq")]
    Int4Dq,
    /// 8-bit `QuantizeLinear`/`DequantizeLinear` pairs on weights and activations.
    #[serde(rename = "int8-qdq")]
    Int8Qdq,
    /// Keep float weights.
    #[serde(rename = "none")]
    None,
}

/// Quantisation preferences of a target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuantPrefs {
    /// Preferred weight format.
    pub weight_format: WeightFormat,
    /// Whether scales must be powers of two (XDNA-class NPUs shift instead of multiplying).
    pub pow2_scales: bool,
    /// Activation precision for QDQ flows (`int8`, `int16`, `bf16`, ...).
    pub act_dtype: String,
    /// Block size for blocked weight quantisation.
    pub block_size: u32,
}

impl Default for QuantPrefs {
    fn default() -> Self {
        QuantPrefs {
            weight_format: WeightFormat::Int4MatMulNBits,
            pow2_scales: false,
            act_dtype: "f32".into(),
            block_size: 128,
        }
    }
}

fn all_ops() -> Vec<String> {
    vec!["*".into()]
}

fn yes() -> bool {
    true
}

/// Errors loading or validating a target.
#[derive(Debug, Error)]
pub enum TargetError {
    /// Neither a built-in name nor a file.
    #[error("unknown target '{name}'; built-in targets: {builtins} (or give a path to a .toml target file)")]
    Unknown { name: String, builtins: String },
    /// The file could not be read.
    #[error("cannot read target file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML did not parse or has a field of the wrong type (the message names the field).
    #[error("target file {file}: {message}")]
    Parse { file: String, message: String },
    /// A field parsed but its value is not acceptable.
    #[error("target file {file}: field `{field}`: {message}")]
    Invalid { file: String, field: String, message: String },
}

/// Figures of one device side (the target itself or its fallback), as the roofline uses them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Figures<'a> {
    pub tops: &'a BTreeMap<String, f64>,
    pub mem_bw_gbs: f64,
    pub eff_compute: f64,
    pub eff_memory: f64,
    pub launch_overhead_us: f64,
    pub cache_mb: f64,
    pub cache_bw_gbs: f64,
}

impl Figures<'_> {
    /// Effective ops per second for `p`, following [`Precision::lookup_chain`].
    pub(crate) fn ops_per_s(&self, p: Precision) -> f64 {
        let tops = p.lookup_chain().iter().find_map(|q| self.tops.get(q.name()).copied()).unwrap_or(0.0);
        tops * 1e12 * self.eff_compute
    }
    pub(crate) fn bytes_per_s(&self) -> f64 {
        self.mem_bw_gbs * 1e9 * self.eff_memory
    }
    /// Effective bytes per second for `act_bytes` of activations: the cache's when they fit.
    pub(crate) fn act_bytes_per_s(&self, act_bytes: f64) -> f64 {
        if self.cache_mb > 0.0 && self.cache_bw_gbs > 0.0 && act_bytes <= self.cache_mb * 1e6 {
            self.cache_bw_gbs * 1e9 * self.eff_memory
        } else {
            self.bytes_per_s()
        }
    }
}

const CPU_TOML: &str = include_str!("../targets/cpu.toml");
const NPU_TOML: &str = include_str!("../targets/npu.toml");
const IGPU_TOML: &str = include_str!("../targets/igpu.toml");
const GPU_TOML: &str = include_str!("../targets/gpu.toml");

impl Target {
    /// Names of the built-in targets.
    pub const BUILTINS: &'static [&'static str] = &["cpu", "npu", "igpu", "gpu"];

    /// The default target: the built-in `cpu` (Zen 5 class cores running onnxruntime, contrib ops on).
    pub fn cpu() -> Target {
        match Target::from_toml_str(CPU_TOML, "<built-in cpu>") {
            Ok(t) => t,
            // The built-in files are checked by the test suite; this arm only keeps the
            // signature infallible should one ever be broken.
            Err(_) => Target {
                name: "cpu".into(),
                description: String::new(),
                sources: Vec::new(),
                tops: [("f32".to_string(), 1.0)].into(),
                mem_bw_gbs: 100.0,
                mem_gb: 0.0,
                eff_compute: 0.5,
                eff_memory: 0.7,
                launch_overhead_us: 5.0,
                cache_mb: 0.0,
                cache_bw_gbs: 0.0,
                fused_activations: false,
                fused_epilogues: false,
                fused_composites: false,
                qdq_shared_inputs_fused: true,
                op_efficiency: BTreeMap::new(),
                weight_pass: None,
                native_ops: all_ops(),
                native_dtypes: Vec::new(),
                fallback: None,
                contrib_ops: true,
                quant: QuantPrefs::default(),
            },
        }
    }

    /// A built-in target by name (`cpu`, `npu`, `igpu`, `gpu`).
    pub fn builtin(name: &str) -> Result<Target, TargetError> {
        let text = match name {
            "cpu" => return Ok(Target::cpu()),
            "npu" => NPU_TOML,
            "igpu" => IGPU_TOML,
            "gpu" => GPU_TOML,
            _ => return Err(TargetError::Unknown { name: name.into(), builtins: Self::BUILTINS.join(", ") }),
        };
        Target::from_toml_str(text, &format!("<built-in {name}>"))
    }

    /// The TOML text of a built-in target, to start a custom file from.
    pub fn builtin_toml(name: &str) -> Option<&'static str> {
        match name {
            "cpu" => Some(CPU_TOML),
            "npu" => Some(NPU_TOML),
            "igpu" => Some(IGPU_TOML),
            "gpu" => Some(GPU_TOML),
            _ => None,
        }
    }

    /// Reads and validates a target file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Target, TargetError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|source| TargetError::Io { path: path.to_path_buf(), source })?;
        Target::from_toml_str(&text, &path.display().to_string())
    }

    /// A built-in name, or else a path to a `.toml` target file.
    pub fn load(name_or_path: &str) -> Result<Target, TargetError> {
        if Self::BUILTINS.contains(&name_or_path) {
            return Target::builtin(name_or_path);
        }
        let path = Path::new(name_or_path);
        if path.exists() || name_or_path.ends_with(".toml") || name_or_path.contains(std::path::MAIN_SEPARATOR) {
            return Target::from_path(path);
        }
        Err(TargetError::Unknown { name: name_or_path.into(), builtins: Self::BUILTINS.join(", ") })
    }

    /// Parses and validates target TOML; `file` names the source in error messages.
    pub fn from_toml_str(text: &str, file: &str) -> Result<Target, TargetError> {
        let t: Target = toml::from_str(text)
            .map_err(|e| TargetError::Parse { file: file.into(), message: one_line(&e.to_string()) })?;
        t.validate(file)?;
        Ok(t)
    }

    /// The target as TOML (round-trips through [`Target::from_toml_str`]).
    pub fn to_toml(&self) -> Result<String, TargetError> {
        toml::to_string(self).map_err(|e| TargetError::Parse { file: self.name.clone(), message: e.to_string() })
    }

    /// Checks ranges and names; `file` names the source in error messages.
    pub fn validate(&self, file: &str) -> Result<(), TargetError> {
        let bad =
            |field: &str, message: String| TargetError::Invalid { file: file.into(), field: field.into(), message };
        if self.name.trim().is_empty() {
            return Err(bad("name", "must not be empty".into()));
        }
        check_figures("", &self.figures()).map_err(|(f, m)| bad(&f, m))?;
        for (field, v) in [("cache_mb", self.cache_mb), ("cache_bw_gbs", self.cache_bw_gbs)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(field, format!("must be a non-negative number, got {v}")));
            }
        }
        if let Some(w) = &self.weight_pass {
            for (field, v) in [
                ("weight_pass.resident_mb", w.resident_mb),
                ("weight_pass.resident_exp", w.resident_exp),
                ("weight_pass.unpack_ns", w.unpack_ns),
                ("weight_pass.gemv_unpack_ns", w.gemv_unpack_ns),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(bad(field, format!("must be a non-negative number, got {v}")));
                }
            }
            if !(w.eff_stream.is_finite() && (0.0..=1.0).contains(&w.eff_stream)) {
                return Err(bad("weight_pass.eff_stream", format!("must be in [0, 1], got {}", w.eff_stream)));
            }
        }
        if !(self.mem_gb.is_finite() && self.mem_gb >= 0.0) {
            return Err(bad("mem_gb", format!("must be a non-negative number of GB, got {}", self.mem_gb)));
        }
        for d in &self.native_dtypes {
            if Precision::from_name(d).is_none() {
                return Err(bad("native_dtypes", format!("unknown precision '{d}'; known: {}", Precision::names())));
            }
        }
        for (op, k) in &self.op_efficiency {
            if !(k.is_finite() && *k > 0.0 && *k <= 10.0) {
                return Err(bad("op_efficiency", format!("'{op}': factor must be in (0, 10], got {k}")));
            }
        }
        if self.native_ops.is_empty() {
            return Err(bad("native_ops", "must list op types or be [\"*\"]".into()));
        }
        for p in Precision::ALL {
            if self.runs_precision(p) && self.figures().ops_per_s(p) <= 0.0 {
                let chain: Vec<&str> = p.lookup_chain().iter().map(|q| q.name()).collect();
                let msg = if self.native_dtypes.is_empty() {
                    format!(
                        "needs an `f32` entry (every precision is native when native_dtypes is empty; {} looks up {})",
                        p.name(),
                        chain.join(" -> ")
                    )
                } else {
                    format!("native precision {} needs one of: {}", p.name(), chain.join(", "))
                };
                return Err(bad("tops", msg));
            }
        }
        let restricted = !self.native_ops.iter().any(|o| o == "*") || !self.native_dtypes.is_empty();
        match &self.fallback {
            Some(fb) => {
                if fb.name.trim().is_empty() {
                    return Err(bad("fallback.name", "must not be empty".into()));
                }
                check_figures("fallback.", &fb.figures()).map_err(|(f, m)| bad(&f, m))?;
                if !fb.tops.contains_key("f32") {
                    return Err(bad(
                        "fallback.tops",
                        "needs an `f32` entry (the fallback runs every precision)".into(),
                    ));
                }
            }
            None if restricted => {
                return Err(bad(
                    "fallback",
                    "required when native_ops or native_dtypes restrict what runs on the device".into(),
                ));
            }
            None => {}
        }
        if Precision::from_name(&self.quant.act_dtype).is_none() {
            return Err(bad("quant.act_dtype", format!("unknown precision '{}'", self.quant.act_dtype)));
        }
        if self.quant.block_size == 0 {
            return Err(bad("quant.block_size", "must be positive".into()));
        }
        Ok(())
    }

    pub(crate) fn figures(&self) -> Figures<'_> {
        Figures {
            tops: &self.tops,
            mem_bw_gbs: self.mem_bw_gbs,
            eff_compute: self.eff_compute,
            eff_memory: self.eff_memory,
            launch_overhead_us: self.launch_overhead_us,
            cache_mb: self.cache_mb,
            cache_bw_gbs: self.cache_bw_gbs,
        }
    }

    /// Whether the device runs `op` (as printed by optc: `MatMul`, `com.microsoft::MatMulNBits`).
    pub fn runs_op(&self, op: &str) -> bool {
        let bare = op.rsplit("::").next().unwrap_or(op);
        self.native_ops.iter().any(|o| o == "*" || o == op || o == bare)
    }

    /// Whether the device computes in precision `p` natively.
    pub fn runs_precision(&self, p: Precision) -> bool {
        if self.native_dtypes.is_empty() {
            return true;
        }
        self.native_dtypes.iter().any(|d| d == p.name())
    }

    /// The float precision activations use on this device: the first of bf16, f16, f32 that
    /// it runs natively and has a TOPS figure for.
    pub fn preferred_float(&self) -> Precision {
        [Precision::BF16, Precision::F16]
            .into_iter()
            .find(|p| self.runs_precision(*p) && self.tops.contains_key(p.name()))
            .unwrap_or(Precision::F32)
    }
}

impl Fallback {
    pub(crate) fn figures(&self) -> Figures<'_> {
        Figures {
            tops: &self.tops,
            mem_bw_gbs: self.mem_bw_gbs,
            eff_compute: self.eff_compute,
            eff_memory: self.eff_memory,
            launch_overhead_us: self.launch_overhead_us,
            cache_mb: 0.0,
            cache_bw_gbs: 0.0,
        }
    }
}

fn check_figures(prefix: &str, f: &Figures<'_>) -> Result<(), (String, String)> {
    let field = |n: &str| format!("{prefix}{n}");
    for (k, v) in f.tops {
        if Precision::from_name(k).is_none() {
            return Err((field(&format!("tops.{k}")), format!("unknown precision; known: {}", Precision::names())));
        }
        if !(v.is_finite() && *v > 0.0) {
            return Err((field(&format!("tops.{k}")), format!("must be a positive number of TOPS, got {v}")));
        }
    }
    if !(f.mem_bw_gbs.is_finite() && f.mem_bw_gbs > 0.0) {
        return Err((field("mem_bw_gbs"), format!("must be a positive number of GB/s, got {}", f.mem_bw_gbs)));
    }
    for (name, v) in [("eff_compute", f.eff_compute), ("eff_memory", f.eff_memory)] {
        if !(v.is_finite() && v > 0.0 && v <= 1.0) {
            return Err((field(name), format!("must be in (0, 1], got {v}")));
        }
    }
    if !(f.launch_overhead_us.is_finite() && f.launch_overhead_us >= 0.0) {
        return Err((
            field("launch_overhead_us"),
            format!("must be a non-negative number of microseconds, got {}", f.launch_overhead_us),
        ));
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}

impl Default for Target {
    fn default() -> Self {
        Target::cpu()
    }
}
