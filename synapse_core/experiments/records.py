"""Experiments: every ablation, sweep and prompt-set run is a frozen config with a stable content
hash, its result kept in the ResultStore under $SYNAPSE_HOME. The same experiment twice is answered
from the store. Helpers for a History view: list with filters, reopen by hash (the
`?experiment=<hash>` link), export as JSON or CSV, delete.

A stored entry that cannot be read is reported, never hidden: listing returns a message per bad
entry, reopening raises StoreError, and a run that meets one recomputes it and says so in `notes`.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from dataclasses import dataclass, field

from ..arch.spec import HeadMask, Intervention, normalize_masks
from ..common.errors import BadInput, StoreError
from ..common.hashing import Hashed, engine_version, shorten
from ..interventions.ablation import AblationResult, ablate
from ..interventions.metrics import METRICS, check_metric
from ..interventions.ops import OpSettings
from ..interventions.promptset import PromptCase, PromptSetResult, prompt_set_metric
from ..interventions.reference import default_reference_prompts
from ..interventions.sweep import (
    BATCH_ROWS,
    LAYER_SITES,
    SweepResult,
    active_features,
    sweep_features,
    sweep_heads,
    sweep_layers,
)
from ..jobs.config import EngineConfig
from ..jobs.tasks import run_prompt_set, run_prompt_sweep
from ..model.generation import Progress
from ..model.loading import ModelHandle
from .store import ResultStore

EXPERIMENT_KINDS = ("ablation", "sweep", "promptset", "promptsweep")
_HASH_RE = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class ExperimentConfig(Hashed):
    """Everything a result depends on. Build with ablation_config / sweep_config / promptset_config."""

    kind: str  # ablation | sweep | promptset | promptsweep (a sweep on every prompt of a set)
    model: str  # the model's name
    fingerprint: str  # weights fingerprint: a stored result is reused only for the same weights
    dtype: str  # e.g. "torch.float32": numbers differ between dtypes
    prompts: tuple[str, ...]
    targets: tuple[str, ...]  # one per prompt
    contrasts: tuple[str | None, ...]  # one per prompt
    interventions: tuple[Intervention, ...] = ()  # ablation and promptset: applied together
    metric: str = "log_prob"  # headline metric (sweep: the metric of the map)
    masks: tuple[HeadMask, ...] = ()  # heads masked in every run, clean runs included
    settings: OpSettings = field(default_factory=OpSettings)
    sweep_sites: tuple[str, ...] = ()  # sweep: ("attn.head",) for every head, else layer sites
    sweep_op: str = "zero"  # sweep: the operation applied to each component
    sweep_positions: str | tuple[int, ...] = "all"  # sweep: positions of each intervention
    sweep_source: str | None = None  # sweep with op patch: the source prompt
    sweep_features: tuple[int, ...] = ()  # feature sweep: the features of the SAE named in sweep_sites, each zeroed
    top_k: int = 10  # rows of the next-token tables

    def __post_init__(self):
        if self.kind not in EXPERIMENT_KINDS:
            raise BadInput(f"experiment kind {self.kind!r} is not one of {', '.join(EXPERIMENT_KINDS)}")
        if not self.prompts or not (len(self.prompts) == len(self.targets) == len(self.contrasts)):
            raise BadInput(f"{len(self.prompts)} prompts, {len(self.targets)} targets and {len(self.contrasts)} "
                           "contrasts: give one target and one (possibly empty) contrast per prompt")
        check_metric(self.metric)
        if self.metric == "logit_diff" and not all(self.contrasts):
            raise BadInput("metric logit_diff needs a contrast token for every prompt: give one, or pick log_prob")
        if self.kind in ("sweep", "promptsweep") and not self.sweep_sites:
            raise BadInput("a sweep needs its sites: ('attn.head',) or some of attn, mlp, resid")
        if self.kind not in ("sweep", "promptsweep") and not self.interventions:
            raise BadInput(f"an {self.kind} experiment needs at least one intervention")

    @property
    def title(self) -> str:
        prompt = shorten(self.prompts[0])
        if self.kind in ("sweep", "promptsweep"):
            what = ("every head" if self.sweep_sites == ("attn.head",) else
                    f"{len(self.sweep_features)} features of {self.sweep_sites[0]}" if self.sweep_features else
                    "every layer's " + "/".join(self.sweep_sites))
            if self.kind == "promptsweep":
                return f"{self.sweep_op} sweep over {what} on {len(self.prompts)} prompts"
            return f"{self.sweep_op} sweep over {what} \u00b7 {prompt!r} \u2192 {self.targets[0]!r}"
        ops = sorted({iv.op for iv in self.interventions})
        names = ", ".join(iv.name for iv in self.interventions[:3]) + (" \u2026" if len(self.interventions) > 3 else "")
        if self.kind == "promptset":
            return f"{'/'.join(ops)} {names} over {len(self.prompts)} prompts"
        return f"{'/'.join(ops)} {names} \u00b7 {prompt!r} \u2192 {self.targets[0]!r}"


@dataclass(frozen=True)
class StoredExperiment:
    """What the store keeps for an experiment."""

    config: ExperimentConfig
    result: object  # AblationResult | SweepResult | PromptSetResult


@dataclass(frozen=True)
class Experiment:
    """An experiment's config and result, as run now or reopened from the store."""

    config: ExperimentConfig
    result: object  # AblationResult | SweepResult | PromptSetResult
    hash: str
    created: float  # unix time the result was computed
    from_cache: bool = False  # answered from the store
    notes: tuple[str, ...] = ()  # store messages, e.g. an unreadable entry that was recomputed
    engine: str | None = None  # engine version that made it (reopened entries; "" = before versions were kept)

    @property
    def outdated(self) -> bool:
        """Reopened from the store but made by another engine: its numbers may differ from this one's."""
        return self.engine is not None and self.engine != engine_version()


