"""`-p O2` on the onnx backend node tests, judged by onnxruntime.

For every node test case whose original model passes in onnxruntime (graph optimisations
off), `optc opt -p O2` must write a model that passes too: same reference outputs, same
comparison as test_node_eval.py (rtol 1e-3, atol 1e-7, NaN equals NaN). Cases optc refuses as
bad input (it refuses them with `-p dce` as well) are left out; a refusal only under O2 fails.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import onnx
import pytest

from optc_helpers import describe_run, run_optc
from test_node_eval import _close, _read_value


def _ort_passes(model_path: Path, case: Path) -> tuple[bool, str]:
    import onnxruntime as ort

    try:
        model = onnx.load(str(model_path))
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        data = case / "test_data_set_0"
        inits = {t.name for t in model.graph.initializer}
        graph_inputs = [i for i in model.graph.input if i.name not in inits]
        inputs = {}
        for i, vi in enumerate(graph_inputs):
            p = data / f"input_{i}.pb"
            if p.exists():
                inputs[vi.name] = _read_value(p, vi.type)
        outs = sess.run(None, inputs)
        for i, (vi, got) in enumerate(zip(model.graph.output, outs)):
            p = data / f"output_{i}.pb"
            if p.exists() and not _close(_read_value(p, vi.type), got):
                return False, f"output {vi.name} differs"
        return True, ""
    except Exception as e:  # noqa: BLE001 - any failure counts as not passing
        return False, (str(e).splitlines() or [type(e).__name__])[0][:200]


def test_o2_keeps_every_node_test_onnxruntime_passes(optc_bin, models_dir: Path, tmp_path: Path):
    root = models_dir / "onnx-node"
    if not root.is_dir():
        pytest.skip(f"no node tests in {root} (run scripts/fetch_models.py)")
    cases = sorted(p for p in root.iterdir() if (p / "model.onnx").is_file())
    assert len(cases) > 1000, f"expected the full onnx node test set, found {len(cases)} cases"
    out = tmp_path / "o2.onnx"
    checked, broken = 0, []
    for case in cases:
        src = case / "model.onnx"
        ok, _ = _ort_passes(src, case)
        if not ok:
            continue
        out.unlink(missing_ok=True)
        r = run_optc(optc_bin, ["opt", src, "-p", "O2", "-o", out, "-q"])
        if r.returncode != 0 or not out.is_file():
            plain = subprocess.run([str(optc_bin), "opt", str(src), "-p", "dce", "-o", str(tmp_path / "d.onnx"), "-q"],
                                   capture_output=True, text=True)
            if plain.returncode == 0:
                broken.append(f"{case.name}: O2 fails where dce does not\n{describe_run(r)}")
            continue
        checked += 1
        ok, why = _ort_passes(out, case)
        if not ok:
            broken.append(f"{case.name}: {why}")
    assert checked > 1000, f"only {checked} cases checked"
    assert not broken, f"{len(broken)} of {checked} node tests break under -p O2:\n" + "\n".join(broken[:30])
