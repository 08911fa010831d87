//! LLM metrics (LIFE's decoder model): time to first token, time per output token and tokens per
//! second of a LLaMA-shaped decoder on a target, from its shape and quantisation alone. Each
//! layer is a fixed list of operators (norm, projections, RoPE, attention, residuals, gated MLP)
//! costed with the same per-operator roofline as graph nodes.

use crate::model::Bound;
use crate::{Precision, Target};
use serde::Serialize;
use thiserror::Error;

/// A linear projection of a decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmProj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LlmProj {
    /// Every projection, in execution order.
    pub const ALL: [LlmProj; 7] =
        [LlmProj::Q, LlmProj::K, LlmProj::V, LlmProj::O, LlmProj::Gate, LlmProj::Up, LlmProj::Down];

    /// Lower-case name (`q`, `gate`, ...).
    pub fn name(self) -> &'static str {
        match self {
            LlmProj::Q => "q",
            LlmProj::K => "k",
            LlmProj::V => "v",
            LlmProj::O => "o",
            LlmProj::Gate => "gate",
            LlmProj::Up => "up",
            LlmProj::Down => "down",
        }
    }

    fn from_name(s: &str) -> Option<LlmProj> {
        Self::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// Shape and quantisation of a LLaMA-shaped decoder (RMSNorm, RoPE, GQA attention, gated MLP).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LlmConfig {
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    /// Weight bits per projection, in [`LlmProj::ALL`] order (16 = unquantised f16/bf16).
    pub proj_bits: [u32; 7],
    /// Embedding table bits (decode reads one row per token).
    pub embed_bits: u32,
    /// Output projection bits (ignored when `tied_embeddings`: the embedding table is used).
    pub lm_head_bits: u32,
    /// The output projection shares the embedding table.
    pub tied_embeddings: bool,
    /// Weights per quantisation scale (a block of `group_size` weights shares one scale).
    pub group_size: u32,
    /// Bits per scale (16 for f16 scales).
    pub scale_bits: u32,
    /// Asymmetric quantisation: each group also stores a zero point at the weight width.
    pub zero_points: bool,
    /// KV-cache element bits (16 = f16; fewer adds an f16 scale per token and head).
    pub kv_bits: u32,
    /// Activation precision; `None` takes the target's preferred float (bf16, f16 or f32).
    pub act: Option<Precision>,
    /// LoRA rank (0 = no adapters).
    pub lora_rank: u32,
    /// Projections carrying LoRA adapters.
    pub lora_targets: Vec<LlmProj>,
    /// Bits of the adapter weights.
    pub lora_bits: u32,
}

/// Errors parsing or validating an [`LlmConfig`].
#[derive(Debug, Error)]
pub enum LlmConfigError {
    #[error("unknown key '{key}' in LLM config; known keys: {known}")]
    UnknownKey { key: String, known: String },
    #[error("LLM config key '{key}': bad value '{value}' ({expected})")]
    BadValue { key: String, value: String, expected: String },
    #[error("LLM config: '{0}' is required (or give preset=NAME)")]
    Missing(&'static str),
    #[error("unknown LLM preset '{name}'; presets: {known}")]
    UnknownPreset { name: String, known: String },
    #[error("LLM config: {0}")]
    Invalid(String),
}

const KEYS: &[&str] = &[
    "preset",
    "layers",
    "hidden",
    "intermediate",
    "heads",
    "kv_heads",
    "head_dim",
    "vocab",
    "wbits",
    "attn_bits",
    "mlp_bits",
    "q_bits",
    "k_bits",
    "v_bits",
    "o_bits",
    "gate_bits",
    "up_bits",
    "down_bits",
    "gate_up_bits",
    "embed_bits",
    "lm_head_bits",
    "tied",
    "group_size",
    "scale_bits",
    "zero_points",
    "kv_bits",
    "act",
    "lora_rank",
    "lora_targets",
    "lora_bits",
];

impl LlmConfig {
    /// Names of the built-in shapes.
    pub const PRESETS: &'static [&'static str] = &["llama2-7b", "llama2-13b", "llama3-8b", "qwen3-4b", "internlm2-20b"];

