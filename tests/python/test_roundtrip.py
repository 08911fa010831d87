"""`optc opt IN -p "" -o OUT` must give back the same model.

For every ONNX model in the cache (the real models, every onnx backend node
case, every onnx "light" model) and a few models built here:
  * optc exits 0 and writes OUT;
  * onnx.load(IN) == onnx.load(OUT) as protobuf messages, and their
    deterministic serialisations are byte-equal;
  * OUT passes onnx.checker.check_model(full_check=True) whenever IN does;
  * OUT loads in onnxruntime whenever IN does, and gives bit-identical outputs
    on the same inputs (node cases: test_data_set_0; other models: seeded
    random inputs built from the declared input types).
A failure names the model and lists every check that failed.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from optc_helpers import (
    RANDOM_OPS, REAL_MODELS, default_models_dir, describe_run, first_line, ort_run, ort_session,
    proto_diff, random_input, run_optc, values_equal,
)
from synthetic_models import SYNTHETIC

MODELS_DIR = default_models_dir()
FETCH_HINT = "run scripts/fetch_models.py (or scripts/test) to fill the model cache"


def _cases():
    cases = []
    for name in SYNTHETIC:
        cases.append(pytest.param("synthetic", name, id=f"synthetic/{name}"))
    for name in REAL_MODELS:
        cases.append(pytest.param("real", str(MODELS_DIR / name), id=f"model/{name}"))
    for kind, sub in (("light", "onnx-light"), ("node", "onnx-node")):
        d = MODELS_DIR / sub
        if kind == "light":
            found = sorted(d.glob("*.onnx")) if d.is_dir() else []
            ids = [p.stem for p in found]
        else:
            found = sorted(p / "model.onnx" for p in d.iterdir()
                           if (p / "model.onnx").is_file()) if d.is_dir() else []
            ids = [p.parent.name for p in found]
        if not found:
            cases.append(pytest.param(kind, str(d), id=f"{kind}/<missing>"))
        for p, i in zip(found, ids):
            cases.append(pytest.param(kind, str(p), id=f"{kind}/{i}"))
    return cases


_NP_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint64)": np.uint64, "tensor(uint32)": np.uint32,
    "tensor(uint16)": np.uint16, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


class Unsupported(Exception):
    """The harness cannot build inputs for this model (ORT part skipped)."""


def _random_feeds(model_path: Path, sess) -> dict:
    spec = REAL_MODELS.get(model_path.name, {})
    rng = np.random.default_rng(zlib.crc32(model_path.name.encode()))
    feeds = {}
    for i in sess.get_inputs():
        dt = _NP_TYPES.get(i.type)
        if dt is None:
            raise Unsupported(f"input {i.name!r} has type {i.type}")
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in (i.shape or [])]
        feeds[i.name] = random_input(rng, dt, shape, spec.get(i.name))
    return feeds


def _node_feeds(model_path: Path, m: onnx.ModelProto) -> dict:
    ds = model_path.parent / "test_data_set_0"
    files = sorted(ds.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
    init_names = {t.name for t in m.graph.initializer}
    graph_inputs = [i for i in m.graph.input if i.name not in init_names]
    feeds = {}
    for idx, f in enumerate(files):
        gi = graph_inputs[idx] if idx < len(graph_inputs) else None
        which = gi.type.WhichOneof("value") if gi is not None else "tensor_type"
        data = f.read_bytes()
        if which == "tensor_type":
            p = onnx.TensorProto()
            p.ParseFromString(data)
            val = numpy_helper.to_array(p)
        elif which == "sequence_type":
            p = onnx.SequenceProto()
            p.ParseFromString(data)
            val = numpy_helper.to_list(p)
        elif which == "optional_type":
            p = onnx.OptionalProto()
            p.ParseFromString(data)
            val = numpy_helper.to_optional(p)
        else:
            raise Unsupported(f"{f.name}: input of kind {which}")
        name = p.name or (gi.name if gi is not None else None)
        if not name:
            raise Unsupported(f"{f.name}: cannot tell which input it is")
        feeds[name] = val
    return feeds


def _has_random_ops(m: onnx.ModelProto) -> bool:
    def in_graph(g) -> bool:
        for n in g.node:
            if n.op_type in RANDOM_OPS:
                return True
            for a in n.attribute:
                if a.HasField("g") and in_graph(a.g):
                    return True
                if any(in_graph(sg) for sg in a.graphs):
                    return True
        return False
    if in_graph(m.graph):
        return True
    return any(n.op_type in RANDOM_OPS for f in m.functions for n in f.node)


def _run(sess, feeds, elem_types):
    names = [o.name for o in sess.get_outputs()]
    return names, ort_run(sess, feeds, elem_types)


@pytest.mark.parametrize("kind,model", _cases())
def test_roundtrip_empty_pipeline(kind, model, optc_bin, tmp_path):
    if kind == "synthetic":
        src = tmp_path / "in" / f"{model}.onnx"
        src.parent.mkdir()
        onnx.save(SYNTHETIC[model](), src)
    else:
        src = Path(model)
        if not src.exists():
            pytest.skip(f"{src} is not in the model cache: {FETCH_HINT}")
    # ORT must run these: if it cannot, the harness (inputs, shapes) is wrong.
    strict_ort = kind in ("real", "light", "synthetic")
    out = tmp_path / "out" / "out.onnx"
    out.parent.mkdir()
    who = f"[{kind}] {src}"

    r = run_optc(optc_bin, ["opt", src, "-p", "", "-o", out],
                 timeout=60 if kind == "node" else 600)
    if r.returncode != 0 or "panicked" in r.stderr:
        pytest.fail(f"{who}: `optc opt -p \"\"` failed\n{describe_run(r)}", pytrace=False)
    if not out.is_file():
        pytest.fail(f"{who}: optc exited 0 but wrote no {out}\n{describe_run(r)}", pytrace=False)

    problems: list[str] = []
    notes: list[str] = []

    # 1. protobuf equality
    m_in = onnx.load(str(src), load_external_data=False)
    try:
        m_out = onnx.load(str(out), load_external_data=False)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"{who}: OUT does not parse as an ONNX model: {first_line(e)}", pytrace=False)
    bytes_in = m_in.SerializeToString(deterministic=True)
    bytes_out = m_out.SerializeToString(deterministic=True)
    if bytes_in != bytes_out:
        diffs = proto_diff(m_in, m_out)
        problems.append(
            f"protobuf differs (deterministic serialisation: IN {len(bytes_in)} bytes, "
            f"OUT {len(bytes_out)} bytes):\n    " + "\n    ".join(diffs or ["(no field-level difference found)"]))
    elif m_in != m_out:
        # Same bytes, unequal messages: only possible with NaN in float fields,
        # where protobuf's == is false even for a message and its own copy.
        copy = onnx.ModelProto()
        copy.CopyFrom(m_in)
        if copy == m_in:
            problems.append("protobuf messages compare unequal although their serialisations match:\n    "
                            + "\n    ".join(proto_diff(m_in, m_out)))
        else:
            notes.append("message == is false even for IN itself (NaN in a float field); bytes equal")

    # 2. checker
    try:
        onnx.checker.check_model(str(src), full_check=True)
        in_checks = True
    except Exception as e:  # noqa: BLE001
        in_checks = False
        notes.append(f"IN fails onnx.checker ({first_line(e, 150)}); OUT's checker result not required")
    if in_checks:
        try:
            onnx.checker.check_model(str(out), full_check=True)
        except Exception as e:  # noqa: BLE001
            problems.append(f"OUT fails onnx.checker (IN passes): {first_line(e)}")

    # 3. onnxruntime: OUT loads whenever IN does, and computes the same bits.
    _ort_compare(kind, src, out, m_in, strict_ort, problems, notes)

    if problems:
        msg = f"{who}: round trip through `optc opt -p \"\"` is not exact:\n- " + "\n- ".join(problems)
        if notes:
            msg += "\nnotes:\n- " + "\n- ".join(notes)
        if r.stderr.strip():
            msg += f"\noptc stderr:\n{r.stderr.strip()[:2000]}"
        pytest.fail(msg, pytrace=False)
    for n in notes:
        print(f"{who}: note: {n}")
    out.unlink()


def _ort_compare(kind, src: Path, out: Path, m_in, strict: bool, problems: list, notes: list):
    try:
        s_in = ort_session(src)
    except Exception as e:  # noqa: BLE001
        (problems if strict else notes).append(f"IN does not load in onnxruntime ({first_line(e, 200)})")
        return
    try:
        s_out = ort_session(out)
    except Exception as e:  # noqa: BLE001
        problems.append(f"OUT does not load in onnxruntime although IN does: {first_line(e)}")
        return
    try:
        feeds = _node_feeds(src, m_in) if kind == "node" else _random_feeds(src, s_in)
    except Unsupported as e:
        (problems if strict else notes).append(f"onnxruntime comparison skipped: {e}")
        return
    elem_types = {i.name: i.type.tensor_type.elem_type for i in m_in.graph.input
                  if i.type.HasField("tensor_type")}
    try:
        names_in, res_in = _run(s_in, feeds, elem_types)
    except Exception as e:  # noqa: BLE001
        (problems if strict else notes).append(
            f"IN does not run in onnxruntime ({first_line(e, 200)}); output comparison skipped")
        return
    try:
        names_out, res_out = _run(s_out, feeds, elem_types)
    except Exception as e:  # noqa: BLE001
        problems.append(f"OUT fails to run in onnxruntime although IN runs: {first_line(e)}")
        return
    if names_in != names_out:
        problems.append(f"output names differ: IN {names_in} vs OUT {names_out}")
        return
    if _has_random_ops(m_in):
        _, again = _run(ort_session(src), feeds, elem_types)
        if any(values_equal(a, b) for a, b in zip(res_in, again)):
            notes.append("IN is not deterministic (random ops); output comparison skipped")
            return
    for name, a, b in zip(names_in, res_in, res_out):
        d = values_equal(a, b, f"output {name!r}")
        if d:
            problems.append(f"onnxruntime outputs differ: {d}")
