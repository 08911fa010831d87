#!/usr/bin/env python3
"""Benchmark D: LIFE (optc's analytical latency model) predicted versus measured latency.

    python bench/life.py --optc target/release/optc --models-dir ~/.cache/optc/models \
        --out-dir bench/out/life [--seed 0] [--budget-s 1.0] [--report FILE.md]

1. Evaluation models: the ONNX models of the model cache at fixed input shapes (those of
   bench/ort_run.py SHAPES), plus seeded generated models of three families built here with
   onnx.helper: MLPs (Gemm / MatMul+Add + Relu stacks), small CNNs (Conv+Relu+MaxPool) and
   transformer encoder blocks (MatMul attention, LayerNormalization, GELU via Erf).
2. Each is measured with onnxruntime CPU: intra_op = inter_op = 1 thread, ORT_SEQUENTIAL,
   ORT_ENABLE_ALL; one warm-up, then N timed sess.run calls (N adaptive, about --budget-s per
   model, spread over --rounds interleaved rounds over all models, calibration micro-benchmarks
   included, so that a change in machine load hits them alike); the fastest run is reported (see
   `low`: other tenants of the machine evict cached weights at times; the medians are kept in the
   JSON).  With one intra-op thread ORT runs the graph on the calling
   thread, so the per-run thread CPU time (time.thread_time) is recorded beside wall time; it is
   what the tables use (it is not inflated by other processes taking the core; the wall medians
   are kept in the JSON and shown beside).
3. Calibration: micro-benchmarks that are NOT evaluation models (a large MatMul and Gemm:
   compute-bound; large elementwise Add / Relu: memory-bound; a chain of 400 tiny Add/Mul ops:
   overhead) are measured the same way; their ops / bytes / launch counts come from
   `optc cost --json` on the micro models themselves, and eff_compute, eff_memory and
   launch_overhead_us of the built-in cpu target are fitted (closed form, iterated: overhead from
   the chain, then eff_memory = sum(bytes) / (BW * sum(memory-bound time)), eff_compute likewise);
   TOPS and bandwidth stay as `optc targets --show cpu` has them.  Then `op_efficiency` factors
   against that roofline: onnxruntime's SkipLayerNormalization (Add + LayerNormalization), its
   4-bit MatMulNBits, and one elementwise kernel each of Erf, Tanh, Sigmoid, Softmax, Gelu and
   BiasGelu on [512, 2048] (kind "op:KEY").  The result is written to
   OUT_DIR/cpu-calibrated.toml and checked with `optc cost ... --target` that file.
4. Prediction: `optc cost MODEL --json --target OUT_DIR/cpu-calibrated.toml --dim ...` on each
   evaluation model (and the built-in `cpu` for comparison).  The cache models are given to optc
   as *shape-annotated* copies (inputs fixed, every intermediate value's shape recorded in
   value_info from an onnxruntime run), because optc's cost model reads shapes from the model and
   does not infer most of them; the same figures on the original files with --dim alone are
   reported too.
5. Statistics: per model error % = (predicted - measured) / measured; median |error| and the
   Spearman rank correlation over all models (bars: <= 20 % and >= 0.9); per family; and per op
   type, onnxruntime's profiler (5 profiled runs, ORT_ENABLE_ALL, node op types after fusion)
   against LIFE's per-op-type prediction.

Writes OUT_DIR/life.json (raw figures), OUT_DIR/models/*.onnx, OUT_DIR/cpu-calibrated.toml and,
with --report, a standalone markdown report.  The last stdout line is {"json": PATH}.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from ort_run import make_feeds  # noqa: E402  (shared with benchmark C)

OPSET = 17
MED_BAR = 20.0  # median |error| %, at most
RHO_BAR = 0.9  # Spearman, at least
CACHE_ORDER = ["open_nsfw", "paraphrase-MiniLM-L3-v2", "ch_PP-OCRv4_det_infer", "ch_PP-OCRv4_rec_infer",
               "ch_ppocr_mobile_v2.0_cls_infer", "silero_vad_op18_ifless", "magika_standard_v3_3",
               "smart-turn-v3.2-cpu"]
SKIP_CACHE = {"silero_vad"}  # the If/Loop original; the op18 If-less export stands in for it


def log(msg: str) -> None:
    print(f"[life {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- model generation

def _h():
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    return onnx, TensorProto, helper, numpy_helper


class G:
    """A tiny graph builder over onnx.helper."""

    def __init__(self, name: str, seed: int):
        self.onnx, self.TP, self.h, self.nh = _h()
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.k = 0

    def uid(self, p: str) -> str:
        self.k += 1
        return f"{p}_{self.k}"

    def input(self, name, shape, dt=None):
        self.inputs.append(self.h.make_tensor_value_info(name, dt or self.TP.FLOAT, shape))
        return name

    def const(self, arr, p="w"):
        n = self.uid(p)
        self.inits.append(self.nh.from_array(np.asarray(arr), n))
        return n

    def weight(self, shape, scale=None, p="w"):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 2 else shape[0]
        s = scale if scale is not None else 1.0 / math.sqrt(max(1, fan_in))
        return self.const((self.rng.standard_normal(shape) * s).astype(np.float32), p)

    def op(self, t, ins, n_out=1, **attrs):
        outs = [self.uid(t.lower()) for _ in range(n_out)]
        self.nodes.append(self.h.make_node(t, ins, outs, name=self.uid(t), **attrs))
        return outs[0] if n_out == 1 else outs

    def model(self, out, out_shape=None):
        self.outputs.append(self.h.make_tensor_value_info(out, self.TP.FLOAT, out_shape))
        g = self.h.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)
        m = self.h.make_model(g, opset_imports=[self.h.make_opsetid("", OPSET)], producer_name="optc-bench-life")
        m.ir_version = 8
        m = self.onnx.shape_inference.infer_shapes(m, strict_mode=True)
        self.onnx.checker.check_model(m)
        return m


def gen_mlp(width: int, batch: int, layers: int, gemm: bool, seed: int):
    g = G(f"mlp_w{width}_b{batch}", seed)
    x = g.input("x", [batch, width])
    for i in range(layers):
        w, b = g.weight([width, width]), g.const(np.zeros(width, np.float32) + 0.01, "b")
        x = g.op("Gemm", [x, w, b]) if gemm else g.op("Add", [g.op("MatMul", [x, w]), b])
        if i < layers - 1:
            x = g.op("Relu", [x])
    return g.model(x, [batch, width])


def gen_cnn(ch: int, hw: int, seed: int):
    g = G(f"cnn_c{ch}_{hw}", seed)
    x = g.input("x", [1, 3, hw, hw])

    def conv(x, cin, cout):
        y = g.op("Conv", [x, g.weight([cout, cin, 3, 3]), g.const(np.zeros(cout, np.float32), "b")],
                 kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        return g.op("Relu", [y])

    x = conv(x, 3, ch)
    x = conv(x, ch, ch)
    x = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = conv(x, ch, 2 * ch)
    x = conv(x, 2 * ch, 2 * ch)
    x = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = g.op("GlobalAveragePool", [x])
    x = g.op("Flatten", [x])
    x = g.op("Gemm", [x, g.weight([2 * ch, 10]), g.const(np.zeros(10, np.float32), "b")])
    return g.model(x, [1, 10])


def gen_transformer(hidden: int, heads: int, seq: int, layers: int, seed: int):
    g = G(f"xfmr_h{hidden}_s{seq}", seed)
    d, dh = hidden, hidden // heads
    x = g.input("x", [1, seq, d])
    shp_heads = g.const(np.array([1, seq, heads, dh], np.int64), "shape")
    shp_back = g.const(np.array([1, seq, d], np.int64), "shape")
    split = g.const(np.array([d, d, d], np.int64), "split")
    scale = g.const(np.array(1.0 / math.sqrt(dh), np.float32), "scale")
    half, one = g.const(np.array(0.5, np.float32), "c"), g.const(np.array(1.0, np.float32), "c")
    rsqrt2 = g.const(np.array(1.0 / math.sqrt(2.0), np.float32), "c")

    def ln(x):
        return g.op("LayerNormalization", [x, g.const(np.ones(d, np.float32), "gamma"),
                                           g.const(np.zeros(d, np.float32), "beta")], axis=-1, epsilon=1e-5)

    def lin(x, cin, cout):
        return g.op("Add", [g.op("MatMul", [x, g.weight([cin, cout])]), g.const(np.zeros(cout, np.float32), "b")])

    for _ in range(layers):
        h = ln(x)
        q, k, v = g.op("Split", [lin(h, d, 3 * d), split], n_out=3, axis=-1)
        q = g.op("Transpose", [g.op("Reshape", [q, shp_heads])], perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [k, shp_heads])], perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [v, shp_heads])], perm=[0, 2, 1, 3])
        s = g.op("Softmax", [g.op("Mul", [g.op("MatMul", [q, k]), scale])], axis=-1)
        o = g.op("Transpose", [g.op("MatMul", [s, v])], perm=[0, 2, 1, 3])
        o = lin(g.op("Reshape", [o, shp_back]), d, d)
        x = g.op("Add", [x, o])
        h = lin(ln(x), d, 4 * d)
        h = g.op("Mul", [g.op("Mul", [h, half]), g.op("Add", [g.op("Erf", [g.op("Mul", [h, rsqrt2])]), one])])
        x = g.op("Add", [x, lin(h, 4 * d, d)])
    return g.model(x, [1, seq, d])


def generated_models(seed: int):
    """(stem, family, builder) of the evaluation models generated here."""
    return [
        ("mlp_w256_b64_x4", "MLP", lambda: gen_mlp(256, 64, 4, False, seed + 1)),
        ("mlp_w1024_b1_x8", "MLP", lambda: gen_mlp(1024, 1, 8, False, seed + 2)),
        ("mlp_w1024_b32_x4", "MLP", lambda: gen_mlp(1024, 32, 4, True, seed + 3)),
        ("mlp_w4096_b16_x3", "MLP", lambda: gen_mlp(4096, 16, 3, True, seed + 4)),
        ("cnn_c16_224", "CNN", lambda: gen_cnn(16, 224, seed + 5)),
        ("cnn_c32_112", "CNN", lambda: gen_cnn(32, 112, seed + 6)),
        ("cnn_c64_56", "CNN", lambda: gen_cnn(64, 56, seed + 7)),
        ("cnn_c128_56", "CNN", lambda: gen_cnn(128, 56, seed + 8)),
        ("xfmr_h256_s128_x2", "transformer", lambda: gen_transformer(256, 4, 128, 2, seed + 9)),
        ("xfmr_h512_s128_x2", "transformer", lambda: gen_transformer(512, 8, 128, 2, seed + 10)),
        ("xfmr_h768_s128_x2", "transformer", lambda: gen_transformer(768, 12, 128, 2, seed + 11)),
    ]


def micro_models(seed: int):
    """Calibration micro-benchmarks: (stem, kind, builder).  None of them is an evaluation model."""

    def matmul(m, k, n, gemm, s):
        g = G(f"micro_mm_{m}x{k}x{n}", s)
        x = g.input("x", [m, k])
        w = g.weight([k, n])
        y = g.op("Gemm", [x, w]) if gemm else g.op("MatMul", [x, w])
        return g.model(y, [m, n])

    def mm_chain(m, k, layers, s):
        # `layers` f32 MatMuls [m, k] x [k, k], one after another: with few rows (m) the runtime's kernel takes a
        # pass over each weight beyond its multiply-accumulates (the weight pass).
        g = G(f"micro_wstream_{m}x{k}x{layers}", s)
        y = g.input("x", [m, k])
        for _ in range(layers):
            y = g.op("MatMul", [y, g.weight([k, k])])
        return g.model(y, [m, k])

    def eltwise(kind, n, s):
        g = G(f"micro_{kind}_{n}", s)
        a = g.input("a", [n])
        if kind == "add":
            y = g.op("Add", [a, g.input("b", [n])])
        else:
            y = g.op("Relu", [a])
        return g.model(y, [n])

    def chain(n_ops, width, s):
        g = G(f"micro_chain_{n_ops}", s)
        x = g.input("x", [1, width])
        c = g.input("c", [1, width])
        for i in range(n_ops):
            x = g.op("Add" if i % 2 == 0 else "Mul", [x, c])
        return g.model(x, [1, width])

    def add_ln(rows, width, s):
        # onnxruntime's optimiser turns Add + LayerNormalization into SkipLayerNormalization.
        g = G(f"micro_addln_{rows}x{width}", s)
        x = g.input("x", [1, rows, width])
        r = g.input("r", [1, rows, width])
        y = g.op("LayerNormalization", [g.op("Add", [x, r]), g.const(np.ones(width, np.float32), "gamma"),
                                        g.const(np.zeros(width, np.float32), "beta")], axis=-1, epsilon=1e-5)
        return g.model(y, [1, rows, width])

    def nbits(m, k, n, s):
        # com.microsoft::MatMulNBits, 4-bit blocks of 128 (what `quant-w4` emits for the cpu target).
        g = G(f"micro_nbits_{m}x{k}x{n}", s)
        x = g.input("x", [m, k])
        bs = 128
        packed = g.const(g.rng.integers(0, 256, size=(n, k // bs, bs // 2), dtype=np.uint8), "wq")
        scales = g.const((g.rng.random(n * (k // bs)) * 0.01 + 0.001).astype(np.float32), "ws")
        y = g.uid("y")
        g.nodes.append(g.h.make_node("MatMulNBits", [x, packed, scales], [y], name=g.uid("MatMulNBits"),
                                     domain="com.microsoft", K=k, N=n, bits=4, block_size=bs))
        g.outputs.append(g.h.make_tensor_value_info(y, g.TP.FLOAT, [m, n]))
        gr = g.h.make_graph(g.nodes, g.name, g.inputs, g.outputs, g.inits)
        return g.h.make_model(gr, opset_imports=[g.h.make_opsetid("", OPSET), g.h.make_opsetid("com.microsoft", 1)],
                              producer_name="optc-bench-life")

    def unary(op, rows, width, s, domain=""):
        # One elementwise kernel whose per-element work is far from an Add's (transcendentals, row
        # reductions): its `op_efficiency` against the fitted roofline.
        # Transpose: the attention layout change [1, rows, 16, width/16] -> [1, 16, rows, width/16].
        g = G(f"micro_{op.lower()}_{rows}x{width}", s)
        shape = [1, rows, 16, width // 16] if op == "Transpose" else [rows, width]
        x = g.input("x", shape)
        ins = [x]
        out_shape = shape
        if op == "BiasGelu":
            ins.append(g.const((g.rng.standard_normal(width) * 0.1).astype(np.float32), "bias"))
        if op == "LayerNormalization":
            ins += [g.const(np.ones(width, np.float32), "gamma"), g.const(np.zeros(width, np.float32), "beta")]
        attrs = {"axis": -1} if op in ("Softmax", "LayerNormalization") else {}
        if op == "Transpose":
            attrs = {"perm": [0, 2, 1, 3]}
            out_shape = [1, 16, rows, width // 16]
        y = g.uid("y")
        g.nodes.append(g.h.make_node(op, ins, [y], name=g.uid(op), domain=domain, **attrs))
        g.outputs.append(g.h.make_tensor_value_info(y, g.TP.FLOAT, out_shape))
        gr = g.h.make_graph(g.nodes, g.name, g.inputs, g.outputs, g.inits)
        opsets = [g.h.make_opsetid("", OPSET)] + ([g.h.make_opsetid(domain, 1)] if domain else [])
        return g.h.make_model(gr, opset_imports=opsets, producer_name="optc-bench-life")

    # op_efficiency micro-benchmarks: kind "op:KEY", KEY as in the target's [op_efficiency]; 1M elements
    # (8 MB of traffic: in the cpu target's cache). Besides the transcendentals and row reductions, the
    # LayerNormalization kernel and the strided copy of an attention-layout Transpose.
    ms = "com.microsoft"
    opeff = [("Erf", ""), ("Tanh", ""), ("Sigmoid", ""), ("Softmax", ""), ("Gelu", ms), ("BiasGelu", ms),
             ("LayerNormalization", ""), ("Transpose", "")]
    return [
        *[(f"micro_{op.lower()}_512x2048", f"op:{dom + '::' if dom else ''}{op}",
           (lambda op=op, dom=dom, i=i: unary(op, 512, 2048, seed + 110 + i, dom)))
          for i, (op, dom) in enumerate(opeff)],
        ("micro_addln_512x768", "skipnorm", lambda: add_ln(512, 768, seed + 107)),
        ("micro_nbits_256x2048x2048", "nbits", lambda: nbits(256, 2048, 2048, seed + 108)),
        # The weight pass: MatMulNBits with few rows (unpacking dominates) and one row (the register-unpacking
        # kernel); f32 MatMuls with 16 rows over 4.2 MB of weights (in the cache), 134 MB (far beyond it) and
        # 16.8 MB (a little over: the share that stays resident).
        ("micro_nbits_16x4096x4096", "unpack", lambda: nbits(16, 4096, 4096, seed + 120)),
        ("micro_nbits_1x4096x4096", "gemv", lambda: nbits(1, 4096, 4096, seed + 121)),
        ("micro_wstream_16x512x4", "wcache", lambda: mm_chain(16, 512, 4, seed + 122)),
        ("micro_wstream_16x4096x2", "wstream", lambda: mm_chain(16, 4096, 2, seed + 123)),
        ("micro_wstream_16x1024x4", "wresident", lambda: mm_chain(16, 1024, 4, seed + 124)),
        ("micro_wstream_16x2048x2", "wresident", lambda: mm_chain(16, 2048, 2, seed + 125)),
        ("micro_matmul_1024", "compute", lambda: matmul(1024, 1024, 1024, False, seed + 101)),
        ("micro_gemm_512x2048x1536", "compute", lambda: matmul(512, 2048, 1536, True, seed + 102)),
        ("micro_add_16M", "memory", lambda: eltwise("add", 16 * 1024 * 1024, seed + 103)),
        ("micro_relu_24M", "memory", lambda: eltwise("relu", 24 * 1024 * 1024, seed + 104)),
        ("micro_chain_400", "overhead", lambda: chain(400, 8, seed + 105)),
        # 3 MB of traffic: fits the cpu target's cache (cache_mb), so it fits cache_bw_gbs.
        ("micro_add_256K", "cache", lambda: eltwise("add", 256 * 1024, seed + 106)),
    ]


# --------------------------------------------------------------------------- inputs, shapes

def input_dims(model) -> list[tuple[str, list]]:
    """(name, dims) of the graph inputs that are not initializers; a dim is an int, a symbol or None."""
    inits = {t.name for t in model.graph.initializer}
    out = []
    for i in model.graph.input:
        if i.name in inits:
            continue
        dims = []
        for d in i.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
        out.append((i.name, dims))
    return out


def dim_bindings(model, feeds: dict) -> dict:
    """symbol -> size, from the symbolic input dims and the fed shapes."""
    b = {}
    for name, dims in input_dims(model):
        shape = feeds[name].shape
        for d, n in zip(dims, shape):
            if isinstance(d, str):
                b[d] = int(n)
    return b


def annotate_shapes(model, feeds: dict, path_out: str) -> dict:
    """Write a copy of `model` with fixed input shapes and every top-level value's shape (as run by
    onnxruntime, optimisations off) in value_info.  Returns {"values", "annotated", "error"}."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for i in m.graph.input:
        if i.name in feeds:
            dims = i.type.tensor_type.shape.dim
            shape = feeds[i.name].shape
            del dims[:]
            for n in shape:
                dims.add().dim_value = int(n)
    info: dict = {"values": 0, "annotated": 0, "error": None}
    # probe model: every top-level node output becomes a graph output
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    have = {o.name for o in probe.graph.output}
    names = [o for n in probe.graph.node for o in n.output if o and o not in have]
    del probe.graph.value_info[:]
    for n in names:
        probe.graph.output.append(helper.ValueInfoProto(name=n))
    info["values"] = len(names)
    try:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
        outs = sess.run(names, feeds)
        vals = dict(zip(names, outs))
    except Exception as e:  # noqa: BLE001
        info["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        vals = {}
    if vals:
        del m.graph.value_info[:]
        for n, v in vals.items():
            v = np.asarray(v)
            try:
                et = helper.np_dtype_to_tensor_dtype(v.dtype)
            except Exception:  # noqa: BLE001
                continue
            m.graph.value_info.append(helper.make_tensor_value_info(n, et, list(v.shape)))
            info["annotated"] += 1
    onnx.save(m, path_out)
    return info


# --------------------------------------------------------------------------- onnxruntime timing

def ort_session(path: str, profile_prefix: str | None = None):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def low(xs: list[float]) -> float:
    """The measured time of a list of runs: the fastest.

    The bench machine shares its last-level cache and memory with other tenants, and a model whose weights
    only just fit the cache runs in two modes: f32 `mlp_w1024_b32_x4` (16.8 MB of weights) took 1.12 ms at the
    fastest and 1.74 ms at the median of 1,073 runs, its int4 form (2.1 MB) 1.53 / 1.62 ms, and which of the two
    was faster by the median changed from one run of this bench to the next. Interference only ever adds time,
    so the fastest run is the most reproducible estimate of the machine's own speed (J. Chen, J. Revels,
    "Robust benchmarking in noisy environments", 2016), which is what a cost model of the device predicts. The
    median is kept in the JSON."""
    return min(xs)


class Timer:
    """One onnxruntime session; timed in rounds so that all models (micro-benchmarks included) are
    measured interleaved, under the same machine conditions."""

    def __init__(self, path: str, feeds: dict):
        self.sess = ort_session(path)
        self.names = [o.name for o in self.sess.get_outputs()]
        self.feeds = feeds
        w0, c0 = time.perf_counter(), time.thread_time()
        self.sess.run(self.names, feeds)  # warm-up
        self.warm_wall, self.warm_cpu = time.perf_counter() - w0, time.thread_time() - c0
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.round_cpu: list[float] = []  # thread CPU time of each round (its `low`)

    def round(self, budget_s: float, min_runs: int, max_runs: int) -> None:
        est = statistics.median(self.wall) if self.wall else self.warm_wall
        n = int(min(max_runs, max(min_runs, budget_s / max(est, 1e-6))))
        this = []
        for _ in range(n):
            w0, c0 = time.perf_counter(), time.thread_time()
            self.sess.run(self.names, self.feeds)
            this.append(time.thread_time() - c0)
            self.wall.append(time.perf_counter() - w0)
        self.cpu.extend(this)
        self.round_cpu.append(low(this))

    def result(self) -> dict:
        wall, cpu = self.wall, self.cpu
        return {"runs": len(wall), "warmup_ms": self.warm_wall * 1e3, "warmup_cpu_ms": self.warm_cpu * 1e3,
                "round_cpu_ms": [x * 1e3 for x in self.round_cpu],
                "wall_ms": statistics.median(wall) * 1e3, "wall_min_ms": min(wall) * 1e3,
                "cpu_ms": low(cpu) * 1e3, "cpu_median_ms": statistics.median(cpu) * 1e3,
                "cpu_min_ms": min(cpu) * 1e3}


def time_ort(path: str, feeds: dict, budget_s: float, min_runs: int = 5, max_runs: int = 500) -> dict:
    sess = ort_session(path)
    names = [o.name for o in sess.get_outputs()]
    w0, c0 = time.perf_counter(), time.thread_time()
    sess.run(names, feeds)  # warm-up
    warm_wall = time.perf_counter() - w0
    warm_cpu = time.thread_time() - c0
    n = int(min(max_runs, max(min_runs, budget_s / max(warm_wall, 1e-6))))
    wall, cpu = [], []
    for _ in range(n):
        w0, c0 = time.perf_counter(), time.thread_time()
        sess.run(names, feeds)
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"runs": n, "warmup_ms": warm_wall * 1e3, "warmup_cpu_ms": warm_cpu * 1e3,
            "wall_ms": statistics.median(wall) * 1e3, "wall_min_ms": min(wall) * 1e3,
            "cpu_ms": statistics.median(cpu) * 1e3, "cpu_min_ms": min(cpu) * 1e3}


