"""`synapse quarantine cost` on a tiny model saved as a local folder: the JSON shape, the numbers of
the engine's report, and one-line errors for bad input."""
import json
import random
import re
from pathlib import Path

import pytest
from ablation_models import WORDS, tiny_handle

from synapse_core.analysis.capabilities import parse_capabilities
from synapse_core.analysis.cost import cost_config, cost_report
from synapse_core.analysis.perplexity import text_docs
from synapse_core.cli.main import main

PROMPTS = "[capitals]\nthe capital of France is the city of | Paris\nthe capital of | France\n[people]\nMary gave a drink to | John\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    handle = tiny_handle("llama")
    handle.model.save_pretrained(folder)
    handle.tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def files(tmp_path):
    rng = random.Random(0)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(rng.choice(WORDS) for _ in range(120)))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS)
    return tmp_path, str(text), str(prompts)


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cost_json_has_the_issue_shape_and_the_engine_numbers(model_dir, files, capsys):
    _, text, prompts = files
    code, out, err = _run(capsys, "quarantine", "cost", "0.1,1.2", "--model", model_dir, "--text", text,
                          "--prompt-set", prompts, "--window", "16", "--progress", "--json")
    assert code == 0, err
    lines = err.splitlines()  # --progress: each stage's passes on stderr as they are done
    for stage in ("text before", "capabilities before", "capabilities after", "text after"):
        assert any(line.startswith(f"{stage} ") for line in lines), stage
    payload = json.loads(out)
    assert {"perplexity_before", "perplexity_after", "tokens", "capabilities", "flipped", "seconds",
            "experiment"} <= set(payload)
    assert [g["group"] for g in payload["capabilities"]] == ["capitals", "people"]
    handle = tiny_handle("llama")
    docs = text_docs(handle, Path(text).read_text(), "text.txt")
    ref = cost_report(handle, cost_config(handle, ["0.1", "1.2"], (), docs, 16, parse_capabilities(PROMPTS)), docs)
    assert payload["perplexity_before"] == pytest.approx(ref.text.perplexity_before, rel=1e-6)
    assert payload["perplexity_after"] == pytest.approx(ref.text.perplexity_after, rel=1e-6)
    assert payload["perplexity_after"] != pytest.approx(payload["perplexity_before"])
    assert payload["tokens"] == ref.text.tokens == 112  # 120 words in windows of 16; the last 8 dropped
    assert len(payload["flipped"]) == len(ref.flipped)


def test_without_the_corpus_the_report_says_the_text_was_skipped(model_dir, files, capsys, monkeypatch):
    tmp, _, prompts = files
    monkeypatch.setenv("SYNAPSE_CORPUS", str(tmp / "no-corpus"))
    code, out, err = _run(capsys, "quarantine", "cost", "0.1", "--model", model_dir, "--prompt-set", prompts,
                          "--window", "16", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["perplexity_before"] is None and payload["capabilities"]
    assert any("general text skipped" in n and "install_corpus.sh" in n for n in payload["notes"])


@pytest.mark.parametrize("case, message", [
    ("empty", "text file .*empty.txt.* is empty"),
    ("missing", "cannot read the text file .*nope.txt"),
    ("short", "shorter than one context of 16 tokens"),
    ("no answer", r"bad.txt, line 2 .*no expected answer"),
    ("no head", "1.7|head 7"),
])
def test_bad_input_is_one_line_naming_the_value(model_dir, files, capsys, case, message):
    tmp, text, prompts = files
    (tmp / "empty.txt").write_text("\n")
    (tmp / "short.txt").write_text("the city of Paris")
    (tmp / "bad.txt").write_text("[g]\nthe capital of France is\n")
    args = {"empty": ["0.1", "--text", str(tmp / "empty.txt")], "missing": ["0.1", "--text", str(tmp / "nope.txt")],
            "short": ["0.1", "--text", str(tmp / "short.txt")],
            "no answer": ["0.1", "--text", text, "--prompt-set", str(tmp / "bad.txt")],
            "no head": ["1.7", "--text", text]}[case]
    if case != "no answer":
        args += ["--prompt-set", prompts]
    code, out, err = _run(capsys, "quarantine", "cost", *args, "--model", model_dir, "--window", "16", "--json")
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert re.search(message, err), err