@dataclass(frozen=True)
class ExperimentSummary:
    """One line of the History view."""

    hash: str
    kind: str
    model: str
    created: float
    title: str
    metric: str
    headline: str  # the main number(s), e.g. "Δ log_prob -1.23 · KL 0.045"
    engine: str = ""  # engine version that made it; "" = before versions were kept
    outdated: bool = False  # made by another engine: listed, never served as an answer to this one


def _base(handle: ModelHandle, masks) -> dict:
    return dict(model=handle.name, fingerprint=handle.fingerprint, dtype=str(handle.dtype),
                masks=normalize_masks(masks, handle.arch))


def _settings(settings: OpSettings, ops) -> OpSettings:
    # the default reference set is written into the config, so editing it changes the hash
    if "mean" in ops and not settings.reference:
        return dataclasses.replace(settings, reference=default_reference_prompts())
    return settings


def ablation_config(handle: ModelHandle, prompt: str, target: str, interventions, contrast: str | None = None,
                    masks=(), settings: OpSettings = OpSettings(), metric: str | None = None,
                    top_k: int = 10) -> ExperimentConfig:
    ivs = tuple(iv.check(handle.arch) for iv in interventions)
    return ExperimentConfig(kind="ablation", prompts=(prompt,), targets=(target,), contrasts=(contrast or None,),
                            interventions=ivs, metric=metric or ("logit_diff" if contrast else "log_prob"),
                            settings=_settings(settings, {iv.op for iv in ivs}), top_k=top_k, **_base(handle, masks))


def sweep_config(handle: ModelHandle, prompt: str, target: str, contrast: str | None = None,
                 sites: tuple[str, ...] = ("attn.head",), op: str = "zero", positions="all",
                 source: str | None = None, metric: str | None = None, masks=(),
                 settings: OpSettings = OpSettings()) -> ExperimentConfig:
    sites = tuple(sites)
    if sites != ("attn.head",) and (not sites or any(s not in LAYER_SITES for s in sites)):
        raise BadInput(f"sweep sites {list(sites)}: use ('attn.head',) or some of {', '.join(LAYER_SITES)}")
    Intervention(0, sites[0], op, 0 if sites[0] == "attn.head" else None, positions, source)  # validates op
    return ExperimentConfig(kind="sweep", prompts=(prompt,), targets=(target,), contrasts=(contrast or None,),
                            metric=metric or ("logit_diff" if contrast else "log_prob"),
                            settings=_settings(settings, {op}), sweep_sites=sites, sweep_op=op,
                            sweep_positions=positions, sweep_source=source, **_base(handle, masks))


def feature_sweep_config(handle: ModelHandle, prompt: str, target: str, sae: str, features=None, top: int = 20,
                         contrast: str | None = None, positions="all", metric: str | None = None,
                         masks=()) -> ExperimentConfig:
    """A sweep zeroing features of SAE `sae` in turn: the given indices, or (features None) the `top`
    features most active on the prompt, chosen now so the experiment names the features it ran."""
    features = active_features(handle, prompt, sae, top, masks) if features is None else tuple(features)
    if not features:
        raise BadInput(f"no feature of {sae} is active on the prompt {prompt!r} (position 0 left out)")
    return ExperimentConfig(kind="sweep", prompts=(prompt,), targets=(target,), contrasts=(contrast or None,),
                            metric=metric or ("logit_diff" if contrast else "log_prob"), sweep_sites=(sae,),
                            sweep_op="zero", sweep_positions=positions, sweep_features=tuple(int(f) for f in features),
                            **_base(handle, masks))


