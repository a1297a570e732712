"""The training and evaluation corpus: text people wrote, from Debian packages (see CORPUS.md).

`install_corpus.sh` unpacks the packages under the corpus root (SYNAPSE_CORPUS, default
`<venv>/share/synapse-corpus`). This module cuts each source into documents of about
DOC_CHARS characters, assigns every document to the train or held-out split by a hash of its
id (fixed, so training never sees a held-out document), mixes the sources in a fixed order, and
packs the token stream into contexts: `[separator] + ctx_len - 1 text tokens`, documents joined
by the separator (the tokenizer's EOS token, see `separator_id`). Nothing is read before it is needed: `contexts()` is a generator.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common.errors import BadInput, StoreError

DOC_CHARS = 4000  # documents are runs of whole entries / paragraphs of about this many characters
HELDOUT_PER_MILLE = 50  # 5% of documents, chosen by hash of their id
SPLITS = ("train", "heldout")
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@dataclass(frozen=True)
class Source:
    """One Debian package's text, and its share of the mixed stream."""

    name: str  # short id used in document ids
    package: str  # Debian package it comes from
    path: str  # relative to the corpus root (dpkg-deb -x layout)
    kind: str  # dictd | fortune | rst
    weight: float  # share of documents drawn while every source still has some
    license: str
    genre: str


SOURCES: tuple[Source, ...] = (
    Source("gcide", "dict-gcide", "debian/usr/share/dictd/gcide", "dictd", 0.22, "GPL-2+",
           "dictionary (Webster 1913 + additions) with quotations as examples"),
    Source("foldoc", "dict-foldoc", "debian/usr/share/dictd/foldoc", "dictd", 0.12, "GFDL-1.1+",
           "computing dictionary: definitions, acronyms, cross references"),
    Source("jargon", "dict-jargon", "debian/usr/share/dictd/jargon", "dictd", 0.08, "public domain",
           "the Jargon File: hacker slang, prose and anecdotes"),
    Source("devil", "dict-devil", "debian/usr/share/dictd/devil", "dictd", 0.03, "public domain",
           "Ambrose Bierce, The Devil's Dictionary (1911): satire and verse"),
    Source("fortunes", "fortunes", "debian/usr/share/games/fortunes", "fortune", 0.23, "BSD-3-Clause",
           "quotations, dialogue, jokes, poems, lists"),
    Source("python-docs", "python3.11-doc", "debian/usr/share/doc/python3.11/html/_sources", "rst", 0.32,
           "PSF-2.0", "Python reference manual and tutorials: reST prose with code"),
)


@dataclass(frozen=True)
class Document:
    doc_id: str  # "<source>/<file>#<chunk>", stable across runs
    text: str

    @property
    def split(self) -> str:
        return split_of(self.doc_id)


def split_of(doc_id: str) -> str:
    """'heldout' for a fixed 5% of document ids (by SHA-1), 'train' for the rest."""
    h = int(hashlib.sha1(doc_id.encode()).hexdigest()[:8], 16)
    return "heldout" if h % 1000 < HELDOUT_PER_MILLE else "train"


def corpus_root() -> Path:
    """Where install_corpus.sh unpacked the text: $SYNAPSE_CORPUS or <venv>/share/synapse-corpus."""
    env = os.environ.get("SYNAPSE_CORPUS")
    return Path(env).expanduser() if env else Path(sys.prefix) / "share" / "synapse-corpus"


def check_installed(root: Path | None = None) -> Path:
    root = root or corpus_root()
    missing = [s.package for s in SOURCES if not _source_exists(root, s)]
    if missing:
        raise StoreError(
            f"the corpus at {root} lacks {', '.join(missing)}: run "
            f"`bash synapse_core/features/install_corpus.sh` (or set SYNAPSE_CORPUS)"
        )
    return root


def _source_exists(root: Path, s: Source) -> bool:
    p = root / s.path
    return (p.parent / (p.name + ".dict.dz")).exists() if s.kind == "dictd" else p.is_dir()


