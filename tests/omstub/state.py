"""What the stand-in OpenMetadata server holds, and how it changes like the real one.

Every request body is validated with the SDK's own generated pydantic models (extra fields
forbidden), and every stored entity is validated with the entity's model before it is kept.
Semantics copied from the server, including its traps:
- PUT (create_or_update) by a bot keeps a non-empty description and merges tags (never drops one);
  an identical PUT changes nothing (same version, no event);
- JSON-patch is applied as sent: adding a tag that is already there duplicates it;
- If-Match (W/"<version>") on a PATCH is checked: a stale one answers 412;
- each change emits a ChangeEvent with `incrementalChangeDescription` (this edit) and a
  `changeDescription` consolidated over the same user's edits within 10 minutes; values are JSON
  strings; events also carry a field the SDK's model does not know (`futureField`).
"""
from __future__ import annotations

import copy
import json
import threading
import time
import uuid

import jsonpatch
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
from metadata.generated.schema.entity.data.table import Table
from metadata.generated.schema.entity.services.databaseService import DatabaseService
from metadata.generated.schema.events.api.createEventSubscription import CreateEventSubscription
from metadata.generated.schema.events.eventSubscription import EventSubscription
from metadata.generated.schema.type.changeEvent import ChangeEvent
from metadata.generated.schema.type.entityLineage import LineageDetails
from metadata.utils.fqn import _build as build_fqn
from metadata.utils.fqn import quote_name

SESSION_MS = 10 * 60 * 1000  # the server consolidates one user's edits within this window


