"""One name for a head on every page: "L.H" (e.g. "0.6"). The engine's full intervention name
("layers.0.attn.head.6") stays in the JSON downloads and in tooltips; components other than heads
keep their full names ("layers.3.mlp"), which have no shorter form."""
from __future__ import annotations

import re

_FULL = re.compile(r"\blayers\.(\d+)\.attn\.head\.(\d+)\b")
_GRAPH = re.compile(r"^L(\d+)\.H(\d+)$")


def short_name(name: str) -> str:
    """"layers.0.attn.head.6" or "L0.H6" -> "0.6"; any other name unchanged."""
    match = _FULL.fullmatch(name) or _GRAPH.match(name)
    return f"{match[1]}.{match[2]}" if match else name


def short_names(text: str) -> str:
    """Every full head name inside a text (a title, a headline) written as "L.H"."""
    return _FULL.sub(r"\1.\2", text)
