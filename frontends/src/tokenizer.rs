//! A byte-level BPE tokenizer (the GPT-2 scheme used by SmolLM2, StarCoder, GPT-2 and kin) that
//! encodes exactly as Hugging Face `tokenizers` does for the pre-tokenizers it supports.
//!
//! Encoding runs in four steps, each the same as in `tokenizers`:
//! 1. special tokens (GGUF control and user-defined tokens, `added_tokens` in a tokenizer.json)
//!    are cut out of the text first, leftmost-longest, and become their ids directly;
//! 2. the pre-tokenizer splits the rest into words: [`PreTokenizer::Gpt2`] is the GPT-2 pattern
//!    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, written out by
//!    hand; [`PreTokenizer::DigitsThenGpt2`] first isolates every numeric character;
//! 3. each word's UTF-8 bytes become the GPT-2 byte-to-unicode characters, one initial symbol each;
//! 4. BPE merges the adjacent pair of lowest merge rank (the leftmost on ties) until none is left,
//!    with a heap (O(n log n) per word); the ids of each distinct word are cached per call.
//!
//! `\p{L}` and `\p{N}` are the Unicode classes of the Oniguruma build inside `tokenizers` 0.23
//! (tables at the end of this file, generated from it); `\s` is Rust's `char::is_whitespace`
//! (the White_Space property, the same set) and the `Digits` step uses `char::is_numeric`, as the
//! `tokenizers` source does.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use thiserror::Error;

/// GGUF token types (`tokenizer.ggml.token_type`).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

#[derive(Debug, Error)]
pub enum TokenizerError {
    /// A tokenizer model, pre-tokenizer or option that optc does not implement.
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    /// Vocabulary data that does not make a tokenizer.
    #[error("invalid tokenizer: {0}")]
    Invalid(String),
    #[error("tokenizer.json is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// How text is split into words before BPE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// The GPT-2 regex split: Hugging Face `ByteLevel(add_prefix_space=false, use_regex=true)`,
    /// llama.cpp pre-tokenizer "gpt2" (also "mpt", "olmo").
    Gpt2,
    /// Every numeric character on its own, then the GPT-2 split of the stretches between them:
    /// Hugging Face `Sequence[Digits(individual_digits=true), ByteLevel(use_regex=true)]` (SmolLM,
    /// SmolLM2, StarCoder), llama.cpp pre-tokenizers "smollm", "starcoder", "refact", "codeshell",
    /// "command-r", "exaone", "minerva" (which llama.cpp runs as `\p{N}` then the GPT-2 regex).
    DigitsThenGpt2,
}

impl PreTokenizer {
    /// The Hugging Face tokenizer.json `pre_tokenizer` object.
    fn hf_json(self) -> &'static str {
        match self {
            PreTokenizer::Gpt2 => BYTE_LEVEL_JSON,
            PreTokenizer::DigitsThenGpt2 => {
                concat!(
                    r#"{"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},"#,
                    r#"{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}]}"#
                )
            }
        }
    }
}

const BYTE_LEVEL_JSON: &str = r#"{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}"#;

/// A token matched in the raw text before pre-tokenization (control and user-defined tokens).
#[derive(Clone, Debug)]
struct Special {
    content: String,
    id: u32,
    /// Hugging Face `special` (GGUF control) rather than a user-defined added token.
    special: bool,
    /// Hugging Face `lstrip` / `rstrip`: the match swallows the whitespace on that side.
    lstrip: bool,
    rstrip: bool,
}

/// A small multiplicative hasher for the hot maps (merge pairs, word cache); the keys are not
/// attacker-chosen in a way that matters here (a slow tokenization at worst).
#[derive(Default, Clone, Copy)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes(c.try_into().unwrap()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 59));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64);
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A byte-level BPE tokenizer. Build it from a GGUF vocabulary ([`Tokenizer::from_vocab`]) or a
/// Hugging Face tokenizer.json ([`Tokenizer::from_hf_json`]).
#[derive(Clone)]
pub struct Tokenizer {
    /// id -> token text (GPT-2 byte-to-unicode form for ordinary tokens); "" for ids with none.
    tokens: Vec<String>,
    /// id -> GGUF token type.
    types: Vec<i32>,
    /// token text -> id (the first id where a text repeats).
    vocab: HashMap<String, u32>,
    /// (left id, right id) -> (rank, merged id).
    merges: FastMap<u64, (u32, u32)>,
    /// byte -> id of the one-character token of its GPT-2 character.
    byte_ids: [Option<u32>; 256],
    /// Longest first, so that the first one matching at a position is the longest there.
    specials: Vec<Special>,
    /// Which bytes start a special token.
    special_first: [bool; 256],
    pre: PreTokenizer,
    unk: Option<u32>,
    /// Hugging Face `ignore_merges`: a word that is a token is that token, merges or not.
    ignore_merges: bool,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("merges", &self.merges.len())
            .field("special_tokens", &self.specials.len())
            .field("pre", &self.pre)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

fn pair_key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

/// GPT-2's byte-to-unicode map: printable Latin-1 bytes stand for themselves, the other 68 bytes
/// (controls, space, DEL, NBSP, soft hyphen) for U+0100 onwards, in byte order.
pub fn byte_to_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        return b as char;
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).unwrap()
}

/// The inverse of [`byte_to_char`].
pub fn char_to_byte(c: char) -> Option<u8> {
    static TABLE: std::sync::OnceLock<[i16; 324]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [-1i16; 324];
        for b in 0..=255u8 {
            t[byte_to_char(b) as usize] = b as i16;
        }
        t
    });
    table.get(c as usize).and_then(|&b| u8::try_from(b).ok())
}

fn byte_chars() -> &'static [char; 256] {
    static TABLE: std::sync::OnceLock<[char; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|b| byte_to_char(b as u8)))
}

/// A piece of the input after the special tokens are cut out.
enum Piece<'a> {
    Text(&'a str),
    Special(u32),
}

/// Scratch space for one word's BPE, reused across words.
#[derive(Default)]
struct Scratch {
    ids: Vec<u32>,
    prev: Vec<u32>,
    next: Vec<u32>,
    dead: Vec<bool>,
    heap: BinaryHeap<Reverse<(u32, u32)>>,
}

const NONE: u32 = u32::MAX;

