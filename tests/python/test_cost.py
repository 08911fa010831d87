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
    # One row per node, or per kernel the runtime forms (`Fused[Conv+BatchNormalization]`).
    def members(op: str) -> int:
        return len(op[len("Fused["):-1].split("+")) if op.startswith("Fused[") else 1
    assert sum(members(n["op"]) for n in rep["nodes"]) == len(onnx.load(str(src)).graph.node)
    assert rep["totals"]["time_s"] > 0 and rep["totals"]["ops"] > 0
    conv = [n for n in rep["nodes"] if n["op"] == "Conv" or n["op"].startswith("Fused[Conv+")][0]
    # Conv 8x3x3x3 on a 2x3x8x8 input, no padding: 2*8*6*6 outputs, 27 MACs (2 ops) each,
    # plus one add per output for the bias (and the folded BatchNorm's work in a fused row).
    outputs = 2 * 8 * 6 * 6
    if conv["op"] == "Conv":
        assert conv["ops"] == pytest.approx(outputs * 27 * 2 + outputs)
    else:
        assert conv["ops"] >= outputs * 27 * 2 + outputs
    # Without the runtime's fusions (analysis as written: `cost --json` of a target that fuses
    # nothing) every node has its own row and the Conv's figure is exact.
    plain = tmp_path / "plain.toml"
    text = run_optc(optc_bin, ["targets", "--show", target]).stdout
    for k in ("fused_activations", "fused_epilogues", "fused_composites"):
        text = text.replace(f"{k} = true", f"{k} = false")
    plain.write_text(text)
    r = run_optc(optc_bin, ["cost", src, "--target", plain, "--json"])
    assert r.returncode == 0, describe_run(r)
    rep = json.loads(r.stdout)
    assert len(rep["nodes"]) == len(onnx.load(str(src)).graph.node)
    conv = [n for n in rep["nodes"] if n["op"] == "Conv"][0]
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


def test_llm_metrics_from_a_decoder_graph(optc_bin, tmp_path):
    """`optc cost MODEL --llm ...` on a KV-cache decoder binds its dims per step: the KV cache is
    exactly layers x 2 x kv_heads x head_dim x context x 4 bytes, the weights match the config
    forecast of the same shape, and TTFT/TPOT grow with the prompt and the context."""
    src = tmp_path / "llama_kv.onnx"
    spec = "layers=4,hidden=256,heads=4,kv_heads=2,ffn=688,vocab=1000"
    r = run_optc(optc_bin, ["gen", f"llama-kv:{spec}", "-o", src])
    assert r.returncode == 0, describe_run(r)

    def metrics(workload: str) -> dict:
        r = run_optc(optc_bin, ["cost", src, "--target", "cpu", "--json", "--llm", workload])
        assert r.returncode == 0, describe_run(r)
        return json.loads(r.stdout)

    a = metrics("prompt=128,gen=32")
    b = metrics("prompt=1024,gen=32")
    c = metrics("prompt=128,gen=32,context=2048")
    assert a["kv_cache_bytes"] == 4 * 2 * 2 * 64 * 160 * 4
    assert c["kv_cache_bytes"] == 4 * 2 * 2 * 64 * 2048 * 4
    assert b["ttft_s"] > a["ttft_s"] > 0
    assert c["tpot_s"] > a["tpot_s"] > 0
    assert abs(a["tps"] * a["tpot_s"] - 1) < 1e-9
    cfg = json.loads(run_optc(optc_bin, ["cost", "--llm-config",
                                         "layers=4,hidden=256,heads=4,kv_heads=2,intermediate=688,vocab=1000,wbits=32",
                                         "--json", "--llm", "prompt=128,gen=32"]).stdout)
    assert abs(a["weight_bytes"] / cfg["weight_bytes"] - 1) < 0.01, (a["weight_bytes"], cfg["weight_bytes"])
    # a model that is not a decoder is a clear error
    cnn = tmp_path / "cnn.onnx"
    assert run_optc(optc_bin, ["gen", "tiny-cnn", "-o", cnn]).returncode == 0
    r = run_optc(optc_bin, ["cost", cnn, "--llm", "prompt=128"])
    assert r.returncode == 2 and "input_ids" in r.stderr, describe_run(r)


def test_bench_life_writes_a_calibrated_target_optc_accepts(optc_bin, tmp_path: Path):
    """bench/life.py's calibrated target file: the built-in cpu target with fitted figures and every
    op_efficiency factor replaced (bare keys such as `Erf` too) or added, never duplicated."""
    import importlib.util
    import tomllib
    spec = importlib.util.spec_from_file_location("life", Path(__file__).resolve().parents[2] / "bench" / "life.py")
    life = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(life)
    r = run_optc(optc_bin, ["targets", "--show", "cpu"])
    assert r.returncode == 0, describe_run(r)
    fit = {"eff_compute": 0.17, "eff_memory": 0.32, "launch_overhead_us": 0.2, "cache_bw_gbs": 80.0,
           "skipnorm_efficiency": 0.035, "nbits_efficiency": 0.97,
           "op_efficiency": {"Erf": 0.31, "com.microsoft::Gelu": 0.21, "Cos": 0.5},
           "weight_pass": {"eff_stream": 0.19, "resident_mb": 16.5, "resident_exp": 1.5, "unpack_ns": 0.1,
                           "gemv_unpack_ns": 0.03}, "micro": []}
    path = tmp_path / "cpu-calibrated.toml"
    life.write_target(r.stdout, fit, str(path), "test machine")
    t = tomllib.loads(path.read_text())
    eff = t["op_efficiency"]
    assert (eff["Erf"], eff["com.microsoft::Gelu"], eff["Cos"]) == (0.31, 0.21, 0.5)
    assert eff["com.microsoft::MatMulNBits"] == 0.97 and eff["com.microsoft::SkipLayerNormalization"] == 0.035
    assert (t["eff_compute"], t["eff_memory"]) == (0.17, 0.32)
    assert t["weight_pass"] == fit["weight_pass"]
    # Written twice, the table is replaced, not repeated (TOML would reject a duplicate).
    life.write_target(path.read_text(), fit, str(path), "test machine")
    assert tomllib.loads(path.read_text())["weight_pass"] == fit["weight_pass"]
    m = tmp_path / "m.onnx"
    onnx.save(SYNTHETIC["gelu_erf"](), str(m))
    r = run_optc(optc_bin, ["cost", m, "--target", path, "--json"])
    assert r.returncode == 0, describe_run(r)
    assert json.loads(r.stdout)["target"] == "cpu-calibrated"
