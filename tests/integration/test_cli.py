"""The CLI from outside: `python -m synapse_core ...` in a child process (a process's output and exit
code), and in this process (cli_helpers.run_cli) where only the command's answer is under test."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, check=True):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "synapse_core", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_info_json():
    out = json.loads(run_cli("info", "--json").stdout)
    assert out["model"] == "SmolLM2-135M-Instruct"
    assert (out["family"], out["n_layers"], out["n_heads"], out["n_kv_heads"], out["d_head"]) == ("llama", 30, 9, 3, 64)
    assert out["device"] == "cpu" and out["dtype"] == "float32"


def test_trace_json_generates_paris_and_masks():
    out = json.loads(run_cli("trace", "--prompt", "The Eiffel Tower is in the city of", "--max-new-tokens", "2",
                         "--mask", "3.1,5.2", "--json").stdout)
    assert out["generated_tokens"][0] == " Paris"
    assert out["masked_heads"] == ["3.1", "5.2"]
    assert len(out["head_activity"]) == 30 and all(len(row) == 9 for row in out["head_activity"])
    assert out["head_activity"][3][1] == 0.0 and out["head_activity"][5][2] == 0.0
    assert out["head_activity"][3][0] > 0.0
    top = out["top_heads"]
    assert {"layer", "head", "score"} <= set(top[0]) and top[0]["score"] >= top[-1]["score"]
    assert out["thought_path"]["nodes"][0] == "Prompt_Ingress"


@pytest.mark.parametrize("args, message", [
    (("trace", "--prompt", "", "--json"), "prompt is empty"),
    (("trace", "--prompt", "hi", "--mask", "3.9", "--json"), "head 9 does not exist"),
    (("trace", "--prompt", "hi", "--mask", "three", "--json"), "is not a head"),
    (("info", "--model", "no-such-org/no-such-model", "--json"), "bundled"),
])
def test_bad_input_exits_2_with_one_line(args, message):
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert proc.stdout == ""


@pytest.mark.slow  # a child Python process importing torch: the slow tier (CI runs it)
def test_a_child_process_exits_2_with_one_line_on_bad_input():
    proc = cli("trace", "--prompt", "hi", "--mask", "3.9", "--json", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        line for line in proc.stderr.splitlines() if "head 9 does not exist" in line]
