"""`optc tokenize`: optc's byte-level BPE tokenizer against Hugging Face `tokenizers`.

The vocabulary is SmolLM2-135M's, read from the GGUF in the model cache with the `gguf`
package and written as a tokenizer.json with SmolLM2's pre-tokenizer
(Sequence[Digits(individual_digits=true), ByteLevel]); `tokenizers` is the oracle.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from optc_helpers import default_models_dir, describe_run, run_optc

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
SMOLLM2_PRE = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]}

TRICKY = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n"
    "<|im_start|>user\nI'm sure they'll say it's fine -- don't you think? We've seen it, HE'S\t'sure'.<|im_end|>\n"
    "Café naïve résumé façade Ångström e\u0301te\u0301 Ⓐⓑ ǅ ª\n"
    "你好，世界！这是一个测试。 日本語のテキストとカタカナ ー 한국어 텍스트입니다 Россия и Українa مرحبا بالعالم हिन्दी\n"
    "Emoji: 😀👍🏽🇺🇸 and ❤️ ...\u200b zero\u00a0width\u2003em\u3000ideo\r\n"
    "Numbers 12345 and 3.14159 and 1,000,000; ½ ² ٣٤٥ ४२ Ⅻ 𝟗\n"
    "def foo(x):\n    return x ** 2  # comment\n\n\n   \t  trailing   \n"
    "<|endoftext|><|endoftext|>x<|im_end<|im_start|><repo_name>a/b<file_sep>\n"
    "multiple   internal    spaces,,,!!! ??? --- (parens) [brackets] {braces} @#$%^&*_+=~`|\\/<>\n"
    "\x00\x01\x7f\x1b[0m ‘quotes’ “double” «guillemets» — – … •"
)


def _compare(what: str, ours: list[int], theirs: list[int], hf_tok) -> None:
    if ours == theirs:
        return
    i = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    lo = max(0, i - 5)
    raise AssertionError(
        f"{what}: optc gave {len(ours)} ids, tokenizers {len(theirs)}; first difference at {i}:\n"
        f"  optc:       {ours[lo:i + 6]} = {[hf_tok.id_to_token(t) for t in ours[lo:i + 6]]}\n"
        f"  tokenizers: {theirs[lo:i + 6]} = {[hf_tok.id_to_token(t) for t in theirs[lo:i + 6]]}")


@pytest.fixture(scope="module")
def models_cache() -> Path:
    return default_models_dir()


@pytest.fixture(scope="module")
def hf():
    return pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def smollm2_vocab(models_cache: Path):
    """tokens, merges, token types, bos, eos of the SmolLM2 GGUF."""
    gguf = pytest.importorskip("gguf")
    path = models_cache / GGUF
    if not path.is_file():
        pytest.skip(f"{path} is not in the model cache (run scripts/fetch_models.py)")
    r = gguf.GGUFReader(str(path))
    f = r.fields
    assert f["tokenizer.ggml.model"].contents() == "gpt2"
    assert f["tokenizer.ggml.pre"].contents() == "smollm"
    return dict(
        tokens=f["tokenizer.ggml.tokens"].contents(),
        merges=f["tokenizer.ggml.merges"].contents(),
        types=f["tokenizer.ggml.token_type"].contents(),
        bos=f["tokenizer.ggml.bos_token_id"].contents(),
        eos=f["tokenizer.ggml.eos_token_id"].contents(),
    )


def _tokenizer_json(v: dict, pre: dict) -> dict:
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": ty == 3}
        for i, (t, ty) in enumerate(zip(v["tokens"], v["types"])) if ty in (3, 4)
    ]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": pre, "post_processor": None, "decoder": BYTE_LEVEL,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(v["tokens"])}, "merges": list(v["merges"])},
    }


@pytest.fixture(scope="module")
def smollm2_json(smollm2_vocab, tmp_path_factory) -> Path:
    """SmolLM2's tokenizer.json, rebuilt from the GGUF vocabulary."""
    p = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    p.write_text(json.dumps(_tokenizer_json(smollm2_vocab, SMOLLM2_PRE), ensure_ascii=False), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def gpt2_json(smollm2_vocab, tmp_path_factory) -> Path:
    """The same vocabulary with the plain GPT-2 split (no Digits step)."""
    p = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    p.write_text(json.dumps(_tokenizer_json(smollm2_vocab, BYTE_LEVEL), ensure_ascii=False), encoding="utf-8")
    return p


def _lee(models_cache: Path, name: str) -> Path:
    p = models_cache / name
    if not p.is_file():
        pytest.skip(f"{p} is not in the model cache (run scripts/fetch_models.py)")
    return p


def _optc_ids(optc_bin, tok: Path, text_file: Path, *extra) -> tuple[list[int], str]:
    r = run_optc(optc_bin, ["tokenize", tok, "--text", text_file, "--json", *extra])
    assert r.returncode == 0, describe_run(r)
    return json.loads(r.stdout), r.stderr


def test_english_file_matches_tokenizers(optc_bin, hf, smollm2_json, models_cache, tmp_path):
    src = _lee(models_cache, "lee_background.cor")
    text = src.read_text(encoding="utf-8")
    hf_tok = hf.Tokenizer.from_file(str(smollm2_json))
    want = hf_tok.encode(text).ids
    ours, err = _optc_ids(optc_bin, smollm2_json, src, "--stats")
    _compare("lee_background.cor", ours, want, hf_tok)
    assert len(ours) > 50_000
    m = re.search(r"(\d+) tokens from (\d+) bytes in ([\d.]+) ms \((\d+) tokens/s", err)
    assert m, err
    print(f"\noptc tokenize lee_background.cor: {err.strip()}")
    # decode(encode(text)) == text, through the CLI (ids from a file: too long for one argument).
    ids_file = tmp_path / "ids.json"
    ids_file.write_text(json.dumps(ours))
    r = run_optc(optc_bin, ["tokenize", smollm2_json, "--decode", f"@{ids_file}"])
    assert r.returncode == 0, describe_run(r)
    assert r.stdout == text
    assert hf_tok.decode(ours, skip_special_tokens=False) == text


def test_latin1_file_matches_tokenizers(optc_bin, hf, smollm2_json, models_cache):
    src = _lee(models_cache, "lee.cor")
    data = src.read_bytes()
    try:
        data.decode("utf-8")
        latin1 = False
    except UnicodeDecodeError:
        latin1 = True
    text = data.decode("latin-1")
    hf_tok = hf.Tokenizer.from_file(str(smollm2_json))
    ours, err = _optc_ids(optc_bin, smollm2_json, src)
    _compare("lee.cor", ours, hf_tok.encode(text).ids, hf_tok)
    if latin1:
        assert "Latin-1" in err, err


@pytest.mark.parametrize("pre", ["smollm2", "gpt2"])
def test_tricky_text_matches_tokenizers(optc_bin, hf, smollm2_json, gpt2_json, tmp_path, pre):
    tok = smollm2_json if pre == "smollm2" else gpt2_json
    hf_tok = hf.Tokenizer.from_file(str(tok))
    src = tmp_path / "tricky.txt"
    src.write_bytes(TRICKY.encode("utf-8"))
    ours, _ = _optc_ids(optc_bin, tok, src)
    want = hf_tok.encode(TRICKY).ids
    _compare("tricky text", ours, want, hf_tok)
    assert ours.count(hf_tok.token_to_id("<|im_start|>")) == 3
    # The same text as a command-line argument (no NUL there), and each line on its own.
    for line in TRICKY.replace("\x00", "").split("\n"):
        r = run_optc(optc_bin, ["tokenize", tok, line])
        assert r.returncode == 0, describe_run(r)
        got = [int(x) for x in r.stdout.split()]
        _compare(f"line {line!r}", got, hf_tok.encode(line).ids, hf_tok)


def test_random_text_matches_tokenizers(optc_bin, hf, smollm2_json, tmp_path):
    """Seeded random text from a pool of the characters that the split treats differently."""
    pool = (list("abcXYZ é ñ ß") + [" ", " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u2009", "\u3000", "'", "'s", "'ll",
            "'RE", "0", "7", "42", "½", "²", "٣", "\u0301", "\u093e", "你", "ア", "й", "😀", "🏽", "!", "?!", "...",
            "-", "_", "<", ">", "|", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "\u200b", "\x0b", "\x1c"])
    rng = random.Random(0)
    text = "".join(rng.choice(pool) for _ in range(40_000))
    src = tmp_path / "random.txt"
    src.write_bytes(text.encode("utf-8"))
    hf_tok = hf.Tokenizer.from_file(str(smollm2_json))
    ours, _ = _optc_ids(optc_bin, smollm2_json, src)
    _compare("random text", ours, hf_tok.encode(text).ids, hf_tok)


def test_optc_written_json_round_trips(optc_bin, hf, smollm2_json, models_cache, tmp_path):
    """optc writes its tokenizer as a tokenizer.json; optc and tokenizers both read it back and
    encode as before."""
    out = tmp_path / "optc_tokenizer.json"
    r = run_optc(optc_bin, ["tokenize", smollm2_json, "--write-json", out])
    assert r.returncode == 0, describe_run(r)
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["pre_tokenizer"] == SMOLLM2_PRE
    assert written["post_processor"] is None
    assert written["model"]["type"] == "BPE" and len(written["model"]["vocab"]) == 49152
    assert [a["content"] for a in written["added_tokens"]][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    # Written again from what it wrote: the same file.
    again = tmp_path / "again.json"
    r = run_optc(optc_bin, ["tokenize", out, "--write-json", again])
    assert r.returncode == 0, describe_run(r)
    assert again.read_bytes() == out.read_bytes()

    src = _lee(models_cache, "lee_background.cor")
    text = src.read_text(encoding="utf-8")[:100_000] + TRICKY
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    original = hf.Tokenizer.from_file(str(smollm2_json))
    want = original.encode(text).ids
    ours, _ = _optc_ids(optc_bin, out, f)
    _compare("optc on optc's json", ours, want, original)
    theirs = hf.Tokenizer.from_file(str(out))
    _compare("tokenizers on optc's json", theirs.encode(text).ids, want, original)
    assert theirs.decode(want, skip_special_tokens=False) == original.decode(want, skip_special_tokens=False)


def test_decode_and_bos(optc_bin, hf, smollm2_json, tmp_path):
    hf_tok = hf.Tokenizer.from_file(str(smollm2_json))
    ids = hf_tok.encode("<|im_start|>user\nHello, 2024 wörld!<|im_end|>").ids
    r = run_optc(optc_bin, ["tokenize", smollm2_json, "--decode", ",".join(map(str, ids))])
    assert r.returncode == 0, describe_run(r)
    assert r.stdout == "<|im_start|>user\nHello, 2024 wörld!<|im_end|>"
    # No BOS is known from a bare tokenizer.json; tokenizer_config.json beside it supplies one.
    r = run_optc(optc_bin, ["tokenize", smollm2_json, "--bos", "hi"])
    assert r.returncode == 2 and "no BOS" in r.stderr, describe_run(r)
    d = tmp_path / "with_config"
    d.mkdir()
    (d / "tokenizer.json").write_bytes(smollm2_json.read_bytes())
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "add_bos_token": False}))
    r = run_optc(optc_bin, ["tokenize", d / "tokenizer.json", "--bos", "--json", "hi"])
    assert r.returncode == 0, describe_run(r)
    assert json.loads(r.stdout) == [1] + hf_tok.encode("hi").ids
    r = run_optc(optc_bin, ["tokenize", smollm2_json, "--decode", "1,99999999"])
    assert r.returncode == 2 and "outside the vocabulary" in r.stderr, describe_run(r)


