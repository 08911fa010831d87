#!/usr/bin/env python3
"""Check that two ONNX models are the same model, streaming the weights.

    python bench/compare_models.py A.onnx B.onnx

Loads both protos WITHOUT their external data, then compares every
initializer (and every tensor attribute of a top-level node) by its bytes,
reading external data one tensor at a time from each side's data file
(so memory stays around the largest single tensor).  Then clears the data
and external-data fields and compares the graph protos, and lists the
model-level fields that differ (producer_name etc.).  Also says whether the
.onnx files and the data files are byte-identical.

Prints one JSON object.  Exit code 0 when weights and graph are equal.
"""

from __future__ import annotations

import filecmp
import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def ext_info(t: TensorProto) -> dict:
    return {e.key: e.value for e in t.external_data}


def tensor_bytes(t: TensorProto, base: str) -> bytes:
    if t.data_location == TensorProto.EXTERNAL:
        info = ext_info(t)
        path = os.path.join(base, info["location"])
        off = int(info.get("offset", 0) or 0)
        if "length" in info:
            n = int(info["length"])
        else:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
            n = int(np.prod(list(t.dims), dtype=np.int64)) * itemsize
        with open(path, "rb") as f:
            f.seek(off)
            b = f.read(n)
        if len(b) != n:
            raise ValueError(f"{t.name}: short read from {path} ({len(b)} of {n} bytes at {off})")
        return b
    if t.HasField("raw_data"):
        return t.raw_data
    if t.data_type == TensorProto.STRING:
        return b"\0".join(t.string_data)
    return numpy_helper.to_array(t).astype(
        np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).newbyteorder("<")).tobytes()


def strip(t: TensorProto) -> None:
    for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
              "uint64_data", "string_data", "external_data"):
        t.ClearField(f)
    t.ClearField("data_location")


def tensors(m: onnx.ModelProto):
    for t in m.graph.initializer:
        yield f"initializer:{t.name}", t
    for n in m.graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield f"attr:{n.name}/{a.name}", a.t


def compare(pa: str, pb: str) -> dict:
    a = onnx.load(pa, load_external_data=False)
    b = onnx.load(pb, load_external_data=False)
    ba, bb = os.path.dirname(os.path.abspath(pa)), os.path.dirname(os.path.abspath(pb))
    ta, tb = dict(tensors(a)), dict(tensors(b))
    r: dict = {"a": pa, "b": pb, "tensors_a": len(ta), "tensors_b": len(tb)}
    la = sorted({ext_info(t)["location"] for t in ta.values() if t.external_data})
    lb = sorted({ext_info(t)["location"] for t in tb.values() if t.external_data})
    missing = sorted(set(ta) ^ set(tb))
    mism, checked, nbytes = [], 0, 0
    for k in ta:
        if k not in tb:
            continue
        x, y = ta[k], tb[k]
        if x.data_type != y.data_type or list(x.dims) != list(y.dims):
            mism.append(k)
            continue
        bx, by = tensor_bytes(x, ba), tensor_bytes(y, bb)
        nbytes += len(bx)
        checked += 1
        if bx != by:
            mism.append(k)
    r.update(tensors_compared=checked, tensor_bytes_compared=nbytes,
             tensors_missing=missing[:20], n_tensors_missing=len(missing),
             tensors_different=mism[:20], n_tensors_different=len(mism))
    r["weights_equal"] = not missing and not mism
    r["external_b"] = sum(1 for t in tb.values() if t.data_location == TensorProto.EXTERNAL)
    for _, t in list(tensors(a)) + list(tensors(b)):
        strip(t)
    r["graph_equal"] = a.graph == b.graph
    if not r["graph_equal"]:
        d = []
        for f in ("node", "initializer", "input", "output", "value_info", "sparse_initializer"):
            ga, gb = list(getattr(a.graph, f)), list(getattr(b.graph, f))
            if ga != gb:
                first = next((i for i, (u, v) in enumerate(zip(ga, gb)) if u != v), min(len(ga), len(gb)))
                d.append(f"{f}: {len(ga)} vs {len(gb)}, first difference at #{first}")
        for f in ("name", "doc_string"):
            if getattr(a.graph, f) != getattr(b.graph, f):
                d.append(f"graph.{f}")
        if not d:
            d.append("other graph fields")
        r["graph_differences"] = d
    diffs = []
    for f in ("ir_version", "opset_import", "producer_name", "producer_version", "domain",
              "model_version", "doc_string", "metadata_props", "functions", "training_info"):
        va, vb = getattr(a, f), getattr(b, f)
        if (list(va) if hasattr(va, "__len__") and not isinstance(va, (str, bytes)) else va) != \
           (list(vb) if hasattr(vb, "__len__") and not isinstance(vb, (str, bytes)) else vb):
            diffs.append(f)
    r["model_fields_different"] = diffs
    if "producer_name" in diffs or "producer_version" in diffs:
        r["producer_b"] = f"{b.producer_name} {b.producer_version}".strip()
    r["onnx_file_identical"] = filecmp.cmp(pa, pb, shallow=False)
    r["data_files_b"] = lb
    if len(la) == 1 and len(lb) == 1:
        da, db = os.path.join(ba, la[0]), os.path.join(bb, lb[0])
        r["data_file_identical"] = (os.path.getsize(da) == os.path.getsize(db)
                                    and filecmp.cmp(da, db, shallow=False))
        r["data_file_bytes_b"] = os.path.getsize(db)
    r["identical"] = r["weights_equal"] and r["graph_equal"]
    return r


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    r = compare(sys.argv[1], sys.argv[2])
    print(json.dumps(r))
    return 0 if r["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
