"""`quant-w4`: weight-only int4 quantisation (RTN and AWQ) against the float model and against
onnxruntime's own MatMulNBitsQuantizer at the same block size.

Models: paraphrase-MiniLM-L3-v2 from the model cache (skipped when absent) and a small LLaMA-shaped
decoder from `optc gen`. Every quantised model must pass the onnx checker (full check) and run in
onnxruntime (MatMulNBits is a CPU contrib op). The error figure is the mean squared error of the
float outputs against the float model's, run by onnxruntime on the same inputs.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest

from optc_helpers import describe_run, ort_session, run_optc

MINILM = "paraphrase-MiniLM-L3-v2.onnx"
LLAMA_SPEC = "llama:layers=2,hidden=256,heads=4,kv_heads=2,ffn=688,vocab=1000"
SEQ = {"minilm": 16, "llama": 32}


# ----------------------------------------------------------------------------
# models and inputs

@pytest.fixture(scope="module")
def models(optc_bin, models_dir, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("quant_models")
    out = {}
    llama = d / "llama.onnx"
    r = run_optc(optc_bin, ["gen", LLAMA_SPEC, "-o", llama])
    assert r.returncode == 0, describe_run(r)
    out["llama"] = llama
    p = models_dir / MINILM
    if p.is_file():
        out["minilm"] = p
    return out


def model_path(models: dict[str, Path], name: str) -> Path:
    if name not in models:
        pytest.skip(f"{MINILM} is not in the model cache (scripts/fetch_models.py)")
    return models[name]


def make_feeds(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    seq = SEQ[name]
    ids = rng.integers(0, 1000, size=(1, seq)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones((1, seq), np.int64)}


def float_outputs(path: Path, feeds: dict) -> list[np.ndarray]:
    sess = ort_session(path)
    names = {i.name for i in sess.get_inputs()}
    outs = sess.run(None, {k: v for k, v in feeds.items() if k in names})
    return [o for o in outs if isinstance(o, np.ndarray) and o.dtype.kind == "f"]


def errors(ref: list[np.ndarray], got: list[np.ndarray]) -> tuple[float, float]:
    """(mean squared error over all float outputs, smallest cosine similarity of one output)."""
    assert len(ref) == len(got) and ref
    sq = sum(float(np.sum((a.astype(np.float64) - b) ** 2)) for a, b in zip(ref, got))
    n = sum(a.size for a in ref)
    cos = min(float(np.dot(a.ravel().astype(np.float64), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b)))
              for a, b in zip(ref, got))
    return sq / n, cos


def ops(path: Path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def optc_quant(optc_bin, src: Path, pipeline: str, out: Path, extra: list | None = None) -> str:
    r = run_optc(optc_bin, ["opt", src, "-p", pipeline, "-o", out, "--explain", *(extra or [])])
    assert r.returncode == 0, describe_run(r)
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    return r.stdout


def ort_quant(src: Path, block: int, out: Path) -> Path:
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )
    except ImportError as e:  # onnx_ir missing, or an onnxruntime without it
        pytest.skip(f"onnxruntime's MatMulNBitsQuantizer is unavailable: {e}")
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    cfg = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=False)
    q = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=cfg)
    q.process()
    q.model.save_model_to_file(str(out), False)
    return out


# ----------------------------------------------------------------------------
# RTN vs the float model and vs onnxruntime's quantiser

# Smallest cosine similarity of an output to the float model's, per (model, block). Measured:
# MiniLM 0.976 (block 32) and 0.965 (128) on the sentence embedding, LLaMA 0.986 / 0.985 on the
# logits; onnxruntime's quantiser gives the same figures (it computes the same blocks).
COSINE = {("minilm", 32): 0.97, ("minilm", 128): 0.955, ("llama", 32): 0.98, ("llama", 128): 0.975}


@pytest.mark.parametrize("block", [32, 128])
@pytest.mark.parametrize("name", ["minilm", "llama"])
def test_rtn_matches_onnxruntime_quantizer(name, block, models, optc_bin, outdir: Path):
    src = model_path(models, name)
    out = outdir / f"{name}_q{block}.onnx"
    log = optc_quant(optc_bin, src, f"quant-w4(block={block})", out)
    ort_out = ort_quant(src, block, outdir / f"{name}_ort{block}.onnx")
    hist, ort_hist = ops(out), ops(ort_out)
    assert hist["MatMulNBits"] > 0, f"{dict(hist)}\n{log}"
    assert hist["MatMulNBits"] == ort_hist["MatMulNBits"], (dict(hist), dict(ort_hist))
    assert "quantised" in log and "weight(s) to 4 bits" in log, log
    mse, ort_mse, cos = 0.0, 0.0, 1.0
    for seed in range(3):
        feeds = make_feeds(name, seed)
        ref = float_outputs(src, feeds)
        e, c = errors(ref, float_outputs(out, feeds))
        e_ort, _ = errors(ref, float_outputs(ort_out, feeds))
        mse, ort_mse, cos = mse + e / 3, ort_mse + e_ort / 3, min(cos, c)
    print(f"\n{name} block {block}: optc RTN mse {mse:.4e}, onnxruntime MatMulNBitsQuantizer mse {ort_mse:.4e} "
          f"(ratio {mse / ort_mse:.4f}), min cosine {cos:.5f}")
    assert cos >= COSINE[(name, block)], f"cosine {cos}"
    assert mse <= 1.10 * ort_mse, f"optc {mse:.4e} vs onnxruntime {ort_mse:.4e}"
    # the weights shrink about 6x
    assert out.stat().st_size < 0.8 * src.stat().st_size


# ----------------------------------------------------------------------------
# AWQ

def write_calib(d: Path, feeds_list: list[dict], model: Path) -> Path:
    """Calibration inputs as `--calib` reads them: DIR/<run>/<input>.npy."""
    names = {i.name for i in onnx.load(str(model)).graph.input}
    for i, feeds in enumerate(feeds_list):
        sub = d / f"{i:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        for k, v in feeds.items():
            if k in names:
                np.save(sub / f"{k}.npy", v)
    return d


@pytest.mark.parametrize("block", [32, 128])
def test_awq_is_no_worse_than_rtn_on_llama(block, models, optc_bin, outdir: Path, tmp_path: Path):
    src = models["llama"]
    feeds_list = [make_feeds("llama", seed) for seed in range(4)]
    calib = write_calib(tmp_path / "calib", feeds_list, src)
    rtn, awq = outdir / "rtn.onnx", outdir / "awq.onnx"
    optc_quant(optc_bin, src, f"quant-w4(block={block})", rtn)
    log = optc_quant(optc_bin, src, f"quant-w4(block={block},method=awq)", awq, ["--calib", calib])
    assert "AWQ alpha" in log and "no calibration data" not in log, log
    hist = ops(awq)
    assert hist["MatMulNBits"] == ops(rtn)["MatMulNBits"]
    # every scaled node gets its 1/s Mul
    assert hist["Mul"] > ops(src)["Mul"], dict(hist)
    e_rtn = e_awq = 0.0
    for feeds in feeds_list:
        ref = float_outputs(src, feeds)
        e_rtn += errors(ref, float_outputs(rtn, feeds))[0]
        e_awq += errors(ref, float_outputs(awq, feeds))[0]
    # and on inputs calibration did not see
    h_rtn = h_awq = 0.0
    for seed in range(100, 104):
        feeds = make_feeds("llama", seed)
        ref = float_outputs(src, feeds)
        h_rtn += errors(ref, float_outputs(rtn, feeds))[0]
        h_awq += errors(ref, float_outputs(awq, feeds))[0]
    print(f"\nllama block {block}: AWQ mse {e_awq / 4:.4e}, RTN mse {e_rtn / 4:.4e}, AWQ/RTN {e_awq / e_rtn:.4f} "
          f"(held-out inputs: AWQ/RTN {h_awq / h_rtn:.4f})")
    assert e_awq <= e_rtn, f"AWQ {e_awq} worse than RTN {e_rtn}"
    assert h_awq <= h_rtn, f"held out: AWQ {h_awq} worse than RTN {h_rtn}"


def test_awq_without_calibration_data_uses_random_inputs(models, optc_bin, outdir: Path):
    src = models["llama"]
    out = outdir / "awq.onnx"
    log = optc_quant(optc_bin, src, "quant-w4(block=32,method=awq)", out)
    assert "no calibration data" in log and "AWQ alpha" in log, log
    feeds = make_feeds("llama", 7)
    _, cos = errors(float_outputs(src, feeds), float_outputs(out, feeds))
    assert cos >= 0.98, cos


def test_awq_on_minilm(models, optc_bin, outdir: Path, tmp_path: Path):
    src = model_path(models, "minilm")
    feeds_list = [make_feeds("minilm", seed) for seed in range(4)]
    calib = write_calib(tmp_path / "calib", feeds_list, src)
    rtn, awq = outdir / "rtn.onnx", outdir / "awq.onnx"
    optc_quant(optc_bin, src, "quant-w4(block=32)", rtn)
    optc_quant(optc_bin, src, "quant-w4(block=32,method=awq)", awq, ["--calib", calib])
    e_rtn = e_awq = 0.0
    for seed in range(100, 104):  # inputs calibration did not see
        feeds = make_feeds("minilm", seed)
        ref = float_outputs(src, feeds)
        e_rtn += errors(ref, float_outputs(rtn, feeds))[0]
        e_awq += errors(ref, float_outputs(awq, feeds))[0]
    print(f"\nminilm block 32 (held-out inputs): AWQ mse {e_awq / 4:.4e}, RTN mse {e_rtn / 4:.4e}, "
          f"AWQ/RTN {e_awq / e_rtn:.4f}")
    assert e_awq <= e_rtn, (e_awq, e_rtn)


# ----------------------------------------------------------------------------
# formats and options

@pytest.mark.parametrize("name", ["minilm", "llama"])
@pytest.mark.parametrize("sym", [False, True])
def test_qdq_format(name, sym, models, optc_bin, outdir: Path):
    """format=qdq: blocked uint4/int4 DequantizeLinear feeding the MatMul, opset raised to 21."""
    src = model_path(models, name)
    out = outdir / "qdq.onnx"
    nb = outdir / "nbits.onnx"
    log = optc_quant(optc_bin, src, f"quant-w4(block=32,format=qdq,sym={str(sym).lower()})", out)
    optc_quant(optc_bin, src, f"quant-w4(block=32,sym={str(sym).lower()})", nb)
    m = onnx.load(str(out))
    assert {o.domain: o.version for o in m.opset_import}.get("", 0) == 21, log
    assert m.ir_version >= 10
    hist = ops(out)
    assert hist["DequantizeLinear"] == ops(nb)["MatMulNBits"] > 0, dict(hist)
    want = onnx.TensorProto.INT4 if sym else onnx.TensorProto.UINT4
    q = [t for t in m.graph.initializer if t.name.endswith(".q4")]
    assert q and all(t.data_type == want for t in q)
    feeds = make_feeds(name, 1)
    ref = float_outputs(src, feeds)
    e_qdq, cos = errors(ref, float_outputs(out, feeds))
    e_nb, _ = errors(ref, float_outputs(nb, feeds))
    assert cos >= 0.95
    # the same codes as the MatMulNBits form: the same error up to float rounding
    assert abs(e_qdq - e_nb) <= 0.05 * e_nb + 1e-9, (e_qdq, e_nb)


def test_sym_minilm(models, optc_bin, outdir: Path):
    src = model_path(models, "minilm")
    out = outdir / "sym.onnx"
    optc_quant(optc_bin, src, "quant-w4(block=32,sym=true)", out)
    m = onnx.load(str(out))
    nodes = [n for n in m.graph.node if n.op_type == "MatMulNBits"]
    assert nodes and all(len(n.input) == 3 for n in nodes), "symmetric blocks have no zero points"
    feeds = make_feeds("minilm", 2)
    _, cos = errors(float_outputs(src, feeds), float_outputs(out, feeds))
    assert cos >= 0.95


def gemm_model(c_shape: list[int]) -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(4)
    m, k, n = 4, 96, 64
    b = numpy_helper.from_array(rng.standard_normal((n, k)).astype(np.float32), "B")
    c = numpy_helper.from_array(rng.standard_normal(c_shape).astype(np.float32), "C")
    node = helper.make_node("Gemm", ["x", "B", "C"], ["y"], name="gemm", transB=1, alpha=0.5, beta=2.0)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [b, c])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("c_shape,expect", [([64], {"MatMulNBits"}), ([4, 64], {"MatMulNBits", "Add"})])
def test_gemm_runs_in_onnxruntime(c_shape, expect, optc_bin, tmp_path: Path):
    """Gemm(transB=1, alpha, beta): alpha folded into the weight, a [N] bias as MatMulNBits' bias."""
    src = tmp_path / "gemm.onnx"
    onnx.save(gemm_model(c_shape), src)
    out = tmp_path / "q.onnx"
    log = optc_quant(optc_bin, src, "quant-w4(block=32,min_size=16)", out)
    assert set(ops(out)) == expect, log
    x = np.random.default_rng(5).standard_normal((4, 96)).astype(np.float32)
    want = ort_session(src).run(None, {"x": x})[0]
    got = ort_session(out).run(None, {"x": x})[0]
    # |x| sums of 96 normals ~ 77; the step of 0.5 * B with |B| < ~4.5 is < 0.3
    np.testing.assert_allclose(got, want, atol=77 * 0.15)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