def feature_promptsweep_config(handle: ModelHandle, cases, sae: str, features=None, top: int = 20, positions="all",
                               metric: str | None = None, masks=()) -> ExperimentConfig:
    """Features of SAE `sae` zeroed in turn on every prompt of a set, their mean effects over it: the
    given indices, or (features None) the `top` features most active on any prompt of the set."""
    cases = tuple(cases)
    if not cases:
        raise BadInput("the prompt set is empty")
    if features is None:
        features = active_features(handle, [c.prompt for c in cases], sae, top, masks)
        if not features:
            raise BadInput(f"no feature of {sae} is active on any prompt of the set (position 0 left out)")
    one = feature_sweep_config(handle, cases[0].prompt, cases[0].target, sae, features, top, cases[0].contrast,
                               positions, prompt_set_metric(cases, metric), masks)
    return dataclasses.replace(one, kind="promptsweep", prompts=tuple(c.prompt for c in cases),
                               targets=tuple(c.target for c in cases), contrasts=tuple(c.contrast for c in cases))


def promptset_config(handle: ModelHandle, cases, interventions, masks=(), settings: OpSettings = OpSettings(),
                     metric: str | None = None, top_k: int = 5) -> ExperimentConfig:
    cases = tuple(cases)
    ivs = tuple(iv.check(handle.arch) for iv in interventions)
    return ExperimentConfig(kind="promptset", prompts=tuple(c.prompt for c in cases),
                            targets=tuple(c.target for c in cases), contrasts=tuple(c.contrast for c in cases),
                            interventions=ivs, metric=prompt_set_metric(cases, metric),
                            settings=_settings(settings, {iv.op for iv in ivs}), top_k=top_k, **_base(handle, masks))


def promptsweep_config(handle: ModelHandle, cases, sites: tuple[str, ...] = ("attn.head",), op: str = "zero",
                       positions="all", source: str | None = None, metric: str | None = None, masks=(),
                       settings: OpSettings = OpSettings()) -> ExperimentConfig:
    """A sweep on every prompt of a set (mean effects over the set): one experiment, whatever engine runs it."""
    cases = tuple(cases)
    one = sweep_config(handle, cases[0].prompt, cases[0].target, cases[0].contrast, sites, op, positions, source,
                       prompt_set_metric(cases, metric), masks, settings)
    return dataclasses.replace(one, kind="promptsweep", prompts=tuple(c.prompt for c in cases),
                               targets=tuple(c.target for c in cases), contrasts=tuple(c.contrast for c in cases))


def _compute(handle: ModelHandle, c: ExperimentConfig, progress, batch_rows: int, engine: EngineConfig | None = None,
             cancel=None):
    if c.kind == "ablation":
        return ablate(handle, c.prompts[0], c.targets[0], c.interventions, c.contrasts[0], c.masks, c.settings, c.top_k)
    cases = [PromptCase(p, t, k) for p, t, k in zip(c.prompts, c.targets, c.contrasts)]
    if c.kind == "promptset":  # on the configured engine; the same result on each
        return run_prompt_set(handle, cases, c.interventions, c.masks, c.settings, c.metric, c.top_k, engine,
                              progress, cancel)
    common = dict(op=c.sweep_op, positions=c.sweep_positions, source=c.sweep_source, metric=c.metric, masks=c.masks,
                  settings=c.settings, batch_rows=batch_rows, progress=progress)
    if c.kind == "promptsweep":
        return run_prompt_sweep(handle, cases, c.sweep_sites, engine=engine, cancel=cancel,
                                features=c.sweep_features, **common)
    if c.sweep_features:
        return sweep_features(handle, c.prompts[0], c.targets[0], c.sweep_sites[0], c.sweep_features, c.contrasts[0],
                              c.sweep_positions, c.metric, c.masks, batch_rows, progress)
    if c.sweep_sites == ("attn.head",):
        return sweep_heads(handle, c.prompts[0], c.targets[0], c.contrasts[0], **common)
    return sweep_layers(handle, c.prompts[0], c.targets[0], c.contrasts[0], sites=c.sweep_sites, **common)


def run_experiment(handle: ModelHandle, config: ExperimentConfig, store: ResultStore | None = None,
                   progress: Progress | None = None, batch_rows: int = BATCH_ROWS, engine: EngineConfig | None = None,
                   cancel=None) -> Experiment:
    """Answer from the store when this exact experiment was run before, else run and store it.
    Prompt sets and prompt-set sweeps run on `engine` (default local); the engine is not part of the
    experiment: its hash and numbers are the same on each. cancel() turning true stops such a job
    (JobCancelled) and nothing is stored."""
    if config.fingerprint != handle.fingerprint or config.dtype != str(handle.dtype):
        raise BadInput(f"experiment {config.hash} was made with {config.model} (weights {config.fingerprint}, "
                       f"{config.dtype}); the loaded model is {handle.name} ({handle.fingerprint}, {handle.dtype})")
    store = store or ResultStore()
    entry, from_cache, notes = store.get_or_compute(
        config.kind, config,
        lambda: StoredExperiment(config, _compute(handle, config, progress, batch_rows, engine, cancel)),
        summary={"kind": config.kind, "model": config.model, "title": config.title},
    )
    if not isinstance(entry.result, StoredExperiment):
        raise StoreError(f"result {entry.key} is a {entry.kind} entry, not an experiment")
    return Experiment(entry.result.config, entry.result.result, entry.key, entry.created, from_cache, tuple(notes))


