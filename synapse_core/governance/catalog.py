"""The model as catalog data, the shape OpenMetadata governs and the Governance page draws.

    DatabaseService Synapse_Neural_Service
      Database <model name>
        DatabaseSchema Transformer_Graph
          Table Prompt_Ingress   (prompt_tokens)
          Table Layer_0 ... Layer_{n-1}, Column Head_0 ... Head_{h-1} (FLOAT),
                and a Column Feature_<name> (FLOAT) per quarantined SAE feature read at that layer
          Table Response_Egress  (next_token)
    Lineage  Prompt_Ingress -> Layer_0 -> ... -> Layer_{n-1} -> Response_Egress
    Classification SynapseQuarantine, Tag DEFECTIVE on the Head column of every quarantined head
    and on every Feature column

A quarantined feature is a column of its layer's table rather than a tag named after it on the table:
OpenMetadata's tags are a governed vocabulary (a tag per feature would flood the classification with
thousands of one-use terms), while a column carries what a head's does: the same DEFECTIVE tag, the
evidence in its description, search and column-level lineage, and it sits beside the heads of its
layer, where a data steward looks. The column exists while the quarantine does.

Pure data built from (model name, n_layers, n_heads): no client, no network, no SDK import, so
the embedded view costs nothing. openmetadata.py turns it into the SDK's create requests.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

from ..common.errors import BadInput

SERVICE = "Synapse_Neural_Service"
SCHEMA = "Transformer_Graph"
INGRESS = "Prompt_Ingress"
EGRESS = "Response_Egress"
CLASSIFICATION = "SynapseQuarantine"
TAG = "DEFECTIVE"
TAG_FQN = f"{CLASSIFICATION}.{TAG}"
INGRESS_COLUMN = "prompt_tokens"
EGRESS_COLUMN = "next_token"

FEATURE_PREFIX = "Feature_"
_LAYER_RE = re.compile(r"^Layer_(\d+)$")
_HEAD_RE = re.compile(r"^Head_(\d+)$")


def layer_table(layer: int) -> str:
    return f"Layer_{layer}"


def head_column(head: int) -> str:
    return f"Head_{head}"


def feature_column(feature: str) -> str:
    """The column of a quarantined feature: Feature_layers_15_resid_post_sae_1234 (no dots: they would need
    quoting in every fully qualified name); the exact name is in its description."""
    return FEATURE_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", feature)


def feature_text(feature: str) -> str:
    return f"SAE feature {feature}, quarantined: zero-ablated at its SAE's site in every run (error term kept)."


def parse_layer_table(name: str) -> int | None:
    """The layer of a `Layer_N` table name; None for any other table."""
    match = _LAYER_RE.match(name or "")
    return int(match.group(1)) if match else None


def parse_head_column(name: str) -> int | None:
    """The head of a `Head_N` column name; None for any other column."""
    match = _HEAD_RE.match(name or "")
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class CatalogColumn:
    name: str  # Head_N, Feature_<name>, or the ingress/egress column
    data_type: str  # OpenMetadata DataType name: FLOAT for heads and features, STRING for tokens
    description: str
    head: int | None = None  # the head this column stands for
    feature: str | None = None  # the quarantined feature this column stands for (layers.15.resid.post.sae.1234)
    tags: tuple[str, ...] = ()  # tags the column is created with (DEFECTIVE on a feature's)


@dataclass(frozen=True)
class CatalogTable:
    name: str  # Layer_N, Prompt_Ingress or Response_Egress
    description: str
    columns: tuple[CatalogColumn, ...]
    layer: int | None = None  # the layer this table stands for


@dataclass(frozen=True)
class LineageEdge:
    """Data flows from one table to another; with column pairs for a traced thought path."""

    source: str  # table name
    target: str  # table name
    columns: tuple[tuple[str, str], ...] = ()  # (source column, target column) pairs
    description: str = ""


@dataclass(frozen=True)
class Catalog:
    """Everything the catalog holds for one model."""

    model: str  # the Database's name
    fingerprint: str | None  # weights fingerprint, recorded in the Database's description
    n_layers: int
    n_heads: int
    service: str
    schema: str
    service_description: str
    database_description: str
    schema_description: str
    tables: tuple[CatalogTable, ...]  # ingress, layers in order, egress
    edges: tuple[LineageEdge, ...]  # the layer chain
    classification: str
    classification_description: str
    tag: str
    tag_description: str

    def table(self, name: str) -> CatalogTable:
        for table in self.tables:
            if table.name == name:
                return table
        raise BadInput(f"table {name!r} is not in the catalog of {self.model}")

    def head_description(self, layer: int, head: int) -> str:
        return self.table(layer_table(layer)).columns[head].description


def head_role_text(layer: int, head: int, role: str | None = None) -> str:
    text = f"Attention head {layer}.{head} (layers.{layer}.attn.head.{head})."
    return f"{text} Role: {role}." if role else text


def build_catalog(model: str, n_layers: int, n_heads: int, roles: Mapping[tuple[int, int], str] | None = None,
                  fingerprint: str | None = None, features: Iterable = ()) -> Catalog:
    """The catalog of a model with n_layers x n_heads attention heads.

    roles: a description of what a head does where known, e.g. {(3, 1): "previous-token head"}.
    features: quarantined features (FeatureEntry-like: feature, layer, the evidence), each a DEFECTIVE
    column of its layer's table with the evidence in its description.

    >>> cat = build_catalog("SmolLM2-135M-Instruct", 30, 9)
    >>> [t.name for t in cat.tables][:3], len(cat.edges)
    (['Prompt_Ingress', 'Layer_0', 'Layer_1'], 31)
    """
    if not model or not model.strip():
        raise BadInput("the model has no name: the catalog's Database is named after it")
    if '"' in model or "::" in model:
        raise BadInput(f"model name {model!r} cannot name an OpenMetadata Database (no '\"' or '::')")
    if n_layers < 1 or n_heads < 1:
        raise BadInput(f"a model needs at least one layer and one head, got {n_layers} layers x {n_heads} heads")
    roles = dict(roles or {})
    for layer, head in roles:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise BadInput(f"role given for head {layer}.{head}, which does not exist in {n_layers} x {n_heads}")
    by_layer: dict[int, list] = {}
    for entry in features:
        if not 0 <= entry.layer < n_layers:
            raise BadInput(f"feature {entry.feature} sits at layer {entry.layer}, which {model} does not have")
        by_layer.setdefault(entry.layer, []).append(entry)
    tables = [CatalogTable(INGRESS, "Prompt tokens entering the model.",
                           (CatalogColumn(INGRESS_COLUMN, "STRING", "The prompt's tokens."),))]
    for layer in range(n_layers):
        columns = tuple(CatalogColumn(head_column(h), "FLOAT", head_role_text(layer, h, roles.get((layer, h))), h)
                        for h in range(n_heads)) + tuple(
            CatalogColumn(feature_column(e.feature), "FLOAT", with_evidence(feature_text(e.feature), e),
                          feature=e.feature, tags=(TAG_FQN,)) for e in sorted(by_layer.get(layer, ()),
                                                                            key=lambda e: e.feature))
        tables.append(CatalogTable(layer_table(layer), f"Decoder layer {layer}: its {n_heads} attention heads.",
                                   columns, layer))
    tables.append(CatalogTable(EGRESS, "The next token the model emits.",
                               (CatalogColumn(EGRESS_COLUMN, "STRING", "The predicted next token."),)))
    chain = [t.name for t in tables]
    edges = tuple(LineageEdge(a, b, description="residual stream") for a, b in zip(chain, chain[1:]))
    shape = f"{n_layers} layers x {n_heads} heads"
    fp = f", weights fingerprint `{fingerprint}`" if fingerprint else ""
    return Catalog(
        model=model, fingerprint=fingerprint, n_layers=n_layers, n_heads=n_heads, service=SERVICE, schema=SCHEMA,
        service_description="Language models catalogued by Synapse: layers as tables, attention heads as columns.",
        database_description=f"Language model {model} ({shape}{fp}).",
        schema_description="The model's computation graph: prompt -> decoder layers -> response.",
        tables=tuple(tables), edges=edges, classification=CLASSIFICATION,
        classification_description="Attention heads quarantined by Synapse: masked in every run of the model.",
        tag=TAG, tag_description="A head proven harmful; Synapse masks it at run time.",
    )


def _head_pairs(path) -> list[tuple[int, int]]:
    out = []
    for item in path:
        if hasattr(item, "layer") and hasattr(item, "head"):
            out.append((int(item.layer), int(item.head)))
        else:
            layer, head = item
            out.append((int(layer), int(head)))
    return out


def thought_path_edges(catalog: Catalog, path: Sequence) -> tuple[LineageEdge, ...]:
    """Column-level lineage for a traced thought path: one head per step, layers increasing.

    path: (layer, head) pairs, or objects with .layer and .head (a ThoughtPath's `heads`).
    Prompt_Ingress.prompt_tokens -> Layer_a.Head_x -> Layer_b.Head_y -> ... -> Response_Egress.next_token
    """
    pairs = _head_pairs(path)
    if not pairs:
        raise BadInput("the thought path is empty: export a traced path with at least one head")
    for (la, _), (lb, _) in zip(pairs, pairs[1:]):
        if lb <= la:
            raise BadInput(f"thought path goes from layer {la} to layer {lb}: layers must increase")
    for layer, head in pairs:
        if not (0 <= layer < catalog.n_layers and 0 <= head < catalog.n_heads):
            raise BadInput(f"head {layer}.{head} does not exist: {catalog.model} has "
                           f"{catalog.n_layers} layers x {catalog.n_heads} heads")
    nodes = [(INGRESS, INGRESS_COLUMN), *((layer_table(lay), head_column(h)) for lay, h in pairs),
             (EGRESS, EGRESS_COLUMN)]
    return tuple(LineageEdge(a[0], b[0], ((a[1], b[1]),), "traced thought path") for a, b in zip(nodes, nodes[1:]))


# ---- the embedded view -----------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogRow:
    """One column of the catalog, for a table view; tags from the mask store."""

    table: str
    column: str
    data_type: str
    description: str
    layer: int | None
    head: int | None
    tags: tuple[str, ...]  # ("SynapseQuarantine.DEFECTIVE",) on a quarantined head
    reason: str | None = None
    experiment: str | None = None
    level: str | None = None


def catalog_rows(catalog: Catalog, entries: Iterable = ()) -> list[CatalogRow]:
    """Every column of every table, quarantined heads tagged DEFECTIVE (entries: MaskEntry-like)."""
    by_head = {(e.layer, e.head): e for e in entries}
    rows = []
    for table in catalog.tables:
        for col in table.columns:
            entry = by_head.get((table.layer, col.head)) if col.head is not None else None
            if col.feature is not None:  # the feature's evidence is its column's description
                entry = SimpleNamespace(**{"level": "feature", **parse_evidence(col.description)})
            rows.append(CatalogRow(
                table=table.name, column=col.name, data_type=col.data_type, description=col.description,
                layer=table.layer, head=col.head, tags=(TAG_FQN,) if entry else (),
                reason=getattr(entry, "reason", None), experiment=getattr(entry, "experiment", None),
                level=getattr(entry, "level", None),
            ))
    return rows


def catalog_tree(catalog: Catalog, entries: Iterable = ()) -> dict:
    """Service -> Database -> Schema -> Table -> Column -> tags, as nested plain dicts (for st.json)."""
    tables: dict[str, dict[str, list[str]]] = {}
    for row in catalog_rows(catalog, entries):
        tables.setdefault(row.table, {})[row.column] = list(row.tags)
    return {catalog.service: {catalog.model: {catalog.schema: tables}}}


# ---- evidence in a Head column's description -------------------------------------------------

EVIDENCE_MARKER = f"**Quarantined by Synapse** ({TAG_FQN})"
_EVIDENCE_KEYS = (("reason", "reason"), ("level", "level"), ("experiment", "experiment"),
                  ("effect", "verified effect"), ("cost", "cost"), ("prompt", "prompt"), ("target", "target"),
                  ("by", "by"), ("at", "at"))


_QUOTED = ("prompt", "target")


def _one_line(value) -> str:
    return " ".join(str(value).split())


def evidence_markdown(entry) -> str:
    """The quarantine's evidence (a MaskEntry-like object) as a markdown block, one `- key: value` a line."""
    lines = [EVIDENCE_MARKER]
    for attr, label in _EVIDENCE_KEYS:
        value = getattr(entry, attr, None)
        if value not in (None, ""):
            # texts whose spaces matter (" Paris" is not "Paris") are written as JSON strings
            text = json.dumps(str(value)) if attr in _QUOTED else _one_line(value)
            lines.append(f"- {label}: {text}")
    return "\n".join(lines)


def strip_evidence(description: str | None) -> str:
    """The description without its quarantine block (what un-quarantine restores)."""
    text = description or ""
    cut = text.find(EVIDENCE_MARKER)
    if cut < 0:
        return text
    base = text[:cut].rstrip()
    return base[: -len("---")].rstrip() if base.endswith("---") else base


def with_evidence(description: str | None, entry) -> str:
    """The description with the quarantine block replaced by this entry's evidence."""
    base = strip_evidence(description)
    block = evidence_markdown(entry)
    return f"{base}\n\n---\n{block}" if base else block


def parse_evidence(description: str | None) -> dict[str, str]:
    """The fields of a quarantine block ({"reason": ..., "experiment": ...}); {} when there is none."""
    text = description or ""
    cut = text.find(EVIDENCE_MARKER)
    if cut < 0:
        return {}
    by_label = {label: attr for attr, label in _EVIDENCE_KEYS}
    out = {}
    for line in text[cut + len(EVIDENCE_MARKER):].splitlines():
        if not line.startswith("- ") or ": " not in line:
            continue
        label, value = line[2:].split(": ", 1)
        if label in by_label:
            value = value.strip()
            if by_label[label] in _QUOTED and value.startswith('"'):
                try:
                    value = json.loads(value)
                except ValueError:
                    pass
            out[by_label[label]] = value
    return out
