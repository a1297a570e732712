"""Target warnings on the real tokenizer: only a target of several tokens, or a word typed without
the leading space the model writes before it, is warned about."""
import pytest

from synapse_core.model.tokens import single_token_id


@pytest.mark.parametrize("text", [" Sydney", " Canberra", " Mary", " Paris", ".", "\n"])
def test_one_token_as_the_model_writes_it_is_not_warned(bundled, text):
    _, warnings = single_token_id(bundled, text)
    assert warnings == []


def test_a_spaceless_word_is_warned_with_both_splits(bundled):
    _, warnings = single_token_id(bundled, "Sydney")
    assert warnings == ["'Sydney' is 3 tokens ['S', 'yd', 'ney']; it is scored on its first token 'S'",
                        "'Sydney' is split as ['S', 'yd', 'ney'] but ' Sydney' as [' Sydney']; mind the leading space"]


def test_a_spaced_phrase_is_warned_only_that_it_is_several_tokens(bundled):
    _, warnings = single_token_id(bundled, " Wagga Wagga")
    assert len(warnings) == 1 and "scored on its first token" in warnings[0]
