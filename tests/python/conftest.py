"""pytest fixtures for optc's end-to-end tests.

Environment:
  OPTC_BIN     the optc binary (default: <repo>/target/release/optc)
  OPTC_MODELS  the model cache filled by scripts/fetch_models.py
               (default: ~/.cache/optc/models)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from optc_helpers import default_models_dir, default_optc_bin  # noqa: E402


def pytest_report_header(config):
    lines = [f"optc binary: {default_optc_bin()}", f"model cache: {default_models_dir()}"]
    try:
        import onnx
        import onnxruntime
        lines.append(f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}")
    except ImportError as e:  # pragma: no cover - reported by the tests themselves
        lines.append(f"import error: {e}")
    return lines


@pytest.fixture(scope="session")
def optc_bin() -> Path:
    path = default_optc_bin()
    if not path.is_file():
        pytest.fail(f"optc binary not found at {path}: build it with `cargo build --release` "
                    f"or point OPTC_BIN at it", pytrace=False)
    return path


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return default_models_dir()


@pytest.fixture
def outdir(tmp_path: Path) -> Path:
    """An empty directory for optc's output, separate from the inputs."""
    d = tmp_path / "out"
    d.mkdir()
    return d
