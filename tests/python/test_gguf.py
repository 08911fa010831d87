"""`optc gguf`: GGUF listing and dequantisation, checked against the `gguf` package.

Tensors written with `optc gguf FILE --all -o DIR` (or `--tensor NAME`) must hold
exactly the floats `gguf.quants.dequantize` computes (bit for bit), in numpy order;
bad files must give a one-line error, exit code 2, and no panic.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from optc_helpers import default_models_dir, describe_run, run_optc

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402

SMOLLM = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Byte offsets of the f16 scale fields in one block of each type (overwritten
# with finite values so random blocks hold no NaN or inf).
F16_FIELDS = {
    Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
    Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
    Q.IQ4_NL: [0], Q.IQ4_XS: [0], Q.TQ1_0: [52], Q.TQ2_0: [64],
    Q.MXFP4: [], Q.NVFP4: [],
}
# Q8_K keeps an f32 scale; gguf-py has no dequantiser for it (see reference()).
Q8_K_SIZE = 4 + 256 + 32

INT_TYPES = {Q.I8: np.int8, Q.I16: np.int16, Q.I32: np.int32, Q.I64: np.int64, Q.F64: np.float64}


def _blocks(rng: np.random.Generator, qtype, n_blocks: int) -> np.ndarray:
    if qtype == Q.Q8_K:
        raw = rng.integers(0, 256, size=(n_blocks, Q8_K_SIZE), dtype=np.uint8)
        raw[:, 0:4] = rng.uniform(0.001, 0.1, size=(n_blocks, 1)).astype(np.float32).view(np.uint8)
        return raw
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        raw[:, off:off + 2] = rng.uniform(0.001, 0.1, size=(n_blocks, 1)).astype(np.float16).view(np.uint8)
    return raw


def _name(qtype) -> str:
    return f"t_{qtype.name.lower()}"


def write_synthetic(path: Path, seed: int = 1234) -> dict[str, np.ndarray]:
    """A GGUF with one tensor per type optc dequantises; returns the expected floats."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_custom_alignment(64)
    w.add_string("general.name", "optc synthetic")
    w.add_uint32("llama.block_count", 2)
    w.add_float32("llama.rope.freq_base", 10000.0)
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(40)])
    w.add_array("tokenizer.ggml.scores", [float(i) / 8 for i in range(40)])
    w.add_bool("tokenizer.ggml.add_bos_token", True)

    rows = 3
    for qtype in list(F16_FIELDS) + [Q.Q8_K]:
        block_size = gguf.GGML_QUANT_SIZES[qtype][0]
        raw = _blocks(rng, qtype, rows * 2).reshape(rows, -1)
        w.add_tensor(_name(qtype), raw, raw_dtype=qtype)  # byte shape -> (rows, 2 * block_size)

    w.add_tensor("t_f32", rng.standard_normal((2, 3, 4)).astype(np.float32))
    w.add_tensor("t_f16", rng.standard_normal((5, 7)).astype(np.float16))
    bf = (rng.standard_normal((4, 6)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    w.add_tensor("t_bf16", bf.view(np.uint8).reshape(4, 12), raw_dtype=Q.BF16)
    w.add_tensor("t_i8", rng.integers(-128, 128, size=(9,), dtype=np.int8))
    w.add_tensor("t_i16", rng.integers(-30000, 30000, size=(2, 5), dtype=np.int16))
    w.add_tensor("t_i32", rng.integers(-(1 << 30), 1 << 30, size=(3, 3), dtype=np.int32))
    w.add_tensor("t_i64", rng.integers(-(1 << 62), 1 << 62, size=(4,), dtype=np.int64))
    w.add_tensor("t_f64", rng.standard_normal((2, 2)))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    return {t.name: reference(t) for t in gguf.GGUFReader(str(path)).tensors}


def reference(t) -> np.ndarray:
    """gguf-py's floats for a tensor (numpy order)."""
    if t.tensor_type in INT_TYPES:
        return np.asarray(t.data).astype(np.float32)
    if t.tensor_type == Q.Q8_K:
        # ggml's dequantize_row_q8_K: y = d * q (gguf-py has no Q8_K dequantiser).
        blocks = np.asarray(t.data).reshape(-1, Q8_K_SIZE)
        d = blocks[:, 0:4].copy().view(np.float32)
        q = blocks[:, 4:260].view(np.int8).astype(np.float32)
        return (d * q).reshape(tuple(int(x) for x in reversed(t.shape.tolist())))
    return gguf.quants.dequantize(t.data, t.tensor_type)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def assert_identical(got: np.ndarray, want: np.ndarray, what: str):
    assert got.dtype == np.float32, f"{what}: dtype {got.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, gguf says {want.shape}"
    if not np.array_equal(_bits(got), _bits(want)):
        diff = np.flatnonzero(_bits(got) != _bits(want))
        i = diff[0]
        raise AssertionError(f"{what}: {diff.size} of {got.size} floats differ; first at flat index {i}: "
                             f"optc {got.ravel()[i]!r} vs gguf {want.ravel()[i]!r}")


def check_ok(r, what: str):
    assert r.returncode == 0, f"{what} failed:\n{describe_run(r)}"
    assert "panicked" not in r.stderr, describe_run(r)


# ----------------------------------------------------------------------------
# synthetic file: every supported type


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    p = tmp_path_factory.mktemp("gguf") / "synthetic.gguf"
    return p, write_synthetic(p)


def test_synthetic_all_types_identical(optc_bin, synthetic, outdir):
    path, expected = synthetic
    r = run_optc(optc_bin, ["gguf", path, "--all", "-o", outdir])
    check_ok(r, "optc gguf --all")
    for name, want in expected.items():
        f = outdir / f"{name}.npy"
        assert f.is_file(), f"{f} not written:\n{describe_run(r)}"
        assert_identical(np.load(f), want, name)
    assert len(list(outdir.iterdir())) == len(expected)


def test_synthetic_listing_and_json(optc_bin, synthetic):
    path, expected = synthetic
    r = run_optc(optc_bin, ["gguf", path])
    check_ok(r, "optc gguf")
    out = r.stdout
    assert "GGUF version 3" in out and "alignment 64" in out
    for name in expected:
        assert name in out
    assert "tokenizer.ggml.tokens" in out and "40 items" in out and '"tok0"' in out
    assert "tok39" not in out, "long arrays must be abbreviated"
    assert "Q4_K" in out and "total" in out

    r = run_optc(optc_bin, ["gguf", path, "--json"])
    check_ok(r, "optc gguf --json")
    j = json.loads(r.stdout)
    reader = gguf.GGUFReader(str(path))
    assert j["version"] == 3 and j["alignment"] == 64 and j["data_offset"] == reader.data_offset
    meta = {m["key"]: m for m in j["metadata"]}
    assert meta["general.name"]["value"] == "optc synthetic"
    assert meta["llama.block_count"] == {"key": "llama.block_count", "type": "UINT32", "value": 2}
    assert meta["tokenizer.ggml.tokens"]["value"] == [f"tok{i}" for i in range(40)]
    assert meta["tokenizer.ggml.scores"]["type"] == "ARRAY[FLOAT32]"
    assert meta["tokenizer.ggml.add_bos_token"]["value"] is True
    assert [m["key"] for m in j["metadata"]] == [k for k in reader.fields if not k.startswith("GGUF.")]
    tensors = {t["name"]: t for t in j["tensors"]}
    for t in reader.tensors:
        mine = tensors[t.name]
        assert mine["dims"] == t.shape.tolist()
        assert mine["type"] == t.tensor_type.name and mine["type_id"] == int(t.tensor_type)
        assert mine["n_bytes"] == t.n_bytes and mine["n_elements"] == t.n_elements
        assert reader.data_offset + mine["offset"] == t.data_offset


def test_select_tensors_and_usage_errors(optc_bin, synthetic, outdir):
    path, expected = synthetic
    r = run_optc(optc_bin, ["gguf", path, "--tensor", "t_q6_k", "--tensor", "t_f32", "-o", outdir])
    check_ok(r, "optc gguf --tensor")
    assert sorted(p.name for p in outdir.iterdir()) == ["t_f32.npy", "t_q6_k.npy"]
    assert_identical(np.load(outdir / "t_f32.npy"), expected["t_f32"], "t_f32")
    assert np.load(outdir / "t_f32.npy").shape == (2, 3, 4)

    for args, words in [
        (["--tensor", "nope", "-o", outdir], ["no tensor named 'nope'"]),
        (["--tensor", "t_f32"], ["-o"]),
        (["-o", outdir], ["--tensor", "--all"]),
    ]:
        r = run_optc(optc_bin, ["gguf", path, *args])
        assert r.returncode == 2, describe_run(r)
        for w in words:
            assert w in r.stderr, describe_run(r)


# ----------------------------------------------------------------------------
# the real model


@pytest.fixture(scope="module")
def smollm() -> Path:
    p = default_models_dir() / SMOLLM
    if not p.is_file():
        pytest.skip(f"{p} is not in the model cache (run scripts/fetch_models.py)")
    return p


def test_smollm_tensors_identical(optc_bin, smollm, outdir):
    reader = gguf.GGUFReader(str(smollm))
    by_type: dict = {}
    for t in reader.tensors:
        by_type.setdefault(t.tensor_type, t)
    picks = [by_type[Q.Q4_1], by_type[Q.Q8_0], by_type[Q.F32]]
    # A second Q4_1 tensor with the other orientation (ffn_down is [1536, 576]).
    picks += [t for t in reader.tensors if t.name == "blk.0.ffn_down.weight" and t not in picks]
    args = ["gguf", smollm, "-o", outdir]
    for t in picks:
        args += ["--tensor", t.name]
    r = run_optc(optc_bin, args)
    check_ok(r, "optc gguf --tensor (SmolLM2)")
    for t in picks:
        got = np.load(outdir / f"{t.name}.npy")
        assert_identical(got, gguf.quants.dequantize(t.data, t.tensor_type), f"{t.name} ({t.tensor_type.name})")


def test_smollm_listing(optc_bin, smollm):
    r = run_optc(optc_bin, ["gguf", smollm, "--json"])
    check_ok(r, "optc gguf --json (SmolLM2)")
    j = json.loads(r.stdout)
    reader = gguf.GGUFReader(str(smollm))
    assert len(j["tensors"]) == len(reader.tensors)
    assert j["data_offset"] == reader.data_offset
    assert {k: v["tensors"] for k, v in j["totals_by_type"].items()} == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    meta = {m["key"]: m["value"] for m in j["metadata"]}
    assert meta["general.architecture"] == "llama"
    assert len(meta["tokenizer.ggml.tokens"]) == len(reader.fields["tokenizer.ggml.tokens"].data)
    r = run_optc(optc_bin, ["gguf", smollm])
    check_ok(r, "optc gguf (SmolLM2)")
    assert "token_embd.weight" in r.stdout and "Q8_0" in r.stdout


# ----------------------------------------------------------------------------
# bad input


def _gguf_bytes(version: int, tensors: list[tuple[str, list[int], int, bytes]]) -> bytes:
    """A minimal GGUF (no metadata) with raw tensor infos."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), 0)
    offset = 0
    for name, dims, type_id, data in tensors:
        out += struct.pack("<Q", len(name)) + name.encode() + struct.pack("<I", len(dims))
        out += struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", type_id, offset)
        offset += (len(data) + 31) // 32 * 32
    out += b"\0" * (-len(out) % 32)
    for _, _, _, data in tensors:
        out += data + b"\0" * (-len(data) % 32)
    return out


def check_bad(optc_bin, path: Path, args: list, any_of: list[str], outdir: Path | None = None):
    r = run_optc(optc_bin, ["gguf", path, *args])
    assert r.returncode == 2, f"expected exit code 2:\n{describe_run(r)}"
    assert "panicked" not in r.stderr and "Traceback" not in r.stderr, describe_run(r)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected a one-line error:\n{describe_run(r)}"
    assert lines[0].startswith("error:"), describe_run(r)
    low = lines[0].lower()
    assert any(w.lower() in low for w in any_of), f"error should mention one of {any_of}:\n{describe_run(r)}"
    if outdir is not None:
        assert not any(outdir.iterdir()), "nothing may be written for a bad file"
    return lines[0]


def test_truncated(optc_bin, synthetic, tmp_path):
    path, _ = synthetic
    data = path.read_bytes()
    reader = gguf.GGUFReader(str(path))
    # The writer pads the file after the last tensor; cutting only padding leaves a valid file.
    data_end = max(t.data_offset + t.n_bytes for t in reader.tensors)
    for n in [0, 3, 10, 30, 200, reader.data_offset - 1, len(data) // 2, data_end - 1]:
        p = tmp_path / f"trunc{n}.gguf"
        p.write_bytes(data[:n])
        words = ["truncated", "out of bounds", "empty", "too short"]
        line = check_bad(optc_bin, p, [], words)
        assert str(p) in line, f"the error should name the file: {line}"


def test_unknown_tensor_type(optc_bin, tmp_path, outdir):
    p = tmp_path / "unknown_type.gguf"
    p.write_bytes(_gguf_bytes(3, [("ok", [4], 0, b"\0" * 16), ("odd", [32], 99, b"\0" * 32)]))
    # Listing works and shows the id; dequantising names the tensor and the id.
    r = run_optc(optc_bin, ["gguf", p])
    check_ok(r, "optc gguf (unknown type)")
    assert "unknown(99)" in r.stdout
    line = check_bad(optc_bin, p, ["--all", "-o", outdir], ["type id 99"], outdir)
    assert "'odd'" in line
    check_bad(optc_bin, p, ["--tensor", "odd", "-o", outdir], ["type id 99"], outdir)


def test_version_1(optc_bin, tmp_path):
    p = tmp_path / "v1.gguf"
    p.write_bytes(_gguf_bytes(1, [("ok", [4], 0, b"\0" * 16)]))
    check_bad(optc_bin, p, [], ["version 1"])


def test_big_endian(optc_bin, tmp_path):
    p = tmp_path / "be.gguf"
    p.write_bytes(b"GGUF" + struct.pack(">IQQ", 3, 0, 0))
    check_bad(optc_bin, p, [], ["big-endian"])


def test_random_bytes(optc_bin, tmp_path):
    rng = np.random.default_rng(7)
    p = tmp_path / "random.gguf"
    p.write_bytes(rng.bytes(4096))
    check_bad(optc_bin, p, [], ["not a gguf file"])
    # GGUF magic and version, then random bytes.
    p.write_bytes(b"GGUF" + struct.pack("<I", 3) + rng.bytes(4096))
    check_bad(optc_bin, p, [], ["cannot fit", "truncated", "unknown", "utf-8", "out of bounds", "dimensions"])


def test_corrupt_fields(optc_bin, tmp_path):
    cases = [
        # (tensors, expected words)
        ([("t", [31], 2, b"\0" * 18)], ["not a multiple of the q4_0 block size"]),
        ([("t", [1] * 9, 0, b"\0" * 4)], ["9 dimensions"]),
        ([("t", [1 << 40, 1 << 40], 0, b"")], ["overflow"]),
        ([("t", [4], 0, b"\0" * 16), ("t", [4], 0, b"\0" * 16)], ["duplicate tensor name 't'"]),
        ([("t", [1000], 0, b"\0" * 16)], ["out of bounds"]),
    ]
    for i, (tensors, words) in enumerate(cases):
        p = tmp_path / f"corrupt{i}.gguf"
        p.write_bytes(_gguf_bytes(3, tensors))
        check_bad(optc_bin, p, [], words)
    # A misaligned offset: patch the second tensor's offset to 4.
    data = bytearray(_gguf_bytes(3, [("a", [4], 0, b"\0" * 16), ("b", [4], 0, b"\0" * 16)]))
    end_of_infos = 24 + 2 * (8 + 1 + 4 + 8 + 4 + 8)
    data[end_of_infos - 8:end_of_infos] = struct.pack("<Q", 4)
    p = tmp_path / "misaligned.gguf"
    p.write_bytes(bytes(data))
    check_bad(optc_bin, p, [], ["not a multiple of the alignment"])


def test_missing_file(optc_bin, tmp_path):
    check_bad(optc_bin, tmp_path / "nope.gguf", [], ["cannot read"])
