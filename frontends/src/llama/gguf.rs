//! LLaMA-architecture GGUF files (llama.cpp's `llama` architecture) as optc decoder graphs.
//!
//! Weights in 4- and 8-bit block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) stay
//! quantised as `com.microsoft::MatMulNBits` (and a gathered, dequantised embedding), so the
//! ONNX model is about the size of the GGUF file; [`ImportOptions::dequantize`] writes float32
//! weights instead. llama.cpp stores Q and K projections with the rows of each head interleaved
//! for its RoPE; they are put back in Hugging Face's rotate-half order here.

use super::{LlamaConfig, LlamaWeights, Matrix, Norm, Proj};
use crate::gguf::{GgmlType, Gguf, MetaValue, TensorInfo, dequant};
use crate::tokenizer::{PreTokenizer, Tokenizer};
use optc_ir::Model;

/// How to import.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Write float32 weights instead of keeping quantised blocks.
    pub dequantize: bool,
    /// Longest context the graph serves (rows of the RoPE tables); default: the file's
    /// `llama.context_length`, at most 8192.
    pub max_pos: Option<usize>,
}

/// The GGUF metadata keys this importer reads, for error messages and `--explain`.
fn meta_u64(g: &Gguf, key: &str) -> Result<Option<u64>, String> {
    match g.meta(key) {
        None => Ok(None),
        Some(v) => {
            v.as_u64().map(Some).ok_or_else(|| format!("metadata '{key}' is {}, expected an integer", v.type_name()))
        }
    }
}

fn meta_req(g: &Gguf, key: &str) -> Result<usize, String> {
    meta_u64(g, key)?.map(|v| v as usize).ok_or_else(|| format!("metadata '{key}' is missing"))
}

fn meta_f64(g: &Gguf, key: &str) -> Result<Option<f64>, String> {
    match g.meta(key) {
        None => Ok(None),
        Some(v) => {
            v.as_f64().map(Some).ok_or_else(|| format!("metadata '{key}' is {}, expected a number", v.type_name()))
        }
    }
}

/// The decoder's shape from the file's `llama.*` metadata. Architectures other than `llama`,
/// partial rotary dims and RoPE scaling are errors that say so.
pub fn config(g: &Gguf, opts: &ImportOptions) -> Result<LlamaConfig, String> {
    let arch = g.meta("general.architecture").and_then(MetaValue::as_str).unwrap_or("<none>");
    if arch != "llama" {
        return Err(format!(
            "architecture '{arch}' is not supported: optc imports the 'llama' architecture (LLaMA, SmolLM, Mistral-style decoders)"
        ));
    }
    let hidden = meta_req(g, "llama.embedding_length")?;
    let heads = meta_req(g, "llama.attention.head_count")?;
    let kv_heads = meta_u64(g, "llama.attention.head_count_kv")?.map_or(heads, |v| v as usize);
    if heads == 0 {
        return Err("metadata 'llama.attention.head_count' is 0".into());
    }
    let head_dim = meta_u64(g, "llama.attention.key_length")?.map_or(hidden / heads, |v| v as usize);
    if let Some(rot) = meta_u64(g, "llama.rope.dimension_count")?
        && rot as usize != head_dim
    {
        return Err(format!(
            "partial rotary embeddings (rope.dimension_count {rot} of head size {head_dim}) are not supported"
        ));
    }
    if let Some(t) = g.meta("llama.rope.scaling.type").and_then(MetaValue::as_str)
        && t != "none"
    {
        return Err(format!("RoPE scaling '{t}' is not supported"));
    }
    if g.tensor("rope_freqs.weight").is_some() {
        return Err("per-frequency RoPE factors (tensor rope_freqs.weight, Llama 3.1 scaling) are not supported".into());
    }
    let emb = tensor(g, "token_embd.weight")?;
    let vocab = match emb.dims.as_slice() {
        [h, v] if *h as usize == hidden => *v as usize,
        d => return Err(format!("token_embd.weight has dims {d:?}, expected [{hidden}, vocab]")),
    };
    let ctx = meta_u64(g, "llama.context_length")?.map_or(2048, |v| v as usize);
    let cfg = LlamaConfig {
        layers: meta_req(g, "llama.block_count")?,
        hidden,
        heads,
        kv_heads,
        head_dim,
        ffn: meta_req(g, "llama.feed_forward_length")?,
        vocab,
        max_pos: opts.max_pos.unwrap_or(ctx.min(8192)),
        rope_base: meta_f64(g, "llama.rope.freq_base")?.unwrap_or(10000.0),
        rms_eps: meta_f64(g, "llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5) as f32,
        name: g.meta("general.name").and_then(MetaValue::as_str).unwrap_or("llama").to_string(),
    };
    cfg.check()?;
    Ok(cfg)
}

fn tensor<'g>(g: &'g Gguf, name: &str) -> Result<&'g TensorInfo, String> {
    g.tensor(name).ok_or_else(|| format!("tensor '{name}' is missing"))
}

