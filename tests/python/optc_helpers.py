"""Shared helpers for optc's Python test suite (imported by the test modules)."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[2]

# Models that scripts/fetch_models.py puts in the cache, with the inputs to feed
# them. Shapes not listed here come from the model (symbolic dims -> 1).
# Each entry: input name -> dict(shape=..., kind=..., low/high or value).
REAL_MODELS: dict[str, dict[str, dict]] = {
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": {
        "x": {"shape": [1, 3, 48, 192]},
    },
    "ch_PP-OCRv4_det_infer.onnx": {
        # The model is meant for 640x640; 320x320 exercises the same graph faster.
        "x": {"shape": [1, 3, 320, 320]},
    },
    "ch_PP-OCRv4_rec_infer.onnx": {
        "x": {"shape": [1, 3, 48, 320]},
    },
    "silero_vad.onnx": {
        "input": {"shape": [1, 512]},
        "state": {"shape": [2, 1, 128]},
        "sr": {"shape": [], "value": 16000},
    },
    "silero_vad_op18_ifless.onnx": {
        "input": {"shape": [1, 512]},
        "state": {"shape": [2, 1, 128]},
        "sr": {"shape": [], "value": 16000},
    },
    "paraphrase-MiniLM-L3-v2.onnx": {
        "input_ids": {"shape": [1, 16], "low": 0, "high": 1000},
        "attention_mask": {"shape": [1, 16], "value": 1},
        "token_type_ids": {"shape": [1, 16], "value": 0},
    },
    "open_nsfw.onnx": {
        "input_0": {"shape": [1, 224, 224, 3]},
    },
    "magika_standard_v3_3.onnx": {
        "bytes": {"shape": [1, 2048], "low": 0, "high": 256},
    },
    "smart-turn-v3.2-cpu.onnx": {
        "input_features": {"shape": [1, 80, 800]},
    },
}

# Ops whose output may differ from run to run (unless seeded).
RANDOM_OPS = {
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
    "Bernoulli", "Multinomial",
}


def default_models_dir() -> Path:
    env = os.environ.get("OPTC_MODELS")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "optc" / "models"


def default_optc_bin() -> Path:
    env = os.environ.get("OPTC_BIN")
    if env:
        return Path(env)
    return REPO / "target" / "release" / "optc"


def run_optc(optc_bin: Path, args: list, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.setdefault("RUST_BACKTRACE", "1")
    return subprocess.run(
        [str(optc_bin), *[str(a) for a in args]],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        timeout=timeout, cwd=cwd, env=env, text=True, errors="replace",
    )


def describe_run(r: subprocess.CompletedProcess, limit: int = 3000) -> str:
    def cut(s: str) -> str:
        s = s.strip()
        return s if len(s) <= limit else s[:limit] + f"... [{len(s) - limit} more chars]"
    return (f"command: {' '.join(r.args)}\nexit code: {r.returncode}\n"
            f"--- stderr ---\n{cut(r.stderr)}\n--- stdout ---\n{cut(r.stdout)}")


# ----------------------------------------------------------------------------
# protobuf comparison

def _label(msg) -> str:
    """A short tag for an element of a repeated message field (its name/op)."""
    parts = []
    for attr in ("op_type", "name", "key", "domain"):
        try:
            fd = msg.DESCRIPTOR.fields_by_name.get(attr)
        except AttributeError:
            return ""
        if fd is not None and fd.type == fd.TYPE_STRING:
            v = getattr(msg, attr)
            if v:
                parts.append(f"{attr}={v!r}")
    return "{" + ", ".join(parts) + "}" if parts else ""


def _short(v, limit: int = 80) -> str:
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    if hasattr(v, "ListFields"):
        return f"<{type(v).__name__}{_label(v)}>"
    if not isinstance(v, str) and hasattr(v, "__len__"):
        items = list(v)
        if items and hasattr(items[0], "ListFields"):
            return f"[{len(items)} x {type(items[0]).__name__}: " + ", ".join(
                _short(x, 40) for x in items[:3]) + (", ...]" if len(items) > 3 else "]")
        v = items
    s = repr(v)
    return s if len(s) <= limit else s[:limit] + "..."


def _scalar_eq(x, y) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        if math.isnan(x) and math.isnan(y):
            return True
        return x == y and math.copysign(1, x) == math.copysign(1, y)
    return x == y


def _is_repeated(fd) -> bool:
    rep = getattr(fd, "is_repeated", None)
    if rep is not None:
        return rep() if callable(rep) else bool(rep)
    return fd.label == fd.LABEL_REPEATED


def proto_diff(a, b, path: str = "model", limit: int = 8) -> list[str]:
    """Human-readable differences between two protobuf messages (IN vs OUT)."""
    diffs: list[str] = []

    def walk(x, y, p):
        if len(diffs) >= limit:
            return
        fx = {f.name: (f, v) for f, v in x.ListFields()}
        fy = {f.name: (f, v) for f, v in y.ListFields()}
        for name in sorted(set(fx) | set(fy)):
            if len(diffs) >= limit:
                return
            if name not in fy:
                diffs.append(f"{p}.{name}: present in IN ({_short(fx[name][1])}), missing in OUT")
                continue
            if name not in fx:
                diffs.append(f"{p}.{name}: missing in IN, present in OUT ({_short(fy[name][1])})")
                continue
            fd, vx = fx[name]
            vy = fy[name][1]
            is_msg = fd.type == fd.TYPE_MESSAGE
            if _is_repeated(fd):
                lx, ly = list(vx), list(vy)
                if len(lx) != len(ly):
                    diffs.append(f"{p}.{name}: {len(lx)} entries in IN, {len(ly)} in OUT")
                for i, (ex, ey) in enumerate(zip(lx, ly)):
                    if len(diffs) >= limit:
                        return
                    if is_msg:
                        if ex != ey or ex.SerializeToString(deterministic=True) != ey.SerializeToString(deterministic=True):
                            walk(ex, ey, f"{p}.{name}[{i}]{_label(ex)}")
                    elif not _scalar_eq(ex, ey):
                        diffs.append(f"{p}.{name}[{i}]: IN {_short(ex)} != OUT {_short(ey)}")
            elif is_msg:
                if vx != vy or vx.SerializeToString(deterministic=True) != vy.SerializeToString(deterministic=True):
                    walk(vx, vy, f"{p}.{name}")
            elif not _scalar_eq(vx, vy):
                if isinstance(vx, bytes) and isinstance(vy, bytes):
                    n = min(len(vx), len(vy))
                    first = next((i for i in range(n) if vx[i] != vy[i]), n)
                    diffs.append(f"{p}.{name}: bytes differ (IN {len(vx)} bytes, OUT {len(vy)} bytes, "
                                 f"first difference at offset {first})")
                else:
                    diffs.append(f"{p}.{name}: IN {_short(vx)} != OUT {_short(vy)}")
        if not diffs and x.SerializeToString(deterministic=True) != y.SerializeToString(deterministic=True):
            diffs.append(f"{p}: serialized bytes differ but no known field does (unknown fields?)")

    walk(a, b, path)
    return diffs


# ----------------------------------------------------------------------------
# onnxruntime

def ort_session(path: Path, optimize: bool = True):
    """A single-threaded CPU session (deterministic).

    optimize=False turns off onnxruntime's own graph rewrites: two graphs that
    compute the same thing can otherwise get different fusions (and so
    different float rounding) from onnxruntime itself.
    """
    import onnxruntime as ort
    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def first_line(e: BaseException, limit: int = 300) -> str:
    s = str(e).strip().splitlines()
    s = s[0] if s else type(e).__name__
    return s if len(s) <= limit else s[:limit] + "..."


class RawTensor:
    """An ORT output that numpy cannot represent (bfloat16, float8, int4...)."""

    def __init__(self, elem_type: str, shape, data: bytes):
        self.elem_type, self.shape, self.data = elem_type, tuple(shape), data

    def __repr__(self):
        return f"RawTensor({self.elem_type}, {self.shape}, {len(self.data)} bytes)"


def _is_exotic(a) -> bool:
    # user-defined numpy dtypes (ml_dtypes' bfloat16, float8_*, int4...) have num >= 256
    return isinstance(a, np.ndarray) and (a.dtype.num >= 256 or a.dtype.kind == "V")


# onnx element types that have the same size as a numpy integer type
_SAME_SIZE_VIEW = {
    onnx.TensorProto.BFLOAT16: np.uint16,
    onnx.TensorProto.FLOAT8E4M3FN: np.uint8,
    onnx.TensorProto.FLOAT8E4M3FNUZ: np.uint8,
    onnx.TensorProto.FLOAT8E5M2: np.uint8,
    onnx.TensorProto.FLOAT8E5M2FNUZ: np.uint8,
}
if hasattr(onnx.TensorProto, "FLOAT8E8M0"):
    _SAME_SIZE_VIEW[onnx.TensorProto.FLOAT8E8M0] = np.uint8


def ort_run(sess, feeds: dict, elem_types: dict[str, int]) -> list:
    """sess.run, falling back to OrtValues for element types numpy lacks.

    elem_types maps input names to onnx element types (for exotic inputs).
    Outputs that numpy cannot hold come back as RawTensor.
    """
    import ctypes

    import onnxruntime as ort
    try:
        return sess.run(None, feeds)
    except Exception as first:  # noqa: BLE001
        exotic_in = any(_is_exotic(v) for v in feeds.values())
        if not (exotic_in or "numpy" in str(first).lower()):
            raise
        err = first
    ovs = {}
    for k, v in feeds.items():
        if not isinstance(v, np.ndarray):
            raise err
        v = np.ascontiguousarray(v)
        if _is_exotic(v):
            et = elem_types.get(k)
            view = _SAME_SIZE_VIEW.get(et)
            if view is None or np.dtype(view).itemsize != v.dtype.itemsize:
                raise err
            ovs[k] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(v.view(view), et)
        else:
            ovs[k] = ort.OrtValue.ortvalue_from_numpy(v)
    res = []
    for o in sess.run_with_ort_values(None, ovs):
        if not o.is_tensor():
            raise err
        try:
            res.append(o.numpy())
        except Exception:  # noqa: BLE001
            res.append(RawTensor(o.data_type(), o.shape(),
                                 ctypes.string_at(o.data_ptr(), o.tensor_size_in_bytes())))
    return res


def values_equal(a, b, path: str = "") -> str | None:
    """None when a and b are bit-identical ORT outputs, else what differs.

    Handles tensors (NaN == NaN, and +0.0 != -0.0), sequences (lists),
    maps (dicts) and optionals (None).
    """
    if isinstance(a, RawTensor) or isinstance(b, RawTensor):
        if not (isinstance(a, RawTensor) and isinstance(b, RawTensor)):
            return f"{path}: IN {a!r} vs OUT {b!r}"
        if (a.elem_type, a.shape) != (b.elem_type, b.shape):
            return f"{path}: IN {a!r} vs OUT {b!r}"
        if a.data != b.data:
            n = sum(1 for x, y in zip(a.data, b.data) if x != y)
            return f"{path}: {n} of {len(a.data)} bytes differ ({a.elem_type})"
        return None
    if a is None or b is None:
        return None if a is None and b is None else f"{path}: one is None (IN {type(a).__name__}, OUT {type(b).__name__})"
    if isinstance(a, dict) or isinstance(b, dict):
        if not (isinstance(a, dict) and isinstance(b, dict)):
            return f"{path}: IN {type(a).__name__} vs OUT {type(b).__name__}"
        if set(a) != set(b):
            return f"{path}: map keys differ"
        for k in a:
            d = values_equal(a[k], b[k], f"{path}[{k!r}]")
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))):
            return f"{path}: IN {type(a).__name__} vs OUT {type(b).__name__}"
        if len(a) != len(b):
            return f"{path}: sequence length IN {len(a)} vs OUT {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = values_equal(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype != b.dtype:
        return f"{path}: dtype IN {a.dtype} vs OUT {b.dtype}"
    if a.shape != b.shape:
        return f"{path}: shape IN {a.shape} vs OUT {b.shape}"
    if a.dtype.kind in "fc":
        same = np.array_equal(a, b, equal_nan=True)
        if same and a.dtype.kind == "f":
            same = np.array_equal(np.signbit(a), np.signbit(b))
        if not same:
            with np.errstate(all="ignore"):
                bad = ~((a == b) | (np.isnan(a) & np.isnan(b)))
                n = int(bad.sum())
                diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
                maxdiff = float(np.nanmax(diff)) if diff.size else 0.0
            return (f"{path}: {n} of {a.size} elements differ (max abs diff {maxdiff:g}; "
                    f"first at {np.unravel_index(int(np.argmax(bad)), a.shape) if n else 'signbit'})")
        return None
    if a.dtype.kind in "biuUSO":
        if not np.array_equal(a, b):
            n = int((a != b).sum()) if a.shape else 1
            return f"{path}: {n} of {a.size} elements differ"
        return None
    # exotic dtypes (ml_dtypes bfloat16, float8, ...): compare the bits
    if a.tobytes() != b.tobytes():
        return f"{path}: bytes differ ({a.dtype})"
    return None


def random_input(rng: np.random.Generator, np_dtype, shape, spec: dict | None = None):
    spec = spec or {}
    shape = list(spec.get("shape", shape))
    np_dtype = np.dtype(np_dtype)
    if "value" in spec:
        return np.full(shape, spec["value"], dtype=np_dtype)
    if np_dtype.kind == "f":
        return rng.standard_normal(shape).astype(np_dtype)
    if np_dtype.kind in "iu":
        low = spec.get("low", 0)
        high = spec.get("high", 10)
        return rng.integers(low, high, size=shape).astype(np_dtype)
    if np_dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if np_dtype.kind in "OUS":
        return np.array(["optc"] * int(np.prod(shape)), dtype=object).reshape(shape)
    raise ValueError(f"cannot generate input of dtype {np_dtype}")


def seeded_feeds(path: Path, n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """n seeded input sets for the model at `path`: the shapes, values and integer ranges of
    REAL_MODELS where it has them, else the declared dims (unknown ones 1); floats standard
    normal, integers uniform in [low, high) (default [0, 100))."""
    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    spec = REAL_MODELS.get(path.name, {})
    rng = np.random.default_rng(seed)
    dtypes = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32}
    out = []
    for _ in range(n):
        feed = {}
        for i in m.graph.input:
            if i.name in inits:
                continue
            s = spec.get(i.name, {})
            shape = s.get("shape") or [d.dim_value or 1 for d in i.type.tensor_type.shape.dim]
            dt = dtypes[i.type.tensor_type.elem_type]
            if "value" in s:
                a = np.full(shape, s["value"], dt)
            elif dt == np.float32:
                a = rng.standard_normal(shape).astype(np.float32)
            else:
                a = rng.integers(s.get("low", 0), s.get("high", 100), size=shape).astype(dt)
            feed[i.name] = a
        out.append(feed)
    return out