def test_unsupported_inputs_are_named(optc_bin, hf, tmp_path):
    wp = tmp_path / "wordpiece.json"
    wp.write_text(hf.Tokenizer(hf.models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).to_str())
    r = run_optc(optc_bin, ["tokenize", wp, "a"])
    assert r.returncode != 0 and "WordPiece" in r.stderr, describe_run(r)
    bpe = hf.Tokenizer(hf.models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    bpe.pre_tokenizer = hf.pre_tokenizers.Metaspace()
    ms = tmp_path / "metaspace.json"
    ms.write_text(bpe.to_str())
    r = run_optc(optc_bin, ["tokenize", ms, "a"])
    assert r.returncode != 0 and "Metaspace" in r.stderr, describe_run(r)
    other = tmp_path / "model.bin"
    other.write_bytes(b"\0")
    r = run_optc(optc_bin, ["tokenize", other, "a"])
    assert r.returncode != 0 and "not a tokenizer file" in r.stderr, describe_run(r)


def test_lstrip_rstrip_added_tokens(optc_bin, hf, smollm2_json, tmp_path):
    """Added tokens with lstrip/rstrip swallow the whitespace beside them, as in `tokenizers`."""
    j = json.loads(smollm2_json.read_text(encoding="utf-8"))
    for a in j["added_tokens"]:
        a["lstrip"] = a["content"] in ("<|im_end|>", "<|endoftext|>")
        a["rstrip"] = a["content"] in ("<|im_start|>", "<|endoftext|>")
    tok = tmp_path / "strip.json"
    tok.write_text(json.dumps(j, ensure_ascii=False), encoding="utf-8")
    hf_tok = hf.Tokenizer.from_file(str(tok))
    for text in ["a  <|im_end|>  b", "<|im_start|>  \n x <|im_start|>y", "x \t<|endoftext|>\n\ny", "  <|im_end|>",
                 "<|im_start|>   ", "a <|im_start|> <|im_end|> b", "<|im_end|> <|endoftext|> <|im_end|>"]:
        r = run_optc(optc_bin, ["tokenize", tok, "--json", text])
        assert r.returncode == 0, describe_run(r)
        _compare(repr(text), json.loads(r.stdout), hf_tok.encode(text).ids, hf_tok)
