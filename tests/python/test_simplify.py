"""`simplify` and `fuse-pad`: exact clean-up of data-movement chains, judged by onnxruntime.

One small model per pattern (built here with onnx.helper, opset 17 unless named): after
`optc opt -p fixpoint(simplify,fuse-pad,identity,dce)` the op histogram must show the pattern gone, the
model must pass the onnx checker, and onnxruntime (graph optimisations off) must give
bit-identical outputs to the original's, at two input sizes where a dim is symbolic.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optc_helpers import describe_run, ort_session, run_optc

PIPELINE = "fixpoint(simplify,fuse-pad,identity,dce)"
F = TensorProto.FLOAT


def i64(name, vals):
    return numpy_helper.from_array(np.array(vals, np.int64), name)


def model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def vi(name, shape, t=F):
    return helper.make_tensor_value_info(name, t, shape)


def out(rank, t=F):
    """The output `y`, of known rank and symbolic dims."""
    return helper.make_tensor_value_info("y", t, [f"d{i}" for i in range(rank)])


def pad_conv():
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="constant"),
             helper.make_node("Conv", ["p", "w"], ["y"], pads=[0, 1, 0, 1])]
    return model(nodes, [vi("x", ["n", 3, 8, 8])], [out(4)], [w, i64("pads", [0, 0, 1, 2, 0, 0, 1, 0])])


def pad_maxpool(wide=False):
    pads = [0, 0, 0, 3 if wide else 1, 0, 0, 2, 0]
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="edge"),
             helper.make_node("MaxPool", ["p"], ["y"], kernel_shape=[3, 3], strides=[2, 2])]
    return model(nodes, [vi("x", ["n", 3, 9, 8])], [out(4)], [i64("pads", pads)])


def reshape_chain():
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1),
             helper.make_node("Reshape", ["f", "s1"], ["r"]),
             helper.make_node("Unsqueeze", ["r", "ax"], ["u"]),
             helper.make_node("Squeeze", ["u", "ax"], ["q"]),
             helper.make_node("Relu", ["q"], ["y"])]
    return model(nodes, [vi("x", ["n", 2, 3, 4])], [out(3)], [i64("s1", [0, 6, 4]), i64("ax", [1])])


def unsqueeze_pair():
    nodes = [helper.make_node("Unsqueeze", ["x", "a1"], ["u"]),
             helper.make_node("Unsqueeze", ["u", "a2"], ["v"]),
             helper.make_node("Relu", ["v"], ["y"])]
    return model(nodes, [vi("x", ["n", 5])], [out(5)], [i64("a1", [1]), i64("a2", [-1, 0])])


def reshape_around_relu():
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["r"]),
             helper.make_node("Relu", ["r"], ["a"]),
             helper.make_node("Mul", ["a", "two"], ["b"]),
             helper.make_node("Reshape", ["b", "s2"], ["y"])]
    return model(nodes, [vi("x", ["n", 12])], [out(2)],
                 [i64("s1", [0, 3, 4]), i64("s2", [0, 12]), numpy_helper.from_array(np.array(2.0, np.float32), "two")])


def slice_slice():
    nodes = [helper.make_node("Slice", ["x", "s1", "e1", "a1"], ["t"]),
             helper.make_node("Slice", ["t", "s2", "e2", "a2"], ["y"])]
    return model(nodes, [vi("x", ["n", 10, 6])], [out(3)],
                 [i64("s1", [2, 1]), i64("e1", [9, 6]), i64("a1", [1, 2]), i64("s2", [1, 0]), i64("e2", [100, 3]), i64("a2", [1, 0])])


def split_concat():
    nodes = [helper.make_node("Split", ["x", "sizes"], ["a", "b", "c"], axis=1),
             helper.make_node("Concat", ["a", "b", "c"], ["j"], axis=-1),
             helper.make_node("Relu", ["j"], ["y"])]
    return model(nodes, [vi("x", ["n", 6])], [out(2)], [i64("sizes", [1, 2, 3])])


def nested_concat():
    nodes = [helper.make_node("Concat", ["x", "x"], ["i"], axis=1),
             helper.make_node("Concat", ["x", "i", "x"], ["y"], axis=1)]
    return model(nodes, [vi("x", ["n", 2])], [out(2)])


def cast_chain():
    nodes = [helper.make_node("Cast", ["x"], ["w"], to=TensorProto.INT64),
             helper.make_node("Cast", ["w"], ["y"], to=TensorProto.FLOAT)]
    return model(nodes, [vi("x", ["n", 4], TensorProto.INT32)], [out(2)])


# name -> (builder, ops that must be gone, op histogram after)
CASES = {
    "pad_conv": (pad_conv, {"Pad"}, {"Conv": 1}),
    "pad_maxpool": (pad_maxpool, {"Pad"}, {"MaxPool": 1}),
    "reshape_chain": (reshape_chain, {"Flatten", "Squeeze", "Unsqueeze"}, {"Reshape": 1, "Relu": 1}),
    "unsqueeze_pair": (unsqueeze_pair, set(), {"Unsqueeze": 1, "Relu": 1}),
    "slice_slice": (slice_slice, set(), {"Slice": 1}),
    "reshape_around_relu": (reshape_around_relu, {"Reshape"}, {"Relu": 1, "Mul": 1}),
    "split_concat": (split_concat, {"Split", "Concat"}, {"Relu": 1}),
    "nested_concat": (nested_concat, set(), {"Concat": 1}),
    "cast_chain": (cast_chain, set(), {"Cast": 1}),
}


def feeds(m: onnx.ModelProto, n: int) -> dict:
    rng = np.random.default_rng(n)
    out = {}
    for i in m.graph.input:
        tt = i.type.tensor_type
        dims = [d.dim_value if d.dim_value > 0 else n for d in tt.shape.dim]
        x = rng.standard_normal(dims) * 100
        out[i.name] = x.astype(np.int32) if tt.elem_type == TensorProto.INT32 else x.astype(np.float32)
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_simplify_pattern(name, optc_bin, tmp_path: Path):
    build, gone, after = CASES[name]
    src, out = tmp_path / f"{name}.onnx", tmp_path / "out.onnx"
    onnx.save(build(), src)
    r = run_optc(optc_bin, ["opt", src, "-p", PIPELINE, "-o", out, "--explain"])
    assert r.returncode == 0, describe_run(r)
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    hist = dict(collections.Counter(n.op_type for n in m.graph.node))
    assert not gone & set(hist), (name, hist, r.stdout)
    assert hist == after, (name, hist, r.stdout)
    for n in (1, 3):
        f = feeds(onnx.load(str(src)), n)
        want = ort_session(src, optimize=False).run(None, f)
        got = ort_session(out, optimize=False).run(None, f)
        for a, b in zip(want, got):
            assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape)
            np.testing.assert_array_equal(b, a, err_msg=name)


def test_pad_with_a_value_stays_and_explain_says_why(optc_bin, tmp_path: Path):
    m = pad_conv()
    m.graph.node[0].input.append("v")
    m.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), "v"))
    src = tmp_path / "m.onnx"
    onnx.save(m, src)
    r = run_optc(optc_bin, ["opt", src, "-p", PIPELINE, "-o", tmp_path / "o.onnx", "--explain"])
    assert r.returncode == 0, describe_run(r)
    assert "its pad value is not 0" in r.stdout, r.stdout
    assert [n.op_type for n in onnx.load(str(tmp_path / "o.onnx")).graph.node] == ["Pad", "Conv"]


def test_wide_edge_pad_stays_before_maxpool(optc_bin, tmp_path: Path):
    src = tmp_path / "m.onnx"
    onnx.save(pad_maxpool(wide=True), src)
    r = run_optc(optc_bin, ["opt", src, "-p", PIPELINE, "-o", tmp_path / "o.onnx", "--explain"])
    assert r.returncode == 0, describe_run(r)
    assert "wider than the pooling window" in r.stdout, r.stdout
    assert [n.op_type for n in onnx.load(str(tmp_path / "o.onnx")).graph.node] == ["Pad", "MaxPool"]


def test_open_nsfw_edge_pad_folds_into_its_maxpool(optc_bin, models_dir, tmp_path: Path):
    """A real model where fuse-pad fires: open_nsfw pads edge-wise before its first MaxPool."""
    src = models_dir / "open_nsfw.onnx"
    if not src.is_file():
        pytest.skip("open_nsfw.onnx is not in the model cache")
    out = tmp_path / "o2.onnx"
    r = run_optc(optc_bin, ["opt", src, "-p", "O2", "-o", out, "--explain"])
    assert r.returncode == 0, describe_run(r)
    assert "folded Pad '/Pad_1' into MaxPool '/MaxPool'" in r.stdout, r.stdout
    m = onnx.load(str(out))
    assert not any(n.op_type == "Pad" and n.output[0] in n2.input for n in m.graph.node for n2 in m.graph.node
                   if n2.op_type == "MaxPool")
    x = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)
    name = onnx.load(str(src), load_external_data=False).graph.input[0].name
    want = ort_session(src, optimize=False).run(None, {name: x})
    got = ort_session(out, optimize=False).run(None, {name: x})
    for a, b in zip(want, got):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
