"""General text scored the standard way, with and without masks.

A text is tokenized as the model's tokenizer does by default, cut into consecutive windows of
`window` tokens (a last window shorter than MIN_WINDOW tokens is dropped), and every token of a
window but the first is predicted from the ones before it inside that window. Cross-entropy is the
mean over every predicted token, in nats; perplexity = exp(mean cross-entropy). A window never spans
two documents. Windows are batched (right-padded: under causal attention padding after a token never
changes it), as many per forward pass as LOGIT_BUDGET allows.

The text is the held-out split of the feature corpus (features.corpus) when it is installed, or
any text a user gives. Differences before/after get a paired bootstrap interval over documents (over
windows when the text is one document).
"""
from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..common.errors import BadInput, StoreError
from ..hooks.dispatch import hooks
from ..hooks.masking import mask_fns
from ..model.generation import Progress
from ..model.loading import ModelHandle
from ..model.mapper import Mapper, local_mapper

DEFAULT_WINDOW = 256
MIN_WINDOW = 9  # a last window shorter than this is dropped
DEFAULT_TOKENS = 20_000  # tokens of the held-out corpus scored by default
LOGIT_BUDGET = 1 << 25  # rows x pos x d_vocab logits per forward pass (128 MB of float32)
RESAMPLES = 1000  # bootstrap resamples
CORPUS_NAME = "corpus held-out split"


@dataclass(frozen=True)
class TextDocs:
    """A text to score: token ids per document, cut to a token budget."""

    name: str  # "corpus held-out split" or the file's name
    digest: str  # sha256 (16 hex) of what the scores depend on: the text, or the corpus version and budget
    documents: tuple[tuple[int, ...], ...]  # token ids of each document
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class TextScore:
    """Summed cross-entropy of each window of a text under one set of masks."""

    window: int
    doc_of: np.ndarray  # (windows,) int: the document each window comes from
    ce_sum: np.ndarray  # (windows,) float64: summed cross-entropy (nats) of the window's predicted tokens
    predicted: np.ndarray  # (windows,) int: tokens predicted in the window (its length - 1)

    @property
    def tokens(self) -> int:
        """Tokens of text in the kept windows (each window's unpredicted first token included)."""
        return int(self.predicted.sum() + len(self.predicted))

    @property
    def mean_ce(self) -> float:
        return float(self.ce_sum.sum() / self.predicted.sum())

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_ce)


def windows(documents, window: int = DEFAULT_WINDOW) -> list[tuple[int, tuple[int, ...]]]:
    """(document index, token ids) of every consecutive window; a last window under MIN_WINDOW dropped.

    >>> [len(w) for _, w in windows([tuple(range(600))], 256)]
    [256, 256, 88]
    """
    check_window(window)
    out = []
    for d, ids in enumerate(documents):
        for start in range(0, len(ids), window):
            piece = tuple(ids[start:start + window])
            if len(piece) >= MIN_WINDOW:
                out.append((d, piece))
    return out


def check_window(window) -> int:
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < MIN_WINDOW:
        raise BadInput(f"window {window!r} is too short: a context needs at least {MIN_WINDOW} tokens")
    return int(window)


def check_length(docs: TextDocs, window: int) -> None:
    """BadInput when the text is shorter than one context of `window` tokens."""
    total = sum(len(d) for d in docs.documents)
    if total < window:
        raise BadInput(f"{docs.name} has {total} tokens, shorter than one context of {window} tokens: give a longer "
                       "text or a smaller window")


def ce_shard(handle: ModelHandle, cases, progress: Progress | None = None, *, masks) -> list:
    """A shard function (model.mapper) over batches of windows: each case is one forward pass's windows
    (token-id tuples, the longest first); its result is each window's summed cross-entropy (window,)
    float64, with `masks` in force."""
    out = []
    fns = mask_fns(tuple(masks))
    with torch.inference_mode(), hooks(handle.model, handle.arch, fns):
        for done, batch in enumerate(cases):
            width = len(batch[0])
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            valid = torch.zeros(len(batch), width - 1, dtype=torch.bool)
            for r, piece in enumerate(batch):
                ids[r, :len(piece)] = torch.tensor(piece)
                valid[r, :len(piece) - 1] = True
            ids = ids.to(handle.device)
            logits = handle.model(input_ids=ids, use_cache=False).logits[:, :-1].float()  # (batch, pos - 1, d_vocab)
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
            out.append((ce.view(len(batch), -1) * valid.to(ce.device)).sum(1).double().cpu().numpy())
            if progress:
                progress(done + 1, len(cases), f"forward pass {done + 1}/{len(cases)}")
    return out


