//! Seeded synthetic models built with optc's own graph builder: for the examples, tests and
//! benchmarks. The same name and seed always give the same bytes.
//!
//! Besides `tiny-cnn`, the zoo holds small members of the usual model families, written the way
//! PyTorch's exporter (opset 14-17) writes HuggingFace and torchvision models: LayerNorm and
//! GELU decomposed into elementwise ops, reshapes whose target comes from `Shape -> Gather ->
//! Concat` chains, scalars as `Constant` nodes, exporter-style node names
//! (`/encoder/layer.0/attention/self/query/MatMul`) and HF-style initializer names. These are the
//! patterns optc's fusion passes must recover. Sizes are set with options in the name:
//! `bert:layers=4,hidden=256,heads=4` (see [`MODELS`] for each family's options and defaults).

use std::collections::HashMap;

use crate::frontends::llama::{LlamaConfig, LlamaWeights, Matrix, Norm as LlamaNorm, Proj};
use crate::ir::builder::{GraphBuilder, Rng};
use crate::ir::{AttrValue, Attribute, DType, Dim, IrError, Model, NodeSpec, Op, Tensor, Type, ValueId};

/// Names of the generators, with one line each (options and their defaults at the end).
pub const MODELS: &[(&str, &str)] = &[
    (
        "tiny-cnn",
        "a small image classifier (Conv/BatchNorm/Relu/MaxPool/Gemm/Softmax) with the redundancy exporters leave: \
Identity, inference Dropout, no-op Cast and Transpose, a Shape->Gather->Concat->Reshape flatten, an unused initializer",
    ),
    (
        "mobilenet",
        "MobileNetV2-like classifier, input [batch,3,res,res]: Conv+BatchNormalization+Clip(0,6) stem, inverted residual \
blocks (1x1 expand, 3x3 depthwise, 1x1 project, residual Add), GlobalAveragePool, Flatten, Gemm. \
Options: res=96, width=0.35, classes=100",
    ),
    (
        "resnet",
        "ResNet-like classifier, input [batch,3,res,res]: Conv 7x7+BN+Relu+MaxPool stem, bottleneck blocks (1x1, 3x3, \
1x1 Conv+BN, Relu, residual Add, 1x1 downsample Conv+BN), GlobalAveragePool, Flatten, Gemm. depth is 26, 38, 50, \
101 or 152. Options: depth=26, width=16, res=64, classes=100",
    ),
    (
        "convnext",
        "ConvNeXt-like classifier, input [batch,3,res,res]: 4x4 patchify Conv, blocks of depthwise 7x7 Conv, Transpose, \
decomposed LayerNorm, MatMul+Add, erf GELU, MatMul+Add, layer-scale Mul, residual Add; stage widths width*(1,2,4,8), \
depths blocks*(1,1,3,1). Options: res=64, width=24, blocks=1, classes=100",
    ),
    (
        "vit",
        "ViT-like classifier, input [batch,3,res,res]: patch Conv, class token Expand+Concat, position Add, pre-LN \
encoder (decomposed LayerNorm, multi-head attention, erf GELU), Gather of the class token, Gemm. \
Options: res=64, patch=16, layers=2, hidden=128, heads=4, ffn=4*hidden, classes=100",
    ),
    (
        "bert",
        "BERT-like encoder, inputs input_ids/attention_mask/token_type_ids [batch,seq]: Gather embeddings, decomposed \
LayerNorm, extended mask, post-LN layers (Shape-based head Reshapes, attention, erf GELU FFN); output last_hidden_state. \
Options: layers=2, hidden=128, heads=4, ffn=4*hidden, vocab=1000, max_pos=512, type_vocab=2",
    ),
    (
        "gpt2",
        "GPT-2-like decoder without KV cache, inputs input_ids/attention_mask [batch,seq]: wte/wpe Gather, pre-LN blocks \
(c_attn MatMul+Add+Split, sliced causal bias with Where, tanh GELU), final LN, lm_head tied to wte; output logits. \
Options: layers=2, hidden=128, heads=4, ffn=4*hidden, vocab=1000, max_pos=256",
    ),
    (
        "llama",
        "LLaMA-shaped decoder, prefill without KV cache, inputs input_ids/attention_mask [batch,seq]: decomposed RMSNorm, \
RoPE (rotate_half), grouped-query attention (K/V repeated by Expand+Reshape), causal mask, SwiGLU MLP, lm_head; \
output logits. By default every weight is i.i.d. uniform, so layer inputs are nearly isotropic. outliers=K gives \
K hidden channels (seeded) outlier_scale times the others' magnitude in the embedding and in the input of every \
linear layer after an RMSNorm (outlier features: Dettmers et al. 2022, LLM.int8(); Wei et al. 2022). rank=R makes the \
embedding anisotropic: per token 50% of the energy in one shared mean direction, 40% in a random R-dimensional \
subspace, 10% i.i.d. noise (Ethayarajh 2019; Gao et al. 2019). trained_stats=1 sets outliers to ceil(hidden/128) \
(about 0.8% of the channels) and rank to hidden/8 where they are not given; the other weights stay the same. \
Options: layers=2, hidden=128, heads=4, kv_heads=2, ffn=344, vocab=1000, max_pos=256, rope_base=10000, \
trained_stats=0, outliers=0, outlier_scale=20, rank=0",
    ),
    (
        "llama-kv",
        "LLaMA-shaped decoder with a KV cache, the graph `optc import` builds from a GGUF file: inputs input_ids, \
attention_mask, position_ids, past_key_values.N.key/value; outputs logits, present.N.key/value (Optimum and \
onnxruntime-genai names); one graph for prefill and decode. wbits=4 or 8 stores the linear layers as MatMulNBits \
blocks of 32 and the embedding as gathered int blocks, as imported GGUF weights are. \
Options: layers=2, hidden=128, heads=4, kv_heads=2, ffn=344, vocab=1000, max_pos=256, rope_base=10000, wbits=32",
    ),
];

const NO_OPTS: &[(&str, &str)] = &[];
const MOBILENET_OPTS: &[(&str, &str)] = &[("res", "96"), ("width", "0.35"), ("classes", "100")];
const RESNET_OPTS: &[(&str, &str)] = &[("depth", "26"), ("width", "16"), ("res", "64"), ("classes", "100")];
const CONVNEXT_OPTS: &[(&str, &str)] = &[("res", "64"), ("width", "24"), ("blocks", "1"), ("classes", "100")];
const VIT_OPTS: &[(&str, &str)] = &[
    ("res", "64"),
    ("patch", "16"),
    ("layers", "2"),
    ("hidden", "128"),
    ("heads", "4"),
    ("ffn", "4*hidden"),
    ("classes", "100"),
];
const BERT_OPTS: &[(&str, &str)] = &[
    ("layers", "2"),
    ("hidden", "128"),
    ("heads", "4"),
    ("ffn", "4*hidden"),
    ("vocab", "1000"),
    ("max_pos", "512"),
    ("type_vocab", "2"),
];
const GPT2_OPTS: &[(&str, &str)] =
    &[("layers", "2"), ("hidden", "128"), ("heads", "4"), ("ffn", "4*hidden"), ("vocab", "1000"), ("max_pos", "256")];
const LLAMA_OPTS: &[(&str, &str)] = &[
    ("layers", "2"),
    ("hidden", "128"),
    ("heads", "4"),
    ("kv_heads", "2"),
    ("ffn", "344"),
    ("vocab", "1000"),
    ("max_pos", "256"),
    ("rope_base", "10000"),
    ("trained_stats", "0"),
    ("outliers", "0"),
    ("outlier_scale", "20"),
    ("rank", "0"),
];
const LLAMA_KV_OPTS: &[(&str, &str)] = &[
    ("layers", "2"),
    ("hidden", "128"),
    ("heads", "4"),
    ("kv_heads", "2"),
    ("ffn", "344"),
    ("vocab", "1000"),
    ("max_pos", "256"),
    ("rope_base", "10000"),
    ("wbits", "32"),
];

/// The options each family accepts, with their defaults.
fn family_opts(family: &str) -> Option<&'static [(&'static str, &'static str)]> {
    Some(match family {
        "tiny-cnn" => NO_OPTS,
        "mobilenet" => MOBILENET_OPTS,
        "resnet" => RESNET_OPTS,
        "convnext" => CONVNEXT_OPTS,
        "vit" => VIT_OPTS,
        "bert" => BERT_OPTS,
        "gpt2" => GPT2_OPTS,
        "llama" => LLAMA_OPTS,
        "llama-kv" => LLAMA_KV_OPTS,
        _ => return None,
    })
}

/// Builds the named model. `name` is a family, optionally with options:
/// `bert:layers=4,hidden=256,heads=4`.
pub fn build(name: &str, seed: u64) -> Result<Model, String> {
    let (family, spec) = match name.split_once(':') {
        Some((f, s)) => (f.trim(), Some(s)),
        None => (name.trim(), None),
    };
    let Some(allowed) = family_opts(family) else {
        return Err(format!(
            "unknown model '{family}'; available: {}",
            MODELS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ));
    };
    let o = Opts::parse(family, allowed, spec)?;
    match family {
        "tiny-cnn" => tiny_cnn(seed).map_err(|e| e.to_string()),
        "mobilenet" => mobilenet(seed, &o),
        "resnet" => resnet(seed, &o),
        "convnext" => convnext(seed, &o),
        "vit" => vit(seed, &o),
        "bert" => bert(seed, &o),
        "gpt2" => gpt2(seed, &o),
        "llama" => llama(seed, &o),
        "llama-kv" => llama_kv(seed, &o),
        _ => unreachable!("family_opts and build list the same families"),
    }
}

// ---- options ------------------------------------------------------------------------------

/// Parsed `key=value` options of one family.
struct Opts {
    family: String,
    allowed: &'static [(&'static str, &'static str)],
    given: HashMap<String, String>,
}

fn allowed_list(family: &str, allowed: &[(&str, &str)]) -> String {
    if allowed.is_empty() {
        format!("{family} takes no options")
    } else {
        format!(
            "allowed options for {family} (with defaults): {}",
            allowed.iter().map(|(k, d)| format!("{k}={d}")).collect::<Vec<_>>().join(", ")
        )
    }
}