impl Tokenizer {
    /// A tokenizer from a GGUF vocabulary.
    ///
    /// `tokens`: id -> token text in GPT-2 byte-to-unicode form; `merges`: "a b" lines in rank
    /// order; `token_types`: GGUF token types (1 normal, 2 unknown, 3 control, 4 user-defined,
    /// 5 unused, 6 byte), or empty for all normal. Control and user-defined tokens are matched in
    /// the text as whole tokens before pre-tokenization. A merge whose parts or result are not in
    /// the vocabulary is skipped.
    pub fn from_vocab(
        tokens: Vec<String>,
        merges: &[String],
        token_types: &[i32],
        pre: PreTokenizer,
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
    ) -> Result<Tokenizer, TokenizerError> {
        let types = if token_types.is_empty() {
            vec![token_type::NORMAL; tokens.len()]
        } else if token_types.len() == tokens.len() {
            token_types.to_vec()
        } else {
            return Err(TokenizerError::Invalid(format!(
                "{} token types for {} tokens",
                token_types.len(),
                tokens.len()
            )));
        };
        let mut pairs = Vec::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            let Some((a, b)) = m.split_once(' ') else {
                return Err(TokenizerError::Invalid(format!(
                    "merge {i} ({m:?}) is not two tokens separated by a space"
                )));
            };
            pairs.push((a.to_string(), b.to_string()));
        }
        let specials = (0..tokens.len())
            .filter(|&i| matches!(types[i], token_type::CONTROL | token_type::USER_DEFINED) && !tokens[i].is_empty())
            .map(|i| Special {
                content: tokens[i].clone(),
                id: i as u32,
                special: types[i] == token_type::CONTROL,
                lstrip: false,
                rstrip: false,
            })
            .collect();
        let unk = types.iter().position(|&t| t == token_type::UNKNOWN).map(|i| i as u32);
        Tokenizer::build(tokens, types, &pairs, specials, pre, unk, false, bos, eos, add_bos)
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        tokens: Vec<String>,
        types: Vec<i32>,
        merges: &[(String, String)],
        mut specials: Vec<Special>,
        pre: PreTokenizer,
        unk: Option<u32>,
        ignore_merges: bool,
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
    ) -> Result<Tokenizer, TokenizerError> {
        let n = tokens.len();
        if n > u32::MAX as usize - 1 {
            return Err(TokenizerError::Invalid(format!("{n} tokens is too many")));
        }
        for (what, id) in [("bos", bos), ("eos", eos), ("unknown token", unk)] {
            if let Some(id) = id
                && id as usize >= n
            {
                return Err(TokenizerError::Invalid(format!("{what} id {id} is outside the vocabulary of {n}")));
            }
        }
        let mut vocab = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            if !t.is_empty() {
                vocab.entry(t.clone()).or_insert(i as u32);
            }
        }
        let byte_ids = std::array::from_fn(|b| vocab.get(byte_chars()[b].to_string().as_str()).copied());
        let mut merge_map = FastMap::default();
        let mut joined = String::new();
        for (rank, (a, b)) in merges.iter().enumerate() {
            let (Some(&ia), Some(&ib)) = (vocab.get(a.as_str()), vocab.get(b.as_str())) else { continue };
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let Some(&merged) = vocab.get(joined.as_str()) else { continue };
            // As in `tokenizers`, a pair listed twice keeps its last rank.
            merge_map.insert(pair_key(ia, ib), (rank as u32, merged));
        }
        specials.sort_by(|a, b| b.content.len().cmp(&a.content.len()).then(a.id.cmp(&b.id)));
        specials.dedup_by(|a, b| a.content == b.content);
        let mut special_first = [false; 256];
        for s in &specials {
            special_first[s.content.as_bytes()[0] as usize] = true;
        }
        Ok(Tokenizer {
            tokens,
            types,
            vocab,
            merges: merge_map,
            byte_ids,
            specials,
            special_first,
            pre,
            unk,
            ignore_merges,
            bos,
            eos,
            add_bos,
        })
    }

    /// The pre-tokenizer for a GGUF `tokenizer.ggml.model` and `tokenizer.ggml.pre`, with
    /// llama.cpp's meaning of the names.
    pub fn pre_from_gguf_name(model: &str, pre: &str) -> Result<PreTokenizer, TokenizerError> {
        match model {
            "gpt2" => {}
            "llama" => {
                return Err(TokenizerError::Unsupported(
                    "GGUF tokenizer model \"llama\" (SentencePiece) is not supported: optc reads byte-level BPE \
                     (\"gpt2\") vocabularies"
                        .into(),
                ));
            }
            _ => {
                return Err(TokenizerError::Unsupported(format!(
                    "GGUF tokenizer model {model:?}: optc reads byte-level BPE (\"gpt2\") vocabularies only"
                )));
            }
        }
        match pre {
            "gpt2" | "mpt" | "olmo" => Ok(PreTokenizer::Gpt2),
            "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" | "minerva" => {
                Ok(PreTokenizer::DigitsThenGpt2)
            }
            "default" | "" => Err(TokenizerError::Unsupported(
                "GGUF pre-tokenizer \"default\" (llama.cpp's fallback for vocabularies converted without a known \
                 pre-tokenizer: [\\p{P}$+<=>^~|]+, then GPT-2, then \\p{N}+, then [0-9]{3}) is not supported; \
                 optc knows gpt2, mpt, olmo, smollm, starcoder, refact, codeshell, command-r, exaone, minerva"
                    .into(),
            )),
            _ => Err(TokenizerError::Unsupported(format!(
                "GGUF pre-tokenizer {pre:?} is not supported; optc knows gpt2, mpt, olmo, smollm, starcoder, \
                 refact, codeshell, command-r, exaone, minerva"
            ))),
        }
    }

    /// Set (or clear) the BOS and EOS ids and whether [`Tokenizer::encode_with_bos`] adds BOS,
    /// e.g. from a tokenizer_config.json.
    pub fn set_special_ids(&mut self, bos: Option<u32>, eos: Option<u32>, add_bos: bool) -> Result<(), TokenizerError> {
        for (what, id) in [("bos", bos), ("eos", eos)] {
            if let Some(id) = id
                && id as usize >= self.tokens.len()
            {
                return Err(TokenizerError::Invalid(format!(
                    "{what} id {id} is outside the vocabulary of {}",
                    self.tokens.len()
                )));
            }
        }
        self.bos = bos;
        self.eos = eos;
        self.add_bos = add_bos;
        Ok(())
    }

    /// The ids of `text`. Special tokens in the text are matched first, as whole tokens; no BOS.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut cache: FastMap<&str, Vec<u32>> = FastMap::default();
        let mut scratch = Scratch::default();
        for piece in self.split_specials(text) {
            match piece {
                Piece::Special(id) => out.push(id),
                Piece::Text(s) => self.encode_text(s, &mut cache, &mut scratch, &mut out),
            }
        }
        out
    }

    /// [`Tokenizer::encode`], with BOS in front when the vocabulary asks for it (`add_bos`).
    pub fn encode_with_bos(&self, text: &str) -> Vec<u32> {
        match self.bos {
            Some(bos) if self.add_bos => {
                let mut ids = vec![bos];
                ids.extend(self.encode(text));
                ids
            }
            _ => self.encode(text),
        }
    }

    /// The text of `ids`: each token's GPT-2 characters back to bytes (a token with a character
    /// outside that map, such as most control tokens, as its own UTF-8 text, as the Hugging Face
    /// ByteLevel decoder does), then lossy UTF-8. Ids outside the vocabulary are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let Some(t) = self.tokens.get(id as usize) else { continue };
            let start = bytes.len();
            for c in t.chars() {
                match char_to_byte(c) {
                    Some(b) => bytes.push(b),
                    None => {
                        bytes.truncate(start);
                        bytes.extend_from_slice(t.as_bytes());
                        break;
                    }
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The text of token `id` (GPT-2 byte-to-unicode form).
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of a token text (GPT-2 byte-to-unicode form).
    pub fn id(&self, token: &str) -> Option<u32> {
        self.vocab.get(token).copied()
    }

    /// The GGUF type of token `id` (1 normal, 3 control, 4 user-defined, ...).
    pub fn token_type(&self, id: u32) -> Option<i32> {
        self.types.get(id as usize).copied()
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
    pub fn pre_tokenizer(&self) -> PreTokenizer {
        self.pre
    }

    /// Cut the special tokens out of `text`, leftmost-longest, as `tokenizers`' added vocabulary
    /// does.
    fn split_specials<'a>(&self, text: &'a str) -> Vec<Piece<'a>> {
        let mut pieces = Vec::new();
        if self.specials.is_empty() {
            pieces.push(Piece::Text(text));
            return pieces;
        }
        let b = text.as_bytes();
        let (mut last, mut i) = (0, 0);
        while i < b.len() {
            if self.special_first[b[i] as usize]
                && let Some(s) = self.specials.iter().find(|s| b[i..].starts_with(s.content.as_bytes()))
            {
                let (mut start, mut end) = (i, i + s.content.len());
                if s.lstrip {
                    let ws: usize =
                        text[last..start].chars().rev().take_while(|c| c.is_whitespace()).map(char::len_utf8).sum();
                    start -= ws;
                }
                if s.rstrip {
                    end += text[end..].chars().take_while(|c| c.is_whitespace()).map(char::len_utf8).sum::<usize>();
                }
                if start > last {
                    pieces.push(Piece::Text(&text[last..start]));
                }
                pieces.push(Piece::Special(s.id));
                last = end;
                i = end;
                continue;
            }
            i += 1;
        }
        if last < b.len() {
            pieces.push(Piece::Text(&text[last..]));
        }
        pieces
    }

    fn encode_text<'a>(
        &self,
        s: &'a str,
        cache: &mut FastMap<&'a str, Vec<u32>>,
        scratch: &mut Scratch,
        out: &mut Vec<u32>,
    ) {
        let mut word = |w: &'a str| {
            if let Some(ids) = cache.get(w) {
                out.extend_from_slice(ids);
                return;
            }
            let start = out.len();
            self.bpe(w.as_bytes(), scratch, out);
            cache.insert(w, out[start..].to_vec());
        };
        pre_split(self.pre, s, &mut word);
    }

    /// BPE on one word's bytes: merge the adjacent pair of lowest rank (leftmost on ties) until no
    /// pair has a merge, as `tokenizers`' `Word::merge_all` does with its heap.
    fn bpe(&self, word: &[u8], s: &mut Scratch, out: &mut Vec<u32>) {
        if self.ignore_merges {
            let text: String = word.iter().map(|&b| byte_chars()[b as usize]).collect();
            if let Some(&id) = self.vocab.get(&text) {
                out.push(id);
                return;
            }
        }
        s.ids.clear();
        for &b in word {
            // A byte whose character is not in the vocabulary: the unknown token if there is one,
            // else nothing (`tokenizers` without `unk_token` drops it too).
            if let Some(id) = self.byte_ids[b as usize].or(self.unk) {
                s.ids.push(id);
            }
        }
        let n = s.ids.len();
        if n < 2 {
            out.extend_from_slice(&s.ids);
            return;
        }
        s.prev.clear();
        s.prev.extend((0..n as u32).map(|i| i.wrapping_sub(1)));
        s.next.clear();
        s.next.extend((1..=n as u32).map(|i| if i as usize == n { NONE } else { i }));
        s.dead.clear();
        s.dead.resize(n, false);
        s.heap.clear();
        for i in 0..n - 1 {
            if let Some(&(rank, _)) = self.merges.get(&pair_key(s.ids[i], s.ids[i + 1])) {
                s.heap.push(Reverse((rank, i as u32)));
            }
        }
        while let Some(Reverse((rank, pos))) = s.heap.pop() {
            let p = pos as usize;
            if s.dead[p] || s.next[p] == NONE {
                continue;
            }
            let nx = s.next[p] as usize;
            let Some(&(r, merged)) = self.merges.get(&pair_key(s.ids[p], s.ids[nx])) else { continue };
            if r != rank {
                continue; // a stale entry: this pair changed since it was pushed
            }
            s.ids[p] = merged;
            s.dead[nx] = true;
            let after = s.next[nx];
            s.next[p] = after;
            if after != NONE {
                s.prev[after as usize] = pos;
                if let Some(&(r, _)) = self.merges.get(&pair_key(merged, s.ids[after as usize])) {
                    s.heap.push(Reverse((r, pos)));
                }
            }
            let before = s.prev[p];
            if before != NONE
                && let Some(&(r, _)) = self.merges.get(&pair_key(s.ids[before as usize], merged))
            {
                s.heap.push(Reverse((r, before)));
            }
        }
        let mut i = 0u32;
        while i != NONE {
            out.push(s.ids[i as usize]);
            i = s.next[i as usize];
        }
    }
}

/// `\p{L}` as `tokenizers` (Oniguruma) sees it.
fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    in_ranges(LETTER_RANGES, c as u32)
}

/// `\p{N}` as `tokenizers` (Oniguruma) sees it.
fn is_number(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    in_ranges(NUMBER_RANGES, c as u32)
}

/// Whether `c` lies in one of the inclusive (first, last) pairs of a sorted flat table.
fn in_ranges(table: &[u32], c: u32) -> bool {
    let pairs = table.len() / 2;
    // The first pair whose last code point is >= c.
    let (mut lo, mut hi) = (0, pairs);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if table[2 * mid + 1] < c { lo = mid + 1 } else { hi = mid }
    }
    lo < pairs && table[2 * lo] <= c
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

