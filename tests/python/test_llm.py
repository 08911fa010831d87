"""LLMs from GGUF: `optc import`, `optc eval ppl`, `optc generate` and `optc gen llama-kv`.

onnxruntime (graph optimisations off) is the judge: the imported SmolLM2-135M (GGUF Q4_1, 30
LLaMA layers) must pass `onnx.checker`, load in onnxruntime, and give the same logits as optc's
evaluator for the same tokens, in a prefill and in a decode step that reads the KV cache
(max |diff| at most 1e-3 of the largest logit). Perplexity and greedy generation computed by
optc are checked against the same quantities computed with onnxruntime. Bad GGUF files give a
clear error (exit 2), never a panic.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from optc_helpers import describe_run, run_optc

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT_NAME = "lee_background.cor"
REL_TOL = 1e-3


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class Ort:
    """A decoder with a KV cache run by onnxruntime."""

    def __init__(self, path: Path):
        self.s = _session(path)
        ins = {i.name: i for i in self.s.get_inputs()}
        self.layers = sum(1 for n in ins if n.startswith("past_key_values.") and n.endswith(".key"))
        shape = ins["past_key_values.0.key"].shape
        self.kv_heads, self.head_dim = shape[1], shape[3]
        self.outputs = [o.name for o in self.s.get_outputs()]

    def feeds(self, ids: np.ndarray, past: list | None, past_len: int) -> dict:
        b, s = ids.shape
        f = {
            "input_ids": ids.astype(np.int64),
            "attention_mask": np.ones((b, past_len + s), np.int64),
            "position_ids": np.tile(np.arange(past_len, past_len + s), (b, 1)).astype(np.int64),
        }
        for i in range(self.layers):
            for j, kv in enumerate(("key", "value")):
                f[f"past_key_values.{i}.{kv}"] = (
                    np.zeros((b, self.kv_heads, 0, self.head_dim), np.float32) if past is None else past[2 * i + j]
                )
        return f

    def run(self, ids: np.ndarray, past: list | None = None, past_len: int = 0):
        out = self.s.run(None, self.feeds(ids, past, past_len))
        named = dict(zip(self.outputs, out))
        presents = [named[f"present.{i}.{kv}"] for i in range(self.layers) for kv in ("key", "value")]
        return named["logits"], presents


def _optc_run(optc_bin: Path, model: Path, feeds: dict, tmp: Path) -> dict:
    args = ["run", model, "-o", tmp / "out"]
    for k, v in feeds.items():
        p = tmp / f"{k}.npy"
        np.save(p, v)
        args += ["--input", f"{k}={p}"]
    r = run_optc(optc_bin, args, timeout=600)
    assert r.returncode == 0, describe_run(r)
    return {p.stem: np.load(p) for p in (tmp / "out").glob("*.npy")}


def _close(got: np.ndarray, want: np.ndarray, what: str):
    scale = float(np.abs(want).max())
    diff = float(np.abs(got - want).max())
    assert diff <= REL_TOL * max(scale, 1.0), f"{what}: max |diff| {diff:.3g} vs largest {scale:.3g}"


@pytest.fixture(scope="module")
def gguf_path(models_dir) -> Path:
    p = models_dir / GGUF_NAME
    if not p.is_file():
        pytest.skip(f"{p} is not in the model cache (run scripts/fetch_models.py)")
    return p


@pytest.fixture(scope="module")
def imported(optc_bin, gguf_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smollm2") / "model.onnx"
    r = run_optc(optc_bin, ["import", gguf_path, "-o", out], timeout=600)
    assert r.returncode == 0, describe_run(r)
    assert (out.parent / "tokenizer.json").is_file(), "optc import writes tokenizer.json beside the model"
    return out


@pytest.fixture(scope="module")
def text_ids(optc_bin, imported, models_dir) -> list[int]:
    p = models_dir / TEXT_NAME
    if not p.is_file():
        pytest.skip(f"{p} is not in the model cache (run scripts/fetch_models.py)")
    r = run_optc(optc_bin, ["tokenize", imported, "--text", p, "--json"])
    assert r.returncode == 0, describe_run(r)
    return json.loads(r.stdout)


def test_imported_model_is_valid_onnx(imported, gguf_path):
    m = onnx.load(str(imported), load_external_data=False)
    onnx.checker.check_model(m)
    ops = {n.op_type for n in m.graph.node}
    assert "MatMulNBits" in ops, "Q4_1 weights stay quantised"
    names = [i.name for i in m.graph.input]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert sum(n.startswith("past_key_values.") for n in names) == 60  # 30 layers x key/value
    assert [o.name for o in m.graph.output][:3] == ["logits", "present.0.key", "present.0.value"]
    # About the GGUF's size, not float32's 4 bytes per parameter (540 MB).
    assert imported.stat().st_size < 1.5 * gguf_path.stat().st_size


def test_prefill_and_decode_match_onnxruntime(optc_bin, imported, text_ids, tmp_path):
    ref = Ort(imported)
    ids = np.array([text_ids[:24]], np.int64)
    # Prefill of 23 tokens, then one decode step reading the cache.
    logits, presents = ref.run(ids[:, :23])
    step_logits, _ = ref.run(ids[:, 23:], presents, 23)
    full_logits, _ = ref.run(ids)
    _close(step_logits[:, 0], full_logits[:, -1], "onnxruntime decode step vs prefill")

    (tmp_path / "a").mkdir()
    got = _optc_run(optc_bin, imported, ref.feeds(ids[:, :23], None, 0), tmp_path / "a")
    _close(got["logits"], logits, "optc vs onnxruntime prefill logits")
    _close(got["present.29.value"], presents[-1], "optc vs onnxruntime present.29.value")
    (tmp_path / "b").mkdir()
    got = _optc_run(optc_bin, imported, ref.feeds(ids[:, 23:], presents, 23), tmp_path / "b")
    _close(got["logits"], step_logits, "optc vs onnxruntime decode-step logits")


def test_dequantized_import_matches_quantized(optc_bin, gguf_path, imported, text_ids, tmp_path):
    out = tmp_path / "f32" / "model.onnx"
    r = run_optc(optc_bin, ["import", gguf_path, "-o", out, "--dequantize", "--max-pos", "256"], timeout=600)
    assert r.returncode == 0, describe_run(r)
    m = onnx.load(str(out), load_external_data=False)
    assert "MatMulNBits" not in {n.op_type for n in m.graph.node}
    ids = np.array([text_ids[:16]], np.int64)
    q, _ = Ort(imported).run(ids)
    f, _ = Ort(out).run(ids)
    # Same weights up to the rounding of Q4_1's zero point as a float (code - zp) * scale.
    _close(f, q, "float32 import vs MatMulNBits import")


def _ort_nll(ref: Ort, window: list[int]) -> tuple[float, int]:
    logits, _ = ref.run(np.array([window], np.int64))
    x = logits[0, :-1].astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))[:, 0]
    tgt = np.array(window[1:])
    return float((lse - x[np.arange(len(tgt)), tgt]).sum()), len(tgt)


def test_perplexity_matches_onnxruntime(optc_bin, imported, text_ids, models_dir):
    ctx, n = 128, 384
    r = run_optc(optc_bin, ["eval", "ppl", imported, "--text", models_dir / TEXT_NAME, "--ctx", ctx,
                            "--max-tokens", n, "--json"], timeout=900)
    assert r.returncode == 0, describe_run(r)
    got = json.loads(r.stdout)
    assert got["tokens"] == n and got["windows"] == n // ctx and got["scored"] == n - n // ctx
    ref = Ort(imported)
    total, count = 0.0, 0
    for b in range(0, n, ctx):
        s, c = _ort_nll(ref, text_ids[b:b + ctx])
        total += s
        count += c
    want = math.exp(total / count)
    assert abs(got["ppl"] - want) <= 1e-3 * want, f"optc ppl {got['ppl']:.4f} vs onnxruntime {want:.4f}"
    # A 135M model on English news: far from uniform over 49152 tokens, and not degenerate.
    assert 5 < got["ppl"] < 60, got


def test_greedy_generation_matches_onnxruntime(optc_bin, imported):
    prompt = "The capital of France is"
    n = 8
    r = run_optc(optc_bin, ["generate", imported, "--prompt", prompt, "-n", n], timeout=600)
    assert r.returncode == 0, describe_run(r)
    text = r.stdout
    assert text.startswith(prompt), text
    assert "Paris" in text, f"greedy continuation of {prompt!r}: {text!r}"
    # The same continuation with onnxruntime's greedy loop over the KV cache.
    tok = run_optc(optc_bin, ["tokenize", imported, prompt, "--json"])
    ids = json.loads(tok.stdout)
    ref = Ort(imported)
    logits, past = ref.run(np.array([ids], np.int64))
    out = []
    for _ in range(n):
        nxt = int(np.argmax(logits[0, -1]))
        out.append(nxt)
        logits, past = ref.run(np.array([[nxt]], np.int64), past, len(ids) + len(out) - 1)
    dec = run_optc(optc_bin, ["tokenize", imported, "--decode", ",".join(map(str, out))])
    assert dec.returncode == 0, describe_run(dec)
    assert text.rstrip("\n") == prompt + dec.stdout.rstrip("\n")


@pytest.mark.parametrize("wbits", [32, 8, 4])
def test_generated_llama_kv_runs_in_onnxruntime(optc_bin, tmp_path, wbits):
    p = tmp_path / f"llama-kv{wbits}.onnx"
    r = run_optc(optc_bin, ["gen", f"llama-kv:layers=2,hidden=64,heads=4,kv_heads=2,ffn=96,vocab=300,wbits={wbits}",
                            "--seed", 7, "-o", p])
    assert r.returncode == 0, describe_run(r)
    onnx.checker.check_model(onnx.load(str(p)), full_check=wbits == 32)
    ref = Ort(p)
    ids = np.random.default_rng(1).integers(0, 300, (2, 9))
    full, _ = ref.run(ids)
    _, past = ref.run(ids[:, :8])
    step, _ = ref.run(ids[:, 8:], past, 8)
    _close(step[:, 0], full[:, -1], "decode step vs prefill")
    (tmp_path / "o").mkdir()
    got = _optc_run(optc_bin, p, ref.feeds(ids, None, 0), tmp_path / "o")
    _close(got["logits"], full, "optc vs onnxruntime")


# ---- bad input ---------------------------------------------------------------------------------

def _gguf_bytes(arch: str = "llama", tensor_type: int = 0, truncate: int | None = None) -> bytes:
    """A minimal GGUF v3 file: a few metadata keys and one 32-element tensor."""
    def s(x: str) -> bytes:
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    kv = [("general.architecture", 8, s(arch)), ("general.alignment", 4, struct.pack("<I", 32))]
    out = b"GGUF" + struct.pack("<IQQ", 3, 1, len(kv))
    for k, t, v in kv:
        out += s(k) + struct.pack("<I", t) + v
    out += s("token_embd.weight") + struct.pack("<I", 2) + struct.pack("<QQ", 32, 1)
    out += struct.pack("<IQ", tensor_type, 0)
    out += b"\0" * (-len(out) % 32)
    out += b"\0" * 128
    return out[:truncate] if truncate else out


@pytest.mark.parametrize("case", ["not_llama", "truncated", "unknown_type", "no_metadata"])
def test_bad_gguf_gives_clear_error(optc_bin, tmp_path, case):
    data = {
        "not_llama": _gguf_bytes(arch="gpt2"),
        "truncated": _gguf_bytes(truncate=61),
        "unknown_type": _gguf_bytes(tensor_type=250),
        "no_metadata": _gguf_bytes(),
    }[case]
    p = tmp_path / f"{case}.gguf"
    p.write_bytes(data)
    out = tmp_path / "out.onnx"
    r = run_optc(optc_bin, ["import", p, "-o", out])
    assert r.returncode == 2, describe_run(r)
    err = r.stderr.strip()
    assert err.startswith("error:") and "panicked" not in err, err
    assert not out.exists(), "no output file on error"
    want = {"not_llama": "architecture 'gpt2'", "truncated": "", "unknown_type": "", "no_metadata": "llama."}[case]
    assert want in err, err
    # Every command that takes a model accepts a .gguf and fails the same way.
    r = run_optc(optc_bin, ["inspect", p])
    assert r.returncode == 2 and "panicked" not in r.stderr, describe_run(r)


# ---- every block format through import ------------------------------------------------------------

def _tiny_llama_gguf(path: Path, seed: int = 5) -> None:
    """A 2-layer LLaMA GGUF whose weights use every block format MatMulNBits or float32 takes."""
    gguf = pytest.importorskip("gguf")
    from test_gguf import F16_FIELDS  # the f16 scale fields of each block type

    Q = gguf.GGMLQuantizationType
    rng = np.random.default_rng(seed)
    hidden, heads, kv, ffn, vocab = 256, 4, 2, 512, 300
    hd = hidden // heads
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_uint32("llama.block_count", 2)
    w.add_uint32("llama.context_length", 128)
    w.add_uint32("llama.embedding_length", hidden)
    w.add_uint32("llama.feed_forward_length", ffn)
    w.add_uint32("llama.attention.head_count", heads)
    w.add_uint32("llama.attention.head_count_kv", kv)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)

    def blocks(qtype, rows: int, cols: int):
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
        for off in F16_FIELDS[qtype]:
            raw[:, off:off + 2] = rng.uniform(0.0002, 0.002, size=(len(raw), 1)).astype(np.float16).view(np.uint8)
        return raw.reshape(rows, -1)

    kinds = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.F16]
    shapes = {"attn_q": (heads * hd, hidden), "attn_k": (kv * hd, hidden), "attn_v": (kv * hd, hidden),
              "attn_output": (hidden, hidden), "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden),
              "ffn_down": (hidden, ffn)}
    w.add_tensor("token_embd.weight", blocks(Q.Q8_0, vocab, hidden), raw_dtype=Q.Q8_0)
    i = 0
    for layer in range(2):
        w.add_tensor(f"blk.{layer}.attn_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
        w.add_tensor(f"blk.{layer}.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
        for name, (rows, cols) in shapes.items():
            q = kinds[i % len(kinds)]
            i += 1
            if q == Q.F16:
                w.add_tensor(f"blk.{layer}.{name}.weight", (0.05 * rng.standard_normal((rows, cols))).astype(np.float16))
            else:
                w.add_tensor(f"blk.{layer}.{name}.weight", blocks(q, rows, cols), raw_dtype=q)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("output.weight", blocks(Q.Q6_K, vocab, hidden), raw_dtype=Q.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_every_block_format_imports_and_matches(optc_bin, tmp_path):
    src = tmp_path / "tiny.gguf"
    _tiny_llama_gguf(src)
    q, f = tmp_path / "q" / "model.onnx", tmp_path / "f" / "model.onnx"
    for out, extra in ((q, []), (f, ["--dequantize"])):
        r = run_optc(optc_bin, ["import", src, "-o", out, *extra])
        assert r.returncode == 0, describe_run(r)
        assert "warning: no tokenizer written" in r.stderr  # the file has no vocabulary
        onnx.checker.check_model(onnx.load(str(out)))
    m = onnx.load(str(q))
    nbits = [n for n in m.graph.node if n.op_type == "MatMulNBits"]
    bits = sorted({a.i for n in nbits for a in n.attribute if a.name == "bits"})
    assert len(nbits) >= 10 and bits == [4, 8], (len(nbits), bits)
    ids = np.random.default_rng(0).integers(0, 300, (1, 12))
    ref_q, ref_f = Ort(q), Ort(f)
    lq, past = ref_q.run(ids[:, :11])
    lf, _ = ref_f.run(ids[:, :11])
    # MatMulNBits' (code - zp) * scale against ggml's dequantised floats (one rounding apart).
    _close(lq, lf, "MatMulNBits import vs float32 import")
    (tmp_path / "o").mkdir()
    got = _optc_run(optc_bin, q, ref_q.feeds(ids[:, 11:], past, 11), tmp_path / "o")
    step, _ = ref_q.run(ids[:, 11:], past, 11)
    _close(got["logits"], step, "optc vs onnxruntime decode step")


def test_o2_on_imported_llm(optc_bin, imported, text_ids, tmp_path):
    """The fusions see the imported graph's patterns (RMSNorm after residual Adds -> contrib
    SkipSimplifiedLayerNormalization, SiLU -> QuickGelu) through MatMulNBits shape inference."""
    out = tmp_path / "o2.onnx"
    # gpu: a target whose cost model prefers the Skip form (on cpu LIFE keeps the Add apart).
    r = run_optc(optc_bin, ["opt", imported, "-p", "O2", "-o", out, "--target", "gpu"], timeout=600)
    assert r.returncode == 0, describe_run(r)
    before = onnx.load(str(imported), load_external_data=False)
    after = onnx.load(str(out), load_external_data=False)
    ops = {n.op_type for n in after.graph.node}
    assert "SkipSimplifiedLayerNormalization" in ops, sorted(ops)
    assert len(after.graph.node) < 0.7 * len(before.graph.node), (len(before.graph.node), len(after.graph.node))
    a, b = Ort(imported), Ort(out)
    ids = np.array([text_ids[:20]], np.int64)
    la, pa = a.run(ids[:, :19])
    lb, pb = b.run(ids[:, :19])
    _close(lb, la, "O2 vs imported prefill logits")
    sa, _ = a.run(ids[:, 19:], pa, 19)
    sb, _ = b.run(ids[:, 19:], pb, 19)
    _close(sb, sa, "O2 vs imported decode-step logits")
