//! `optc tokenize`: encode text (or decode ids) with a byte-level BPE tokenizer.

use anyhow::Context;
use clap::Args;
use optc::frontends::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args)]
pub struct TokenizeArgs {
    /// The tokenizer: a Hugging Face tokenizer.json (byte-level BPE), a .gguf, or an .onnx
    /// model with tokenizer.json beside it.
    tokenizer: PathBuf,
    /// The text to encode (or --text FILE).
    #[arg(conflicts_with = "text_file")]
    string: Option<String>,
    /// Read the text to encode from FILE (as Latin-1 when it is not UTF-8).
    #[arg(long = "text", value_name = "FILE")]
    text_file: Option<PathBuf>,
    /// Put the BOS token in front.
    #[arg(long)]
    bos: bool,
    /// Print the ids as a JSON array.
    #[arg(long)]
    json: bool,
    /// Print the text of these ids instead: --decode 1,2,3, or --decode @FILE for ids in a file
    /// (separated by commas or whitespace, or a JSON array). The text is printed as it is, with
    /// no newline added.
    #[arg(long, value_name = "IDS", allow_hyphen_values = true)]
    decode: Option<String>,
    /// Write the tokenizer as a Hugging Face tokenizer.json to OUT.
    #[arg(long = "write-json", value_name = "OUT")]
    write_json: Option<PathBuf>,
    /// Print the token count and the encoding speed on stderr.
    #[arg(long)]
    stats: bool,
}

/// The tokenizer stored in or beside `path`: a tokenizer.json, a GGUF file's vocabulary, or the
/// tokenizer.json beside a model (as `optc import` writes it).
pub fn load_tokenizer(path: &Path) -> anyhow::Result<Tokenizer> {
    if optc::is_gguf(path) {
        let g = optc::frontends::gguf::Gguf::open(path).with_context(|| format!("reading {}", path.display()))?;
        return optc::frontends::llama::gguf::tokenizer(&g).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("onnx") => {
            let beside = path.with_file_name("tokenizer.json");
            if !beside.exists() {
                anyhow::bail!("{}: no tokenizer.json beside the model", path.display());
            }
            load_tokenizer(&beside)
        }
        Some("json") => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let mut tok = Tokenizer::from_hf_json(&text).with_context(|| format!("loading {}", path.display()))?;
            apply_tokenizer_config(&mut tok, path)?;
            Ok(tok)
        }
        _ => anyhow::bail!("{}: not a tokenizer file (expected a tokenizer.json)", path.display()),
    }
}

/// BOS, EOS and add_bos_token from the tokenizer_config.json beside a tokenizer.json, as
/// `transformers` keeps them there; a BOS template in the tokenizer.json itself wins.
fn apply_tokenizer_config(tok: &mut Tokenizer, path: &Path) -> anyhow::Result<()> {
    let config = path.with_file_name("tokenizer_config.json");
    let Ok(text) = std::fs::read_to_string(&config) else { return Ok(()) };
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("reading {}", config.display()))?;
    // "bos_token": "<s>" or {"content": "<s>", ...}.
    let id_of = |key: &str| {
        let t = v.get(key)?;
        tok.id(t.as_str().or_else(|| t.get("content")?.as_str())?)
    };
    let (bos, eos) = (tok.bos().or_else(|| id_of("bos_token")), id_of("eos_token"));
    let add_bos = tok.add_bos() || v.get("add_bos_token").and_then(|b| b.as_bool()).unwrap_or(false);
    tok.set_special_ids(bos, eos, add_bos && bos.is_some())?;
    Ok(())
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(crate::runcmd::UsageError(msg.into()))
}

pub fn run(a: TokenizeArgs) -> anyhow::Result<()> {
    let tok = load_tokenizer(&a.tokenizer)?;
    let mut did = false;
    if let Some(out) = &a.write_json {
        std::fs::write(out, tok.to_hf_json()).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {} ({} tokens)", out.display(), tok.vocab_size());
        did = true;
    }
    if let Some(ids) = &a.decode {
        let ids = match ids.strip_prefix('@') {
            Some(file) => std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?,
            None => ids.clone(),
        };
        let ids = ids
            .split(|c: char| c == ',' || c == '[' || c == ']' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u32>().map_err(|_| usage(format!("--decode: {s:?} is not a token id"))))
            .collect::<anyhow::Result<Vec<u32>>>()?;
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= tok.vocab_size()) {
            return Err(usage(format!("--decode: id {bad} is outside the vocabulary of {}", tok.vocab_size())));
        }
        print!("{}", tok.decode(&ids));
        did = true;
    }
    let text = match (&a.string, &a.text_file) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(f)) => Some(read_text(f)?),
        (None, None) => None,
    };
    if let Some(text) = text {
        if a.decode.is_some() {
            return Err(usage("give either text to encode or --decode IDS, not both"));
        }
        let t0 = Instant::now();
        let mut ids = tok.encode(&text);
        let took = t0.elapsed();
        if a.bos {
            let bos = tok.bos().ok_or_else(|| usage("--bos: this tokenizer has no BOS token"))?;
            ids.insert(0, bos);
        }
        let line = if a.json {
            serde_json::to_string(&ids)?
        } else {
            ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
        };
        println!("{line}");
        if a.stats {
            let secs = took.as_secs_f64().max(1e-9);
            eprintln!(
                "{} tokens from {} bytes in {:.2} ms ({:.0} tokens/s, {:.1} MB/s)",
                ids.len(),
                text.len(),
                secs * 1e3,
                ids.len() as f64 / secs,
                text.len() as f64 / secs / 1e6
            );
        }
        did = true;
    }
    if !did {
        return Err(usage("nothing to do: give text (a STRING or --text FILE), --decode IDS or --write-json OUT"));
    }
    Ok(())
}

/// The file's text: UTF-8, or else Latin-1 (every byte one character), said on stderr.
pub fn read_text(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) => {
            eprintln!("{}: not valid UTF-8, read as Latin-1", path.display());
            Ok(e.into_bytes().iter().map(|&b| b as char).collect())
        }
    }
}
