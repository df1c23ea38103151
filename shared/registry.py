"""The SQL registry of training runs, checkpoints and their validations (ARCHITECTURE §7).

SQLAlchemy 2 over a SQLite file by default (``pipeline.database_url =
sqlite:///var/registry.db``), PostgreSQL by URL (``postgresql+psycopg2://...``).

Tables::

    runs          id (str PK), symbol, config (JSON), created_at
    checkpoints   id (int PK), run_id -> runs, step, path, sha256, created_at,
                  is_best, best_path, pruned_at           unique (run_id, step)
    validations   id (int PK), checkpoint_id -> checkpoints, status 'ok'|'failed',
                  score, metrics (JSON), error, split, duration_s, created_at,
                  equity (JSON, deferred)

Decisions:

* Timestamps are stored and returned timezone-aware, in UTC (SQLite keeps no zone: the
  column type attaches UTC on the way out).
* "Newest first" orders by id (autoincrement, insertion order), never by timestamps,
  which can tie.
* At most one checkpoint is the best: :meth:`Registry.set_best` clears the old flag and
  sets the new one in one transaction, and a partial unique index (``WHERE is_best``)
  lets the database refuse a second flag whatever the caller does. Concurrent
  ``set_best`` calls are serialised (PostgreSQL: a transaction advisory lock; SQLite:
  write transactions start with ``BEGIN IMMEDIATE``).
* SQLite is shared by several processes (trainer, validator, API): WAL journal, a 30 s
  busy timeout and ``BEGIN IMMEDIATE`` for writes, so a writer waits for the lock instead
  of failing with ``database is locked`` when its read snapshot went stale.
* JSON columns hold strict JSON: NaN becomes ``None`` and +-inf the strings
  ``"inf"``/``"-inf"`` (the convention of ``TradingMetrics.as_dict``), since
  PostgreSQL refuses NaN/Infinity in JSON. ``score`` is a float column and may be
  ``-inf`` (a checkpoint that never trades).
* Errors: unknown ids read as ``None``; integrity problems (unknown run or checkpoint,
  the same (run, step) recorded with another sha256 -- :class:`StepTaken` -- a bad
  status) raise ``ValueError`` with a message saying what is wrong.
* ``pruned_at``: when retention (``shared.retention``) deleted the checkpoint's file;
  the row stays, so validations and lineage keep their history. Databases created
  before the column existed get it added on open, as does ``validations.equity``.
* ``equity``: the validation backtest's equity curve, downsampled (``{"bars": N,
  "pips": [...]}``, see ``services.validator.job.equity_curve``), for the status page.
  Loaded only by :meth:`Registry.equity_curve`, never with the lists (deferred), so
  ``/checkpoints`` and the status cache stay as light as before.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

from shared.jsonsafe import json_safe

__all__ = ["VALIDATION_STATUSES", "CheckpointRecord", "Registry", "RunRecord", "StepTaken", "ValidationRecord"]

VALIDATION_STATUSES = ("ok", "failed")
SQLITE_BUSY_TIMEOUT_S = 30.0
_SET_BEST_LOCK = 0x6D7A_6265  # PostgreSQL advisory lock keys: set_best ("mzbe")
_CREATE_LOCK = 0x6D7A_6372  # and table creation ("mzcr")


class StepTaken(ValueError):
    """(run, step) is already recorded for another file: a resumed trainer re-reached a
    step of its run with different weights (its lineage forked)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores it naive, as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the registry stores timezone-aware UTC times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --------------------------------------------------------------------------- tables


class Base(DeclarativeBase):
    pass


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    symbol: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (
        UniqueConstraint("run_id", "step", name="uq_checkpoints_run_step"),
        # At most one row may carry the flag: a partial unique index on the flag itself.
        Index(
            "uq_checkpoints_one_best",
            "is_best",
            unique=True,
            sqlite_where=text("is_best"),
            postgresql_where=text("is_best"),
        ),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    is_best: Mapped[bool] = mapped_column(Boolean, default=False)
    best_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ValidationRow(Base):
    __tablename__ = "validations"
    __table_args__ = (
        CheckConstraint("status IN ('ok', 'failed')", name="ck_validations_status"),
        Index("ix_validations_checkpoint_id_id", "checkpoint_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id"))
    status: Mapped[str] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    split: Mapped[str] = mapped_column(String(32))
    duration_s: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    equity: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True, deferred=True)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RunRecord:
    id: str
    symbol: str
    config: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class ValidationRecord:
    id: int
    checkpoint_id: int
    status: str  # 'ok' | 'failed'
    score: float | None  # -inf: the checkpoint never traded; None: the validation failed
    metrics: dict[str, Any] | None  # TradingMetrics.as_dict()
    error: str | None
    split: str
    duration_s: float
    created_at: datetime


