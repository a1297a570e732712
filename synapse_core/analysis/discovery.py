"""Discover: the heads behind a token, ranked by attribution patching, proven by ablation.

1. rank   every head by attribution patching (attribution.py: one forward and one backward pass per
          prompt), or by AtP* (`ranking="atp*"`, atpstar.py: later attention softmaxes recomputed and
          GradDrop; misses fewer heads, about 25x the time of plain attribution patching);
2. verify the `verify_heads` candidates of largest |estimate| by real zero ablation, batched
          (sweep.batched_scores); the circuit is the `top_k_heads` whose ablation lowers the metric most;
3. pairs  up to `max_pair_sweeps` pairs of circuit heads ablated together, against the sum of singles;
4. baseline the whole circuit ablated at once, against `baseline_draws` random head sets of its size
          (baseline.py).

With a prompt set, steps 1-4 run on a training split and the circuit is judged again on the
prompts held out of it (`holdout`, a seeded share of the set): the out-of-sample result stands
beside the in-sample one. With one prompt there is no held-out prompt, and the result says plainly
that its judgement is in-sample.

Effects are always metric(ablated) - metric(clean): a head that pushes the model towards the target
has a negative effect. The metric is logit(target) - logit(contrast) with a contrast, else
log p(target). Over a prompt set every effect is the mean over prompts, with its standard deviation.
A discovery is an experiment: `experiments.discoveries.run_discovery` answers the same config from
the result store.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from ..arch.spec import HeadMask, HeadRef, Intervention, head_masks, normalize_masks
from ..common.errors import BadInput
from ..common.hashing import content_hash
from ..interventions.metrics import resolve_target
from ..interventions.promptset import PromptCase, prompt_set_metric
from ..model.loading import ModelHandle
from ..model.mapper import Mapper, local_mapper, stage_progress
from ..model.tokens import encode_prompt
from .attribution import METHOD
from .baseline import CircuitEffect, judge_circuit
from .circuit import (
    EDGE_WEIGHT,
    Edge,
    PairEffect,
    choose_pairs,
    circuit_edges,
    pair_effect,
    random_head_sets,
)
from .discoshards import RANKINGS, head_sets_shard, rank_shard, verify_shard

STAGES = ("ranking", "verification", "pairs", "baseline", "held_out")
DiscoveryProgress = Callable[[str, int, int], None]  # (stage, done, total)
TOP_K_RANGE = (1, 20)
PAIR_RANGE = (0, 190)
MIN_DRAWS = 20
RHO_HEADS = 30  # Spearman's rho is taken over the (up to) 30 heads of largest |estimate|
VERSION = 2  # bump when results of the same config would change
HOLDOUT = 0.5  # share of a prompt set held out of the discovery to judge its circuit out of sample


@dataclass(frozen=True)
class DiscoveryConfig:
    """Everything a discovery depends on; its content hash is the experiment id."""

    model: str
    fingerprint: str  # weights fingerprint: a stored result is reused only for the same weights
    dtype: str
    prompts: tuple[str, ...]
    targets: tuple[str, ...]  # one per prompt: the token to explain (scored on its first token)
    contrasts: tuple[str | None, ...]  # one per prompt
    metric: str  # logit_diff when every prompt has a contrast, else log_prob
    masks: tuple[HeadMask, ...] = ()  # masked in every run, clean runs included
    top_k_heads: int = 5  # size of the discovered circuit, 1-20
    max_pair_sweeps: int = 10  # pairs of circuit heads ablated together, 0-190
    verify_heads: int = 30  # candidates verified by ablation (at least top_k_heads)
    baseline_draws: int = 20  # random head sets of the circuit's size, at least 20
    seed: int = 0  # seeds the random head sets and the train / held-out split
    holdout: float = HOLDOUT  # share of a prompt set held out to judge the circuit (0 = judge in sample only)
    ranking: str = "atp"  # how every head is ranked before verification: a key of RANKINGS
    op: str = "zero"  # the ablation: head output set to 0 at every position
    version: int = VERSION
    kind: str = "discover"

    @property
    def hash(self) -> str:
        """The content hash: the store key and the `?experiment=` id."""
        return content_hash(self.kind, self)

    @property
    def title(self) -> str:
        prompt = self.prompts[0] if len(self.prompts[0]) <= 40 else self.prompts[0][:39] + "\u2026"
        where = f"{len(self.prompts)} prompts" if len(self.prompts) > 1 else repr(prompt)
        return f"discover top {self.top_k_heads} heads \u00b7 {where} \u2192 {self.targets[0]!r}"

    @property
    def cases(self) -> tuple[PromptCase, ...]:
        return tuple(PromptCase(p, t, c) for p, t, c in zip(self.prompts, self.targets, self.contrasts))


@dataclass(frozen=True)
class HeadEffect:
    """One verified head: estimated and measured effect of zero-ablating it."""

    layer: int
    head: int
    estimated_effect: float  # attribution-patching estimate of metric(ablated) - metric(clean), mean over prompts
    verified_effect: float  # measured by ablation, mean over prompts
    estimated_std: float  # spread over prompts (0 for one prompt)
    verified_std: float
    estimate_rank: int  # 1 = ranked first of every head (largest |estimate|, or AtP*'s GradDrop score)

    @property
    def ref(self) -> HeadRef:
        return HeadRef(self.layer, self.head)

    @property
    def name(self) -> str:
        return self.ref.name


@dataclass(frozen=True, eq=False)
class DiscoveryResult:
    """What a discovery found. `heads` is the circuit, `candidates` every verified head."""

    model: str
    fingerprint: str
    cases: tuple[PromptCase, ...]
    metric: str
    clean: float  # clean metric, mean over prompts
    estimates: np.ndarray  # (layer, head) attribution estimate of every head, mean over prompts
    estimate_std: np.ndarray  # (layer, head) spread over prompts
    candidates: tuple[HeadEffect, ...]  # verified heads, most negative verified effect first
    heads: tuple[HeadEffect, ...]  # the circuit: the first top_k_heads candidates
    pairs: tuple[PairEffect, ...]
    circuit: CircuitEffect  # judged in sample: on the prompts the circuit was chosen on (circuit.prompts)
    held_out: CircuitEffect | None  # judged on the held-out prompts; None with one prompt (or holdout 0)
    edges: tuple[Edge, ...]
    edge_weight: str  # what an edge's weight is
    spearman_rho: float | None  # estimates vs verified effects over the top-|estimate| heads; None if undefined
    rho_heads: int  # how many heads rho is over
    masks: tuple[HeadMask, ...]
    rank_seconds: float  # ranking every head by attribution, all prompts
    seconds: float  # the whole discovery
    method: str = METHOD
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def in_sample_only(self) -> bool:
        """True when the circuit was judged only on the prompts it was chosen on."""
        return self.held_out is None

    @property
    def evaluation(self) -> str:
        """How the circuit was judged, in words: in sample only, or on held-out prompts too."""
        chosen = len(self.circuit.prompts)
        if self.held_out is None:
            what = "this prompt" if chosen == 1 else f"the same {chosen} prompts"
            return (f"in-sample only: the circuit was chosen and judged on {what}; give a prompt set to judge it "
                    "on prompts it was not chosen on")
        held = len(self.held_out.prompts)
        return (f"chosen on {chosen} training prompt(s) and judged on {held} held-out prompt(s): "
                f"out of sample, {self.held_out.verdict}")

    def headline(self) -> str:
        """The History line: the circuit and what ablating its heads together does."""
        c = self.circuit
        heads = ", ".join(f"{h.layer}.{h.head}" for h in self.heads)
        return (f"heads {heads} · {self.metric} {c.effect:+.3g} together · "
                + ("beats random sets" if c.beats_random else "no better than random sets"))

    def to_json(self) -> dict:
        c = self.circuit
        head = lambda h: dict(asdict(h), name=h.name)  # noqa: E731
        ref = lambda r: {"layer": r.layer, "head": r.head, "name": r.name}  # noqa: E731
        return {
            "model": self.model, "fingerprint": self.fingerprint, "metric": self.metric, "clean": self.clean,
            "prompts": [asdict(case) for case in self.cases],
            "heads": [head(h) for h in self.heads],
            "candidates": [head(h) for h in self.candidates],
            "pairs": [dict(asdict(p), a=ref(p.a), b=ref(p.b)) for p in self.pairs],
            "circuit_effect": c.effect,
            "circuit": {"heads": [ref(r) for r in c.heads], "metric_before": c.metric_before,
                        "metric_after": c.metric_after, "effect_std": c.effect_std,
                        "beats_random": c.beats_random, "verdict": c.verdict, "interacts": c.interacts,
                        "sum_of_singles": c.sum_of_singles},
            "evaluation": {"in_sample_only": self.in_sample_only, "statement": self.evaluation,
                           "in_sample": c.to_json(),
                           "held_out": None if self.held_out is None else self.held_out.to_json()},
            "random_baseline": {"mean": c.random_mean, "std": c.random_std, "draws": len(c.random_effects),
                                "seed": c.seed, "effects": list(c.random_effects),
                                "target_rate": c.random_target_rate},
            "target_rate": {"before": c.target_rate_before, "after": c.target_rate_after},
            "edges": [dict(asdict(e), sender=ref(e.sender), receiver=ref(e.receiver)) for e in self.edges],
            "edge_weight": self.edge_weight,
            "spearman_rho": self.spearman_rho, "rho_heads": self.rho_heads,
            "estimates": self.estimates.round(6).tolist(),
            "masks": [asdict(m) for m in self.masks], "method": self.method,
            "rank_seconds": self.rank_seconds, "seconds": self.seconds,
            "notes": list(self.notes), "warnings": list(self.warnings),
        }


def _check_range(name: str, value: int, bounds: tuple[int, int]) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not bounds[0] <= value <= bounds[1]:
        raise BadInput(f"{name} {value!r} is out of range: choose {bounds[0]}-{bounds[1]}")
    return int(value)


def _check_known(handle: ModelHandle, text: str, what: str) -> None:
    """A word-level tokenizer maps an unknown word to its unknown token: refuse to score that."""
    unk = getattr(handle.tokenizer, "unk_token_id", None)
    if unk is None or text.strip() == handle.tokenizer.unk_token:
        return
    ids = handle.tokenizer(text, add_special_tokens=False).input_ids
    if ids and ids[0] == unk:
        raise BadInput(f"{what} {text!r} is not in the model's vocabulary (it encodes to the unknown token "
                       f"{handle.tokenizer.unk_token!r})")


def discovery_config(handle: ModelHandle, prompt: str | None = None, target: str | None = None,
                     contrast: str | None = None, cases=None, top_k_heads: int = 5, max_pair_sweeps: int = 10,
                     masks=(), verify_heads: int = RHO_HEADS, baseline_draws: int = MIN_DRAWS,
                     seed: int = 0, holdout: float = HOLDOUT, ranking: str = "atp") -> DiscoveryConfig:
    """Validate a discovery request: one prompt with its target (and contrast), or prompt-set `cases`.

    Raises BadInput naming the bad value (empty prompt, unknown token, top_k out of range, ...).
    >>> cfg = discovery_config(handle, "When Mary and John went to the store, John gave a drink to", " Mary", " John")
    """
    if cases is None:
        if prompt is None or not prompt.strip():
            raise BadInput("the prompt is empty: type some text to run the model on")
        if not target:
            raise BadInput("the target token is empty: name the token to explain")
        cases = (PromptCase(prompt, target, contrast or None),)
    cases = tuple(cases)
    if not cases:
        raise BadInput("the prompt set is empty")
    top_k = _check_range("top_k_heads", top_k_heads, TOP_K_RANGE)
    pairs = _check_range("max_pair_sweeps", max_pair_sweeps, PAIR_RANGE)
    draws = _check_range("baseline_draws", baseline_draws, (MIN_DRAWS, 10_000))
    masks = normalize_masks(masks, handle.arch)
    available = handle.arch.n_layers * handle.arch.n_heads - len({m.ref for m in head_masks(masks)})
    if top_k > available:
        raise BadInput(f"top_k_heads {top_k} is more than the {available} unmasked heads of the model")
    verify = _check_range("verify_heads", verify_heads, (1, 10_000))
    if ranking not in RANKINGS:
        raise BadInput(f"ranking {ranking!r} is not one of {', '.join(RANKINGS)}")
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
        raise BadInput(f"holdout {holdout!r} is out of range: give the share of a prompt set to hold out, 0 to <1")
    for case in cases:
        encode_prompt(handle, case.prompt)  # empty prompt
        resolve_target(handle, case.target, case.contrast)  # empty target, target == contrast
        _check_known(handle, case.target, "target")
        if case.contrast:
            _check_known(handle, case.contrast, "contrast")
    return DiscoveryConfig(
        model=handle.name, fingerprint=handle.fingerprint, dtype=str(handle.dtype),
        prompts=tuple(c.prompt for c in cases), targets=tuple(c.target for c in cases),
        contrasts=tuple(c.contrast or None for c in cases), metric=prompt_set_metric(cases, None), masks=masks,
        top_k_heads=top_k, max_pair_sweeps=pairs, verify_heads=max(verify, top_k), baseline_draws=draws,
        seed=int(seed), holdout=float(holdout), ranking=ranking,
    )


def split_cases(n: int, holdout: float, seed: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(training, held-out) prompt indices, each in the set's order: round(n x holdout) prompts (at
    least 1, leaving at least 1 to train on) drawn with numpy's generator seeded by `seed`; with one
    prompt or holdout 0, every prompt trains and none is held out."""
    if n < 2 or holdout <= 0:
        return tuple(range(n)), ()
    held = set(np.random.default_rng(seed).permutation(n)[:min(n - 1, max(1, round(n * holdout)))].tolist())
    return tuple(i for i in range(n) if i not in held), tuple(sorted(held))