fn class(c: char) -> Class {
    if is_letter(c) {
        Class::Letter
    } else if is_number(c) {
        Class::Number
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Other
    }
}

/// The GPT-2 split of `s`: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`,
/// leftmost-first like the regex engine, every character in exactly one word.
/// Splits `s` into pre-tokens as `pre` does: the GPT-2 pattern, after (for
/// `DigitsThenGpt2`) every numeric character on its own.
fn pre_split<'a>(pre: PreTokenizer, s: &'a str, emit: &mut impl FnMut(&'a str)) {
    match pre {
        PreTokenizer::Gpt2 => gpt2_split(s, emit),
        PreTokenizer::DigitsThenGpt2 => {
            let mut last = 0;
            for (i, c) in s.char_indices() {
                if c.is_numeric() {
                    if last < i {
                        gpt2_split(&s[last..i], emit);
                    }
                    last = i + c.len_utf8();
                    emit(&s[i..last]);
                }
            }
            if last < s.len() {
                gpt2_split(&s[last..], emit);
            }
        }
    }
}

fn gpt2_split<'a>(s: &'a str, emit: &mut impl FnMut(&'a str)) {
    let b = s.as_bytes();
    let char_at = |i: usize| s[i..].chars().next();
    let mut i = 0;
    while i < b.len() {
        // 's 't 're 've 'm 'll 'd
        if b[i] == b'\'' {
            let n = match b.get(i + 1..i + 3) {
                Some(b"re" | b"ve" | b"ll") => 3,
                _ => match b.get(i + 1) {
                    Some(b's' | b't' | b'm' | b'd') => 2,
                    _ => 0,
                },
            };
            if n > 0 {
                emit(&s[i..i + n]);
                i += n;
                continue;
            }
        }
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        let j = if b[i] == b' ' { i + 1 } else { i };
        if let Some(c) = char_at(j) {
            let k = class(c);
            if k != Class::Space {
                let mut e = j + c.len_utf8();
                while let Some(c) = char_at(e) {
                    if class(c) != k {
                        break;
                    }
                    e += c.len_utf8();
                }
                emit(&s[i..e]);
                i = e;
                continue;
            }
        }
        // Here s[i] is whitespace. `\s+(?!\S)`: the run, less its last character when a
        // non-space follows; `\s+` for a single whitespace character before a non-space.
        let (mut e, mut last) = (i, i);
        while let Some(c) = char_at(e) {
            if !c.is_whitespace() {
                break;
            }
            last = e;
            e += c.len_utf8();
        }
        let end = if e < b.len() && last > i { last } else { e };
        emit(&s[i..end]);
        i = end;
    }
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn unsupported(what: String) -> TokenizerError {
    TokenizerError::Unsupported(what)
}

fn invalid(what: String) -> TokenizerError {
    TokenizerError::Invalid(what)
}

/// The "type" of a tokenizer.json component, for messages.
fn type_name(v: &serde_json::Value) -> String {
    match v.get("type").and_then(|t| t.as_str()) {
        Some("Sequence") => {
            let inner = v.get("pretokenizers").or_else(|| v.get("normalizers")).or_else(|| v.get("decoders"));
            let inner = inner.or_else(|| v.get("processors")).and_then(|l| l.as_array());
            let names: Vec<String> = inner.map(|l| l.iter().map(type_name).collect()).unwrap_or_default();
            format!("Sequence[{}]", names.join(", "))
        }
        Some(t) => t.to_string(),
        None => v.to_string(),
    }
}

fn flag(v: &serde_json::Value, key: &str, default: bool) -> bool {
    v.get(key).and_then(|x| x.as_bool()).unwrap_or(default)
}

/// A ByteLevel pre-tokenizer that is the GPT-2 split and nothing more.
fn check_byte_level(p: &serde_json::Value) -> Result<(), TokenizerError> {
    if !flag(p, "use_regex", true) {
        return Err(unsupported(
            "ByteLevel pre-tokenizer with use_regex=false (the split comes from another pre-tokenizer, e.g. a \
             Split regex): only the GPT-2 split is supported"
                .into(),
        ));
    }
    if flag(p, "add_prefix_space", true) {
        return Err(unsupported("ByteLevel pre-tokenizer with add_prefix_space=true".into()));
    }
    Ok(())
}

fn parse_pre(p: &serde_json::Value) -> Result<PreTokenizer, TokenizerError> {
    let t = p.get("type").and_then(|t| t.as_str());
    match t {
        Some("ByteLevel") => check_byte_level(p).map(|()| PreTokenizer::Gpt2),
        Some("Sequence") => {
            let list = p.get("pretokenizers").and_then(|l| l.as_array()).map(Vec::as_slice).unwrap_or_default();
            match list {
                [one] => parse_pre(one),
                [d, bl]
                    if d.get("type").and_then(|t| t.as_str()) == Some("Digits")
                        && bl.get("type").and_then(|t| t.as_str()) == Some("ByteLevel") =>
                {
                    if !flag(d, "individual_digits", false) {
                        return Err(unsupported("pre-tokenizer Digits(individual_digits=false)".into()));
                    }
                    check_byte_level(bl)?;
                    Ok(PreTokenizer::DigitsThenGpt2)
                }
                _ => Err(unsupported(format!(
                    "pre-tokenizer {}: optc knows ByteLevel and Sequence[Digits, ByteLevel]",
                    type_name(p)
                ))),
            }
        }
        _ if p.is_null() => {
            Err(unsupported("no pre-tokenizer: a byte-level BPE tokenizer needs a ByteLevel pre-tokenizer".into()))
        }
        _ => Err(unsupported(format!(
            "pre-tokenizer {}: optc knows ByteLevel and Sequence[Digits, ByteLevel]",
            type_name(p)
        ))),
    }
}

/// The BOS a post-processor adds: `None` for none (null, ByteLevel), the id for a template that
/// is `BOS $A`; anything else is unsupported.
fn parse_post(p: &serde_json::Value) -> Result<Option<u32>, TokenizerError> {
    match p.get("type").and_then(|t| t.as_str()) {
        _ if p.is_null() => Ok(None),
        Some("ByteLevel") => Ok(None),
        Some("Sequence") => {
            let mut bos = None;
            for q in p.get("processors").and_then(|l| l.as_array()).map(Vec::as_slice).unwrap_or_default() {
                if let Some(b) = parse_post(q)? {
                    bos = Some(b);
                }
            }
            Ok(bos)
        }
        Some("TemplateProcessing") => {
            let single = p.get("single").and_then(|s| s.as_array()).map(Vec::as_slice).unwrap_or_default();
            let is_a = |v: &serde_json::Value| v.pointer("/Sequence/id").and_then(|x| x.as_str()) == Some("A");
            match single {
                [a] if is_a(a) => Ok(None),
                [s, a] if is_a(a) => {
                    let name = s.pointer("/SpecialToken/id").and_then(|x| x.as_str()).unwrap_or_default();
                    let ids = p.pointer(&format!("/special_tokens/{}/ids", name.replace('~', "~0").replace('/', "~1")));
                    match ids.and_then(|x| x.as_array()).map(Vec::as_slice) {
                        Some([id]) => Ok(id.as_u64().map(|i| i as u32)),
                        _ => Err(invalid(format!("TemplateProcessing: no single id for special token {name:?}"))),
                    }
                }
                _ => Err(unsupported(
                    "a TemplateProcessing post-processor other than `$A` or `BOS $A` (e.g. one that appends EOS)"
                        .into(),
                )),
            }
        }
        _ => Err(unsupported(format!("post-processor {}", type_name(p)))),
    }
}

impl Tokenizer {
    /// A Hugging Face tokenizer.json: model BPE, pre-tokenizer, ByteLevel decoder, the special
    /// tokens (control and user-defined) as `added_tokens`, and a post-processor that adds BOS
    /// only when `add_bos` (none otherwise). `tokenizers.Tokenizer.from_file` loads it and
    /// encodes as [`Tokenizer::encode_with_bos`] does. The EOS id has no place in the format
    /// and is not written.
    pub fn to_hf_json(&self) -> String {
        let mut o = String::with_capacity(self.tokens.len() * 40);
        o.push_str("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [");
        let mut specials: Vec<&Special> = self.specials.iter().collect();
        specials.sort_by_key(|s| s.id);
        for (i, s) in specials.iter().enumerate() {
            o.push_str(if i == 0 { "\n    " } else { ",\n    " });
            o.push_str(&format!(
                "{{\"id\": {}, \"content\": {}, \"single_word\": false, \"lstrip\": {}, \"rstrip\": {}, \
                 \"normalized\": false, \"special\": {}}}",
                s.id,
                json_str(&s.content),
                s.lstrip,
                s.rstrip,
                s.special
            ));
        }
        o.push_str(if specials.is_empty() { "],\n" } else { "\n  ],\n" });
        o.push_str("  \"normalizer\": null,\n");
        o.push_str(&format!("  \"pre_tokenizer\": {},\n", self.pre.hf_json()));
        match self.bos {
            Some(bos) if self.add_bos => {
                let name = json_str(&self.tokens[bos as usize]);
                o.push_str(&format!(
                    "  \"post_processor\": {{\"type\": \"TemplateProcessing\", \
                     \"single\": [{{\"SpecialToken\": {{\"id\": {name}, \"type_id\": 0}}}}, \
                     {{\"Sequence\": {{\"id\": \"A\", \"type_id\": 0}}}}], \
                     \"pair\": [{{\"SpecialToken\": {{\"id\": {name}, \"type_id\": 0}}}}, \
                     {{\"Sequence\": {{\"id\": \"A\", \"type_id\": 0}}}}, \
                     {{\"SpecialToken\": {{\"id\": {name}, \"type_id\": 1}}}}, \
                     {{\"Sequence\": {{\"id\": \"B\", \"type_id\": 1}}}}], \
                     \"special_tokens\": {{{name}: {{\"id\": {name}, \"ids\": [{bos}], \"tokens\": [{name}]}}}}}},\n"
                ));
            }
            _ => o.push_str("  \"post_processor\": null,\n"),
        }
        o.push_str(&format!("  \"decoder\": {BYTE_LEVEL_JSON},\n"));
        let unk = self.unk.map_or("null".to_string(), |u| json_str(&self.tokens[u as usize]));
        o.push_str(&format!(
            "  \"model\": {{\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": {unk},\n    \
             \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n    \"fuse_unk\": false,\n    \
             \"byte_fallback\": false,\n    \"ignore_merges\": {},\n    \"vocab\": {{",
            self.ignore_merges
        ));
        let mut first = true;
        for (i, t) in self.tokens.iter().enumerate() {
            // Only the first id of a repeated text: a JSON object has each key once.
            if t.is_empty() || self.vocab.get(t) != Some(&(i as u32)) {
                continue;
            }
            o.push_str(if first { "\n      " } else { ",\n      " });
            first = false;
            o.push_str(&json_str(t));
            o.push_str(": ");
            o.push_str(&i.to_string());
        }
        o.push_str("\n    },\n    \"merges\": [");
        let mut merges: Vec<(u32, u64)> = self.merges.iter().map(|(&k, &(rank, _))| (rank, k)).collect();
        merges.sort_unstable();
        let part = |k: u64, hi: bool| self.tokens[(if hi { k >> 32 } else { k & 0xffff_ffff }) as usize].as_str();
        // "a b" strings (read by every `tokenizers` version) unless a part has a space.
        let as_pairs = merges.iter().any(|&(_, k)| part(k, true).contains(' ') || part(k, false).contains(' '));
        for (i, &(_, k)) in merges.iter().enumerate() {
            o.push_str(if i == 0 { "\n      " } else { ",\n      " });
            if as_pairs {
                o.push_str(&format!("[{}, {}]", json_str(part(k, true)), json_str(part(k, false))));
            } else {
                o.push_str(&json_str(&format!("{} {}", part(k, true), part(k, false))));
            }
        }
        o.push_str("\n    ]\n  }\n}\n");
        o
    }

    /// Read a Hugging Face tokenizer.json: what [`Tokenizer::to_hf_json`] writes, and real BPE
    /// tokenizers with a ByteLevel pre-tokenizer (alone or after `Digits(individual_digits)`),
    /// no normalizer, and a ByteLevel (or no) decoder; merges as "a b" strings or [a, b] pairs.
    /// Other models, normalizers, pre-tokenizers and post-processors are an error naming them.
    /// BOS comes from a `BOS $A` template post-processor when there is one; EOS is unknown.
    pub fn from_hf_json(json: &str) -> Result<Tokenizer, TokenizerError> {
        let v: serde_json::Value = serde_json::from_str(json)?;
        let model = v.get("model").ok_or_else(|| invalid("no \"model\" in tokenizer.json".into()))?;
        let model_type = model.get("type").and_then(|t| t.as_str()).unwrap_or("BPE");
        if model_type != "BPE" || model.get("merges").is_none() {
            return Err(unsupported(format!("model type {model_type:?}: optc reads byte-level BPE tokenizers only")));
        }
        if model.get("dropout").is_some_and(|d| !d.is_null()) {
            return Err(unsupported("BPE dropout".into()));
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if model.get(key).and_then(|x| x.as_str()).is_some_and(|s| !s.is_empty()) {
                return Err(unsupported(format!("BPE {key}")));
            }
        }
        if flag(model, "byte_fallback", false) {
            return Err(unsupported("BPE with byte_fallback (SentencePiece-style <0xNN> tokens)".into()));
        }
        match v.get("normalizer") {
            None | Some(serde_json::Value::Null) => {}
            Some(n)
                if n.get("type").and_then(|t| t.as_str()) == Some("Sequence")
                    && n.get("normalizers").and_then(|l| l.as_array()).is_some_and(|l| l.is_empty()) => {}
            Some(n) => return Err(unsupported(format!("normalizer {}", type_name(n)))),
        }
        let pre = parse_pre(v.get("pre_tokenizer").unwrap_or(&serde_json::Value::Null))?;
        match v.get("decoder") {
            None | Some(serde_json::Value::Null) => {}
            Some(d) if d.get("type").and_then(|t| t.as_str()) == Some("ByteLevel") => {}
            Some(d) => return Err(unsupported(format!("decoder {}", type_name(d)))),
        }
        let bos = parse_post(v.get("post_processor").unwrap_or(&serde_json::Value::Null))?;

        let vocab = model.get("vocab").and_then(|x| x.as_object()).ok_or_else(|| invalid("no BPE vocab".into()))?;
        let mut entries: Vec<(u32, String, i32)> = Vec::with_capacity(vocab.len());
        for (t, id) in vocab {
            let id = id.as_u64().filter(|&i| i < u32::MAX as u64 - 1);
            let id = id.ok_or_else(|| invalid(format!("vocab entry {t:?} has no valid id")))?;
            entries.push((id as u32, t.clone(), token_type::NORMAL));
        }
        let mut specials = Vec::new();
        for a in v.get("added_tokens").and_then(|x| x.as_array()).map(Vec::as_slice).unwrap_or_default() {
            let content = a.get("content").and_then(|x| x.as_str()).unwrap_or_default();
            let id = a.get("id").and_then(|x| x.as_u64()).filter(|&i| i < u32::MAX as u64 - 1);
            let id = id.ok_or_else(|| invalid(format!("added token {content:?} has no valid id")))? as u32;
            let special = flag(a, "special", false);
            let ty = if special { token_type::CONTROL } else { token_type::USER_DEFINED };
            entries.push((id, content.to_string(), ty));
            if !content.is_empty() {
                let (lstrip, rstrip) = (flag(a, "lstrip", false), flag(a, "rstrip", false));
                specials.push(Special { content: content.to_string(), id, special, lstrip, rstrip });
            }
        }
        let n = entries.iter().map(|e| e.0 as usize + 1).max().unwrap_or(0);
        let mut tokens = vec![String::new(); n];
        let mut types = vec![token_type::UNUSED; n];
        for (id, t, ty) in entries {
            let i = id as usize;
            if !tokens[i].is_empty() && tokens[i] != t {
                return Err(invalid(format!("id {id} is both {:?} and {t:?}", tokens[i])));
            }
            tokens[i] = t;
            // An added token that is also in the BPE vocab keeps its added (special) type.
            if types[i] == token_type::UNUSED || ty != token_type::NORMAL {
                types[i] = ty;
            }
        }
        let mut merges = Vec::new();
        for (i, m) in
            model.get("merges").and_then(|x| x.as_array()).map(Vec::as_slice).unwrap_or_default().iter().enumerate()
        {
            let pair = match m {
                serde_json::Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
                serde_json::Value::Array(p) => match p.as_slice() {
                    [serde_json::Value::String(a), serde_json::Value::String(b)] => Some((a.clone(), b.clone())),
                    _ => None,
                },
                _ => None,
            };
            merges.push(pair.ok_or_else(|| invalid(format!("merge {i} ({m}) is not a pair of tokens")))?);
        }
        let unk = match model.get("unk_token").and_then(|x| x.as_str()) {
            Some(u) => Some(
                vocab
                    .get(u)
                    .and_then(|x| x.as_u64())
                    .ok_or_else(|| invalid(format!("unk_token {u:?} is not in the vocab")))? as u32,
            ),
            None => None,
        };
        let ignore_merges = flag(model, "ignore_merges", false);
        Tokenizer::build(tokens, types, &merges, specials, pre, unk, ignore_merges, bos, None, bos.is_some())
    }
}

// Unicode tables (generated from tokenizers 0.23.3 by splitting every code point with Split(Regex("\\p{L}")) and
// Split(Regex("\\p{N}")); Oniguruma's Unicode data, one version behind Rust 1.95's).

/// `\p{L}` as Oniguruma in `tokenizers` 0.23 sees it: inclusive (first, last) code point pairs, sorted.
const LETTER_RANGES: &[u32] = &[
    0x41, 0x5A, 0x61, 0x7A, 0xAA, 0xAA, 0xB5, 0xB5, 0xBA, 0xBA, 0xC0, 0xD6, 0xD8, 0xF6, 0xF8, 0x2C1, 0x2C6, 0x2D1,
    0x2E0, 0x2E4, 0x2EC, 0x2EC, 0x2EE, 0x2EE, 0x370, 0x374, 0x376, 0x377, 0x37A, 0x37D, 0x37F, 0x37F, 0x386, 0x386,
    0x388, 0x38A, 0x38C, 0x38C, 0x38E, 0x3A1, 0x3A3, 0x3F5, 0x3F7, 0x481, 0x48A, 0x52F, 0x531, 0x556, 0x559, 0x559,
    0x560, 0x588, 0x5D0, 0x5EA, 0x5EF, 0x5F2, 0x620, 0x64A, 0x66E, 0x66F, 0x671, 0x6D3, 0x6D5, 0x6D5, 0x6E5, 0x6E6,
    0x6EE, 0x6EF, 0x6FA, 0x6FC, 0x6FF, 0x6FF, 0x710, 0x710, 0x712, 0x72F, 0x74D, 0x7A5, 0x7B1, 0x7B1, 0x7CA, 0x7EA,
    0x7F4, 0x7F5, 0x7FA, 0x7FA, 0x800, 0x815, 0x81A, 0x81A, 0x824, 0x824, 0x828, 0x828, 0x840, 0x858, 0x860, 0x86A,
    0x870, 0x887, 0x889, 0x88E, 0x8A0, 0x8C9, 0x904, 0x939, 0x93D, 0x93D, 0x950, 0x950, 0x958, 0x961, 0x971, 0x980,
    0x985, 0x98C, 0x98F, 0x990, 0x993, 0x9A8, 0x9AA, 0x9B0, 0x9B2, 0x9B2, 0x9B6, 0x9B9, 0x9BD, 0x9BD, 0x9CE, 0x9CE,
    0x9DC, 0x9DD, 0x9DF, 0x9E1, 0x9F0, 0x9F1, 0x9FC, 0x9FC, 0xA05, 0xA0A, 0xA0F, 0xA10, 0xA13, 0xA28, 0xA2A, 0xA30,
    0xA32, 0xA33, 0xA35, 0xA36, 0xA38, 0xA39, 0xA59, 0xA5C, 0xA5E, 0xA5E, 0xA72, 0xA74, 0xA85, 0xA8D, 0xA8F, 0xA91,
    0xA93, 0xAA8, 0xAAA, 0xAB0, 0xAB2, 0xAB3, 0xAB5, 0xAB9, 0xABD, 0xABD, 0xAD0, 0xAD0, 0xAE0, 0xAE1, 0xAF9, 0xAF9,
    0xB05, 0xB0C, 0xB0F, 0xB10, 0xB13, 0xB28, 0xB2A, 0xB30, 0xB32, 0xB33, 0xB35, 0xB39, 0xB3D, 0xB3D, 0xB5C, 0xB5D,
    0xB5F, 0xB61, 0xB71, 0xB71, 0xB83, 0xB83, 0xB85, 0xB8A, 0xB8E, 0xB90, 0xB92, 0xB95, 0xB99, 0xB9A, 0xB9C, 0xB9C,
    0xB9E, 0xB9F, 0xBA3, 0xBA4, 0xBA8, 0xBAA, 0xBAE, 0xBB9, 0xBD0, 0xBD0, 0xC05, 0xC0C, 0xC0E, 0xC10, 0xC12, 0xC28,
    0xC2A, 0xC39, 0xC3D, 0xC3D, 0xC58, 0xC5A, 0xC5D, 0xC5D, 0xC60, 0xC61, 0xC80, 0xC80, 0xC85, 0xC8C, 0xC8E, 0xC90,
    0xC92, 0xCA8, 0xCAA, 0xCB3, 0xCB5, 0xCB9, 0xCBD, 0xCBD, 0xCDD, 0xCDE, 0xCE0, 0xCE1, 0xCF1, 0xCF2, 0xD04, 0xD0C,
    0xD0E, 0xD10, 0xD12, 0xD3A, 0xD3D, 0xD3D, 0xD4E, 0xD4E, 0xD54, 0xD56, 0xD5F, 0xD61, 0xD7A, 0xD7F, 0xD85, 0xD96,
    0xD9A, 0xDB1, 0xDB3, 0xDBB, 0xDBD, 0xDBD, 0xDC0, 0xDC6, 0xE01, 0xE30, 0xE32, 0xE33, 0xE40, 0xE46, 0xE81, 0xE82,
    0xE84, 0xE84, 0xE86, 0xE8A, 0xE8C, 0xEA3, 0xEA5, 0xEA5, 0xEA7, 0xEB0, 0xEB2, 0xEB3, 0xEBD, 0xEBD, 0xEC0, 0xEC4,
    0xEC6, 0xEC6, 0xEDC, 0xEDF, 0xF00, 0xF00, 0xF40, 0xF47, 0xF49, 0xF6C, 0xF88, 0xF8C, 0x1000, 0x102A, 0x103F, 0x103F,
    0x1050, 0x1055, 0x105A, 0x105D, 0x1061, 0x1061, 0x1065, 0x1066, 0x106E, 0x1070, 0x1075, 0x1081, 0x108E, 0x108E,
    0x10A0, 0x10C5, 0x10C7, 0x10C7, 0x10CD, 0x10CD, 0x10D0, 0x10FA, 0x10FC, 0x1248, 0x124A, 0x124D, 0x1250, 0x1256,
    0x1258, 0x1258, 0x125A, 0x125D, 0x1260, 0x1288, 0x128A, 0x128D, 0x1290, 0x12B0, 0x12B2, 0x12B5, 0x12B8, 0x12BE,
    0x12C0, 0x12C0, 0x12C2, 0x12C5, 0x12C8, 0x12D6, 0x12D8, 0x1310, 0x1312, 0x1315, 0x1318, 0x135A, 0x1380, 0x138F,
    0x13A0, 0x13F5, 0x13F8, 0x13FD, 0x1401, 0x166C, 0x166F, 0x167F, 0x1681, 0x169A, 0x16A0, 0x16EA, 0x16F1, 0x16F8,
    0x1700, 0x1711, 0x171F, 0x1731, 0x1740, 0x1751, 0x1760, 0x176C, 0x176E, 0x1770, 0x1780, 0x17B3, 0x17D7, 0x17D7,
    0x17DC, 0x17DC, 0x1820, 0x1878, 0x1880, 0x1884, 0x1887, 0x18A8, 0x18AA, 0x18AA, 0x18B0, 0x18F5, 0x1900, 0x191E,
    0x1950, 0x196D, 0x1970, 0x1974, 0x1980, 0x19AB, 0x19B0, 0x19C9, 0x1A00, 0x1A16, 0x1A20, 0x1A54, 0x1AA7, 0x1AA7,
    0x1B05, 0x1B33, 0x1B45, 0x1B4C, 0x1B83, 0x1BA0, 0x1BAE, 0x1BAF, 0x1BBA, 0x1BE5, 0x1C00, 0x1C23, 0x1C4D, 0x1C4F,
    0x1C5A, 0x1C7D, 0x1C80, 0x1C8A, 0x1C90, 0x1CBA, 0x1CBD, 0x1CBF, 0x1CE9, 0x1CEC, 0x1CEE, 0x1CF3, 0x1CF5, 0x1CF6,
    0x1CFA, 0x1CFA, 0x1D00, 0x1DBF, 0x1E00, 0x1F15, 0x1F18, 0x1F1D, 0x1F20, 0x1F45, 0x1F48, 0x1F4D, 0x1F50, 0x1F57,
    0x1F59, 0x1F59, 0x1F5B, 0x1F5B, 0x1F5D, 0x1F5D, 0x1F5F, 0x1F7D, 0x1F80, 0x1FB4, 0x1FB6, 0x1FBC, 0x1FBE, 0x1FBE,
    0x1FC2, 0x1FC4, 0x1FC6, 0x1FCC, 0x1FD0, 0x1FD3, 0x1FD6, 0x1FDB, 0x1FE0, 0x1FEC, 0x1FF2, 0x1FF4, 0x1FF6, 0x1FFC,
    0x2071, 0x2071, 0x207F, 0x207F, 0x2090, 0x209C, 0x2102, 0x2102, 0x2107, 0x2107, 0x210A, 0x2113, 0x2115, 0x2115,
    0x2119, 0x211D, 0x2124, 0x2124, 0x2126, 0x2126, 0x2128, 0x2128, 0x212A, 0x212D, 0x212F, 0x2139, 0x213C, 0x213F,
    0x2145, 0x2149, 0x214E, 0x214E, 0x2183, 0x2184, 0x2C00, 0x2CE4, 0x2CEB, 0x2CEE, 0x2CF2, 0x2CF3, 0x2D00, 0x2D25,
    0x2D27, 0x2D27, 0x2D2D, 0x2D2D, 0x2D30, 0x2D67, 0x2D6F, 0x2D6F, 0x2D80, 0x2D96, 0x2DA0, 0x2DA6, 0x2DA8, 0x2DAE,
    0x2DB0, 0x2DB6, 0x2DB8, 0x2DBE, 0x2DC0, 0x2DC6, 0x2DC8, 0x2DCE, 0x2DD0, 0x2DD6, 0x2DD8, 0x2DDE, 0x2E2F, 0x2E2F,
    0x3005, 0x3006, 0x3031, 0x3035, 0x303B, 0x303C, 0x3041, 0x3096, 0x309D, 0x309F, 0x30A1, 0x30FA, 0x30FC, 0x30FF,
    0x3105, 0x312F, 0x3131, 0x318E, 0x31A0, 0x31BF, 0x31F0, 0x31FF, 0x3400, 0x4DBF, 0x4E00, 0xA48C, 0xA4D0, 0xA4FD,
    0xA500, 0xA60C, 0xA610, 0xA61F, 0xA62A, 0xA62B, 0xA640, 0xA66E, 0xA67F, 0xA69D, 0xA6A0, 0xA6E5, 0xA717, 0xA71F,
    0xA722, 0xA788, 0xA78B, 0xA7CD, 0xA7D0, 0xA7D1, 0xA7D3, 0xA7D3, 0xA7D5, 0xA7DC, 0xA7F2, 0xA801, 0xA803, 0xA805,
    0xA807, 0xA80A, 0xA80C, 0xA822, 0xA840, 0xA873, 0xA882, 0xA8B3, 0xA8F2, 0xA8F7, 0xA8FB, 0xA8FB, 0xA8FD, 0xA8FE,
    0xA90A, 0xA925, 0xA930, 0xA946, 0xA960, 0xA97C, 0xA984, 0xA9B2, 0xA9CF, 0xA9CF, 0xA9E0, 0xA9E4, 0xA9E6, 0xA9EF,
    0xA9FA, 0xA9FE, 0xAA00, 0xAA28, 0xAA40, 0xAA42, 0xAA44, 0xAA4B, 0xAA60, 0xAA76, 0xAA7A, 0xAA7A, 0xAA7E, 0xAAAF,
    0xAAB1, 0xAAB1, 0xAAB5, 0xAAB6, 0xAAB9, 0xAABD, 0xAAC0, 0xAAC0, 0xAAC2, 0xAAC2, 0xAADB, 0xAADD, 0xAAE0, 0xAAEA,
    0xAAF2, 0xAAF4, 0xAB01, 0xAB06, 0xAB09, 0xAB0E, 0xAB11, 0xAB16, 0xAB20, 0xAB26, 0xAB28, 0xAB2E, 0xAB30, 0xAB5A,
    0xAB5C, 0xAB69, 0xAB70, 0xABE2, 0xAC00, 0xD7A3, 0xD7B0, 0xD7C6, 0xD7CB, 0xD7FB, 0xF900, 0xFA6D, 0xFA70, 0xFAD9,
    0xFB00, 0xFB06, 0xFB13, 0xFB17, 0xFB1D, 0xFB1D, 0xFB1F, 0xFB28, 0xFB2A, 0xFB36, 0xFB38, 0xFB3C, 0xFB3E, 0xFB3E,
    0xFB40, 0xFB41, 0xFB43, 0xFB44, 0xFB46, 0xFBB1, 0xFBD3, 0xFD3D, 0xFD50, 0xFD8F, 0xFD92, 0xFDC7, 0xFDF0, 0xFDFB,
    0xFE70, 0xFE74, 0xFE76, 0xFEFC, 0xFF21, 0xFF3A, 0xFF41, 0xFF5A, 0xFF66, 0xFFBE, 0xFFC2, 0xFFC7, 0xFFCA, 0xFFCF,
    0xFFD2, 0xFFD7, 0xFFDA, 0xFFDC, 0x10000, 0x1000B, 0x1000D, 0x10026, 0x10028, 0x1003A, 0x1003C, 0x1003D, 0x1003F,
    0x1004D, 0x10050, 0x1005D, 0x10080, 0x100FA, 0x10280, 0x1029C, 0x102A0, 0x102D0, 0x10300, 0x1031F, 0x1032D,
    0x10340, 0x10342, 0x10349, 0x10350, 0x10375, 0x10380, 0x1039D, 0x103A0, 0x103C3, 0x103C8, 0x103CF, 0x10400,
    0x1049D, 0x104B0, 0x104D3, 0x104D8, 0x104FB, 0x10500, 0x10527, 0x10530, 0x10563, 0x10570, 0x1057A, 0x1057C,
    0x1058A, 0x1058C, 0x10592, 0x10594, 0x10595, 0x10597, 0x105A1, 0x105A3, 0x105B1, 0x105B3, 0x105B9, 0x105BB,
    0x105BC, 0x105C0, 0x105F3, 0x10600, 0x10736, 0x10740, 0x10755, 0x10760, 0x10767, 0x10780, 0x10785, 0x10787,
    0x107B0, 0x107B2, 0x107BA, 0x10800, 0x10805, 0x10808, 0x10808, 0x1080A, 0x10835, 0x10837, 0x10838, 0x1083C,
    0x1083C, 0x1083F, 0x10855, 0x10860, 0x10876, 0x10880, 0x1089E, 0x108E0, 0x108F2, 0x108F4, 0x108F5, 0x10900,
    0x10915, 0x10920, 0x10939, 0x10980, 0x109B7, 0x109BE, 0x109BF, 0x10A00, 0x10A00, 0x10A10, 0x10A13, 0x10A15,
    0x10A17, 0x10A19, 0x10A35, 0x10A60, 0x10A7C, 0x10A80, 0x10A9C, 0x10AC0, 0x10AC7, 0x10AC9, 0x10AE4, 0x10B00,
    0x10B35, 0x10B40, 0x10B55, 0x10B60, 0x10B72, 0x10B80, 0x10B91, 0x10C00, 0x10C48, 0x10C80, 0x10CB2, 0x10CC0,
    0x10CF2, 0x10D00, 0x10D23, 0x10D4A, 0x10D65, 0x10D6F, 0x10D85, 0x10E80, 0x10EA9, 0x10EB0, 0x10EB1, 0x10EC2,
    0x10EC4, 0x10F00, 0x10F1C, 0x10F27, 0x10F27, 0x10F30, 0x10F45, 0x10F70, 0x10F81, 0x10FB0, 0x10FC4, 0x10FE0,
    0x10FF6, 0x11003, 0x11037, 0x11071, 0x11072, 0x11075, 0x11075, 0x11083, 0x110AF, 0x110D0, 0x110E8, 0x11103,
    0x11126, 0x11144, 0x11144, 0x11147, 0x11147, 0x11150, 0x11172, 0x11176, 0x11176, 0x11183, 0x111B2, 0x111C1,
    0x111C4, 0x111DA, 0x111DA, 0x111DC, 0x111DC, 0x11200, 0x11211, 0x11213, 0x1122B, 0x1123F, 0x11240, 0x11280,
    0x11286, 0x11288, 0x11288, 0x1128A, 0x1128D, 0x1128F, 0x1129D, 0x1129F, 0x112A8, 0x112B0, 0x112DE, 0x11305,
    0x1130C, 0x1130F, 0x11310, 0x11313, 0x11328, 0x1132A, 0x11330, 0x11332, 0x11333, 0x11335, 0x11339, 0x1133D,
    0x1133D, 0x11350, 0x11350, 0x1135D, 0x11361, 0x11380, 0x11389, 0x1138B, 0x1138B, 0x1138E, 0x1138E, 0x11390,
    0x113B5, 0x113B7, 0x113B7, 0x113D1, 0x113D1, 0x113D3, 0x113D3, 0x11400, 0x11434, 0x11447, 0x1144A, 0x1145F,
    0x11461, 0x11480, 0x114AF, 0x114C4, 0x114C5, 0x114C7, 0x114C7, 0x11580, 0x115AE, 0x115D8, 0x115DB, 0x11600,
    0x1162F, 0x11644, 0x11644, 0x11680, 0x116AA, 0x116B8, 0x116B8, 0x11700, 0x1171A, 0x11740, 0x11746, 0x11800,
    0x1182B, 0x118A0, 0x118DF, 0x118FF, 0x11906, 0x11909, 0x11909, 0x1190C, 0x11913, 0x11915, 0x11916, 0x11918,
    0x1192F, 0x1193F, 0x1193F, 0x11941, 0x11941, 0x119A0, 0x119A7, 0x119AA, 0x119D0, 0x119E1, 0x119E1, 0x119E3,
    0x119E3, 0x11A00, 0x11A00, 0x11A0B, 0x11A32, 0x11A3A, 0x11A3A, 0x11A50, 0x11A50, 0x11A5C, 0x11A89, 0x11A9D,
    0x11A9D, 0x11AB0, 0x11AF8, 0x11BC0, 0x11BE0, 0x11C00, 0x11C08, 0x11C0A, 0x11C2E, 0x11C40, 0x11C40, 0x11C72,
    0x11C8F, 0x11D00, 0x11D06, 0x11D08, 0x11D09, 0x11D0B, 0x11D30, 0x11D46, 0x11D46, 0x11D60, 0x11D65, 0x11D67,
    0x11D68, 0x11D6A, 0x11D89, 0x11D98, 0x11D98, 0x11EE0, 0x11EF2, 0x11F02, 0x11F02, 0x11F04, 0x11F10, 0x11F12,
    0x11F33, 0x11FB0, 0x11FB0, 0x12000, 0x12399, 0x12480, 0x12543, 0x12F90, 0x12FF0, 0x13000, 0x1342F, 0x13441,
    0x13446, 0x13460, 0x143FA, 0x14400, 0x14646, 0x16100, 0x1611D, 0x16800, 0x16A38, 0x16A40, 0x16A5E, 0x16A70,
    0x16ABE, 0x16AD0, 0x16AED, 0x16B00, 0x16B2F, 0x16B40, 0x16B43, 0x16B63, 0x16B77, 0x16B7D, 0x16B8F, 0x16D40,
    0x16D6C, 0x16E40, 0x16E7F, 0x16F00, 0x16F4A, 0x16F50, 0x16F50, 0x16F93, 0x16F9F, 0x16FE0, 0x16FE1, 0x16FE3,
    0x16FE3, 0x17000, 0x187F7, 0x18800, 0x18CD5, 0x18CFF, 0x18D08, 0x1AFF0, 0x1AFF3, 0x1AFF5, 0x1AFFB, 0x1AFFD,
    0x1AFFE, 0x1B000, 0x1B122, 0x1B132, 0x1B132, 0x1B150, 0x1B152, 0x1B155, 0x1B155, 0x1B164, 0x1B167, 0x1B170,
    0x1B2FB, 0x1BC00, 0x1BC6A, 0x1BC70, 0x1BC7C, 0x1BC80, 0x1BC88, 0x1BC90, 0x1BC99, 0x1D400, 0x1D454, 0x1D456,
    0x1D49C, 0x1D49E, 0x1D49F, 0x1D4A2, 0x1D4A2, 0x1D4A5, 0x1D4A6, 0x1D4A9, 0x1D4AC, 0x1D4AE, 0x1D4B9, 0x1D4BB,
    0x1D4BB, 0x1D4BD, 0x1D4C3, 0x1D4C5, 0x1D505, 0x1D507, 0x1D50A, 0x1D50D, 0x1D514, 0x1D516, 0x1D51C, 0x1D51E,
    0x1D539, 0x1D53B, 0x1D53E, 0x1D540, 0x1D544, 0x1D546, 0x1D546, 0x1D54A, 0x1D550, 0x1D552, 0x1D6A5, 0x1D6A8,
    0x1D6C0, 0x1D6C2, 0x1D6DA, 0x1D6DC, 0x1D6FA, 0x1D6FC, 0x1D714, 0x1D716, 0x1D734, 0x1D736, 0x1D74E, 0x1D750,
    0x1D76E, 0x1D770, 0x1D788, 0x1D78A, 0x1D7A8, 0x1D7AA, 0x1D7C2, 0x1D7C4, 0x1D7CB, 0x1DF00, 0x1DF1E, 0x1DF25,
    0x1DF2A, 0x1E030, 0x1E06D, 0x1E100, 0x1E12C, 0x1E137, 0x1E13D, 0x1E14E, 0x1E14E, 0x1E290, 0x1E2AD, 0x1E2C0,
    0x1E2EB, 0x1E4D0, 0x1E4EB, 0x1E5D0, 0x1E5ED, 0x1E5F0, 0x1E5F0, 0x1E7E0, 0x1E7E6, 0x1E7E8, 0x1E7EB, 0x1E7ED,
    0x1E7EE, 0x1E7F0, 0x1E7FE, 0x1E800, 0x1E8C4, 0x1E900, 0x1E943, 0x1E94B, 0x1E94B, 0x1EE00, 0x1EE03, 0x1EE05,
    0x1EE1F, 0x1EE21, 0x1EE22, 0x1EE24, 0x1EE24, 0x1EE27, 0x1EE27, 0x1EE29, 0x1EE32, 0x1EE34, 0x1EE37, 0x1EE39,
    0x1EE39, 0x1EE3B, 0x1EE3B, 0x1EE42, 0x1EE42, 0x1EE47, 0x1EE47, 0x1EE49, 0x1EE49, 0x1EE4B, 0x1EE4B, 0x1EE4D,
    0x1EE4F, 0x1EE51, 0x1EE52, 0x1EE54, 0x1EE54, 0x1EE57, 0x1EE57, 0x1EE59, 0x1EE59, 0x1EE5B, 0x1EE5B, 0x1EE5D,
    0x1EE5D, 0x1EE5F, 0x1EE5F, 0x1EE61, 0x1EE62, 0x1EE64, 0x1EE64, 0x1EE67, 0x1EE6A, 0x1EE6C, 0x1EE72, 0x1EE74,
    0x1EE77, 0x1EE79, 0x1EE7C, 0x1EE7E, 0x1EE7E, 0x1EE80, 0x1EE89, 0x1EE8B, 0x1EE9B, 0x1EEA1, 0x1EEA3, 0x1EEA5,
    0x1EEA9, 0x1EEAB, 0x1EEBB, 0x20000, 0x2A6DF, 0x2A700, 0x2B739, 0x2B740, 0x2B81D, 0x2B820, 0x2CEA1, 0x2CEB0,
    0x2EBE0, 0x2EBF0, 0x2EE5D, 0x2F800, 0x2FA1D, 0x30000, 0x3134A, 0x31350, 0x323AF,
];

/// `\p{N}` as Oniguruma in `tokenizers` 0.23 sees it: inclusive (first, last) code point pairs, sorted.
const NUMBER_RANGES: &[u32] = &[
    0x30, 0x39, 0xB2, 0xB3, 0xB9, 0xB9, 0xBC, 0xBE, 0x660, 0x669, 0x6F0, 0x6F9, 0x7C0, 0x7C9, 0x966, 0x96F, 0x9E6,
    0x9EF, 0x9F4, 0x9F9, 0xA66, 0xA6F, 0xAE6, 0xAEF, 0xB66, 0xB6F, 0xB72, 0xB77, 0xBE6, 0xBF2, 0xC66, 0xC6F, 0xC78,
    0xC7E, 0xCE6, 0xCEF, 0xD58, 0xD5E, 0xD66, 0xD78, 0xDE6, 0xDEF, 0xE50, 0xE59, 0xED0, 0xED9, 0xF20, 0xF33, 0x1040,
    0x1049, 0x1090, 0x1099, 0x1369, 0x137C, 0x16EE, 0x16F0, 0x17E0, 0x17E9, 0x17F0, 0x17F9, 0x1810, 0x1819, 0x1946,
    0x194F, 0x19D0, 0x19DA, 0x1A80, 0x1A89, 0x1A90, 0x1A99, 0x1B50, 0x1B59, 0x1BB0, 0x1BB9, 0x1C40, 0x1C49, 0x1C50,
    0x1C59, 0x2070, 0x2070, 0x2074, 0x2079, 0x2080, 0x2089, 0x2150, 0x2182, 0x2185, 0x2189, 0x2460, 0x249B, 0x24EA,
    0x24FF, 0x2776, 0x2793, 0x2CFD, 0x2CFD, 0x3007, 0x3007, 0x3021, 0x3029, 0x3038, 0x303A, 0x3192, 0x3195, 0x3220,
    0x3229, 0x3248, 0x324F, 0x3251, 0x325F, 0x3280, 0x3289, 0x32B1, 0x32BF, 0xA620, 0xA629, 0xA6E6, 0xA6EF, 0xA830,
    0xA835, 0xA8D0, 0xA8D9, 0xA900, 0xA909, 0xA9D0, 0xA9D9, 0xA9F0, 0xA9F9, 0xAA50, 0xAA59, 0xABF0, 0xABF9, 0xFF10,
    0xFF19, 0x10107, 0x10133, 0x10140, 0x10178, 0x1018A, 0x1018B, 0x102E1, 0x102FB, 0x10320, 0x10323, 0x10341, 0x10341,
    0x1034A, 0x1034A, 0x103D1, 0x103D5, 0x104A0, 0x104A9, 0x10858, 0x1085F, 0x10879, 0x1087F, 0x108A7, 0x108AF,
    0x108FB, 0x108FF, 0x10916, 0x1091B, 0x109BC, 0x109BD, 0x109C0, 0x109CF, 0x109D2, 0x109FF, 0x10A40, 0x10A48,
    0x10A7D, 0x10A7E, 0x10A9D, 0x10A9F, 0x10AEB, 0x10AEF, 0x10B58, 0x10B5F, 0x10B78, 0x10B7F, 0x10BA9, 0x10BAF,
    0x10CFA, 0x10CFF, 0x10D30, 0x10D39, 0x10D40, 0x10D49, 0x10E60, 0x10E7E, 0x10F1D, 0x10F26, 0x10F51, 0x10F54,
    0x10FC5, 0x10FCB, 0x11052, 0x1106F, 0x110F0, 0x110F9, 0x11136, 0x1113F, 0x111D0, 0x111D9, 0x111E1, 0x111F4,
    0x112F0, 0x112F9, 0x11450, 0x11459, 0x114D0, 0x114D9, 0x11650, 0x11659, 0x116C0, 0x116C9, 0x116D0, 0x116E3,
    0x11730, 0x1173B, 0x118E0, 0x118F2, 0x11950, 0x11959, 0x11BF0, 0x11BF9, 0x11C50, 0x11C6C, 0x11D50, 0x11D59,
    0x11DA0, 0x11DA9, 0x11F50, 0x11F59, 0x11FC0, 0x11FD4, 0x12400, 0x1246E, 0x16130, 0x16139, 0x16A60, 0x16A69,
    0x16AC0, 0x16AC9, 0x16B50, 0x16B59, 0x16B5B, 0x16B61, 0x16D70, 0x16D79, 0x16E80, 0x16E96, 0x1CCF0, 0x1CCF9,
    0x1D2C0, 0x1D2D3, 0x1D2E0, 0x1D2F3, 0x1D360, 0x1D378, 0x1D7CE, 0x1D7FF, 0x1E140, 0x1E149, 0x1E2F0, 0x1E2F9,
    0x1E4F0, 0x1E4F9, 0x1E5F1, 0x1E5FA, 0x1E8C7, 0x1E8CF, 0x1E950, 0x1E959, 0x1EC71, 0x1ECAB, 0x1ECAD, 0x1ECAF,
    0x1ECB1, 0x1ECB4, 0x1ED01, 0x1ED2D, 0x1ED2F, 0x1ED3D, 0x1F100, 0x1F10C, 0x1FBF0, 0x1FBF9,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pre: PreTokenizer, s: &str) -> Vec<String> {
        let mut out = Vec::new();
        pre_split(pre, s, &mut |w: &str| out.push(w.to_string()));
        out
    }

    /// The 256 byte tokens (ids 0..256), then `extra` tokens, with `merges`.
    fn tiny(extra: &[&str], merges: &[&str], specials: &[&str]) -> Tokenizer {
        let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_to_char(b).to_string()).collect();
        tokens.extend(extra.iter().map(|s| s.to_string()));
        let mut types = vec![token_type::NORMAL; tokens.len()];
        for s in specials {
            tokens.push(s.to_string());
            types.push(token_type::CONTROL);
        }
        let merges: Vec<String> = merges.iter().map(|s| s.to_string()).collect();
        let bos = Some(tokens.len() as u32 - 1).filter(|_| !specials.is_empty());
        Tokenizer::from_vocab(tokens, &merges, &types, PreTokenizer::Gpt2, bos, None, true).unwrap()
    }

    fn id(t: &Tokenizer, s: &str) -> u32 {
        t.id(s).unwrap_or_else(|| panic!("{s:?} not in vocab"))
    }

    #[test]
    fn gpt2_byte_map() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'A'), 'A');
        assert_eq!(byte_to_char(0xAD), '\u{143}');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(char_to_byte(' '), None);
    }

    #[test]
    fn unicode_classes() {
        assert!(is_letter('é') && is_letter('ª') && is_letter('你') && is_letter('ǅ'));
        assert!(!is_letter('\u{301}') && !is_letter('Ⓐ') && !is_letter('Ⅻ') && !is_letter('\u{93E}'));
        assert!(is_number('½') && is_number('٣') && is_number('Ⅻ') && is_number('²') && is_number('7'));
        assert!(!is_number('a') && !is_number('\u{11DE0}'));
        assert!('\u{11DE0}'.is_numeric(), "Digits uses char::is_numeric, which is newer than Oniguruma's \\p{{N}}");
        assert!(in_ranges(LETTER_RANGES, 0x41) && !in_ranges(LETTER_RANGES, 0x40) && in_ranges(LETTER_RANGES, 0x5A));
        assert!(LETTER_RANGES.windows(2).all(|w| w[0] <= w[1]) && NUMBER_RANGES.windows(2).all(|w| w[0] <= w[1]));
    }

    /// Expected splits are `tokenizers`' own (ByteLevel / Split with the GPT-2 regex).
    #[test]
    fn gpt2_split_cases() {
        let cases: &[(&str, &[&str])] = &[
            ("Hello world", &["Hello", " world"]),
            ("I'm don't we'll THEY'RE 'sup", &["I", "'m", " don", "'t", " we", "'ll", " THEY", "'", "RE", " '", "sup"]),
            ("a   b", &["a", "  ", " b"]),
            ("a\n\nb", &["a", "\n", "\n", "b"]),
            ("x  \t y", &["x", "  \t", " y"]),
            ("3.14 1000", &["3", ".", "14", " 1000"]),
            ("héllo wörld café", &["héllo", " wörld", " café"]),
            ("e\u{301}t\u{e9}", &["e", "\u{301}", "té"]),
            ("你好世界 こんにちは", &["你好世界", " こんにちは"]),
            ("hi 👋🏽! ok", &["hi", " 👋🏽!", " ok"]),
            ("end  ", &["end", "  "]),
            ("  lead", &[" ", " lead"]),
            ("tab\tx", &["tab", "\t", "x"]),
            ("a''s ?'d", &["a", "''", "s", " ?'", "d"]),
            (" \n ", &[" \n "]),
            ("Ⓐⓑ ½ ٣४ x²", &["Ⓐⓑ", " ½", " ٣४", " x", "²"]),
            ("", &[]),
            ("'", &["'"]),
            (" ", &[" "]),
        ];
        for (text, want) in cases {
            assert_eq!(split(PreTokenizer::Gpt2, text), *want, "{text:?}");
        }
    }

    #[test]
    fn digits_then_gpt2_split() {
        assert_eq!(split(PreTokenizer::DigitsThenGpt2, "3.14 1000"), ["3", ".", "1", "4", " ", "1", "0", "0", "0"]);
        assert_eq!(
            split(PreTokenizer::DigitsThenGpt2, "abc123 4 ab 56"),
            ["abc", "1", "2", "3", " ", "4", " ab", " ", "5", "6"]
        );
        assert_eq!(split(PreTokenizer::DigitsThenGpt2, "x² ½"), ["x", "²", " ", "½"]);
    }

    #[test]
    fn merges_follow_rank_not_position() {
        // "b c" outranks "a b": abc -> a + bc -> abc.
        let t = tiny(&["bc", "ab", "abc"], &["b c", "a b", "a bc"], &[]);
        assert_eq!(t.encode("abc"), [id(&t, "abc")]);
        // Without "a bc", "ab" is never formed because "bc" took the b first.
        let t = tiny(&["bc", "ab"], &["b c", "a b"], &[]);
        assert_eq!(t.encode("abc"), [id(&t, "a"), id(&t, "bc")]);
        let t = tiny(&["bc", "ab"], &["a b", "b c"], &[]);
        assert_eq!(t.encode("abc"), [id(&t, "ab"), id(&t, "c")]);
        // Equal pairs: the leftmost first.
        let t = tiny(&["aa"], &["a a"], &[]);
        assert_eq!(t.encode("aaa"), [id(&t, "aa"), id(&t, "a")]);
        assert_eq!(t.encode("aaaa"), [id(&t, "aa"), id(&t, "aa")]);
        // Merges act within a word only; the space is Ġ.
        let t = tiny(&["Ġa", "aa"], &["Ġ a", "a a"], &[]);
        assert_eq!(t.encode("aa aa"), [id(&t, "aa"), id(&t, "Ġa"), id(&t, "a")]);
    }

    #[test]
    fn merges_with_unknown_parts_are_skipped() {
        let t = tiny(&["ab"], &["a b", "x yz", "c d"], &[]);
        assert_eq!(t.merges.len(), 1);
        assert_eq!(t.encode("abcd"), [id(&t, "ab"), id(&t, "c"), id(&t, "d")]);
    }

    #[test]
    fn every_byte_falls_back_to_its_token() {
        let t = tiny(&[], &[], &[]);
        let text = "é\u{0}\t😀 \u{7f}";
        let ids = t.encode(text);
        assert_eq!(ids, text.bytes().map(|b| b as u32).collect::<Vec<_>>());
        assert_eq!(t.decode(&ids), text);
        // Invalid UTF-8 in the ids decodes lossily.
        assert_eq!(t.decode(&[0xC3]), "\u{FFFD}");
    }

    #[test]
    fn special_tokens_are_matched_first() {
        let t = tiny(&["im"], &["i m"], &["<|im_start|>", "<|im_end|>", "<|im", "<s>"]);
        let s = |x: &str| id(&t, x);
        let ids = t.encode("<|im_start|>im\n<|im_end|>x<|im");
        let mut want = vec![s("<|im_start|>"), s("im"), s("Ċ"), s("<|im_end|>"), s("x"), s("<|im")];
        assert_eq!(ids, want);
        assert_eq!(t.decode(&ids), "<|im_start|>im\n<|im_end|>x<|im");
        // Special tokens are not pre-tokenizer words: "<|im_end" alone is "<|im" then text.
        assert_eq!(t.encode("<|im_end")[0], s("<|im"));
        // BOS (the last special here, "<s>") only with add_bos.
        want.insert(0, s("<s>"));
        assert_eq!(t.encode_with_bos("<|im_start|>im\n<|im_end|>x<|im"), want);
        assert_eq!(t.bos(), Some(s("<s>")));
    }

    #[test]
    fn round_trip_decode() {
        let t = tiny(&["Ġt", "he", "Ġthe"], &["Ġ t", "h e", "Ġt he"], &["<|endoftext|>"]);
        for text in ["the theme of the  thesis\n\n\tend ", "naïve 日本 ½ 👍🏽<|endoftext|>x", ""] {
            assert_eq!(t.decode(&t.encode(text)), text);
        }
        assert_eq!(t.encode(" the"), [id(&t, "Ġthe")]);
    }

    #[test]
    fn hf_json_round_trip() {
        let t = tiny(&["Ġt", "he", "Ġthe", "a b"], &["Ġ t", "h e", "Ġt he"], &["<|endoftext|>", "<s>"]);
        let json = t.to_hf_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["model"]["type"], "BPE");
        assert_eq!(v["added_tokens"].as_array().unwrap().len(), 2);
        assert_eq!(v["post_processor"]["type"], "TemplateProcessing");
        let back = Tokenizer::from_hf_json(&json).unwrap();
        assert_eq!(back.vocab_size(), t.vocab_size());
        assert_eq!(back.bos(), t.bos());
        assert!(back.add_bos());
        let text = "<s>the theme<|endoftext|> ½ 12";
        assert_eq!(back.encode(text), t.encode(text));
        assert_eq!(back.to_hf_json(), json);
        // Merges as [a, b] pairs read the same.
        let mut v2 = v.clone();
        v2["model"]["merges"] = serde_json::json!([["Ġ", "t"], ["h", "e"], ["Ġt", "he"]]);
        let pairs = Tokenizer::from_hf_json(&v2.to_string()).unwrap();
        assert_eq!(pairs.encode(text), t.encode(text));
        // No BOS template: no BOS, and the digits pre-tokenizer survives the trip.
        let mut t2 = t.clone();
        t2.pre = PreTokenizer::DigitsThenGpt2;
        t2.set_special_ids(None, None, false).unwrap();
        let back2 = Tokenizer::from_hf_json(&t2.to_hf_json()).unwrap();
        assert_eq!(back2.pre_tokenizer(), PreTokenizer::DigitsThenGpt2);
        assert_eq!((back2.bos(), back2.add_bos()), (None, false));
    }

    #[test]
    fn unsupported_things_are_named() {
        let err = |r: Result<PreTokenizer, TokenizerError>| r.unwrap_err().to_string();
        assert!(err(Tokenizer::pre_from_gguf_name("llama", "default")).contains("SentencePiece"));
        assert!(err(Tokenizer::pre_from_gguf_name("bert", "")).contains("\"bert\""));
        assert!(err(Tokenizer::pre_from_gguf_name("gpt2", "qwen2")).contains("\"qwen2\""));
        assert!(err(Tokenizer::pre_from_gguf_name("gpt2", "default")).contains("default"));
        assert_eq!(Tokenizer::pre_from_gguf_name("gpt2", "smollm").unwrap(), PreTokenizer::DigitsThenGpt2);
        assert_eq!(Tokenizer::pre_from_gguf_name("gpt2", "gpt2").unwrap(), PreTokenizer::Gpt2);

        let base = serde_json::from_str::<serde_json::Value>(&tiny(&[], &[], &[]).to_hf_json()).unwrap();
        let with = |path: &str, value: serde_json::Value| {
            let mut v = base.clone();
            *v.pointer_mut(path).unwrap() = value;
            Tokenizer::from_hf_json(&v.to_string()).unwrap_err().to_string()
        };
        assert!(with("/model/type", "WordPiece".into()).contains("WordPiece"));
        assert!(with("/pre_tokenizer", serde_json::json!({"type": "Metaspace"})).contains("Metaspace"));
        let split = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split"}, {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]});
        assert!(with("/pre_tokenizer", split).contains("Sequence[Split, ByteLevel]"));
        assert!(with("/normalizer", serde_json::json!({"type": "NFC"})).contains("NFC"));
        assert!(with("/model/byte_fallback", true.into()).contains("byte_fallback"));
        assert!(Tokenizer::from_hf_json("{").unwrap_err().to_string().contains("JSON"));
    }

    #[test]
    fn from_vocab_checks_lengths() {
        let e = Tokenizer::from_vocab(vec!["a".into()], &[], &[1, 1], PreTokenizer::Gpt2, None, None, false);
        assert!(e.unwrap_err().to_string().contains("2 token types for 1 tokens"));
        let e = Tokenizer::from_vocab(vec!["a".into()], &["ab".into()], &[], PreTokenizer::Gpt2, None, None, false);
        assert!(e.is_err());
        let e = Tokenizer::from_vocab(vec!["a".into()], &[], &[], PreTokenizer::Gpt2, Some(3), None, false);
        assert!(e.unwrap_err().to_string().contains("bos id 3"));
    }
}