@dataclass(frozen=True)
class CheckpointRecord:
    id: int
    run_id: str
    step: int
    path: str
    sha256: str
    created_at: datetime
    is_best: bool
    best_path: str | None
    latest_validation: ValidationRecord | None = None  # the newest validation of any status
    pruned_at: datetime | None = None  # when retention deleted the file


def _run_record(row: RunRow) -> RunRecord:
    return RunRecord(id=row.id, symbol=row.symbol, config=row.config, created_at=row.created_at)


def _validation_record(row: ValidationRow) -> ValidationRecord:
    return ValidationRecord(
        id=row.id,
        checkpoint_id=row.checkpoint_id,
        status=row.status,
        score=row.score,
        metrics=row.metrics,
        error=row.error,
        split=row.split,
        duration_s=row.duration_s,
        created_at=row.created_at,
    )


def _checkpoint_record(row: CheckpointRow, latest: ValidationRow | None) -> CheckpointRecord:
    return CheckpointRecord(
        id=row.id,
        run_id=row.run_id,
        step=row.step,
        path=row.path,
        sha256=row.sha256,
        created_at=row.created_at,
        is_best=bool(row.is_best),
        best_path=row.best_path,
        latest_validation=None if latest is None else _validation_record(latest),
        pruned_at=row.pruned_at,
    )


# --------------------------------------------------------------------------- registry


