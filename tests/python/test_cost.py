"""`optc cost` and `optc targets`: the LIFE cost model from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from optc_helpers import default_models_dir, describe_run, run_optc
from synthetic_models import SYNTHETIC


def test_targets_lists_the_builtins(optc_bin):
    r = run_optc(optc_bin, ["targets"])
    assert r.returncode == 0, describe_run(r)
    for t in ("cpu", "npu", "igpu", "gpu"):
        assert f"\n  {t} " in r.stdout, r.stdout
    r = run_optc(optc_bin, ["targets", "--show", "npu"])
    assert r.returncode == 0 and "tops" in r.stdout and "mem_bw_gbs" in r.stdout, describe_run(r)


@pytest.mark.parametrize("target", ["cpu", "npu", "igpu", "gpu"])
def test_cost_json_covers_every_node(optc_bin, tmp_path: Path, target):
    src = tmp_path / "m.onnx"
    onnx.save(SYNTHETIC["conv_bn_nhwc"](), src)
    r = run_optc(optc_bin, ["cost", src, "--target", target, "--json"])
    assert r.returncode == 0, describe_run(r)
    rep = json.loads(r.stdout)
    assert rep["target"] == target
    assert len(rep["nodes"]) == len(onnx.load(str(src)).graph.node)
    assert rep["totals"]["time_s"] > 0 and rep["totals"]["ops"] > 0
    conv = [n for n in rep["nodes"] if n["op"] == "Conv"][0]
    # Conv 8x3x3x3 on a 2x3x8x8 input, no padding: 2*8*6*6 outputs, 27 MACs (2 ops) each,
    # plus one add per output for the bias.
    outputs = 2 * 8 * 6 * 6
    assert conv["ops"] == pytest.approx(outputs * 27 * 2 + outputs)


def test_cost_text_report_and_opt_summary(optc_bin, tmp_path: Path):
    src = tmp_path / "m.onnx"
    onnx.save(SYNTHETIC["conv_bn_nhwc"](), src)
    r = run_optc(optc_bin, ["cost", src, "--target", "npu"])
    assert r.returncode == 0, describe_run(r)
    assert "most expensive nodes" in r.stdout and "total:" in r.stdout, r.stdout
    r = run_optc(optc_bin, ["opt", src, "-p", "O2", "-o", tmp_path / "o.onnx", "--target", "npu"])
    assert r.returncode == 0, describe_run(r)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("predicted (npu)")]
    assert line, r.stdout


def test_fusion_lowers_predicted_latency(optc_bin, tmp_path: Path):
    """Folding BatchNorm and the affine chain removes whole passes over the activations."""
    src = tmp_path / "m.onnx"
    onnx.save(SYNTHETIC["conv_bn_nhwc"](), src)
    out = tmp_path / "o.onnx"
    assert run_optc(optc_bin, ["opt", src, "-p", "O2", "-o", out]).returncode == 0
    t = [json.loads(run_optc(optc_bin, ["cost", p, "--json"]).stdout)["totals"]["time_s"] for p in (src, out)]
    assert t[1] < t[0], t


def test_llm_forecast_w2_gate_up_beats_w4(optc_bin):
    def tps(cfg):
        r = run_optc(optc_bin, ["cost", "--llm-config", cfg, "--target", "npu", "--json",
                                "--llm", "prompt=512,gen=64,context=2048"])
        assert r.returncode == 0, describe_run(r)
        m = json.loads(r.stdout)
        assert m["ttft_s"] > 0 and m["tpot_s"] > 0 and m["kv_cache_bytes"] > 0
        return m["tps"]
    w4 = tps("preset=llama3-8b,wbits=4")
    w2 = tps("preset=llama3-8b,wbits=4,gate_up_bits=2")
    gain = w2 / w4 - 1
    assert 0.075 <= gain <= 0.233, gain


def test_bad_target_and_config_are_clear_errors(optc_bin, tmp_path: Path):
    bad = tmp_path / "t.toml"
    bad.write_text('name = "x"\nmem_bw_gbs = "fast"\n')
    src = tmp_path / "m.onnx"
    onnx.save(SYNTHETIC["tiny_relu"](), src)
    r = run_optc(optc_bin, ["cost", src, "--target", str(bad)])
    assert r.returncode == 2 and "t.toml" in r.stderr and "panicked" not in r.stderr, describe_run(r)
    r = run_optc(optc_bin, ["cost", src, "--target", "tpu9000"])
    assert r.returncode == 2 and "npu" in r.stderr, describe_run(r)
    r = run_optc(optc_bin, ["cost", "--llm-config", "layers=32,hiden=4096"])
    assert r.returncode == 2 and "hiden" in r.stderr, describe_run(r)


def test_cost_on_real_models_reads_no_data(optc_bin):
    models = sorted(default_models_dir().glob("*.onnx"))
    if not models:
        pytest.skip("no models in the cache")
    for m in models:
        r = run_optc(optc_bin, ["cost", m, "--json"])
        assert r.returncode == 0, describe_run(r)
        rep = json.loads(r.stdout)
        assert rep["totals"]["time_s"] > 0, m.name
