"""The fusion passes fire where they should and keep outputs within their declared exactness.

Models built here contain each pattern; after `optc opt -p transpose,fuse-bn,fuse-norm,fuse-act,dce` the
op histogram must show the fused form, the output must load in onnxruntime, pass the onnx
checker and match the original within the passes' rounding (rtol 1e-4, atol 1e-5).
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest

from optc_helpers import describe_run, ort_session, run_optc
from synthetic_models import SYNTHETIC

PIPELINE = "transpose,fuse-bn,fuse-norm,fuse-act,dce"

# model -> (ops that must be gone, ops that must be present, max node count after)
EXPECT = {
    "conv_bn_nhwc": ({"BatchNormalization", "Transpose", "Sub", "Div", "Clip", "Add", "Mul"}, {"HardSwish", "Conv", "Gemm"}, 6),
    "gelu_erf": ({"Erf", "Div"}, {"Gelu"}, 3),
    "gelu_erf_opset20": ({"Erf", "Div"}, {"Gelu"}, 3),
    # cpu target (com.microsoft ops): the normalisation after the residual Add takes the Add
    # and the bias Add before it.
    "layernorm": ({"ReduceMean", "Pow", "Sqrt", "Reciprocal", "Div"}, {"LayerNormalization", "SkipLayerNormalization"}, 5),
    "layernorm_opset18": ({"ReduceMean", "Sqrt"}, {"LayerNormalization", "SkipLayerNormalization"}, 5),
    # below opset 17 only the Skip form exists: the other two stay decomposed.
    "layernorm_opset13": (set(), {"SkipLayerNormalization"}, 22),
    "rmsnorm": ({"ReduceMean", "Sqrt", "Pow", "Reciprocal"}, {"RMSNormalization", "SkipSimplifiedLayerNormalization"}, 3),
    "rmsnorm_opset17": (set(), {"SkipSimplifiedLayerNormalization"}, 9),
    "layernorm_nchw": ({"ReduceMean", "Sqrt", "Div"}, {"LayerNormalization", "Transpose"}, 3),
    "act_contrib": ({"Tanh", "Erf", "Sigmoid", "Relu", "Clip", "Conv"},
                    {"FastGelu", "BiasGelu", "QuickGelu", "FusedConv"}, 10),
    "act_contrib_opset20": ({"Tanh", "Erf", "Sigmoid", "Relu", "Clip", "Conv"},
                            {"FastGelu", "BiasGelu", "QuickGelu", "FusedConv"}, 10),
}


def test_skip_norm_not_emitted_where_life_predicts_it_slower(optc_bin, tmp_path: Path):
    """On the cpu target the residual Add stays apart from the LayerNormalization (onnxruntime's
    CPU SkipLayerNormalization is several times slower), and --explain says why."""
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    shape = [1, 128, 256]
    g = helper.make_graph(
        [helper.make_node("Add", ["x", "r"], ["s"], name="residual"),
         helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], name="ln", axis=-1, epsilon=1e-5)],
        "skip", [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "r")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(np.ones(256, np.float32), "gamma"),
         numpy_helper.from_array(np.zeros(256, np.float32), "beta")])
    src = tmp_path / "ln.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), src)
    for target, skip in (("cpu", False), ("gpu", True)):
        out = tmp_path / f"out_{target}.onnx"
        r = run_optc(optc_bin, ["opt", src, "-p", PIPELINE, "-o", out, "--explain", "--target", target])
        assert r.returncode == 0, describe_run(r)
        hist = ops(onnx.load(str(out)))
        assert ("SkipLayerNormalization" in hist) == skip, (target, dict(hist))
        if not skip:
            assert "residual Add kept apart" in r.stdout + r.stderr, r.stdout


def ops(m: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in m.graph.node)


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_fusion_fires_and_keeps_outputs(name, optc_bin, tmp_path: Path):
    src = tmp_path / f"{name}.onnx"
    onnx.save(SYNTHETIC[name](), src)
    out = tmp_path / "out.onnx"
    gone, present, max_nodes = EXPECT[name]
    # The Skip forms are emitted where LIFE predicts them faster than Add + norm: not on `cpu`
    # (onnxruntime's CPU kernels for them are slower, see its op_efficiency), on `gpu` yes.
    target = ["--target", "gpu"] if any(p.startswith("Skip") for p in present) else []
    r = run_optc(optc_bin, ["opt", src, "-p", PIPELINE, "-o", out, "--explain", *target])
    assert r.returncode == 0, describe_run(r)
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    hist = ops(m)
    assert not (gone & set(hist)), f"{name}: still has {gone & set(hist)}: {dict(hist)}\n{r.stdout}"
    assert present <= set(hist), f"{name}: lacks {present - set(hist)}: {dict(hist)}\n{r.stdout}"
    assert len(m.graph.node) <= max_nodes, f"{name}: {len(m.graph.node)} nodes: {dict(hist)}"
    s_in, s_out = ort_session(src, optimize=False), ort_session(out, optimize=False)
    rng = np.random.default_rng(3)
    feeds = {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32) * 3
             for i in s_in.get_inputs()}
    want = s_in.run(None, feeds)[0]
    got = s_out.run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert "fused" in r.stdout or "folded" in r.stdout, r.stdout


def test_no_contrib_ops_for_targets_without_them(optc_bin, tmp_path: Path):
    """On a target without com.microsoft ops only standard ops come out."""
    src = tmp_path / "m.onnx"
    onnx.save(SYNTHETIC["act_contrib_opset20"](), src)
    cpu = (Path(__file__).resolve().parents[2] / "cost" / "targets" / "cpu.toml").read_text()
    assert "contrib_ops = true" in cpu
    target = tmp_path / "plain.toml"
    target.write_text(cpu.replace("contrib_ops = true", "contrib_ops = false"))
    out = tmp_path / "out.onnx"
    r = run_optc(optc_bin, ["opt", src, "-p", PIPELINE, "--target", target, "-o", out])
    assert r.returncode == 0, describe_run(r)
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    assert all(n.domain in ("", "ai.onnx") for n in m.graph.node), ops(m)
    assert ops(m)["Gelu"] == 2 and "Tanh" not in ops(m), ops(m)


def test_explain_names_near_misses(optc_bin, tmp_path: Path):
    """A Conv followed by a Mul by a non-constant is not folded, and --explain says why."""
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "W")
    nodes = [helper.make_node("Conv", ["X", "W"], ["c"], name="conv"),
             helper.make_node("Mul", ["c", "S"], ["Y"], name="scale_by_input")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3, 4, 4]),
                                       helper.make_tensor_value_info("S", TensorProto.FLOAT, [1, 4, 1, 1])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 4, 4, 4])], [w])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), src)
    r = run_optc(optc_bin, ["opt", src, "-p", "fuse-bn", "-o", tmp_path / "o.onnx", "--explain"])
    assert r.returncode == 0, describe_run(r)
    assert "scale_by_input" in r.stdout and "not a float32 constant" in r.stdout, r.stdout