def _check_hash(key: str) -> str:
    key = (key or "").strip().lower()
    if not _HASH_RE.match(key):
        raise BadInput(f"{key!r} is not an experiment id: ids are 16 hex digits, e.g. 3f2a9c0b1d4e5f67")
    return key


def load_experiment(store: ResultStore, key: str) -> Experiment | None:
    """The experiment stored under `key` (the ?experiment= link), None when there is none.
    Raises StoreError when the entry exists but cannot be read."""
    entry = store.get(_check_hash(key))
    if entry is None:
        return None
    if not isinstance(entry.result, StoredExperiment):
        raise StoreError(f"result {entry.key} is a {entry.kind} entry, not an experiment")
    return Experiment(entry.result.config, entry.result.result, entry.key, entry.created, True, engine=entry.engine)


def delete_experiment(store: ResultStore, key: str) -> bool:
    return store.delete(_check_hash(key))


def headline(exp: Experiment) -> str:
    """The main number(s) of a result, for a History line. Results of other kinds sharing the store
    (e.g. discovery) may provide their own `headline()`."""
    r, metric = exp.result, exp.config.metric
    if hasattr(r, "headline"):
        return r.headline()
    if isinstance(r, AblationResult):
        delta = r.delta(metric)
        shown = "n/a" if delta is None else f"{delta:+.4g}"
        return f"\u0394 {metric} {shown} \u00b7 KL {r.kl_divergence:.4g}" + (" \u00b7 top-1 changed" if r.top1_changed else "")
    if isinstance(r, SweepResult):
        i, j = divmod(int(abs(r.effects).argmax()), r.effects.shape[1])
        return f"largest effect {float(r.effects[i, j]):+.4g} at {r.name(i, j)}"
    if isinstance(r, PromptSetResult):
        return f"mean \u0394 {metric} {r.mean_change:+.4g} \u00b7 top-1 changed {r.top1_changed_fraction:.0%}"
    return ""


def list_experiments(store: ResultStore, kind: str | None = None, model: str | None = None,
                     search: str | None = None) -> tuple[list[ExperimentSummary], list[str]]:
    """Stored experiments, newest first, filtered by kind, model name and a text search over titles
    and prompts; and one message per entry that could not be read (they are skipped)."""
    entries, problems = store.entries()
    out = []
    for entry in entries:
        if not isinstance(entry.result, StoredExperiment):
            continue  # traces and other results share the store
        c = entry.result.config
        if (kind and c.kind != kind) or (model and c.model != model):
            continue
        if search and search.lower() not in (c.title + " " + " ".join(c.prompts)).lower():
            continue
        exp = Experiment(c, entry.result.result, entry.key, entry.created, True, engine=entry.engine)
        out.append(ExperimentSummary(entry.key, c.kind, c.model, entry.created, c.title, c.metric, headline(exp),
                                     entry.engine, entry.outdated))
    return out, problems


def export_json(exp: Experiment) -> str:
    """The experiment as one JSON document: id, config and result."""
    return json.dumps({"experiment": exp.hash, "created": exp.created, "config": dataclasses.asdict(exp.config),
                       "result": exp.result.to_json()}, indent=2)


def export_csv(exp: Experiment) -> str:
    """The experiment's table: metrics (ablation), one row per component (sweep) or per prompt (prompt set).
    Other results give their `csv_rows()`, or else their JSON's top-level fields, one per row."""
    r = exp.result
    if hasattr(r, "csv_rows"):
        rows = r.csv_rows()
    elif not isinstance(r, (AblationResult, SweepResult, PromptSetResult)):
        rows = [{"field": k, "value": v if isinstance(v, (str, int, float, type(None))) else json.dumps(v)}
                for k, v in r.to_json().items()]
    elif isinstance(r, SweepResult):
        rows = r.effect_rows()
    elif isinstance(r, PromptSetResult):
        rows = r.table()
    else:
        rows = [{"metric": m, "clean": r.clean.value(m) if m != "kl" else 0.0,
                 "intervened": r.intervened.value(m) if m != "kl" else r.kl_divergence, "change": r.delta(m)}
                for m in METRICS]
        rows.append({"metric": "top_token", "clean": r.clean.top_token, "intervened": r.intervened.top_token,
                     "change": "changed" if r.top1_changed else "same"})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