class HTTPFailure(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# collection -> (create model, entity model, entity type name, parent field, parent collection)
KINDS = {
    "services/databaseServices": (CreateDatabaseServiceRequest, DatabaseService, "databaseService", None, None),
    "databases": (CreateDatabaseRequest, Database, "database", "service", "services/databaseServices"),
    "databaseSchemas": (CreateDatabaseSchemaRequest, DatabaseSchema, "databaseSchema", "database", "databases"),
    "tables": (CreateTableRequest, Table, "table", "databaseSchema", "databaseSchemas"),
    "classifications": (CreateClassificationRequest, Classification, "classification", None, None),
    "tags": (CreateTagRequest, Tag, "tag", "classification", "classifications"),
    "events/subscriptions": (CreateEventSubscription, EventSubscription, "eventSubscription", None, None),
}


def _now() -> int:
    return int(time.time() * 1000)


def _tag_fqns(tags) -> list[str]:
    return [t.get("tagFQN") for t in tags or []]


class StubState:
    """Entities by collection and FQN, lineage edges, and the change-event feed. Thread-safe."""

    def __init__(self, bot: str = "synapse-bot"):
        self.lock = threading.RLock()
        self.entities: dict[str, dict[str, dict]] = {kind: {} for kind in KINDS}
        self.by_id: dict[str, tuple[str, str]] = {}
        self.lineage: dict[tuple[str, str], dict] = {}
        self.events: list[dict] = []
        self.sessions: dict[str, tuple[str, int, dict]] = {}  # entity id -> (user, last edit ms, base)
        self.bot = bot
        self.on_event = None  # callback(event dict), e.g. webhook delivery

    # ---- helpers -------------------------------------------------------------------------------

    def _ref(self, kind: str, fqn: str) -> dict:
        entity = self.entities[kind].get(fqn)
        if entity is None:
            raise HTTPFailure(404, f"{KINDS[kind][2]} instance for {fqn} not found")
        return {"id": entity["id"], "type": KINDS[kind][2], "name": entity["name"],
                "fullyQualifiedName": entity["fullyQualifiedName"]}

    def snapshot(self):
        with self.lock:
            return copy.deepcopy((self.entities, self.lineage))

    def get(self, kind: str, fqn: str) -> dict:
        with self.lock:
            entity = self.entities[kind].get(fqn)
            if entity is None:
                raise HTTPFailure(404, f"{KINDS[kind][2]} instance for {fqn} not found")
            return copy.deepcopy(entity)

    def get_by_id(self, kind: str, entity_id: str) -> dict:
        with self.lock:
            found = self.by_id.get(entity_id)
            if not found or found[0] != kind:
                raise HTTPFailure(404, f"{KINDS[kind][2]} instance for {entity_id} not found")
            return self.get(kind, found[1])

    def list(self, kind: str, params: dict) -> list[dict]:
        with self.lock:
            items = list(self.entities[kind].values())
            if kind == "tables" and params.get("databaseSchema"):
                schema = params["databaseSchema"]
                if schema not in self.entities["databaseSchemas"]:
                    raise HTTPFailure(404, f"databaseSchema instance for {schema} not found")
                items = [t for t in items if t["databaseSchema"]["fullyQualifiedName"] == schema]
            return copy.deepcopy(items)

    # ---- PUT create_or_update ------------------------------------------------------------------

    def _desired(self, kind: str, req) -> tuple[str, dict]:
        body = req.model_dump(mode="json", exclude_none=True, by_alias=True)
        _, _, type_name, parent_field, parent_kind = KINDS[kind]
        name = body["name"]
        if parent_field:
            parent = self._ref(parent_kind, body.pop(parent_field))
            fqn = f'{parent["fullyQualifiedName"]}.{quote_name(name)}'
            body[parent_field] = parent
            parent_entity = self.entities[parent_kind][parent["fullyQualifiedName"]]
            for inherited in ("service", "database"):
                if inherited in parent_entity:
                    body[inherited] = parent_entity[inherited]
            if "serviceType" in parent_entity:
                body["serviceType"] = parent_entity["serviceType"]
        else:
            fqn = build_fqn(name)
        if kind == "tables":
            for column in body.get("columns", []):
                column["fullyQualifiedName"] = f"{fqn}.{quote_name(column['name'])}"
                column.setdefault("tags", [])
            body.setdefault("tableType", "Regular")
        if kind == "events/subscriptions":
            body["filteringRules"] = {"resources": body.pop("resources", ["all"])}
        body["fullyQualifiedName"] = fqn
        body.setdefault("description", "")
        return fqn, body

    @staticmethod
    def _merge(old: dict, new: dict) -> dict:
        """A bot's PUT: non-empty descriptions stay, tags are merged, the rest is replaced."""
        out = copy.deepcopy(old)
        for key, value in new.items():
            if key == "description" and old.get("description"):
                continue
            if key == "tags":
                have = _tag_fqns(old.get("tags"))
                out["tags"] = old.get("tags", []) + [t for t in value if t["tagFQN"] not in have]
            elif key == "columns":
                old_cols = {c["name"]: c for c in old.get("columns", [])}
                out["columns"] = [StubState._merge(old_cols[c["name"]], c) if c["name"] in old_cols else c
                                  for c in value]
            else:
                out[key] = value
        return out

    def put(self, kind: str, payload: dict, user: str) -> dict:
        create_model, entity_model = KINDS[kind][0], KINDS[kind][1]
        req = create_model.model_validate(payload)  # ValidationError -> 400 in the server
        with self.lock:
            fqn, desired = self._desired(kind, req)
            old = self.entities[kind].get(fqn)
            if old is None:
                entity = {**desired, "id": str(uuid.uuid4()), "version": 0.1, "updatedAt": _now(), "updatedBy": user,
                          "deleted": False, "href": f"http://stub/api/v1/{kind}/{fqn}"}
                entity = {k: v for k, v in entity.items() if k in entity_model.model_fields}
                self._store(kind, entity_model, entity)
                self._emit("entityCreated", KINDS[kind][2], entity, user, None, None)
                return copy.deepcopy(entity)
            merged = self._merge(old, desired)
            if merged == old:
                return copy.deepcopy(old)
            return self._update(kind, old, merged, user)

    def _store(self, kind: str, entity_model, entity: dict) -> None:
        entity_model.model_validate(entity)  # the server never keeps an invalid entity
        self.entities[kind][entity["fullyQualifiedName"]] = entity
        self.by_id[entity["id"]] = (kind, entity["fullyQualifiedName"])

    def _update(self, kind: str, old: dict, new: dict, user: str) -> dict:
        new = {**new, "version": round(old["version"] + 0.1, 1), "updatedAt": _now(), "updatedBy": user}
        self._store(kind, KINDS[kind][1], new)
        session = self.sessions.get(old["id"])
        base = session[2] if session and session[0] == user and _now() - session[1] < SESSION_MS else old
        self.sessions[old["id"]] = (user, _now(), base)
        self._emit("entityUpdated", KINDS[kind][2], new, user, _changes(old, new), _changes(base, new, base["version"]))
        return copy.deepcopy(new)

    # ---- PATCH ---------------------------------------------------------------------------------

    def patch(self, kind: str, entity_id: str, ops: list, user: str, if_match: str | None) -> dict:
        patch = jsonpatch.JsonPatch(ops)
        with self.lock:
            old = self.get_by_id(kind, entity_id)
            if if_match and if_match != f'W/"{old["version"]}"':
                raise HTTPFailure(412, f"entity changed: If-Match {if_match} but version is {old['version']}")
            try:
                new = patch.apply(copy.deepcopy(old))
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise HTTPFailure(400, f"cannot apply the patch: {exc}") from exc
            KINDS[kind][1].model_validate(new)
            if new == old:
                return old
            return self._update(kind, old, new, user)

    # ---- lineage -------------------------------------------------------------------------------

    def put_lineage(self, payload: dict) -> bool:
        req = AddLineageRequest.model_validate(payload)
        with self.lock:
            edge = req.edge
            key = (str(edge.fromEntity.id.root), str(edge.toEntity.id.root))
            for entity_id in key:
                if entity_id not in self.by_id:
                    raise HTTPFailure(404, f"entity {entity_id} not found")
            details = edge.lineageDetails.model_dump(mode="json", exclude_none=True) if edge.lineageDetails else {}
            details.setdefault("columnsLineage", [])  # the server's JSON always carries the list
            if self.lineage.get(key) == details:
                return False
            self.lineage[key] = details
            return True

    def patch_lineage(self, key: tuple[str, str], ops: list) -> None:
        with self.lock:
            if key not in self.lineage:
                raise HTTPFailure(404, f"lineage edge {key} not found")
            try:
                new = jsonpatch.JsonPatch(ops).apply(copy.deepcopy(self.lineage[key]))
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise HTTPFailure(400, f"cannot apply the patch: {exc}") from exc
            LineageDetails.model_validate(new)
            self.lineage[key] = new

    # ---- events --------------------------------------------------------------------------------

    def _emit(self, event_type: str, entity_type: str, entity: dict, user: str, incremental, consolidated):
        event = {"id": str(uuid.uuid4()), "eventType": event_type, "entityType": entity_type,
                 "entityId": entity["id"], "entityFullyQualifiedName": entity["fullyQualifiedName"],
                 "previousVersion": round(entity["version"] - 0.1, 1) if incremental else entity["version"],
                 "currentVersion": entity["version"], "userName": user, "timestamp": _now()}
        if incremental is not None:
            event["incrementalChangeDescription"] = incremental
            event["changeDescription"] = consolidated
        ChangeEvent.model_validate(event)
        event["futureField"] = {"added": "by a later server version"}  # the SDK's model forbids it
        self.events.append(event)
        if self.on_event:
            self.on_event(event)

    def events_since(self, timestamp: int, entity_types: set[str]) -> list[dict]:
        with self.lock:
            return [copy.deepcopy(e) for e in self.events
                    if e["timestamp"] >= timestamp and ("*" in entity_types or e["entityType"] in entity_types)]


def _changes(old: dict, new: dict, previous_version=None) -> dict:
    """A ChangeDescription between two versions of an entity: column tags and descriptions."""
    added, updated, deleted = [], [], []
    old_cols = {c["name"]: c for c in old.get("columns", [])}
    for col in new.get("columns", []):
        before = old_cols.get(col["name"], {})
        name = build_fqn("columns", col["name"], "tags")
        gone = [t for t in before.get("tags", []) if t["tagFQN"] not in _tag_fqns(col.get("tags"))]
        came = [t for t in col.get("tags", []) if t["tagFQN"] not in _tag_fqns(before.get("tags"))]
        if came:
            added.append({"name": name, "newValue": json.dumps(came)})
        if gone:
            deleted.append({"name": name, "oldValue": json.dumps(gone)})
        if before.get("description") != col.get("description"):
            updated.append({"name": build_fqn("columns", col["name"], "description"),
                            "oldValue": before.get("description"), "newValue": col.get("description")})
    for key in ("description", "displayName"):
        if old.get(key) != new.get(key):
            updated.append({"name": key, "oldValue": old.get(key), "newValue": new.get(key)})
    return {"fieldsAdded": added, "fieldsUpdated": updated, "fieldsDeleted": deleted,
            "previousVersion": previous_version if previous_version is not None else old["version"]}