def test_skips_are_explained(models, optc_bin, outdir: Path):
    src = model_path(models, "minilm")
    out = outdir / "ex.onnx"
    log = optc_quant(optc_bin, src, "quant-w4(exclude=intermediate|query,min_size=200000)", out)
    assert "weight is not a constant" in log
    assert "excluded (matches 'intermediate')" in log and "excluded (matches 'query')" in log
    assert "weight too small" in log
    # 1536x384 output denses only (the 384x384 ones are under min_size)
    assert ops(out)["MatMulNBits"] == 3, log


def test_awq_with_qdq_format_runs_in_onnxruntime(models, optc_bin, outdir: Path):
    src = models["llama"]
    out = outdir / "awq_qdq.onnx"
    log = optc_quant(optc_bin, src, "quant-w4(block=64,method=awq,format=qdq,sym=true)", out)
    assert "raised the model from opset 17 to 21" in log, log
    hist = ops(out)
    assert hist["DequantizeLinear"] > 0 and hist["MatMul"] > 0, dict(hist)
    feeds = make_feeds("llama", 3)
    _, cos = errors(float_outputs(src, feeds), float_outputs(out, feeds))
    assert cos >= 0.98, cos


def test_calib_errors_are_reported(models, optc_bin, outdir: Path, tmp_path: Path):
    src = models["llama"]
    out = outdir / "x.onnx"
    r = run_optc(optc_bin, ["opt", src, "-p", "quant-w4(method=awq)", "-o", out, "--calib", tmp_path / "missing"])
    assert r.returncode != 0 and "--calib" in r.stderr, describe_run(r)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_optc(optc_bin, ["opt", src, "-p", "quant-w4(method=awq)", "-o", out, "--calib", empty])
    assert r.returncode != 0 and "no .npy files" in r.stderr, describe_run(r)
    # a calibration input the model lacks is ignored with a note; a single run may sit in DIR itself
    one = tmp_path / "one"
    one.mkdir()
    feeds = make_feeds("llama", 0)
    for k, v in feeds.items():
        np.save(one / f"{k}.npy", v)
    np.save(one / "token_type_ids.npy", np.zeros_like(feeds["input_ids"]))
    log = optc_quant(optc_bin, src, "quant-w4(method=awq)", out, ["--calib", one])
    assert "ignored: token_type_ids" in log and "AWQ alpha" in log and "on 32 rows" in log, log
