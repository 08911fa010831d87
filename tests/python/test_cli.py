"""The optc command line: --help, `passes`, `inspect`, usage errors,
--external-data modes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from optc_helpers import default_models_dir, describe_run, ort_session, run_optc, values_equal
from synthetic_models import histogram_model, weights_model


def _word(name: str) -> re.Pattern:
    """`name` as a whole pass name (not part of a longer one like `dcee`)."""
    return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.IGNORECASE)


def test_help(optc_bin):
    r = run_optc(optc_bin, ["--help"])
    assert r.returncode == 0, describe_run(r)
    for sub in ("opt", "inspect", "passes"):
        assert _word(sub).search(r.stdout), f"--help does not mention `{sub}`\n{describe_run(r)}"


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["opt"], ["opt", "--no-such-flag"]],
                         ids=["no-args", "unknown-subcommand", "opt-without-input", "unknown-flag"])
def test_usage_errors_exit_2(optc_bin, args):
    r = run_optc(optc_bin, args)
    assert r.returncode == 2, describe_run(r)
    assert r.stderr.strip(), f"no message on stderr\n{describe_run(r)}"
    assert "panicked" not in r.stderr, describe_run(r)


def test_passes_lists_builtin_passes_with_exactness(optc_bin):
    r = run_optc(optc_bin, ["passes"])
    assert r.returncode == 0, describe_run(r)
    lines = r.stdout.splitlines()

    def indent(ln: str) -> int:
        return len(ln) - len(ln.lstrip())

    for name in ("dce", "identity", "shape-fold"):
        starts = [i for i, ln in enumerate(lines) if ln.strip().split(" ")[0] == name
                  or _word(name).match(ln.strip())]
        assert starts, f"`optc passes` does not list `{name}`\n{describe_run(r)}"
        # the entry: its first line plus the more-indented lines under it
        i = starts[0]
        block = [lines[i]]
        for ln in lines[i + 1:]:
            if ln.strip() and indent(ln) <= indent(lines[i]):
                break
            block.append(ln)
        assert re.search(r"exact", "\n".join(block), re.IGNORECASE), (
            f"`optc passes` gives no exactness for `{name}`:\n" + "\n".join(block)
            + f"\n{describe_run(r)}")


def _op_count_shown(text: str, op: str, count: int) -> bool:
    for ln in text.splitlines():
        if re.search(rf"\b{op}\b", ln) and re.search(rf"(?<![\w.]){count}(?![\w.])",
                                                     re.sub(rf"\b{op}\b", "", ln)):
            return True
    return False


def test_inspect_shows_op_histogram_and_inputs(optc_bin, tmp_path):
    p = tmp_path / "hist.onnx"
    onnx.save(histogram_model(), p)
    r = run_optc(optc_bin, ["inspect", p])
    assert r.returncode == 0, describe_run(r)
    for op, n in (("Relu", 2), ("MatMul", 1), ("Add", 1)):
        assert _op_count_shown(r.stdout, op, n), f"no `{op}` with count {n} in the histogram\n{describe_run(r)}"
    for name in ("in_a", "in_b"):
        assert name in r.stdout, f"input `{name}` not shown\n{describe_run(r)}"


def test_inspect_ir(optc_bin, tmp_path):
    p = tmp_path / "hist.onnx"
    onnx.save(histogram_model(), p)
    r = run_optc(optc_bin, ["inspect", p, "--ir"])
    assert r.returncode == 0, describe_run(r)
    for word in ("Relu", "MatMul", "in_a"):
        assert word in r.stdout, f"`inspect --ir` output lacks `{word}`\n{describe_run(r)}"


def test_inspect_real_model(optc_bin):
    p = default_models_dir() / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    if not p.is_file():
        pytest.skip(f"{p} is not in the model cache (run scripts/fetch_models.py)")
    m = onnx.load(str(p), load_external_data=False)
    counts: dict[str, int] = {}
    for n in m.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    op, n = max(counts.items(), key=lambda kv: kv[1])
    r = run_optc(optc_bin, ["inspect", p])
    assert r.returncode == 0, describe_run(r)
    assert _op_count_shown(r.stdout, op, n), f"no `{op}` with count {n}\n{describe_run(r)}"
    assert "x" in re.findall(r"\w+", r.stdout), f"input `x` not shown\n{describe_run(r)}"


def test_unknown_pass_suggests_closest(optc_bin, tmp_path):
    p = tmp_path / "hist.onnx"
    onnx.save(histogram_model(), p)
    outdir = tmp_path / "out"
    outdir.mkdir()
    r = run_optc(optc_bin, ["opt", p, "-p", "dcee", "-o", outdir / "o.onnx"])
    assert r.returncode == 2, describe_run(r)
    assert "panicked" not in r.stderr, describe_run(r)
    assert "dcee" in r.stderr, f"the unknown name is not reported\n{describe_run(r)}"
    assert _word("dce").search(r.stderr), f"no suggestion of `dce`\n{describe_run(r)}"
    assert not list(outdir.iterdir()), f"output written despite the error: {list(outdir.iterdir())}"


# ---------------------------------------------------------------------------
# --external-data

def _arrays(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}


def _external_locations(m: onnx.ModelProto) -> list[str]:
    locs = []
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            locs.append(next((e.value for e in t.external_data if e.key == "location"), ""))
    return locs


@pytest.mark.parametrize("in_external", [False, True], ids=["in-inline", "in-external"])
@pytest.mark.parametrize("mode", ["never", "always", "auto"])
def test_external_data_modes(optc_bin, tmp_path, mode, in_external):
    indir = tmp_path / "in"
    indir.mkdir()
    outdir = tmp_path / "out"
    outdir.mkdir()
    src = indir / "weights.onnx"
    m = weights_model(128)  # W is 64 KiB
    if in_external:
        onnx.save(m, src, save_as_external_data=True, all_tensors_to_one_file=True,
                  location="weights.bin", size_threshold=1024)
    else:
        onnx.save(m, src)
    out = outdir / "out.onnx"
    r = run_optc(optc_bin, ["opt", src, "-p", "", "-o", out, "--external-data", mode])
    assert r.returncode == 0, describe_run(r)
    assert out.is_file(), describe_run(r)

    m_out_raw = onnx.load(str(out), load_external_data=False)
    locs = _external_locations(m_out_raw)
    for loc in locs:
        assert loc and not Path(loc).is_absolute() and ".." not in Path(loc).parts, \
            f"bad external location {loc!r}"
        assert (outdir / loc).is_file(), f"external file {loc!r} missing next to OUT"
    if mode == "never":
        assert not locs, f"--external-data never wrote external tensors: {locs}"
        assert sorted(p.name for p in outdir.iterdir()) == ["out.onnx"]
    if mode == "always":
        big = [t.name for t in m_out_raw.graph.initializer
               if t.data_location == onnx.TensorProto.EXTERNAL]
        assert "W" in big, f"--external-data always kept the 64 KiB tensor W inline ({big})"

    want = _arrays(onnx.load(str(src)))
    got = _arrays(onnx.load(str(out)))
    assert sorted(want) == sorted(got)
    for k in want:
        assert want[k].dtype == got[k].dtype and np.array_equal(want[k], got[k]), f"initializer {k} differs"

    x = {"X": np.random.default_rng(3).standard_normal((1, 128)).astype(np.float32)}
    a = ort_session(src).run(None, x)
    b = ort_session(out).run(None, x)
    d = values_equal(a, b, "outputs")
    assert d is None, d
