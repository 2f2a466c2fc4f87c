"""A site's durable privacy ledger: every DP training segment it has run, with budget checks.

One SQLite file per site, one history per model name ("recommender", "churn"). The ledger
is write-ahead: :meth:`PrivacyLedger.reserve` checks the budget and records the planned
segment *before* training starts, and that record counts from then on, whether training
finishes, crashes or is killed. :meth:`PrivacyLedger.commit` may afterwards lower the steps
to the number really taken (never raise them). A crash therefore over-counts, never
under-counts, and the update leaves the site only after its privacy cost is on disk.

Every segment names the accountant that planned it (:mod:`privacy.accountants`). A
model's ε is computed by that accountant over all of the model's segments; should a
model's segments name several accountants (a site changed its choice), each computes ε
over all of them and the largest is reported, so a change of accountant can never lower
the ε on record. An independent accountant given the same (sample rate, noise
multiplier, steps) rows gets the same number. Ledgers of schema version 1 (before
accountants were named) are upgraded in place: their segments were planned by RDP.

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

import math
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from privacy.accountants import ACCOUNTANTS, DPSegment, create_accountant
from privacy.policy import PolicyError, SitePolicy

LEDGER_FILE = "privacy-ledger.sqlite"
"""The ledger's file name in a site's directory."""

_SCHEMA_VERSION = 3
_SCHEMA = """
CREATE TABLE segments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL CHECK (length(model) > 0),
    server_round INTEGER,
    sample_rate REAL NOT NULL CHECK (sample_rate > 0 AND sample_rate <= 1),
    noise_multiplier REAL NOT NULL CHECK (noise_multiplier >= 0),
    planned_steps INTEGER NOT NULL CHECK (planned_steps >= 1),
    steps INTEGER NOT NULL CHECK (steps >= 0 AND steps <= planned_steps),
    max_grad_norm REAL NOT NULL CHECK (max_grad_norm > 0),
    budget_epsilon REAL NOT NULL,
    delta REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('reserved', 'committed')),
    reserved_at TEXT NOT NULL,
    committed_at TEXT,
    accountant TEXT NOT NULL DEFAULT 'rdp',
    run TEXT
);
CREATE INDEX segments_by_model ON segments (model, id);
CREATE TABLE policies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    set_at TEXT NOT NULL,
    set_by TEXT NOT NULL CHECK (length(set_by) > 0),
    reason TEXT NOT NULL CHECK (length(reason) > 0),
    policy TEXT NOT NULL
);
"""
_UPGRADES: dict[int, tuple[str, ...]] = {
    # Version 1 had no accountant column; its segments were all planned by RDP.
    1: ("ALTER TABLE segments ADD COLUMN accountant TEXT NOT NULL DEFAULT 'rdp'",),
    # Version 2 had no run column (older segments belong to no known run) and no policies.
    2: (
        "ALTER TABLE segments ADD COLUMN run TEXT",
        _SCHEMA[_SCHEMA.index("CREATE TABLE policies") :],
    ),
}
"""Statements that take a ledger of a version to the next one."""
_COLUMNS = (
    "id, model, server_round, sample_rate, noise_multiplier, planned_steps, steps, "
    "max_grad_norm, budget_epsilon, delta, status, reserved_at, committed_at, accountant, run"
)
_BUSY_TIMEOUT_SECONDS = 30.0


class LedgerError(RuntimeError):
    """The ledger cannot be trusted (unreadable, corrupt, foreign schema, invalid row).

    Callers must treat it as "no privacy budget available" and not train.
    """


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
    max_grad_norm: float
    budget_epsilon: float
    delta: float
    status: str  # "reserved" (counted at planned steps) or "committed"
    reserved_at: str
    committed_at: str | None
    accountant: str
    """The accountant that planned the segment (:data:`privacy.accountants.ACCOUNTANTS`)."""
    run: str | None
    """The federated run the segment belongs to (``None``: not recorded)."""


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
            recorded = self._entries(connection, model)
            epsilon_spent = ledger_epsilon(recorded, delta)
            epsilon_after = ledger_epsilon(recorded, delta, planned=(segment, accountant))
            if epsilon_after > budget_epsilon:
                raise BudgetExceeded(model, epsilon_spent, epsilon_after, budget_epsilon, delta)
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
            total_steps=sum(entry.segment.steps for entry in entries),
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
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
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
            f"SELECT {_COLUMNS} FROM segments WHERE model = ? ORDER BY id", (model,)
        ).fetchall()
        return [self._entry(row) for row in rows]

    def _entry(self, row: tuple) -> LedgerEntry:
        (entry_id, model, server_round, sample_rate, noise_multiplier, planned_steps, steps,
         max_grad_norm, budget_epsilon, delta, status, reserved_at, committed_at,
         accountant, run) = row  # fmt: skip
        try:
            if status not in ("reserved", "committed"):
                raise ValueError(f"unknown status {status!r}")
            if accountant not in ACCOUNTANTS:
                raise ValueError(f"unknown accountant {accountant!r}")
            if not (isinstance(planned_steps, int) and 0 <= steps <= planned_steps):
                raise ValueError(f"steps {steps!r} outside 0..planned {planned_steps!r}")
            segment = DPSegment(sample_rate, noise_multiplier, steps)
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
    entries: list[LedgerEntry], delta: float, planned: tuple[DPSegment, str] | None = None
) -> float:
    """ε of a model's ledger entries (plus a ``planned`` (segment, accountant)) at ``delta``:
    the largest ε any accountant they name computes over all of them (0 without steps)."""
    segments = [entry.segment for entry in entries]
    names = {entry.accountant for entry in entries}
    if planned is not None:
        segments.append(planned[0])
        names.add(planned[1])
    return max(
        (create_accountant(name).epsilon(segments, delta) for name in sorted(names)), default=0.0
    )


def _check_model(model: str) -> None:
    if not (isinstance(model, str) and model):
        raise ValueError(f"model must be a non-empty string, got {model!r}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