class Registry:
    """Runs, checkpoints and validations in SQL; safe to share between processes.

    Every method is one short transaction; records returned are immutable snapshots.
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.engine = _make_engine(url, echo=echo)
        self._sqlite = self.engine.dialect.name == "sqlite"
        self._create_tables()

    def _create_tables(self) -> None:
        """``create_all``, serialised between processes opening a fresh database at once
        (``microzero up`` starts trainer, validator and API together)."""
        with self.engine.connect() as conn:
            if self._sqlite:
                conn.execution_options(mz_begin="IMMEDIATE")
            with conn.begin():
                if self.engine.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CREATE_LOCK})
                Base.metadata.create_all(conn)
                _add_missing_columns(conn)

    def __repr__(self) -> str:
        return f"Registry({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        """Close the pooled connections."""
        self.engine.dispose()

    @contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        with self.engine.connect() as conn:
            if write and self._sqlite:
                conn = conn.execution_options(mz_begin="IMMEDIATE")
            with Session(bind=conn, expire_on_commit=False, autoflush=False) as session, session.begin():
                yield session

    # ------------------------------------------------------------------ runs

    def ensure_run(self, run_id: str, symbol: str, config: dict) -> None:
        """Record run `run_id` unless it exists (its first config is kept).

        ValueError if the run exists with another symbol: its checkpoints were trained
        on another market.
        """
        if not run_id:
            raise ValueError("run_id must be a non-empty string")
        symbol = symbol.upper()
        for attempt in range(2):
            try:
                with self._session(write=True) as s:
                    row = s.get(RunRow, run_id)
                    if row is None:
                        s.add(RunRow(id=run_id, symbol=symbol, config=json_safe(dict(config)), created_at=utcnow()))
                        return
            except IntegrityError:
                if attempt:  # a concurrent insert won the race: re-read it below
                    raise
                continue
            if row.symbol != symbol:
                raise ValueError(f"run {run_id!r} is recorded for symbol {row.symbol}, not {symbol}")
            return

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._session() as s:
            row = s.get(RunRow, run_id)
            return None if row is None else _run_record(row)

    # ------------------------------------------------------------------ checkpoints

    def add_checkpoint(self, run_id: str, step: int, path: str, sha256: str) -> int:
        """Record a checkpoint; returns its id. Idempotent on (run_id, step).

        ValueError if the run is unknown, or (run_id, step) is already recorded with a
        different sha256 (another file under the same step).
        """
        step = int(step)
        for attempt in range(2):
            try:
                with self._session(write=True) as s:
                    existing = s.scalar(
                        select(CheckpointRow).where(CheckpointRow.run_id == run_id, CheckpointRow.step == step)
                    )
                    if existing is None:
                        if s.get(RunRow, run_id) is None:
                            raise ValueError(f"unknown run {run_id!r}: call ensure_run before add_checkpoint")
                        row = CheckpointRow(
                            run_id=run_id, step=step, path=str(path), sha256=sha256, created_at=utcnow(), is_best=False
                        )
                        s.add(row)
                        s.flush()
                        return row.id
            except IntegrityError:
                if attempt:
                    raise
                continue  # a concurrent insert of the same (run, step): read it
            if existing.sha256 != sha256:
                raise StepTaken(
                    f"checkpoint step {step} of run {run_id!r} is already recorded (id {existing.id}, "
                    f"{existing.path}) with sha256 {existing.sha256[:16]}..., not {sha256[:16]}..."
                )
            return existing.id
        raise AssertionError("unreachable")

    def checkpoints_by_paths(self, paths: list[str]) -> dict[str, CheckpointRecord]:
        """The newest record of each of `paths` that is registered, by path."""
        found: dict[str, CheckpointRecord] = {}
        with self._session() as s:
            for start in range(0, len(paths), 500):  # bounded IN lists
                query = select(CheckpointRow).where(CheckpointRow.path.in_(paths[start : start + 500]))
                for record in self._with_latest(s, list(s.scalars(query.order_by(CheckpointRow.id)))):
                    found[record.path] = record
        return found

    def mark_pruned(self, checkpoint_ids: list[int]) -> None:
        """Record that retention deleted these checkpoints' files (the rows stay)."""
        if not checkpoint_ids:
            return
        with self._session(write=True) as s:
            s.execute(
                update(CheckpointRow)
                .where(CheckpointRow.id.in_([int(i) for i in checkpoint_ids]), CheckpointRow.pruned_at.is_(None))
                .values(pruned_at=utcnow())
            )

    def get_checkpoint(self, checkpoint_id: int) -> CheckpointRecord | None:
        with self._session() as s:
            row = s.get(CheckpointRow, int(checkpoint_id))
            return None if row is None else self._with_latest(s, [row])[0]

    def list_checkpoints(self, run_id: str | None = None, limit: int = 100, offset: int = 0) -> list[CheckpointRecord]:
        """Checkpoints (of `run_id`, or all), newest first."""
        query = select(CheckpointRow).order_by(CheckpointRow.id.desc()).limit(_limit(limit)).offset(_offset(offset))
        if run_id is not None:
            query = query.where(CheckpointRow.run_id == run_id)
        with self._session() as s:
            return self._with_latest(s, list(s.scalars(query)))

    def latest_checkpoint(self, run_id: str | None = None) -> CheckpointRecord | None:
        found = self.list_checkpoints(run_id, limit=1)
        return found[0] if found else None

    def count_checkpoints(self, run_id: str | None = None) -> int:
        query = select(func.count(CheckpointRow.id))
        if run_id is not None:
            query = query.where(CheckpointRow.run_id == run_id)
        with self._session() as s:
            return int(s.scalar(query) or 0)

    def best_checkpoint(self) -> CheckpointRecord | None:
        """The checkpoint flagged best (at most one), or None."""
        with self._session() as s:
            row = s.scalar(select(CheckpointRow).where(CheckpointRow.is_best.is_(True)))
            return None if row is None else self._with_latest(s, [row])[0]

    def set_best(self, checkpoint_id: int, best_path: str) -> None:
        """Flag `checkpoint_id` as the best (its copy lives at `best_path`), unflagging
        the previous best in the same transaction. ValueError if the id is unknown."""
        with self._session(write=True) as s:
            if s.get_bind().dialect.name == "postgresql":
                s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SET_BEST_LOCK})
            if s.get(CheckpointRow, int(checkpoint_id)) is None:
                raise ValueError(f"unknown checkpoint id {checkpoint_id}: cannot make it the best")
            s.execute(
                update(CheckpointRow)
                .where(CheckpointRow.is_best.is_(True), CheckpointRow.id != int(checkpoint_id))
                .values(is_best=False)
            )
            s.flush()
            s.execute(
                update(CheckpointRow)
                .where(CheckpointRow.id == int(checkpoint_id))
                .values(is_best=True, best_path=str(best_path))
            )

    # ------------------------------------------------------------------ validations

    def add_validation(
        self,
        checkpoint_id: int,
        status: str,
        *,
        score: float | None,
        metrics: dict | None,
        error: str | None,
        split: str,
        duration_s: float,
        equity: dict[str, Any] | None = None,
    ) -> int:
        """Record one validation of a checkpoint; returns its id. `equity`: its
        downsampled equity curve (see the module doc), or None."""
        if status not in VALIDATION_STATUSES:
            raise ValueError(f"validation status must be one of {VALIDATION_STATUSES}, got {status!r}")
        if score is not None and math.isnan(score):
            raise ValueError("validation score is NaN: store None for 'no score'")
        with self._session(write=True) as s:
            if s.get(CheckpointRow, int(checkpoint_id)) is None:
                raise ValueError(f"unknown checkpoint id {checkpoint_id}: cannot record its validation")
            row = ValidationRow(
                checkpoint_id=int(checkpoint_id),
                status=status,
                score=None if score is None else float(score),
                metrics=None if metrics is None else json_safe(dict(metrics)),
                error=error,
                split=split,
                duration_s=float(duration_s),
                created_at=utcnow(),
                equity=None if equity is None else json_safe(dict(equity)),
            )
            s.add(row)
            s.flush()
            return row.id

    def list_validations(
        self, limit: int = 100, offset: int = 0, checkpoint_id: int | None = None
    ) -> list[ValidationRecord]:
        """Validations (of `checkpoint_id`, or all), newest first."""
        query = select(ValidationRow).order_by(ValidationRow.id.desc()).limit(_limit(limit)).offset(_offset(offset))
        if checkpoint_id is not None:
            query = query.where(ValidationRow.checkpoint_id == int(checkpoint_id))
        with self._session() as s:
            return [_validation_record(row) for row in s.scalars(query)]

    def latest_validation(self, checkpoint_id: int | None = None) -> ValidationRecord | None:
        found = self.list_validations(limit=1, checkpoint_id=checkpoint_id)
        return found[0] if found else None

    def equity_curve(self, checkpoint_id: int) -> tuple[ValidationRecord, dict[str, Any]] | None:
        """The newest successful validation of `checkpoint_id` that stored an equity curve,
        with that curve; None if there is none (older validators stored none)."""
        query = (
            select(ValidationRow, ValidationRow.equity)
            .where(
                ValidationRow.checkpoint_id == int(checkpoint_id),
                ValidationRow.status == "ok",
                ValidationRow.equity.is_not(None),
            )
            .order_by(ValidationRow.id.desc())
            .limit(1)
        )
        with self._session() as s:
            found = s.execute(query).first()
            return None if found is None else (_validation_record(found[0]), found[1])

    # ------------------------------------------------------------------ health

    def ping(self) -> bool:
        """True if the database answers ``SELECT 1``."""
        try:
            with self.engine.connect() as conn:
                return conn.execute(text("SELECT 1")).scalar() == 1
        except SQLAlchemyError:
            return False

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _with_latest(s: Session, rows: list[CheckpointRow]) -> list[CheckpointRecord]:
        """Records of `rows` with each one's newest validation (one query for all)."""
        if not rows:
            return []
        ids = [row.id for row in rows]
        newest = (
            select(func.max(ValidationRow.id))
            .where(ValidationRow.checkpoint_id.in_(ids))
            .group_by(ValidationRow.checkpoint_id)
        )
        latest = {v.checkpoint_id: v for v in s.scalars(select(ValidationRow).where(ValidationRow.id.in_(newest)))}
        return [_checkpoint_record(row, latest.get(row.id)) for row in rows]