    /// An unquantised (16-bit) decoder of the given shape, `kv_heads = heads`,
    /// `head_dim = hidden / heads`.
    pub fn new(layers: usize, hidden: usize, intermediate: usize, heads: usize, vocab: usize) -> LlmConfig {
        LlmConfig {
            layers,
            hidden,
            intermediate,
            heads,
            kv_heads: heads,
            head_dim: hidden / heads.max(1),
            vocab,
            proj_bits: [16; 7],
            embed_bits: 16,
            lm_head_bits: 16,
            tied_embeddings: false,
            group_size: 128,
            scale_bits: 16,
            zero_points: false,
            kv_bits: 16,
            act: None,
            lora_rank: 0,
            lora_targets: vec![LlmProj::Gate, LlmProj::Up],
            lora_bits: 16,
        }
    }

    /// A built-in shape (see [`LlmConfig::PRESETS`]), unquantised.
    pub fn preset(name: &str) -> Result<LlmConfig, LlmConfigError> {
        let mut c = match name {
            "llama2-7b" => LlmConfig::new(32, 4096, 11008, 32, 32000),
            "llama2-13b" => LlmConfig::new(40, 5120, 13824, 40, 32000),
            "llama3-8b" => {
                let mut c = LlmConfig::new(32, 4096, 14336, 32, 128256);
                c.kv_heads = 8;
                c
            }
            "qwen3-4b" => {
                let mut c = LlmConfig::new(36, 2560, 9728, 32, 151936);
                c.kv_heads = 8;
                c.head_dim = 128;
                c.tied_embeddings = true;
                c
            }
            "internlm2-20b" => {
                let mut c = LlmConfig::new(48, 6144, 16384, 48, 92544);
                c.kv_heads = 8;
                c
            }
            _ => {
                return Err(LlmConfigError::UnknownPreset { name: name.into(), known: Self::PRESETS.join(", ") });
            }
        };
        c.head_dim = c.head_dim.max(1);
        Ok(c)
    }

