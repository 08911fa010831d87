"""optc's evaluator against onnxruntime on the onnx backend node tests.

`cargo test -p optc-eval --test node_tests` (run by scripts/test before pytest) runs every node
test case with optc's evaluator and writes `target/node-tests/optc.tsv` (case, status, detail).
This module runs the same cases with onnxruntime, with the same comparison (rtol 1e-3,
atol 1e-7, NaN equals NaN), and requires optc to pass at least 95 % of the cases onnxruntime
passes. It writes `target/node-tests/ort.tsv` and `target/node-tests/summary.txt` (the rate and
the failing ops) for the record.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from optc_helpers import REPO

RESULTS = REPO / "target" / "node-tests"
REQUIRED_RATE = 0.95


def _read_value(path: Path, type_proto: onnx.TypeProto | None):
    data = path.read_bytes()
    kind = type_proto.WhichOneof("value") if type_proto is not None else "tensor_type"
    if kind == "sequence_type":
        seq = onnx.SequenceProto()
        seq.ParseFromString(data)
        return numpy_helper.to_list(seq)
    if kind == "optional_type":
        opt = onnx.OptionalProto()
        opt.ParseFromString(data)
        return numpy_helper.to_optional(opt)
    t = onnx.TensorProto()
    t.ParseFromString(data)
    return numpy_helper.to_array(t)


def _close(expected, got) -> bool:
    if expected is None or got is None:
        return expected is None and got is None
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(
            _close(e, g) for e, g in zip(expected, got))
    expected = np.asarray(expected)
    got = np.asarray(got)
    if expected.shape != got.shape:
        return False
    if expected.dtype.kind in "OUS":
        return expected.astype(str).tolist() == got.astype(str).tolist()
    if expected.dtype.kind in "biu" or expected.dtype == bool:
        return np.array_equal(expected, got.astype(expected.dtype))
    try:
        e = expected.astype(np.float64)
        g = got.astype(np.float64)
    except (TypeError, ValueError):
        return False
    both_nan = np.isnan(e) & np.isnan(g)
    ok = both_nan | (e == g) | (np.abs(e - g) <= 1e-7 + 1e-3 * np.abs(e))
    return bool(ok.all())


def _ort_case(case: Path, model_path: Path | None = None, optimize: bool = True) -> tuple[str, str]:
    """Runs node test `case` in onnxruntime on its model (or on `model_path`, e.g. an optimised
    copy) and compares with the case's reference outputs: ("pass" | "fail" | "error", detail)."""
    import onnxruntime as ort

    model_path = model_path or case / "model.onnx"
    try:
        model = onnx.load(str(model_path))
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        if not optimize:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        data = case / "test_data_set_0"
        inputs = {}
        graph_inputs = [i for i in model.graph.input
                        if i.name not in {t.name for t in model.graph.initializer}]
        for i, vi in enumerate(graph_inputs):
            p = data / f"input_{i}.pb"
            if p.exists():
                inputs[vi.name] = _read_value(p, vi.type)
        outs = sess.run(None, inputs)
        for i, (vi, got) in enumerate(zip(model.graph.output, outs)):
            p = data / f"output_{i}.pb"
            if not p.exists():
                continue
            if not _close(_read_value(p, vi.type), got):
                return "fail", f"output {vi.name} differs"
        return "pass", ""
    except Exception as e:  # noqa: BLE001 - any failure of onnxruntime counts as not passing
        return "error", str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def _op_of(case: Path) -> str:
    try:
        m = onnx.load(str(case / "model.onnx"), load_external_data=False)
        ops = [n.op_type for n in m.graph.node]
        return ops[-1] if ops else "?"
    except Exception:  # noqa: BLE001
        return "?"


def test_node_tests_pass_rate_vs_onnxruntime(models_dir: Path):
    root = models_dir / "onnx-node"
    if not root.is_dir():
        pytest.skip(f"no node tests in {root} (run scripts/fetch_models.py)")
    tsv = RESULTS / "optc.tsv"
    if not tsv.is_file():
        pytest.fail(f"{tsv} is missing: run `cargo test --release -p optc-eval --test node_tests` first",
                    pytrace=False)
    optc = {}
    for line in tsv.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            optc[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")

    cases = sorted(p for p in root.iterdir() if (p / "model.onnx").is_file())
    assert len(cases) > 1000, f"expected the full onnx node test set, found {len(cases)} cases"
    missing = [c.name for c in cases if c.name not in optc]
    assert not missing, f"optc.tsv lacks {len(missing)} cases, e.g. {missing[:5]}"

    ort_rows = []
    ort_pass = []
    for case in cases:
        status, detail = _ort_case(case)
        ort_rows.append(f"{case.name}\t{status}\t{detail}")
        if status == "pass":
            ort_pass.append(case)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ort.tsv").write_text("\n".join(ort_rows) + "\n")

    failing = [c for c in ort_pass if optc[c.name][0] != "pass"]
    passed = len(ort_pass) - len(failing)
    rate = passed / len(ort_pass)
    by_op = collections.Counter(_op_of(c) for c in failing)
    optc_only = sum(1 for c in cases if optc[c.name][0] == "pass") - passed
    summary = [
        f"cases: {len(cases)}; onnxruntime passes {len(ort_pass)}",
        f"optc passes {passed} of those: {100 * rate:.2f} %",
        f"optc also passes {optc_only} cases onnxruntime does not",
        "failing ops (cases onnxruntime passes): "
        + ", ".join(f"{op} x{n}" for op, n in by_op.most_common()),
    ]
    (RESULTS / "summary.txt").write_text("\n".join(summary) + "\n")
    print("\n".join(summary))
    assert rate >= REQUIRED_RATE, "\n".join(summary + [
        f"{c.name}: {optc[c.name][0]}: {optc[c.name][1]}" for c in failing[:40]])
