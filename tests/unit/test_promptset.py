"""Prompt sets: parsing lines and CSV, the shipped reference set, evaluation over a set."""
import pytest
from ablation_models import OTHER, PROMPT, tiny_handle

from synapse_core.arch.spec import HeadMask, Intervention
from synapse_core.common.errors import BadInput
from synapse_core.interventions.ablation import ablate
from synapse_core.interventions.promptset import PromptCase, evaluate_prompt_set, parse_prompt_csv, parse_prompt_lines
from synapse_core.interventions.reference import default_reference_prompts, parse_reference_prompts


def test_lines_parse_with_optional_contrast_comments_and_quotes():
    text = """
    # a comment
    The capital of France is | Paris | London
    When Mary and John went | " Mary"
    """
    cases = parse_prompt_lines(text)
    assert cases == (PromptCase("The capital of France is", "Paris", "London"),
                     PromptCase("When Mary and John went", " Mary", None))


def test_a_bad_line_is_named_by_number():
    with pytest.raises(BadInput, match="line 2"):
        parse_prompt_lines("a | b\njust a prompt\n")
    with pytest.raises(BadInput, match="no prompts"):
        parse_prompt_lines("# nothing\n\n")


def test_csv_with_and_without_header_and_as_bytes():
    with_header = "target,prompt,contrast\n Paris,The capital of France is, London\n"
    assert parse_prompt_csv(with_header) == (PromptCase("The capital of France is", " Paris", " London"),)
    plain = b"\xef\xbb\xbfThe cat sat on the,mat\n"
    assert parse_prompt_csv(plain) == (PromptCase("The cat sat on the", "mat", None),)
    with pytest.raises(BadInput, match="row 1"):
        parse_prompt_csv("only one column\n")
    with pytest.raises(BadInput, match="'target'"):
        parse_prompt_csv("prompt,answer\nx,y\n")


def test_the_shipped_reference_set_is_there_and_long_enough():
    prompts = default_reference_prompts()
    assert len(prompts) >= 10
    assert all(len(p.split()) >= 15 and not p.startswith("#") for p in prompts)
    assert parse_reference_prompts("a\n# c\n\nb\n") == ("a", "b")
    with pytest.raises(BadInput):
        parse_reference_prompts("# only a comment")


def test_evaluation_rows_and_aggregate():
    handle = tiny_handle("llama")
    cases = (PromptCase(PROMPT, "Paris", "London"), PromptCase(OTHER, "city", "river"),
             PromptCase("the king and the queen", "sat", "ran"))
    iv = [Intervention(0, "mlp", "zero")]
    masks = (HeadMask(1, 0),)
    seen = []
    result = evaluate_prompt_set(handle, cases, iv, masks=masks, progress=lambda d, t, m: seen.append((d, t)))
    assert result.metric == "logit_diff" and len(result.rows) == 3 and seen[-1] == (3, 3)
    singles = [ablate(handle, c.prompt, c.target, iv, c.contrast, masks) for c in cases]
    changes = [s.delta("logit_diff") for s in singles]
    assert result.mean_change == pytest.approx(sum(changes) / 3, abs=1e-5)
    assert result.top1_changed_fraction == pytest.approx(sum(s.top1_changed for s in singles) / 3)
    assert result.mean_kl == pytest.approx(sum(s.kl_divergence for s in singles) / 3, abs=1e-6)
    table = result.table()
    assert table[0]["prompt"] == PROMPT and table[0]["change"] == pytest.approx(changes[0], abs=1e-5)
    assert result.masks == masks


def test_evaluation_metric_follows_the_contrasts():
    handle = tiny_handle("llama")
    cases = (PromptCase(PROMPT, "Paris", "London"), PromptCase(OTHER, "city"))
    iv = [Intervention(0, "attn", "zero")]
    assert evaluate_prompt_set(handle, cases, iv).metric == "log_prob"
    with pytest.raises(BadInput, match="needs a contrast"):
        evaluate_prompt_set(handle, cases, iv, metric="logit_diff")
    with pytest.raises(BadInput, match="empty"):
        evaluate_prompt_set(handle, (), iv)