/// Weights read from the file one tensor at a time.
pub struct GgufWeights<'g> {
    g: &'g Gguf,
    cfg: LlamaConfig,
    dequantize: bool,
}

impl<'g> GgufWeights<'g> {
    pub fn new(g: &'g Gguf, cfg: LlamaConfig, dequantize: bool) -> Self {
        GgufWeights { g, cfg, dequantize }
    }

    /// A 2-D tensor as a matrix `[dims[1], dims[0]]`, kept in blocks where MatMulNBits can hold them.
    fn matrix(&self, name: &str) -> Result<Matrix, String> {
        let t = tensor(self.g, name)?;
        let (cols, rows) = match t.dims.as_slice() {
            [c, r] => (*c as usize, *r as usize),
            d => return Err(format!("tensor '{name}' has dims {d:?}, expected 2 dims")),
        };
        let err = |e: crate::gguf::GgufError| format!("tensor '{name}' ({}): {e}", t.ty.name());
        let float = matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
        if !self.dequantize && !float {
            let bytes = self.g.tensor_bytes(t);
            if let Some(q) = dequant::to_blocks(t.ty, bytes, t.n_elements as usize).map_err(err)?
                && matches!(q.bits, 2 | 4 | 8)
                && cols % q.block == 0
                // onnxruntime's 8-bit MatMulNBits takes whole-number zero points only (Q5_1,
                // Q5_K have fractional ones): those become float32.
                && (q.bits != 8 || q.zero_points.iter().all(|z| z.fract() == 0.0))
            {
                self.g.release(t);
                return Ok(Matrix::Blocks {
                    rows,
                    cols,
                    bits: q.bits,
                    block: q.block,
                    codes: q.codes,
                    scales: q.scales,
                    zero_points: q.zero_points,
                });
            }
        }
        let data = self.g.dequantize(t).map_err(err)?;
        self.g.release(t);
        Ok(Matrix::Dense { rows, cols, data })
    }
}

/// Undoes llama.cpp's `permute` of Q/K rows: in the file, row `2i + j` of each head is Hugging
/// Face's row `j * d/2 + i`.
fn unpermute_rows(m: Matrix, heads: usize) -> Result<Matrix, String> {
    let rows = m.rows();
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(format!("{rows} rows do not split into {heads} heads of even size"));
    }
    let d = rows / heads;
    // hf row -> file row
    let src = |r: usize| {
        let (h, within) = (r / d, r % d);
        let (j, i) = (within / (d / 2), within % (d / 2));
        h * d + 2 * i + j
    };
    fn permute<T: Copy>(v: &[T], rows: usize, src: &dyn Fn(usize) -> usize) -> Vec<T> {
        let w = v.len() / rows;
        let mut out = Vec::with_capacity(v.len());
        for r in 0..rows {
            let s = src(r);
            out.extend_from_slice(&v[s * w..(s + 1) * w]);
        }
        out
    }
    Ok(match m {
        Matrix::Dense { rows, cols, data } => Matrix::Dense { rows, cols, data: permute(&data, rows, &src) },
        Matrix::Blocks { rows, cols, bits, block, codes, scales, zero_points } => Matrix::Blocks {
            rows,
            cols,
            bits,
            block,
            codes: permute(&codes, rows, &src),
            scales: permute(&scales, rows, &src),
            zero_points: permute(&zero_points, rows, &src),
        },
    })
}

