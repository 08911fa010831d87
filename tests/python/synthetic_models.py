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


def _ln_nodes(pfx: str, x: str, y: str, axes: list[int], opset: int, gamma: str | None, beta: str | None,
              square: str = "Pow", recip: bool = False) -> list:
    """A LayerNorm over `axes` written the way exporters decompose it."""
    h = helper
    kw = {"axes": axes} if opset < 18 else {}
    ax_in = [] if opset < 18 else [pfx + "axes"]
    nodes = [
        h.make_node("ReduceMean", [x] + ax_in, [pfx + "mean"], name=pfx + "mean", **kw),
        h.make_node("Sub", [x, pfx + "mean"], [pfx + "d"], name=pfx + "sub"),
        (h.make_node("Pow", [pfx + "d", "two"], [pfx + "sq"], name=pfx + "pow") if square == "Pow"
         else h.make_node("Mul", [pfx + "d", pfx + "d"], [pfx + "sq"], name=pfx + "sq")),
        h.make_node("ReduceMean", [pfx + "sq"] + ax_in, [pfx + "var"], name=pfx + "var", **kw),
        h.make_node("Add", [pfx + "var", "eps"], [pfx + "ve"], name=pfx + "add_eps"),
        h.make_node("Sqrt", [pfx + "ve"], [pfx + "std"], name=pfx + "sqrt"),
    ]
    n = pfx + "n"
    if recip:
        nodes += [h.make_node("Reciprocal", [pfx + "std"], [pfx + "r"], name=pfx + "recip"),
                  h.make_node("Mul", [pfx + "d", pfx + "r"], [n], name=pfx + "div")]
    else:
        nodes.append(h.make_node("Div", [pfx + "d", pfx + "std"], [n], name=pfx + "div"))
    cur = n
    if gamma:
        nodes.append(h.make_node("Mul", [cur, gamma], [pfx + "g" if beta else y], name=pfx + "gamma"))
        cur = pfx + "g"
    if beta:
        nodes.append(h.make_node("Add", [cur, beta], [y], name=pfx + "beta"))
    if not gamma and not beta:
        nodes[-1].output[0] = y
    return nodes