impl Opts {
    fn parse(
        family: &str,
        allowed: &'static [(&'static str, &'static str)],
        spec: Option<&str>,
    ) -> Result<Opts, String> {
        let mut given = HashMap::new();
        for part in spec.unwrap_or("").split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(format!("option '{part}' is not key=value; {}", allowed_list(family, allowed)));
            };
            let (k, v) = (k.trim(), v.trim());
            if !allowed.iter().any(|(a, _)| *a == k) {
                return Err(format!("unknown option '{k}' for {family}; {}", allowed_list(family, allowed)));
            }
            if given.insert(k.to_string(), v.to_string()).is_some() {
                return Err(format!("option '{k}' for {family} is given twice"));
            }
        }
        Ok(Opts { family: family.to_string(), allowed, given })
    }

    fn text(&self, key: &str) -> &str {
        match self.given.get(key) {
            Some(v) => v,
            None => self.allowed.iter().find(|(k, _)| *k == key).map(|(_, d)| *d).unwrap_or_default(),
        }
    }

    /// A positive integer option.
    fn int(&self, key: &str) -> Result<i64, String> {
        let s = self.text(key);
        match s.parse::<i64>() {
            Ok(v) if v >= 1 => Ok(v),
            _ => Err(format!("{}: option {key}={s} must be a positive integer", self.family)),
        }
    }

    /// A positive integer option whose default depends on other options.
    fn int_or(&self, key: &str, default: i64) -> Result<i64, String> {
        if self.given.contains_key(key) { self.int(key) } else { Ok(default) }
    }

    /// A non-negative integer option; `default` when not given.
    fn count_or(&self, key: &str, default: i64) -> Result<i64, String> {
        let Some(s) = self.given.get(key) else { return Ok(default) };
        match s.parse::<i64>() {
            Ok(v) if v >= 0 => Ok(v),
            _ => Err(format!("{}: option {key}={s} must be a non-negative integer", self.family)),
        }
    }

    /// A 0/1 switch.
    fn switch(&self, key: &str) -> Result<bool, String> {
        match self.text(key) {
            "0" => Ok(false),
            "1" => Ok(true),
            s => Err(format!("{}: option {key}={s} must be 0 or 1", self.family)),
        }
    }

    /// A positive number option.
    fn float(&self, key: &str) -> Result<f64, String> {
        let s = self.text(key);
        match s.parse::<f64>() {
            Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
            _ => Err(format!("{}: option {key}={s} must be a positive number", self.family)),
        }
    }

    fn check(&self, ok: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
        if ok { Ok(()) } else { Err(format!("{}: {}", self.family, msg())) }
    }
}

// ---- a graph builder with exporter-style names ----------------------------------------------

/// The most f32 parameters a generated model may hold (1 GiB).
const MAX_PARAMS: u64 = 1 << 28;
/// `torch.finfo(torch.float32).min`, what HF writes for masked positions.
const F32_MIN: f32 = f32::MIN;

fn ie(e: IrError) -> String {
    e.to_string()
}

fn le_bytes<T: Copy, const N: usize>(data: &[T], f: fn(T) -> [u8; N]) -> Vec<u8> {
    data.iter().flat_map(|&x| f(x)).collect()
}

/// Wraps [`GraphBuilder`]: nodes are named `{scope}/{OpType}` (`_1`, `_2`... on repeats) and
/// their outputs `{node}_output_{i}`, as torch.onnx does; initializers get the exact names asked.
struct Net {
    b: GraphBuilder,
    rng: Rng,
    names: HashMap<String, usize>,
    params: u64,
}

type Res<T> = Result<T, String>;

impl Net {
    fn new(graph: &str, seed: u64) -> Net {
        Net { b: GraphBuilder::new(graph), rng: Rng::new(seed), names: HashMap::new(), params: 0 }
    }

    fn finish(self) -> Model {
        let mut m = Model::new(self.b.finish(), 17);
        m.producer_name = Some("optc-zoo".into());
        m.producer_version = Some(env!("CARGO_PKG_VERSION").into());
        m
    }

    fn input(&mut self, name: &str, dtype: DType, dims: Vec<Dim>) -> Res<ValueId> {
        self.b.input(name, dtype, dims).map_err(ie)
    }

    fn output(&mut self, v: ValueId, name: &str, dtype: DType, dims: Vec<Dim>) -> Res<()> {
        self.b.output(v, name, Some(Type::tensor(dtype, dims))).map_err(ie)
    }

    fn node_name(&mut self, base: String) -> String {
        if !self.names.contains_key(&base) {
            self.names.insert(base.clone(), 0);
            return base;
        }
        loop {
            let n = self.names.get_mut(&base).expect("present");
            *n += 1;
            let cand = format!("{base}_{n}");
            if !self.names.contains_key(&cand) {
                self.names.insert(cand.clone(), 0);
                return cand;
            }
        }
    }

    fn op_n(&mut self, scope: &str, op: Op, ins: &[ValueId], attrs: Vec<Attribute>, n: usize) -> Res<Vec<ValueId>> {
        let name = self.node_name(format!("{scope}/{}", op.op_type()));
        let mut outs = Vec::with_capacity(n);
        for i in 0..n {
            let vn = self.b.graph.fresh_name(&format!("{name}_output_{i}"));
            outs.push(self.b.graph.add_value(vn, None).map_err(ie)?);
        }
        let spec = NodeSpec::new(op, ins.iter().map(|&v| Some(v)).collect(), outs.iter().map(|&v| Some(v)).collect())
            .named(name)
            .attrs(attrs);
        self.b.graph.add_node(spec).map_err(ie)?;
        Ok(outs)
    }

    fn op(&mut self, scope: &str, op: Op, ins: &[ValueId], attrs: Vec<Attribute>) -> Res<ValueId> {
        Ok(self.op_n(scope, op, ins, attrs, 1)?[0])
    }

    fn init(&mut self, name: &str, dtype: DType, dims: &[i64], raw: Vec<u8>) -> Res<ValueId> {
        if dtype == DType::F32 {
            self.params += dims.iter().product::<i64>() as u64;
            if self.params > MAX_PARAMS {
                return Err(format!("the model would hold over {MAX_PARAMS} parameters; choose smaller options"));
            }
        }
        let t = Tensor::from_raw(Some(name.to_string()), dtype, dims.to_vec(), raw.into());
        self.b.graph.add_initializer(name, t).map_err(ie)
    }

    fn init_f32(&mut self, name: &str, dims: &[i64], data: &[f32]) -> Res<ValueId> {
        self.init(name, DType::F32, dims, le_bytes(data, f32::to_le_bytes))
    }

    fn init_i64(&mut self, name: &str, dims: &[i64], data: &[i64]) -> Res<ValueId> {
        self.init(name, DType::I64, dims, le_bytes(data, i64::to_le_bytes))
    }

    /// An f32 initializer uniform in `[-scale, scale)`.
    fn uniform(&mut self, name: &str, dims: &[i64], scale: f32) -> Res<ValueId> {
        let data = self.rng.vec(dims.iter().product::<i64>() as usize, scale);
        self.init_f32(name, dims, &data)
    }

    /// An f32 initializer uniform in `[center - spread, center + spread)`.
    fn around(&mut self, name: &str, dims: &[i64], center: f32, spread: f32) -> Res<ValueId> {
        let data: Vec<f32> =
            self.rng.vec(dims.iter().product::<i64>() as usize, spread).iter().map(|v| center + v).collect();
        self.init_f32(name, dims, &data)
    }

    fn constant(&mut self, scope: &str, dtype: DType, dims: &[i64], raw: Vec<u8>) -> Res<ValueId> {
        let t = Tensor::from_raw(None, dtype, dims.to_vec(), raw.into());
        self.op(scope, Op::Constant, &[], vec![Attribute::new("value", AttrValue::Tensor(t))])
    }

    /// A scalar f32 `Constant` node.
    fn cf(&mut self, scope: &str, v: f32) -> Res<ValueId> {
        self.constant(scope, DType::F32, &[], v.to_le_bytes().to_vec())
    }

    /// An i64 `Constant` node (`dims` empty for a scalar).
    fn ci(&mut self, scope: &str, dims: &[i64], data: &[i64]) -> Res<ValueId> {
        self.constant(scope, DType::I64, dims, le_bytes(data, i64::to_le_bytes))
    }

    // ---- layers ----

    /// `nn.Linear` on a 3-D input as torch exports it: MatMul by the folded (transposed)
    /// weight, then Add with the bias first.
    fn linear(&mut self, scope: &str, x: ValueId, pfx: &str, din: i64, dout: i64, bias: bool) -> Res<ValueId> {
        let w = self.uniform(&format!("{pfx}.weight"), &[din, dout], (3.0 / din as f32).sqrt())?;
        let mm = self.op(scope, Op::MatMul, &[x, w], vec![])?;
        if !bias {
            return Ok(mm);
        }
        let b = self.uniform(&format!("{pfx}.bias"), &[dout], 0.02)?;
        self.op(scope, Op::Add, &[b, mm], vec![])
    }

    /// `nn.Linear` on a 2-D input: Gemm with transB=1 and the weight as stored, `[out, in]`.
    fn gemm(&mut self, scope: &str, x: ValueId, pfx: &str, din: i64, dout: i64) -> Res<ValueId> {
        let w = self.uniform(&format!("{pfx}.weight"), &[dout, din], (3.0 / din as f32).sqrt())?;
        let b = self.uniform(&format!("{pfx}.bias"), &[dout], 0.02)?;
        self.op(
            scope,
            Op::Gemm,
            &[x, w, b],
            vec![Attribute::float("alpha", 1.0), Attribute::float("beta", 1.0), Attribute::int("transB", 1)],
        )
    }

