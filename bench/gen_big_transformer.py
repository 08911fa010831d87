#!/usr/bin/env python3
"""Generate a seeded, transformer-like ONNX model with large EXTERNAL weights.

    python bench/gen_big_transformer.py --out DIR --seed 0 --target-gb 2.3 [--verify]

Writes DIR/model.onnx (the graph, a few hundred KB) and DIR/model.onnx.data
(every initializer of 1024 bytes or more, each at a 4096-byte aligned offset).

The network (opset 17, float32, pre-LayerNorm decoder-ish encoder):

    input_ids[batch, seq] int64
      -> Gather(token_embedding) + Gather(position_embedding, Range(0, seq))
      -> N x [ LayerNormalization -> Q/K/V MatMul+Add -> Reshape/Transpose heads
               -> MatMul(Q, K^T) * 1/sqrt(dh) -> Softmax -> MatMul(., V)
               -> Transpose/Reshape -> MatMul+Add (out proj) -> residual Add
               -> LayerNormalization -> MatMul+Add (4d) -> GELU via Erf
               -> MatMul+Add (d) -> residual Add ]
      -> LayerNormalization -> last_hidden_state[batch, seq, d] float32

The number of layers is chosen so the weights total about --target-gb * 1e9
bytes.  Weights are streamed to disk one tensor (or one embedding chunk) at a
time, so peak memory stays around the size of the largest single tensor chunk
(a few tens of MB), never the whole model.  The same arguments give
byte-identical files (numpy PCG64 seeded with --seed; the proto is serialised
deterministically).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper

ALIGN = 4096
INLINE_MAX = 1024  # tensors smaller than this stay inside model.onnx
EMB_CHUNK_ROWS = 4096


class Writer:
    """Streams initializer bytes into one external data file."""

    def __init__(self, path: str, location: str, rng: np.random.Generator):
        self.f = open(path, "wb")
        self.location = location
        self.rng = rng
        self.initializers: list[TensorProto] = []
        self.total_bytes = 0

    def _pad(self):
        pos = self.f.tell()
        rem = pos % ALIGN
        if rem:
            self.f.write(b"\0" * (ALIGN - rem))

    def _external(self, name: str, dims, nbytes: int, offset: int) -> str:
        t = TensorProto()
        t.name = name
        t.data_type = TensorProto.FLOAT
        t.dims.extend(dims)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.location), ("offset", str(offset)), ("length", str(nbytes))):
            e = t.external_data.add()
            e.key = k
            e.value = v
        self.initializers.append(t)
        self.total_bytes += nbytes
        return name

    def random(self, name: str, dims, scale: float = 0.02, mean: float = 0.0) -> str:
        """Normal(mean, scale) float32 weights, generated and written in row chunks."""
        dims = list(dims)
        n = int(np.prod(dims))
        if n * 4 < INLINE_MAX:
            a = (self.rng.standard_normal(n, dtype=np.float32) * np.float32(scale) + np.float32(mean))
            return self.inline(name, a.reshape(dims))
        self._pad()
        offset = self.f.tell()
        row = int(np.prod(dims[1:])) if len(dims) > 1 else n
        rows = dims[0] if len(dims) > 1 else 1
        step = max(1, min(rows, (EMB_CHUNK_ROWS * 1024) // max(row, 1)))
        done = 0
        while done < rows:
            k = min(step, rows - done)
            a = self.rng.standard_normal(k * row, dtype=np.float32)
            a *= np.float32(scale)
            if mean:
                a += np.float32(mean)
            self.f.write(a.astype("<f4", copy=False).tobytes())
            done += k
        return self._external(name, dims, n * 4, offset)

    def inline(self, name: str, arr: np.ndarray) -> str:
        t = onnx.numpy_helper.from_array(arr, name)
        self.initializers.append(t)
        return name

    def close(self):
        self.f.close()


def layer_bytes(d: int, ff: int) -> int:
    params = 4 * (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d
    return params * 4


def build(out_dir: str, seed: int, target_gb: float, d: int, heads: int, vocab: int,
          max_pos: int, ff_mult: int, layers: int | None) -> dict:
    os.makedirs(out_dir, exist_ok=True)
    model_path = os.path.join(out_dir, "model.onnx")
    data_name = "model.onnx.data"
    data_path = os.path.join(out_dir, data_name)
    assert d % heads == 0, "hidden must be divisible by heads"
    dh = d // heads
    ff = ff_mult * d
    emb_bytes = (vocab + max_pos) * d * 4
    if layers is None:
        target = target_gb * 1e9
        layers = max(1, round((target - emb_bytes - 2 * d * 4) / layer_bytes(d, ff)))

    rng = np.random.Generator(np.random.PCG64(seed))
    w = Writer(data_path, data_name, rng)
    nodes: list = []
    counter = [0]

    def nm(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def node(op, inputs, n_out=1, name=None, **attrs):
        name = name or nm(op)
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    # small shared constants (inline)
    c_half = w.inline("const_half", np.array(0.5, np.float32))
    c_one = w.inline("const_one", np.array(1.0, np.float32))
    c_inv_sqrt2 = w.inline("const_inv_sqrt2", np.array(1.0 / math.sqrt(2.0), np.float32))
    c_scale = w.inline("const_attn_scale", np.array(1.0 / math.sqrt(dh), np.float32))
    c_heads_shape = w.inline("const_heads_shape", np.array([0, 0, heads, dh], np.int64))
    c_merge_shape = w.inline("const_merge_shape", np.array([0, 0, d], np.int64))
    c_zero_i = w.inline("const_zero_i64", np.array(0, np.int64))
    c_one_i = w.inline("const_one_i64", np.array(1, np.int64))
    c_idx1 = w.inline("const_idx1", np.array(1, np.int64))

    # embeddings
    wte = w.random("embeddings.word.weight", [vocab, d])
    wpe = w.random("embeddings.position.weight", [max_pos, d])
    tok = node("Gather", [wte, "input_ids"], name="embeddings.word.gather", axis=0)
    shp = node("Shape", ["input_ids"], name="embeddings.shape")
    seq = node("Gather", [shp, c_idx1], name="embeddings.seq_len", axis=0)
    pos_ids = node("Range", [c_zero_i, seq, c_one_i], name="embeddings.position_ids")
    pos = node("Gather", [wpe, pos_ids], name="embeddings.position.gather", axis=0)
    x = node("Add", [tok, pos], name="embeddings.add")

    def ln(prefix, inp):
        g = w.random(f"{prefix}.weight", [d], scale=0.02, mean=1.0)
        b = w.random(f"{prefix}.bias", [d], scale=0.02)
        return node("LayerNormalization", [inp, g, b], name=prefix, axis=-1, epsilon=1e-5)

    def linear(prefix, inp, n_in, n_out):
        W = w.random(f"{prefix}.weight", [n_in, n_out])
        B = w.random(f"{prefix}.bias", [n_out])
        mm = node("MatMul", [inp, W], name=f"{prefix}.matmul")
        return node("Add", [mm, B], name=f"{prefix}.add")

    for i in range(layers):
        p = f"layers.{i}"
        h = ln(f"{p}.ln1", x)
        q = linear(f"{p}.attn.q", h, d, d)
        k = linear(f"{p}.attn.k", h, d, d)
        v = linear(f"{p}.attn.v", h, d, d)
        qh = node("Transpose", [node("Reshape", [q, c_heads_shape], name=f"{p}.attn.q.split")],
                  name=f"{p}.attn.q.perm", perm=[0, 2, 1, 3])
        kh = node("Transpose", [node("Reshape", [k, c_heads_shape], name=f"{p}.attn.k.split")],
                  name=f"{p}.attn.k.perm", perm=[0, 2, 3, 1])
        vh = node("Transpose", [node("Reshape", [v, c_heads_shape], name=f"{p}.attn.v.split")],
                  name=f"{p}.attn.v.perm", perm=[0, 2, 1, 3])
        s = node("MatMul", [qh, kh], name=f"{p}.attn.scores")
        s = node("Mul", [s, c_scale], name=f"{p}.attn.scale")
        a = node("Softmax", [s], name=f"{p}.attn.softmax", axis=-1)
        o = node("MatMul", [a, vh], name=f"{p}.attn.context")
        o = node("Transpose", [o], name=f"{p}.attn.merge.perm", perm=[0, 2, 1, 3])
        o = node("Reshape", [o, c_merge_shape], name=f"{p}.attn.merge")
        o = linear(f"{p}.attn.out", o, d, d)
        x = node("Add", [x, o], name=f"{p}.attn.residual")
        h = ln(f"{p}.ln2", x)
        h = linear(f"{p}.ffn.up", h, d, ff)
        # GELU(h) = h * 0.5 * (1 + erf(h / sqrt(2)))
        e = node("Erf", [node("Mul", [h, c_inv_sqrt2], name=f"{p}.ffn.gelu.scale")], name=f"{p}.ffn.gelu.erf")
        e = node("Add", [e, c_one], name=f"{p}.ffn.gelu.add1")
        e = node("Mul", [e, c_half], name=f"{p}.ffn.gelu.half")
        h = node("Mul", [h, e], name=f"{p}.ffn.gelu")
        h = linear(f"{p}.ffn.down", h, ff, d)
        x = node("Add", [x, h], name=f"{p}.ffn.residual")

    y = ln("final_ln", x)
    nodes.append(helper.make_node("Identity", [y], ["last_hidden_state"], name="output"))
    w.close()

    graph = helper.make_graph(
        nodes,
        "big_transformer",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", d])],
        initializer=w.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="optc-bench-gen",
        producer_version="1",
        ir_version=8,
    )
    model.doc_string = (f"seeded synthetic transformer: seed={seed} layers={layers} d={d} heads={heads} "
                        f"ff={ff} vocab={vocab} max_pos={max_pos}")
    with open(model_path, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))
    return {
        "model": model_path,
        "data": data_path,
        "layers": layers,
        "weights_bytes": w.total_bytes,
        "data_file_bytes": os.path.getsize(data_path),
        "proto_bytes": os.path.getsize(model_path),
        "nodes": len(nodes),
        "initializers": len(w.initializers),
    }


def verify(model_path: str, seq: int = 8) -> None:
    t = time.perf_counter()
    onnx.checker.check_model(model_path)  # by path: external data is checked, not loaded
    print(f"onnx.checker.check_model: ok ({time.perf_counter() - t:.1f}s)")
    import onnxruntime as ort

    t = time.perf_counter()
    so = ort.SessionOptions()
    sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    ids = np.arange(seq, dtype=np.int64).reshape(1, seq) % 1000
    (y,) = sess.run(None, {"input_ids": ids})
    assert y.shape[:2] == (1, seq), y.shape
    assert np.isfinite(y).all(), "non-finite output"
    print(f"onnxruntime {ort.__version__}: ok, output {y.shape} mean={float(y.mean()):.4f} "
          f"std={float(y.std()):.4f} ({time.perf_counter() - t:.1f}s)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory (model.onnx + model.onnx.data)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target-gb", type=float, default=2.3, help="weights total, in 1e9 bytes")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--max-pos", type=int, default=512)
    ap.add_argument("--ff-mult", type=int, default=4)
    ap.add_argument("--layers", type=int, default=None, help="override the layer count (ignores --target-gb)")
    ap.add_argument("--verify", action="store_true", help="run onnx.checker (by path) and onnxruntime on batch 1, seq 8")
    a = ap.parse_args(argv)
    t = time.perf_counter()
    info = build(a.out, a.seed, a.target_gb, a.hidden, a.heads, a.vocab, a.max_pos, a.ff_mult, a.layers)
    info["gen_seconds"] = round(time.perf_counter() - t, 2)
    for k, v in info.items():
        print(f"{k}: {v}")
    if a.verify:
        verify(info["model"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