def layernorm(opset: int = 17) -> onnx.ModelProto:
    """Decomposed LayerNorms: one on the input over the last axis (Pow, Div), one over the last
    two axes (Mul(d, d), Reciprocal), and one after a residual Add whose sum is read again
    (the Skip form on targets with com.microsoft ops), with the bias Add before it."""
    rng = np.random.default_rng(13)
    inits = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
        _init(rng, "g1", [16]), _init(rng, "b1", [16]), _init(rng, "g2", [1, 5, 16]), _init(rng, "b2", [16]),
        _init(rng, "g3", [16]), _init(rng, "b3", [16]), _init(rng, "W", [16, 16]), _init(rng, "bias", [16]),
        numpy_helper.from_array(np.array([-1], np.int64), "l1_axes"),
        numpy_helper.from_array(np.array([-2, -1], np.int64), "l2_axes"),
        numpy_helper.from_array(np.array([2], np.int64), "l3_axes"),
    ]
    nodes = _ln_nodes("l1_", "X", "y1", [-1], opset, "g1", "b1")
    nodes += _ln_nodes("l2_", "y1", "y2", [-2, -1], opset, "g2", "b2", square="Mul", recip=True)
    nodes += [
        helper.make_node("MatMul", ["y2", "W"], ["mm"], name="dense"),
        helper.make_node("Add", ["mm", "bias"], ["mb"], name="dense_bias"),
        helper.make_node("Add", ["mb", "R"], ["res"], name="residual"),
    ]
    nodes += _ln_nodes("l3_", "res", "y3", [2], opset, "g3", "b3")
    nodes.append(helper.make_node("Add", ["y3", "res"], ["Y"], name="reuse_sum"))
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 5, 16])
    r = helper.make_tensor_value_info("R", TensorProto.FLOAT, [2, 5, 16])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 5, 16])
    g = helper.make_graph(nodes, "layernorm", [x, r], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def rmsnorm(opset: int = 23) -> onnx.ModelProto:
    """LLaMA-style RMSNorms: weight * (x * Reciprocal(Sqrt(mean(x^2) + eps))), one on the
    input and one after a residual Add (x / Sqrt(...) form)."""
    rng = np.random.default_rng(14)
    kw = {"axes": [-1]} if opset < 18 else {}
    ax_in = [] if opset < 18 else ["axes"]
    inits = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
        numpy_helper.from_array(np.array([-1], np.int64), "axes"),
        _init(rng, "w1", [16]), _init(rng, "w2", [16]),
    ]
    nodes = [
        helper.make_node("Pow", ["X", "two"], ["sq1"], name="r1_pow"),
        helper.make_node("ReduceMean", ["sq1"] + ax_in, ["ms1"], name="r1_mean", **kw),
        helper.make_node("Add", ["ms1", "eps"], ["e1"], name="r1_eps"),
        helper.make_node("Sqrt", ["e1"], ["s1"], name="r1_sqrt"),
        helper.make_node("Reciprocal", ["s1"], ["i1"], name="r1_rsqrt"),
        helper.make_node("Mul", ["X", "i1"], ["n1"], name="r1_mul"),
        helper.make_node("Mul", ["w1", "n1"], ["y1"], name="r1_weight"),
        helper.make_node("Add", ["y1", "R"], ["h"], name="residual"),
        helper.make_node("Mul", ["h", "h"], ["sq2"], name="r2_sq"),
        helper.make_node("ReduceMean", ["sq2"] + ax_in, ["ms2"], name="r2_mean", **kw),
        helper.make_node("Add", ["ms2", "eps"], ["e2"], name="r2_eps"),
        helper.make_node("Sqrt", ["e2"], ["s2"], name="r2_sqrt"),
        helper.make_node("Div", ["h", "s2"], ["n2"], name="r2_div"),
        helper.make_node("Mul", ["n2", "w2"], ["y2"], name="r2_weight"),
        helper.make_node("Add", ["y2", "h"], ["Y"], name="reuse_sum"),
    ]
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 5, 16])
    r = helper.make_tensor_value_info("R", TensorProto.FLOAT, [2, 5, 16])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 5, 16])
    g = helper.make_graph(nodes, "rmsnorm", [x, r], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10 if opset >= 21 else 8)