    /// LayerNorm as torch exports it below opset 17: ReduceMean, Sub, Pow 2, ReduceMean, Add
    /// eps, Sqrt, Div, Mul weight, Add bias, over `axis`. Over axis 1 (ConvNeXt's
    /// channels-first form, weight `[C,1,1]`) the weight is the Mul's first input.
    fn layer_norm(&mut self, scope: &str, x: ValueId, pfx: &str, shape: &[i64], axis: i64, eps: f32) -> Res<ValueId> {
        let w = self.around(&format!("{pfx}.weight"), shape, 1.0, 0.1)?;
        let b = self.uniform(&format!("{pfx}.bias"), shape, 0.1)?;
        let red = || vec![Attribute::ints("axes", vec![axis]), Attribute::int("keepdims", 1)];
        let mean = self.op(scope, Op::ReduceMean, &[x], red())?;
        let d = self.op(scope, Op::Sub, &[x, mean], vec![])?;
        let two = self.cf(scope, 2.0)?;
        let sq = self.op(scope, Op::Pow, &[d, two], vec![])?;
        let var = self.op(scope, Op::ReduceMean, &[sq], red())?;
        let e = self.cf(scope, eps)?;
        let ve = self.op(scope, Op::Add, &[var, e], vec![])?;
        let sd = self.op(scope, Op::Sqrt, &[ve], vec![])?;
        let n = self.op(scope, Op::Div, &[d, sd], vec![])?;
        let m = if axis == 1 {
            self.op(scope, Op::Mul, &[w, n], vec![])?
        } else {
            self.op(scope, Op::Mul, &[n, w], vec![])?
        };
        self.op(scope, Op::Add, &[m, b], vec![])
    }

    /// HF's RMSNorm: weight * (x * 1/sqrt(mean(x^2) + eps)). The gains of the channels in
    /// `boost.0` are multiplied by `boost.1` (after the same draws as without).
    fn rms_norm(
        &mut self,
        scope: &str,
        x: ValueId,
        wname: &str,
        dim: i64,
        eps: f32,
        boost: (&[usize], f32),
    ) -> Res<ValueId> {
        let mut g: Vec<f32> = self.rng.vec(dim as usize, 0.1).iter().map(|v| 1.0 + v).collect();
        for &c in boost.0 {
            g[c] *= boost.1;
        }
        let w = self.init_f32(wname, &[dim], &g)?;
        let two = self.cf(scope, 2.0)?;
        let sq = self.op(scope, Op::Pow, &[x, two], vec![])?;
        let var = self.op(
            scope,
            Op::ReduceMean,
            &[sq],
            vec![Attribute::ints("axes", vec![-1]), Attribute::int("keepdims", 1)],
        )?;
        let e = self.cf(scope, eps)?;
        let ve = self.op(scope, Op::Add, &[var, e], vec![])?;
        let sd = self.op(scope, Op::Sqrt, &[ve], vec![])?;
        let r = self.op(scope, Op::Reciprocal, &[sd], vec![])?;
        let n = self.op(scope, Op::Mul, &[x, r], vec![])?;
        self.op(scope, Op::Mul, &[w, n], vec![])
    }

    /// GELU, erf form: (x * (erf(x / sqrt 2) + 1)) * 0.5.
    fn gelu_erf(&mut self, scope: &str, x: ValueId) -> Res<ValueId> {
        let s2 = self.cf(scope, std::f32::consts::SQRT_2)?;
        let d = self.op(scope, Op::Div, &[x, s2], vec![])?;
        let e = self.op(scope, Op::Erf, &[d], vec![])?;
        let one = self.cf(scope, 1.0)?;
        let a = self.op(scope, Op::Add, &[e, one], vec![])?;
        let m = self.op(scope, Op::Mul, &[x, a], vec![])?;
        let half = self.cf(scope, 0.5)?;
        self.op(scope, Op::Mul, &[m, half], vec![])
    }

    /// GELU, tanh form (HF "gelu_new"): 0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x^3))).
    fn gelu_tanh(&mut self, scope: &str, x: ValueId) -> Res<ValueId> {
        let half = self.cf(scope, 0.5)?;
        let hx = self.op(scope, Op::Mul, &[half, x], vec![])?;
        let three = self.cf(scope, 3.0)?;
        let x3 = self.op(scope, Op::Pow, &[x, three], vec![])?;
        let c = self.cf(scope, 0.044715)?;
        let cx3 = self.op(scope, Op::Mul, &[c, x3], vec![])?;
        let inner = self.op(scope, Op::Add, &[x, cx3], vec![])?;
        let k = self.cf(scope, (2.0 / std::f32::consts::PI).sqrt())?;
        let scaled = self.op(scope, Op::Mul, &[k, inner], vec![])?;
        let t = self.op(scope, Op::Tanh, &[scaled], vec![])?;
        let one = self.cf(scope, 1.0)?;
        let a = self.op(scope, Op::Add, &[one, t], vec![])?;
        self.op(scope, Op::Mul, &[hx, a], vec![])
    }

    fn unsqueeze(&mut self, scope: &str, x: ValueId, axes: &[i64]) -> Res<ValueId> {
        let ax = self.ci(scope, &[axes.len() as i64], axes)?;
        self.op(scope, Op::Unsqueeze, &[x, ax], vec![])
    }

    fn transpose(&mut self, scope: &str, x: ValueId, perm: &[i64]) -> Res<ValueId> {
        self.op(scope, Op::Transpose, &[x], vec![Attribute::ints("perm", perm.to_vec())])
    }

    /// `x.size(i)` as a 1-element tensor: Shape, Gather, Unsqueeze.
    fn size_of(&mut self, scope: &str, x: ValueId, i: i64) -> Res<ValueId> {
        let shape = self.op(scope, Op::Shape, &[x], vec![])?;
        let idx = self.ci(scope, &[], &[i])?;
        let d = self.op(scope, Op::Gather, &[shape, idx], vec![Attribute::int("axis", 0)])?;
        self.unsqueeze(scope, d, &[0])
    }

    /// `x.view(x.size()[:n] + tail)` as exported with dynamic axes: the leading dims come
    /// from Shape->Gather->Unsqueeze, the rest are constants, joined by Concat.
    fn reshape_dyn(&mut self, scope: &str, x: ValueId, lead: i64, tail: &[i64]) -> Res<ValueId> {
        let mut parts = Vec::new();
        for i in 0..lead {
            parts.push(self.size_of(scope, x, i)?);
        }
        for &t in tail {
            parts.push(self.ci(scope, &[1], &[t])?);
        }
        let shape = self.op(scope, Op::Concat, &parts, vec![Attribute::int("axis", 0)])?;
        self.op(scope, Op::Reshape, &[x, shape], vec![])
    }

    /// Reshape to a constant target (with 0 = copy and -1 = infer).
    fn reshape_const(&mut self, scope: &str, x: ValueId, target: &[i64]) -> Res<ValueId> {
        let shape = self.ci(scope, &[target.len() as i64], target)?;
        self.op(scope, Op::Reshape, &[x, shape], vec![])
    }

    /// Conv with torch's attributes. `gain` 2 for He scaling before a ReLU, 1 otherwise.
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        scope: &str,
        x: ValueId,
        pfx: &str,
        cin: i64,
        cout: i64,
        k: i64,
        stride: i64,
        pad: i64,
        group: i64,
        bias: bool,
        gain: f32,
    ) -> Res<ValueId> {
        let fan_in = (cin / group) * k * k;
        let w =
            self.uniform(&format!("{pfx}.weight"), &[cout, cin / group, k, k], (3.0 * gain / fan_in as f32).sqrt())?;
        let mut ins = vec![x, w];
        if bias {
            ins.push(self.uniform(&format!("{pfx}.bias"), &[cout], 0.02)?);
        }
        self.op(
            scope,
            Op::Conv,
            &ins,
            vec![
                Attribute::ints("dilations", vec![1, 1]),
                Attribute::int("group", group),
                Attribute::ints("kernel_shape", vec![k, k]),
                Attribute::ints("pads", vec![pad, pad, pad, pad]),
                Attribute::ints("strides", vec![stride, stride]),
            ],
        )
    }

    /// Inference BatchNormalization; `gamma` centres the scale (small on residual branches).
    fn batch_norm(&mut self, scope: &str, x: ValueId, pfx: &str, c: i64, gamma: f32) -> Res<ValueId> {
        let g = self.around(&format!("{pfx}.weight"), &[c], gamma, 0.1 * gamma)?;
        let b = self.uniform(&format!("{pfx}.bias"), &[c], 0.05)?;
        let m = self.uniform(&format!("{pfx}.running_mean"), &[c], 0.05)?;
        let v = self.around(&format!("{pfx}.running_var"), &[c], 1.0, 0.1)?;
        self.op(
            scope,
            Op::BatchNormalization,
            &[x, g, b, m, v],
            vec![Attribute::float("epsilon", 1e-5), Attribute::float("momentum", 0.9)],
        )
    }

    /// ReLU6 as Clip with Constant min and max.
    fn relu6(&mut self, scope: &str, x: ValueId) -> Res<ValueId> {
        let lo = self.cf(scope, 0.0)?;
        let hi = self.cf(scope, 6.0)?;
        self.op(scope, Op::Clip, &[x, lo, hi], vec![])
    }

    /// `(1 - mask[:, None, None, :].float()) * fill`, HF's extended attention mask.
    fn extended_mask(&mut self, scope: &str, mask: ValueId, fill: f32) -> Res<ValueId> {
        let m1 = self.unsqueeze(scope, mask, &[1])?;
        let m2 = self.unsqueeze(scope, m1, &[2])?;
        let mf = self.op(scope, Op::Cast, &[m2], vec![Attribute::int("to", DType::F32.onnx_code() as i64)])?;
        let one = self.cf(scope, 1.0)?;
        let inv = self.op(scope, Op::Sub, &[one, mf], vec![])?;
        let f = self.cf(scope, fill)?;
        self.op(scope, Op::Mul, &[inv, f], vec![])
    }

    /// Softmax(q k^T / sqrt(d) + mask) v for q, v `[b,h,s,d]` and k already `[b,h,d,s]`, then
    /// back to `[b,s,h,d]`. `causal` is applied with Where before the additive mask.
    #[allow(clippy::too_many_arguments)]
    fn attention_core(
        &mut self,
        scope: &str,
        q: ValueId,
        kt: ValueId,
        v: ValueId,
        d: i64,
        causal: Option<ValueId>,
        mask: Option<ValueId>,
    ) -> Res<ValueId> {
        let mut s = self.op(scope, Op::MatMul, &[q, kt], vec![])?;
        let sqrt_d = self.cf(scope, (d as f32).sqrt())?;
        s = self.op(scope, Op::Div, &[s, sqrt_d], vec![])?;
        if let Some(c) = causal {
            let fill = self.cf(scope, F32_MIN)?;
            s = self.op(scope, Op::Where, &[c, s, fill], vec![])?;
        }
        if let Some(m) = mask {
            s = self.op(scope, Op::Add, &[s, m], vec![])?;
        }
        let p = self.op(scope, Op::Softmax, &[s], vec![Attribute::int("axis", -1)])?;
        let ctx = self.op(scope, Op::MatMul, &[p, v], vec![])?;
        self.transpose(scope, ctx, &[0, 2, 1, 3])
    }
}

