"""CompletionStore on SQLite (the default: a file, WAL mode) or PostgreSQL (a URL), one code path.

SQLAlchemy Core writes the SQL for both dialects and pools the connections; the schema carries a
version number so that a later release can migrate it. Metadata pairs live in their own indexed
table, so `metadata[key]=value` filters are plain joins on either database.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from server.storage.records import ListQuery, Page, StoredCompletion

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_meta = sa.MetaData()
_SCHEMA_LOCK = 0x6F70656E77  # the advisory lock replicas take while creating the schema
_version = sa.Table("schema_version", _meta, sa.Column("version", sa.Integer, nullable=False))
_completions = sa.Table(
    "completions",
    _meta,
    sa.Column(
        "seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    sa.Column("id", sa.String(128), nullable=False, unique=True),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("created", sa.BigInteger, nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("completion", sa.Text, nullable=False),
    sa.Column("messages", sa.Text, nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Index("completions_project_seq", "project", "seq"),
)
_metadata_pairs = sa.Table(
    "completion_metadata",
    _meta,
    sa.Column("completion_id", sa.String(128), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(512), nullable=False),
    sa.Index("completion_metadata_key_value", "key", "value"),
)


class SqlCompletionStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _engine(url)
        self._migrate()

    def _migrate(self) -> None:
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Replicas starting together on an empty database: one creates the schema, the
                # others wait for it (CREATE TABLE IF NOT EXISTS alone races on PostgreSQL's catalog).
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            _meta.create_all(conn)
            found = conn.execute(sa.select(_version.c.version)).scalar()
            if found is None:
                conn.execute(_version.insert().values(version=SCHEMA_VERSION))
            elif found > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the completion store at {self.url} has schema version {found}; this server knows "
                    f"up to {SCHEMA_VERSION}: upgrade the server"
                )

    def save(self, record: StoredCompletion) -> None:
        with self.engine.begin() as conn:  # one transaction: a crash leaves all of it or none
            conn.execute(
                _completions.insert().values(
                    id=record.id,
                    project=record.project,
                    created=record.created,
                    model=record.model,
                    completion=json.dumps(record.completion),
                    messages=json.dumps(record.messages),
                    params=json.dumps(record.params),
                    metadata=json.dumps(record.metadata),
                )
            )
            _insert_pairs(conn, record.id, record.metadata)

    def get(self, completion_id: str, project: str) -> StoredCompletion | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(_completions).where(
                    _completions.c.id == completion_id, _completions.c.project == project
                )
            ).first()
        return _record(row) if row is not None else None

    def list(self, query: ListQuery) -> Page:
        c = _completions.c
        stmt = sa.select(_completions).where(c.project == query.project)
        if query.model is not None:
            stmt = stmt.where(c.model == query.model)
        for key, value in query.metadata:
            pairs = _metadata_pairs.c
            stmt = stmt.where(
                sa.exists().where(pairs.completion_id == c.id, pairs.key == key, pairs.value == value)
            )
        if query.after is not None:
            cursor = sa.select(c.seq).where(c.id == query.after, c.project == query.project).scalar_subquery()
            stmt = stmt.where(c.seq > cursor if query.order == "asc" else c.seq < cursor)
        stmt = stmt.order_by(c.seq.asc() if query.order == "asc" else c.seq.desc()).limit(query.limit + 1)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return Page([_record(r) for r in rows[: query.limit]], has_more=len(rows) > query.limit)

    def update_metadata(
        self, completion_id: str, project: str, metadata: dict[str, str]
    ) -> StoredCompletion | None:
        c = _completions.c
        with self.engine.begin() as conn:
            updated = conn.execute(
                _completions.update()
                .where(c.id == completion_id, c.project == project)
                .values(metadata=json.dumps(metadata))
            ).rowcount
            if not updated:
                return None
            conn.execute(_metadata_pairs.delete().where(_metadata_pairs.c.completion_id == completion_id))
            _insert_pairs(conn, completion_id, metadata)
        return self.get(completion_id, project)

    def delete(self, completion_id: str, project: str) -> bool:
        c = _completions.c
        with self.engine.begin() as conn:
            deleted = conn.execute(
                _completions.delete().where(c.id == completion_id, c.project == project)
            ).rowcount
            if deleted:
                conn.execute(_metadata_pairs.delete().where(_metadata_pairs.c.completion_id == completion_id))
        return bool(deleted)

    def close(self) -> None:
        self.engine.dispose()


def _engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    path = url.split("///", 1)[1] if "///" in url else ""
    if path and path != ":memory:":
        file = Path(path).expanduser()
        file.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{file}"
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute("PRAGMA synchronous=FULL")  # a commit survives a crash (kill -9, power loss)
        cursor.close()

    return engine


def _insert_pairs(conn: Connection, completion_id: str, metadata: dict[str, str]) -> None:
    if metadata:
        conn.execute(
            _metadata_pairs.insert(),
            [{"completion_id": completion_id, "key": k, "value": v} for k, v in metadata.items()],
        )


def _record(row: Any) -> StoredCompletion:
    return StoredCompletion(
        id=row.id,
        created=row.created,
        model=row.model,
        completion=json.loads(row.completion),
        messages=json.loads(row.messages),
        params=json.loads(row.params),
        metadata=json.loads(row.metadata),
        project=row.project,
    )
