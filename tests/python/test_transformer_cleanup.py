"""Shape chains, embedding Gathers and residual biases inside `-p O2`, on real transformer exports.

paraphrase-MiniLM-L3-v2 (model cache; skipped when absent) and the generated `bert`:
- `shape-fold` turns the exporter's Shape/Gather/Unsqueeze/Concat/Reshape/Where chains into
  `Shape` nodes: no Where, Equal, Concat or Reshape is left in MiniLM.
- `fold-gather` drops MiniLM's token-type Gather (its indices are a zero buffer), folds that row
  into the word-embedding table and turns the position Gather into a Slice of its table.
- `sink-bias` moves each sublayer's output bias into the LayerNormalization beta before it.
- `simplify` merges the pooling mask's two Unsqueezes.
The outputs must match the original in onnxruntime (graph optimisations off and on) for two
batch/sequence sizes, so the dynamic dims stay dynamic.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest

from optc_helpers import describe_run, ort_session, run_optc

MINILM = "paraphrase-MiniLM-L3-v2.onnx"


def _feeds(model: onnx.ModelProto, batch: int, seq: int) -> dict:
    rng = np.random.default_rng(seq)
    feeds = {}
    for vi in model.graph.input:
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.dim_value > 0 else (batch if i == 0 else seq) for i, d in enumerate(tt.shape.dim)]
        if "mask" in vi.name:
            m = np.ones(dims, np.int64)
            if batch > 1:
                m[1, dims[1] // 2:] = 0
            feeds[vi.name] = m
        elif "token_type" in vi.name:
            feeds[vi.name] = rng.integers(0, 2, dims).astype(np.int64)
        else:
            feeds[vi.name] = rng.integers(0, 100, dims).astype(np.int64)
    return feeds


def _check_outputs(src: Path, out: Path, label: str) -> None:
    before = onnx.load(str(src))
    for batch, seq in ((2, 12), (1, 37)):
        feeds = _feeds(before, batch, seq)
        for optimize in (False, True):
            want = ort_session(src, optimize).run(None, feeds)
            got = ort_session(out, optimize).run(None, feeds)
            for i, (a, b) in enumerate(zip(want, got)):
                assert a.shape == b.shape, (label, i, a.shape, b.shape)
                np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4,
                                           err_msg=f"{label} output {i} at {batch}x{seq} optimize={optimize}")


def test_minilm_shape_chains_embeddings_and_biases(optc_bin, models_dir, tmp_path):
    src = models_dir / MINILM
    if not src.is_file():
        pytest.skip(f"{MINILM} is not in the model cache")
    out = tmp_path / "o2.onnx"
    r = run_optc(optc_bin, ["opt", src, "-p", "O2", "-o", out, "--explain"])
    assert r.returncode == 0, describe_run(r)
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    hist = collections.Counter(n.op_type for n in m.graph.node)
    assert not {"Where", "Equal", "Concat", "Reshape", "ConstantOfShape"} & set(hist), dict(hist)
    assert hist["Gather"] == 1, dict(hist)
    text = r.stdout + r.stderr
    assert "computes Shape('input_ids')" in text, text
    assert "Unsqueeze then Unsqueeze" in text, text  # simplify: the mask's two Unsqueezes
    assert "token_type_embeddings/Gather': indices are all 0" in text, text
    assert "prefix of arange(512)" in text, text
    assert "into the table of Gather" in text, text
    assert text.count("moved bias Add") == 6, text  # 3 layers x 2 sublayers
    # The bias Adds are gone: per layer 2 residual Adds remain, nothing else adds.
    assert hist["Add"] == 1 + 2 * 3, dict(hist)
    _check_outputs(src, out, "minilm")


def test_bert_residual_biases_sink(optc_bin, tmp_path):
    src = tmp_path / "bert.onnx"
    r = run_optc(optc_bin, ["gen", "bert", "--seed", "0", "-o", src])
    assert r.returncode == 0, describe_run(r)
    out = tmp_path / "o2.onnx"
    r = run_optc(optc_bin, ["opt", src, "-p", "O2", "-o", out, "--explain"])
    assert r.returncode == 0, describe_run(r)
    onnx.checker.check_model(onnx.load(str(out)))
    assert (r.stdout + r.stderr).count("moved bias Add") == 4, describe_run(r)  # 2 layers x 2
    _check_outputs(src, out, "bert")