fn batch() -> Dim {
    Dim::sym("batch")
}

fn image_input(n: &mut Net, name: &str, res: i64) -> Res<ValueId> {
    n.input(name, DType::F32, vec![batch(), Dim::known(3), Dim::known(res), Dim::known(res)])
}

fn token_input(n: &mut Net, name: &str) -> Res<ValueId> {
    n.input(name, DType::I64, vec![batch(), Dim::sym("seq")])
}

fn check_heads(o: &Opts, hidden: i64, heads: i64) -> Res<()> {
    o.check(hidden % heads == 0, || format!("hidden={hidden} is not a multiple of heads={heads}"))
}

// ---- CNNs -----------------------------------------------------------------------------------

/// torchvision's `_make_divisible(v, 8)`.
fn make_divisible(v: f64) -> i64 {
    let new = 8.max(((v + 4.0) / 8.0) as i64 * 8);
    if (new as f64) < 0.9 * v { new + 8 } else { new }
}

fn mobilenet(seed: u64, o: &Opts) -> Res<Model> {
    let (res, width, classes) = (o.int("res")?, o.float("width")?, o.int("classes")?);
    o.check(res >= 32, || format!("res={res} is below 32"))?;
    o.check(width <= 4.0, || format!("width={width} is above 4"))?;
    let mut n = Net::new("mobilenet_v2", seed);
    let x = image_input(&mut n, "input", res)?;
    let mut c = make_divisible(32.0 * width);
    let last = make_divisible(1280.0 * width.max(1.0));
    let s = "/features/features.0";
    let mut h = n.conv(&format!("{s}/features.0.0"), x, "features.0.0", 3, c, 3, 2, 1, 1, false, 2.0)?;
    h = n.batch_norm(&format!("{s}/features.0.1"), h, "features.0.1", c, 1.0)?;
    h = n.relu6(&format!("{s}/features.0.2"), h)?;
    let settings: [(i64, f64, i64, i64); 7] = [
        (1, 16.0, 1, 1),
        (6, 24.0, 2, 2),
        (6, 32.0, 3, 2),
        (6, 64.0, 4, 2),
        (6, 96.0, 3, 1),
        (6, 160.0, 3, 2),
        (6, 320.0, 1, 1),
    ];
    let mut idx = 1;
    for (t, ch, reps, stride) in settings {
        let cout = make_divisible(ch * width);
        for r in 0..reps {
            let stride = if r == 0 { stride } else { 1 };
            let (sc, pc) = (format!("/features/features.{idx}/conv"), format!("features.{idx}.conv"));
            let hidden = c * t;
            let mut y = h;
            let mut k = 0;
            if t != 1 {
                let (ss, ps) = (format!("{sc}/conv.0"), format!("{pc}.0"));
                y = n.conv(&format!("{ss}/conv.0.0"), y, &format!("{ps}.0"), c, hidden, 1, 1, 0, 1, false, 2.0)?;
                y = n.batch_norm(&format!("{ss}/conv.0.1"), y, &format!("{ps}.1"), hidden, 1.0)?;
                y = n.relu6(&format!("{ss}/conv.0.2"), y)?;
                k = 1;
            }
            let (ss, ps) = (format!("{sc}/conv.{k}"), format!("{pc}.{k}"));
            y = n.conv(
                &format!("{ss}/conv.{k}.0"),
                y,
                &format!("{ps}.0"),
                hidden,
                hidden,
                3,
                stride,
                1,
                hidden,
                false,
                2.0,
            )?;
            y = n.batch_norm(&format!("{ss}/conv.{k}.1"), y, &format!("{ps}.1"), hidden, 1.0)?;
            y = n.relu6(&format!("{ss}/conv.{k}.2"), y)?;
            y = n.conv(
                &format!("{sc}/conv.{}", k + 1),
                y,
                &format!("{pc}.{}", k + 1),
                hidden,
                cout,
                1,
                1,
                0,
                1,
                false,
                1.0,
            )?;
            y = n.batch_norm(&format!("{sc}/conv.{}", k + 2), y, &format!("{pc}.{}", k + 2), cout, 0.5)?;
            h = if stride == 1 && c == cout {
                n.op(&format!("/features/features.{idx}"), Op::Add, &[h, y], vec![])?
            } else {
                y
            };
            c = cout;
            idx += 1;
        }
    }
    let s = format!("/features/features.{idx}");
    h = n.conv(&format!("{s}/features.{idx}.0"), h, &format!("features.{idx}.0"), c, last, 1, 1, 0, 1, false, 2.0)?;
    h = n.batch_norm(&format!("{s}/features.{idx}.1"), h, &format!("features.{idx}.1"), last, 1.0)?;
    h = n.relu6(&format!("{s}/features.{idx}.2"), h)?;
    h = n.op("", Op::GlobalAveragePool, &[h], vec![])?;
    h = n.op("", Op::Flatten, &[h], vec![Attribute::int("axis", 1)])?;
    h = n.gemm("/classifier/classifier.1", h, "classifier.1", last, classes)?;
    n.output(h, "logits", DType::F32, vec![batch(), Dim::known(classes)])?;
    Ok(n.finish())
}

fn resnet(seed: u64, o: &Opts) -> Res<Model> {
    let (depth, width, res, classes) = (o.int("depth")?, o.int("width")?, o.int("res")?, o.int("classes")?);
    let blocks: [i64; 4] = match depth {
        26 => [2, 2, 2, 2],
        38 => [3, 3, 3, 3],
        50 => [3, 4, 6, 3],
        101 => [3, 4, 23, 3],
        152 => [3, 8, 36, 3],
        _ => return Err(format!("resnet: depth={depth} is not one of 26, 38, 50, 101, 152")),
    };
    o.check(res >= 32, || format!("res={res} is below 32"))?;
    let mut n = Net::new("resnet", seed);
    let x = image_input(&mut n, "input", res)?;
    let mut h = n.conv("/conv1", x, "conv1", 3, width, 7, 2, 3, 1, false, 2.0)?;
    h = n.batch_norm("/bn1", h, "bn1", width, 1.0)?;
    h = n.op("/relu", Op::Relu, &[h], vec![])?;
    h = n.op(
        "/maxpool",
        Op::MaxPool,
        &[h],
        vec![
            Attribute::int("ceil_mode", 0),
            Attribute::ints("dilations", vec![1, 1]),
            Attribute::ints("kernel_shape", vec![3, 3]),
            Attribute::ints("pads", vec![1, 1, 1, 1]),
            Attribute::ints("strides", vec![2, 2]),
        ],
    )?;
    let mut c = width;
    for (si, &nb) in blocks.iter().enumerate() {
        let planes = width << si;
        let out = planes * 4;
        for j in 0..nb {
            let stride = if j == 0 && si > 0 { 2 } else { 1 };
            let (s, p) = (format!("/layer{}/layer{}.{j}", si + 1, si + 1), format!("layer{}.{j}", si + 1));
            let mut y = n.conv(&format!("{s}/conv1"), h, &format!("{p}.conv1"), c, planes, 1, 1, 0, 1, false, 2.0)?;
            y = n.batch_norm(&format!("{s}/bn1"), y, &format!("{p}.bn1"), planes, 1.0)?;
            y = n.op(&format!("{s}/relu"), Op::Relu, &[y], vec![])?;
            y = n.conv(&format!("{s}/conv2"), y, &format!("{p}.conv2"), planes, planes, 3, stride, 1, 1, false, 2.0)?;
            y = n.batch_norm(&format!("{s}/bn2"), y, &format!("{p}.bn2"), planes, 1.0)?;
            y = n.op(&format!("{s}/relu_1"), Op::Relu, &[y], vec![])?;
            y = n.conv(&format!("{s}/conv3"), y, &format!("{p}.conv3"), planes, out, 1, 1, 0, 1, false, 1.0)?;
            y = n.batch_norm(&format!("{s}/bn3"), y, &format!("{p}.bn3"), out, 0.25)?;
            let skip = if j == 0 {
                let (ds, dp) = (format!("{s}/downsample"), format!("{p}.downsample"));
                let z =
                    n.conv(&format!("{ds}/downsample.0"), h, &format!("{dp}.0"), c, out, 1, stride, 0, 1, false, 1.0)?;
                n.batch_norm(&format!("{ds}/downsample.1"), z, &format!("{dp}.1"), out, 1.0)?
            } else {
                h
            };
            let sum = n.op(&s, Op::Add, &[y, skip], vec![])?;
            h = n.op(&format!("{s}/relu_2"), Op::Relu, &[sum], vec![])?;
            c = out;
        }
    }
    h = n.op("/avgpool", Op::GlobalAveragePool, &[h], vec![])?;
    h = n.op("", Op::Flatten, &[h], vec![Attribute::int("axis", 1)])?;
    h = n.gemm("/fc", h, "fc", c, classes)?;
    n.output(h, "logits", DType::F32, vec![batch(), Dim::known(classes)])?;
    Ok(n.finish())
}

