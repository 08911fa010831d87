"""`fuse-attention` inside `-p O2`: BERT/ViT self-attention blocks become com.microsoft::Attention.

Models: paraphrase-MiniLM-L3-v2 from the model cache (skipped when absent) and the generated `bert`
and `vit` (`optc gen`). For each: the optimised model passes the onnx checker, every attention
block is fused (one Attention per Softmax of the original, no Softmax left), each fusion removes at
least ten nodes against O2 without the pass, and onnxruntime
gives the same outputs as on the original (rtol/atol 1e-4) with its own graph rewrites off and on.
The text inputs carry padding (zeros in the attention mask) so that the mask path is exercised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from optc_helpers import describe_run, ort_session, run_optc

MINILM = "paraphrase-MiniLM-L3-v2.onnx"
# O2 without the attention fusion, to measure what it removes.
O2_WITHOUT = "fixpoint(fold,identity,shape-fold,fold-gather,cse,transpose,fuse-bn,fuse-norm,fuse-act,fuse-qkv,sink-bias,dce)"


def _model(name: str, optc_bin, models_dir, d: Path) -> Path:
    if name == "minilm":
        p = models_dir / MINILM
        if not p.is_file():
            pytest.skip(f"{MINILM} is not in the model cache")
        return p
    p = d / f"{name}.onnx"
    r = run_optc(optc_bin, ["gen", name, "--seed", "0", "-o", p])
    assert r.returncode == 0, describe_run(r)
    return p


def _feeds(model: onnx.ModelProto, batch: int = 2, seq: int = 12) -> dict:
    rng = np.random.default_rng(0)
    feeds = {}
    for vi in model.graph.input:
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.dim_value > 0 else (batch if i == 0 else seq) for i, d in enumerate(tt.shape.dim)]
        if tt.elem_type == onnx.TensorProto.FLOAT:
            feeds[vi.name] = rng.standard_normal(dims).astype(np.float32)
        elif "mask" in vi.name:
            m = np.ones(dims, np.int64)
            m[1, dims[1] // 2:] = 0  # the second sequence is padded
            feeds[vi.name] = m
        elif "token_type" in vi.name:
            feeds[vi.name] = np.zeros(dims, np.int64)
        else:
            feeds[vi.name] = rng.integers(0, 100, dims).astype(np.int64)
    return feeds


@pytest.mark.parametrize("name", ["minilm", "bert", "vit"])
def test_o2_fuses_attention_and_matches_onnxruntime(optc_bin, models_dir, tmp_path, name):
    src = _model(name, optc_bin, models_dir, tmp_path)
    out = tmp_path / f"{name}_o2.onnx"
    r = run_optc(optc_bin, ["opt", src, "-p", "O2", "-o", out, "--explain"])
    assert r.returncode == 0, describe_run(r)
    before, after = onnx.load(str(src)), onnx.load(str(out))
    onnx.checker.check_model(after, full_check=False)

    softmax = sum(n.op_type == "Softmax" for n in before.graph.node)
    fused = [n for n in after.graph.node if n.domain == "com.microsoft" and n.op_type == "Attention"]
    assert softmax > 0 and len(fused) == softmax, (softmax, [n.op_type for n in after.graph.node])
    assert not any(n.op_type == "Softmax" for n in after.graph.node)
    assert "fused into com.microsoft::Attention" in r.stdout + r.stderr, describe_run(r)
    assert any(o.domain == "com.microsoft" for o in after.opset_import)
    # Each block loses at least its Reshapes, Transposes, score MatMuls, scaling and Softmax.
    base = tmp_path / f"{name}_o2_without.onnx"
    r = run_optc(optc_bin, ["opt", src, "-p", O2_WITHOUT, "-o", base])
    assert r.returncode == 0, describe_run(r)
    n_without = len(onnx.load(str(base)).graph.node)
    assert len(after.graph.node) <= n_without - 10 * softmax, (len(after.graph.node), n_without, softmax)

    feeds = _feeds(before)
    for optimize in (False, True):
        want = ort_session(src, optimize).run(None, feeds)
        got = ort_session(out, optimize).run(None, feeds)
        assert len(want) == len(got)
        for i, (a, b) in enumerate(zip(want, got)):
            assert a.shape == b.shape, (i, a.shape, b.shape)
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4, err_msg=f"{name} output {i} optimize={optimize}")


def test_fuse_attention_keeps_graphs_without_contrib_ops(optc_bin, tmp_path):
    """A target that runs no com.microsoft ops: the pass leaves the block and says why."""
    cpu = Path(__file__).resolve().parents[2] / "cost" / "targets" / "cpu.toml"
    text = cpu.read_text()
    assert "contrib_ops = true" in text
    target = tmp_path / "plain.toml"
    target.write_text(text.replace("contrib_ops = true", "contrib_ops = false"))
    src = _model("vit", optc_bin, None, tmp_path)
    out = tmp_path / "o.onnx"
    r = run_optc(optc_bin, ["opt", src, "-p", "fuse-attention", "--target", target, "-o", out, "--explain"])
    assert r.returncode == 0, describe_run(r)
    m = onnx.load(str(out))
    assert not any(n.op_type == "Attention" for n in m.graph.node)
    assert any(n.op_type == "Softmax" for n in m.graph.node)
    assert "does not run com.microsoft ops" in r.stdout + r.stderr, describe_run(r)
