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
# The same decoder with the activation statistics of trained ones (outlier channels, anisotropic
# low-rank embedding; see `optc gen --list`): the model issue 7's W4 bar is measured on.
LLAMA_TRAINED_SPEC = LLAMA_SPEC + ",trained_stats=1"
SEQ = {"minilm": 16, "llama": 32, "llama_trained": 32}


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
    trained = d / "llama_trained.onnx"
    r = run_optc(optc_bin, ["gen", LLAMA_TRAINED_SPEC, "-o", trained])
    assert r.returncode == 0, describe_run(r)
    out["llama_trained"] = trained
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


# ----------------------------------------------------------------------------
# GPTQ and W4/W2-GateUp

def held_out_mse(src: Path, quantised: list[Path], name: str, seeds) -> list[float]:
    """Mean over `seeds` of the output MSE of each quantised model against the float model."""
    tot = [0.0] * len(quantised)
    for seed in seeds:
        feeds = make_feeds(name, seed)
        ref = float_outputs(src, feeds)
        for i, q in enumerate(quantised):
            tot[i] += errors(ref, float_outputs(q, feeds))[0] / len(seeds)
    return tot


@pytest.mark.parametrize("name", ["llama", "minilm"])
def test_gptq_beats_rtn_on_held_out_inputs(name, models, optc_bin, outdir: Path, tmp_path: Path):
    """GPTQ at block 128, calibrated on 64 input sets, against RTN on 4 sets calibration did not see.

    Measured: GPTQ/RTN 0.87 on the generated LLaMA (random weights and token ids: activations with
    little structure, so the Hessian needs many rows), 0.06 on MiniLM."""
    src = model_path(models, name)
    calib = write_calib(tmp_path / "calib", [make_feeds(name, seed) for seed in range(64)], src)
    rtn, gq = outdir / "rtn.onnx", outdir / "gptq.onnx"
    optc_quant(optc_bin, src, "quant-w4(block=128)", rtn)
    log = optc_quant(optc_bin, src, "quant-w4(block=128,method=gptq)", gq, ["--calib", calib])
    assert "GPTQ on" in log and "no calibration data" not in log and "fell back" not in log, log
    assert ops(gq)["MatMulNBits"] == ops(rtn)["MatMulNBits"] > 0
    e_rtn, e_gptq = held_out_mse(src, [rtn, gq], name, range(100, 104))
    print(f"\n{name} block 128 (held-out inputs): GPTQ mse {e_gptq:.4e}, RTN mse {e_rtn:.4e}, "
          f"GPTQ/RTN {e_gptq / e_rtn:.4f}")
    assert e_gptq < e_rtn, (e_gptq, e_rtn)


def test_awq_and_gptq_meet_the_bar_on_llama_with_trained_statistics(models, optc_bin, outdir: Path,
                                                                     tmp_path: Path):
    """Issue 7's bar on the generated LLaMA with trained decoders' statistics (`trained_stats=1`):
    AWQ and GPTQ at block 128, calibrated on 64 input sets, at most 0.7x RTN's output error on 4 sets
    calibration did not see. Measured: AWQ/RTN 0.36, GPTQ/RTN 0.12 (the i.i.d. model above: 0.96,
    0.87)."""
    src = models["llama_trained"]
    calib = write_calib(tmp_path / "calib", [make_feeds("llama_trained", seed) for seed in range(64)], src)
    rtn, awq, gq = outdir / "rtn.onnx", outdir / "awq.onnx", outdir / "gptq.onnx"
    optc_quant(optc_bin, src, "quant-w4(block=128)", rtn)
    log_awq = optc_quant(optc_bin, src, "quant-w4(block=128,method=awq)", awq, ["--calib", calib])
    log_gq = optc_quant(optc_bin, src, "quant-w4(block=128,method=gptq)", gq, ["--calib", calib])
    assert "AWQ alpha" in log_awq and "no calibration data" not in log_awq, log_awq
    assert "GPTQ on" in log_gq and "fell back" not in log_gq, log_gq
    assert ops(awq)["MatMulNBits"] == ops(gq)["MatMulNBits"] == ops(rtn)["MatMulNBits"] > 0
    e_rtn, e_awq, e_gptq = held_out_mse(src, [rtn, awq, gq], "llama_trained", range(100, 104))
    print(f"\nllama trained_stats=1 block 128 (held-out inputs): RTN mse {e_rtn:.4e}, AWQ/RTN {e_awq / e_rtn:.4f}, "
          f"GPTQ/RTN {e_gptq / e_rtn:.4f}")
    assert e_awq <= 0.7 * e_rtn, (e_awq, e_rtn)
    assert e_gptq <= 0.7 * e_rtn, (e_gptq, e_rtn)


