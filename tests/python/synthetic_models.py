"""Small ONNX models built in the tests, so that part of the suite runs without
the model cache. Each builder returns an onnx.ModelProto."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_relu(opset: int = 17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])
    node = helper.make_node("Relu", ["X"], ["Y"], name="relu0")
    g = helper.make_graph([node], "tiny", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8, producer_name="optc-tests")


def histogram_model() -> onnx.ModelProto:
    """Known op histogram: Relu x2, Add x1, MatMul x1; inputs in_a, in_b."""
    a = helper.make_tensor_value_info("in_a", TensorProto.FLOAT, [2, 4])
    b = helper.make_tensor_value_info("in_b", TensorProto.FLOAT, [4, 4])
    y = helper.make_tensor_value_info("out_y", TensorProto.FLOAT, [2, 4])
    nodes = [
        helper.make_node("MatMul", ["in_a", "in_b"], ["mm"], name="mm0"),
        helper.make_node("Relu", ["mm"], ["r1"], name="relu0"),
        helper.make_node("Relu", ["in_a"], ["r2"], name="relu1"),
        helper.make_node("Add", ["r1", "r2"], ["out_y"], name="add0"),
    ]
    g = helper.make_graph(nodes, "hist", [a, b], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def weights_model(n: int = 128) -> onnx.ModelProto:
    """Y = X @ W + B with a big-ish W (n*n floats), for external-data tests."""
    rng = np.random.default_rng(7)
    w = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal((n,)).astype(np.float32), "B")
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, n])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n])
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["xw"], name="matmul0"),
        helper.make_node("Add", ["xw", "B"], ["Y"], name="add0"),
    ]
    g = helper.make_graph(nodes, "weights", [x], [y], initializer=[w, b])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _const_from_attr(out: str, attr: str, ref: str, kind) -> onnx.NodeProto:
    node = helper.make_node("Constant", [], [out])
    node.attribute.append(onnx.AttributeProto(name=attr, ref_attr_name=ref, type=kind))
    return node


def kitchen_sink() -> onnx.ModelProto:
    """Touches as many ModelProto fields as practical: metadata, doc strings,
    denotations, value_info, typed and raw initializers, a sparse initializer,
    string tensors, every attribute kind, an If with outer-scope references,
    a model-local function with an attribute reference, quantization annotations."""
    f = TensorProto.FLOAT
    x = helper.make_tensor_value_info("X", f, ["batch", 4], doc_string="the input")
    x.type.tensor_type.shape.dim[0].denotation = "DATA_BATCH"
    y = helper.make_tensor_value_info("Y", f, ["batch", 4])
    labels_out = helper.make_tensor_value_info("labels_out", TensorProto.STRING, [2])

    w = numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(4, 4) / 7, "W")  # raw_data
    b = helper.make_tensor("B", f, [4], [0.5, -0.0, float("inf"), 1e-30])  # float_data
    shape_c = helper.make_tensor("shape_c", TensorProto.INT64, [2], [-1, 4])  # int64_data
    labels = helper.make_tensor("labels", TensorProto.STRING, [2], ["cat", "\u010dog \u2603"])
    raw_strings = helper.make_tensor("raw_strings", TensorProto.STRING, [2], [b"\xff\x00", b""])
    zero = helper.make_tensor("zero", f, [], [0.0])
    unused = helper.make_tensor("unused_init", TensorProto.INT32, [3], [1, -2, 3])
    unused.doc_string = "kept by an empty pipeline"
    # (unused: onnx's shape inference rejects sparse tensors as Add inputs)
    sp_vals = helper.make_tensor("SP", f, [1], [1.25])
    sp_idx = helper.make_tensor("SP_idx", TensorProto.INT64, [1], [2])
    sparse = helper.make_sparse_tensor(sp_vals, sp_idx, [4])

    then_g = helper.make_graph(
        [helper.make_node("Relu", ["add"], ["then_out"], name="then_relu")],
        "then_branch", [], [helper.make_tensor_value_info("then_out", f, ["batch", 4])])
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["add"], ["else_out"], name="else_neg")],
        "else_branch", [], [helper.make_tensor_value_info("else_out", f, ["batch", 4])])

    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["mm"], name="matmul0", doc_string="x times w"),
        helper.make_node("Add", ["mm", "B"], ["add"], name="add0"),
        helper.make_node("ReduceSum", ["add"], ["sum"], name="sum0", keepdims=0),
        helper.make_node("Greater", ["sum", "zero"], ["cond"], name="gt0"),
        helper.make_node("If", ["cond"], ["if_out"], name="if0", then_branch=then_g, else_branch=else_g),
        helper.make_node("Reshape", ["if_out", "shape_c"], ["r"], name="reshape0"),
        helper.make_node("LeakyRelu", ["r"], ["lr"], name="leaky0", alpha=0.125),
        helper.make_node("Transpose", ["lr"], ["t"], name="transpose0", perm=[0, 1]),
        helper.make_node("Scale", ["t"], ["Y"], name="scale0", domain="local", alpha=2.0),
        helper.make_node("Constant", [], ["cfloats"], name="const_floats", value_floats=[1.5, -2.0]),
        helper.make_node("Constant", [], ["cstrings"], name="const_strings", value_strings=["a", "b"]),
        helper.make_node("Constant", [], ["ctensor"], name="const_tensor",
                         value=helper.make_tensor("ct", TensorProto.INT8, [2, 2], [1, -1, 127, -128])),
        helper.make_node("Identity", ["labels"], ["labels_out"], name="ident_labels"),
        helper.make_node("Cast", ["ctensor"], ["ccast"], name="cast0", to=TensorProto.FLOAT16),
        helper.make_node("ArgMax", ["add"], ["amax"], name="argmax0", axis=1, keepdims=1,
                         select_last_index=0),
    ]
    fn = helper.make_function(
        "local", "Scale", ["x"], ["y"],
        [
            _const_from_attr("c", "value_float", "alpha", onnx.AttributeProto.FLOAT),
            helper.make_node("Mul", ["x", "c"], ["y"]),
        ],
        opset_imports=[helper.make_opsetid("", 17)],
        attributes=["alpha"],
        doc_string="multiplies by alpha",
    )
    g = helper.make_graph(
        nodes, "kitchen_sink", [x], [y, labels_out],
        initializer=[w, b, shape_c, labels, zero, unused, raw_strings],
        doc_string="graph doc",
        value_info=[helper.make_tensor_value_info("mm", f, ["batch", 4]),
                    helper.make_tensor_value_info("amax", TensorProto.INT64, ["batch", 1])],
        sparse_initializer=[sparse],
    )
    qa = onnx.TensorAnnotation(tensor_name="mm")
    qa.quant_parameter_tensor_names.add(key="SCALE_TENSOR", value="W")
    g.quantization_annotation.append(qa)
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        ir_version=8, producer_name="optc-tests", producer_version="1.0", domain="ai.optc.test",
        model_version=7, doc_string="kitchen sink model", functions=[fn])
    helper.set_model_props(m, {"author": "optc tests", "license": "Apache-2.0"})
    return m


def _init(rng, name, shape, positive=False):
    a = rng.standard_normal(shape).astype(np.float32)
    if positive:
        a = np.abs(a) + 0.5
    return numpy_helper.from_array(a, name)


def conv_bn_nhwc() -> onnx.ModelProto:
    """Conv -> BatchNormalization -> a channels-last block (Transpose(NHWC) -> Add/Sub/Mul/Add
    per-channel constants -> Relu -> Transpose(NCHW)) -> HardSwish as x*Clip(x+3,0,6)/6 ->
    Conv -> Mul by a per-channel constant -> Gemm followed by a per-column Mul/Add."""
    rng = np.random.default_rng(11)
    c = 8
    inits = [
        _init(rng, "W1", [c, 3, 3, 3]), _init(rng, "B1", [c]),
        _init(rng, "bn_s", [c]), _init(rng, "bn_b", [c]), _init(rng, "bn_m", [c]),
        _init(rng, "bn_v", [c], positive=True),
        numpy_helper.from_array(np.array(3.0, np.float32), "three"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(6.0, np.float32), "six"),
        _init(rng, "k_add", [1, 1, 1, c]), _init(rng, "k_sub", [1, 1, 1, c]),
        _init(rng, "k_mul", [1, 1, 1, c]), _init(rng, "k_add2", [c]),
        _init(rng, "W2", [c, c, 1, 1]), _init(rng, "k_mul2", [c, 1, 1]),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
        _init(rng, "Wg", [c * 6 * 6, 5]), _init(rng, "Bg", [5]),
        _init(rng, "kg_mul", [5]), _init(rng, "kg_add", [1, 5]),
    ]
    nodes = [
        helper.make_node("Conv", ["X", "W1", "B1"], ["c1"], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn1"], name="bn1"),
        helper.make_node("Transpose", ["bn1"], ["t1"], perm=[0, 2, 3, 1], name="to_nhwc"),
        helper.make_node("Add", ["t1", "k_add"], ["a1"], name="nhwc_add"),
        helper.make_node("Sub", ["a1", "k_sub"], ["s1"], name="nhwc_sub"),
        helper.make_node("Mul", ["s1", "k_mul"], ["m1"], name="nhwc_mul"),
        helper.make_node("Add", ["m1", "k_add2"], ["a2"], name="nhwc_add2"),
        helper.make_node("Relu", ["a2"], ["r1"], name="nhwc_relu"),
        helper.make_node("Transpose", ["r1"], ["t2"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Add", ["t2", "three"], ["hs_a"], name="hs_add"),
        helper.make_node("Clip", ["hs_a", "zero", "six"], ["hs_c"], name="hs_clip"),
        helper.make_node("Mul", ["t2", "hs_c"], ["hs_m"], name="hs_mul"),
        helper.make_node("Div", ["hs_m", "six"], ["hs"], name="hs_div"),
        helper.make_node("Conv", ["hs", "W2"], ["c2"], name="conv2"),
        helper.make_node("Mul", ["c2", "k_mul2"], ["c2m"], name="conv2_mul"),
        helper.make_node("Reshape", ["c2m", "flat"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "Wg", "Bg"], ["g"], name="gemm"),
        helper.make_node("Mul", ["g", "kg_mul"], ["gm"], name="gemm_mul"),
        helper.make_node("Add", ["gm", "kg_add"], ["Y"], name="gemm_add"),
    ]
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3, 8, 8])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 5])
    g = helper.make_graph(nodes, "conv_bn_nhwc", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def gelu_erf(opset: int = 17) -> onnx.ModelProto:
    """MatMul -> GELU in both exported orderings (x*0.5*(1+erf(x/sqrt2)))."""
    rng = np.random.default_rng(12)
    inits = [
        _init(rng, "W", [16, 16]),
        numpy_helper.from_array(np.array(1.4142135381698608, np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["h"], name="mm"),
        # form 1: (x * (1 + erf(x / sqrt2))) * 0.5
        helper.make_node("Div", ["h", "sqrt2"], ["d1"], name="g1_div"),
        helper.make_node("Erf", ["d1"], ["e1"], name="g1_erf"),
        helper.make_node("Add", ["e1", "one"], ["p1"], name="g1_add"),
        helper.make_node("Mul", ["h", "p1"], ["m1"], name="g1_mul"),
        helper.make_node("Mul", ["m1", "half"], ["y1"], name="g1_half"),
        # form 2: (x * 0.5) * (1 + erf(x / sqrt2))
        helper.make_node("Div", ["y1", "sqrt2"], ["d2"], name="g2_div"),
        helper.make_node("Erf", ["d2"], ["e2"], name="g2_erf"),
        helper.make_node("Add", ["one", "e2"], ["p2"], name="g2_add"),
        helper.make_node("Mul", ["y1", "half"], ["hx"], name="g2_half"),
        helper.make_node("Mul", ["hx", "p2"], ["Y"], name="g2_mul"),
    ]
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [3, 16])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [3, 16])
    g = helper.make_graph(nodes, "gelu", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


SYNTHETIC = {
    "tiny_relu": tiny_relu,
    "histogram": histogram_model,
    "weights": weights_model,
    "kitchen_sink": kitchen_sink,
    "conv_bn_nhwc": conv_bn_nhwc,
    "gelu_erf": gelu_erf,
    "gelu_erf_opset20": lambda: gelu_erf(20),
}
