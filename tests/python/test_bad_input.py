"""Bad input must be rejected cleanly by `optc opt BAD -p "" -o OUT`:
exit code 2, an error on stderr that names the problem, no Rust panic, and
nothing written where OUT would go (no OUT, no temp files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from optc_helpers import default_models_dir, describe_run, run_optc
from synthetic_models import tiny_relu, weights_model


def _save(m: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # onnx.save does not validate, so broken models can be written.
    path.write_bytes(m.SerializeToString())
    return path


def _model(nodes, inputs, outputs, initializer=(), opset=17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "bad", inputs, outputs, initializer=list(initializer))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _vi(name, shape=(4, 4)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _external_tensor(name: str, location: str, length: int = 64) -> onnx.TensorProto:
    t = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[4, 4])
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", str(length))):
        t.external_data.add(key=k, value=v)
    return t


def _external_model(location: str) -> onnx.ModelProto:
    return _model([helper.make_node("Add", ["X", "ext_weight"], ["Y"], name="add_ext")],
                  [_vi("X")], [_vi("Y")], [_external_tensor("ext_weight", location)])


# Each builder gets a fresh directory and returns (input path, [all of these
# words], [at least one of these words]); matching is case-insensitive.

def bad_empty(d: Path):
    p = d / "empty.onnx"
    p.write_bytes(b"")
    return p, ["empty"], []


def bad_random_bytes(d: Path):
    p = d / "random.onnx"
    p.write_bytes(np.random.default_rng(20240601).bytes(4096))
    return p, [], ["decode", "protobuf", "not an onnx"]


def bad_truncated_synthetic(d: Path):
    data = weights_model(64).SerializeToString()
    p = d / "truncated.onnx"
    p.write_bytes(data[: len(data) // 2])
    return p, [], ["truncated", "decode"]


def bad_truncated_real(d: Path):
    src = default_models_dir() / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    if not src.is_file():
        pytest.skip(f"{src} is not in the model cache (run scripts/fetch_models.py)")
    data = src.read_bytes()
    p = d / "truncated_real.onnx"
    p.write_bytes(data[: len(data) // 2])
    return p, [], ["truncated", "decode"]


def bad_raw_data_length(d: Path):
    w = onnx.TensorProto(name="bad_weight", data_type=TensorProto.FLOAT, dims=[4, 4])
    w.raw_data = b"\x00" * 10  # 4*4 floats need 64 bytes
    m = _model([helper.make_node("Add", ["X", "bad_weight"], ["Y"], name="add_w")],
               [_vi("X")], [_vi("Y")], [w])
    return _save(m, d / "raw_data.onnx"), ["raw_data", "bad_weight"], []


def bad_undefined_value(d: Path):
    m = _model([helper.make_node("Relu", ["ghost_value"], ["Y"], name="consumer_node")],
               [_vi("X")], [_vi("Y")])
    return _save(m, d / "undefined.onnx"), ["ghost_value", "consumer_node"], []


def bad_cycle(d: Path):
    nodes = [
        helper.make_node("Add", ["X", "b_out"], ["a_out"], name="node_a"),
        helper.make_node("Relu", ["a_out"], ["b_out"], name="node_b"),
        helper.make_node("Identity", ["b_out"], ["Y"], name="node_out"),
    ]
    return _save(_model(nodes, [_vi("X")], [_vi("Y")]), d / "cycle.onnx"), ["cycle"], []


def bad_external_missing(d: Path):
    p = _save(_external_model("missing_weights.bin"), d / "ext_missing.onnx")
    return p, ["external", "missing_weights.bin"], []


def bad_external_dotdot(d: Path):
    # The file exists, so only the path check can reject it.
    model_dir = d / "model"
    (d / "secret.bin").write_bytes(b"\x00" * 64)
    p = _save(_external_model("../secret.bin"), model_dir / "ext_dotdot.onnx")
    return p, [], ["..", "outside"]


def bad_external_absolute(d: Path):
    target = (d / "abs_weights.bin").resolve()
    target.write_bytes(b"\x00" * 64)
    p = _save(_external_model(str(target)), d / "ext_abs.onnx")
    return p, ["absolute"], []


def bad_opset_version(d: Path):
    return _save(tiny_relu(opset=99), d / "opset99.onnx"), ["opset"], []


def bad_missing_file(d: Path):
    return d / "does_not_exist.onnx", ["does_not_exist.onnx"], []


CASES = [
    bad_empty, bad_random_bytes, bad_truncated_synthetic, bad_truncated_real,
    bad_raw_data_length, bad_undefined_value, bad_cycle, bad_external_missing,
    bad_external_dotdot, bad_external_absolute, bad_opset_version, bad_missing_file,
]


@pytest.mark.parametrize("build", CASES, ids=[c.__name__[4:] for c in CASES])
def test_bad_input_is_rejected(build, optc_bin, tmp_path):
    indir = tmp_path / "in"
    indir.mkdir()
    outdir = tmp_path / "out"
    outdir.mkdir()
    src, all_words, any_words = build(indir)
    out = outdir / "out.onnx"

    r = run_optc(optc_bin, ["opt", src, "-p", "", "-o", out], timeout=120)
    ctx = f"case {build.__name__[4:]} ({src.name})\n{describe_run(r)}"
    problems = []
    if r.returncode != 2:
        problems.append(f"exit code {r.returncode}, expected 2")
    if "panicked" in r.stderr:
        problems.append("optc panicked instead of reporting an error")
    err = r.stderr.lower()
    if not err.strip():
        problems.append("nothing on stderr")
    missing = [w for w in all_words if w.lower() not in err]
    if missing:
        problems.append(f"stderr does not mention {missing}")
    if any_words and not any(w.lower() in err for w in any_words):
        problems.append(f"stderr mentions none of {any_words}")
    left = sorted(p.name for p in outdir.iterdir())
    if left:
        problems.append(f"files left in the output directory: {left}")
    if problems:
        pytest.fail(f"{ctx}\nproblems:\n- " + "\n- ".join(problems), pytrace=False)


def test_random_bytes_are_not_a_model():
    """Guards the random-bytes case: it must really be undecodable."""
    data = np.random.default_rng(20240601).bytes(4096)
    m = onnx.ModelProto()
    with pytest.raises(Exception):
        m.ParseFromString(data)