def _b64(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 64 + _B64.index(ch)
    return n


def _chunks(pieces: list[str], sep: str) -> Iterator[str]:
    """Join consecutive pieces into chunks of about DOC_CHARS characters."""
    buf, size = [], 0
    for p in pieces:
        if not p.strip():
            continue
        buf.append(p)
        size += len(p)
        if size >= DOC_CHARS:
            yield sep.join(buf)
            buf, size = [], 0
    if buf:
        yield sep.join(buf)


def _dictd_entries(base: Path) -> list[str]:
    index = base.parent / (base.name + ".index")
    spans = set()
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and not parts[0].startswith("00-database"):
            spans.add((_b64(parts[1]), _b64(parts[2])))
    with gzip.open(base.parent / (base.name + ".dict.dz"), "rb") as f:  # dictzip is gzip-compatible
        data = f.read()
    out, end = [], 0
    for off, length in sorted(spans):
        if off < end:  # several headwords share one entry
            continue
        out.append(data[off:off + length].decode("utf-8", errors="replace").strip())
        end = off + length
    return out


def _files(root: Path, s: Source) -> Iterator[tuple[str, list[str], str]]:
    """(file id, pieces, separator) for each file of a source, in sorted order."""
    base = root / s.path
    if s.kind == "dictd":
        yield base.name, _dictd_entries(base), "\n\n"
    elif s.kind == "fortune":
        for f in sorted(base.iterdir()):
            if f.is_file() and "." not in f.name:
                yield f.name, f.read_text(encoding="utf-8", errors="replace").split("\n%\n"), "\n\n"
    else:
        for f in sorted(base.rglob("*.rst.txt")):
            text = f.read_text(encoding="utf-8", errors="replace")
            yield str(f.relative_to(base)), text.split("\n\n"), "\n\n"


def documents(source: Source, root: Path | None = None) -> list[Document]:
    """Every document of one source, in file order."""
    root = check_installed(root)
    return [Document(f"{source.name}/{fid}#{i}", text)
            for fid, pieces, sep in _files(root, source) for i, text in enumerate(_chunks(pieces, sep))]


def mixed_documents(split: str, seed: int = 0, root: Path | None = None) -> Iterator[Document]:
    """The documents of one split, sources interleaved by weight (stride scheduling), each
    source's documents in a seeded shuffle. Deterministic for a given corpus and seed."""
    if split not in SPLITS:
        raise BadInput(f"unknown corpus split {split!r}: splits are {', '.join(SPLITS)}")
    queues = []
    for s in SOURCES:
        docs = [d for d in documents(s, root) if d.split == split]
        random.Random(f"{seed}:{s.name}").shuffle(docs)
        queues.append([s.weight, 0, docs])
    while True:
        live = [q for q in queues if q[1] < len(q[2])]
        if not live:
            return
        q = min(live, key=lambda q: (q[1] + 1) / q[0])
        q[1] += 1
        yield q[2][q[1] - 1]


def separator_id(tokenizer) -> int:
    """The token that opens each context and joins documents: the tokenizer's EOS token (for the
    bundled model's GGUF tokenizer that is `<|im_start|>`, id 1), else `<|endoftext|>`."""
    tid = tokenizer.eos_token_id
    if tid is None:
        tid = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if tid is None:
        raise BadInput("the tokenizer has no EOS token to separate documents with")
    return int(tid)


def contexts(tokenizer, split: str, ctx_len: int = 128, n_contexts: int | None = None,
             seed: int = 0, root: Path | None = None) -> Iterator[np.ndarray]:
    """Packed contexts of one split, each an int32 array (ctx_len,): the separator token, then
    ctx_len - 1 tokens of the document stream. Stops after n_contexts (or at the end of the split).
    """
    if ctx_len < 2:
        raise BadInput(f"context length {ctx_len} is too short: need at least 2 tokens")
    sep = separator_id(tokenizer)
    body, buf, made = ctx_len - 1, [], 0
    for doc in mixed_documents(split, seed, root):
        buf.extend(tokenizer(doc.text, add_special_tokens=False).input_ids)
        buf.append(sep)
        while len(buf) >= body:
            if n_contexts is not None and made >= n_contexts:
                return
            yield np.asarray([sep] + buf[:body], dtype=np.int32)
            buf = buf[body:]
            made += 1


def count_tokens(tokenizer, root: Path | None = None) -> dict[str, dict[str, int]]:
    """Tokens per source and split (slow: tokenizes everything; used for CORPUS.md)."""
    out: dict[str, dict[str, int]] = {}
    for s in SOURCES:
        counts = {"train": 0, "heldout": 0, "documents": 0}
        for d in documents(s, root):
            counts[d.split] += len(tokenizer(d.text, add_special_tokens=False).input_ids)
            counts["documents"] += 1
        out[s.name] = counts
    return out
