"""`optc gen`: the synthetic model families of src/zoo.rs.

For every family (default options, plus non-default ones for bert and llama): the generated
file passes `onnx.checker.check_model(full_check=True)`, runs in onnxruntime (graph
optimisations off) on seeded inputs with finite, non-constant outputs, and `optc run` matches
onnxruntime to 1e-4 of the output's largest magnitude (floored at 1e-3), as in
test_eval_models.py. Generation is deterministic per seed, and unknown options are refused with
a message naming them.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest

from optc_helpers import describe_run, ort_session, run_optc

RTOL = 1e-4
BATCH, SEQ = 2, 12
MAX_BYTES = 5 * 1024 * 1024

CASES = [
    "tiny-cnn",
    "mobilenet",
    "resnet",
    "convnext",
    "vit",
    "bert",
    "bert:layers=3,hidden=96,heads=6,ffn=200,vocab=500,max_pos=64,type_vocab=3",
    "gpt2",
    "llama",
    "llama:layers=3,hidden=96,heads=6,kv_heads=3,ffn=256,vocab=700,max_pos=64,rope_base=500000",
    "llama:trained_stats=1",
    "llama:layers=2,hidden=64,heads=4,kv_heads=2,ffn=128,vocab=300,outliers=3,outlier_scale=50,rank=4",
]
FAMILIES = [c for c in CASES if ":" not in c]

_NP_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


def _opt(name: str, key: str, default: int) -> int:
    m = re.search(rf"[:,]{key}=(\d+)", name)
    return int(m.group(1)) if m else default


def _file_name(name: str) -> str:
    """The file `optc run -o` writes an output to (as src/runcmd.rs names it)."""
    return "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in name) + ".npy"


def _gen(optc_bin, name: str, out: Path, seed: int = 0) -> Path:
    r = run_optc(optc_bin, ["gen", name, "--seed", seed, "-o", out])
    assert r.returncode == 0, describe_run(r)
    return out


def _feeds(sess, name: str) -> dict:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    vocab = _opt(name, "vocab", 1000)
    type_vocab = _opt(name, "type_vocab", 2)
    feeds = {}
    for i in sess.get_inputs():
        assert i.type in _NP_TYPES, f"unexpected input type {i.name}: {i.type}"
        shape = [d if isinstance(d, int) else (BATCH if d == "batch" else SEQ) for d in i.shape]
        if i.name == "input_ids":
            x = rng.integers(0, vocab, size=shape)
        elif i.name == "attention_mask":
            x = np.ones(shape)
            x[1, -3:] = 0  # the second sequence is padded at the end
        elif i.name == "token_type_ids":
            x = np.zeros(shape)
            x[:, shape[1] // 2:] = type_vocab - 1
        else:
            x = rng.standard_normal(shape)
        feeds[i.name] = x.astype(_NP_TYPES[i.type])
    return feeds


def _compare(name: str, want, got) -> str | None:
    want, got = np.asarray(want), np.asarray(got)
    if want.shape != got.shape or want.dtype != got.dtype:
        return f"{name}: {got.dtype}{got.shape}, onnxruntime {want.dtype}{want.shape}"
    w, g = want.astype(np.float64), got.astype(np.float64)
    scale = max(float(np.max(np.abs(w))), 1e-3)
    diff = float(np.max(np.abs(w - g)))
    if not np.isfinite(diff) or diff > RTOL * scale:
        return f"{name}: max |diff| {diff:.3g} is {diff / scale:.3g} of max |value| {scale:.3g} (limit {RTOL})"
    return None


@pytest.mark.parametrize("name", CASES)
def test_zoo_model_checks_and_matches_onnxruntime(optc_bin, tmp_path, name):
    path = _gen(optc_bin, name, tmp_path / "model.onnx")
    if ":" not in name:
        assert path.stat().st_size < MAX_BYTES, f"{name} is {path.stat().st_size} bytes with default options"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    unnamed = [n.op_type for n in model.graph.node if not n.name]
    assert name == "tiny-cnn" or not unnamed, f"{name}: {len(unnamed)} unnamed nodes, e.g. {unnamed[:5]}"

    sess = ort_session(path, optimize=False)
    feeds = _feeds(sess, name)
    want = sess.run(None, feeds)
    for o, w in zip(sess.get_outputs(), want):
        assert np.all(np.isfinite(w)), f"{name}: output {o.name} has non-finite values"
        assert np.ptp(w) > 0, f"{name}: output {o.name} is constant"
        assert np.max(np.abs(w)) < 1e4, f"{name}: output {o.name} reaches {np.max(np.abs(w)):.3g}"

    args = ["run", path, "-o", tmp_path / "out"]
    for k, x in feeds.items():
        f = tmp_path / f"{k}.npy"
        np.save(f, x)
        args += ["--input", f"{k}={f}"]
    r = run_optc(optc_bin, args, timeout=600)
    assert r.returncode == 0, describe_run(r)
    problems = []
    for o, w in zip(sess.get_outputs(), want):
        p = tmp_path / "out" / _file_name(o.name)
        if not p.is_file():
            problems.append(f"{o.name}: no output file {p.name}")
            continue
        d = _compare(o.name, w, np.load(p))
        if d:
            problems.append(d)
    assert not problems, f"{name}: optc run differs from onnxruntime:\n- " + "\n- ".join(problems)


def test_padding_changes_only_padded_rows(optc_bin, tmp_path):
    """BERT's mask is wired: masking the tail of a sequence changes that sequence only."""
    path = _gen(optc_bin, "bert", tmp_path / "bert.onnx")
    sess = ort_session(path, optimize=False)
    feeds = _feeds(sess, "bert")
    padded = sess.run(None, feeds)[0]
    feeds["attention_mask"] = np.ones_like(feeds["attention_mask"])
    full = sess.run(None, feeds)[0]
    np.testing.assert_array_equal(padded[0], full[0])
    assert not np.allclose(padded[1], full[1])


