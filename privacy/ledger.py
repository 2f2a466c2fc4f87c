"""A site's durable privacy ledger: every DP step it has taken, with budget checks.

One SQLite file per site, one history per model name ("recommender", "churn"). Two kinds
of spending share it: DP-SGD training segments, and *releases* (:mod:`privacy.release`:
the cohort sizes, evaluation metrics and statistics a site sends), each a group of
segments of the discrete Gaussian mechanism with a purpose. One accountant composes all
of a model's segments, so training and releases draw on the same lifetime cap.

The ledger is write-ahead: :meth:`PrivacyLedger.reserve` (training) and
:meth:`PrivacyLedger.reserve_release` check the budget and record the planned segments
*before* training starts or any noise is drawn, and that record counts from then on,
whether the work finishes, crashes or is killed. :meth:`PrivacyLedger.commit` may
afterwards lower a training segment's steps to the number really taken (never raise
them); :meth:`PrivacyLedger.record_release` keeps what a release answered (its noisy,
already public values — a run's cohort sizes are read back by its later messages). A
crash therefore over-counts, never under-counts, and nothing leaves the site before its
privacy cost is on disk.

Every segment names the accountant that planned it (:mod:`privacy.accountants`). A
model's ε is computed by that accountant over all of the model's segments; should a
model's segments name several accountants (a site changed its choice), each computes ε
over all of them and the largest is reported, so a change of accountant can never lower
the ε on record. An independent accountant given the same (sample rate, noise
multiplier, steps) rows gets the same number. Ledgers of schema version 1 (before
accountants were named) are upgraded in place: their segments were planned by RDP;
ledgers before version 4 hold only DP-SGD segments.

Any doubt about the file — unreadable, not a database, corrupt, unknown schema, an invalid
row — raises :class:`LedgerError`: fail closed.

The ledger also keeps the site's privacy policy (:mod:`privacy.policy`): every version,
with who set it, when and why. Each segment records the federated run it belongs to, so
a run's plan can tell its own rounds from what earlier runs spent.

Durability and concurrency: WAL journal with ``synchronous=FULL`` (a committed transaction
survives power loss), and the budget check plus insert run in one ``BEGIN IMMEDIATE``
transaction, so two processes sharing a ledger cannot both spend the last of a budget.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from privacy.accountants import ACCOUNTANTS, DPSegment, create_accountant
from privacy.accountants.base import SUBSAMPLED_GAUSSIAN
from privacy.policy import PolicyError, SitePolicy

LEDGER_FILE = "privacy-ledger.sqlite"
"""The ledger's file name in a site's directory."""

_SCHEMA_VERSION = 4
_SEGMENTS = """
CREATE TABLE segments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL CHECK (length(model) > 0),
    server_round INTEGER,
    sample_rate REAL NOT NULL CHECK (sample_rate > 0 AND sample_rate <= 1),
    noise_multiplier REAL NOT NULL CHECK (noise_multiplier >= 0),
    planned_steps INTEGER NOT NULL CHECK (planned_steps >= 1),
    steps INTEGER NOT NULL CHECK (steps >= 0 AND steps <= planned_steps),
    max_grad_norm REAL CHECK (max_grad_norm IS NULL OR max_grad_norm > 0),
    budget_epsilon REAL NOT NULL,
    delta REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('reserved', 'committed')),
    reserved_at TEXT NOT NULL,
    committed_at TEXT,
    accountant TEXT NOT NULL DEFAULT 'rdp',
    run TEXT,
    mechanism TEXT NOT NULL DEFAULT 'subsampled-gaussian',
    sensitivity INTEGER NOT NULL DEFAULT 1 CHECK (sensitivity >= 1),
    release_id INTEGER REFERENCES releases (id)
)"""
_RELEASES = """
CREATE TABLE releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL CHECK (length(model) > 0),
    run TEXT,
    purpose TEXT NOT NULL CHECK (length(purpose) > 0),
    server_round INTEGER,
    facts_digest TEXT,
    noise_multiplier REAL NOT NULL CHECK (noise_multiplier > 0),
    answer TEXT,
    reserved_at TEXT NOT NULL,
    released_at TEXT
)"""
_POLICIES = """
CREATE TABLE policies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    set_at TEXT NOT NULL,
    set_by TEXT NOT NULL CHECK (length(set_by) > 0),
    reason TEXT NOT NULL CHECK (length(reason) > 0),
    policy TEXT NOT NULL
)"""
_INDEXES = (
    "CREATE INDEX segments_by_model ON segments (model, id)",
    "CREATE INDEX releases_by_run ON releases (model, run, purpose)",
)
_SCHEMA = (_RELEASES, _SEGMENTS, _POLICIES, *_INDEXES)
_V3_COLUMNS = (
    "id, model, server_round, sample_rate, noise_multiplier, planned_steps, steps, "
    "max_grad_norm, budget_epsilon, delta, status, reserved_at, committed_at, accountant, run"
)
_UPGRADES: dict[int, tuple[str, ...]] = {
    # Version 1 had no accountant column; its segments were all planned by RDP.
    1: ("ALTER TABLE segments ADD COLUMN accountant TEXT NOT NULL DEFAULT 'rdp'",),
    # Version 2 had no run column (older segments belong to no known run) and no policies.
    2: ("ALTER TABLE segments ADD COLUMN run TEXT", _POLICIES),
    # Version 3 held DP-SGD segments only; releases need a nullable clipping norm, so the
    # table is rebuilt with its rows.
    3: (
        "ALTER TABLE segments RENAME TO segments_v3",
        "DROP INDEX IF EXISTS segments_by_model",
        _RELEASES,
        _SEGMENTS,
        f"INSERT INTO segments ({_V3_COLUMNS}) SELECT {_V3_COLUMNS} FROM segments_v3",
        "DROP TABLE segments_v3",
        *_INDEXES,
    ),
}
"""Statements that take a ledger of a version to the next one."""
TRAINING = "training"
"""The purpose of DP-SGD segments (releases name their own)."""
_COLUMNS = (
    "s.id, s.model, s.server_round, s.sample_rate, s.noise_multiplier, s.planned_steps, "
    "s.steps, s.max_grad_norm, s.budget_epsilon, s.delta, s.status, s.reserved_at, "
    "s.committed_at, s.accountant, s.run, s.mechanism, s.sensitivity, s.release_id, r.purpose"
)
_BUSY_TIMEOUT_SECONDS = 30.0


class LedgerError(RuntimeError):
    """The ledger cannot be trusted (unreadable, corrupt, foreign schema, invalid row).

    Callers must treat it as "no privacy budget available" and not train.
    """


class ReleaseLimit(Exception):
    """A release would exceed what the policy allows a run for its purpose (how many, or
    how much ε); nothing is recorded."""


class BudgetExceeded(Exception):
    """Training the planned segment would take the model's ε above its budget."""

    def __init__(
        self, model: str, epsilon_spent: float, epsilon_after: float, budget: float, delta: float
    ) -> None:
        self.model = model
        self.epsilon_spent = epsilon_spent
        self.epsilon_after = epsilon_after
        self.budget_epsilon = budget
        self.delta = delta
        super().__init__(
            f"privacy budget for model '{model}' would be exceeded: ε spent so far "
            f"{epsilon_spent:.4g}, ε after the planned round {epsilon_after:.4g}, budget "
            f"ε = {budget:.4g} (δ = {delta:.3g}); declining to train"
        )


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded DP training segment (a round's local training at one site)."""

    id: int
    model: str
    server_round: int | None
    segment: DPSegment
    planned_steps: int
    max_grad_norm: float | None
    """DP-SGD's clipping norm (``None`` for a release's segment)."""
    budget_epsilon: float
    delta: float
    status: str  # "reserved" (counted at planned steps) or "committed"
    reserved_at: str
    committed_at: str | None
    accountant: str
    """The accountant that planned the segment (:data:`privacy.accountants.ACCOUNTANTS`)."""
    run: str | None
    """The federated run the segment belongs to (``None``: not recorded)."""
    release_id: int | None = None
    """The release the segment belongs to (``None``: DP-SGD training)."""
    purpose: str = TRAINING
    """What the step was for: :data:`TRAINING`, or the release's purpose."""


@dataclass(frozen=True)
class ReleaseRecord:
    """One release as the ledger keeps it."""

    id: int
    model: str
    run: str | None
    purpose: str
    server_round: int | None
    facts_digest: str | None
    noise_multiplier: float
    answer: dict[str, Any] | None
    """What it released (public, noisy values); ``None`` if it never completed."""


@dataclass(frozen=True)
class Reservation:
    """Receipt of a successful budget check; the planned segment is already counted."""

    id: int
    model: str
    server_round: int | None
    segment: DPSegment
    epsilon_spent_before: float
    epsilon_after: float
    budget_epsilon: float
    delta: float
    accountant: str


@dataclass(frozen=True)
class PolicyChange:
    """One version of the site's privacy policy, as the ledger keeps it."""

    id: int
    set_at: str
    set_by: str
    reason: str
    policy: SitePolicy


@dataclass(frozen=True)
class BudgetStatus:
    """Where a model stands against its budget, for reports and the ClientApp's metrics."""

    model: str
    epsilon_spent: float
    budget_epsilon: float
    delta: float
    total_steps: int
    """DP-SGD steps (releases are counted in :attr:`releases`)."""
    segments: int
    uncommitted: int  # reservations whose training never confirmed (crash or in progress)

    @property
    def epsilon_remaining(self) -> float:
        """Budget left (0 when spent or overspent)."""
        return max(self.budget_epsilon - self.epsilon_spent, 0.0)


class PrivacyLedger:
    """The privacy ledger of one site, stored in the SQLite file at ``path``.

    The file and its parent directory are created if missing. Use as a context manager or
    call :meth:`close`. Several processes may open the same file, each with its own
    instance; an instance must not be shared between threads or forked processes.

    Raises:
        LedgerError: if the file exists but is not a valid ledger.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._connection: sqlite3.Connection | None = None
        try:
            with self._translate_errors("open"):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Autocommit mode: transactions are opened explicitly in _transaction.
                self._connection = sqlite3.connect(
                    self.path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None
                )
                self._connection.execute("PRAGMA journal_mode = WAL")
                self._connection.execute("PRAGMA synchronous = FULL")
                integrity = self._connection.execute("PRAGMA quick_check").fetchone()[0]
                if integrity != "ok":
                    raise LedgerError(
                        f"privacy ledger {self.path} is corrupt ({integrity}); refusing to train"
                    )
            self._create_or_check_schema()
        except BaseException:
            self.close()
            raise

    def reserve(
        self,
        model: str,
        segment: DPSegment,
        *,
        budget_epsilon: float,
        delta: float,
        max_grad_norm: float,
        accountant: str,
        server_round: int | None = None,
        run: str | None = None,
    ) -> Reservation:
        """Check the budget and record ``segment``, planned by ``accountant``, before
        training it.

        The check and the insert are one transaction: ε over all recorded segments of
        ``model`` plus the planned one (module docstring: by every accountant named) must
        not exceed ``budget_epsilon`` at ``delta``. From this call on the segment counts at
        its planned steps, even if training crashes.

        Raises:
            BudgetExceeded: the round would overspend; nothing is recorded.
            LedgerError: the ledger cannot be read or written.
            ValueError: invalid arguments.
        """
        _check_model(model)
        if not (math.isfinite(budget_epsilon) and budget_epsilon > 0):
            raise ValueError(f"budget_epsilon must be finite and > 0, got {budget_epsilon!r}")
        if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be finite and > 0, got {max_grad_norm!r}")
        if segment.steps < 1:
            raise ValueError("a reservation needs at least one planned step")
        create_accountant(accountant)  # refuse an unknown name before anything is written
        with self._transaction("reserve") as connection:
            _, epsilon_spent, epsilon_after = self._within_budget(
                connection, model, [segment], accountant, delta, budget_epsilon
            )
            cursor = connection.execute(
                "INSERT INTO segments (model, server_round, sample_rate, noise_multiplier, "
                "planned_steps, steps, max_grad_norm, budget_epsilon, delta, status, "
                "reserved_at, accountant, run) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'reserved', ?, ?, ?)",
                (
                    model,
                    server_round,
                    segment.sample_rate,
                    segment.noise_multiplier,
                    segment.steps,
                    segment.steps,
                    max_grad_norm,
                    budget_epsilon,
                    delta,
                    _now(),
                    accountant,
                    run,
                ),
            )
        return Reservation(
            id=cursor.lastrowid,
            model=model,
            server_round=server_round,
            segment=segment,
            epsilon_spent_before=epsilon_spent,
            epsilon_after=epsilon_after,
            budget_epsilon=budget_epsilon,
            delta=delta,
            accountant=accountant,
        )

    def commit(self, reservation: Reservation, steps_taken: int | None = None) -> None:
        """Confirm a reservation after training, optionally lowering it to the real steps.

        Steps can only go down (``0 <= steps_taken <= planned``): more steps than reserved
        were never budget-checked, so that raises ``ValueError`` — reserve again instead.
        Omitting ``steps_taken`` confirms the planned steps. Committing twice is an error.
        """
        with self._transaction("commit") as connection:
            row = connection.execute(
                "SELECT planned_steps, status FROM segments WHERE id = ?", (reservation.id,)
            ).fetchone()
            if row is None:
                raise LedgerError(
                    f"reservation {reservation.id} is missing from privacy ledger {self.path}"
                )
            planned_steps, status = row
            if status != "reserved":
                raise ValueError(f"reservation {reservation.id} is already {status}")
            steps = planned_steps if steps_taken is None else steps_taken
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
                raise ValueError(f"steps_taken must be an integer >= 0, got {steps_taken!r}")
            if steps > planned_steps:
                raise ValueError(
                    f"steps_taken={steps} exceeds the {planned_steps} steps reserved; "
                    "extra steps were never budget-checked, reserve them first"
                )
            connection.execute(
                "UPDATE segments SET steps = ?, status = 'committed', committed_at = ? "
                "WHERE id = ?",
                (steps, _now(), reservation.id),
            )

    def reserve_release(
        self,
        model: str,
        planned: list[DPSegment],
        *,
        purpose: str,
        budget_epsilon: float,
        delta: float,
        accountant: str,
        run: str | None,
        server_round: int | None = None,
        facts_digest: str | None = None,
        run_limit: tuple[int, float] | None = None,
    ) -> ReleaseRecord:
        """Check the budget and record a release's ``planned`` segments
        (:func:`privacy.release.segments`) before any noise is drawn.

        One transaction: ε of all of ``model``'s segments plus these must stay within
        ``budget_epsilon`` at ``delta`` (the lifetime cap), and with ``run_limit`` ``(most
        releases, most ε)`` the run's releases of this purpose may not become more than
        that many, nor compose (alone) to more than that ε. From this call on the segments
        count, even if the release never completes.

        Raises:
            BudgetExceeded: the release would overspend the cap; nothing is recorded.
            ReleaseLimit: the run's releases of this purpose would exceed ``run_limit``.
            LedgerError: the ledger cannot be read or written.
            ValueError: invalid arguments.
        """
        _check_model(model)
        if not purpose or purpose == TRAINING:
            raise ValueError(f"a release needs a purpose other than {TRAINING!r}")
        if not planned or any(s.mechanism == SUBSAMPLED_GAUSSIAN for s in planned):
            raise ValueError("a release records segments of its own mechanism only")
        [noise_multiplier] = {segment.noise_multiplier for segment in planned}
        create_accountant(accountant)
        with self._transaction("reserve a release") as connection:
            recorded, _, _ = self._within_budget(
                connection, model, planned, accountant, delta, budget_epsilon
            )
            if run_limit is not None:
                _check_run_limit(recorded, run, purpose, planned, accountant, delta, run_limit)
            now = _now()
            cursor = connection.execute(
                "INSERT INTO releases (model, run, purpose, server_round, facts_digest, "
                "noise_multiplier, reserved_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (model, run, purpose, server_round, facts_digest, noise_multiplier, now),
            )
            release_id = cursor.lastrowid
            for segment in planned:
                connection.execute(
                    "INSERT INTO segments (model, server_round, sample_rate, noise_multiplier, "
                    "planned_steps, steps, max_grad_norm, budget_epsilon, delta, status, "
                    "reserved_at, accountant, run, mechanism, sensitivity, release_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, 'reserved', ?, ?, ?, ?, ?, ?)",
                    (
                        model,
                        server_round,
                        segment.sample_rate,
                        segment.noise_multiplier,
                        segment.steps,
                        segment.steps,
                        budget_epsilon,
                        delta,
                        now,
                        accountant,
                        run,
                        segment.mechanism,
                        segment.sensitivity,
                        release_id,
                    ),
                )
        return ReleaseRecord(
            release_id, model, run, purpose, server_round, facts_digest, noise_multiplier, None
        )

    def record_release(self, release: ReleaseRecord, answer: dict[str, Any]) -> ReleaseRecord:
        """Keep what ``release`` answered (its noisy values) and confirm its segments."""
        text = json.dumps(answer, sort_keys=True)
        with self._transaction("record a release") as connection:
            updated = connection.execute(
                "UPDATE releases SET answer = ?, released_at = ? WHERE id = ? AND answer IS NULL",
                (text, _now(), release.id),
            ).rowcount
            if updated != 1:
                raise LedgerError(
                    f"release {release.id} is missing from privacy ledger {self.path} or was "
                    "already recorded"
                )
            connection.execute(
                "UPDATE segments SET status = 'committed', committed_at = ? WHERE release_id = ?",
                (_now(), release.id),
            )
        return ReleaseRecord(**{**vars(release), "answer": json.loads(text)})

    def releases(
        self, model: str, *, run: str | None = None, purpose: str | None = None
    ) -> list[ReleaseRecord]:
        """``model``'s releases, oldest first (of one run and purpose when given)."""
        _check_model(model)
        query = (
            "SELECT id, model, run, purpose, server_round, facts_digest, noise_multiplier, "
            "answer FROM releases WHERE model = ?"
        )
        parameters: list[Any] = [model]
        for column, value in (("run", run), ("purpose", purpose)):
            if value is not None:
                query += f" AND {column} = ?"
                parameters.append(value)
        with self._transaction("read releases") as connection:
            rows = connection.execute(query + " ORDER BY id", parameters).fetchall()
        return [self._release(row) for row in rows]

    def entries(self, model: str) -> list[LedgerEntry]:
        """All recorded segments of ``model``, oldest first (reservations included)."""
        _check_model(model)
        with self._transaction("read") as connection:
            return self._entries(connection, model)

    def segments(self, model: str) -> list[DPSegment]:
        """The (sample rate, noise multiplier, steps) rows ε is computed from."""
        return [entry.segment for entry in self.entries(model)]

    def epsilon(self, model: str, delta: float) -> float:
        """ε spent so far by ``model`` at ``delta``, by the accountant(s) its segments name."""
        return ledger_epsilon(self.entries(model), delta)

    def budget_status(self, model: str, budget_epsilon: float, delta: float) -> BudgetStatus:
        """ε spent by ``model`` against ``budget_epsilon``, with step and segment counts."""
        entries = self.entries(model)
        return BudgetStatus(
            model=model,
            epsilon_spent=ledger_epsilon(entries, delta),
            budget_epsilon=budget_epsilon,
            delta=delta,
            total_steps=sum(e.segment.steps for e in entries if e.purpose == TRAINING),
            segments=len(entries),
            uncommitted=sum(entry.status == "reserved" for entry in entries),
        )

    def models(self) -> list[str]:
        """Names of the models with at least one recorded segment."""
        with self._transaction("read") as connection:
            rows = connection.execute("SELECT DISTINCT model FROM segments ORDER BY model")
            return [model for (model,) in rows]

    def policy(self) -> SitePolicy | None:
        """The site's privacy policy in force (the latest set), or ``None`` if none was set.

        Raises:
            LedgerError: the stored policy cannot be read (fail closed).
        """
        history = self.policy_history()
        return history[-1].policy if history else None

    def policy_history(self) -> list[PolicyChange]:
        """Every policy the site has set, oldest first, with who set it, when and why."""
        with self._transaction("read the policy") as connection:
            rows = connection.execute(
                "SELECT id, set_at, set_by, reason, policy FROM policies ORDER BY id"
            ).fetchall()
        changes = []
        for change_id, set_at, set_by, reason, text in rows:
            try:
                policy = SitePolicy.from_json(text)
            except PolicyError as error:
                raise LedgerError(
                    f"privacy ledger {self.path}, table policies, row id {change_id}: "
                    f"{error}; refusing to train"
                ) from None
            changes.append(PolicyChange(change_id, set_at, set_by, reason, policy))
        return changes

    def set_policy(self, policy: SitePolicy, *, set_by: str, reason: str) -> PolicyChange:
        """Record ``policy`` as the site's policy from now on: a local, deliberate act, kept
        with who set it and why (never something a server message can do).

        Raises:
            ValueError: ``set_by`` or ``reason`` is empty.
        """
        if not (set_by.strip() and reason.strip()):
            raise ValueError("a policy change needs who sets it and why")
        set_at = _now()
        with self._transaction("set the policy") as connection:
            cursor = connection.execute(
                "INSERT INTO policies (set_at, set_by, reason, policy) VALUES (?, ?, ?, ?)",
                (set_at, set_by.strip(), reason.strip(), policy.to_json()),
            )
        return PolicyChange(cursor.lastrowid, set_at, set_by.strip(), reason.strip(), policy)

    def close(self) -> None:
        """Close the database connection (the ledger stays on disk)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> PrivacyLedger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _create_or_check_schema(self) -> None:
        with self._transaction("open") as connection:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                name
                for (name,) in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                )
            }
            if version == 0 and not tables:
                # Statement by statement: executescript would commit mid-transaction.
                for statement in _SCHEMA:
                    connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            elif version in _UPGRADES and "segments" in tables:
                for older in range(version, _SCHEMA_VERSION):
                    for statement in _UPGRADES[older]:
                        connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            elif version != _SCHEMA_VERSION or "segments" not in tables:
                raise LedgerError(
                    f"{self.path} is not a fedshop privacy ledger (schema version {version}, "
                    f"tables {sorted(tables)}); refusing to train"
                )

    def _entries(self, connection: sqlite3.Connection, model: str) -> list[LedgerEntry]:
        rows = connection.execute(
            f"SELECT {_COLUMNS} FROM segments s LEFT JOIN releases r ON s.release_id = r.id "
            "WHERE s.model = ? ORDER BY s.id",
            (model,),
        ).fetchall()
        return [self._entry(row) for row in rows]

    def _within_budget(
        self,
        connection: sqlite3.Connection,
        model: str,
        planned: list[DPSegment],
        accountant: str,
        delta: float,
        budget_epsilon: float,
    ) -> tuple[list[LedgerEntry], float, float]:
        """``model``'s recorded entries and ε before and after ``planned``, inside a
        reservation's transaction.

        Raises:
            BudgetExceeded: ``planned`` would take ε above ``budget_epsilon``.
        """
        recorded = self._entries(connection, model)
        epsilon_spent = ledger_epsilon(recorded, delta)
        epsilon_after = ledger_epsilon(recorded, delta, planned=(planned, accountant))
        if epsilon_after > budget_epsilon:
            raise BudgetExceeded(model, epsilon_spent, epsilon_after, budget_epsilon, delta)
        return recorded, epsilon_spent, epsilon_after

    def _release(self, row: tuple) -> ReleaseRecord:
        release_id, model, run, purpose, server_round, digest, noise_multiplier, answer = row
        try:
            loaded = None if answer is None else json.loads(answer)
            if loaded is not None and not isinstance(loaded, dict):
                raise ValueError("its answer is not a mapping")
        except ValueError as error:
            raise LedgerError(
                f"privacy ledger {self.path}, table releases, row id {release_id}: invalid "
                f"record ({error}); refusing to train"
            ) from None
        return ReleaseRecord(
            release_id, model, run, purpose, server_round, digest, noise_multiplier, loaded
        )

    def _entry(self, row: tuple) -> LedgerEntry:
        (entry_id, model, server_round, sample_rate, noise_multiplier, planned_steps, steps,
         max_grad_norm, budget_epsilon, delta, status, reserved_at, committed_at,
         accountant, run, mechanism, sensitivity, release_id, purpose) = row  # fmt: skip
        try:
            if status not in ("reserved", "committed"):
                raise ValueError(f"unknown status {status!r}")
            if accountant not in ACCOUNTANTS:
                raise ValueError(f"unknown accountant {accountant!r}")
            if not (isinstance(planned_steps, int) and 0 <= steps <= planned_steps):
                raise ValueError(f"steps {steps!r} outside 0..planned {planned_steps!r}")
            if (release_id is None) != (mechanism == SUBSAMPLED_GAUSSIAN):
                raise ValueError(f"a {mechanism} segment with release {release_id!r}")
            if release_id is not None and purpose is None:
                raise ValueError(f"release {release_id} is missing")
            segment = DPSegment(sample_rate, noise_multiplier, steps, mechanism, sensitivity)
        except (TypeError, ValueError) as error:
            raise LedgerError(
                f"privacy ledger {self.path}, table segments, row id {entry_id}: invalid "
                f"record ({error}); refusing to train"
            ) from error
        return LedgerEntry(
            id=entry_id,
            model=model,
            server_round=server_round,
            segment=segment,
            planned_steps=planned_steps,
            max_grad_norm=max_grad_norm,
            budget_epsilon=budget_epsilon,
            delta=delta,
            status=status,
            reserved_at=reserved_at,
            committed_at=committed_at,
            accountant=accountant,
            run=run,
            release_id=release_id,
            purpose=TRAINING if purpose is None else purpose,
        )

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on error.

        IMMEDIATE takes the write lock up front, so a read-check-write sequence cannot
        interleave with another process's.
        """
        if self._connection is None:
            raise LedgerError(f"privacy ledger {self.path} is closed")
        with self._translate_errors(action):
            connection = self._connection
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    @contextmanager
    def _translate_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except (sqlite3.Error, OSError) as error:
            raise LedgerError(
                f"privacy ledger {self.path}: cannot {action} ({error}); the file may be "
                "unreadable or corrupt; refusing to train until it is restored"
            ) from error


def ledger_epsilon(
    entries: list[LedgerEntry],
    delta: float,
    planned: tuple[list[DPSegment], str] | None = None,
) -> float:
    """ε of a model's ledger entries (plus ``planned`` (segments, accountant)) at ``delta``:
    the largest ε any accountant they name computes over all of them (0 without steps)."""
    segments = [entry.segment for entry in entries]
    names = {entry.accountant for entry in entries}
    if planned is not None:
        more, accountant = planned
        segments.extend(more)
        names.add(accountant)
    return max(
        (create_accountant(name).epsilon(segments, delta) for name in sorted(names)), default=0.0
    )


def _check_run_limit(
    recorded: list[LedgerEntry],
    run: str | None,
    purpose: str,
    planned: list[DPSegment],
    accountant: str,
    delta: float,
    run_limit: tuple[int, float],
) -> None:
    """Refuse a release beyond the run's most releases or most ε of its purpose."""
    most, budget = run_limit
    ours = [e for e in recorded if e.run == run and e.purpose == purpose]
    if len({entry.release_id for entry in ours}) >= most:
        raise ReleaseLimit(f"this run has had the {most} {purpose} release(s) the policy allows")
    epsilon = ledger_epsilon(ours, delta, planned=(planned, accountant))
    if epsilon > budget * (1 + 1e-9):
        raise ReleaseLimit(
            f"this run's {purpose} releases would spend ε {epsilon:.3g}, more than the "
            f"{budget:g} the policy allows per run"
        )


def _check_model(model: str) -> None:
    if not (isinstance(model, str) and model):
        raise ValueError(f"model must be a non-empty string, got {model!r}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
