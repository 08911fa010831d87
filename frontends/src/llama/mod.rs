//! LLaMA-architecture decoders with a KV cache, built from a config and a source of weights.
//!
//! One graph serves prefill and decode, with the inputs and outputs named as Hugging Face
//! Optimum and onnxruntime-genai name them:
//!
//! | input | shape |
//! |---|---|
//! | `input_ids` | `[batch, sequence_length]` int64 |
//! | `attention_mask` | `[batch, total_sequence_length]` int64 (1 = attend) |
//! | `position_ids` | `[batch, sequence_length]` int64 |
//! | `past_key_values.{i}.key` / `.value` | `[batch, kv_heads, past_sequence_length, head_dim]` f32 |
//!
//! and outputs `logits` `[batch, sequence_length, vocab]` and `present.{i}.key` / `.value`
//! `[batch, kv_heads, total_sequence_length, head_dim]`. For a prompt, the past tensors have
//! `past_sequence_length = 0`.
//!
//! The graph is written the way exporters write a Hugging Face `LlamaForCausalLM`: decomposed
//! RMSNorm, rotate-half RoPE from cos/sin tables gathered by `position_ids`, GQA by
//! Unsqueeze/Expand/Reshape, SiLU as `x * Sigmoid(x)`, all in standard ops at opset 17, so optc's
//! fusions and cost model see the patterns they see in exported models. Linear layers are
//! `MatMul` on float32 weights or, for block-quantised weights, `com.microsoft::MatMulNBits`
//! (codes, a scale and a zero point per block: `(code - zero_point) * scale`).

pub mod gguf;

use optc_ir::{
    AttrValue, Attribute, Bytes, DType, Decl, Dim, Graph, IrError, Model, NodeSpec, Op, OpsetImport, Tensor, Type,
    ValueId,
};
use std::collections::HashMap;

/// The shape of a LLaMA-family decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// The MLP's intermediate size.
    pub ffn: usize,
    pub vocab: usize,
    /// Rows of the RoPE tables: the longest context the graph serves.
    pub max_pos: usize,
    pub rope_base: f64,
    pub rms_eps: f32,
    /// The graph's name.
    pub name: String,
}

impl LlamaConfig {
    /// Checks that the sizes fit together; the message names the offending field.
    pub fn check(&self) -> Result<(), String> {
        let c = self;
        let positive = [
            ("layers", c.layers),
            ("hidden", c.hidden),
            ("heads", c.heads),
            ("kv_heads", c.kv_heads),
            ("head_dim", c.head_dim),
            ("ffn", c.ffn),
            ("vocab", c.vocab),
            ("max_pos", c.max_pos),
        ];
        if let Some((k, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{k} must be at least 1"));
        }
        if !c.heads.is_multiple_of(c.kv_heads) {
            return Err(format!("heads ({}) is not a multiple of kv_heads ({})", c.heads, c.kv_heads));
        }
        if !c.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim ({}) must be even for RoPE", c.head_dim));
        }
        if !(c.rope_base.is_finite() && c.rope_base > 1.0) {
            return Err(format!("rope_base ({}) must be a finite number above 1", c.rope_base));
        }
        if !(c.rms_eps.is_finite() && c.rms_eps >= 0.0) {
            return Err(format!("rms_eps ({}) must be a finite non-negative number", c.rms_eps));
        }
        Ok(())
    }
}

/// A weight matrix of a linear layer or an embedding table, `rows x cols` in row-major order.
/// For a linear layer, rows are output features and cols input features (`nn.Linear.weight`).
#[derive(Clone, Debug)]
pub enum Matrix {
    Dense {
        rows: usize,
        cols: usize,
        data: Vec<f32>,
    },
    /// Blocks of `block` consecutive elements along a row, each with a scale and a zero point:
    /// element = `(code - zero_points[b]) * scales[b]`, blocks numbered row by row.
    Blocks {
        rows: usize,
        cols: usize,
        /// 2, 4 or 8: the width MatMulNBits stores the codes at.
        bits: u8,
        block: usize,
        /// One code per element, unpacked.
        codes: Vec<u8>,
        scales: Vec<f32>,
        zero_points: Vec<f32>,
    },
}