def ort_profile(path: str, feeds: dict, prefix: str, runs: int = 5) -> dict:
    """Profiled runs (after one warm-up): op type -> {"ms", "nodes"}, the per-op-type median over the runs
    of the summed node kernel times."""
    sess = ort_session(path, prefix)
    names = [o.name for o in sess.get_outputs()]
    for _ in range(runs + 1):
        sess.run(names, feeds)
    f = sess.end_profiling()
    ev = json.load(open(f))
    os.remove(f)
    spans = sorted((e["ts"], e["ts"] + e.get("dur", 0)) for e in ev
                   if e.get("cat") == "Session" and e.get("name") == "model_run")[1:]  # drop the warm-up
    per_run: list[dict] = [{} for _ in spans]
    for e in ev:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        ts = e.get("ts", 0)
        for i, (a, b) in enumerate(spans):
            if a <= ts <= b:
                t = (e.get("args") or {}).get("op_name", "?")
                d = per_run[i].setdefault(t, [0.0, 0])
                d[0] += e.get("dur", 0) / 1e3
                d[1] += 1
                break
    ops = {t for r in per_run for t in r}
    return {t: {"ms": statistics.median(r.get(t, [0.0, 0])[0] for r in per_run),
                "nodes": max(r.get(t, [0.0, 0])[1] for r in per_run)} for t in ops}


