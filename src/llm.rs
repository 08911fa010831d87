//! Running decoder LLMs with optc's evaluator: perplexity over a text and greedy generation.
//!
//! A [`Decoder`] wraps any causal LM graph whose inputs are `input_ids` (plus optionally
//! `attention_mask`, `position_ids` and `past_key_values.{i}.key/value`) and whose first float
//! output, or the one named `logits`, is `[batch, seq, vocab]`. Graphs with a KV cache (as
//! `optc import` writes them, or Optimum exports them) reuse it between steps; graphs without
//! one are re-run on the whole sequence.

use crate::eval::{Evaluator, Tensor as EvalTensor, Value};
use crate::ir::{self, DType};
use std::collections::HashMap;

/// One layer's cache inputs and outputs.
#[derive(Clone, Debug)]
struct KvLayer {
    past_key: String,
    past_value: String,
    present_key: String,
    present_value: String,
}

/// A causal LM ready to run.
pub struct Decoder<'m> {
    ev: Evaluator<'m>,
    kv: Vec<KvLayer>,
    /// `[kv_heads, head_dim]` of the cache tensors.
    kv_shape: (usize, usize),
    has_mask: bool,
    has_pos: bool,
    logits: String,
    vocab: usize,
}

/// What the decoder has seen: the tokens and, with a KV cache, the present tensors.
#[derive(Default)]
pub struct Cache {
    tokens: Vec<i64>,
    kv: Vec<Value>,
}

impl Cache {
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

fn known(d: &ir::Dim) -> Option<usize> {
    d.as_known().and_then(|n| usize::try_from(n).ok())
}

fn i64_tensor(dims: &[usize], data: &[i64]) -> Result<Value, String> {
    let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let t = ir::Tensor::from_raw(None, DType::I64, dims.iter().map(|&d| d as i64).collect(), ir::Bytes::from(raw));
    EvalTensor::from_ir(&t).map(Value::Tensor).map_err(|e| e.to_string())
}

impl<'m> Decoder<'m> {
    /// Checks the signature and prepares the evaluator. Errors say which input or output is
    /// missing or unexpected.
    pub fn new(model: &'m ir::Model) -> Result<Decoder<'m>, String> {
        let g = &model.graph;
        let inputs: Vec<&ir::Value> = g.inputs.iter().map(|d| g.value(d.value)).filter(|v| v.init.is_none()).collect();
        let outputs: Vec<&ir::Value> = g.outputs.iter().map(|d| g.value(d.value)).collect();
        if !inputs.iter().any(|v| v.name == "input_ids") {
            return Err("the model has no 'input_ids' input: not a causal LM graph".into());
        }
        let logits = outputs
            .iter()
            .find(|v| v.name == "logits")
            .or_else(|| outputs.first())
            .ok_or("the model has no outputs")?;
        let mut kv = Vec::new();
        let mut kv_shape = None;
        for i in 0.. {
            let pk = format!("past_key_values.{i}.key");
            let Some(v) = inputs.iter().find(|v| v.name == pk) else { break };
            let layer = KvLayer {
                past_key: pk,
                past_value: format!("past_key_values.{i}.value"),
                present_key: format!("present.{i}.key"),
                present_value: format!("present.{i}.value"),
            };
            for n in [&layer.past_value] {
                if !inputs.iter().any(|v| &v.name == n) {
                    return Err(format!("input '{n}' is missing (the model has '{}')", layer.past_key));
                }
            }
            for n in [&layer.present_key, &layer.present_value] {
                if !outputs.iter().any(|v| &v.name == n) {
                    return Err(format!("output '{n}' is missing (the model has input '{}')", layer.past_key));
                }
            }
            if kv_shape.is_none() {
                let dims = v.ty.as_ref().and_then(|t| t.shape()).cloned().unwrap_or_default();
                kv_shape = match dims.as_slice() {
                    [_, h, _, d] => known(h).zip(known(d)),
                    _ => None,
                };
                if kv_shape.is_none() {
                    return Err(format!(
                        "input '{}' must be [batch, kv_heads, past, head_dim] with known heads and head_dim",
                        v.name
                    ));
                }
            }
            kv.push(layer);
        }
        let known_inputs = |n: &str| {
            n == "input_ids" || n == "attention_mask" || n == "position_ids" || n.starts_with("past_key_values.")
        };
        if let Some(v) = inputs.iter().find(|v| !known_inputs(&v.name)) {
            return Err(format!(
                "input '{}' is not one a decoder takes (input_ids, attention_mask, position_ids, past_key_values.N.key/value)",
                v.name
            ));
        }
        let vocab = logits.ty.as_ref().and_then(|t| t.shape()).and_then(|d| d.last().and_then(known)).unwrap_or(0);
        let ev = Evaluator::new(model).map_err(|e| e.to_string())?;
        Ok(Decoder {
            ev,
            kv,
            kv_shape: kv_shape.unwrap_or((0, 0)),
            has_mask: inputs.iter().any(|v| v.name == "attention_mask"),
            has_pos: inputs.iter().any(|v| v.name == "position_ids"),
            logits: logits.name.clone(),
            vocab,
        })
    }

    /// Whether the graph carries a KV cache between steps.
    pub fn has_cache(&self) -> bool {
        !self.kv.is_empty()
    }

    /// Feeds `ids` after what `cache` holds; returns their logits, `ids.len() x vocab`, row-major.
    pub fn forward(&self, ids: &[i64], cache: &mut Cache) -> Result<(Vec<f32>, usize), String> {
        if ids.is_empty() {
            return Err("no tokens to feed".into());
        }
        let past = cache.tokens.len();
        cache.tokens.extend_from_slice(ids);
        let total = cache.tokens.len();
        // Without a cache the whole sequence is fed again.
        let (fed, start): (&[i64], usize) = if self.has_cache() { (ids, past) } else { (&cache.tokens, 0) };
        let s = fed.len();
        let mut feeds = HashMap::new();
        feeds.insert("input_ids".to_string(), i64_tensor(&[1, s], fed)?);
        if self.has_mask {
            feeds.insert("attention_mask".to_string(), i64_tensor(&[1, total], &vec![1; total])?);
        }
        if self.has_pos {
            let pos: Vec<i64> = (start as i64..total as i64).collect();
            feeds.insert("position_ids".to_string(), i64_tensor(&[1, s], &pos)?);
        }
        if self.has_cache() {
            let (h, d) = self.kv_shape;
            let empty = || -> Result<Value, String> {
                let t = ir::Tensor::from_raw(None, DType::F32, vec![1, h as i64, 0, d as i64], ir::Bytes::new());
                EvalTensor::from_ir(&t).map(Value::Tensor).map_err(|e| e.to_string())
            };
            for (i, l) in self.kv.iter().enumerate() {
                let (k, v) = if cache.kv.is_empty() {
                    (empty()?, empty()?)
                } else {
                    (cache.kv[2 * i].clone(), cache.kv[2 * i + 1].clone())
                };
                feeds.insert(l.past_key.clone(), k);
                feeds.insert(l.past_value.clone(), v);
            }
        }
        let outs = self.ev.run(&feeds).map_err(|e| e.to_string())?;
        let mut by_name: HashMap<String, Value> = outs.into_iter().collect();
        if self.has_cache() {
            let mut kv = Vec::with_capacity(2 * self.kv.len());
            for l in &self.kv {
                for n in [&l.present_key, &l.present_value] {
                    kv.push(by_name.remove(n).ok_or_else(|| format!("output '{n}' was not produced"))?);
                }
            }
            cache.kv = kv;
        }
        let logits = by_name.remove(&self.logits).ok_or("no logits output")?;
        let Some(EvalTensor::F32(a)) = logits.tensor() else {
            return Err(format!("output '{}' is not float32", self.logits));
        };
        let shape = a.shape().to_vec();
        let vocab = *shape.last().ok_or("logits are a scalar")?;
        if shape.len() != 3 || shape[1] != s || (self.vocab != 0 && vocab != self.vocab) {
            return Err(format!("logits have shape {shape:?}, expected [1, {s}, vocab]"));
        }
        let data: Vec<f32> = a.iter().copied().collect();
        // Only the new positions' rows.
        let keep = ids.len() * vocab;
        Ok((data[data.len() - keep..].to_vec(), vocab))
    }
}

/// `-log softmax(row)[target]`, in f64.
pub fn nll(row: &[f32], target: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    max + sum.ln() - row[target] as f64
}

/// The index of the largest logit (the first on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in row.iter().enumerate() {
        if x > row[best] {
            best = i;
        }
    }
    best
}