def _add_missing_columns(conn) -> None:
    """Columns added to a table after databases were created with it (``create_all`` makes
    missing tables only): ``checkpoints.pruned_at``, ``validations.equity``."""
    added = (("checkpoints", "pruned_at", DateTime(timezone=True)), ("validations", "equity", JSON()))
    for table, column, kind in added:
        present = {c["name"] for c in inspect(conn).get_columns(table)}
        if column not in present:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind.compile(dialect=conn.dialect)}"))


def _limit(limit: int) -> int:
    limit = int(limit)
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return limit


def _offset(offset: int) -> int:
    offset = int(offset)
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    return offset


def _enable_wal(cursor) -> None:
    """Switch the file to WAL (persistent, so once per file). The switch needs an exclusive
    lock and SQLite does not wait for it (no busy handler): retry while others hold it."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _make_engine(url: str, *, echo: bool = False) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, echo=echo, pool_pre_ping=True, future=True)
    database = parsed.database or ""
    memory = database in ("", ":memory:") or parsed.query.get("mode") == "memory"
    if memory:
        # One shared connection, or every pooled connection would see its own empty database.
        engine = create_engine(url, echo=echo, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy, not the driver, begin transactions (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            if not memory:
                _enable_wal(cursor)
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        # Writers take the write lock up front (BEGIN IMMEDIATE): a deferred transaction
        # that read first cannot wait for the lock when another process wrote meanwhile.
        mode = conn.get_execution_options().get("mz_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())

    return engine
