"""Probed command-line faults that printed a traceback: each is now exit 2 with one line naming the
bad value. None of them needs a model: every one is refused before a model is loaded (or instead)."""
import os
import sys

import pytest
import torch

from synapse_core.cli.main import main
from synapse_core.common.errors import ModelLoadError
from synapse_core.model.loading import load_model, resolve_device

BAD = os.fsdecode(b"The Eiffel \xff Tower")  # what Python makes of a non-UTF-8 argument


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNAPSE_HOME", str(tmp_path / "home"))


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(code, err):
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX argv bytes")
def test_a_non_utf8_prompt_is_refused(capsys):
    line = _one_error_line(*_run(capsys, "trace", "--model", "nowhere", "--prompt", BAD)[::2])
    assert line == r"error: --prompt is not UTF-8 text: b'The Eiffel \xff Tower'"


def test_a_non_utf8_reference_file_is_refused(tmp_path, capsys):
    ref = tmp_path / "ref.txt"
    ref.write_bytes(b"one prompt\nanother \xff prompt\n")
    code, _, err = _run(capsys, "ablate", "--model", "nowhere", "--prompt", "p", "--target", "x", "--heads", "0.1",
                        "--mode", "mean", "--reference-file", str(ref))
    assert _one_error_line(code, err) == f"error: --reference-file {ref} is not UTF-8 text (byte 19)"


@pytest.mark.parametrize("name", ["prompts.txt", "prompts.csv"])
def test_a_non_utf8_prompts_file_is_refused(tmp_path, capsys, name):
    path = tmp_path / name
    path.write_bytes(b"When Mary and John \xfe went | Mary | John\n")
    code, _, err = _run(capsys, "discover", "--model", "nowhere", "--prompts-file", str(path))
    assert "is not UTF-8 text" in _one_error_line(code, err)


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_temperature_that_is_not_a_number_from_0_is_refused(capsys, value):
    code, _, err = _run(capsys, "trace", "--model", "nowhere", "--prompt", "p", "--temperature", value)
    assert _one_error_line(code, err).startswith(f"error: --temperature {float(value)} must be a number, 0 or more")


def test_zero_batch_rows_is_refused_not_replaced(capsys):
    code, _, err = _run(capsys, "sweep", "--model", "nowhere", "--prompt", "p", "--target", "x", "--batch-rows", "0")
    assert _one_error_line(code, err) == "error: --batch-rows 0 must be at least 1"


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "mps"])
def test_a_device_this_machine_lacks_is_a_clear_error(device, capsys):
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    with pytest.raises(ModelLoadError, match=f"device '{device}'"):
        resolve_device(device)
    line = _one_error_line(*_run(capsys, "info", "--model", "nowhere", "--device", device)[::2])
    assert f"device '{device}'" in line


def test_a_junk_gguf_file_is_a_model_load_error(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + os.urandom(256))
    with pytest.raises(ModelLoadError, match="junk.gguf is not a GGUF model file"):
        load_model(str(junk), device="cpu")
