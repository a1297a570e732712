"""Fully qualified OpenMetadata names of the catalog's entities, built and split with the SDK's own
`metadata.utils.fqn` (names with a dot are quoted). Importing it imports the SDK."""
from __future__ import annotations

from metadata.generated.schema.entity.data.database import Database
from metadata.generated.schema.entity.data.databaseSchema import DatabaseSchema
from metadata.generated.schema.entity.data.table import Column, Table
from metadata.utils import fqn

from .catalog import Catalog


def database_fqn(catalog: Catalog) -> str:
    return fqn.build(None, Database, service_name=catalog.service, database_name=catalog.model)


def schema_fqn(catalog: Catalog) -> str:
    return fqn.build(None, DatabaseSchema, service_name=catalog.service, database_name=catalog.model,
                     schema_name=catalog.schema)


def table_fqn(catalog: Catalog, table: str) -> str:
    return fqn.build(None, Table, service_name=catalog.service, database_name=catalog.model,
                     schema_name=catalog.schema, table_name=table, skip_es_search=True)


def column_fqn(catalog: Catalog, table: str, column: str) -> str:
    return fqn.build(None, Column, service_name=catalog.service, database_name=catalog.model,
                     schema_name=catalog.schema, table_name=table, column_name=column)


def split_fqn(name: str) -> list[str]:
    """The unquoted parts of a fully qualified name: 'S."a.b".T' -> ['S', 'a.b', 'T']."""
    return [fqn.unquote_name(part) for part in fqn.split(name)]
