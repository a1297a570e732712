"""Optional feature labels from a language model behind any OpenAI-compatible endpoint (Ollama,
vLLM, a hosted API). Off unless SYNAPSE_LLM_URL is set; the label is stored like a person's, with
`llm:<model>` as its author.

SYNAPSE_LLM_URL    base URL of the API, e.g. http://localhost:11434/v1 (".../chat/completions" is added)
SYNAPSE_LLM_MODEL  the model asked (default "gpt-4o-mini")
SYNAPSE_LLM_KEY    bearer token, when the endpoint wants one
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from ..common.errors import BadInput, SynapseError
from .catalog import FeatureInfo


class LLMError(SynapseError):
    """The labelling endpoint could not be reached or answered nonsense."""


@dataclass(frozen=True)
class LLMConfig:
    url: str  # base URL, e.g. http://localhost:11434/v1
    model: str = "gpt-4o-mini"
    key: str | None = None
    timeout_s: float = 30.0


def config_from_env() -> LLMConfig | None:
    """The configured endpoint, or None (the default: no LLM labels)."""
    url = os.environ.get("SYNAPSE_LLM_URL", "").strip()
    if not url:
        return None
    return LLMConfig(url.rstrip("/"), os.environ.get("SYNAPSE_LLM_MODEL") or "gpt-4o-mini",
                     os.environ.get("SYNAPSE_LLM_KEY") or None)


def prompt(f: FeatureInfo, decode: Callable[[list[int]], str], n_contexts: int = 6) -> str:
    """What the model is asked: the feature's top contexts with the activating token in [[ ]], and
    the tokens its decoder direction promotes."""
    lines = []
    for c in f.top_contexts[:n_contexts]:
        lo = max(0, c.token_index - 20)
        before, tok = decode(c.token_ids[lo:c.token_index]), decode([c.token_ids[c.token_index]])
        after = decode(c.token_ids[c.token_index + 1:c.token_index + 4])
        lines.append(f"- ({c.activation:.2f}) {before}[[{tok}]]{after}")
    promoted = ", ".join(repr(decode([t])) for t, _ in f.promoted[:8])
    return ("A feature of a language model's activations fires on the tokens marked [[ ]] in these texts "
            "(activation in parentheses):\n" + "\n".join(lines) + f"\nIt makes the model more likely to "
            f"predict: {promoted}.\nAnswer with a label of at most eight words saying what the feature detects.")


def llm_label(f: FeatureInfo, decode: Callable[[list[int]], str], cfg: LLMConfig) -> str:
    """One label from the endpoint (POST {url}/chat/completions); LLMError naming the URL on failure."""
    if not f.top_contexts:
        raise BadInput(f"{f.name} never fired on held-out text: there is nothing to label it from")
    body = json.dumps({"model": cfg.model, "temperature": 0, "max_tokens": 32,
                       "messages": [{"role": "user", "content": prompt(f, decode)}]}).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {cfg.key}"} if cfg.key else {})}
    url = f"{cfg.url}/chat/completions"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=cfg.timeout_s) as r:
            answer = json.loads(r.read())
        text = answer["choices"][0]["message"]["content"]
    except (urllib.error.URLError, OSError) as exc:
        raise LLMError(f"the label endpoint {url} did not answer: {exc}") from exc
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise LLMError(f"the label endpoint {url} answered without choices[0].message.content: {exc}") from exc
    label = " ".join(str(text).split()).strip(" .\"'")
    if not label:
        raise LLMError(f"the label endpoint {url} answered an empty label")
    return label[:120]