# --------------------------------------------------------------------------- optc cost

def optc_cost(optc: str, model: str, target: str, dims: dict) -> dict:
    cmd = [optc, "cost", model, "--target", target, "--json", "--top", "0"]
    if dims:
        cmd += ["--dim", ",".join(f"{k}={v}" for k, v in sorted(dims.items()))]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"optc cost exited {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1][:200]}")
    j = json.loads(r.stdout)
    flags: dict = {}
    for n in j.get("nodes", []):
        for fl in n.get("flags", []):
            flags[fl] = flags.get(fl, 0) + 1
    by_op: dict = {}
    for n in j.get("nodes", []):
        d = by_op.setdefault(n["op"], {"ms": 0.0, "nodes": 0, "ops": 0.0, "bytes": 0.0})
        d["ms"] += n["time_s"] * 1e3
        d["nodes"] += 1
        d["ops"] += n["ops"]
        d["bytes"] += n["bytes"]
    t = j["totals"]
    return {"ms": t["time_s"] * 1e3, "ops": t.get("ops"), "bytes": t.get("bytes"), "nodes": t.get("nodes"),
            "compute_bound": t.get("compute_bound"), "memory_bound": t.get("memory_bound"),
            "overhead_bound": t.get("overhead_bound"), "flags": flags, "unbound_dims": j.get("unbound_dims", []),
            "by_op": by_op, "cmd": " ".join(cmd), "_nodes": j.get("nodes", [])}


def target_fields(toml_text: str) -> dict:
    f = {}
    for k in ("mem_bw_gbs", "eff_compute", "eff_memory", "launch_overhead_us", "cache_mb", "cache_bw_gbs"):
        m = re.search(rf"^{k}\s*=\s*([0-9.eE+-]+)", toml_text, re.M)
        f[k] = float(m.group(1)) if m else (0.0 if k.startswith("cache") else None)
    sect = re.search(r"^\[tops\](.*?)(^\[|\Z)", toml_text, re.M | re.S)
    f["tops"] = {k: float(v) for k, v in re.findall(r"^(\w+)\s*=\s*([0-9.eE+-]+)", sect.group(1), re.M)} if sect else {}
    return f