def test_gptq_shrinkage_helps_with_few_calibration_rows(models, optc_bin, outdir: Path, tmp_path: Path):
    """8 input sets (256 rows) for Hessians of 256 and 688 channels: reference GPTQ (shrink=0) fits the
    calibration rows (measured 2.1x RTN's error on held-out inputs); the default shrink=auto
    (K / (K + rows)) keeps it near RTN (1.04x)."""
    src = models["llama"]
    calib = write_calib(tmp_path / "calib", [make_feeds("llama", seed) for seed in range(8)], src)
    rtn, plain, shrunk = outdir / "rtn.onnx", outdir / "plain.onnx", outdir / "shrunk.onnx"
    optc_quant(optc_bin, src, "quant-w4(block=128)", rtn)
    optc_quant(optc_bin, src, "quant-w4(block=128,method=gptq,shrink=0)", plain, ["--calib", calib])
    optc_quant(optc_bin, src, "quant-w4(block=128,method=gptq)", shrunk, ["--calib", calib])
    e_rtn, e_plain, e_shrunk = held_out_mse(src, [rtn, plain, shrunk], "llama", range(100, 104))
    print(f"\nllama, 8 calibration sets: GPTQ shrink=0/RTN {e_plain / e_rtn:.4f}, GPTQ (shrink=auto)/RTN "
          f"{e_shrunk / e_rtn:.4f}")
    assert e_shrunk < 0.75 * e_plain, (e_shrunk, e_plain)


def test_gptq_act_order_and_qdq_run_in_onnxruntime(models, optc_bin, outdir: Path, tmp_path: Path):
    """act_order (static groups) with symmetric int4 DequantizeLinear: runs in onnxruntime and beats
    RTN in the same format on held-out inputs."""
    src = models["llama"]
    calib = write_calib(tmp_path / "calib", [make_feeds("llama", seed) for seed in range(64)], src)
    out, rtn = outdir / "gptq_qdq.onnx", outdir / "rtn_qdq.onnx"
    log = optc_quant(optc_bin, src, "quant-w4(block=64,method=gptq,act_order=true,format=qdq,sym=true)", out,
                     ["--calib", calib])
    optc_quant(optc_bin, src, "quant-w4(block=64,format=qdq,sym=true)", rtn)
    assert "(act_order)" in log, log
    assert ops(out)["DequantizeLinear"] == ops(rtn)["DequantizeLinear"] > 0
    e_rtn, e_gptq = held_out_mse(src, [rtn, out], "llama", range(100, 104))
    print(f"\nllama block 64 sym qdq act_order (held-out inputs): GPTQ/RTN {e_gptq / e_rtn:.4f}")
    assert e_gptq < e_rtn, (e_gptq, e_rtn)


