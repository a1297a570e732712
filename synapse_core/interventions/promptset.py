"""Prompt sets: parse "prompt | target | contrast" lines or a CSV, ship the default reference set
for mean ablation, and evaluate one intervention over many prompts.
"""
from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass

from ..arch.spec import HeadMask, Intervention, normalize_masks
from ..common.errors import BadInput
from ..model.generation import Progress
from ..model.loading import ModelHandle
from .ablation import ablate
from .metrics import METRICS, Metrics, check_metric
from .ops import OpSettings


@dataclass(frozen=True)
class PromptCase:
    """One prompt with the token it should predict."""

    prompt: str
    target: str  # scored on its first token
    contrast: str | None = None  # for logit_diff


def _field(text: str) -> str:
    """Strip a field; double quotes keep the whitespace inside them (write " Paris" for a leading space)."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def parse_prompt_lines(text: str) -> tuple[PromptCase, ...]:
    """One case per line: `prompt | target | contrast` (contrast optional). Blank lines and lines
    starting with # are skipped. Fields are stripped; put a field in double quotes to keep spaces.

    >>> parse_prompt_lines('The capital of France is | " Paris" | " London"')[0].target
    ' Paris'
    """
    cases = []
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [_field(p) for p in line.split("|")]
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise BadInput(f"line {number} ({line.strip()!r}): write prompt | target | contrast (contrast optional)")
        cases.append(PromptCase(parts[0], parts[1], (parts[2] or None) if len(parts) == 3 else None))
    if not cases:
        raise BadInput("no prompts given: write one `prompt | target | contrast` per line")
    return tuple(cases)


def parse_prompt_csv(data: str | bytes) -> tuple[PromptCase, ...]:
    """Cases from CSV: columns prompt, target[, contrast] in that order, or in any order under a
    header row naming them. Values are taken as written (a leading space in a target is kept)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise BadInput(f"the CSV file is not UTF-8 text ({exc})") from None
    rows = [row for row in csv.reader(io.StringIO(data)) if any(cell.strip() for cell in row)]
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if "prompt" in header:
        if "target" not in header:
            raise BadInput(f"the CSV header {rows[0]} has no 'target' column")
        cols = [header.index("prompt"), header.index("target"), header.index("contrast") if "contrast" in header else None]
        rows = [[row[c] if c is not None and c < len(row) else "" for c in cols] for row in rows[1:]]
    cases = []
    for number, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0].strip() or not row[1]:
            raise BadInput(f"CSV row {number} ({row}): needs a prompt and a target")
        contrast = row[2] if len(row) > 2 and row[2] else None
        cases.append(PromptCase(row[0].strip(), row[1], contrast))
    if not cases:
        raise BadInput("the CSV has no rows: give columns prompt, target and optionally contrast")
    return tuple(cases)


@dataclass(frozen=True)
class PromptRow:
    """One case of a prompt set, clean vs intervened."""

    case: PromptCase
    clean: Metrics
    intervened: Metrics
    kl: float  # KL(clean || intervened), nats
    top1_changed: bool
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def change(self, metric: str) -> float | None:
        if metric == "kl":
            return self.kl
        a, b = self.intervened.value(metric), self.clean.value(metric)
        return None if a is None or b is None else a - b


@dataclass(frozen=True)
class PromptSetResult:
    """An intervention evaluated over a prompt set."""

    model: str
    fingerprint: str
    interventions: tuple[Intervention, ...]
    settings: OpSettings
    masks: tuple[HeadMask, ...]  # masked in every run
    metric: str  # the metric `mean_change` is of
    rows: tuple[PromptRow, ...]
    mean_change: float  # mean over prompts of intervened - clean (for kl: the mean KL)
    mean_kl: float
    top1_changed_fraction: float  # share of prompts whose most likely next token changed
    notes: tuple[str, ...] = ()

    def table(self) -> list[dict]:
        """One flat dict per prompt (a dataframe or CSV row)."""
        out = []
        for row in self.rows:
            item = {"prompt": row.case.prompt, "target": row.case.target, "contrast": row.case.contrast}
            for name in METRICS[:3]:
                item[f"clean_{name}"] = row.clean.value(name)
                item[f"intervened_{name}"] = row.intervened.value(name)
            item.update(kl=row.kl, clean_top=row.clean.top_token, intervened_top=row.intervened.top_token,
                        top1_changed=row.top1_changed, change=row.change(self.metric))
            out.append(item)
        return out

    def to_json(self) -> dict:
        return {
            "model": self.model, "fingerprint": self.fingerprint,
            "interventions": [dict(asdict(iv), name=iv.name) for iv in self.interventions],
            "settings": asdict(self.settings), "masks": [asdict(m) for m in self.masks], "metric": self.metric,
            "rows": self.table(), "mean_change": self.mean_change, "mean_kl": self.mean_kl,
            "top1_changed_fraction": self.top1_changed_fraction, "notes": list(self.notes),
            "warnings": [w for row in self.rows for w in row.warnings],
        }


def prompt_set_metric(cases, metric: str | None) -> str:
    """logit_diff when every case has a contrast, else log_prob; a chosen logit_diff needs contrasts."""
    if metric is None:
        return "logit_diff" if all(c.contrast for c in cases) else "log_prob"
    check_metric(metric)
    if metric == "logit_diff":
        missing = [c.prompt for c in cases if not c.contrast]
        if missing:
            raise BadInput(f"metric logit_diff needs a contrast for every prompt; {missing[0]!r} has none")
    return metric


def evaluate_prompt_set(handle: ModelHandle, cases, interventions, masks=(), settings: OpSettings = OpSettings(),
                        metric: str | None = None, top_k: int = 5, progress: Progress | None = None) -> PromptSetResult:
    """Clean vs intervened metrics for every case, and the aggregate over the set."""
    cases = tuple(cases)
    if not cases:
        raise BadInput("the prompt set is empty")
    metric = prompt_set_metric(cases, metric)
    masks = normalize_masks(masks, handle.arch)
    rows = []
    for i, case in enumerate(cases):
        r = ablate(handle, case.prompt, case.target, interventions, case.contrast, masks, settings, top_k)
        rows.append(PromptRow(case, r.clean, r.intervened, r.kl_divergence, r.top1_changed, r.notes, r.warnings))
        if progress:
            progress(i + 1, len(cases), case.prompt[:40])
    return summarize_prompt_set(handle.name, handle.fingerprint, r.interventions, settings, masks, metric, rows)


def summarize_prompt_set(model: str, fingerprint: str, interventions, settings: OpSettings, masks, metric: str,
                         rows) -> PromptSetResult:
    """The result of a prompt set from its rows, in prompt order: the aggregate is computed here only,
    so a set evaluated in shards (synapse_core.jobs) sums the same numbers in the same order."""
    rows = tuple(rows)
    n = len(rows)
    return PromptSetResult(
        model=model,
        fingerprint=fingerprint,
        interventions=tuple(interventions),
        settings=settings,
        masks=tuple(masks),
        metric=metric,
        rows=rows,
        mean_change=sum(row.change(metric) for row in rows) / n,
        mean_kl=sum(row.kl for row in rows) / n,
        top1_changed_fraction=sum(row.top1_changed for row in rows) / n,
        notes=tuple(dict.fromkeys(note for row in rows for note in row.notes)),
    )