# --------------------------------------------------------------------------- calibration

# Relative latency change below which a before/after pair counts as "no change".
PAIR_NOISE = 0.03
# The passes whose before/after pairs are checked: (file key, `optc opt -p` pipeline).
PAIR_PASSES = [("o2", "O2"), ("w8", "quant-w8"), ("w4", "quant-w4")]


def op_histogram(path: str) -> dict:
    import onnx
    m = onnx.load(path, load_external_data=False)
    h: dict = {}
    for n in m.graph.node:
        k = f"{n.domain}::{n.op_type}" if n.domain else n.op_type
        h[k] = h.get(k, 0) + 1
    return h


def fit(micro: list[dict], base: dict) -> dict:
    """Closed-form, iterated fit of eff_compute, eff_memory, launch_overhead_us, cache_bw_gbs, the op_efficiency
    factors and the weight pass (`[weight_pass]` of the target; cost::WeightPass).

    micro: [{"kind", "measured_ms", "nodes": [optc node rows on the built-in target]}]."""
    bw = base["mem_bw_gbs"] * 1e9
    tops = {k: v * 1e12 for k, v in base["tops"].items()}
    lo0 = base["launch_overhead_us"] * 1e-6

    def launches(nodes):
        # a node pays the launch overhead iff time > max(compute, memory) on the built-in target
        return sum(1 for n in nodes if n["time_s"] - max(n["compute_s"], n["memory_s"]) > 0.5 * lo0)

    def tops_of(n):
        return tops.get(n["precision"], tops["f32"])

    def rows_of(n):
        return n["ops"] / (2.0 * n["weight_elems"]) if n.get("weight_elems") else 0.0

    def is_nbits(n):
        return n["op"].endswith("MatMulNBits")

    def stream_nodes(nodes):
        # Float matrix kernels with a constant weight and more than one activation row.
        return [n for n in nodes if n.get("weight_elems") and not is_nbits(n) and rows_of(n) >= 1.5
                and n["precision"] in ("f32", "f16", "bf16")]

    def footprint(nodes):
        # Bytes one run touches, as cost::footprint: weights read and activations written.
        return sum(n["weight_bytes"] + n.get("output_bytes", 0.0) for n in nodes)

    def stream_s_per_byte(nodes, eff_s, res_mb, res_exp):
        # Seconds per weight byte of the float weight pass, as cost::Target::node_time_in computes it: the graph's
        # weights beyond the resident share stream from memory.
        if eff_s <= 0:
            return 0.0
        gw = max(1.0, footprint(nodes))
        r = min(1.0, res_mb * 1e6 / gw) ** (res_exp or 1.0) if res_mb > 0 else 0.0
        return (1.0 - r) / (bw * eff_s)

    def pass_s(nodes, wp):
        """The weight pass's seconds for a micro-benchmark's nodes (float stream and low-bit unpack)."""
        t = stream_s_per_byte(nodes, wp["eff_stream"], wp["resident_mb"], wp["resident_exp"]) * sum(
            n["weight_bytes"] for n in stream_nodes(nodes))
        for n in nodes:
            if n.get("weight_elems") and is_nbits(n) and rows_of(n) >= 1.5:
                t += n["weight_elems"] * wp["unpack_ns"] * 1e-9
        return t

    ec, em, lo = base["eff_compute"], base["eff_memory"], lo0
    cache_bw = base.get("cache_bw_gbs", 0.0)
    wp = {"eff_stream": 0.0, "resident_mb": 0.0, "resident_exp": 1.0, "unpack_ns": 0.0, "gemv_unpack_ns": 0.0}
    for _ in range(20):
        def roof(nodes):
            return sum(max(n["ops"] / (ec * tops_of(n)), n["bytes"] / (em * bw)) for n in nodes)
        ov = [m for m in micro if m["kind"] == "overhead"]
        lo = max(1e-8, sum(m["measured_ms"] * 1e-3 - roof(m["nodes"]) for m in ov) / sum(launches(m["nodes"]) for m in ov))
        mem = [m for m in micro if m["kind"] == "memory"]
        em = min(1.0, sum(sum(n["bytes"] for n in m["nodes"]) for m in mem) / bw
                 / sum(m["measured_ms"] * 1e-3 - launches(m["nodes"]) * lo for m in mem))
        cp = [m for m in micro if m["kind"] == "compute"]
        ec = min(1.0, sum(sum(n["ops"] / tops_of(n) for n in m["nodes"]) for m in cp)
                 / sum(m["measured_ms"] * 1e-3 - launches(m["nodes"]) * lo - pass_s(m["nodes"], wp)
                       for m in cp))
        # Cache bandwidth: activations that fit in the target's cache stream at cache_bw_gbs * eff_memory.
        cache = [m for m in micro if m["kind"] == "cache"]
        if cache and base.get("cache_mb", 0.0) > 0:
            t = sum(max(1e-9, m["measured_ms"] * 1e-3 - launches(m["nodes"]) * lo) for m in cache)
            cache_bw = sum(sum(n["bytes"] for n in m["nodes"]) for m in cache) / (em * t) / 1e9

        # The float weight pass: what a matrix kernel with M > 1 rows takes beyond its multiply-accumulates, per
        # weight byte streamed from memory. The "wstream" micro-benchmark (134 MB of weights, far beyond the cache)
        # gives eff_stream; the "wresident" one (16.8 MB, a little over the cache) the share that stays resident.
        # ("wcache", 4.2 MB, only checks that resident weights take no pass.)
        def left(m):
            return max(1e-9, m["measured_ms"] * 1e-3 - launches(m["nodes"]) * lo
                       - sum(n["ops"] / (ec * tops_of(n)) for n in stream_nodes(m["nodes"])))
        ws = [m for m in micro if m["kind"] == "wstream"]
        if ws:
            per = sum(sum(n["weight_bytes"] for n in stream_nodes(m["nodes"]))
                      * stream_s_per_byte(m["nodes"], 1.0, wp["resident_mb"], wp["resident_exp"]) for m in ws)
            wp["eff_stream"] = min(1.0, max(1e-3, per / sum(left(m) for m in ws)))
        # Each "wresident" micro-benchmark gives the resident share r of W MB of weights. With two shares strictly
        # between 0 and 1, r = (R / W) ^ p fixes both R (resident_mb) and p (resident_exp); otherwise p = 1 and R
        # is the largest of the estimates r * W (a share of 1 is a lower bound).
        wr = [m for m in micro if m["kind"] == "wresident"]
        if wr and wp["eff_stream"] > 0:
            pts = []
            for m in wr:
                wb = sum(n["weight_bytes"] for n in stream_nodes(m["nodes"]))
                gw = footprint(m["nodes"]) / 1e6
                streamed = left(m) * bw * wp["eff_stream"] / max(1.0, wb)
                pts.append((gw, min(1.0, max(0.0, 1.0 - streamed))))
            pts.sort()
            inner = [(w, r) for w, r in pts if 0.02 < r < 0.98]
            full = [w for w, r in pts if r >= 0.98]
            if len(inner) >= 2 and inner[0][1] > inner[-1][1]:
                (w1, r1), (w2, r2) = inner[0], inner[-1]
                p = min(4.0, max(1.0, math.log(r1 / r2) / math.log(w2 / w1)))
                wp["resident_exp"] = p
                wp["resident_mb"] = w1 * r1 ** (1.0 / p)
            elif full and inner and inner[-1][0] > max(full):
                # All of the smaller set resident: R is at least its size; the larger set's share gives p.
                w2, r2 = inner[-1]
                wp["resident_mb"] = max(full)
                wp["resident_exp"] = min(4.0, max(1.0, math.log(r2) / math.log(max(full) / w2)))
            else:
                wp["resident_exp"] = 1.0
                wp["resident_mb"] = max(w * r for w, r in pts)
        # The low-bit matmul: its unpacked weights go through the float GEMM (the fitted roofline), plus an unpack
        # per weight element, fitted by least squares over two sizes ("nbits": many rows, "unpack": few rows);
        # "gemv": the single-row kernel.
        nb = [m for m in micro if m["kind"] in ("nbits", "unpack")]
        if nb:
            e = np.array([sum(n.get("weight_elems", 0.0) for n in m["nodes"]) * 1e-9 for m in nb])
            y = np.array([m["measured_ms"] * 1e-3 - launches(m["nodes"]) * lo - roof(m["nodes"]) for m in nb])
            wp["unpack_ns"] = max(0.0, float((e @ y) / max(1e-30, e @ e)))
        gv = [m for m in micro if m["kind"] == "gemv"]
        if gv:
            e = sum(n.get("weight_elems", 0.0) for m in gv for n in m["nodes"])
            t = sum(max(1e-9, m["measured_ms"] * 1e-3 - launches(m["nodes"]) * lo) for m in gv)
            wp["gemv_unpack_ns"] = t / max(1.0, e) * 1e9
    # The runtime's skip-normalisation kernel: its efficiency relative to the fitted roofline (its activations fit
    # the cache), the `op_efficiency` factor of the fused Add + LayerNormalization.
    skip = [m for m in micro if m["kind"] == "skipnorm"]
    skip_k = None
    if skip:
        sbw = cache_bw * 1e9 if cache_bw > 0 else bw
        roof_t = sum(sum(max(n["ops"] / (ec * tops_of(n)), n["bytes"] / (em * sbw)) for n in m["nodes"]) for m in skip)
        t = sum(max(1e-9, m["measured_ms"] * 1e-3 - launches(m["nodes"]) * lo) for m in skip)
        skip_k = min(10.0, max(1e-3, roof_t / t))
    # Elementwise kernels far from an Add's speed per element (kind "op:KEY"): their op_efficiency, each
    # against the fitted roofline with its activations in the cache.
    opeff = {}
    for m in micro:
        if not m["kind"].startswith("op:"):
            continue
        sbw = cache_bw * 1e9 if cache_bw > 0 else bw
        roof_t = sum(max(n["ops"] / (ec * tops_of(n)), n["bytes"] / (em * sbw)) for n in m["nodes"])
        t = max(1e-9, m["measured_ms"] * 1e-3 - launches(m["nodes"]) * lo)
        opeff[m["kind"][3:]] = min(10.0, max(1e-3, roof_t / t))
    res = {"eff_compute": ec, "eff_memory": em, "launch_overhead_us": lo * 1e6, "cache_bw_gbs": cache_bw,
           "skipnorm_efficiency": skip_k, "op_efficiency": opeff,
           "weight_pass": wp, "micro": []}
    for m in micro:
        cached = m["kind"] in ("cache", "skipnorm") or m["kind"].startswith("op:")
        mbw = bw if not cached or cache_bw <= 0 else cache_bw * 1e9
        k = {"skipnorm": skip_k, **{f"op:{key}": v for key, v in opeff.items()}}.get(m["kind"]) or 1.0
        pred = 0.0
        for n in m["nodes"]:
            c = max(n["ops"] / (ec * tops_of(n)), n["bytes"] / (em * mbw)) / k
            if n.get("weight_elems") and is_nbits(n) and rows_of(n) < 1.5:
                c = max(c, n["weight_elems"] * wp["gemv_unpack_ns"] * 1e-9)
            pred += c
        pred += pass_s(m["nodes"], wp) + launches(m["nodes"]) * lo
        res["micro"].append({"model": m["model"], "kind": m["kind"], "measured_ms": m["measured_ms"],
                             "fitted_ms": pred * 1e3, "launches": launches(m["nodes"]),
                             "ops": sum(n["ops"] for n in m["nodes"]), "bytes": sum(n["bytes"] for n in m["nodes"]),
                             "achieved_gops": sum(n["ops"] for n in m["nodes"]) / (m["measured_ms"] * 1e-3) / 1e9,
                             "achieved_gbs": sum(n["bytes"] for n in m["nodes"]) / (m["measured_ms"] * 1e-3) / 1e9})
    return res


