"""The real OpenMetadata client: the official SDK (openmetadata-ingestion) driven with the catalog.

Importing this module imports the SDK (about 10 s the first time), so governance.py imports it
only when a server is configured. Every SDK failure is turned into an OMError subclass whose
message names the server and what to do; the token never appears in one.

Known traps of the SDK and server, each handled here:
- adding a tag that is already there duplicates it: columns are read first;
- `add_lineage` returns {"error": ...} instead of raising: checked;
- a failed patch is logged and returns None instead of raising: None is an error;
- names with a dot are quoted in fully qualified names: built and split with metadata.utils.fqn;
- the client refuses a server whose major.minor differs: reported naming both versions;
- the SDK caches lineage edges per process and never invalidates them after a patch: cleared
  before each lineage batch, so a merge is computed against the server's state;
- the SDK retries timed-out reads with back-off and its timeouts bound one socket read, not a
  request: its transport is replaced by one with a deadline for the whole client (omtransport.py);
- the version endpoint needs no token: `check_token` asks an authenticated endpoint;
- a schema that was never bootstrapped reads as "no tables": `defects` refuses it, so a sync never
  takes an empty catalog for "no defects".
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import requests
from metadata.generated.schema.api.classification.createClassification import CreateClassificationRequest
from metadata.generated.schema.api.classification.createTag import CreateTagRequest
from metadata.generated.schema.api.data.createDatabase import CreateDatabaseRequest
from metadata.generated.schema.api.data.createDatabaseSchema import CreateDatabaseSchemaRequest
from metadata.generated.schema.api.data.createTable import CreateTableRequest
from metadata.generated.schema.api.lineage.addLineage import AddLineageRequest
from metadata.generated.schema.api.services.createDatabaseService import CreateDatabaseServiceRequest
from metadata.generated.schema.entity.classification.classification import Classification
from metadata.generated.schema.entity.classification.tag import Tag
from metadata.generated.schema.entity.data.database import Database
from metadata.generated.schema.entity.data.databaseSchema import DatabaseSchema
from metadata.generated.schema.entity.data.table import Column, DataType, Table
from metadata.generated.schema.entity.services.connections.metadata.openMetadataConnection import (
    AuthProvider,
    OpenMetadataConnection,
)
from metadata.generated.schema.entity.services.databaseService import DatabaseService, DatabaseServiceType
from metadata.generated.schema.security.client.openMetadataJWTClientConfig import OpenMetadataJWTClientConfig
from metadata.generated.schema.type.entityLineage import ColumnLineage, EntitiesEdge, LineageDetails
from metadata.generated.schema.type.entityReference import EntityReference
from metadata.generated.schema.type.tagLabel import LabelType, State, TagLabel, TagSource
from metadata.ingestion.ometa.client import APIError, RestTransportError
from metadata.ingestion.ometa.mixins import lineage_mixin
from metadata.ingestion.ometa.mixins.server_mixin import VersionMismatchException
from metadata.ingestion.ometa.ometa_api import OpenMetadata
from metadata.ingestion.ometa.utils import model_str

from .catalog import (
    TAG_FQN,
    Catalog,
    LineageEdge,
    head_column,
    layer_table,
    parse_evidence,
    parse_head_column,
    parse_layer_table,
    strip_evidence,
    with_evidence,
)
from .omconfig import OMConfig, OMRejected, OMUnavailable, OMVersionMismatch
from .omnames import column_fqn, database_fqn, schema_fqn, split_fqn, table_fqn
from .omtransport import DEADLINE_S, bound, raise_translated

log = logging.getLogger(__name__)
_PATCH_TRIES = 3  # optimistic-lock (If-Match) retries when a column changed under us


# ---- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapReport:
    """What `bootstrap` did on the server."""

    created: tuple[str, ...]  # FQNs of entities that did not exist
    updated: tuple[str, ...]  # FQNs whose version changed
    unchanged: int  # entities that were already as wanted
    edges: int  # lineage edges sent (merged, never replaced)
    delivered: int = 0  # outbox items sent right after (set by Governance.bootstrap)
    pending: int = 0  # outbox items still waiting
    error: str | None = None  # why they wait


@dataclass(frozen=True)
class ServerDefect:
    """A Head column tagged DEFECTIVE on the server, with the evidence found in its description."""

    layer: int
    head: int
    evidence: dict  # parsed quarantine block: reason, level, experiment, effect, prompt, by, at


def _tag_label() -> TagLabel:
    return TagLabel(tagFQN=TAG_FQN, source=TagSource.Classification, labelType=LabelType.Manual,
                    state=State.Confirmed)


def _has_defective(column: Column) -> bool:
    return any(model_str(tag.tagFQN) == TAG_FQN for tag in column.tags or [])


class OMClient:
    """One connection to OpenMetadata for one catalog. Construction checks the server's version."""

    def __init__(self, config: OMConfig, timeout: tuple[float, float] = (5, 30), deadline_s: float = DEADLINE_S):
        """deadline_s: the client's whole life with the server; nothing it asks takes longer."""
        self.config = config
        self.server = config.server
        self._deadline = None
        with self._translate("read its version"):
            connection = OpenMetadataConnection(
                hostPort=config.api_url, authProvider=AuthProvider.openmetadata,
                securityConfig=OpenMetadataJWTClientConfig(jwtToken=config.token), enableVersionValidation=False,
            )
            # no 30 s sleeps between retries: a page is waiting, and the outbox retries later anyway
            self._om = OpenMetadata(connection, additional_client_config_arguments={"retry": 0, "timeout": timeout})
            self._deadline = bound(self._om.client._session, deadline_s, timeout)
            self.server_version = self._om.server_version
            self.client_version = self._om.client_version
        try:
            self._om.validate_versions()
        except VersionMismatchException:
            mm = ".".join(self.server_version.split(".")[:2])
            raise OMVersionMismatch(
                f"OpenMetadata at {self.server} is version {self.server_version}, but this Synapse uses the SDK "
                f"openmetadata-ingestion {self.client_version}; the SDK talks only to servers of its own major.minor. "
                f"Install openmetadata-ingestion~={mm}.0, or point the host at a "
                f"{'.'.join(self.client_version.split('.')[:2])}.x server."
            ) from None

    def __repr__(self) -> str:
        return f"OMClient(server={self.server!r}, version={getattr(self, 'server_version', None)!r})"

    def close(self) -> None:
        if self._deadline:
            self._deadline.cancel()
        self._om.close()

    @contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        """Turn the SDK's many failure types into OMError subclasses that say what to do; after the
        deadline, whatever a cut connection led to is said as what it is."""
        try:
            yield
        except Exception as exc:
            if self._deadline is not None and (self._deadline.expired or self._deadline.remaining() <= 0):
                raise OMUnavailable(f"OpenMetadata at {self.server} did not answer within "
                                    f"{self._deadline.seconds:g} s while trying to {what}; check that the "
                                    "server runs and is not overloaded") from exc
            raise_translated(exc, self.server, what)

    def check_token(self) -> None:
        """Ask an endpoint that needs the token (the version endpoint does not); OMAuthError when refused."""
        with self._translate("list classifications (checking the token)"):
            answer = self._om.client.get("/classifications", data={"limit": 1})
            if not isinstance(answer, dict):
                raise OMRejected(f"OpenMetadata at {self.server} did not answer a token check with JSON")

    # ---- bootstrap -----------------------------------------------------------------------------

    def _put(self, request, report: dict, before_version=None):
        """create_or_update, counting the entity as created, updated (new version) or unchanged."""
        entity = self._om.create_or_update(request)
        name = model_str(entity.fullyQualifiedName)
        if before_version is None:
            report["created"].append(name)
        elif model_str(entity.version) != model_str(before_version):
            report["updated"].append(name)
        else:
            report["unchanged"] += 1
        return entity

    def _ensure(self, entity_type, fqn_: str, request, report: dict):
        old = self._om.get_by_name(entity_type, fqn_)
        return self._put(request, report, old.version if old else None)

    def bootstrap(self, catalog: Catalog) -> BootstrapReport:
        """Create or update everything in the catalog. Idempotent: a second run changes nothing.

        Existing columns keep the tags and descriptions the server holds (quarantine tags and their
        evidence are never wiped by a re-run); lineage is merged, never replaced.
        """
        report = {"created": [], "updated": [], "unchanged": 0}
        with self._translate(f"bootstrap the catalog of {catalog.model}"):
            self._ensure(DatabaseService, catalog.service, CreateDatabaseServiceRequest(
                name=catalog.service, serviceType=DatabaseServiceType.CustomDatabase,
                description=catalog.service_description), report)
            self._ensure(Database, database_fqn(catalog), CreateDatabaseRequest(
                name=catalog.model, service=catalog.service, description=catalog.database_description), report)
            self._ensure(DatabaseSchema, schema_fqn(catalog), CreateDatabaseSchemaRequest(
                name=catalog.schema, database=database_fqn(catalog), description=catalog.schema_description), report)
            self._ensure(Classification, catalog.classification, CreateClassificationRequest(
                name=catalog.classification, mutuallyExclusive=False,
                description=catalog.classification_description), report)
            self._ensure(Tag, TAG_FQN, CreateTagRequest(
                classification=catalog.classification, name=catalog.tag, description=catalog.tag_description), report)
            existing = {model_str(t.name): t for t in self._tables(catalog)}
            tables = {}
            for table in catalog.tables:
                server = existing.get(table.name)
                server_cols = {model_str(c.name): c for c in (server.columns if server else [])}
                columns = []
                for col in table.columns:
                    have = server_cols.get(col.name)
                    columns.append(Column(
                        name=col.name, dataType=DataType(col.data_type),
                        description=(model_str(have.description) if have and have.description else col.description),
                        tags=list(have.tags) if have and have.tags else [_tag_label()] if col.tags else None,
                    ))
                request = CreateTableRequest(
                    name=table.name, databaseSchema=schema_fqn(catalog), columns=columns,
                    description=model_str(server.description) if server and server.description else table.description)
                tables[table.name] = self._put(request, report, server and server.version)
        edges = self.add_lineage(catalog, catalog.edges, tables)
        return BootstrapReport(tuple(report["created"]), tuple(report["updated"]), report["unchanged"], edges)

    def add_lineage(self, catalog: Catalog, edges: Sequence[LineageEdge], tables: dict | None = None) -> int:
        """Send lineage edges, merging column lineage into what the server holds.

        Raises OMRejected naming the edge when the SDK reports {"error": ...}.
        """
        lineage_mixin.search_cache.clear()  # see the module docstring: stale edges break the merge
        sent = 0
        with self._translate("add lineage"):
            tables = dict(tables or {})
            for edge in edges:
                for name in (edge.source, edge.target):
                    if name not in tables:
                        tables[name] = self._table(catalog, name)
                refs = [EntityReference(id=tables[n].id, type="table") for n in (edge.source, edge.target)]
                cols = [ColumnLineage(fromColumns=[column_fqn(catalog, edge.source, a)],
                                      toColumn=column_fqn(catalog, edge.target, b)) for a, b in edge.columns]
                details = LineageDetails(description=edge.description or None, columnsLineage=cols or None)
                result = self._om.add_lineage(
                    AddLineageRequest(edge=EntitiesEdge(fromEntity=refs[0], toEntity=refs[1], lineageDetails=details)),
                    check_patch=True, return_lineage=False)
                if not isinstance(result, dict) or "error" in result:
                    error = result.get("error") if isinstance(result, dict) else result
                    raise OMRejected(f"OpenMetadata at {self.server} refused the lineage {edge.source} -> "
                                     f"{edge.target}: {error}")
                sent += 1
        return sent

    # ---- tables and head columns ---------------------------------------------------------------

    def _tables(self, catalog: Catalog) -> list[Table]:
        """The tables of this model's schema (columns and tags included); [] before bootstrap."""
        if self._om.get_by_name(DatabaseSchema, schema_fqn(catalog)) is None:
            return []
        tables = self._om.list_all_entities(Table, fields=["columns", "tags"],
                                            params={"databaseSchema": schema_fqn(catalog)})
        wanted = (catalog.service, catalog.model, catalog.schema)
        return [t for t in tables if tuple(split_fqn(model_str(t.fullyQualifiedName))[:3]) == wanted]

    def _table(self, catalog: Catalog, name: str) -> Table:
        table = self._om.get_by_name(Table, table_fqn(catalog, name), fields=["columns", "tags"])
        if table is None:
            raise OMRejected(f"table {table_fqn(catalog, name)} is not in OpenMetadata at {self.server}: "
                             "run `python -m synapse_core om bootstrap` first")
        return table

    def _patch_column(self, catalog: Catalog, layer: int, head: int, change) -> bool:
        """Read the head's column, let `change(column)` edit a copy, patch if anything differs.

        Returns whether the server changed. A stale read (HTTP 412 on If-Match) is retried; a failed
        patch raises (never the SDK's default of logging it and answering None).
        """
        where = f"{layer_table(layer)}.{head_column(head)}"
        for _ in range(_PATCH_TRIES):
            table = self._table(catalog, layer_table(layer))
            dest = table.model_copy(deep=True)
            column = next((c for c in dest.columns if model_str(c.name) == head_column(head)), None)
            if column is None:
                raise OMRejected(f"column {where} is not in OpenMetadata at {self.server}: run `om bootstrap`")
            if not change(column):
                return False
            try:  # by default a failed patch is logged and answered with None: ask for the exception
                result = self._om.patch(entity=Table, source=table, destination=dest, skip_on_failure=False,
                                        if_match=f'W/"{model_str(table.version)}"')
            except APIError as exc:
                if (exc.status_code or exc.code) == 412:
                    continue  # the table moved between our read and our write: read again
                raise
            except RuntimeError as exc:  # the SDK's wrapper: the HTTP or transport error is its cause
                if isinstance(exc.__cause__, (APIError, RestTransportError, requests.exceptions.RequestException)):
                    raise exc.__cause__ from exc
                raise OMRejected(f"OpenMetadata at {self.server} did not apply the change to {where}: {exc}") from exc
            if result is None:  # still possible (an empty patch built from a failed diff): never success
                raise OMRejected(f"OpenMetadata at {self.server} did not apply the change to {where}: the SDK's "
                                 "patch returned nothing (its log names the reason)")
            return True
        raise OMRejected(f"{where} kept changing on {self.server} while Synapse tried to update it; try again")

    def set_defective(self, catalog: Catalog, entry) -> bool:
        """Tag the head's column DEFECTIVE (unless it already is) with the evidence in its description."""
        def change(column: Column) -> bool:
            description = with_evidence(model_str(column.description) if column.description else "", entry)
            tagged = _has_defective(column)
            if tagged and description == (model_str(column.description) if column.description else ""):
                return False
            if not tagged:  # read first: the server appends a tag that is already there
                column.tags = [*(column.tags or []), _tag_label()]
            column.description = description
            return True

        with self._translate(f"quarantine head {entry.layer}.{entry.head}"):
            return self._patch_column(catalog, entry.layer, entry.head, change)

    def clear_defective(self, catalog: Catalog, layer: int, head: int) -> bool:
        """Remove the DEFECTIVE tag and the evidence block from the head's column."""
        def change(column: Column) -> bool:
            old = model_str(column.description) if column.description else ""
            if not _has_defective(column) and strip_evidence(old) == old:
                return False
            column.tags = [t for t in column.tags or [] if model_str(t.tagFQN) != TAG_FQN]
            column.description = strip_evidence(old) or None
            return True

        with self._translate(f"release head {layer}.{head}"):
            return self._patch_column(catalog, layer, head, change)

    def defects(self, catalog: Catalog) -> list[ServerDefect]:
        """Every Head column of this model tagged DEFECTIVE on the server.

        OMRejected ("bootstrap first") when the model's catalog is missing or has lost layer tables:
        a catalog that is not there is unknown, not clean."""
        out = []
        with self._translate(f"read the quarantined heads of {catalog.model}"):
            tables = self._tables(catalog)
            found = {parse_layer_table(model_str(t.name)) for t in tables}
            missing = [layer for layer in range(catalog.n_layers) if layer not in found]
            if missing:
                what = ("has no catalog of " + catalog.model if len(missing) == catalog.n_layers else
                        f"lacks the tables of layer(s) {', '.join(map(str, missing[:5]))} of {catalog.model}")
                raise OMRejected(f"OpenMetadata at {self.server} {what}, so which heads are quarantined there is "
                                 "unknown; nothing was released. Bootstrap first: `python -m synapse_core om "
                                 "bootstrap` (or the page's Bootstrap button)")
            for table in tables:
                layer = parse_layer_table(model_str(table.name))
                if layer is None or layer >= catalog.n_layers:
                    continue
                for column in table.columns:
                    head = parse_head_column(model_str(column.name))
                    if head is not None and head < catalog.n_heads and _has_defective(column):
                        desc = model_str(column.description) if column.description else ""
                        out.append(ServerDefect(layer, head, parse_evidence(desc)))
        return sorted(out, key=lambda d: (d.layer, d.head))

    # ---- change events -------------------------------------------------------------------------

    def subscribe(self, catalog: Catalog, endpoint: str, secret: str, name: str | None = None) -> str:
        """Create (or update) an event subscription posting this model's table updates to `endpoint`,
        signed with `secret` (X-OM-Signature). Returns the subscription's name."""
        from metadata.generated.schema.entity.events.authentication.webhookBearerAuth import BearerAuth
        from metadata.generated.schema.entity.events.webhook import Webhook
        from metadata.generated.schema.events import eventSubscription as es
        from metadata.generated.schema.events.api.createEventSubscription import CreateEventSubscription

        name = name or f"synapse-quarantine-{catalog.model}".replace(".", "-").replace("/", "-")[:128]
        fqns = [table_fqn(catalog, t.name) for t in catalog.tables if t.layer is not None]
        request = CreateEventSubscription(
            name=name, displayName=f"Synapse quarantine of {catalog.model}", alertType=es.AlertType.Notification,
            description="Tag changes on the model's Head columns, for Synapse's mask store.", resources=["table"],
            destinations=[es.Destination(category=es.SubscriptionCategory.External, type=es.SubscriptionType.Webhook,
                                         config=Webhook(endpoint=endpoint, authType=BearerAuth(type="bearer",
                                                                                              secretKey=secret)))],
            input=es.AlertFilteringInput(filters=[
                es.ArgumentsInput(name="filterByFqn", arguments=[es.Argument(name="fqnList", input=fqns)]),
                es.ArgumentsInput(name="filterByEventType",
                                  arguments=[es.Argument(name="eventTypeList", input=["entityUpdated"])]),
            ]),
        )
        with self._translate(f"create the event subscription {name} (servers refuse loopback and private "
                             "endpoints; `om poll` needs no inbound connection)"):
            self._om.create_or_update(request)
        return name

    def events(self, since_ms: int) -> list[dict]:
        """Change events on tables since `since_ms` (epoch ms), as plain dicts (fields vary by version)."""
        with self._translate("read the change events"):
            response = self._om.client.get("/events", data={"entityUpdated": "table", "timestamp": int(since_ms)})
        if not isinstance(response, dict) or not isinstance(response.get("data"), list):
            raise OMRejected(f"OpenMetadata at {self.server} answered the event feed with {type(response).__name__}")
        return [e for e in response["data"] if isinstance(e, dict)]