impl Matrix {
    pub fn rows(&self) -> usize {
        match self {
            Matrix::Dense { rows, .. } | Matrix::Blocks { rows, .. } => *rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Matrix::Dense { cols, .. } | Matrix::Blocks { cols, .. } => *cols,
        }
    }

    fn check(&self, what: &str, rows: usize, cols: usize) -> Result<(), String> {
        if (self.rows(), self.cols()) != (rows, cols) {
            return Err(format!("{what} is {}x{}, expected {rows}x{cols}", self.rows(), self.cols()));
        }
        match self {
            Matrix::Dense { data, .. } if data.len() != rows * cols => {
                Err(format!("{what} holds {} values, expected {}", data.len(), rows * cols))
            }
            Matrix::Blocks { bits, block, codes, scales, zero_points, .. } => {
                let nb = rows * cols.div_ceil((*block).max(1));
                if !matches!(bits, 2 | 4 | 8) || *block < 16 || !block.is_power_of_two() {
                    Err(format!("{what}: {bits}-bit blocks of {block} cannot be MatMulNBits"))
                } else if codes.len() != rows * cols || scales.len() != nb || zero_points.len() != nb {
                    Err(format!("{what}: block data does not match {rows}x{cols} in blocks of {block}"))
                } else if codes.iter().any(|&c| u32::from(c) >= 1 << bits) {
                    Err(format!("{what}: a code does not fit in {bits} bits"))
                } else if *bits == 8 && zero_points.iter().any(|z| z.fract() != 0.0) {
                    // onnxruntime's CPU MatMulNBits takes float zero points for 2 and 4 bits only.
                    Err(format!("{what}: 8-bit blocks need whole-number zero points"))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// The matrix as float32, row-major.
    pub fn to_dense(&self) -> Vec<f32> {
        match self {
            Matrix::Dense { data, .. } => data.clone(),
            Matrix::Blocks { cols, block, codes, scales, zero_points, .. } => {
                let nbr = cols.div_ceil(*block);
                codes
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| {
                        let b = (i / cols) * nbr + (i % cols) / block;
                        (f32::from(c) - zero_points[b]) * scales[b]
                    })
                    .collect()
            }
        }
    }
}

/// Which linear layer of a decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    /// The Hugging Face module path below `model.layers.{i}`.
    pub fn hf_path(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }
}

/// Which RMSNorm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Norm {
    Input(usize),
    PostAttention(usize),
    Final,
}

/// Where the builder gets weights, one tensor at a time (so an importer can convert each tensor
/// as it is asked for and never hold two copies of the model).
///
/// Q and K projections must be in Hugging Face's layout: rows of each head ordered for
/// rotate-half RoPE (first half of the head dim, then the second).
pub trait LlamaWeights {
    /// `[vocab, hidden]`.
    fn embedding(&mut self) -> Result<Matrix, String>;
    /// `[out, in]` as `nn.Linear` stores it.
    fn linear(&mut self, layer: usize, proj: Proj) -> Result<Matrix, String>;
    /// `[hidden]`.
    fn norm(&mut self, which: Norm) -> Result<Vec<f32>, String>;
    /// `[vocab, hidden]`; `None` when the head is tied to the embedding.
    fn lm_head(&mut self) -> Result<Option<Matrix>, String>;
}

/// Builds the decoder graph. Errors name the tensor that does not fit.
pub fn build(cfg: &LlamaConfig, w: &mut dyn LlamaWeights) -> Result<Model, String> {
    cfg.check()?;
    let mut b = Builder::new(&cfg.name);
    let (h, heads, kvh, d) = (cfg.hidden, cfg.heads as i64, cfg.kv_heads as i64, cfg.head_dim as i64);
    let batch = || Dim::sym("batch");
    let i64t = |dims: Vec<Dim>| Type::tensor(DType::I64, dims);
    let ids = b.input("input_ids", i64t(vec![batch(), Dim::sym("sequence_length")]))?;
    let mask = b.input("attention_mask", i64t(vec![batch(), Dim::sym("total_sequence_length")]))?;
    let pos = b.input("position_ids", i64t(vec![batch(), Dim::sym("sequence_length")]))?;
    let cache_ty = |seq: &str| Type::tensor(DType::F32, vec![batch(), Dim::known(kvh), Dim::sym(seq), Dim::known(d)]);
    let mut past = Vec::with_capacity(cfg.layers);
    for i in 0..cfg.layers {
        let k = b.input(&format!("past_key_values.{i}.key"), cache_ty("past_sequence_length"))?;
        let v = b.input(&format!("past_key_values.{i}.value"), cache_ty("past_sequence_length"))?;
        past.push((k, v));
    }

    // Embedding.
    let m = "/model";
    let emb = w.embedding()?;
    emb.check("the token embedding", cfg.vocab, h)?;
    let (mut x, shared) = b.embedding(&format!("{m}/embed_tokens"), "model.embed_tokens.weight", &emb, ids)?;
    let (head, shared) = match w.lm_head()? {
        Some(head) => {
            head.check("the LM head", cfg.vocab, h)?;
            (head, None)
        }
        None => (emb, shared),
    };

    // RoPE tables gathered by position: [batch, 1, seq, head_dim].
    let (cos, sin) = rope_tables(cfg);
    let r = format!("{m}/rotary_emb");
    let cos = b.init_f32("model.rotary_emb.cos_cached", &[cfg.max_pos as i64, d], &cos)?;
    let sin = b.init_f32("model.rotary_emb.sin_cached", &[cfg.max_pos as i64, d], &sin)?;
    let cos = b.op(&r, Op::Gather, &[cos, pos], vec![Attribute::int("axis", 0)])?;
    let sin = b.op(&r, Op::Gather, &[sin, pos], vec![Attribute::int("axis", 0)])?;
    let cos = b.unsqueeze(&r, cos, &[1])?;
    let sin = b.unsqueeze(&r, sin, &[1])?;

    // Additive attention bias [batch, 1, seq, total]: key j is visible to query i (absolute
    // position past + i) when j <= past + i and the mask lets it through.
    let bias = attention_bias(&mut b, m, ids, mask, past[0].0)?;

    for (i, &(past_k, past_v)) in past.iter().enumerate() {
        let (s, p) = (format!("{m}/layers.{i}"), format!("model.layers.{i}"));
        let y = rms_norm(
            &mut b,
            &format!("{s}/input_layernorm"),
            &format!("{p}.input_layernorm"),
            x,
            w.norm(Norm::Input(i))?,
            cfg,
        )?;
        let a = format!("{s}/self_attn");
        let lin = |b: &mut Builder, w: &mut dyn LlamaWeights, x: ValueId, pj: Proj, rows: usize, cols: usize| {
            let mat = w.linear(i, pj)?;
            mat.check(&format!("{p}.{}", pj.hf_path()), rows, cols)?;
            b.linear(&format!("{s}/{}", pj.hf_path().replace('.', "/")), &format!("{p}.{}", pj.hf_path()), &mat, x)
        };
        let q = lin(&mut b, w, y, Proj::Q, cfg.heads * cfg.head_dim, h)?;
        let k = lin(&mut b, w, y, Proj::K, cfg.kv_heads * cfg.head_dim, h)?;
        let v = lin(&mut b, w, y, Proj::V, cfg.kv_heads * cfg.head_dim, h)?;
        let split_heads = |b: &mut Builder, t: ValueId, n: i64| -> Result<ValueId, String> {
            let r = b.reshape(&a, t, &[0, 0, n, d])?;
            b.transpose(&a, r, &[0, 2, 1, 3])
        };
        let q = split_heads(&mut b, q, heads)?;
        let k = split_heads(&mut b, k, kvh)?;
        let v = split_heads(&mut b, v, kvh)?;
        let q = rope(&mut b, &a, q, cos, sin, d)?;
        let k = rope(&mut b, &a, k, cos, sin, d)?;
        let k_all = b.op(&a, Op::Concat, &[past_k, k], vec![Attribute::int("axis", 2)])?;
        let v_all = b.op(&a, Op::Concat, &[past_v, v], vec![Attribute::int("axis", 2)])?;
        b.output(k_all, &format!("present.{i}.key"), cache_ty("total_sequence_length"))?;
        b.output(v_all, &format!("present.{i}.value"), cache_ty("total_sequence_length"))?;
        let (mut k_rep, mut v_rep) = (k_all, v_all);
        let rep = heads / kvh;
        if rep > 1 {
            let repeat = |b: &mut Builder, t: ValueId| -> Result<ValueId, String> {
                let u = b.unsqueeze(&a, t, &[2])?;
                let shape = b.const_i64(&a, &[5], &[1, 1, rep, 1, 1])?;
                let e = b.op(&a, Op::Expand, &[u, shape], vec![])?;
                b.reshape(&a, e, &[0, heads, -1, d])
            };
            k_rep = repeat(&mut b, k_all)?;
            v_rep = repeat(&mut b, v_all)?;
        }
        let kt = b.transpose(&a, k_rep, &[0, 1, 3, 2])?;
        let scores = b.op(&a, Op::MatMul, &[q, kt], vec![])?;
        let scale = b.const_f32(&a, 1.0 / (d as f32).sqrt())?;
        let scores = b.op(&a, Op::Mul, &[scores, scale], vec![])?;
        let scores = b.op(&a, Op::Add, &[scores, bias], vec![])?;
        let probs = b.op(&a, Op::Softmax, &[scores], vec![Attribute::int("axis", -1)])?;
        let ctx = b.op(&a, Op::MatMul, &[probs, v_rep], vec![])?;
        let ctx = b.transpose(&a, ctx, &[0, 2, 1, 3])?;
        let ctx = b.reshape(&a, ctx, &[0, 0, heads * d])?;
        let o = lin(&mut b, w, ctx, Proj::O, h, cfg.heads * cfg.head_dim)?;
        x = b.op(&s, Op::Add, &[x, o], vec![])?;

        let y = rms_norm(
            &mut b,
            &format!("{s}/post_attention_layernorm"),
            &format!("{p}.post_attention_layernorm"),
            x,
            w.norm(Norm::PostAttention(i))?,
            cfg,
        )?;
        let g = lin(&mut b, w, y, Proj::Gate, cfg.ffn, h)?;
        let act = format!("{s}/mlp/act_fn");
        let sg = b.op(&act, Op::Sigmoid, &[g], vec![])?;
        let g = b.op(&act, Op::Mul, &[g, sg], vec![])?;
        let u = lin(&mut b, w, y, Proj::Up, cfg.ffn, h)?;
        let gu = b.op(&format!("{s}/mlp"), Op::Mul, &[g, u], vec![])?;
        let down = lin(&mut b, w, gu, Proj::Down, h, cfg.ffn)?;
        x = b.op(&s, Op::Add, &[x, down], vec![])?;
    }
    let y = rms_norm(&mut b, &format!("{m}/norm"), "model.norm", x, w.norm(Norm::Final)?, cfg)?;
    let logits = match shared {
        // A tied 8-bit head reads the embedding's own codes and scales.
        Some((codes, scales)) => b.matmul_nbits("/lm_head", &head, y, codes, scales, None)?,
        None => b.linear("/lm_head", "lm_head", &head, y)?,
    };
    let vocab = cfg.vocab as i64;
    b.output(
        logits,
        "logits",
        Type::tensor(DType::F32, vec![batch(), Dim::sym("sequence_length"), Dim::known(vocab)]),
    )?;
    // Present outputs were declared layer by layer; ONNX exporters list logits first.
    let logits_decl = b.graph.outputs.pop().expect("just pushed");
    b.graph.outputs.insert(0, logits_decl);

    let mut model = Model::new(b.graph, 17);
    if b.used_contrib {
        model.opset_imports.push(OpsetImport::new("com.microsoft", 1));
    }
    model.producer_name = Some("optc".into());
    model.producer_version = Some(env!("CARGO_PKG_VERSION").into());
    Ok(model)
}

/// HF's RoPE tables, `emb = cat(freqs, freqs)` with `freqs[p, j] = p / base^(2j / d)`, in f64
/// then rounded.
fn rope_tables(cfg: &LlamaConfig) -> (Vec<f32>, Vec<f32>) {
    let d = cfg.head_dim;
    let mut cos = Vec::with_capacity(cfg.max_pos * d);
    let mut sin = Vec::with_capacity(cfg.max_pos * d);
    for p in 0..cfg.max_pos {
        for j in 0..d {
            let f = p as f64 / cfg.rope_base.powf((2 * (j % (d / 2))) as f64 / d as f64);
            cos.push(f.cos() as f32);
            sin.push(f.sin() as f32);
        }
    }
    (cos, sin)
}

fn attention_bias(b: &mut Builder, m: &str, ids: ValueId, mask: ValueId, past_k: ValueId) -> Result<ValueId, String> {
    let s = format!("{m}/attention_bias");
    let seq = b.dim(&s, ids, 1)?;
    let total = b.dim(&s, mask, 1)?;
    let past = b.dim(&s, past_k, 2)?;
    let (zero, one) = (b.const_i64(&s, &[], &[0])?, b.const_i64(&s, &[], &[1])?);
    let end = b.op(&s, Op::Add, &[past, seq], vec![])?;
    let q_pos = b.op(&s, Op::Range, &[past, end, one], vec![])?;
    let k_pos = b.op(&s, Op::Range, &[zero, total, one], vec![])?;
    let q_pos = b.unsqueeze(&s, q_pos, &[1])?;
    let k_pos = b.unsqueeze(&s, k_pos, &[0])?;
    let causal = b.op(&s, Op::LessOrEqual, &[k_pos, q_pos], vec![])?;
    let pad = b.op(&s, Op::Cast, &[mask], vec![Attribute::int("to", DType::Bool.onnx_code() as i64)])?;
    let pad = b.unsqueeze(&s, pad, &[1, 2])?;
    let ok = b.op(&s, Op::And, &[causal, pad], vec![])?;
    let (z, neg) = (b.const_f32(&s, 0.0)?, b.const_f32(&s, f32::MIN)?);
    b.op(&s, Op::Where, &[ok, z, neg], vec![])
}

/// HF's `LlamaRMSNorm`: `weight * (x * 1 / sqrt(mean(x^2) + eps))`.
fn rms_norm(
    b: &mut Builder,
    scope: &str,
    prefix: &str,
    x: ValueId,
    weight: Vec<f32>,
    cfg: &LlamaConfig,
) -> Result<ValueId, String> {
    if weight.len() != cfg.hidden {
        return Err(format!("{prefix}.weight holds {} values, expected {}", weight.len(), cfg.hidden));
    }
    let w = b.init_f32(&format!("{prefix}.weight"), &[cfg.hidden as i64], &weight)?;
    let two = b.const_f32(scope, 2.0)?;
    let sq = b.op(scope, Op::Pow, &[x, two], vec![])?;
    let var =
        b.op(scope, Op::ReduceMean, &[sq], vec![Attribute::ints("axes", vec![-1]), Attribute::int("keepdims", 1)])?;
    let eps = b.const_f32(scope, cfg.rms_eps)?;
    let ve = b.op(scope, Op::Add, &[var, eps], vec![])?;
    let sd = b.op(scope, Op::Sqrt, &[ve], vec![])?;
    let r = b.op(scope, Op::Reciprocal, &[sd], vec![])?;
    let n = b.op(scope, Op::Mul, &[x, r], vec![])?;
    b.op(scope, Op::Mul, &[w, n], vec![])
}

/// `x * cos + rotate_half(x) * sin`, `rotate_half(x) = cat(-x[..., d/2:], x[..., :d/2])`.
fn rope(b: &mut Builder, s: &str, x: ValueId, cos: ValueId, sin: ValueId, d: i64) -> Result<ValueId, String> {
    let xc = b.op(s, Op::Mul, &[x, cos], vec![])?;
    let (st, en, ax, step) = (
        b.const_i64(s, &[1], &[0])?,
        b.const_i64(s, &[1], &[d / 2])?,
        b.const_i64(s, &[1], &[-1])?,
        b.const_i64(s, &[1], &[1])?,
    );
    let x1 = b.op(s, Op::Slice, &[x, st, en, ax, step], vec![])?;
    let (st, en) = (b.const_i64(s, &[1], &[d / 2])?, b.const_i64(s, &[1], &[i64::MAX])?);
    let (ax, step) = (b.const_i64(s, &[1], &[-1])?, b.const_i64(s, &[1], &[1])?);
    let x2 = b.op(s, Op::Slice, &[x, st, en, ax, step], vec![])?;
    let neg = b.op(s, Op::Neg, &[x2], vec![])?;
    let rh = b.op(s, Op::Concat, &[neg, x1], vec![Attribute::int("axis", -1)])?;
    let rs = b.op(s, Op::Mul, &[rh, sin], vec![])?;
    b.op(s, Op::Add, &[xc, rs], vec![])
}

/// Names nodes `{scope}/{OpType}` (`_1`, `_2` on repeats) as torch.onnx does.
struct Builder {
    graph: Graph,
    names: HashMap<String, usize>,
    used_contrib: bool,
}

fn ie(e: IrError) -> String {
    e.to_string()
}

impl Builder {
    fn new(name: &str) -> Builder {
        Builder { graph: Graph::new(name), names: HashMap::new(), used_contrib: false }
    }

