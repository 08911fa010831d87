//! `optc import`, `optc eval ppl` and `optc generate`: LLMs from GGUF files, run with optc's
//! evaluator.

use crate::inspect::{fmt_bytes, fmt_duration};
use crate::runcmd::UsageError;
use anyhow::Context;
use clap::{Args, Subcommand};
use optc::Model;
use optc::frontends::gguf::Gguf;
use optc::frontends::llama::gguf::ImportOptions;
use optc::frontends::tokenizer::Tokenizer;
use optc::llm::{Decoder, generate, perplexity};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct ImportArgs {
    /// The GGUF file (llama architecture).
    input: PathBuf,
    /// Where to write the ONNX model; tokenizer.json is written beside it.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Write float32 weights instead of keeping the file's quantised blocks as MatMulNBits.
    #[arg(long)]
    dequantize: bool,
    /// Longest context the graph serves (rows of its RoPE tables) [default: the file's
    /// context length, at most 8192].
    #[arg(long, value_name = "N")]
    max_pos: Option<usize>,
}

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Perplexity of a causal LM over a text file, with a sliding window.
    #[command(long_about = "Perplexity of a causal LM over a text file, computed with optc's evaluator.\n\n\
The text is tokenized whole, then scored in windows of --ctx tokens starting every --stride tokens; each \
window scores only the tokens the previous one did not (Hugging Face's recipe). With stride = ctx the \
windows are disjoint and the first token of each is not scored.\n\nThe model is an .onnx with a \
tokenizer.json beside it (as `optc import` writes), or a .gguf.\n\nExample:\n  \
optc eval ppl smollm2.onnx --text lee_background.cor --ctx 512")]
    Ppl(PplArgs),
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(subcommand)]
    command: EvalCommand,
}

#[derive(Args)]
pub struct TokenizerArg {
    /// The tokenizer (tokenizer.json or .gguf) [default: the .gguf itself, or tokenizer.json
    /// beside the model].
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
}

#[derive(Args)]
pub struct PplArgs {
    /// The model (.onnx or .gguf).
    model: PathBuf,
    /// The text (UTF-8, or read as Latin-1 when it is not).
    #[arg(long = "text", value_name = "FILE")]
    text: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Tokens between window starts [default: ctx].
    #[arg(long)]
    stride: Option<usize>,
    /// Score only the first N tokens of the text.
    #[arg(long, value_name = "N")]
    max_tokens: Option<usize>,
    #[command(flatten)]
    tok: TokenizerArg,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// The model (.onnx or .gguf).
    model: PathBuf,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// New tokens to generate at most.
    #[arg(short = 'n', long = "max-new-tokens", default_value_t = 32)]
    n: usize,
    /// Wrap the prompt in the ChatML template (<|im_start|>user ... <|im_start|>assistant) when
    /// the vocabulary has it, as instruction-tuned models expect.
    #[arg(long)]
    chat: bool,
    #[command(flatten)]
    tok: TokenizerArg,
}

fn usage(msg: String) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg))
}

fn is_gguf(path: &Path) -> bool {
    optc::is_gguf(path)
}

/// The tokenizer for `model`: `--tokenizer`, the .gguf's own vocabulary, or tokenizer.json
/// beside the model.
fn tokenizer_for(model: &Path, explicit: Option<&Path>) -> anyhow::Result<Tokenizer> {
    if let Some(p) = explicit {
        return crate::tokcmd::load_tokenizer(p);
    }
    if is_gguf(model) {
        return crate::tokcmd::load_tokenizer(model);
    }
    let beside = model.with_file_name("tokenizer.json");
    if beside.exists() {
        return crate::tokcmd::load_tokenizer(&beside);
    }
    Err(usage(format!(
        "no tokenizer for {}: give --tokenizer FILE (optc import writes tokenizer.json beside the model)",
        model.display()
    )))
}

pub fn import(a: ImportArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let g = Gguf::open(&a.input).map_err(|e| usage(format!("reading {}: {e}", a.input.display())))?;
    let opts = ImportOptions { dequantize: a.dequantize, max_pos: a.max_pos };
    let ir =
        optc::frontends::llama::gguf::import(&g, &opts).map_err(|e| usage(format!("{}: {e}", a.input.display())))?;
    let tok = optc::frontends::llama::gguf::tokenizer(&g);
    let model = Model::from_ir(ir);
    model.save(&a.output)?;
    let size = std::fs::metadata(&a.output).map(|m| m.len()).unwrap_or(0);
    println!(
        "imported {} ({}) -> {} ({}) in {}",
        a.input.display(),
        fmt_bytes(g.file_len()),
        a.output.display(),
        fmt_bytes(size),
        fmt_duration(t0.elapsed())
    );
    match tok {
        Ok(tok) => {
            let path = a.output.with_file_name("tokenizer.json");
            write_atomic(&path, tok.to_hf_json().as_bytes())?;
            println!("tokenizer ({} tokens) -> {}", tok.vocab_size(), path.display());
        }
        Err(e) => eprintln!("warning: no tokenizer written: {e}"),
    }
    Ok(())
}

