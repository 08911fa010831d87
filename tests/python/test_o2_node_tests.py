"""`-p O2` on the onnx backend node tests, judged by onnxruntime.

For every node test case whose original model passes in onnxruntime (graph optimisations
off), `optc opt -p O2` must write a model that passes too: same reference outputs, same
comparison as test_node_eval.py (rtol 1e-3, atol 1e-7, NaN equals NaN). Cases optc refuses as
bad input (it refuses them with `-p dce` as well) are left out; a refusal only under O2 fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from optc_helpers import describe_run, run_optc
from test_node_eval import _ort_case


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
        if _ort_case(case, optimize=False)[0] != "pass":
            continue
        out.unlink(missing_ok=True)
        r = run_optc(optc_bin, ["opt", src, "-p", "O2", "-o", out, "-q"])
        if r.returncode != 0 or not out.is_file():
            plain = run_optc(optc_bin, ["opt", src, "-p", "dce", "-o", tmp_path / "d.onnx", "-q"])
            if plain.returncode == 0:
                broken.append(f"{case.name}: O2 fails where dce does not\n{describe_run(r)}")
            continue
        checked += 1
        status, why = _ort_case(case, out, optimize=False)
        if status != "pass":
            broken.append(f"{case.name}: {status}: {why}")
    assert checked > 1000, f"only {checked} cases checked"
    assert not broken, f"{len(broken)} of {checked} node tests break under -p O2:\n" + "\n".join(broken[:30])
