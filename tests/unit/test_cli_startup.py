"""The CLI starts without the heavy libraries: `synapse --help` and `synapse prepare-model` on a
model already converted import neither torch, transformers nor the OpenMetadata SDK."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "metadata", "huggingface_hub", "numpy")


def imported(args: list[str], env: dict | None = None) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `python -X importtime -m synapse_core ARGS`; the top-level names of every module it imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "synapse_core", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False, env={**os.environ, **(env or {})})
    names = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
             if line.startswith("import time:")}
    return proc, names


@pytest.mark.parametrize("args", [["--help"], ["trace", "--help"], ["quarantine", "add", "--help"]])
def test_help_imports_no_heavy_library(args):
    proc, names = imported(args)
    assert proc.returncode == 0 and "usage: synapse" in proc.stdout
    assert not names & set(HEAVY), sorted(names & set(HEAVY))


def test_prepare_model_answers_without_torch_when_the_copy_exists(tmp_path):
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF not a real model")
    env = {"SYNAPSE_HOME": str(tmp_path / "home"), "SYNAPSE_MODEL_CACHE": str(tmp_path / "models")}
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from synapse_core.model.gguf import converted_cache; "
              f"from pathlib import Path; print(converted_cache(Path({str(gguf)!r})))")
    cache = Path(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                env={**os.environ, **env}).stdout.strip())
    assert cache.parent == tmp_path / "models"
    cache.mkdir(parents=True)
    (cache / "model.safetensors").write_bytes(b"")
    proc, names = imported(["prepare-model", "--model", str(gguf), "--json"], env)
    assert proc.returncode == 0, proc.stderr[-500:]
    out = json.loads(proc.stdout)
    assert out["converted"] is False and out["cache"] == str(cache) and out["gguf"] == str(gguf)
    assert "torch" not in names and "transformers" not in names


def test_prepare_model_names_a_missing_gguf_file(tmp_path):
    proc, _ = imported(["prepare-model", "--model", str(tmp_path / "none.gguf")])
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == f"error: GGUF file {tmp_path / 'none.gguf'} does not exist"


def test_prepare_model_has_nothing_to_do_for_a_folder(tmp_path):
    proc, names = imported(["prepare-model", "--model", str(tmp_path)])
    assert proc.returncode == 0 and "nothing to prepare" in proc.stdout and "torch" not in names