def write_target(base_text: str, fitres: dict, path: str, machine: str) -> None:
    t = base_text
    t = re.sub(r'^name\s*=.*$', 'name = "cpu-calibrated"', t, count=1, flags=re.M)
    t = re.sub(r'^description\s*=.*$',
               'description = "built-in cpu target with eff_compute, eff_memory and launch_overhead_us fitted to '
               'onnxruntime CPU EP, 1 thread, on the bench machine (bench/life.py)"', t, count=1, flags=re.M)
    t = re.sub(r'^eff_compute\s*=.*$', f"eff_compute = {fitres['eff_compute']:.4f}", t, count=1, flags=re.M)
    t = re.sub(r'^eff_memory\s*=.*$', f"eff_memory = {fitres['eff_memory']:.4f}", t, count=1, flags=re.M)
    t = re.sub(r'^launch_overhead_us\s*=.*$', f"launch_overhead_us = {fitres['launch_overhead_us']:.3f}", t,
               count=1, flags=re.M)
    if fitres.get("cache_bw_gbs"):
        t = re.sub(r'^cache_bw_gbs\s*=.*$', f"cache_bw_gbs = {fitres['cache_bw_gbs']:.1f}", t, count=1, flags=re.M)
    if fitres.get("skipnorm_efficiency"):
        k = fitres["skipnorm_efficiency"]
        for key in ('"com.microsoft::SkipLayerNormalization"', '"Fused[Add+LayerNormalization]"'):
            t = re.sub(rf'^{re.escape(key)}\s*=.*$', f"{key} = {k:.4f}", t, count=1, flags=re.M)
    keyed = dict(fitres.get("op_efficiency") or {})
    if fitres.get("nbits_efficiency"):
        keyed["com.microsoft::MatMulNBits"] = fitres["nbits_efficiency"]
    for key, k in keyed.items():
        line = f'"{key}" = {k:.4f}'
        # The key as TOML writes it: quoted, or bare (`Erf`).
        pat = rf'^(?:"{re.escape(key)}"|{re.escape(key)})\s*='
        if re.search(pat, t, flags=re.M):
            t = re.sub(pat + r'.*$', line, t, count=1, flags=re.M)
        elif re.search(r'^\[op_efficiency\]\s*$', t, flags=re.M):
            t = re.sub(r'^\[op_efficiency\]\s*$', "[op_efficiency]\n" + line, t, count=1, flags=re.M)
        else:
            t += "\n[op_efficiency]\n" + line + "\n"
    wp = fitres.get("weight_pass") or {}
    if any(v > 0 for v in wp.values()):
        t = re.sub(r'(?ms)^\[weight_pass\]\n(?:[^\[\n][^\n]*\n?)*', "", t)
        t = t.rstrip("\n") + "\n\n# The runtime's pass over a matrix kernel's constant weight (cost::WeightPass), fitted.\n[weight_pass]\n"
        t += "".join(f"{k} = {wp.get(k, 0.0):.4f}\n"
                     for k in ("eff_stream", "resident_mb", "resident_exp", "unpack_ns", "gemv_unpack_ns"))
    head = ["# Generated by bench/life.py: the built-in `cpu` target (`optc targets --show cpu`) with its TOPS and",
            "# bandwidth kept and eff_compute, eff_memory, launch_overhead_us, cache_bw_gbs fitted to micro-benchmarks run with",
            f"# onnxruntime CPU EP, 1 intra-op / 1 inter-op thread, ORT_ENABLE_ALL, on: {machine}.",
            "# Micro-benchmarks (measured ms / fitted ms):"]
    for m in fitres["micro"]:
        head.append(f"#   {m['model']} ({m['kind']}): {m['measured_ms']:.3f} / {m['fitted_ms']:.3f}")
    head.append("#")
    with open(path, "w") as f:
        f.write("\n".join(head) + "\n" + t)


# --------------------------------------------------------------------------- statistics

def ranks(x) -> np.ndarray:
    x = np.asarray(x, float)
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):  # average ranks of ties
        idx = np.where(x == v)[0]
        if len(idx) > 1:
            r[idx] = r[idx].mean()
    return r


def spearman(a, b) -> float | None:
    if len(a) < 3:
        return None
    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def stats(rows: list[dict], key: str) -> dict:
    ok = [r for r in rows if r.get("measured_ms") and (r.get(key) or {}).get("ms") is not None]
    if not ok:
        return {"n": 0}
    err = [100.0 * (r[key]["ms"] - r["measured_ms"]) / r["measured_ms"] for r in ok]
    meas = [r["measured_ms"] for r in ok]
    pred = [r[key]["ms"] for r in ok]
    ratio = [p / m for p, m in zip(pred, meas)]
    return {"n": len(ok), "median_abs_err_pct": statistics.median(abs(e) for e in err),
            "mean_abs_err_pct": statistics.mean(abs(e) for e in err), "spearman": spearman(meas, pred),
            "geomean_ratio": float(math.exp(statistics.mean(math.log(x) for x in ratio)))}


# --------------------------------------------------------------------------- main run

def machine_line() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs"


