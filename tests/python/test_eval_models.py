"""optc's evaluator against onnxruntime on real models.

For every real model of the cache and every light model (the onnx package's model zoo
samples): `optc run MODEL --input name=x.npy ... -o DIR` on seeded inputs, then every output
must match onnxruntime's (graph optimisations off, one thread) to 1e-4 relative to the
output's largest magnitude (floats; an output whose values all lie below 1e-3, such as a
near-zero probability, is measured against 1e-3, i.e. to 1e-7 absolute), exactly (integers,
bools, strings). Models that quantise activations (QuantizeLinear, DynamicQuantizeLinear) are
held to 1e-3: a last-bit difference in a float sum (onnxruntime picks AVX2 or AVX-512 kernels
by CPU) can move a value across a rounding boundary and flip one 8-bit step downstream.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from optc_helpers import REAL_MODELS, default_models_dir, describe_run, ort_session, random_input, run_optc

MODELS_DIR = default_models_dir()
RTOL = 1e-4
RTOL_QUANTISED = 1e-3
QUANTISING_OPS = {"QuantizeLinear", "DynamicQuantizeLinear"}

_NP_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


def _models():
    ms = [pytest.param(MODELS_DIR / n, id=f"model/{n}") for n in REAL_MODELS]
    ms += [pytest.param(p, id=f"light/{p.stem}") for p in sorted((MODELS_DIR / "onnx-light").glob("*.onnx"))]
    return ms


def file_name(name: str) -> str:
    """The file `optc run -o` writes an output to (as src/runcmd.rs names it)."""
    return "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in name) + ".npy"


def compare(name: str, want, got, rtol: float = RTOL) -> str | None:
    want = np.asarray(want)
    got = np.asarray(got)
    if want.shape != got.shape:
        return f"{name}: shape {got.shape}, onnxruntime {want.shape}"
    if want.dtype.kind in "biuOUS":
        if not np.array_equal(want, got.astype(want.dtype)):
            bad = int(np.sum(want != got.astype(want.dtype)))
            return f"{name}: {bad} of {want.size} values differ"
        return None
    w = want.astype(np.float64)
    g = got.astype(np.float64)
    if not np.array_equal(np.isnan(w), np.isnan(g)):
        return f"{name}: NaN positions differ"
    w = np.nan_to_num(w)
    g = np.nan_to_num(g)
    scale = max(float(np.max(np.abs(w))) if w.size else 0.0, 1e-3)
    diff = float(np.max(np.abs(w - g))) if w.size else 0.0
    if diff > rtol * scale:
        return f"{name}: max |diff| {diff:.3g} is {diff / scale:.3g} of max |value| {scale:.3g} (limit {rtol})"
    return None


@pytest.mark.parametrize("model", _models())
def test_evaluator_matches_onnxruntime(model: Path, optc_bin, tmp_path):
    if not model.is_file():
        pytest.skip(f"{model} is not in the model cache (run scripts/fetch_models.py)")
    sess = ort_session(model, optimize=False)
    ops = {n.op_type for n in onnx.load(str(model), load_external_data=False).graph.node}
    rtol = RTOL_QUANTISED if ops & QUANTISING_OPS else RTOL
    rng = np.random.default_rng(zlib.crc32(model.name.encode()))
    spec = REAL_MODELS.get(model.name, {})
    args = ["run", model, "-o", tmp_path / "out"]
    feeds = {}
    for i in sess.get_inputs():
        if i.type not in _NP_TYPES:
            pytest.skip(f"input {i.name} has type {i.type}")
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in (i.shape or [])]
        x = random_input(rng, _NP_TYPES[i.type], shape, spec.get(i.name))
        feeds[i.name] = x
        f = tmp_path / f"in{len(feeds)}.npy"
        np.save(f, x)
        args += ["--input", f"{i.name}={f}"]
    want = sess.run(None, feeds)
    r = run_optc(optc_bin, args, timeout=600)
    if r.returncode != 0:
        pytest.fail(f"optc run failed on {model.name}\n{describe_run(r)}", pytrace=False)
    problems = []
    for o, w in zip(sess.get_outputs(), want):
        p = tmp_path / "out" / file_name(o.name)
        if not p.is_file():
            problems.append(f"{o.name}: no output file {p.name}")
            continue
        d = compare(o.name, w, np.load(p, allow_pickle=True), rtol)
        if d:
            problems.append(d)
    assert not problems, f"{model.name}: optc's evaluator differs from onnxruntime:\n- " + "\n- ".join(problems)