def score_text(handle: ModelHandle, docs: TextDocs, window: int = DEFAULT_WINDOW, masks=(),
               progress: Callable[[int, int], None] | None = None, mapper: Mapper | None = None) -> TextScore:
    """Summed cross-entropy of every window of `docs` with `masks` in force (one batched pass per
    group of windows, longest first). progress(done, total) as passes are done; mapper: where the
    passes run (model.mapper: here, or shards of passes on the job engine's Ray actors; the groups
    are the same, so the numbers are)."""
    check_length(docs, window)
    kept = windows(docs.documents, window)
    order = sorted(range(len(kept)), key=lambda i: -len(kept[i][1]))
    vocab = handle.model.get_output_embeddings().weight.shape[0]
    batches, i = [], 0
    while i < len(order):
        rows = max(1, LOGIT_BUDGET // (len(kept[order[i]][1]) * vocab))
        batches.append(order[i:i + rows])
        i += rows
    cases = tuple(tuple(kept[k][1] for k in batch) for batch in batches)
    step = (lambda done, total, message="": progress(done, total)) if progress else None
    sums = (mapper or local_mapper(handle))(ce_shard, cases, {"masks": tuple(masks)}, step)
    ce_sum = np.zeros(len(kept))
    for batch, ce in zip(batches, sums):
        ce_sum[batch] = ce
    return TextScore(window=int(window), doc_of=np.array([d for d, _ in kept]), ce_sum=ce_sum,
                     predicted=np.array([len(w) - 1 for _, w in kept]))


def bootstrap(before: TextScore, after: TextScore, resamples: int = RESAMPLES,
              seed: int = 0) -> tuple[str, tuple[float, float], tuple[float, float]]:
    """Paired 95% percentile intervals of the change in mean cross-entropy (after - before, nats) and
    in perplexity (after / before - 1), resampling documents (windows when there is one document).
    Returns (unit, ce interval, perplexity interval)."""
    unit = before.doc_of if len(set(before.doc_of.tolist())) > 1 else np.arange(len(before.doc_of))
    name = "document" if len(set(before.doc_of.tolist())) > 1 else "window"
    groups = np.unique(unit)
    idx = np.searchsorted(groups, unit)
    b = np.bincount(idx, before.ce_sum, len(groups))
    a = np.bincount(idx, after.ce_sum, len(groups))
    n = np.bincount(idx, before.predicted, len(groups)).astype(float)
    draws = np.random.default_rng(seed).integers(0, len(groups), size=(resamples, len(groups)))
    counts = n[draws].sum(1)
    delta = (a[draws].sum(1) - b[draws].sum(1)) / counts
    ce_lo, ce_hi = np.percentile(delta, [2.5, 97.5])
    return name, (float(ce_lo), float(ce_hi)), (float(math.expm1(ce_lo)), float(math.expm1(ce_hi)))


# ---- where the text comes from -----------------------------------------------------------------


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def text_docs(handle: ModelHandle, text: str, name: str = "text") -> TextDocs:
    """A user's text as one document, tokenized as the tokenizer does by default."""
    if text is None or not text.strip():
        raise BadInput(f"{name} is empty: give some text to score")
    ids = tuple(handle.tokenizer(text).input_ids)
    return TextDocs(name, _digest(text), (ids,))


def file_docs(handle: ModelHandle, path) -> TextDocs:
    """A UTF-8 text file as one document; BadInput naming the file when it is missing, unreadable,
    not UTF-8 or empty."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read the text file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadInput(f"the text file {str(path)!r} is not UTF-8 text (byte {exc.start}: "
                       f"{data[exc.start:exc.start + 1]!r})") from None
    if not text.strip():
        raise BadInput(f"the text file {str(path)!r} is empty: give some text to score")
    return text_docs(handle, text, path.name)


@functools.lru_cache(maxsize=2)
def _heldout_texts(root: str, manifest: str, budget_chars: int) -> tuple[str, ...]:
    from ..features.corpus import mixed_documents

    out, size = [], 0
    for doc in mixed_documents("heldout", root=Path(root)):
        if size >= budget_chars:
            break
        out.append(doc.text)
        size += len(doc.text)
    return tuple(out)


def corpus_docs(handle: ModelHandle, tokens: int = DEFAULT_TOKENS, window: int = DEFAULT_WINDOW) -> TextDocs:
    """The first documents of the corpus's held-out split (its fixed mixed order) holding `tokens`
    tokens in whole windows. StoreError, saying how to install it, when the corpus is absent."""
    from ..features.corpus import check_installed

    check_window(window)
    if isinstance(tokens, bool) or not isinstance(tokens, (int, np.integer)) or tokens < window:
        raise BadInput(f"tokens {tokens!r}: score at least one context of {window} tokens")
    root = check_installed()
    manifest = (root / "MANIFEST").read_text(encoding="utf-8") if (root / "MANIFEST").exists() else ""
    chars, seen = tokens * 6, -1  # about 4 characters a token: enough documents, read once per process
    while True:
        texts = _heldout_texts(str(root), manifest, chars)
        docs, total = [], 0
        for text in texts:
            ids = tuple(handle.tokenizer(text).input_ids)
            if total + len(ids) > tokens:  # cut the last document at a window boundary
                ids = ids[:((tokens - total) // window) * window]
            keep = sum(len(w) for _, w in windows([ids], window))
            if keep:
                docs.append(ids)
                total += keep
            if total > tokens - window:
                break
        if total > tokens - window or len(texts) == seen:  # enough, or the split has no more documents
            break
        seen, chars = len(texts), chars * 2
    if total < window:
        raise StoreError(f"the corpus held-out split at {root} holds fewer than {window} tokens")
    return TextDocs(CORPUS_NAME, _digest(manifest, str(tokens), str(window), handle.fingerprint), tuple(docs),
                    () if total > tokens - window else (f"the held-out split holds only {total} tokens",))