impl LlamaWeights for GgufWeights<'_> {
    fn embedding(&mut self) -> Result<Matrix, String> {
        self.matrix("token_embd.weight")
    }

    fn linear(&mut self, layer: usize, proj: Proj) -> Result<Matrix, String> {
        let suffix = match proj {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        };
        let name = format!("blk.{layer}.{suffix}.weight");
        let m = self.matrix(&name)?;
        match proj {
            Proj::Q => unpermute_rows(m, self.cfg.heads).map_err(|e| format!("tensor '{name}': {e}")),
            Proj::K => unpermute_rows(m, self.cfg.kv_heads).map_err(|e| format!("tensor '{name}': {e}")),
            _ => Ok(m),
        }
    }

    fn norm(&mut self, which: Norm) -> Result<Vec<f32>, String> {
        let name = match which {
            Norm::Input(i) => format!("blk.{i}.attn_norm.weight"),
            Norm::PostAttention(i) => format!("blk.{i}.ffn_norm.weight"),
            Norm::Final => "output_norm.weight".to_string(),
        };
        let t = tensor(self.g, &name)?;
        self.g.dequantize(t).map_err(|e| format!("tensor '{name}': {e}"))
    }

    fn lm_head(&mut self) -> Result<Option<Matrix>, String> {
        if self.g.tensor("output.weight").is_none() {
            return Ok(None);
        }
        self.matrix("output.weight").map(Some)
    }
}

/// Imports the decoder graph of a `llama` GGUF file.
pub fn import(g: &Gguf, opts: &ImportOptions) -> Result<Model, String> {
    let cfg = config(g, opts)?;
    let mut w = GgufWeights::new(g, cfg.clone(), opts.dequantize);
    let mut model = super::build(&cfg, &mut w)?;
    model.metadata_props.push(optc_ir::MetaProp {
        key: Some("optc.source".into()),
        value: Some("gguf".into()),
        extra: Default::default(),
    });
    Ok(model)
}

/// The tokenizer in the file's `tokenizer.ggml.*` metadata.
pub fn tokenizer(g: &Gguf) -> Result<Tokenizer, String> {
    let model = g
        .meta("tokenizer.ggml.model")
        .and_then(MetaValue::as_str)
        .ok_or("metadata 'tokenizer.ggml.model' is missing")?;
    let pre = g.meta("tokenizer.ggml.pre").and_then(MetaValue::as_str).unwrap_or("default");
    let pre: PreTokenizer = Tokenizer::pre_from_gguf_name(model, pre).map_err(|e| e.to_string())?;
    let strings = |key: &str| -> Result<Vec<String>, String> {
        let Some(v) = g.meta(key) else { return Ok(Vec::new()) };
        let arr = v.as_array().ok_or_else(|| format!("metadata '{key}' is {}, expected an array", v.type_name()))?;
        arr.iter()
            .map(|s| s.as_str().map(str::to_string).ok_or_else(|| format!("metadata '{key}' holds a non-string")))
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        return Err("metadata 'tokenizer.ggml.tokens' is missing or empty".into());
    }
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<i32> = match g.meta("tokenizer.ggml.token_type").and_then(MetaValue::as_array) {
        Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(1.0) as i32).collect(),
        None => Vec::new(),
    };
    let id = |key: &str| -> Result<Option<u32>, String> { Ok(meta_u64(g, key)?.map(|v| v as u32)) };
    let bos = id("tokenizer.ggml.bos_token_id")?;
    let eos = id("tokenizer.ggml.eos_token_id")?;
    let add_bos = matches!(g.meta("tokenizer.ggml.add_bos_token"), Some(MetaValue::Bool(true)));
    Tokenizer::from_vocab(tokens, &merges, &types, pre, bos, eos, add_bos).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, d/2, cols).swapaxes(1, 2).reshape(rows, cols)
        let (heads, d, cols) = (2usize, 4usize, 1usize);
        let hf: Vec<f32> = (0..heads * d).map(|r| r as f32).collect();
        let mut file = vec![0f32; hf.len()];
        for h in 0..heads {
            for two in 0..2 {
                for i in 0..d / 2 {
                    // element [h, two, i] moves to [h, i, two]
                    file[h * d + i * 2 + two] = hf[h * d + two * (d / 2) + i];
                }
            }
        }
        let m = Matrix::Dense { rows: heads * d, cols, data: file };
        let back = unpermute_rows(m, heads).unwrap();
        assert_eq!(back.to_dense(), hf);
    }
}