fn convnext(seed: u64, o: &Opts) -> Res<Model> {
    let (res, width, blocks, classes) = (o.int("res")?, o.int("width")?, o.int("blocks")?, o.int("classes")?);
    o.check(res % 32 == 0, || format!("res={res} is not a multiple of 32"))?;
    let dims = [width, width * 2, width * 4, width * 8];
    let depths = [blocks, blocks, blocks * 3, blocks];
    let mut n = Net::new("convnext", seed);
    let x = image_input(&mut n, "pixel_values", res)?;
    let e = "/convnext/embeddings";
    let mut h = n.conv(
        &format!("{e}/patch_embeddings"),
        x,
        "convnext.embeddings.patch_embeddings",
        3,
        dims[0],
        4,
        4,
        0,
        1,
        true,
        1.0,
    )?;
    h = n.layer_norm(&format!("{e}/layernorm"), h, "convnext.embeddings.layernorm", &[dims[0], 1, 1], 1, 1e-6)?;
    for (si, (&c, &depth)) in dims.iter().zip(&depths).enumerate() {
        let (s, p) = (format!("/convnext/encoder/stages.{si}"), format!("convnext.encoder.stages.{si}"));
        if si > 0 {
            let (ds, dp) = (format!("{s}/downsampling_layer"), format!("{p}.downsampling_layer"));
            let prev = dims[si - 1];
            h = n.layer_norm(&format!("{ds}/downsampling_layer.0"), h, &format!("{dp}.0"), &[prev, 1, 1], 1, 1e-6)?;
            h = n.conv(&format!("{ds}/downsampling_layer.1"), h, &format!("{dp}.1"), prev, c, 2, 2, 0, 1, true, 1.0)?;
        }
        for j in 0..depth {
            let (ls, lp) = (format!("{s}/layers.{j}"), format!("{p}.layers.{j}"));
            let mut y = n.conv(&format!("{ls}/dwconv"), h, &format!("{lp}.dwconv"), c, c, 7, 1, 3, c, true, 1.0)?;
            y = n.transpose(&ls, y, &[0, 2, 3, 1])?;
            y = n.layer_norm(&format!("{ls}/layernorm"), y, &format!("{lp}.layernorm"), &[c], -1, 1e-6)?;
            y = n.linear(&format!("{ls}/pwconv1"), y, &format!("{lp}.pwconv1"), c, 4 * c, true)?;
            y = n.gelu_erf(&format!("{ls}/act"), y)?;
            y = n.linear(&format!("{ls}/pwconv2"), y, &format!("{lp}.pwconv2"), 4 * c, c, true)?;
            let gamma = n.around(&format!("{lp}.layer_scale_parameter"), &[c], 0.3, 0.1)?;
            y = n.op(&ls, Op::Mul, &[gamma, y], vec![])?;
            y = n.transpose(&ls, y, &[0, 3, 1, 2])?;
            h = n.op(&ls, Op::Add, &[h, y], vec![])?;
        }
    }
    h = n.op(
        "/convnext",
        Op::ReduceMean,
        &[h],
        vec![Attribute::ints("axes", vec![-2, -1]), Attribute::int("keepdims", 0)],
    )?;
    h = n.layer_norm("/convnext/layernorm", h, "convnext.layernorm", &[dims[3]], -1, 1e-12)?;
    h = n.gemm("/classifier", h, "classifier", dims[3], classes)?;
    n.output(h, "logits", DType::F32, vec![batch(), Dim::known(classes)])?;
    Ok(n.finish())
}

// ---- transformers -------------------------------------------------------------------------

/// BERT/ViT self-attention from `x` `[b,s,hidden]` to the merged context `[b,s,hidden]`
/// (before the output dense). `dynamic` writes the head reshapes with Shape chains, else
/// with constant `[0,0,heads,d]` targets.
#[allow(clippy::too_many_arguments)]
fn bert_self_attention(
    n: &mut Net,
    s: &str,
    x: ValueId,
    p: &str,
    hidden: i64,
    heads: i64,
    mask: Option<ValueId>,
    dynamic: bool,
) -> Res<ValueId> {
    let d = hidden / heads;
    let q = n.linear(&format!("{s}/query"), x, &format!("{p}.query"), hidden, hidden, true)?;
    let k = n.linear(&format!("{s}/key"), x, &format!("{p}.key"), hidden, hidden, true)?;
    let v = n.linear(&format!("{s}/value"), x, &format!("{p}.value"), hidden, hidden, true)?;
    let split = |n: &mut Net, t: ValueId, perm: &[i64]| -> Res<ValueId> {
        let r = if dynamic { n.reshape_dyn(s, t, 2, &[heads, d])? } else { n.reshape_const(s, t, &[0, 0, heads, d])? };
        n.transpose(s, r, perm)
    };
    let kt = split(n, k, &[0, 2, 3, 1])?;
    let vh = split(n, v, &[0, 2, 1, 3])?;
    let qh = split(n, q, &[0, 2, 1, 3])?;
    let ctx = n.attention_core(s, qh, kt, vh, d, None, mask)?;
    if dynamic { n.reshape_dyn(s, ctx, 2, &[hidden]) } else { n.reshape_const(s, ctx, &[0, 0, hidden]) }
}

fn vit(seed: u64, o: &Opts) -> Res<Model> {
    let (res, patch, layers) = (o.int("res")?, o.int("patch")?, o.int("layers")?);
    let (hidden, heads, classes) = (o.int("hidden")?, o.int("heads")?, o.int("classes")?);
    let ffn = o.int_or("ffn", 4 * hidden)?;
    check_heads(o, hidden, heads)?;
    o.check(res % patch == 0, || format!("res={res} is not a multiple of patch={patch}"))?;
    let tokens = (res / patch) * (res / patch) + 1;
    let mut n = Net::new("vit", seed);
    let x = image_input(&mut n, "pixel_values", res)?;
    let pe = "/embeddings/patch_embeddings";
    let mut h = n.conv(
        &format!("{pe}/projection"),
        x,
        "embeddings.patch_embeddings.projection",
        3,
        hidden,
        patch,
        patch,
        0,
        1,
        true,
        1.0,
    )?;
    // flatten(2): Reshape to Concat(Shape(h)[0:2], [-1]).
    let shape = n.op(pe, Op::Shape, &[h], vec![])?;
    let (st, en, ax) = (n.ci(pe, &[1], &[0])?, n.ci(pe, &[1], &[2])?, n.ci(pe, &[1], &[0])?);
    let lead = n.op(pe, Op::Slice, &[shape, st, en, ax], vec![])?;
    let m1 = n.ci(pe, &[1], &[-1])?;
    let target = n.op(pe, Op::Concat, &[lead, m1], vec![Attribute::int("axis", 0)])?;
    h = n.op(pe, Op::Reshape, &[h, target], vec![])?;
    h = n.transpose(pe, h, &[0, 2, 1])?;
    // cls_token.expand(batch, -1, -1), then Concat and the position embeddings.
    let e = "/embeddings";
    let cls = n.uniform("embeddings.cls_token", &[1, 1, hidden], 0.5)?;
    let b = n.size_of(e, x, 0)?;
    let ones = n.ci(e, &[2], &[1, 1])?;
    let eshape = n.op(e, Op::Concat, &[b, ones], vec![Attribute::int("axis", 0)])?;
    let clsb = n.op(e, Op::Expand, &[cls, eshape], vec![])?;
    h = n.op(e, Op::Concat, &[clsb, h], vec![Attribute::int("axis", 1)])?;
    let pos = n.uniform("embeddings.position_embeddings", &[1, tokens, hidden], 0.5)?;
    h = n.op(e, Op::Add, &[h, pos], vec![])?;
    for i in 0..layers {
        let (s, p) = (format!("/encoder/layer.{i}"), format!("encoder.layer.{i}"));
        let y =
            n.layer_norm(&format!("{s}/layernorm_before"), h, &format!("{p}.layernorm_before"), &[hidden], -1, 1e-12)?;
        let ctx = bert_self_attention(
            &mut n,
            &format!("{s}/attention/attention"),
            y,
            &format!("{p}.attention.attention"),
            hidden,
            heads,
            None,
            false,
        )?;
        let a = n.linear(
            &format!("{s}/attention/output/dense"),
            ctx,
            &format!("{p}.attention.output.dense"),
            hidden,
            hidden,
            true,
        )?;
        h = n.op(&s, Op::Add, &[a, h], vec![])?;
        let y =
            n.layer_norm(&format!("{s}/layernorm_after"), h, &format!("{p}.layernorm_after"), &[hidden], -1, 1e-12)?;
        let y =
            n.linear(&format!("{s}/intermediate/dense"), y, &format!("{p}.intermediate.dense"), hidden, ffn, true)?;
        let y = n.gelu_erf(&format!("{s}/intermediate/intermediate_act_fn"), y)?;
        let y = n.linear(&format!("{s}/output/dense"), y, &format!("{p}.output.dense"), ffn, hidden, true)?;
        h = n.op(&format!("{s}/output"), Op::Add, &[y, h], vec![])?;
    }
    h = n.layer_norm("/layernorm", h, "layernorm", &[hidden], -1, 1e-12)?;
    let zero = n.ci("", &[], &[0])?;
    h = n.op("", Op::Gather, &[h, zero], vec![Attribute::int("axis", 1)])?;
    h = n.gemm("/classifier", h, "classifier", hidden, classes)?;
    n.output(h, "logits", DType::F32, vec![batch(), Dim::known(classes)])?;
    Ok(n.finish())
}

fn bert(seed: u64, o: &Opts) -> Res<Model> {
    let (layers, hidden, heads) = (o.int("layers")?, o.int("hidden")?, o.int("heads")?);
    let (vocab, max_pos, type_vocab) = (o.int("vocab")?, o.int("max_pos")?, o.int("type_vocab")?);
    let ffn = o.int_or("ffn", 4 * hidden)?;
    check_heads(o, hidden, heads)?;
    let mut n = Net::new("bert", seed);
    let ids = token_input(&mut n, "input_ids")?;
    let mask = token_input(&mut n, "attention_mask")?;
    let tt = token_input(&mut n, "token_type_ids")?;
    let e = "/embeddings";
    let wte = n.uniform("embeddings.word_embeddings.weight", &[vocab, hidden], 1.0)?;
    let pos_ids: Vec<i64> = (0..max_pos).collect();
    let pos_ids = n.init_i64("embeddings.position_ids", &[1, max_pos], &pos_ids)?;
    let wpe = n.uniform("embeddings.position_embeddings.weight", &[max_pos, hidden], 1.0)?;
    let tte = n.uniform("embeddings.token_type_embeddings.weight", &[type_vocab, hidden], 1.0)?;
    let we = n.op(&format!("{e}/word_embeddings"), Op::Gather, &[wte, ids], vec![Attribute::int("axis", 0)])?;
    let te = n.op(&format!("{e}/token_type_embeddings"), Op::Gather, &[tte, tt], vec![Attribute::int("axis", 0)])?;
    let mut h = n.op(e, Op::Add, &[we, te], vec![])?;
    // position_ids[:, 0:seq]
    let seq = n.size_of(e, ids, 1)?;
    let (st, ax, step) = (n.ci(e, &[1], &[0])?, n.ci(e, &[1], &[1])?, n.ci(e, &[1], &[1])?);
    let pids = n.op(e, Op::Slice, &[pos_ids, st, seq, ax, step], vec![])?;
    let pe = n.op(&format!("{e}/position_embeddings"), Op::Gather, &[wpe, pids], vec![Attribute::int("axis", 0)])?;
    h = n.op(e, Op::Add, &[h, pe], vec![])?;
    h = n.layer_norm(&format!("{e}/LayerNorm"), h, "embeddings.LayerNorm", &[hidden], -1, 1e-12)?;
    let ext = n.extended_mask("", mask, F32_MIN)?;
    for i in 0..layers {
        let (s, p) = (format!("/encoder/layer.{i}"), format!("encoder.layer.{i}"));
        let ctx = bert_self_attention(
            &mut n,
            &format!("{s}/attention/self"),
            h,
            &format!("{p}.attention.self"),
            hidden,
            heads,
            Some(ext),
            true,
        )?;
        let so = format!("{s}/attention/output");
        let a = n.linear(&format!("{so}/dense"), ctx, &format!("{p}.attention.output.dense"), hidden, hidden, true)?;
        let a = n.op(&so, Op::Add, &[a, h], vec![])?;
        let a = n.layer_norm(
            &format!("{so}/LayerNorm"),
            a,
            &format!("{p}.attention.output.LayerNorm"),
            &[hidden],
            -1,
            1e-12,
        )?;
        let y =
            n.linear(&format!("{s}/intermediate/dense"), a, &format!("{p}.intermediate.dense"), hidden, ffn, true)?;
        let y = n.gelu_erf(&format!("{s}/intermediate/intermediate_act_fn"), y)?;
        let y = n.linear(&format!("{s}/output/dense"), y, &format!("{p}.output.dense"), ffn, hidden, true)?;
        let y = n.op(&format!("{s}/output"), Op::Add, &[y, a], vec![])?;
        h =
            n.layer_norm(&format!("{s}/output/LayerNorm"), y, &format!("{p}.output.LayerNorm"), &[hidden], -1, 1e-12)?;
    }
    n.output(h, "last_hidden_state", DType::F32, vec![batch(), Dim::sym("seq"), Dim::known(hidden)])?;
    Ok(n.finish())
}

