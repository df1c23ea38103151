"""The SQL registry on SQLite (a temp file) and, when ``$MZ_TEST_POSTGRES_URL`` is set,
on PostgreSQL (each test in its own schema, dropped afterwards)."""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from shared.registry import CheckpointRecord, CheckpointRow, Registry, ValidationRecord

POSTGRES_URL = os.environ.get("MZ_TEST_POSTGRES_URL")
BACKENDS = ["sqlite"] + ([pytest.param("postgresql", marks=pytest.mark.postgres)] if POSTGRES_URL else [])
SHA = {i: f"{i:064x}" for i in range(100)}


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path):
    """A database URL nobody else uses."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/nested/folder/registry.db"
        return
    schema = f"mz_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield (
            make_url(POSTGRES_URL)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def registry(url):
    reg = Registry(url)
    yield reg
    reg.close()


def _aware_utc(value: datetime) -> bool:
    return value.tzinfo is not None and value.utcoffset() == timedelta(0)


def test_runs_are_idempotent_and_keep_their_symbol(registry):
    registry.ensure_run("run-a", "eurusd", {"lr": 2e-4, "bad": float("nan"), "inf": math.inf})
    registry.ensure_run("run-a", "EURUSD", {"lr": 1.0})  # again: no error, first config kept
    run = registry.get_run("run-a")
    assert run.symbol == "EURUSD"
    assert run.config == {"lr": 2e-4, "bad": None, "inf": "inf"}  # strict JSON
    assert _aware_utc(run.created_at)
    assert registry.get_run("nope") is None
    with pytest.raises(ValueError, match="recorded for symbol EURUSD, not GBPJPY"):
        registry.ensure_run("run-a", "GBPJPY", {})
    with pytest.raises(ValueError, match="non-empty"):
        registry.ensure_run("", "EURUSD", {})


def test_add_checkpoint_is_idempotent_and_checks_integrity(registry):
    with pytest.raises(ValueError, match="unknown run 'ghost'"):
        registry.add_checkpoint("ghost", 1, "/x.pt", SHA[1])
    registry.ensure_run("r", "EURUSD", {})
    first = registry.add_checkpoint("r", 100, "/ck/100.pt", SHA[1])
    assert registry.add_checkpoint("r", 100, "/ck/100.pt", SHA[1]) == first
    with pytest.raises(ValueError, match="already recorded"):
        registry.add_checkpoint("r", 100, "/ck/100.pt", SHA[2])
    second = registry.add_checkpoint("r", 200, "/ck/200.pt", SHA[2])
    assert second > first
    assert registry.count_checkpoints() == 2


def test_checkpoints_get_list_latest_count(registry):
    assert registry.latest_checkpoint() is None and registry.list_checkpoints() == []
    assert registry.count_checkpoints() == 0 and registry.get_checkpoint(1) is None
    registry.ensure_run("a", "EURUSD", {})
    registry.ensure_run("b", "GBPJPY", {})
    ids = []
    for step in range(1, 6):
        ids.append(registry.add_checkpoint("a", step * 10, f"/a/{step}.pt", SHA[step]))
        ids.append(registry.add_checkpoint("b", step * 10, f"/b/{step}.pt", SHA[step + 10]))
    got = registry.get_checkpoint(ids[0])
    assert isinstance(got, CheckpointRecord)
    assert (got.run_id, got.step, got.path, got.sha256, got.is_best, got.best_path) == (
        "a",
        10,
        "/a/1.pt",
        SHA[1],
        False,
        None,
    )
    assert _aware_utc(got.created_at) and abs(got.created_at - datetime.now(UTC)) < timedelta(minutes=5)
    assert got.latest_validation is None
    assert registry.get_checkpoint(10_000) is None

    every = registry.list_checkpoints()
    assert [c.id for c in every] == sorted(ids, reverse=True)  # newest first
    assert [c.step for c in registry.list_checkpoints("a")] == [50, 40, 30, 20, 10]
    assert [c.step for c in registry.list_checkpoints("a", limit=2, offset=1)] == [40, 30]
    assert registry.list_checkpoints("a", offset=10) == []
    assert registry.list_checkpoints("zzz") == []
    assert registry.latest_checkpoint().id == ids[-1]
    assert registry.latest_checkpoint("a").step == 50 and registry.latest_checkpoint("a").run_id == "a"
    assert registry.latest_checkpoint("zzz") is None
    assert (registry.count_checkpoints(), registry.count_checkpoints("a"), registry.count_checkpoints("zzz")) == (
        10,
        5,
        0,
    )
    with pytest.raises(ValueError, match="limit"):
        registry.list_checkpoints(limit=-1)


def test_validations_and_latest_validation_of_checkpoints(registry):
    registry.ensure_run("r", "EURUSD", {})
    c1 = registry.add_checkpoint("r", 1, "/1.pt", SHA[1])
    c2 = registry.add_checkpoint("r", 2, "/2.pt", SHA[2])
    assert registry.latest_validation() is None and registry.list_validations() == []
    metrics = {"trades": 3, "profit_factor": math.inf, "sharpe": float("nan"), "sqn": 1.5}
    v1 = registry.add_validation(c1, "ok", score=2.5, metrics=metrics, error=None, split="validation", duration_s=1.25)
    v2 = registry.add_validation(
        c1, "failed", score=None, metrics=None, error="checkpoint /1.pt: boom", split="validation", duration_s=0.5
    )
    v3 = registry.add_validation(
        c2, "ok", score=-math.inf, metrics={"trades": 0}, error=None, split="validation", duration_s=2.0
    )
    assert v1 < v2 < v3

    every = registry.list_validations()
    assert [v.id for v in every] == [v3, v2, v1]
    first = every[-1]
    assert isinstance(first, ValidationRecord)
    assert (first.checkpoint_id, first.status, first.score, first.error, first.split, first.duration_s) == (
        c1,
        "ok",
        2.5,
        None,
        "validation",
        1.25,
    )
    assert first.metrics == {"trades": 3, "profit_factor": "inf", "sharpe": None, "sqn": 1.5}
    assert _aware_utc(first.created_at)
    assert every[0].score == -math.inf  # a checkpoint that never trades
    assert [v.id for v in registry.list_validations(checkpoint_id=c1)] == [v2, v1]
    assert [v.id for v in registry.list_validations(limit=1, offset=1)] == [v2]
    assert registry.list_validations(checkpoint_id=999) == []
    assert registry.latest_validation().id == v3
    assert registry.latest_validation(c1).id == v2 and registry.latest_validation(c1).error == "checkpoint /1.pt: boom"
    assert registry.latest_validation(999) is None

    # Each checkpoint record carries its newest validation, whichever way it was read.
    assert registry.get_checkpoint(c1).latest_validation.id == v2
    assert {c.id: c.latest_validation.id for c in registry.list_checkpoints()} == {c1: v2, c2: v3}
    assert registry.latest_checkpoint().latest_validation.id == v3
    registry.set_best(c1, "/best/best.pt")
    assert registry.best_checkpoint().latest_validation.id == v2

    with pytest.raises(ValueError, match="unknown checkpoint id 999"):
        registry.add_validation(999, "ok", score=1.0, metrics={}, error=None, split="validation", duration_s=1)
    with pytest.raises(ValueError, match="status must be one of"):
        registry.add_validation(c1, "great", score=1.0, metrics={}, error=None, split="validation", duration_s=1)


def test_best_flag_is_unique(registry, url):
    registry.ensure_run("r", "EURUSD", {})
    ids = [registry.add_checkpoint("r", s, f"/{s}.pt", SHA[s]) for s in range(1, 4)]
    assert registry.best_checkpoint() is None
    registry.set_best(ids[0], "/best/best.pt")
    assert registry.best_checkpoint().id == ids[0] and registry.best_checkpoint().best_path == "/best/best.pt"
    registry.set_best(ids[2], "/best/best.pt")
    best = registry.best_checkpoint()
    assert (best.id, best.is_best, best.best_path) == (ids[2], True, "/best/best.pt")
    assert [c.id for c in registry.list_checkpoints() if c.is_best] == [ids[2]]
    registry.set_best(ids[2], "/best/again.pt")  # the same one again: still exactly one
    assert [c.best_path for c in registry.list_checkpoints() if c.is_best] == ["/best/again.pt"]
    with pytest.raises(ValueError, match="unknown checkpoint id 777"):
        registry.set_best(777, "/x")
    assert registry.best_checkpoint().id == ids[2]  # a failed set_best changes nothing
    # The database itself refuses a second flag, whatever a writer does.
    with pytest.raises(IntegrityError), registry.engine.begin() as conn:
        conn.execute(update(CheckpointRow).where(CheckpointRow.id == ids[0]).values(is_best=True))


def test_two_registry_objects_share_the_database(registry, url):
    """Two Registry objects (two engines, as in two processes) write concurrently."""
    other = Registry(url)
    try:
        registry.ensure_run("r", "EURUSD", {})
        other.ensure_run("r", "EURUSD", {})  # idempotent across objects
        errors: list[BaseException] = []
        ids: dict[int, int] = {}
        barrier = threading.Barrier(2)

        def writer(reg: Registry, offset: int) -> None:
            try:
                barrier.wait()
                for step in range(12):
                    # Both writers record step 0..11: each (run, step) must get one id.
                    cid = reg.add_checkpoint("r", step, f"/{step}.pt", SHA[step])
                    assert ids.setdefault(step, cid) == cid
                    reg.add_validation(
                        cid,
                        "ok",
                        score=float(offset + step),
                        metrics={"k": step},
                        error=None,
                        split="validation",
                        duration_s=0.1,
                    )
                    reg.set_best(cid, f"/best-{offset}.pt")
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(reg, k * 100)) for k, reg in enumerate((registry, other))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert registry.count_checkpoints() == other.count_checkpoints() == 12
        assert len(other.list_validations(limit=1000)) == 24
        flagged = [c for c in other.list_checkpoints(limit=100) if c.is_best]
        assert len(flagged) == 1 and flagged[0].id == registry.best_checkpoint().id
        assert registry.ping() and other.ping()
    finally:
        other.close()


def test_many_processes_open_a_fresh_database_at_once(url):
    """Trainer, validator and API start together on an empty database: one creates the
    tables, the others wait and find them."""
    barrier, opened, errors = threading.Barrier(4), [], []

    def open_it() -> None:
        try:
            barrier.wait()
            opened.append(Registry(url))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        opened[0].ensure_run("r", "EURUSD", {})
        assert all(reg.get_run("r") is not None for reg in opened)
    finally:
        for reg in opened:
            reg.close()


def test_sqlite_file_setup(tmp_path):
    path = tmp_path / "a" / "b" / "reg.db"
    reg = Registry(f"sqlite:///{path}")
    try:
        assert path.is_file()  # parent folders created
        with reg.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 10_000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert reg.ping()
    finally:
        reg.close()
    memory = Registry("sqlite://")  # in-memory works too (one shared connection)
    memory.ensure_run("r", "EURUSD", {})
    assert memory.get_run("r") is not None and memory.ping()
    memory.close()


def test_ping_false_when_database_unreachable():
    reg = Registry("sqlite://")
    reg.close()
    dead = Registry.__new__(Registry)
    dead.engine = create_engine("postgresql+psycopg2://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1})
    assert dead.ping() is False
    dead.engine.dispose()


def test_equity_curve_of_the_newest_ok_validation_that_stored_one(registry):
    registry.ensure_run("r", "EURUSD", {})
    c1 = registry.add_checkpoint("r", 1, "/1.pt", SHA[1])
    assert registry.equity_curve(c1) is None
    kw = {"metrics": {}, "error": None, "split": "validation", "duration_s": 1.0}
    registry.add_validation(c1, "ok", score=1.0, **kw)  # an older validator stored no curve
    assert registry.equity_curve(c1) is None
    curve = {"bars": 3, "pips": [0.0, 1.5, float("nan")]}
    v2 = registry.add_validation(c1, "ok", score=1.0, equity=curve, **kw)
    registry.add_validation(c1, "failed", score=None, **{**kw, "metrics": None, "error": "boom"})
    record, stored = registry.equity_curve(c1)
    assert record.id == v2 and record.status == "ok"
    assert stored == {"bars": 3, "pips": [0.0, 1.5, None]}  # strict JSON, as the metrics
    assert registry.equity_curve(999) is None


def test_registry_adds_equity_to_an_older_validations_table(tmp_path):
    db = tmp_path / "old.db"
    Registry(f"sqlite:///{db}").close()
    with sqlite3.connect(db) as conn:  # the table as created before the column existed
        conn.execute("ALTER TABLE validations DROP COLUMN equity")
    registry = Registry(f"sqlite:///{db}")
    registry.ensure_run("r", "EURUSD", {})
    c1 = registry.add_checkpoint("r", 1, "/1.pt", SHA[1])
    kw = {"metrics": {}, "error": None, "split": "validation", "duration_s": 1.0}
    registry.add_validation(c1, "ok", score=1.0, equity={"bars": 1, "pips": [0.0]}, **kw)
    assert registry.equity_curve(c1)[1] == {"bars": 1, "pips": [0.0]}
    registry.close()