    fn input(&mut self, name: &str, ty: Type) -> Result<ValueId, String> {
        let v = self.graph.add_value(name, Some(ty)).map_err(ie)?;
        self.graph.inputs.push(Decl::new(v));
        Ok(v)
    }

    fn output(&mut self, v: ValueId, name: &str, ty: Type) -> Result<(), String> {
        self.graph.rename_value(v, name).map_err(ie)?;
        self.graph.value_mut(v).ty = Some(ty);
        self.graph.outputs.push(Decl::new(v));
        Ok(())
    }

    fn node_name(&mut self, base: String) -> String {
        match self.names.get_mut(&base) {
            None => {
                self.names.insert(base.clone(), 0);
                base
            }
            Some(n) => {
                *n += 1;
                format!("{base}_{n}")
            }
        }
    }

    fn op_with(
        &mut self,
        scope: &str,
        op: Op,
        ins: &[Option<ValueId>],
        attrs: Vec<Attribute>,
    ) -> Result<ValueId, String> {
        let name = self.node_name(format!("{scope}/{}", op.op_type()));
        let vn = self.graph.fresh_name(&format!("{name}_output_0"));
        let out = self.graph.add_value(vn, None).map_err(ie)?;
        let spec = NodeSpec::new(op, ins.to_vec(), vec![Some(out)]).named(name).attrs(attrs);
        self.graph.add_node(spec).map_err(ie)?;
        Ok(out)
    }