def run(a) -> dict:
    import onnx
    import onnxruntime as ort

    os.makedirs(a.out_dir, exist_ok=True)
    mdir = os.path.join(a.out_dir, "models")
    os.makedirs(mdir, exist_ok=True)
    res: dict = {"name": "life", "seed": a.seed, "budget_s": a.budget_s, "ort": ort.__version__,
                 "machine": machine_line(), "loadavg_start": os.getloadavg()[0], "models": [], "micro": []}
    r = subprocess.run([a.optc, "targets", "--show", "cpu"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"`optc targets --show cpu` failed: {r.stderr.strip()[:200]}")
    base_text = r.stdout
    base = target_fields(base_text)
    res["base_target"] = base

    # ---- models: calibration micro-benchmarks, then the evaluation models
    t0 = time.perf_counter()
    micro_rows = []
    timers: list[tuple[dict, Timer, str]] = []
    for stem, kind, build in micro_models(a.seed):
        p = os.path.join(mdir, stem + ".onnx")
        m = build()
        onnx.save(m, p)
        c = optc_cost(a.optc, p, "cpu", {})
        row = {"model": stem, "kind": kind, "nodes": c["_nodes"], "builtin_ms": c["ms"]}
        micro_rows.append(row)
        timers.append((row, Timer(p, make_feeds(m, stem, a.seed)), ""))
    evals = []
    for stem in CACHE_ORDER + sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(a.models_dir, "*.onnx"))):
        if stem in SKIP_CACHE or any(e[0] == stem for e in evals):
            continue
        p = os.path.join(a.models_dir, stem + ".onnx")
        if os.path.exists(p):
            evals.append((stem, "cache", p))
        elif stem in CACHE_ORDER:
            res["models"].append({"model": stem, "family": "cache", "error": f"not in {a.models_dir}"})
    for stem, fam, build in generated_models(a.seed):
        p = os.path.join(mdir, stem + ".onnx")
        onnx.save(build(), p)
        evals.append((stem, fam, p))
    for stem, fam, p in evals:
        row = {"model": stem, "family": fam, "path": p}
        res["models"].append(row)
        try:
            m = onnx.load(p)
            feeds = make_feeds(m, stem, a.seed)
            row["inputs"] = {k: list(v.shape) for k, v in feeds.items()}
            row["dims"] = dim_bindings(m, feeds)
            if fam == "cache":
                ap = os.path.join(mdir, stem + ".static.onnx")
                row["annotate"] = annotate_shapes(m, feeds, ap)
                row["optc_model"] = ap
            else:
                row["optc_model"] = p
            row["_feeds"] = feeds
            timers.append((row, Timer(p, feeds), ""))
            if row["optc_model"] != p:
                # The passes below run on the shape-annotated copy, and onnxruntime does not run it at
                # the original's speed (MiniLM: 12 % slower): the pairs' "before" is that copy, timed too.
                timers.append((row, Timer(row["optc_model"], feeds), "_static"))
            # The same model after each pass of PAIR_PASSES, timed alongside, for the before/after pairs.
            row["nodes"] = len(onnx.load(row["optc_model"], load_external_data=False).graph.node)
            hist0 = op_histogram(row["optc_model"])
            for key, pipeline in PAIR_PASSES:
                out = os.path.join(mdir, f"{stem}.{key}.onnx")
                ro = subprocess.run([a.optc, "opt", row["optc_model"], "-p", pipeline, "-o", out, "-q"],
                                    capture_output=True, text=True, timeout=600)
                if ro.returncode != 0:
                    row[f"{key}_error"] = (f"optc opt -p {pipeline} exited {ro.returncode}: "
                                           f"{ro.stderr.strip()[-200:]}")
                    continue
                row[f"nodes_{key}"] = len(onnx.load(out, load_external_data=False).graph.node)
                # A pass that changed no op makes no before/after pair.
                if op_histogram(out) != hist0:
                    timers.append((row, Timer(out, feeds), f"_{key}"))
                else:
                    row[f"{key}_unchanged"] = True
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            log(f"{stem}: {row['error']}")
    res["setup_s"] = time.perf_counter() - t0
    # ---- timing: a.rounds interleaved rounds over every model, budget / rounds seconds each
    t0 = time.perf_counter()
    res["rounds"] = a.rounds
    for k in range(a.rounds):
        for row, tmr, _ in timers:
            try:
                tmr.round(a.budget_s / a.rounds, max(2, 5 // a.rounds + (5 % a.rounds > k)), max(1, 500 // a.rounds))
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        log(f"timing round {k + 1}/{a.rounds} done")
    for row, tmr, suffix in timers:
        if tmr.wall:
            row["timing" + suffix] = tmr.result()
            row["measured" + suffix + "_ms"] = row["timing" + suffix]["cpu_ms"]
    del timers
    res["timing_s"] = time.perf_counter() - t0
    for row in micro_rows:
        log(f"micro {row['model']}: {row['measured_ms']:.3f} ms cpu ({row['timing']['wall_ms']:.3f} wall, "
            f"{row['timing']['runs']} runs); built-in cpu predicts {row['builtin_ms']:.3f} ms")
    t0 = time.perf_counter()
    fr = fit(micro_rows, base)
    for mr, fm in zip(micro_rows, fr["micro"]):
        fm["timing"] = mr["timing"]
    res["fit"] = fr
    res["calibration_s"] = time.perf_counter() - t0
    tpath = os.path.join(a.out_dir, "cpu-calibrated.toml")
    write_target(base_text, fr, tpath, res["machine"])
    res["target_file"] = tpath
    log(f"fit: eff_compute {fr['eff_compute']:.4f}, eff_memory {fr['eff_memory']:.4f}, "
        f"launch_overhead_us {fr['launch_overhead_us']:.3f}, weight_pass {fr['weight_pass']} -> {tpath}")
    chk = subprocess.run([a.optc, "cost", os.path.join(mdir, micro_rows[0]["model"] + ".onnx"), "--target", tpath,
                          "--top", "0"], capture_output=True, text=True, timeout=60)
    res["target_check"] = {"rc": chk.returncode, "stderr": chk.stderr.strip()[-300:]}
    if chk.returncode != 0:
        raise RuntimeError(f"optc cost rejected {tpath}: {chk.stderr.strip()[-300:]}")

    # ---- predictions and profiles of the evaluation models
    for row in res["models"]:
        if row.get("error"):
            continue
        stem, fam, p, dims, feeds, tm = (row["model"], row["family"], row["path"], row["dims"], row.pop("_feeds"),
                                         row["timing"])
        try:
            try:
                row["ort_profile"] = ort_profile(p, feeds, os.path.join(a.out_dir, "prof_" + stem))
            except Exception as e:  # noqa: BLE001
                row["ort_profile_error"] = f"{type(e).__name__}: {e}"
            variants = [("calibrated", row["optc_model"], tpath), ("builtin", row["optc_model"], "cpu"),
                        ("calibrated_orig", p, tpath)]
            for key, _ in PAIR_PASSES:
                out = os.path.join(mdir, f"{stem}.{key}.onnx")
                if f"measured_{key}_ms" in row or (key == "o2" and os.path.exists(out) and not row.get("o2_error")):
                    variants.append((f"calibrated_{key}", out, tpath))
            for key, mp, tgt in variants:
                try:
                    c = optc_cost(a.optc, mp, tgt, dims)
                    c.pop("_nodes")
                    row[key] = c
                except Exception as e:  # noqa: BLE001
                    row[key] = {"ms": None, "error": f"{type(e).__name__}: {e}"}
            cal = row["calibrated"].get("ms")
            log(f"{stem} ({fam}): measured {tm['cpu_ms']:.3f} ms cpu / {tm['wall_ms']:.3f} ms wall "
                f"({tm['runs']} runs); LIFE calibrated {cal if cal is None else round(cal, 3)} ms, built-in "
                f"{row['builtin'].get('ms') and round(row['builtin']['ms'], 3)} ms, unannotated "
                f"{row['calibrated_orig'].get('ms') and round(row['calibrated_orig']['ms'], 3)} ms, after O2 "
                f"{(row.get('calibrated_o2') or {}).get('ms') and round(row['calibrated_o2']['ms'], 3)} ms")
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            log(f"{stem}: {row['error']}")
    for row in res["models"]:
        row.pop("_feeds", None)
    rows = [r for r in res["models"] if not r.get("error")]
    res["stats"] = {k: stats(rows, k) for k in ("calibrated", "builtin", "calibrated_orig", "calibrated_o2")}
    # Before/after pairs: does LIFE predict the direction of each pass's effect on the measured latency?
    # A change within +-NOISE of the original counts as "no change" on both sides.
    pairs = []
    for key, pipeline in PAIR_PASSES:
        for r in rows:
            # "Before" is the model the pass ran on: the shape-annotated copy where there is one.
            base = "_static" if r.get("measured_static_ms") else ""
            m1, m2 = r.get(f"measured{base}_ms"), r.get(f"measured_{key}_ms")
            p1, p2 = (r.get("calibrated") or {}).get("ms"), (r.get(f"calibrated_{key}") or {}).get("ms")
            if None in (m1, m2, p1, p2) or not m1 or not p1:
                continue
            dm, dp = (m2 - m1) / m1, (p2 - p1) / p1
            # Measurement noise of the change: half the range of the per-round changes (the two models
            # are timed in the same rounds, interleaved).
            ra = (r.get(f"timing{base}") or {}).get("round_cpu_ms") or []
            rb = (r.get(f"timing_{key}") or {}).get("round_cpu_ms") or []
            per_round = [(b - a) / a for a, b in zip(ra, rb) if a > 0]
            noise = (max(per_round) - min(per_round)) / 2 if len(per_round) >= 2 else 0.0

            def direction(d, band):
                return 0 if abs(d) < band else (1 if d > 0 else -1)
            pairs.append({"model": r["model"], "pass": pipeline, "key": key, "nodes": r.get("nodes"),
                          "nodes_after": r.get(f"nodes_{key}"), "measured_change": dm, "predicted_change": dp,
                          "noise": noise, "per_round": per_round,
                          "right": direction(dm, max(PAIR_NOISE, noise)) == direction(dp, PAIR_NOISE)})
            # The same on the medians of the runs (the table uses `low`, the fastest).
            q1 = (r.get(f"timing{base}") or {}).get("cpu_median_ms")
            q2 = (r.get(f"timing_{key}") or {}).get("cpu_median_ms")
            if q1 and q2:
                dq = (q2 - q1) / q1
                pairs[-1]["measured_change_median"] = dq
                pairs[-1]["right_median"] = direction(dq, max(PAIR_NOISE, noise)) == direction(dp, PAIR_NOISE)
    res["pairs"] = pairs
    fams = sorted({r["family"] for r in rows})
    res["stats_by_family"] = {f: stats([r for r in rows if r["family"] == f], "calibrated") for f in fams}
    res["stats_by_family_o2"] = {f: stats([r for r in rows if r["family"] == f], "calibrated_o2") for f in fams}
    res["loadavg_end"] = os.getloadavg()[0]
    return res


# --------------------------------------------------------------------------- report

def fmt(x, nd=2):
    if x is None:
        return "–"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{nd}f}"


def err_pct(pred, meas):
    if pred is None or not meas:
        return None
    return 100.0 * (pred - meas) / meas


# ORT_ENABLE_ALL kernel names -> the ONNX op types they stand for (for the per-op comparison)
MM = "MatMul/Gemm"
ORT_OP_MAP = {"FusedConv": "Conv", "FusedGemm": MM, "FusedMatMul": MM, "Gemm": MM, "MatMul": MM,
              "QLinearConv": "Conv", "MatMulInteger": MM, "DynamicQuantizeMatMul": MM,
              "QLinearMatMul": MM, "MatMulIntegerToFloat": MM, "BiasGelu": "Erf",
              "Gelu": "Erf", "FastGelu": "Erf", "SkipLayerNormalization": "LayerNormalization",
              "BiasSoftmax": "Softmax", "NhwcMaxPool": "MaxPool", "QuickGelu": "Erf"}


def report_lines(res: dict, out_rel: str, cmd: str | None = None) -> list[str]:
    L: list[str] = []
    w = L.append
    w("## D. LIFE: predicted vs measured latency")
    w("")
    if res.get("error"):
        w(f"**Failed:** {res['error']}")
        w("")
        if not res.get("models"):
            return L
    if cmd:
        w("```")
        w(cmd)
        w("```")
        w("")
    fr = res.get("fit") or {}
    base = res.get("base_target") or {}
    w(f"- Machine: {res.get('machine')}; onnxruntime {res.get('ort')}; load average (1 min) at start / end "
      f"{res.get('loadavg_start', 0):.2f} / {res.get('loadavg_end', 0):.2f}.")
    w("- **Measured**: onnxruntime CPU EP, `intra_op_num_threads = inter_op_num_threads = 1`, ORT_SEQUENTIAL, "
      f"ORT_ENABLE_ALL; one warm-up, then N timed `sess.run` (N adaptive, ~{res.get('budget_s', 1):g} s per "
      f"model, at least 5, in {res.get('rounds', 1)} rounds interleaved over all models and the calibration "
      "micro-benchmarks, so that changes in machine load hit them alike); the **fastest run**'s "
      "**thread CPU time** of the calling thread (with one "
      "intra-op thread ORT runs every kernel there; CPU time is not inflated when other processes take the "
      "core; the wall-time medians are in the JSON and in the last column). The fastest run, not the median: the "
      "machine shares its last-level cache with other tenants, and a model whose weights only just fit it runs in "
      "two modes (f32 `mlp_w1024_b32_x4`, 16.8 MB of weights: 1.12 ms at the fastest, 1.74 ms at the median; its "
      "int4 form 1.53 / 1.62 ms), so the median's before/after direction flipped from one bench run to the next. "
      "Interference only adds time, so the fastest run is the most reproducible estimate of the machine's own "
      "speed (Chen and Revels, *Robust benchmarking in noisy environments*, 2016), and that is what a device "
      "model predicts; the medians are in the JSON, and the pairs are also counted on them.")
    w("- **Predicted**: `optc cost MODEL --json --target " + f"{out_rel}/cpu-calibrated.toml --dim SYM=N,...` "
      "(symbols from the model's input dims, sizes from the fed inputs). The cache models are passed as "
      f"shape-annotated copies (`{out_rel}/models/*.static.onnx`: inputs fixed, every top-level value's shape, "
      "from one onnxruntime run, in value_info), because `optc cost` reads shapes from the model and leaves "
      "most of them unknown otherwise (see *unannotated* below). The generated models carry full shapes "
      "(onnx shape inference).")
    w("- Models: the model cache at the input shapes of benchmark C (silero_vad with If is skipped; its "
      "If-less op18 export stands in), and seeded generated models (`bench/life.py`, onnx.helper, opset "
      f"{OPSET}): MLP = Gemm or MatMul+Add with Relu; CNN = 4× Conv3×3+Relu, 2× MaxPool, GlobalAveragePool, "
      "Gemm; transformer = encoder blocks, batch 1, seq 128 (LayerNormalization, MatMul QKV/attention/"
      "projections, Softmax, GELU as x·0.5·(1+Erf(x/√2))).")
    w("")
    w("### Calibration")
    w("")
    w("Micro-benchmarks (not among the evaluation models), measured as above; ops / bytes / launches are "
      "`optc cost`'s own counts for them:")
    w("")
    w("| micro-benchmark | kind | measured ms | fitted ms | ops | bytes | achieved GOP/s | achieved GB/s |")
    w("|---|---|---:|---:|---:|---:|---:|---:|")
    for m in fr.get("micro", []):
        w(f"| {m['model']} | {m['kind']} | {m['measured_ms']:.3f} | {m['fitted_ms']:.3f} | {m['ops']:.3g} | "
          f"{m['bytes']:.3g} | {m['achieved_gops']:.1f} | {m['achieved_gbs']:.2f} |")
    w("")
    if fr:
        w(f"Fitted (TOPS f32 {base.get('tops', {}).get('f32')} and {base.get('mem_bw_gbs')} GB/s kept from the "
          f"built-in `cpu`): **eff_compute = {fr['eff_compute']:.4f}** (built-in {base.get('eff_compute')}), "
          f"**eff_memory = {fr['eff_memory']:.4f}** (built-in {base.get('eff_memory')}), "
          f"**launch_overhead_us = {fr['launch_overhead_us']:.2f}** (built-in {base.get('launch_overhead_us')}). "
          "Overhead from the chain, then eff_memory from the elementwise ops, eff_compute from the "
          "MatMul/Gemm, iterated to a fixed point"
          + (f"; the weight pass (`[weight_pass]`, see docs/TARGETS.md): a float weight not resident in the cache "
             f"streams through a matrix kernel with more than one row at **eff_stream = "
             f"{fr['weight_pass']['eff_stream']:.3f}** of the memory bandwidth, on top of its multiply-accumulates "
             f"(from micro_wstream_16x4096x2, 134 MB); of a graph one run of which touches F MB "
             f"(weights read, activations written), the share (**resident_mb = {fr['weight_pass']['resident_mb']:.1f}** "
             f"/ F) ^ **{fr['weight_pass']['resident_exp']:.2f}** (at most 1) stays in the cache between runs (from the `wresident` micro-benchmarks, 16.8 and 33.6 MB); "
             f"MatMulNBits (4-bit, block 128) unpacks at **unpack_ns = {fr['weight_pass']['unpack_ns']:.3f}** ns per "
             f"weight element before the f32 GEMM (least squares over its 256- and 16-row micro-benchmarks), and its "
             f"one-row kernel takes **gemv_unpack_ns = {fr['weight_pass']['gemv_unpack_ns']:.3f}** ns per element"
             if fr.get("weight_pass") else "")
          + (f"; `op_efficiency` of the runtime's skip-normalisation kernel (Add + LayerNormalization, which "
             f"onnxruntime fuses into SkipLayerNormalization) = **{fr['skipnorm_efficiency']:.3f}** of that roofline"
             if fr.get("skipnorm_efficiency") else "")
          + ("; `op_efficiency` of the elementwise kernels far from an Add's speed per element (each alone, "
             "activations in the cache; a fused row takes its slowest member's): "
             + ", ".join(f"{k} **{v:.3f}**" for k, v in sorted(fr["op_efficiency"].items()))
             if fr.get("op_efficiency") else "")
          + f". Target file: `{out_rel}/cpu-calibrated.toml`.")
        w("")
    rows = [r for r in res.get("models", [])]
    w("### Per model")
    w("")
    w("*predicted* = calibrated target on the model as given (shape-annotated for the cache models); "
      "*after O2* = the same on `optc opt -p O2` of it (constant folding, no-op Cast/Transpose removal, "
      "BatchNorm folding, activation fusion: closer to the graph ORT_ENABLE_ALL actually runs); *built-in* = "
      "the uncalibrated `cpu` target; *unannotated* = calibrated target on the original file with `--dim` "
      "only; *bound c/m/o* = LIFE's compute/memory/overhead-bound node counts (predicted column).")
    w("")
    w("| model | family | measured ms | predicted ms | error % | after O2 ms | error % | built-in `cpu` ms | "
      "unannotated ms | bound c/m/o | wall ms |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        if r.get("error"):
            w(f"| {r['model']} | {r['family']} | **failed**: {r['error'][:150]} | | | | | | | | |")
            continue
        c = r.get("calibrated") or {}
        e = err_pct(c.get("ms"), r.get("measured_ms"))
        b = r.get("builtin") or {}
        o = r.get("calibrated_orig") or {}
        bound = f"{c.get('compute_bound')}/{c.get('memory_bound')}/{c.get('overhead_bound')}" if c.get("ms") is not None else "–"
        c2 = r.get("calibrated_o2") or {}
        e2 = err_pct(c2.get("ms"), r.get("measured_ms"))
        w(f"| {r['model']} | {r['family']} | {fmt(r.get('measured_ms'), 3)} | {fmt(c.get('ms'), 3)} | "
          f"{'–' if e is None else f'{e:+.0f}'} | {fmt(c2.get('ms'), 3)} | {'–' if e2 is None else f'{e2:+.0f}'} | "
          f"{fmt(b.get('ms'), 3)} | {fmt(o.get('ms'), 3)} | {bound} | "
          f"{fmt((r.get('timing') or {}).get('wall_ms'), 3)} |")
    w("")
    st = res.get("stats", {})
    s = st.get("calibrated", {})
    if s.get("n"):
        med_ok = s["median_abs_err_pct"] <= MED_BAR
        rho_ok = s["spearman"] is not None and s["spearman"] >= RHO_BAR
        w(f"**Bars** (calibrated target, {s['n']} models): median |error| **{s['median_abs_err_pct']:.1f} %** "
          f"(bar ≤ {MED_BAR:g} %: **{'met' if med_ok else 'not met'}**); Spearman rank correlation "
          f"**{s['spearman']:.3f}** (bar ≥ {RHO_BAR}: **{'met' if rho_ok else 'not met'}**). Mean |error| "
          f"{s['mean_abs_err_pct']:.1f} %, geometric mean predicted/measured {s['geomean_ratio']:.2f}.")
        w("")
        for key, label in (("calibrated_o2", "Calibrated target after `optc opt -p O2`"),
                           ("builtin", "Built-in `cpu` target (uncalibrated)"),
                           ("calibrated_orig", "Calibrated target on the unannotated model files (`--dim` only)")):
            t = st.get(key, {})
            if t.get("n"):
                w(f"- {label}: median |error| {t['median_abs_err_pct']:.1f} %, Spearman {t['spearman']:.3f}, "
                  f"geometric mean predicted/measured {t['geomean_ratio']:.2f}.")
        w("")
        w("| family | models | median \\|error\\| % | Spearman | geomean predicted/measured | after O2: median "
          "\\|error\\| % | Spearman | geomean |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for f, t in res.get("stats_by_family", {}).items():
            t2 = res.get("stats_by_family_o2", {}).get(f) or {}
            o2 = (f"{t2['median_abs_err_pct']:.1f} | {fmt(t2['spearman'], 2)} | {t2['geomean_ratio']:.2f}"
                  if t2.get("n") else "– | – | –")
            w(f"| {f} | {t['n']} | {t['median_abs_err_pct']:.1f} | {fmt(t['spearman'], 2)} | {t['geomean_ratio']:.2f} | "
              f"{o2} |")
        w("")
    # per op type
    pairs = res.get("pairs") or []
    if pairs:
        right = sum(1 for p in pairs if p["right"])
        w("### Before/after pairs: `optc opt -p O2`, `-p quant-w8`, `-p quant-w4`")
        w("")
        w(f"Each model that a pass changes (its op histogram differs) and the pass's output, both timed with "
          f"onnxruntime as above (interleaved) and predicted with the calibrated target. \"Before\" is the model "
          f"the pass ran on: for the cache models, their shape-annotated copy (timed alongside the original, "
          f"since onnxruntime does not run it at the same speed). A change smaller than "
          f"{PAIR_NOISE:.0%} counts as \"no change\" on either side, and so does a measured change within the "
          f"measurement's noise (half the range of the change over the {res.get('rounds', 1)} interleaved rounds, "
          f"the *noise* column); the direction is right when measured and predicted agree (faster / no change / "
          f"slower). The calibrated target models what onnxruntime's own graph "
          f"optimiser does at ORT_ENABLE_ALL (`fused_activations`, `fused_epilogues`, `fused_composites`, constant "
          f"folding of shape arithmetic, `op_efficiency`), so a pass that only does what onnxruntime does anyway "
          f"is predicted as no change.")
        w("")
        w("| model | pass | nodes before → after | measured change | noise ± | predicted change | direction right "
          "| measured change (medians) | right (medians) |")
        w("|---|---|---|---:|---:|---:|---|---:|---|")
        for p in pairs:
            med = p.get("measured_change_median")
            w(f"| {p['model']} | `{p.get('pass', 'O2')}` | {p.get('nodes')} → {p.get('nodes_after')} | "
              f"{p['measured_change']:+.1%} | {p.get('noise', 0.0):.1%} | {p['predicted_change']:+.1%} | "
              f"{'yes' if p['right'] else '**no**'} | {'–' if med is None else f'{med:+.1%}'} | "
              f"{'–' if 'right_median' not in p else ('yes' if p['right_median'] else 'no')} |")
        w("")
        for key, pipeline in PAIR_PASSES:
            sub = [p for p in pairs if p.get("key", "o2") == key]
            if sub:
                w(f"- `{pipeline}`: {sum(p['right'] for p in sub)} of {len(sub)} right")
        w("")
        w(f"**Direction right in {right} of {len(pairs)} pairs ({right / len(pairs):.0%}; bar >= 90 %: "
          f"{'met' if right >= 0.9 * len(pairs) else '**not met**'}).**")
        rm = [p for p in pairs if "right_median" in p]
        if rm:
            w("")
            w(f"On the medians of the runs instead of the fastest: {sum(p['right_median'] for p in rm)} "
              f"of {len(rm)} right.")
        w("")
    agg: dict = {}
    for r in rows:
        if r.get("error") or not r.get("ort_profile") or not (r.get("calibrated") or {}).get("by_op"):
            continue
        for t, d in r["ort_profile"].items():
            k = ORT_OP_MAP.get(t, t)
            agg.setdefault(k, {"ort": 0.0, "life": 0.0, "ort_nodes": 0, "life_nodes": 0, "models": set()})
            agg[k]["ort"] += d["ms"]
            agg[k]["ort_nodes"] += d["nodes"]
            agg[k]["models"].add(r["model"])
        for t, d in r["calibrated"]["by_op"].items():
            if d["ms"] <= 0:
                continue
            t = MM if t in ("MatMul", "Gemm", "com.microsoft::MatMulNBits") else t
            agg.setdefault(t, {"ort": 0.0, "life": 0.0, "ort_nodes": 0, "life_nodes": 0, "models": set()})
            agg[t]["life"] += d["ms"]
            agg[t]["life_nodes"] += d["nodes"]
            agg[t]["models"].add(r["model"])
    if agg:
        w("### Per op type (all models summed)")
        w("")
        w("onnxruntime's profiler (5 profiled runs after the timed ones, ORT_ENABLE_ALL, kernel times summed per op type, the median over the runs; fused kernels "
          "counted under the op they are built on: FusedConv→Conv, MatMul, Gemm, FusedGemm, FusedMatMul→MatMul/Gemm "
          "(ORT fuses MatMul+Add into Gemm), "
          "Gelu/BiasGelu→Erf, SkipLayerNormalization→LayerNormalization; ops that ORT fused away or folded "
          "show 0 ORT nodes) against LIFE's calibrated per-op prediction (optc node counts, before fusion):")
        w("")
        w("| op type | ORT nodes | ORT ms | LIFE nodes | LIFE ms | LIFE / ORT |")
        w("|---|---:|---:|---:|---:|---:|")
        for k, d in sorted(agg.items(), key=lambda kv: -max(kv[1]["ort"], kv[1]["life"]))[:25]:
            ratio = f"{d['life'] / d['ort']:.2f}" if d["ort"] > 0 else "–"
            w(f"| {k} | {d['ort_nodes']} | {d['ort']:.3f} | {d['life_nodes']} | {d['life']:.3f} | {ratio} |")
        w("")
    return L


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--optc", default=os.environ.get("OPTC_BIN", os.path.join(ROOT, "target/release/optc")))
    ap.add_argument("--models-dir", default=os.environ.get("OPTC_MODELS", os.path.expanduser("~/.cache/optc/models")))
    ap.add_argument("--out-dir", default=os.path.join(HERE, "out", "life"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget-s", type=float, default=2.0, help="timed runs per model: about this many seconds")
    ap.add_argument("--rounds", type=int, default=5,
                    help="interleaved timing rounds over all models (each gets budget / rounds per round)")
    ap.add_argument("--report", default=None, help="also write a standalone markdown report here")
    a = ap.parse_args()
    a.optc = os.path.abspath(a.optc)
    t0 = time.perf_counter()
    try:
        res = run(a)
    except Exception as e:  # noqa: BLE001
        res = {"name": "life", "error": f"{type(e).__name__}: {e}", "models": []}
        log(res["error"])
    res["total_s"] = time.perf_counter() - t0
    os.makedirs(a.out_dir, exist_ok=True)
    jp = os.path.join(a.out_dir, "life.json")
    with open(jp, "w") as f:
        json.dump(res, f, indent=1, default=lambda o: sorted(o) if isinstance(o, set) else str(o))
    if a.report:
        out_rel = os.path.relpath(a.out_dir, ROOT) if a.out_dir.startswith(ROOT + os.sep) else a.out_dir
        with open(a.report, "w") as f:
            f.write("# optc benchmark D (standalone)\n\n" + "\n".join(report_lines(res, out_rel)) + "\n")
    print(json.dumps({"json": jp, "error": res.get("error")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