/// `arange(seq)[None, :]` from the second dim of `ids`: Shape, Gather, Range, Unsqueeze.
fn position_ids(n: &mut Net, scope: &str, ids: ValueId) -> Res<ValueId> {
    let shape = n.op(scope, Op::Shape, &[ids], vec![])?;
    let one = n.ci(scope, &[], &[1])?;
    let seq = n.op(scope, Op::Gather, &[shape, one], vec![Attribute::int("axis", 0)])?;
    let (start, step) = (n.ci(scope, &[], &[0])?, n.ci(scope, &[], &[1])?);
    let r = n.op(scope, Op::Range, &[start, seq, step], vec![])?;
    n.unsqueeze(scope, r, &[0])
}

fn gpt2(seed: u64, o: &Opts) -> Res<Model> {
    let (layers, hidden, heads) = (o.int("layers")?, o.int("hidden")?, o.int("heads")?);
    let (vocab, max_pos) = (o.int("vocab")?, o.int("max_pos")?);
    let ffn = o.int_or("ffn", 4 * hidden)?;
    check_heads(o, hidden, heads)?;
    let d = hidden / heads;
    let mut n = Net::new("gpt2", seed);
    let ids = token_input(&mut n, "input_ids")?;
    let mask = token_input(&mut n, "attention_mask")?;
    let t = "/transformer";
    let wte_data = n.rng.vec((vocab * hidden) as usize, 0.2);
    let wte = n.init_f32("transformer.wte.weight", &[vocab, hidden], &wte_data)?;
    let wpe = n.uniform("transformer.wpe.weight", &[max_pos, hidden], 0.2)?;
    let tri: Vec<u8> = (0..max_pos).flat_map(|r| (0..max_pos).map(move |c| u8::from(c <= r))).collect();
    let bias = n.init("transformer.h.attn.bias", DType::Bool, &[1, 1, max_pos, max_pos], tri)?;
    let we = n.op(&format!("{t}/wte"), Op::Gather, &[wte, ids], vec![Attribute::int("axis", 0)])?;
    let pids = position_ids(&mut n, t, ids)?;
    let pe = n.op(&format!("{t}/wpe"), Op::Gather, &[wpe, pids], vec![Attribute::int("axis", 0)])?;
    let mut h = n.op(t, Op::Add, &[we, pe], vec![])?;
    let ext = n.extended_mask(t, mask, -10000.0)?;
    for i in 0..layers {
        let (s, p) = (format!("{t}/h.{i}"), format!("transformer.h.{i}"));
        let y = n.layer_norm(&format!("{s}/ln_1"), h, &format!("{p}.ln_1"), &[hidden], -1, 1e-5)?;
        let a = format!("{s}/attn");
        let qkv = n.linear(&format!("{a}/c_attn"), y, &format!("{p}.attn.c_attn"), hidden, 3 * hidden, true)?;
        let sizes = n.ci(&a, &[3], &[hidden, hidden, hidden])?;
        let parts = n.op_n(&a, Op::Split, &[qkv, sizes], vec![Attribute::int("axis", 2)], 3)?;
        let heads_of = |n: &mut Net, x: ValueId, perm: &[i64]| -> Res<ValueId> {
            let r = n.reshape_dyn(&a, x, 2, &[heads, d])?;
            n.transpose(&a, r, perm)
        };
        let q = heads_of(&mut n, parts[0], &[0, 2, 1, 3])?;
        let kt = heads_of(&mut n, parts[1], &[0, 2, 3, 1])?;
        let v = heads_of(&mut n, parts[2], &[0, 2, 1, 3])?;
        // bias[:, :, key_len - query_len : key_len, :key_len]
        let ql = n.size_of(&a, q, 2)?;
        let kl = n.size_of(&a, v, 2)?;
        let start = n.op(&a, Op::Sub, &[kl, ql], vec![])?;
        let (ax2, one) = (n.ci(&a, &[1], &[2])?, n.ci(&a, &[1], &[1])?);
        let cm = n.op(&a, Op::Slice, &[bias, start, kl, ax2, one], vec![])?;
        let (zero, ax3, one) = (n.ci(&a, &[1], &[0])?, n.ci(&a, &[1], &[3])?, n.ci(&a, &[1], &[1])?);
        let cm = n.op(&a, Op::Slice, &[cm, zero, kl, ax3, one], vec![])?;
        let ctx = n.attention_core(&a, q, kt, v, d, Some(cm), Some(ext))?;
        let ctx = n.reshape_dyn(&a, ctx, 2, &[hidden])?;
        let y = n.linear(&format!("{a}/c_proj"), ctx, &format!("{p}.attn.c_proj"), hidden, hidden, true)?;
        h = n.op(&s, Op::Add, &[y, h], vec![])?;
        let y = n.layer_norm(&format!("{s}/ln_2"), h, &format!("{p}.ln_2"), &[hidden], -1, 1e-5)?;
        let y = n.linear(&format!("{s}/mlp/c_fc"), y, &format!("{p}.mlp.c_fc"), hidden, ffn, true)?;
        let y = n.gelu_tanh(&format!("{s}/mlp/act"), y)?;
        let y = n.linear(&format!("{s}/mlp/c_proj"), y, &format!("{p}.mlp.c_proj"), ffn, hidden, true)?;
        h = n.op(&s, Op::Add, &[h, y], vec![])?;
    }
    h = n.layer_norm(&format!("{t}/ln_f"), h, "transformer.ln_f", &[hidden], -1, 1e-5)?;
    // The tied lm_head: torch folds wte.T into its own initializer.
    let (v, hd) = (vocab as usize, hidden as usize);
    let wte_t: Vec<f32> = (0..hd * v).map(|i| wte_data[(i % v) * hd + i / v]).collect();
    let head = n.init_f32("lm_head.weight", &[hidden, vocab], &wte_t)?;
    let logits = n.op("/lm_head", Op::MatMul, &[h, head], vec![])?;
    n.output(logits, "logits", DType::F32, vec![batch(), Dim::sym("seq"), Dim::known(vocab)])?;
    Ok(n.finish())
}

/// `rotate_half(x) = cat(-x[..., d/2:], x[..., :d/2])`.
fn rotate_half(n: &mut Net, s: &str, x: ValueId, d: i64) -> Res<ValueId> {
    let (st, en, ax, step) =
        (n.ci(s, &[1], &[0])?, n.ci(s, &[1], &[d / 2])?, n.ci(s, &[1], &[-1])?, n.ci(s, &[1], &[1])?);
    let x1 = n.op(s, Op::Slice, &[x, st, en, ax, step], vec![])?;
    let (st, en) = (n.ci(s, &[1], &[d / 2])?, n.ci(s, &[1], &[i64::MAX])?);
    let (ax, step) = (n.ci(s, &[1], &[-1])?, n.ci(s, &[1], &[1])?);
    let x2 = n.op(s, Op::Slice, &[x, st, en, ax, step], vec![])?;
    let neg = n.op(s, Op::Neg, &[x2], vec![])?;
    n.op(s, Op::Concat, &[neg, x1], vec![Attribute::int("axis", -1)])
}

