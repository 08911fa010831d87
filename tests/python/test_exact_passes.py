"""The built-in cleanup passes must keep a model valid and its outputs within
their declared exactness: dce, identity, shape-fold, cse, simplify, fold-gather and
fuse-pad bit-identical; fold
(constants computed by optc's evaluator, which may round transcendental
functions differently from onnxruntime's kernels) within rtol 1e-5, atol 1e-6.

For each pass and each model (built here, plus the real and light models of
the cache): `optc opt IN -p PASS -o OUT` exits 0, OUT passes the onnx checker
whenever IN does, OUT loads in onnxruntime, keeps the graph outputs (names, in
order), and computes bit-identical outputs on seeded random inputs (onnxruntime's graph optimisations off, one thread).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from optc_helpers import (
    REAL_MODELS, default_models_dir, describe_run, first_line, ort_session, random_input,
    run_optc, values_equal,
)
from synthetic_models import SYNTHETIC

PASSES = ["dce", "identity", "shape-fold", "cse", "fold", "transpose", "fuse-bn", "fuse-norm", "fuse-act", "fuse-qkv",
          "simplify", "fold-gather", "fuse-pad", "sink-bias"]
# Passes declared Rounding{rtol, atol} (as `optc passes` lists them); the others are Exact.
ROUNDING = {"fold": (1e-5, 1e-6), "fuse-bn": (1e-4, 1e-5), "fuse-norm": (1e-4, 1e-5), "fuse-act": (1e-4, 1e-5),
            "sink-bias": (1e-4, 1e-5)}
MODELS_DIR = default_models_dir()

_NP_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


# Generated families (`optc gen`), with input specs for the token models.
_TOKENS = {"shape": [2, 8], "high": 100}
ZOO = {
    "mobilenet": {}, "resnet": {}, "convnext": {}, "vit": {},
    "bert": {"input_ids": _TOKENS, "attention_mask": {"shape": [2, 8], "low": 1, "high": 2},
             "token_type_ids": {"shape": [2, 8], "high": 2}},
    "gpt2": {"input_ids": _TOKENS}, "llama": {"input_ids": _TOKENS},
}


def _models():
    ms = [pytest.param("synthetic", n, id=f"synthetic/{n}") for n in SYNTHETIC]
    ms += [pytest.param("zoo", n, id=f"zoo/{n}") for n in ZOO]
    ms += [pytest.param("real", str(MODELS_DIR / n), id=f"model/{n}") for n in REAL_MODELS]
    light = sorted((MODELS_DIR / "onnx-light").glob("*.onnx"))
    ms += [pytest.param("light", str(p), id=f"light/{p.stem}") for p in light]
    return ms


@pytest.mark.parametrize("kind,model", _models())
@pytest.mark.parametrize("pass_name", PASSES)
def test_exact_pass_keeps_outputs(pass_name, kind, model, optc_bin, tmp_path):
    if kind == "synthetic":
        src = tmp_path / f"{model}.onnx"
        onnx.save(SYNTHETIC[model](), src)
    elif kind == "zoo":
        src = tmp_path / f"{model}.onnx"
        g = run_optc(optc_bin, ["gen", model, "--seed", "0", "-o", src])
        assert g.returncode == 0, describe_run(g)
    else:
        src = Path(model)
        if not src.is_file():
            pytest.skip(f"{src} is not in the model cache (run scripts/fetch_models.py)")
    out = tmp_path / "out" / "out.onnx"
    out.parent.mkdir()
    who = f"[{pass_name}] {src}"
    r = run_optc(optc_bin, ["opt", src, "-p", pass_name, "-o", out], timeout=600)
    if r.returncode != 0 or "panicked" in r.stderr or not out.is_file():
        pytest.fail(f"{who}: optc failed\n{describe_run(r)}", pytrace=False)

    problems = []
    m_in = onnx.load(str(src), load_external_data=False)
    m_out = onnx.load(str(out), load_external_data=False)
    if [o.name for o in m_in.graph.output] != [o.name for o in m_out.graph.output]:
        problems.append(f"graph outputs changed: {[o.name for o in m_in.graph.output]} -> "
                        f"{[o.name for o in m_out.graph.output]}")
    try:
        onnx.checker.check_model(str(src), full_check=True)
        try:
            onnx.checker.check_model(str(out), full_check=True)
        except Exception as e:  # noqa: BLE001
            problems.append(f"OUT fails onnx.checker (IN passes): {first_line(e)}")
    except Exception:  # noqa: BLE001
        pass

    # onnxruntime's own fusions are off: they would differ between IN and OUT.
    s_in = ort_session(src, optimize=False)
    try:
        s_out = ort_session(out, optimize=False)
    except Exception as e:  # noqa: BLE001
        problems.append(f"OUT does not load in onnxruntime: {first_line(e)}")
    else:
        rng = np.random.default_rng(zlib.crc32(src.name.encode()))
        spec = ZOO.get(src.stem, {}) if kind == "zoo" else REAL_MODELS.get(src.name, {})
        feeds = {}
        for i in s_in.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in (i.shape or [])]
            feeds[i.name] = random_input(rng, _NP_TYPES[i.type], shape, spec.get(i.name))
        want = s_in.run(None, feeds)
        try:
            got = s_out.run(None, feeds)
        except Exception as e:  # noqa: BLE001
            problems.append(f"OUT fails to run in onnxruntime: {first_line(e)}")
        else:
            for o, a, b in zip(s_in.get_outputs(), want, got):
                if pass_name in ROUNDING and isinstance(a, np.ndarray) and a.dtype.kind == "f":
                    rtol, atol = ROUNDING[pass_name]
                    ok = a.shape == b.shape and np.allclose(b, a, rtol=rtol, atol=atol, equal_nan=True)
                    d = None if ok else (f"output {o.name!r}: max |diff| "
                                         f"{float(np.max(np.abs(a.astype(np.float64) - b))):.3g} "
                                         f"exceeds rtol {rtol}, atol {atol}")
                else:
                    d = values_equal(a, b, f"output {o.name!r}")
                if d:
                    problems.append(d)
    if problems:
        pytest.fail(f"{who}: pass `{pass_name}` breaks its declared exactness:\n- " + "\n- ".join(problems)
                    + (f"\noptc stderr:\n{r.stderr.strip()[:2000]}" if r.stderr.strip() else ""),
                    pytrace=False)
    out.unlink()