/// A perplexity measurement.
#[derive(Clone, Debug, Default)]
pub struct Perplexity {
    pub tokens: usize,
    pub windows: usize,
    /// Tokens whose probability was scored.
    pub scored: usize,
    pub nll_sum: f64,
}

impl Perplexity {
    pub fn ppl(&self) -> f64 {
        (self.nll_sum / self.scored.max(1) as f64).exp()
    }
}

/// Perplexity with a sliding window, as Hugging Face's recipe computes it: windows of `ctx`
/// tokens starting every `stride` tokens, each scoring only the tokens the previous window
/// did not (so `stride == ctx` gives disjoint windows). `progress(done, total)` is called after
/// each window.
pub fn perplexity(
    dec: &Decoder,
    ids: &[u32],
    ctx: usize,
    stride: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Perplexity, String> {
    if ctx < 2 || stride == 0 || stride > ctx {
        return Err(format!("need ctx >= 2 and 0 < stride <= ctx (ctx {ctx}, stride {stride})"));
    }
    let n = ids.len();
    if n < 2 {
        return Err(format!("the text has {n} token(s); at least 2 are needed"));
    }
    let starts: Vec<usize> = (0..n).step_by(stride).take_while(|&b| b == 0 || b + 1 < n).collect();
    let mut out = Perplexity { tokens: n, ..Default::default() };
    let mut prev_end = 0;
    for (w, &begin) in starts.iter().enumerate() {
        let end = (begin + ctx).min(n);
        if end <= prev_end {
            break;
        }
        let window: Vec<i64> = ids[begin..end].iter().map(|&t| t as i64).collect();
        let mut cache = Cache::default();
        let (logits, vocab) = dec.forward(&window, &mut cache)?;
        // Score targets in [max(prev_end, begin + 1), end): token t is predicted by row t-1.
        for t in prev_end.max(begin + 1)..end {
            let row = &logits[(t - 1 - begin) * vocab..(t - begin) * vocab];
            let target = ids[t] as usize;
            if target >= vocab {
                return Err(format!("token id {target} is outside the model's vocabulary of {vocab}"));
            }
            out.nll_sum += nll(row, target);
            out.scored += 1;
        }
        out.windows += 1;
        prev_end = end;
        progress(w + 1, starts.len());
        if end == n {
            break;
        }
    }
    Ok(out)
}

/// Greedy decoding: feeds `prompt`, then appends the most likely token `max_new` times or until
/// `stop` is produced. `on_token` sees each new token as it comes.
pub fn generate(
    dec: &Decoder,
    prompt: &[u32],
    max_new: usize,
    stop: &[u32],
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>, String> {
    if prompt.is_empty() {
        return Err("the prompt has no tokens".into());
    }
    let mut cache = Cache::default();
    let ids: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    let (logits, vocab) = dec.forward(&ids, &mut cache)?;
    let mut next = argmax(&logits[logits.len() - vocab..]) as u32;
    let mut out = Vec::new();
    for _ in 0..max_new {
        out.push(next);
        on_token(next);
        if stop.contains(&next) || out.len() == max_new {
            break;
        }
        let (logits, vocab) = dec.forward(&[next as i64], &mut cache)?;
        next = argmax(&logits[logits.len() - vocab..]) as u32;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_is_minus_log_softmax() {
        let row = [1.0f32, 2.0, 3.0];
        let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
        assert!((nll(&row, 2) - (z.ln() - 3.0)).abs() < 1e-12);
        assert_eq!(argmax(&row), 2);
    }

    #[test]
    fn kv_cache_decode_matches_full_prefill() {
        let m =
            crate::zoo::build("llama-kv:layers=2,hidden=64,heads=4,kv_heads=2,ffn=96,vocab=50,max_pos=32", 3).unwrap();
        let dec = Decoder::new(&m).unwrap();
        assert!(dec.has_cache());
        let ids = [3i64, 7, 11, 2, 9];
        let (full, vocab) = dec.forward(&ids, &mut Cache::default()).unwrap();
        let mut cache = Cache::default();
        dec.forward(&ids[..3], &mut cache).unwrap();
        dec.forward(&ids[3..4], &mut cache).unwrap();
        let (last, _) = dec.forward(&ids[4..], &mut cache).unwrap();
        let want = &full[4 * vocab..];
        let diff = want.iter().zip(&last).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-4, "decode step differs from prefill by {diff}");
    }

    #[test]
    fn perplexity_windows_score_each_token_once() {
        let m =
            crate::zoo::build("llama-kv:layers=1,hidden=32,heads=2,kv_heads=1,ffn=64,vocab=40,max_pos=64", 1).unwrap();
        let dec = Decoder::new(&m).unwrap();
        let ids: Vec<u32> = (0..23).map(|i| (i * 7 % 40) as u32).collect();
        for (ctx, stride) in [(8, 8), (8, 4), (30, 30)] {
            let p = perplexity(&dec, &ids, ctx, stride, |_, _| {}).unwrap();
            // Disjoint windows cannot score their first token (as in Hugging Face's recipe).
            let want = if stride == ctx { ids.len() - p.windows } else { ids.len() - 1 };
            assert_eq!(p.scored, want, "ctx {ctx} stride {stride}");
            assert!(p.ppl().is_finite() && p.ppl() > 1.0);
        }
        // Disjoint windows of the whole text in one go equal one window.
        let one = perplexity(&dec, &ids, 30, 30, |_, _| {}).unwrap();
        let mut manual = 0.0;
        let (logits, v) =
            dec.forward(&ids.iter().map(|&t| t as i64).collect::<Vec<_>>(), &mut Cache::default()).unwrap();
        for t in 1..ids.len() {
            manual += nll(&logits[(t - 1) * v..t * v], ids[t] as usize);
        }
        assert!((one.nll_sum - manual).abs() < 1e-6);
    }

    #[test]
    fn generation_without_cache_matches_cached() {
        let cached =
            crate::zoo::build("llama-kv:layers=1,hidden=32,heads=2,kv_heads=1,ffn=64,vocab=40,max_pos=64", 5).unwrap();
        let dec = Decoder::new(&cached).unwrap();
        let a = generate(&dec, &[1, 2, 3], 6, &[], |_| {}).unwrap();
        assert_eq!(a.len(), 6);
        let plain =
            crate::zoo::build("llama:layers=1,hidden=32,heads=2,kv_heads=1,ffn=64,vocab=40,max_pos=64", 5).unwrap();
        let dec = Decoder::new(&plain).unwrap();
        assert!(!dec.has_cache());
        let b = generate(&dec, &[1, 2, 3], 6, &[], |_| {}).unwrap();
        assert_eq!(b.len(), 6);
    }
}