fn llama(seed: u64, o: &Opts) -> Res<Model> {
    let (layers, hidden, heads, kv_heads) = (o.int("layers")?, o.int("hidden")?, o.int("heads")?, o.int("kv_heads")?);
    let (ffn, vocab, max_pos, base) = (o.int("ffn")?, o.int("vocab")?, o.int("max_pos")?, o.float("rope_base")?);
    check_heads(o, hidden, heads)?;
    o.check(heads % kv_heads == 0, || format!("heads={heads} is not a multiple of kv_heads={kv_heads}"))?;
    let d = hidden / heads;
    o.check(d % 2 == 0, || format!("the head size hidden/heads={d} must be even for RoPE"))?;
    let rep = heads / kv_heads;
    let eps = 1e-6;
    let trained = o.switch("trained_stats")?;
    let outliers = o.count_or("outliers", if trained { (hidden + 127) / 128 } else { 0 })?;
    let rank = o.count_or("rank", if trained { (hidden / 8).max(1) } else { 0 })?;
    let outlier_scale = o.float("outlier_scale")?;
    o.check(outliers <= hidden, || format!("outliers={outliers} is more than hidden={hidden} channels"))?;
    o.check(rank <= hidden, || format!("rank={rank} is more than hidden={hidden}"))?;
    o.check((vocab as u128) * (hidden as u128) * (rank as u128) <= 1 << 33, || {
        format!("rank={rank} with vocab={vocab} and hidden={hidden} is too large to generate; choose a smaller rank")
    })?;
    o.check((1.0..=1e4).contains(&outlier_scale), || {
        format!("outlier_scale={outlier_scale} must be between 1 and 10000")
    })?;
    let mut n = Net::new("llama", seed);
    let ids = token_input(&mut n, "input_ids")?;
    let mask = token_input(&mut n, "attention_mask")?;
    let m = "/model";
    // The i.i.d. draw is the embedding as it is, or the noise part of the structured one, so
    // every other weight is the same with and without the statistics options.
    let noise = n.rng.vec((vocab * hidden) as usize, 1.0);
    let mut stats = TrainedStats::new(seed, hidden as usize, outliers as usize, rank as usize, outlier_scale as f32);
    let embed = n.init_f32("model.embed_tokens.weight", &[vocab, hidden], &stats.embedding(noise))?;
    let boost = (stats.channels.as_slice(), stats.gain);
    let mut h = n.op(&format!("{m}/embed_tokens"), Op::Gather, &[embed, ids], vec![Attribute::int("axis", 0)])?;
    let pids = position_ids(&mut n, m, ids)?;
    // RoPE tables: emb = cat(freqs, freqs), freqs[p, j] = p / base^(2j/d).
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in 0..max_pos {
        for j in 0..d {
            let f = p as f64 / base.powf((2 * (j % (d / 2))) as f64 / d as f64);
            cos.push(f.cos() as f32);
            sin.push(f.sin() as f32);
        }
    }
    let cos = n.init_f32("model.rotary_emb.cos_cached", &[max_pos, d], &cos)?;
    let sin = n.init_f32("model.rotary_emb.sin_cached", &[max_pos, d], &sin)?;
    let r = format!("{m}/rotary_emb");
    let cos = n.op(&r, Op::Gather, &[cos, pids], vec![Attribute::int("axis", 0)])?;
    let sin = n.op(&r, Op::Gather, &[sin, pids], vec![Attribute::int("axis", 0)])?;
    // Causal bias [max_pos, max_pos] sliced to [seq, seq], then masked padding with Where.
    let tri: Vec<f32> =
        (0..max_pos).flat_map(|r| (0..max_pos).map(move |c| if c <= r { 0.0 } else { F32_MIN })).collect();
    let causal = n.init_f32("model.causal_mask", &[max_pos, max_pos], &tri)?;
    let seq = n.size_of(m, ids, 1)?;
    let ends = n.op(m, Op::Concat, &[seq, seq], vec![Attribute::int("axis", 0)])?;
    let (st, ax) = (n.ci(m, &[2], &[0, 0])?, n.ci(m, &[2], &[0, 1])?);
    let cm = n.op(m, Op::Slice, &[causal, st, ends, ax], vec![])?;
    let cm = n.unsqueeze(m, cm, &[0, 1])?;
    let pm = n.unsqueeze(m, mask, &[1, 2])?;
    let pm = n.op(m, Op::Cast, &[pm], vec![Attribute::int("to", DType::Bool.onnx_code() as i64)])?;
    let fill = n.cf(m, F32_MIN)?;
    let attn_mask = n.op(m, Op::Where, &[pm, cm, fill], vec![])?;
    for i in 0..layers {
        let (s, p) = (format!("{m}/layers.{i}"), format!("model.layers.{i}"));
        let y =
            n.rms_norm(&format!("{s}/input_layernorm"), h, &format!("{p}.input_layernorm.weight"), hidden, eps, boost)?;
        let a = format!("{s}/self_attn");
        let pa = format!("{p}.self_attn");
        let q = n.linear(&format!("{a}/q_proj"), y, &format!("{pa}.q_proj"), hidden, heads * d, false)?;
        let k = n.linear(&format!("{a}/k_proj"), y, &format!("{pa}.k_proj"), hidden, kv_heads * d, false)?;
        let v = n.linear(&format!("{a}/v_proj"), y, &format!("{pa}.v_proj"), hidden, kv_heads * d, false)?;
        let q = n.reshape_const(&a, q, &[0, 0, heads, d])?;
        let q = n.transpose(&a, q, &[0, 2, 1, 3])?;
        let k = n.reshape_const(&a, k, &[0, 0, kv_heads, d])?;
        let k = n.transpose(&a, k, &[0, 2, 1, 3])?;
        let v = n.reshape_const(&a, v, &[0, 0, kv_heads, d])?;
        let mut v = n.transpose(&a, v, &[0, 2, 1, 3])?;
        // apply_rotary_pos_emb: x * cos + rotate_half(x) * sin, cos/sin unsqueezed at dim 1.
        let cu = n.unsqueeze(&a, cos, &[1])?;
        let su = n.unsqueeze(&a, sin, &[1])?;
        let rope = |n: &mut Net, x: ValueId| -> Res<ValueId> {
            let xc = n.op(&a, Op::Mul, &[x, cu], vec![])?;
            let rh = rotate_half(n, &a, x, d)?;
            let rs = n.op(&a, Op::Mul, &[rh, su], vec![])?;
            n.op(&a, Op::Add, &[xc, rs], vec![])
        };
        let q = rope(&mut n, q)?;
        let mut k = rope(&mut n, k)?;
        if rep > 1 {
            // repeat_kv: x[:, :, None].expand(b, kv, rep, s, d).reshape(b, kv * rep, s, d)
            let repeat = |n: &mut Net, x: ValueId| -> Res<ValueId> {
                let u = n.unsqueeze(&a, x, &[2])?;
                let shape = n.ci(&a, &[5], &[1, 1, rep, 1, 1])?;
                let e = n.op(&a, Op::Expand, &[u, shape], vec![])?;
                n.reshape_const(&a, e, &[0, heads, -1, d])
            };
            k = repeat(&mut n, k)?;
            v = repeat(&mut n, v)?;
        }
        let kt = n.transpose(&a, k, &[0, 1, 3, 2])?;
        let ctx = n.attention_core(&a, q, kt, v, d, None, Some(attn_mask))?;
        let ctx = n.reshape_const(&a, ctx, &[0, 0, heads * d])?;
        let y = n.linear(&format!("{a}/o_proj"), ctx, &format!("{pa}.o_proj"), heads * d, hidden, false)?;
        h = n.op(&s, Op::Add, &[h, y], vec![])?;
        let y = n.rms_norm(
            &format!("{s}/post_attention_layernorm"),
            h,
            &format!("{p}.post_attention_layernorm.weight"),
            hidden,
            eps,
            boost,
        )?;
        let (ms, mp) = (format!("{s}/mlp"), format!("{p}.mlp"));
        let g = n.linear(&format!("{ms}/gate_proj"), y, &format!("{mp}.gate_proj"), hidden, ffn, false)?;
        let sg = n.op(&format!("{ms}/act_fn"), Op::Sigmoid, &[g], vec![])?;
        let g = n.op(&format!("{ms}/act_fn"), Op::Mul, &[g, sg], vec![])?;
        let u = n.linear(&format!("{ms}/up_proj"), y, &format!("{mp}.up_proj"), hidden, ffn, false)?;
        let gu = n.op(&ms, Op::Mul, &[g, u], vec![])?;
        let y = n.linear(&format!("{ms}/down_proj"), gu, &format!("{mp}.down_proj"), ffn, hidden, false)?;
        h = n.op(&s, Op::Add, &[h, y], vec![])?;
    }
    h = n.rms_norm(&format!("{m}/norm"), h, "model.norm.weight", hidden, eps, boost)?;
    let logits = n.linear("/lm_head", h, "lm_head", hidden, vocab, false)?;
    n.output(logits, "logits", DType::F32, vec![batch(), Dim::sym("seq"), Dim::known(vocab)])?;
    Ok(n.finish())
}

/// The activation statistics of trained decoders that [`llama`]'s `outliers`, `outlier_scale`
/// and `rank` options put into the generated weights (drawn from their own seeded stream).
///
/// - Outlier features (Dettmers et al. 2022, LLM.int8(): a few hidden channels, about 0.1-1 %,
///   up to 20x the others' magnitude, the same channels in every layer; Wei et al. 2022: the
///   norm gains carry them): the `channels`' embedding columns are `scale` times larger, and
///   their RMSNorm gains are multiplied by `gain`, the factor by which those columns raise the
///   RMS the norm divides by, so the input of every linear layer after a norm carries them
///   at `scale` times the others too.
/// - Anisotropy and low effective rank (Ethayarajh 2019; Gao et al. 2019, representation
///   degeneration): with `rank` R > 0, token t's embedding row is, in shares of its energy,
///   50 % one shared mean direction, 40 % a point of a random R-dimensional subspace and 10 %
///   i.i.d. noise, at the i.i.d. draw's overall magnitude (two random tokens' cosine is about 0.5).
struct TrainedStats {
    rng: Rng,
    hidden: usize,
    rank: usize,
    scale: f32,
    channels: Vec<usize>,
    gain: f32,
}

impl TrainedStats {
    fn new(seed: u64, hidden: usize, outliers: usize, rank: usize, scale: f32) -> TrainedStats {
        let mut rng = Rng::new(seed ^ 0x6F75_746C_6965_7273);
        // K distinct channels: a seeded partial Fisher-Yates shuffle.
        let mut all: Vec<usize> = (0..hidden).collect();
        for i in 0..outliers {
            let j = i + (rng.next_u64() % (hidden - i) as u64) as usize;
            all.swap(i, j);
        }
        let mut channels = all[..outliers].to_vec();
        channels.sort_unstable();
        let (k, h) = (outliers as f64, hidden as f64);
        let s2 = scale as f64 * scale as f64;
        let gain = if outliers == 0 { 1.0 } else { (1.0 + k * (s2 - 1.0) / h).sqrt() as f32 };
        TrainedStats { rng, hidden, rank, scale, channels, gain }
    }