    /// Parses `key=value` pairs separated by commas, e.g.
    /// `layers=32,hidden=4096,intermediate=11008,heads=32,kv_heads=32,vocab=32000,wbits=4,gate_up_bits=2`
    /// or `preset=llama3-8b,wbits=4`. Later keys override earlier ones; `wbits` sets every
    /// projection, `attn_bits` q/k/v/o, `mlp_bits` gate/up/down, `gate_up_bits` gate and up.
    /// `lora_targets` takes projections joined by `+` (`gate+up`), `act` a precision name.
    pub fn parse(s: &str) -> Result<LlmConfig, LlmConfigError> {
        let pairs: Vec<(String, String)> = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
                None => Err(LlmConfigError::BadValue {
                    key: p.to_string(),
                    value: String::new(),
                    expected: "expected key=value".into(),
                }),
            })
            .collect::<Result<_, _>>()?;
        for (k, _) in &pairs {
            if !KEYS.contains(&k.as_str()) {
                return Err(LlmConfigError::UnknownKey { key: k.clone(), known: KEYS.join(", ") });
            }
        }
        let mut c = match pairs.iter().find(|(k, _)| k == "preset") {
            Some((_, v)) => LlmConfig::preset(v)?,
            None => {
                let get = |key: &'static str| -> Result<usize, LlmConfigError> {
                    let (_, v) = pairs.iter().rev().find(|(k, _)| k == key).ok_or(LlmConfigError::Missing(key))?;
                    parse_count(key, v)
                };
                LlmConfig::new(get("layers")?, get("hidden")?, get("intermediate")?, get("heads")?, get("vocab")?)
            }
        };
        let mut head_dim_set = false;
        for (k, v) in &pairs {
            let bits = || parse_bits(k, v);
            match k.as_str() {
                "preset" => {}
                "layers" => c.layers = parse_count(k, v)?,
                "hidden" => c.hidden = parse_count(k, v)?,
                "intermediate" => c.intermediate = parse_count(k, v)?,
                "heads" => c.heads = parse_count(k, v)?,
                "kv_heads" => c.kv_heads = parse_count(k, v)?,
                "head_dim" => {
                    c.head_dim = parse_count(k, v)?;
                    head_dim_set = true;
                }
                "vocab" => c.vocab = parse_count(k, v)?,
                "wbits" => c.proj_bits = [bits()?; 7],
                "attn_bits" => c.proj_bits[..4].fill(bits()?),
                "mlp_bits" => c.proj_bits[4..].fill(bits()?),
                "gate_up_bits" => c.proj_bits[4..6].fill(bits()?),
                "q_bits" => c.proj_bits[0] = bits()?,
                "k_bits" => c.proj_bits[1] = bits()?,
                "v_bits" => c.proj_bits[2] = bits()?,
                "o_bits" => c.proj_bits[3] = bits()?,
                "gate_bits" => c.proj_bits[4] = bits()?,
                "up_bits" => c.proj_bits[5] = bits()?,
                "down_bits" => c.proj_bits[6] = bits()?,
                "embed_bits" => c.embed_bits = bits()?,
                "lm_head_bits" => c.lm_head_bits = bits()?,
                "tied" => c.tied_embeddings = parse_bool(k, v)?,
                "group_size" => c.group_size = parse_count(k, v)? as u32,
                "scale_bits" => c.scale_bits = bits()?,
                "zero_points" => c.zero_points = parse_bool(k, v)?,
                "kv_bits" => c.kv_bits = bits()?,
                "act" => {
                    c.act = Some(Precision::from_name(v).ok_or_else(|| LlmConfigError::BadValue {
                        key: k.clone(),
                        value: v.clone(),
                        expected: format!("one of {}", Precision::names()),
                    })?)
                }
                "lora_rank" => c.lora_rank = parse_num(k, v)?,
                "lora_targets" => {
                    c.lora_targets = v
                        .split('+')
                        .map(|p| {
                            LlmProj::from_name(p.trim()).ok_or_else(|| LlmConfigError::BadValue {
                                key: k.clone(),
                                value: v.clone(),
                                expected: "projections q, k, v, o, gate, up, down joined by '+'".into(),
                            })
                        })
                        .collect::<Result<_, _>>()?
                }
                "lora_bits" => c.lora_bits = bits()?,
                _ => return Err(LlmConfigError::UnknownKey { key: k.clone(), known: KEYS.join(", ") }),
            }
        }
        let preset = pairs.iter().any(|(k, _)| k == "preset");
        let shape_changed = pairs.iter().any(|(k, _)| k == "hidden" || k == "heads");
        if !head_dim_set && (!preset || shape_changed) {
            c.head_dim = c.hidden / c.heads.max(1);
        }
        if !pairs.iter().any(|(k, _)| k == "kv_heads") && !preset {
            c.kv_heads = c.heads;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks that the shape is consistent.
    pub fn validate(&self) -> Result<(), LlmConfigError> {
        let inv = |m: String| Err(LlmConfigError::Invalid(m));
        for (name, v) in [
            ("layers", self.layers),
            ("hidden", self.hidden),
            ("intermediate", self.intermediate),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("vocab", self.vocab),
        ] {
            if v == 0 {
                return inv(format!("{name} must be positive"));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return inv(format!("heads ({}) must be a multiple of kv_heads ({})", self.heads, self.kv_heads));
        }
        if self.group_size == 0 {
            return inv("group_size must be positive".into());
        }
        Ok(())
    }

    /// Weight count of one projection (`in x out`).
    pub fn proj_params(&self, p: LlmProj) -> f64 {
        let (h, i) = (self.hidden as f64, self.intermediate as f64);
        let q = (self.heads * self.head_dim) as f64;
        let kv = (self.kv_heads * self.head_dim) as f64;
        match p {
            LlmProj::Q => h * q,
            LlmProj::K | LlmProj::V => h * kv,
            LlmProj::O => q * h,
            LlmProj::Gate | LlmProj::Up => h * i,
            LlmProj::Down => i * h,
        }
    }

    fn proj_io(&self, p: LlmProj) -> (f64, f64) {
        let (h, i) = (self.hidden as f64, self.intermediate as f64);
        let q = (self.heads * self.head_dim) as f64;
        let kv = (self.kv_heads * self.head_dim) as f64;
        match p {
            LlmProj::Q => (h, q),
            LlmProj::K | LlmProj::V => (h, kv),
            LlmProj::O => (q, h),
            LlmProj::Gate | LlmProj::Up => (h, i),
            LlmProj::Down => (i, h),
        }
    }

    /// Stored bytes of `n` weights at `bits`, with a scale (and zero point) per group when
    /// quantised (`bits < 16`).
    pub fn quant_bytes(&self, n: f64, bits: u32) -> f64 {
        let mut b = n * f64::from(bits) / 8.0;
        if bits < 16 {
            let per_group = f64::from(self.scale_bits) + if self.zero_points { f64::from(bits) } else { 0.0 };
            b += (n / f64::from(self.group_size)).ceil() * per_group / 8.0;
        }
        b
    }

    /// Parameters of the whole model (embeddings and output projection included once each).
    pub fn param_count(&self) -> f64 {
        let per_layer: f64 = LlmProj::ALL.iter().map(|&p| self.proj_params(p)).sum();
        let emb = (self.vocab * self.hidden) as f64;
        self.layers as f64 * per_layer + emb + if self.tied_embeddings { 0.0 } else { emb }
    }

    /// Stored bytes of every weight: projections, norms (16-bit), embeddings, output
    /// projection, LoRA adapters.
    pub fn weight_bytes(&self) -> f64 {
        let h = self.hidden as f64;
        let per_layer: f64 = LlmProj::ALL.iter().map(|&p| self.proj_bytes(p)).sum::<f64>() + 2.0 * h * 2.0;
        let emb = (self.vocab as f64) * h;
        self.layers as f64 * (per_layer + self.lora_bytes_per_layer())
            + self.quant_bytes(emb, self.embed_bits)
            + if self.tied_embeddings { 0.0 } else { self.quant_bytes(emb, self.lm_head_bits) }
            + h * 2.0
    }

    fn proj_bits(&self, p: LlmProj) -> u32 {
        self.proj_bits[p as usize]
    }

    fn proj_bytes(&self, p: LlmProj) -> f64 {
        self.quant_bytes(self.proj_params(p), self.proj_bits(p))
    }

    fn lora_bytes(&self, p: LlmProj) -> f64 {
        if self.lora_rank == 0 || !self.lora_targets.contains(&p) {
            return 0.0;
        }
        let (i, o) = self.proj_io(p);
        f64::from(self.lora_rank) * (i + o) * f64::from(self.lora_bits) / 8.0
    }

    fn lora_bytes_per_layer(&self) -> f64 {
        LlmProj::ALL.iter().map(|&p| self.lora_bytes(p)).sum()
    }

    /// KV-cache bytes at `context` tokens: `2 * layers * kv_heads * head_dim * context *
    /// kv_bits / 8`, plus an f16 scale per token, head and K/V when `kv_bits < 16`.
    pub fn kv_cache_bytes(&self, context: usize) -> f64 {
        self.kv_bytes_per_token() * context as f64
    }

    fn kv_bytes_per_token(&self) -> f64 {
        let heads = (self.layers * self.kv_heads) as f64;
        let mut b = 2.0 * heads * self.head_dim as f64 * f64::from(self.kv_bits) / 8.0;
        if self.kv_bits < 16 {
            b += 2.0 * heads * 2.0;
        }
        b
    }
}

fn parse_num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, LlmConfigError> {
    v.parse().map_err(|_| LlmConfigError::BadValue {
        key: key.into(),
        value: v.into(),
        expected: "expected a non-negative integer".into(),
    })
}

fn parse_count(key: &str, v: &str) -> Result<usize, LlmConfigError> {
    let n: usize = parse_num(key, v)?;
    if n == 0 {
        return Err(LlmConfigError::BadValue { key: key.into(), value: v.into(), expected: "must be positive".into() });
    }
    Ok(n)
}

fn parse_bits(key: &str, v: &str) -> Result<u32, LlmConfigError> {
    match v.parse::<u32>() {
        Ok(b @ 1..=32) => Ok(b),
        _ => Err(LlmConfigError::BadValue { key: key.into(), value: v.into(), expected: "bits in 1..=32".into() }),
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool, LlmConfigError> {
    match v {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(LlmConfigError::BadValue { key: key.into(), value: v.into(), expected: "true or false".into() }),
    }
}

/// Forecast of a decoder on a target.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LlmMetrics {
    pub target: String,
    /// Prompt tokens.
    pub prompt: usize,
    /// Generated tokens.
    pub generated: usize,
    /// KV length at which `tpot_s` is measured.
    pub context: usize,
    /// Prefill chunk (the whole prompt when absent).
    pub chunk: Option<usize>,
    /// Time to first token: prefill of the prompt (chunk by chunk), seconds.
    pub ttft_s: f64,
    /// Time per output token: one decode step with `context` tokens of KV cache, seconds.
    pub tpot_s: f64,
    /// Decode tokens per second, `1 / tpot_s`.
    pub tps: f64,
    /// TTFT plus every decode step from `prompt` to `prompt + generated` tokens of context, seconds.
    pub e2e_s: f64,
    /// KV-cache bytes at `context` tokens.
    pub kv_cache_bytes: f64,
    /// Stored weight bytes.
    pub weight_bytes: f64,
    /// Bytes one decode step moves at `context`.
    pub decode_bytes: f64,
    /// Ops of one decode step at `context`.
    pub decode_ops: f64,
    /// Ops of the whole prefill.
    pub prefill_ops: f64,
    pub prefill_bound: Bound,
    pub decode_bound: Bound,
    /// Precision activations and weight-only matmuls compute in.
    pub act_precision: Precision,
    /// Operators of a layer that run on the fallback device.
    pub fallback_ops: Vec<String>,
    /// Weights plus KV cache fit in the target's memory (`None` when `mem_gb` is 0).
    pub fits_in_memory: Option<bool>,
}

/// Accumulated time of a pass over the model.
#[derive(Default)]
struct Pass {
    time: f64,
    compute: f64,
    memory: f64,
    overhead: f64,
    ops: f64,
    bytes: f64,
    fallback: Vec<String>,
}

impl Pass {
    fn add(&mut self, target: &Target, name: &str, ops: f64, bytes: f64, p: Precision, times: f64) {
        let t = target.op_time(ops, bytes, p, target.runs_op(name));
        self.time += t.time_s * times;
        self.compute += t.compute_s * times;
        self.memory += t.memory_s * times;
        self.overhead += t.overhead_s * times;
        self.ops += ops * times;
        self.bytes += bytes * times;
        if t.fallback && !self.fallback.iter().any(|f| f == name) {
            self.fallback.push(name.to_string());
        }
    }
    fn bound(&self) -> Bound {
        if self.overhead >= self.compute.max(self.memory) {
            Bound::Overhead
        } else if self.compute >= self.memory {
            Bound::Compute
        } else {
            Bound::Memory
        }
    }
}

/// The tokens of one forward pass.
struct Step {
    /// New tokens.
    t: f64,
    /// Keys each query attends to, on average.
    keys: f64,
    /// Tokens already in the KV cache.
    past: f64,
    /// Tokens whose logits are computed.
    logits: f64,
}

/// Adds one forward pass over `step.t` new tokens to `pass`.
fn forward(cfg: &LlmConfig, target: &Target, act: Precision, step: Step, pass: &mut Pass) {
    let Step { t, keys, past, logits } = step;
    let ab = act_bytes(act);
    let (h, i) = (cfg.hidden as f64, cfg.intermediate as f64);
    let l = cfg.layers as f64;
    let qd = (cfg.heads * cfg.head_dim) as f64;
    let kvd = (cfg.kv_heads * cfg.head_dim) as f64;
    let kv_tok = cfg.kv_bytes_per_token() / l;
    let norm = |pass: &mut Pass| {
        pass.add(target, "SimplifiedLayerNormalization", 6.0 * t * h, 2.0 * t * h * ab + 2.0 * h, act, l)
    };
    let proj = |pass: &mut Pass, p: LlmProj| {
        let (fi, fo) = cfg.proj_io(p);
        let bits = cfg.proj_bits(p);
        let op = if bits < 16 { "MatMulNBits" } else { "MatMul" };
        pass.add(target, op, 2.0 * t * fi * fo, cfg.proj_bytes(p) + t * (fi + fo) * ab, act, l);
        let lb = cfg.lora_bytes(p);
        if lb > 0.0 {
            let r = f64::from(cfg.lora_rank);
            pass.add(target, "MatMul", 2.0 * t * r * (fi + fo), lb + t * (fi + 2.0 * r + fo) * ab, act, l);
        }
    };
    // Embedding rows.
    let emb_row = cfg.quant_bytes(h, cfg.embed_bits);
    pass.add(target, "Gather", 0.0, t * (emb_row + h * ab), act, 1.0);
    norm(pass);
    for p in [LlmProj::Q, LlmProj::K, LlmProj::V] {
        proj(pass, p);
    }
    pass.add(target, "RotaryEmbedding", 3.0 * t * (qd + kvd), 2.0 * t * (qd + kvd) * ab, act, l);
    // Attention: QK^T and PV over `keys` keys, softmax on the scores; reads the cached K/V of
    // `past` tokens and writes the new ones.
    let scores = t * cfg.heads as f64 * keys;
    let attn_ops = 4.0 * scores * cfg.head_dim as f64 + 5.0 * scores;
    let attn_bytes = t * (qd + 2.0 * kvd + qd) * ab + (past + t) * kv_tok + t * kv_tok;
    pass.add(target, "GroupQueryAttention", attn_ops, attn_bytes, act, l);
    proj(pass, LlmProj::O);
    pass.add(target, "Add", t * h, 3.0 * t * h * ab, act, l);
    norm(pass);
    proj(pass, LlmProj::Gate);
    proj(pass, LlmProj::Up);
    pass.add(target, "Mul", 5.0 * t * i, 3.0 * t * i * ab, act, l);
    proj(pass, LlmProj::Down);
    pass.add(target, "Add", t * h, 3.0 * t * h * ab, act, l);
    // Final norm and output projection on the tokens whose logits are needed.
    pass.add(target, "SimplifiedLayerNormalization", 6.0 * logits * h, 2.0 * logits * h * ab + 2.0 * h, act, 1.0);
    let head_bits = if cfg.tied_embeddings { cfg.embed_bits } else { cfg.lm_head_bits };
    let head_op = if head_bits < 16 { "MatMulNBits" } else { "MatMul" };
    let v = cfg.vocab as f64;
    let head_bytes = cfg.quant_bytes(v * h, head_bits) + logits * (h + v) * ab;
    pass.add(target, head_op, 2.0 * logits * h * v, head_bytes, act, 1.0);
}

fn act_bytes(p: Precision) -> f64 {
    match p {
        Precision::F64 => 8.0,
        Precision::F32 | Precision::Int32 => 4.0,
        Precision::F16 | Precision::BF16 | Precision::Int16 => 2.0,
        Precision::FP8 | Precision::Int8 => 1.0,
        Precision::Int4 => 0.5,
        Precision::Int2 => 0.25,
    }
}

/// Forecasts TTFT, TPOT and TPS of `cfg` on `target`.
///
/// - Prefill: the `prompt` tokens in chunks of `chunk` (all at once when `None`); each chunk
///   re-reads every weight and attends to the KV cache so far (causal: a chunk of `c` tokens
///   after `s` cached ones sees `s + (c + 1) / 2` keys on average). Logits only for the last token.
/// - Decode: one token attending to `context` keys, reading every weight and the whole KV cache.
///   `tpot_s` is that step; `tps = 1 / tpot_s`.
/// - Each operator is costed with [`Target::op_time`] (roofline plus one launch); weight-only
///   quantised matmuls compute at the activation precision.
pub fn llm_metrics(
    cfg: &LlmConfig,
    target: &Target,
    prompt: usize,
    generated: usize,
    context: usize,
    chunk: Option<usize>,
) -> Result<LlmMetrics, LlmConfigError> {
    cfg.validate()?;
    if chunk == Some(0) {
        return Err(LlmConfigError::Invalid("prefill chunk must be positive".into()));
    }
    let act = cfg.act.unwrap_or_else(|| target.preferred_float());
    let mut prefill = Pass::default();
    let step = chunk.unwrap_or(prompt).max(1);
    let mut start = 0usize;
    while start < prompt {
        let c = step.min(prompt - start);
        let (s, cf) = (start as f64, c as f64);
        let last = start + c >= prompt;
        let logits = if last { 1.0 } else { 0.0 };
        forward(cfg, target, act, Step { t: cf, keys: s + (cf + 1.0) / 2.0, past: s, logits }, &mut prefill);
        start += c;
    }
    let decode_at = |ctx: usize| {
        let mut d = Pass::default();
        let step = Step { t: 1.0, keys: ctx as f64, past: ctx.saturating_sub(1) as f64, logits: 1.0 };
        forward(cfg, target, act, step, &mut d);
        d
    };
    let decode = decode_at(context);
    let mut e2e = prefill.time;
    for j in 0..generated {
        e2e += decode_at(prompt + j + 1).time;
    }
    let weight_bytes = cfg.weight_bytes();
    let kv = cfg.kv_cache_bytes(context);
    let mut fallback_ops = decode.fallback.clone();
    for f in &prefill.fallback {
        if !fallback_ops.contains(f) {
            fallback_ops.push(f.clone());
        }
    }
    Ok(LlmMetrics {
        target: target.name.clone(),
        prompt,
        generated,
        context,
        chunk,
        ttft_s: prefill.time,
        tpot_s: decode.time,
        tps: if decode.time > 0.0 { 1.0 / decode.time } else { 0.0 },
        e2e_s: e2e,
        kv_cache_bytes: kv,
        weight_bytes,
        decode_bytes: decode.bytes,
        decode_ops: decode.ops,
        prefill_ops: prefill.ops,
        prefill_bound: prefill.bound(),
        decode_bound: decode.bound(),
        act_precision: act,
        fallback_ops,
        fits_in_memory: (target.mem_gb > 0.0).then_some(weight_bytes + kv <= target.mem_gb * 1e9),
    })
}