@pytest.mark.parametrize("name", FAMILIES)
def test_zoo_generation_is_deterministic(optc_bin, tmp_path, name):
    a = _gen(optc_bin, name, tmp_path / "a.onnx", seed=7).read_bytes()
    b = _gen(optc_bin, name, tmp_path / "b.onnx", seed=7).read_bytes()
    c = _gen(optc_bin, name, tmp_path / "c.onnx", seed=8).read_bytes()
    assert a == b, f"{name}: two runs with seed 7 differ"
    assert a != c, f"{name}: seeds 7 and 8 give the same bytes"


@pytest.mark.parametrize("spec,key", [("bert:layerz=3", "layerz"), ("llama:hidden=64,dropout=1", "dropout"),
                                      ("resnet:depth=50,foo=1", "foo")])
def test_zoo_unknown_option_is_refused(optc_bin, tmp_path, spec, key):
    out = tmp_path / "m.onnx"
    r = run_optc(optc_bin, ["gen", spec, "-o", out])
    assert r.returncode != 0, describe_run(r)
    assert f"'{key}'" in r.stderr, f"the error does not name the option\n{describe_run(r)}"
    family = spec.split(":")[0]
    listed = next(ln for ln in run_optc(optc_bin, ["gen", "--list"]).stdout.splitlines() if ln.startswith(family))
    for kv in re.findall(r"(\w+=[\w.*]+)", listed.split("Options:")[1]):
        assert kv in r.stderr, f"the error does not list {kv}\n{describe_run(r)}"
    assert not out.exists()


def test_zoo_list_names_every_family(optc_bin):
    r = run_optc(optc_bin, ["gen", "--list"])
    assert r.returncode == 0, describe_run(r)
    names = {ln.split()[0] for ln in r.stdout.splitlines() if ln.strip()}
    assert set(FAMILIES) <= names, r.stdout


@pytest.mark.parametrize("spec,needle", [
    ("llama:outliers=-1", "outliers=-1"),
    ("llama:outliers=200", "outliers=200"),
    ("llama:rank=x", "rank=x"),
    ("llama:rank=129", "rank=129"),
    ("llama:outlier_scale=0.5", "outlier_scale=0.5"),
    ("llama:trained_stats=2", "trained_stats=2"),
])
def test_zoo_llama_statistics_options_are_checked(optc_bin, tmp_path, spec, needle):
    out = tmp_path / "m.onnx"
    r = run_optc(optc_bin, ["gen", spec, "-o", out])
    assert r.returncode != 0, describe_run(r)
    assert needle in r.stderr and "llama" in r.stderr, describe_run(r)
    assert not out.exists()


def test_zoo_llama_trained_statistics(optc_bin, tmp_path):
    """trained_stats=1 changes only the embedding and the RMSNorm gains, and puts the documented
    statistics there: ceil(256/128) = 2 outlier channels 20x the others in the embedding, their gains
    raised by sqrt(1 + 2 * (20^2 - 1) / 256); two random tokens' embeddings at a cosine near 0.5."""
    shape = "llama:layers=2,hidden=256,heads=4,kv_heads=2,ffn=688,vocab=1000"
    iso, tr = (_gen(optc_bin, spec, tmp_path / f"{i}.onnx") for i, spec in
               enumerate([shape, shape + ",trained_stats=1"]))
    w_iso = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(iso)).graph.initializer}
    w_tr = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(tr)).graph.initializer}
    assert w_iso.keys() == w_tr.keys()
    changed = {k for k in w_iso if not np.array_equal(w_iso[k], w_tr[k])}
    gains = {k for k in w_iso if k.endswith("layernorm.weight") or k == "model.norm.weight"}
    assert changed == gains | {"model.embed_tokens.weight"}, sorted(changed)
    emb = w_tr["model.embed_tokens.weight"].astype(np.float64)
    col = np.sqrt(np.mean(emb ** 2, axis=0))
    big = np.argsort(-col)[:2]
    rest = np.delete(col, big)
    assert np.min(col[big]) > 15 * np.median(rest) and np.max(col[big]) < 25 * np.median(rest), col[big]
    assert np.sort(col)[-3] < 2 * np.median(rest)  # exactly two outlier channels
    want_gain = np.sqrt(1 + 2 * (20 ** 2 - 1) / 256)
    for k in gains:
        g_iso, g_tr = w_iso[k], w_tr[k]
        np.testing.assert_allclose(g_tr[big] / g_iso[big], want_gain, rtol=1e-5)
        np.testing.assert_array_equal(np.delete(g_tr, big), np.delete(g_iso, big))
    x = np.delete(emb, big, axis=1)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = x @ x.T
    mean_cos = (c.sum() - len(c)) / (len(c) ** 2 - len(c))
    assert 0.4 < mean_cos < 0.6, mean_cos
    x = w_iso["model.embed_tokens.weight"].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = x @ x.T
    assert abs((c.sum() - len(c)) / (len(c) ** 2 - len(c))) < 0.05