def act_contrib(opset: int = 17) -> onnx.ModelProto:
    """MatMul + bias -> GELU (tanh form, x*x*x cube) ; MatMul + bias -> GELU (erf form) ;
    SiLU x*Sigmoid(x) ; QuickGELU x*Sigmoid(1.702x) ; Conv -> Relu and Conv -> Clip(0, 6)."""
    rng = np.random.default_rng(15)
    f = lambda v, n: numpy_helper.from_array(np.array(v, np.float32), n)  # noqa: E731
    inits = [
        _init(rng, "W1", [16, 16]), _init(rng, "b1", [16]), _init(rng, "W2", [16, 16]), _init(rng, "b2", [16]),
        f(0.5, "half"), f(1.0, "one"), f(0.044715, "k3"), f(0.7978845608028654, "s2pi"),
        f(1.4142135381698608, "sqrt2"), f(1.702, "qa"), f(0.0, "zero"), f(6.0, "six"),
        _init(rng, "Wc", [4, 1, 3, 3]), _init(rng, "Bc", [4]), _init(rng, "Wc2", [4, 4, 1, 1]),
        numpy_helper.from_array(np.array([1, 3, 16], np.int64), "to3d"),
        numpy_helper.from_array(np.array([3, 4, 2, 2], np.int64), "to4d"),
    ]
    h = helper.make_node
    nodes = [
        h("MatMul", ["X", "W1"], ["m1"], name="fc1"), h("Add", ["m1", "b1"], ["x1"], name="fc1_bias"),
        # tanh GELU: (x*0.5) * (1 + tanh(s * (x + k * x*x*x)))
        h("Mul", ["x1", "x1"], ["x1sq"], name="t_sq"), h("Mul", ["x1sq", "x1"], ["x1cu"], name="t_cube"),
        h("Mul", ["x1cu", "k3"], ["kc"], name="t_k"), h("Add", ["x1", "kc"], ["in"], name="t_add"),
        h("Mul", ["in", "s2pi"], ["sc"], name="t_scale"), h("Tanh", ["sc"], ["th"], name="t_tanh"),
        h("Add", ["th", "one"], ["op"], name="t_one"), h("Mul", ["x1", "half"], ["xh"], name="t_half"),
        h("Mul", ["xh", "op"], ["g1"], name="t_mul"),
        h("MatMul", ["g1", "W2"], ["m2"], name="fc2"), h("Add", ["b2", "m2"], ["x2"], name="fc2_bias"),
        # erf GELU
        h("Div", ["x2", "sqrt2"], ["d"], name="e_div"), h("Erf", ["d"], ["e"], name="e_erf"),
        h("Add", ["e", "one"], ["ep"], name="e_one"), h("Mul", ["x2", "ep"], ["em"], name="e_mul"),
        h("Mul", ["em", "half"], ["g2"], name="e_half"),
        # SiLU, QuickGELU
        h("Sigmoid", ["g2"], ["sg"], name="silu_sig"), h("Mul", ["g2", "sg"], ["s1"], name="silu_mul"),
        h("Mul", ["s1", "qa"], ["qx"], name="q_scale"), h("Sigmoid", ["qx"], ["qs"], name="q_sig"),
        h("Mul", ["qs", "s1"], ["q1"], name="q_mul"),
        # Conv + Relu, Conv + Clip(0, 6)
        h("Reshape", ["q1", "to4d"], ["img"], name="to_img"),
        h("Conv", ["img", "Wc", "Bc"], ["c1"], name="conv_dw", group=4, pads=[1, 1, 1, 1]),
        h("Relu", ["c1"], ["r1"], name="conv_relu"),
        h("Conv", ["r1", "Wc2"], ["c2"], name="conv_pw"), h("Clip", ["c2", "zero", "six"], ["r2"], name="conv_relu6"),
        h("Reshape", ["r2", "to3d"], ["Y"], name="to_3d"),
    ]
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3, 16])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 3, 16])
    g = helper.make_graph(nodes, "act_contrib", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def layernorm_nchw() -> onnx.ModelProto:
    """A channels-first LayerNorm (mean over axis 1 of NCHW, gamma/beta [C, 1, 1]), as ConvNeXt
    stems and downsampling layers write it."""
    rng = np.random.default_rng(16)
    inits = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
        _init(rng, "g", [8, 1, 1]), _init(rng, "b", [8, 1, 1]),
    ]
    nodes = _ln_nodes("cf_", "X", "Y", [1], 17, "g", "b")
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 8, 4, 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 8, 4, 4])
    g = helper.make_graph(nodes, "layernorm_nchw", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


SYNTHETIC = {
    "tiny_relu": tiny_relu,
    "histogram": histogram_model,
    "weights": weights_model,
    "kitchen_sink": kitchen_sink,
    "conv_bn_nhwc": conv_bn_nhwc,
    "gelu_erf": gelu_erf,
    "gelu_erf_opset20": lambda: gelu_erf(20),
    "layernorm": layernorm,
    "layernorm_opset18": lambda: layernorm(18),
    "layernorm_opset13": lambda: layernorm(13),
    "rmsnorm": rmsnorm,
    "rmsnorm_opset17": lambda: rmsnorm(17),
    "layernorm_nchw": layernorm_nchw,
    "act_contrib": act_contrib,
    "act_contrib_opset20": lambda: act_contrib(20),
}