def spearman(x, y) -> float | None:
    """Spearman's rank correlation (ties get their average rank); None when it is undefined."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3:
        return None

    def ranks(v):
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for value in np.unique(v):  # average the ranks of ties
            tie = v == value
            r[tie] = r[tie].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def discover(handle: ModelHandle, config: DiscoveryConfig, progress: DiscoveryProgress | None = None,
             mapper: Mapper | None = None) -> DiscoveryResult:
    """Run a discovery (see the module docstring). progress(stage, done, total) for each stage in STAGES.

    mapper: where each stage's per-prompt work runs (model.mapper; the job engine's runs it on Ray);
    the result is the same whichever runs it, since every stage is gathered in prompt order.
    """
    t0 = time.perf_counter()
    arch, metric, masks = handle.arch, config.metric, config.masks
    report = progress or (lambda stage, done, total: None)
    each = mapper or local_mapper(handle)
    cases = config.cases
    every_target = [resolve_target(handle, c.target, c.contrast) for c in cases]
    encoded = [encode_prompt(handle, c.prompt) for c in cases]
    every_case = [(e[0], t) for e, t in zip(encoded, every_target)]  # (ids (1, pos), target)
    warnings = [w for e in encoded for w in e[1]] + [w for t in every_target for w in t.warnings]
    train, held = split_cases(len(cases), config.holdout, config.seed)
    work = tuple(every_case[i] for i in train)  # steps 1-4: the training split
    n = len(train)

    def stage(name, fn, **params):
        report(name, 0, n)
        return each(fn, work, dict(params, metric=metric, masks=masks), stage_progress(report, name))

    method = RANKINGS[config.ranking][1]
    atts = stage("ranking", rank_shard, ranking=config.ranking)
    rank_seconds = time.perf_counter() - t0
    per_prompt = np.stack([est for est, _ in atts])  # (prompt, layer, head)
    estimates, estimate_std = per_prompt.mean(0), per_prompt.std(0)
    ranking = np.stack([rank for _, rank in atts]).mean(0)  # (layer, head): larger ranks first

    masked = {m.ref for m in head_masks(masks)}
    pool = [HeadRef(layer, head) for layer in range(arch.n_layers) for head in range(arch.n_heads)
            if HeadRef(layer, head) not in masked]
    by_estimate = sorted(pool, key=lambda r: (-float(ranking[r.layer, r.head]), r))
    rank_of = {r: i + 1 for i, r in enumerate(by_estimate)}
    chosen = by_estimate[:min(config.verify_heads, len(pool))]

    # every effect is taken against the clean row of its own batched pass (sweep.py), and the clean
    # metric is the first verification pass's clean row
    ivs = tuple(Intervention(r.layer, "attn.head", config.op, r.head) for r in chosen)
    rows = stage("verification", verify_shard, interventions=ivs)
    verified = np.stack([eff for eff, _ in rows]).reshape(n, len(chosen))  # (prompt, candidate)
    clean = np.array([c for _, c in rows])  # (prompt,)
    ver_mean, ver_std = verified.mean(0), verified.std(0)
    candidates = sorted(
        (HeadEffect(r.layer, r.head, float(estimates[r.layer, r.head]), float(ver_mean[j]),
                    float(estimate_std[r.layer, r.head]), float(ver_std[j]), rank_of[r]) for j, r in enumerate(chosen)),
        key=lambda h: (h.verified_effect, h.ref))
    heads = tuple(candidates[:config.top_k_heads])
    circuit = tuple(sorted(h.ref for h in heads))
    single = {h.ref: h.verified_effect for h in candidates}
    top = [j for j, r in enumerate(chosen) if rank_of[r] <= RHO_HEADS]
    rho = spearman([estimates[chosen[j].layer, chosen[j].head] for j in top], [ver_mean[j] for j in top])

    pair_list = choose_pairs([h.ref for h in heads], single, config.max_pair_sweeps)
    joint = np.zeros((n, len(pair_list)))
    if pair_list:
        joint = np.stack([r[0] for r in stage("pairs", head_sets_shard, sets=pair_list)]).reshape(n, len(pair_list))
    else:
        report("pairs", 0, 0)
    pairs = tuple(pair_effect(a, b, joint[:, j], single[a], single[b]) for j, (a, b) in enumerate(pair_list))

    random_sets = random_head_sets(pool, len(circuit), config.baseline_draws, config.seed)
    singles = sum(single[r] for r in circuit)
    judge = {"circuit": circuit, "random_sets": random_sets, "metric": metric, "masks": masks, "seed": config.seed,
             "sum_of_singles": singles, "report": report, "mapper": each}
    in_sample = judge_circuit(handle, work, train, stage="baseline", **judge)
    held_out = None
    if held:
        held_out = judge_circuit(handle, [every_case[i] for i in held], held, stage="held_out", **judge)
    else:
        report("held_out", 0, 0)

    notes = []
    if any(h.verified_effect >= 0 for h in heads):
        notes.append("some circuit heads raise the metric when ablated: fewer heads than top_k_heads push towards "
                     "the target among the verified candidates")
    if masks:
        notes.append(f"{len(masked)} masked head(s) were left out of ranking, verification and the random sets")
    if held:
        notes.append(f"ranking, verification and pairs ran on {n} of the {len(cases)} prompts; prompts "
                     f"{', '.join(str(i + 1) for i in held)} were held out to judge the circuit out of sample")
    return DiscoveryResult(
        model=handle.name, fingerprint=handle.fingerprint, cases=cases, metric=metric, clean=float(clean.mean()),
        estimates=estimates.astype(np.float32), estimate_std=estimate_std.astype(np.float32),
        candidates=tuple(candidates), heads=heads, pairs=pairs, circuit=in_sample, held_out=held_out,
        edges=tuple(circuit_edges(arch, circuit)), edge_weight=EDGE_WEIGHT, spearman_rho=rho, rho_heads=len(top),
        masks=masks, rank_seconds=rank_seconds, seconds=time.perf_counter() - t0, method=method,
        notes=tuple(notes), warnings=tuple(dict.fromkeys(warnings)))