def _optc_outputs(optc_bin, model: Path, feeds: dict, tmp: Path) -> dict:
    args = ["run", model, "-o", tmp / "out"]
    for k, v in feeds.items():
        p = tmp / f"{k}.npy"
        np.save(p, v)
        args += ["--input", f"{k}={p}"]
    r = run_optc(optc_bin, args, timeout=600)
    assert r.returncode == 0, describe_run(r)
    return {p.stem: np.load(p) for p in (tmp / "out").glob("*.npy")}


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_gateup_w2_on_llama(method, models, optc_bin, outdir: Path, tmp_path: Path):
    """gateup=w2: 2-bit MatMulNBits on exactly the gate/up MatMuls, 4 bits elsewhere; runs in
    onnxruntime and matches optc's own evaluator."""
    src = models["llama"]
    out = outdir / f"w2_{method}.onnx"
    extra = []
    if method != "rtn":
        extra = ["--calib", write_calib(tmp_path / "calib", [make_feeds("llama", s) for s in range(64)], src)]
    log = optc_quant(optc_bin, src, f"quant-w4(block=128,method={method},gateup=w2)", out, extra)
    m = onnx.load(str(out))
    bits = {}
    for n in m.graph.node:
        if n.op_type == "MatMulNBits":
            bits[n.name] = next(a.i for a in n.attribute if a.name == "bits")
    float_mm = [n.name for n in onnx.load(str(src)).graph.node if n.op_type == "MatMul"]
    gate_up = {n for n in float_mm if "gate_proj" in n or "up_proj" in n}
    assert len(gate_up) == 4, float_mm  # 2 layers x gate, up
    assert {n for n, b in bits.items() if b == 2} == gate_up, (bits, log)
    assert all(b == 4 for n, b in bits.items() if n not in gate_up), bits
    assert "4 to 2 bits" in log and log.count("SwiGLU at") == 2, log
    feeds = make_feeds("llama", 5)
    want = float_outputs(out, feeds)[0]
    got = _optc_outputs(optc_bin, out, feeds, tmp_path)["logits"]
    scale = float(np.abs(want).max())
    diff = float(np.abs(got - want).max())
    assert diff <= 1e-3 * scale, f"optc vs onnxruntime: max |diff| {diff:.3g}, max |logit| {scale:.3g}"
    # coarser than W4 but still the same model
    w4 = outdir / "w4.onnx"
    optc_quant(optc_bin, src, "quant-w4(block=128)", w4)
    ref = float_outputs(src, feeds)
    e_w2, cos = errors(ref, [want])
    e_w4, _ = errors(ref, float_outputs(w4, feeds))
    print(f"\nllama W4/W2-GateUp ({method}): logits mse {e_w2:.4e} (W4 RTN {e_w4:.4e}), cosine {cos:.4f}, "
          f"size {out.stat().st_size} vs W4 {w4.stat().st_size}")
    assert e_w2 > e_w4 and cos > 0.9, (e_w2, e_w4, cos)
    assert out.stat().st_size < w4.stat().st_size


def test_awq_without_calib_on_a_kv_cache_decoder(optc_bin, tmp_path: Path):
    """Random calibration feeds for a KV-cache decoder use past length 0 (a prompt), so AWQ runs;
    every per-node note names the method the weight really got."""
    src = tmp_path / "kv.onnx"
    r = run_optc(optc_bin, ["gen", "llama-kv:layers=2,hidden=128,heads=4,kv_heads=2,ffn=256,vocab=500", "-o", src])
    assert r.returncode == 0, describe_run(r)
    out = tmp_path / "awq.onnx"
    log = optc_quant(optc_bin, src, "quant-w4(block=32,method=awq)", out)
    assert "past_key_values.0.key [1, 2, 0, 32]" in log, log
    assert "AWQ alpha" in log and "calibration failed" not in log, log
    assert "(awq, block 32" in log and "(rtn, block" not in log, log


def test_quant_report_for_w4(models, optc_bin, outdir: Path):
    """quant-report ranks the generated llama's weights for quant-w4; --exclude-auto 1 leaves
    exactly the first one float."""
    import json
    src = models["llama"]
    r = run_optc(optc_bin, ["quant-report", src, "-p", "quant-w4(min_size=16)", "--json"], timeout=600)
    assert r.returncode == 0, describe_run(r)
    rep = json.loads(r.stdout)
    assert len(rep["layers"]) >= 8 and rep["full_error"] > 0
    out = outdir / "w4_exclude_auto.onnx"
    full = outdir / "w4_all.onnx"
    for dst, extra in ((out, ["--exclude-auto", "1"]), (full, [])):
        r = run_optc(optc_bin, ["opt", src, "-p", "quant-w4(min_size=16)", *extra, "-o", dst], timeout=600)
        assert r.returncode == 0, describe_run(r)
    assert ops(out)["MatMulNBits"] == ops(full)["MatMulNBits"] - 1
    names = {n.name for n in onnx.load(str(out)).graph.node if n.op_type in ("MatMul", "Gemm")}
    assert rep["layers"][0]["name"] in names
