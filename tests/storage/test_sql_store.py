"""The SQL completion store on its own, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa

from server.storage.records import ListQuery, StoredCompletion
from server.storage.sql_store import SCHEMA_VERSION, SqlCompletionStore


def record(i: int, project: str = "", model: str = "m", **metadata: str) -> StoredCompletion:
    return StoredCompletion(
        id=f"chatcmpl-{i:03d}",
        created=1_700_000_000 + i,
        model=model,
        completion={"id": f"chatcmpl-{i:03d}", "object": "chat.completion", "choices": []},
        messages=[{"role": "user", "content": f"q{i}"}],
        params={"temperature": 0.5},
        metadata=metadata,
        project=project,
    )


def ids(page) -> list[str]:
    return [r.id for r in page.items]


def test_pages_in_both_orders(store: SqlCompletionStore) -> None:
    for i in range(5):
        store.save(record(i))
    first = store.list(ListQuery(limit=2))
    assert ids(first) == ["chatcmpl-000", "chatcmpl-001"] and first.has_more
    second = store.list(ListQuery(limit=2, after="chatcmpl-001"))
    third = store.list(ListQuery(limit=2, after="chatcmpl-003"))
    assert ids(second) == ["chatcmpl-002", "chatcmpl-003"] and second.has_more
    assert ids(third) == ["chatcmpl-004"] and not third.has_more
    down = store.list(ListQuery(limit=3, order="desc"))
    assert ids(down) == ["chatcmpl-004", "chatcmpl-003", "chatcmpl-002"] and down.has_more
    rest = store.list(ListQuery(limit=3, order="desc", after="chatcmpl-002"))
    assert ids(rest) == ["chatcmpl-001", "chatcmpl-000"] and not rest.has_more


def test_filters_by_model_and_metadata(store: SqlCompletionStore) -> None:
    store.save(record(1, team="a", env="prod"))
    store.save(record(2, team="a", env="dev"))
    store.save(record(3, model="other", team="b"))
    assert ids(store.list(ListQuery(metadata=(("team", "a"),)))) == ["chatcmpl-001", "chatcmpl-002"]
    assert ids(store.list(ListQuery(metadata=(("team", "a"), ("env", "dev"))))) == ["chatcmpl-002"]
    assert ids(store.list(ListQuery(model="other"))) == ["chatcmpl-003"]
    assert ids(store.list(ListQuery(metadata=(("team", "zzz"),)))) == []


def test_update_replaces_metadata_and_delete_removes(store: SqlCompletionStore) -> None:
    store.save(record(1, team="a"))
    updated = store.update_metadata("chatcmpl-001", "", {"team": "b", "x": "1"})
    assert updated is not None and updated.metadata == {"team": "b", "x": "1"}
    assert ids(store.list(ListQuery(metadata=(("team", "a"),)))) == []
    assert ids(store.list(ListQuery(metadata=(("team", "b"),)))) == ["chatcmpl-001"]
    assert store.update_metadata("chatcmpl-404", "", {}) is None
    assert store.delete("chatcmpl-001", "") and not store.delete("chatcmpl-001", "")
    assert store.get("chatcmpl-001", "") is None


def test_projects_do_not_see_each_other(store: SqlCompletionStore) -> None:
    store.save(record(1, project="p1"))
    assert store.get("chatcmpl-001", "p2") is None
    assert ids(store.list(ListQuery(project="p2"))) == []
    assert not store.delete("chatcmpl-001", "p2") and store.update_metadata("chatcmpl-001", "p2", {}) is None
    assert store.get("chatcmpl-001", "p1") is not None


def test_reopening_keeps_everything_and_the_schema_version(store_url: str) -> None:
    first = SqlCompletionStore(store_url)
    first.save(record(7, team="a"))
    first.close()
    again = SqlCompletionStore(store_url)
    got = again.get("chatcmpl-007", "")
    assert got is not None and got.metadata == {"team": "a"} and got.messages[0]["content"] == "q7"
    with again.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM schema_version")).scalar() == SCHEMA_VERSION
    again.close()


WRITER = """
import sys, time
from server.storage.sql_store import SqlCompletionStore
from tests.storage.test_sql_store import record
store = SqlCompletionStore(sys.argv[1])
i = 0
while True:
    store.save(record(i, team=str(i % 3), env="x"))
    i += 1
    if i == 20:
        print("writing", flush=True)
"""


def test_kill_9_during_writes_leaves_the_database_consistent(store_url: str, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, store_url], cwd=repo, stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
    time.sleep(0.5)
    writer.kill()  # SIGKILL, mid-transaction or between two
    writer.wait()
    store = SqlCompletionStore(store_url)
    page = store.list(ListQuery(limit=100, order="desc"))
    assert len(page.items) >= 20
    for r in page.items:  # every completion that is there is there whole, metadata included
        assert r.metadata == {"team": str(int(r.id.rsplit("-", 1)[1]) % 3), "env": "x"}
        assert store.list(ListQuery(metadata=(("team", r.metadata["team"]),), limit=100)).items
    with store.engine.connect() as conn:
        pairs = conn.execute(sa.text("SELECT COUNT(*) FROM completion_metadata")).scalar()
        rows = conn.execute(sa.text("SELECT COUNT(*) FROM completions")).scalar()
        if store_url.startswith("sqlite"):
            assert conn.execute(sa.text("PRAGMA integrity_check")).scalar() == "ok"
    assert pairs == 2 * rows
    store.close()


def test_replicas_opening_an_empty_postgresql_database_together_all_start(store_url: str) -> None:
    """Servers behind one load balancer start at once on a fresh database: one creates the schema."""
    if not store_url.startswith("postgresql"):
        return
    import threading

    admin = sa.create_engine(
        store_url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    fresh = f"race_{int(time.time() * 1000)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {fresh}"))
    url = store_url.rsplit("/", 1)[0] + f"/{fresh}"
    opened: list[SqlCompletionStore] = []
    failures: list[BaseException] = []
    start = threading.Barrier(4)

    def open_store() -> None:
        start.wait()
        try:
            opened.append(SqlCompletionStore(url))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == [] and len(opened) == 4
        opened[0].save(record(1))
        assert opened[3].get(record(1).id, "") is not None
    finally:
        for store in opened:
            store.close()
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {fresh} WITH (FORCE)"))
        admin.dispose()