    fn op(&mut self, scope: &str, op: Op, ins: &[ValueId], attrs: Vec<Attribute>) -> Result<ValueId, String> {
        let ins: Vec<Option<ValueId>> = ins.iter().map(|&v| Some(v)).collect();
        self.op_with(scope, op, &ins, attrs)
    }

    fn init(&mut self, name: &str, dtype: DType, dims: &[i64], raw: Vec<u8>) -> Result<ValueId, String> {
        let name = self.graph.fresh_name(name);
        let t = Tensor::from_raw(Some(name.clone()), dtype, dims.to_vec(), Bytes::from(raw));
        self.graph.add_initializer(name, t).map_err(ie)
    }

    fn init_f32(&mut self, name: &str, dims: &[i64], data: &[f32]) -> Result<ValueId, String> {
        self.init(name, DType::F32, dims, data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn constant(&mut self, scope: &str, dtype: DType, dims: &[i64], raw: Vec<u8>) -> Result<ValueId, String> {
        let t = Tensor::from_raw(None, dtype, dims.to_vec(), Bytes::from(raw));
        self.op(scope, Op::Constant, &[], vec![Attribute::new("value", AttrValue::Tensor(t))])
    }

    fn const_f32(&mut self, scope: &str, v: f32) -> Result<ValueId, String> {
        self.constant(scope, DType::F32, &[], v.to_le_bytes().to_vec())
    }

    fn const_i64(&mut self, scope: &str, dims: &[i64], data: &[i64]) -> Result<ValueId, String> {
        self.constant(scope, DType::I64, dims, data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn unsqueeze(&mut self, scope: &str, x: ValueId, axes: &[i64]) -> Result<ValueId, String> {
        let ax = self.const_i64(scope, &[axes.len() as i64], axes)?;
        self.op(scope, Op::Unsqueeze, &[x, ax], vec![])
    }

    fn transpose(&mut self, scope: &str, x: ValueId, perm: &[i64]) -> Result<ValueId, String> {
        self.op(scope, Op::Transpose, &[x], vec![Attribute::ints("perm", perm.to_vec())])
    }

    fn reshape(&mut self, scope: &str, x: ValueId, shape: &[i64]) -> Result<ValueId, String> {
        let s = self.const_i64(scope, &[shape.len() as i64], shape)?;
        self.op(scope, Op::Reshape, &[x, s], vec![])
    }

    /// `x.shape[i]` as a scalar.
    fn dim(&mut self, scope: &str, x: ValueId, i: i64) -> Result<ValueId, String> {
        let shape = self.op(scope, Op::Shape, &[x], vec![])?;
        let idx = self.const_i64(scope, &[], &[i])?;
        self.op(scope, Op::Gather, &[shape, idx], vec![Attribute::int("axis", 0)])
    }

    /// `x @ W^T` for `W` `[out, in]`: MatMul by the transposed float weight, or MatMulNBits.
    fn linear(&mut self, scope: &str, prefix: &str, w: &Matrix, x: ValueId) -> Result<ValueId, String> {
        let (n, k) = (w.rows(), w.cols());
        match w {
            Matrix::Dense { data, .. } => {
                let mut t = vec![0f32; n * k];
                for r in 0..n {
                    for c in 0..k {
                        t[c * n + r] = data[r * k + c];
                    }
                }
                let wt = self.init_f32(&format!("{prefix}.weight"), &[k as i64, n as i64], &t)?;
                self.op(scope, Op::MatMul, &[x, wt], vec![])
            }
            Matrix::Blocks { bits, block, codes, scales, zero_points, .. } => {
                let nb = k.div_ceil(*block);
                let blob = block * *bits as usize / 8;
                let packed = optc_ir::quant::pack_nbits(codes, n, k, *bits, *block);
                let (n64, nb64) = (n as i64, nb as i64);
                let qw = self.init(&format!("{prefix}.qweight"), DType::U8, &[n64, nb64, blob as i64], packed)?;
                let sc = self.init_f32(&format!("{prefix}.scales"), &[n64, nb64], scales)?;
                let default_zp = (1u32 << (bits - 1)) as f32;
                let levels = (1u32 << bits) as f32;
                let integral = zero_points.iter().all(|&z| z.fract() == 0.0 && (0.0..levels).contains(&z));
                let zp = if zero_points.iter().all(|&z| z == default_zp) {
                    None
                } else if integral {
                    // uint8 zero points, packed like the codes, each row padded to whole bytes:
                    // one block per row, as wide as the row rounded up to whole bytes.
                    let per_byte = 8 / *bits as usize;
                    let zcodes: Vec<u8> = zero_points.iter().map(|&z| z as u8).collect();
                    let packed = optc_ir::quant::pack_nbits(&zcodes, n, nb, *bits, nb.div_ceil(per_byte) * per_byte);
                    let len = packed.len() as i64;
                    Some(self.init(&format!("{prefix}.zero_points"), DType::U8, &[len], packed)?)
                } else if *bits == 8 {
                    // onnxruntime's CPU kernel takes float zero points for 2 and 4 bits only.
                    return Err(format!("{prefix}: 8-bit blocks with fractional zero points cannot be MatMulNBits"));
                } else {
                    Some(self.init_f32(&format!("{prefix}.zero_points"), &[n64, nb64], zero_points)?)
                };
                self.matmul_nbits(scope, w, x, qw, sc, zp)
            }
        }
    }

    /// `com.microsoft::MatMulNBits` of `x` by `w`'s blocks stored in `qweight` `[N, blocks,
    /// bytes]`, `scales` `[N, blocks]` and optional `zero_points`.
    fn matmul_nbits(
        &mut self,
        scope: &str,
        w: &Matrix,
        x: ValueId,
        qweight: ValueId,
        scales: ValueId,
        zero_points: Option<ValueId>,
    ) -> Result<ValueId, String> {
        let Matrix::Blocks { rows, cols, bits, block, .. } = w else {
            return Err("MatMulNBits needs a block matrix".into());
        };
        self.used_contrib = true;
        let attrs = vec![
            Attribute::int("K", *cols as i64),
            Attribute::int("N", *rows as i64),
            Attribute::int("bits", i64::from(*bits)),
            Attribute::int("block_size", *block as i64),
        ];
        let op = Op::from_onnx("com.microsoft", "MatMulNBits");
        self.op_with(scope, op, &[Some(x), Some(qweight), Some(scales), zero_points], attrs)
    }

    /// Embedding lookup. A block-quantised table stays quantised: the codes and the block scales
    /// and zero points of the looked-up rows are gathered and dequantised as MatMulNBits does,
    /// `(code - zero_point) * scale`.
    ///
    /// Returns the output and, for 8-bit blocks with the default zero point 128 and no padding,
    /// the codes and scales initializers, which a tied MatMulNBits head can read as they are.
    fn embedding(
        &mut self,
        scope: &str,
        name: &str,
        w: &Matrix,
        ids: ValueId,
    ) -> Result<(ValueId, Option<(ValueId, ValueId)>), String> {
        let axis0 = || vec![Attribute::int("axis", 0)];
        match w {
            Matrix::Dense { rows, cols, data } => {
                let t = self.init_f32(name, &[*rows as i64, *cols as i64], data)?;
                Ok((self.op(scope, Op::Gather, &[t, ids], axis0())?, None))
            }
            Matrix::Blocks { rows, cols, bits, block, codes, scales, zero_points } => {
                let (r, c, nb) = (*rows as i64, *cols as i64, cols.div_ceil(*block) as i64);
                let padded = nb * *block as i64;
                // Pad each row to whole blocks so the codes reshape to [.., blocks, block].
                let mut raw = Vec::with_capacity((r * padded) as usize);
                for row in codes.chunks(*cols) {
                    raw.extend_from_slice(row);
                    raw.resize(raw.len() + (padded - c) as usize, 0);
                }
                let q = self.init(&format!("{name}.codes"), DType::U8, &[r, nb, *block as i64], raw)?;
                let sc = self.init_f32(&format!("{name}.scales"), &[r, nb], scales)?;
                let gq = self.op(scope, Op::Gather, &[q, ids], axis0())?;
                let gq = self.op(scope, Op::Cast, &[gq], vec![Attribute::int("to", DType::F32.onnx_code() as i64)])?;
                let centred = if zero_points.windows(2).all(|p| p[0] == p[1]) {
                    let z = self.const_f32(scope, zero_points.first().copied().unwrap_or(0.0))?;
                    self.op(scope, Op::Sub, &[gq, z], vec![])?
                } else {
                    let zp = self.init_f32(&format!("{name}.zero_points"), &[r, nb], zero_points)?;
                    let gz = self.op(scope, Op::Gather, &[zp, ids], axis0())?;
                    let gz = self.unsqueeze(scope, gz, &[-1])?;
                    self.op(scope, Op::Sub, &[gq, gz], vec![])?
                };
                let gs = self.op(scope, Op::Gather, &[sc, ids], axis0())?;
                let gs = self.unsqueeze(scope, gs, &[-1])?;
                let deq = self.op(scope, Op::Mul, &[centred, gs], vec![])?;
                let flat = self.reshape(scope, deq, &[0, 0, padded])?;
                if padded == c {
                    let shareable = *bits == 8 && zero_points.iter().all(|&z| z == 128.0);
                    return Ok((flat, shareable.then_some((q, sc))));
                }
                let (st, en, ax) = (
                    self.const_i64(scope, &[1], &[0])?,
                    self.const_i64(scope, &[1], &[c])?,
                    self.const_i64(scope, &[1], &[-1])?,
                );
                Ok((self.op(scope, Op::Slice, &[flat, st, en, ax], vec![])?, None))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_field() {
        let mut c = LlamaConfig {
            layers: 1,
            hidden: 8,
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
            ffn: 16,
            vocab: 10,
            max_pos: 16,
            rope_base: 10000.0,
            rms_eps: 1e-5,
            name: "t".into(),
        };
        assert!(c.check().is_ok());
        c.kv_heads = 3;
        assert!(c.check().unwrap_err().contains("kv_heads"));
        c.kv_heads = 1;
        c.head_dim = 3;
        assert!(c.check().unwrap_err().contains("even"));
    }
}