fn write_atomic(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    optc::backends::write_atomic(path, |w| w.write_all(data)).with_context(|| format!("writing {}", path.display()))
}

fn load(model: &Path) -> anyhow::Result<Model> {
    Ok(Model::load(model)?)
}

pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    match a.command {
        EvalCommand::Ppl(a) => ppl(a),
    }
}

fn ppl(a: PplArgs) -> anyhow::Result<()> {
    let stride = a.stride.unwrap_or(a.ctx);
    if a.ctx < 2 || stride == 0 || stride > a.ctx {
        return Err(usage(format!("need --ctx >= 2 and 0 < --stride <= --ctx (got ctx {}, stride {stride})", a.ctx)));
    }
    let tok = tokenizer_for(&a.model, a.tok.tokenizer.as_deref())?;
    let text = crate::tokcmd::read_text(&a.text)?;
    let mut ids = tok.encode(&text);
    if let Some(n) = a.max_tokens {
        ids.truncate(n);
    }
    let t0 = Instant::now();
    let model = load(&a.model)?;
    let load_time = t0.elapsed();
    let dec = Decoder::new(model.ir()).map_err(|e| usage(format!("{}: {e}", a.model.display())))?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("perplexity {bar:40} {pos}/{len} windows ({elapsed} / {eta} left)")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let t1 = Instant::now();
    let p = perplexity(&dec, &ids, a.ctx, stride, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .map_err(|e| anyhow::anyhow!("{}: {e}", a.model.display()))?;
    bar.finish_and_clear();
    let secs = t1.elapsed().as_secs_f64();
    if a.json {
        let v = serde_json::json!({
            "model": a.model.display().to_string(),
            "text": a.text.display().to_string(),
            "ctx": a.ctx,
            "stride": stride,
            "tokens": p.tokens,
            "windows": p.windows,
            "scored": p.scored,
            "nll_mean": p.nll_sum / p.scored.max(1) as f64,
            "ppl": p.ppl(),
            "load_s": load_time.as_secs_f64(),
            "eval_s": secs,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "perplexity {:.3} over {} scored tokens ({} tokens, {} windows of {} with stride {}), mean NLL {:.4}",
            p.ppl(),
            p.scored,
            p.tokens,
            p.windows,
            a.ctx,
            stride,
            p.nll_sum / p.scored.max(1) as f64
        );
        println!(
            "load {}, evaluation {} ({:.0} tokens/s)",
            fmt_duration(load_time),
            fmt_duration(t1.elapsed()),
            p.scored as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}

pub fn generate_cmd(a: GenerateArgs) -> anyhow::Result<()> {
    let tok = tokenizer_for(&a.model, a.tok.tokenizer.as_deref())?;
    let prompt = if a.chat {
        if tok.id("<|im_start|>").is_none() || tok.id("<|im_end|>").is_none() {
            return Err(usage("--chat: the vocabulary has no <|im_start|> / <|im_end|> tokens (ChatML)".into()));
        }
        format!("<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n", a.prompt)
    } else {
        a.prompt.clone()
    };
    let ids = tok.encode_with_bos(&prompt);
    let model = load(&a.model)?;
    let dec = Decoder::new(model.ir()).map_err(|e| usage(format!("{}: {e}", a.model.display())))?;
    let mut stop: Vec<u32> = tok.eos().into_iter().collect();
    if a.chat {
        stop.extend(tok.id("<|im_end|>"));
    }
    let t0 = Instant::now();
    let mut out = std::io::stdout().lock();
    if !a.chat {
        write!(out, "{}", a.prompt)?;
    }
    out.flush()?;
    // Decode the whole continuation each time and print what is new, so multi-token
    // characters come out whole.
    let mut new_ids: Vec<u32> = Vec::new();
    let mut shown = 0;
    let got = generate(&dec, &ids, a.n, &stop, |t| {
        if stop.contains(&t) {
            return;
        }
        new_ids.push(t);
        let text = tok.decode(&new_ids);
        if text.len() > shown && text.is_char_boundary(shown) && !text.ends_with('\u{FFFD}') {
            let _ = write!(out, "{}", &text[shown..]);
            let _ = out.flush();
            shown = text.len();
        }
    })
    .map_err(|e| anyhow::anyhow!("{}: {e}", a.model.display()))?;
    writeln!(out)?;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{} prompt tokens, {} new tokens in {} ({:.1} tokens/s)",
        ids.len(),
        got.len(),
        fmt_duration(t0.elapsed()),
        got.len() as f64 / secs.max(1e-9)
    );
    Ok(())
}
