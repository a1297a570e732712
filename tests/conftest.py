"""Test-wide set-up: every test session gets a fresh, empty SYNAPSE_HOME; converted model weights
are shared between sessions (SYNAPSE_MODEL_CACHE) so the bundled model is dequantized only once
per machine."""
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    os.environ["SYNAPSE_HOME"] = tempfile.mkdtemp(prefix="synapse-test-home-")
    os.environ.setdefault("SYNAPSE_MODEL_CACHE", str(ROOT / ".synapse-test-models"))
    os.environ.setdefault("SYNAPSE_MODEL", "bundled")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