    /// The `[vocab, hidden]` embedding from the i.i.d. uniform draw `noise`.
    fn embedding(&mut self, mut noise: Vec<f32>) -> Vec<f32> {
        let h = self.hidden;
        if self.rank > 0 {
            let r = self.rank;
            // Unit-RMS components: uniform in [-1, 1) has RMS 1/sqrt(3).
            let s3 = 3f32.sqrt();
            let mean: Vec<f32> = self.rng.vec(h, s3);
            let basis: Vec<f32> = self.rng.vec(h * r, s3);
            let (wm, wr, wn) = (0.5f32.sqrt(), (0.4f32 / r as f32).sqrt(), 0.1f32.sqrt());
            for row in noise.chunks_mut(h) {
                let z: Vec<f32> = self.rng.vec(r, s3);
                for (c, x) in row.iter_mut().enumerate() {
                    let low: f32 = (0..r).map(|i| basis[c * r + i] * z[i]).sum();
                    // back to the i.i.d. draw's RMS (1/sqrt(3))
                    *x = (wm * mean[c] + wr * low + wn * *x * s3) / s3;
                }
            }
        }
        for row in noise.chunks_mut(h) {
            for &c in &self.channels {
                row[c] *= self.scale;
            }
        }
        noise
    }
}

/// Seeded weights for [`llama_kv`]: float, or blocks of 32 with random codes and scales.
struct RandomLlama {
    rng: Rng,
    wbits: u8,
    cfg: LlamaConfig,
}

impl RandomLlama {
    fn matrix(&mut self, rows: usize, cols: usize, scale: f32) -> Matrix {
        if self.wbits == 32 || !cols.is_multiple_of(32) {
            return Matrix::Dense { rows, cols, data: self.rng.vec(rows * cols, scale) };
        }
        let levels = 1u64 << self.wbits;
        let nb = rows * cols / 32;
        let codes = (0..rows * cols).map(|_| (self.rng.next_u64() % levels) as u8).collect();
        // (code - zero point) spans about +-levels/2: scale it to about +-`scale`.
        let step = 2.0 * scale / levels as f32;
        let scales = (0..nb).map(|_| step * (0.75 + 0.5 * self.rng.uniform().abs())).collect();
        // Fractional zero points at 4 bits (as Q4_1 / Q4_K give), whole ones at 8 (onnxruntime
        // takes no other kind there).
        let wbits = self.wbits;
        let zero_points = (0..nb)
            .map(|_| {
                let z = (levels / 2) as f32 + 2.0 * self.rng.uniform();
                if wbits == 8 { z.round() } else { z }
            })
            .collect();
        Matrix::Blocks { rows, cols, bits: self.wbits, block: 32, codes, scales, zero_points }
    }
}

impl LlamaWeights for RandomLlama {
    fn embedding(&mut self) -> Result<Matrix, String> {
        Ok(self.matrix(self.cfg.vocab, self.cfg.hidden, 1.0))
    }

    fn linear(&mut self, _layer: usize, proj: Proj) -> Result<Matrix, String> {
        let c = &self.cfg;
        let (q, kv) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let (rows, cols) = match proj {
            Proj::Q => (q, c.hidden),
            Proj::K | Proj::V => (kv, c.hidden),
            Proj::O => (c.hidden, q),
            Proj::Gate | Proj::Up => (c.ffn, c.hidden),
            Proj::Down => (c.hidden, c.ffn),
        };
        Ok(self.matrix(rows, cols, (3.0 / cols as f32).sqrt()))
    }

    fn norm(&mut self, _which: LlamaNorm) -> Result<Vec<f32>, String> {
        Ok(self.rng.vec(self.cfg.hidden, 0.1).iter().map(|x| 1.0 + x).collect())
    }

    fn lm_head(&mut self) -> Result<Option<Matrix>, String> {
        let (v, h) = (self.cfg.vocab, self.cfg.hidden);
        Ok(Some(self.matrix(v, h, (3.0 / h as f32).sqrt())))
    }
}

fn llama_kv(seed: u64, o: &Opts) -> Res<Model> {
    let u = |k: &str| -> Res<usize> {
        let v = o.int(k)?;
        usize::try_from(v).map_err(|_| format!("{k}={v} must not be negative"))
    };
    let (layers, hidden, heads) = (u("layers")?, u("hidden")?, u("heads")?);
    let wbits = o.int("wbits")?;
    o.check(matches!(wbits, 4 | 8 | 32), || format!("wbits={wbits} must be 4, 8 or 32"))?;
    o.check(heads > 0 && hidden % heads == 0, || format!("hidden={hidden} is not a multiple of heads={heads}"))?;
    let cfg = LlamaConfig {
        layers,
        hidden,
        heads,
        kv_heads: u("kv_heads")?,
        head_dim: hidden / heads,
        ffn: u("ffn")?,
        vocab: u("vocab")?,
        max_pos: u("max_pos")?,
        rope_base: o.float("rope_base")?,
        rms_eps: 1e-6,
        name: "llama".into(),
    };
    let params = (cfg.vocab * hidden * 2 + layers * (4 * hidden * hidden + 3 * hidden * cfg.ffn)) as u64;
    o.check(params <= MAX_PARAMS, || {
        format!("the model would hold over {MAX_PARAMS} parameters; choose smaller options")
    })?;
    let mut w = RandomLlama { rng: Rng::new(seed), wbits: wbits as u8, cfg: cfg.clone() };
    let mut m = optc_frontends::llama::build(&cfg, &mut w)?;
    m.producer_name = Some("optc-zoo".into());
    Ok(m)
}

// ---- tiny-cnn -------------------------------------------------------------------------------

fn conv(
    b: &mut GraphBuilder,
    rng: &mut Rng,
    x: crate::ir::ValueId,
    cin: i64,
    cout: i64,
    stride: i64,
) -> Result<crate::ir::ValueId, IrError> {
    let scale = 1.0 / ((cin * 9) as f32).sqrt();
    let w = b.init_f32("conv.weight", &[cout, cin, 3, 3], &rng.vec((cout * cin * 9) as usize, scale))?;
    let bias = b.init_f32("conv.bias", &[cout], &rng.vec(cout as usize, 0.1))?;
    b.op(
        Op::Conv,
        &[x, w, bias],
        vec![
            Attribute::ints("kernel_shape", vec![3, 3]),
            Attribute::ints("pads", vec![1, 1, 1, 1]),
            Attribute::ints("strides", vec![stride, stride]),
        ],
    )
}

fn tiny_cnn(seed: u64) -> Result<Model, IrError> {
    let mut rng = Rng::new(seed);
    let mut b = GraphBuilder::new("tiny_cnn");
    let x = b.input("image", DType::F32, vec![Dim::sym("batch"), Dim::known(3), Dim::known(32), Dim::known(32)])?;
    let c1 = conv(&mut b, &mut rng, x, 3, 8, 1)?;
    let gamma = b.init_f32("bn.scale", &[8], &rng.vec(8, 0.1).iter().map(|v| 1.0 + v).collect::<Vec<_>>())?;
    let beta = b.init_f32("bn.bias", &[8], &rng.vec(8, 0.1))?;
    let mean = b.init_f32("bn.mean", &[8], &rng.vec(8, 0.1))?;
    let var = b.init_f32("bn.var", &[8], &rng.vec(8, 0.1).iter().map(|v| 1.0 + v.abs()).collect::<Vec<_>>())?;
    let bn = b.op(Op::BatchNormalization, &[c1, gamma, beta, mean, var], vec![Attribute::float("epsilon", 1e-5)])?;
    let r1 = b.op(Op::Relu, &[bn], vec![])?;
    let id = b.op(Op::Identity, &[r1], vec![])?;
    let c2 = conv(&mut b, &mut rng, id, 8, 8, 2)?;
    let r2 = b.op(Op::Relu, &[c2], vec![])?;
    let cast = b.op(Op::Cast, &[r2], vec![Attribute::int("to", DType::F32.onnx_code() as i64)])?;
    let pool = b.op(
        Op::MaxPool,
        &[cast],
        vec![Attribute::ints("kernel_shape", vec![2, 2]), Attribute::ints("strides", vec![2, 2])],
    )?;
    let drop = b.op_n(Op::Dropout, &[Some(pool)], vec![], 1)?[0];
    // Flatten the way exporters write it: Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])).
    let shape = b.op(Op::Shape, &[drop], vec![])?;
    let zero = b.init_i64("const", &[], &[0])?;
    let batch = b.op(Op::Gather, &[shape, zero], vec![Attribute::int("axis", 0)])?;
    let axes = b.init_i64("axes", &[1], &[0])?;
    let batch1 = b.op(Op::Unsqueeze, &[batch, axes], vec![])?;
    let minus1 = b.init_i64("const", &[1], &[-1])?;
    let chw = b.op(Op::Concat, &[batch1, minus1], vec![Attribute::int("axis", 0)])?;
    let flat = b.op(Op::Reshape, &[drop, chw], vec![])?;
    let w = b.init_f32("fc.weight", &[10, 512], &rng.vec(5120, 1.0 / 512f32.sqrt()))?;
    let bias = b.init_f32("fc.bias", &[10], &rng.vec(10, 0.1))?;
    let fc = b.op(Op::Gemm, &[flat, w, bias], vec![Attribute::int("transB", 1)])?;
    let t = b.op(Op::Transpose, &[fc], vec![Attribute::ints("perm", vec![0, 1])])?;
    let probs = b.op(Op::Softmax, &[t], vec![Attribute::int("axis", 1)])?;
    b.init_f32("unused.weight", &[16], &rng.vec(16, 1.0))?;
    b.output(probs, "probs", Some(Type::tensor(DType::F32, vec![Dim::sym("batch"), Dim::known(10)])))?;
    let mut m = Model::new(b.finish(), 17);
    m.producer_name = Some("optc-zoo".into());
    m.producer_version = Some(env!("CARGO_PKG_VERSION").into());
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_list_every_option_default() {
        for (name, about) in MODELS {
            for (k, d) in family_opts(name).expect("every listed model builds") {
                assert!(about.contains(&format!("{k}={d}")), "{name}: description lacks {k}={d}");
            }
        }
    }

    #[test]
    fn options_are_checked() {
        let e = build("bert:layerz=3", 0).unwrap_err();
        assert!(e.contains("'layerz'") && e.contains("layers=2"), "{e}");
        assert!(build("bert:layers=0", 0).unwrap_err().contains("layers=0"));
        assert!(build("tiny-cnn:x=1", 0).unwrap_err().contains("takes no options"));
        assert!(build("llama:heads=4,kv_heads=3", 0).is_err());
    }

    #[test]
    fn every_family_builds_and_verifies() {
        for (name, _) in MODELS {
            let m = build(name, 1).unwrap();
            crate::ir::verify::verify_model(&m).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
    }
}
