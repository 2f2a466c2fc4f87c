"""The privacy ledger: durable across processes, write-ahead, budget-checked, fails closed."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from independent_accounting import independent_epsilon

from privacy.accountants import DPSegment, create_accountant
from privacy.ledger import BudgetExceeded, LedgerError, PrivacyLedger, ReleaseLimit

ROOT = Path(__file__).resolve().parents[1]
DELTA = 1e-5
ROUND = DPSegment(sample_rate=0.05, noise_multiplier=1.5, steps=60)
epsilon_for = create_accountant("rdp").epsilon


def reserve_round(ledger: PrivacyLedger, budget: float, server_round: int | None = None):
    return ledger.reserve(
        "recommender",
        ROUND,
        budget_epsilon=budget,
        delta=DELTA,
        max_grad_norm=1.0,
        accountant="rdp",
        server_round=server_round,
    )


def independent_epsilon_from_file(path: Path, model: str) -> float:
    """Read the rows with plain sqlite3 and account them with the independent accountant
    of the one accountant they name."""
    with sqlite3.connect(path) as connection:
        rows = connection.execute(
            "SELECT sample_rate, noise_multiplier, steps, accountant FROM segments WHERE model = ?",
            (model,),
        ).fetchall()
    [accountant] = {row[3] for row in rows}
    segments = [DPSegment(*row[:3]) for row in rows]
    return independent_epsilon(segments, DELTA, accountant)


def run_python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_epsilon_grows_over_rounds_and_equals_independent_accountant(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    epsilons = []
    with PrivacyLedger(path) as ledger:
        for server_round in range(1, 6):
            reservation = reserve_round(ledger, budget=10.0, server_round=server_round)
            # Some rounds stop early (e.g. time limit): commit the steps really taken.
            ledger.commit(reservation, steps_taken=45 if server_round % 2 else None)
            epsilons.append(ledger.epsilon("recommender", DELTA))
            assert reservation.epsilon_after >= epsilons[-1]
        entries = ledger.entries("recommender")
        assert [entry.server_round for entry in entries] == [1, 2, 3, 4, 5]
        assert [entry.segment.steps for entry in entries] == [45, 60, 45, 60, 45]
        assert all(entry.status == "committed" for entry in entries)
        assert all(epsilons[i] < epsilons[i + 1] for i in range(4))
        assert ledger.epsilon("recommender", DELTA) == pytest.approx(
            independent_epsilon_from_file(path, "recommender"), rel=1e-6
        )
        status = ledger.budget_status("recommender", 10.0, DELTA)
        assert status.epsilon_spent == epsilons[-1]
        assert status.total_steps == 255
        assert status.segments == 5
        assert status.uncommitted == 0
        assert status.epsilon_remaining == pytest.approx(10.0 - epsilons[-1])


def test_models_are_accounted_separately(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "ledger.sqlite") as ledger:
        reserve_round(ledger, budget=10.0)
        ledger.reserve(
            "churn",
            DPSegment(0.1, 2.0, 20),
            budget_epsilon=2.0,
            delta=DELTA,
            max_grad_norm=0.5,
            accountant="rdp",
        )
        assert ledger.models() == ["churn", "recommender"]
        assert ledger.epsilon("recommender", DELTA) == epsilon_for([ROUND], DELTA)
        assert ledger.epsilon("churn", DELTA) == epsilon_for([DPSegment(0.1, 2.0, 20)], DELTA)
        assert ledger.entries("churn")[0].max_grad_norm == 0.5


@pytest.mark.slow
def test_new_process_sees_the_same_epsilon(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with PrivacyLedger(path) as ledger:
        for _ in range(3):
            ledger.commit(reserve_round(ledger, budget=10.0))
        expected = ledger.epsilon("recommender", DELTA)
    reader = run_python(
        f"""
        from privacy.ledger import PrivacyLedger
        with PrivacyLedger({str(path)!r}) as ledger:
            print(repr(ledger.epsilon("recommender", {DELTA!r})))
        """
    )
    stdout, stderr = reader.communicate(timeout=60)
    assert reader.returncode == 0, stderr
    assert float(stdout) == expected
    assert expected > 0


@pytest.mark.slow
def test_process_killed_after_reserve_still_counts_the_round(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with PrivacyLedger(path) as ledger:
        ledger.commit(reserve_round(ledger, budget=10.0, server_round=1))
    trainer = run_python(
        f"""
        import time
        from privacy.accountants import DPSegment
        from privacy.ledger import PrivacyLedger
        ledger = PrivacyLedger({str(path)!r})
        ledger.reserve("recommender", DPSegment(0.05, 1.5, 60), budget_epsilon=10.0,
                       delta={DELTA!r}, max_grad_norm=1.0, server_round=2,
                       accountant="rdp")
        print("reserved", flush=True)
        time.sleep(120)  # "training": killed before it can commit
        """
    )
    assert trainer.stdout.readline().strip() == "reserved"
    trainer.send_signal(signal.SIGKILL)
    trainer.wait(timeout=30)
    assert trainer.returncode == -signal.SIGKILL

    with PrivacyLedger(path) as ledger:
        entries = ledger.entries("recommender")
        assert [(entry.server_round, entry.status) for entry in entries] == [
            (1, "committed"),
            (2, "reserved"),
        ]
        assert ledger.epsilon("recommender", DELTA) == epsilon_for([ROUND, ROUND], DELTA)
        assert ledger.budget_status("recommender", 10.0, DELTA).uncommitted == 1


def test_spent_budget_refuses_training_with_a_clear_reason(tmp_path: Path) -> None:
    budget = epsilon_for([ROUND] * 3, DELTA) * 1.001  # room for exactly three rounds
    with PrivacyLedger(tmp_path / "ledger.sqlite") as ledger:
        for _ in range(3):
            ledger.commit(reserve_round(ledger, budget=budget))
        spent = ledger.epsilon("recommender", DELTA)
        with pytest.raises(BudgetExceeded) as refused:
            reserve_round(ledger, budget=budget)
        message = str(refused.value)
        assert "recommender" in message
        assert f"{spent:.4g}" in message
        assert f"{epsilon_for([ROUND] * 4, DELTA):.4g}" in message
        assert f"{budget:.4g}" in message
        assert refused.value.epsilon_spent == spent
        assert refused.value.epsilon_after > budget
        # A refusal records nothing.
        assert len(ledger.entries("recommender")) == 3
        assert ledger.epsilon("recommender", DELTA) == spent


def test_commit_can_only_lower_steps_once(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "ledger.sqlite") as ledger:
        reservation = reserve_round(ledger, budget=10.0)
        with pytest.raises(ValueError, match="exceeds the 60 steps reserved"):
            ledger.commit(reservation, steps_taken=61)
        # The failed commit left the reservation counted at its planned steps.
        assert ledger.segments("recommender") == [ROUND]
        ledger.commit(reservation, steps_taken=0)
        assert ledger.epsilon("recommender", DELTA) == 0.0
        with pytest.raises(ValueError, match="already committed"):
            ledger.commit(reservation, steps_taken=0)


def test_invalid_reservations_are_rejected(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "ledger.sqlite") as ledger:
        for bad in (
            {"budget_epsilon": 0.0},
            {"budget_epsilon": float("nan")},
            {"max_grad_norm": 0.0},
            {"delta": 1.0},
        ):
            arguments = {
                "budget_epsilon": 3.0,
                "delta": DELTA,
                "max_grad_norm": 1.0,
                "accountant": "rdp",
            } | bad
            with pytest.raises(ValueError):
                ledger.reserve("recommender", ROUND, **arguments)
        with pytest.raises(ValueError, match="model"):
            ledger.reserve(
                "", ROUND, budget_epsilon=3.0, delta=DELTA, max_grad_norm=1.0, accountant="rdp"
            )
        with pytest.raises(ValueError, match="at least one"):
            ledger.reserve(
                "churn",
                DPSegment(0.1, 1.0, 0),
                budget_epsilon=3.0,
                delta=DELTA,
                max_grad_norm=1.0,
                accountant="rdp",
            )
        # No noise means ε = ∞: always over budget.
        with pytest.raises(BudgetExceeded):
            ledger.reserve(
                "churn",
                DPSegment(0.1, 0.0, 1),
                budget_epsilon=1e9,
                delta=DELTA,
                max_grad_norm=1.0,
                accountant="rdp",
            )
        assert ledger.models() == []


def test_ledger_is_durable_wal_with_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with PrivacyLedger(path) as ledger:
        reserve_round(ledger, budget=10.0)
        # The writer's connection is configured for durable commits.
        assert ledger._connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.slow
def test_concurrent_processes_cannot_overspend(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"  # created by whichever racer comes first
    budget = epsilon_for([ROUND] * 2, DELTA) * 1.001  # room for exactly two rounds
    racers = [
        run_python(
            f"""
            import sys
            from privacy.accountants import DPSegment
            from privacy.ledger import BudgetExceeded, PrivacyLedger
            with PrivacyLedger({str(path)!r}) as ledger:
                print("ready", flush=True)
                sys.stdin.readline()  # start together
                try:
                    ledger.reserve("recommender", DPSegment(0.05, 1.5, 60),
                                   budget_epsilon={budget!r}, delta={DELTA!r}, max_grad_norm=1.0,
                                   accountant="rdp")
                    print("reserved")
                except BudgetExceeded:
                    print("refused")
            """,
            stdin=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    for racer in racers:
        assert racer.stdout.readline().strip() == "ready"
    for racer in racers:
        racer.stdin.write("go\n")
        racer.stdin.flush()
    outcomes = []
    for racer in racers:
        stdout, stderr = racer.communicate(timeout=60)
        assert racer.returncode == 0, stderr
        outcomes.append(stdout.strip())
    assert sorted(outcomes) == ["refused", "refused", "reserved", "reserved"]
    with PrivacyLedger(path) as ledger:
        assert len(ledger.entries("recommender")) == 2
        assert ledger.epsilon("recommender", DELTA) <= budget


def test_garbage_file_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    path.write_bytes(b"this is not a database " * 200)
    with pytest.raises(LedgerError, match="refusing to train") as error:
        PrivacyLedger(path)
    assert str(path) in str(error.value)


def test_truncated_ledger_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with PrivacyLedger(path) as ledger:
        for server_round in range(80):
            ledger.commit(reserve_round(ledger, budget=1e6, server_round=server_round))
    size = path.stat().st_size
    assert size > 8192
    with path.open("r+b") as file:
        file.truncate(size // 2)
    with pytest.raises(LedgerError, match="refusing to train"):
        with PrivacyLedger(path) as ledger:
            reserve_round(ledger, budget=1e6)


def test_foreign_database_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE orders (id INTEGER)")
    with pytest.raises(LedgerError, match="not a fedshop privacy ledger"):
        PrivacyLedger(path)


def test_row_breaking_a_constraint_fails_closed_on_open(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with PrivacyLedger(path) as ledger:
        reserve_round(ledger, budget=10.0)
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA ignore_check_constraints = ON")
        connection.execute("UPDATE segments SET sample_rate = 2.0 WHERE id = 1")
    with pytest.raises(LedgerError, match="CHECK constraint failed"):
        PrivacyLedger(path)


def test_row_with_a_non_numeric_value_fails_closed_naming_the_row(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with PrivacyLedger(path) as ledger:
        reserve_round(ledger, budget=10.0)
        reserve_round(ledger, budget=10.0)
    with sqlite3.connect(path) as connection:
        # Text compares above any number in SQLite, so this row passes the CHECK constraints.
        connection.execute("UPDATE segments SET noise_multiplier = 'lots' WHERE id = 2")
    with PrivacyLedger(path) as ledger:
        with pytest.raises(LedgerError, match="row id 2"):
            ledger.epsilon("recommender", DELTA)
        with pytest.raises(LedgerError, match="refusing to train"):
            reserve_round(ledger, budget=10.0)


def test_each_segment_names_its_accountant_and_epsilon_is_that_accountants(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite"
    pld = create_accountant("pld")
    with PrivacyLedger(path) as ledger:
        for server_round in (1, 2, 3):
            reservation = ledger.reserve(
                "churn",
                ROUND,
                budget_epsilon=10.0,
                delta=DELTA,
                max_grad_norm=1.0,
                accountant="pld",
                server_round=server_round,
            )
            ledger.commit(reservation)
        assert [entry.accountant for entry in ledger.entries("churn")] == ["pld"] * 3
        assert ledger.epsilon("churn", DELTA) == pld.epsilon([ROUND] * 3, DELTA)
    # An independent PLD-grade accountant (Opacus's PRV) agrees with what the ledger holds.
    assert ledger_epsilon_of(path) == pytest.approx(
        independent_epsilon_from_file(path, "churn"), abs=0.02
    )
    assert ledger_epsilon_of(path) < epsilon_for([ROUND] * 3, DELTA)  # PLD is the tighter


def ledger_epsilon_of(path: Path) -> float:
    with PrivacyLedger(path) as ledger:
        return ledger.epsilon("churn", DELTA)


def test_a_model_whose_segments_name_two_accountants_reports_the_larger_epsilon(
    tmp_path: Path,
) -> None:
    with PrivacyLedger(tmp_path / "ledger.sqlite") as ledger:
        for accountant in ("pld", "rdp"):
            ledger.reserve(
                "churn",
                ROUND,
                budget_epsilon=10.0,
                delta=DELTA,
                max_grad_norm=1.0,
                accountant=accountant,
            )
        # Switching accountant can never lower the ε on record: the looser one counts.
        assert ledger.epsilon("churn", DELTA) == epsilon_for([ROUND, ROUND], DELTA)
        with pytest.raises(ValueError, match="unknown privacy accountant"):
            ledger.reserve(
                "churn", ROUND, budget_epsilon=10.0, delta=DELTA, max_grad_norm=1.0, accountant="x"
            )


def test_a_version_1_ledger_is_upgraded_and_its_segments_count_as_rdp(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as connection:  # the schema before accountants were named
        connection.executescript(
            """
            CREATE TABLE segments (
                id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, server_round INTEGER,
                sample_rate REAL NOT NULL, noise_multiplier REAL NOT NULL,
                planned_steps INTEGER NOT NULL, steps INTEGER NOT NULL,
                max_grad_norm REAL NOT NULL, budget_epsilon REAL NOT NULL, delta REAL NOT NULL,
                status TEXT NOT NULL, reserved_at TEXT NOT NULL, committed_at TEXT);
            INSERT INTO segments VALUES (1, 'churn', 1, 0.05, 1.5, 60, 60, 1.0, 8.0, 1e-5,
                                         'committed', '2026-01-01', '2026-01-01');
            PRAGMA user_version = 1;
            """
        )
    with PrivacyLedger(path) as ledger:
        [entry] = ledger.entries("churn")
        assert entry.accountant == "rdp"
        assert ledger.epsilon("churn", DELTA) == epsilon_for([ROUND], DELTA)


def test_a_row_naming_an_unknown_accountant_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with PrivacyLedger(path) as ledger:
        reserve_round(ledger, budget=10.0)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE segments SET accountant = 'guesswork'")
    with PrivacyLedger(path) as ledger, pytest.raises(LedgerError, match="unknown accountant"):
        ledger.epsilon("recommender", DELTA)


RELEASE = [DPSegment(1.0, 4.0, 3, "discrete-gaussian", 100)]


def reserve_evaluation(ledger: PrivacyLedger, run: str = "run-1", **overrides):
    arguments = {
        "purpose": "evaluation",
        "budget_epsilon": 50.0,
        "delta": DELTA,
        "accountant": "pld",
        "run": run,
        "facts_digest": "f" * 64,
    } | overrides
    return ledger.reserve_release("recommender", RELEASE, **arguments)


def test_a_release_counts_from_its_reservation_and_keeps_its_answer(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "ledger.sqlite") as ledger:
        reserve_round(ledger, budget=50.0)
        training = ledger.epsilon("recommender", DELTA)
        record = reserve_evaluation(ledger)
        reserved = ledger.epsilon("recommender", DELTA)
        assert reserved > training  # counted before any noise is drawn
        recorded = ledger.record_release(record, {"ndcg-sum": 12.5})
        assert recorded.answer == {"ndcg-sum": 12.5}
        with pytest.raises(LedgerError, match="already recorded"):
            ledger.record_release(record, {"ndcg-sum": 1.0})
        assert ledger.epsilon("recommender", DELTA) == reserved
        [release] = ledger.releases("recommender", run="run-1", purpose="evaluation")
        assert (release.answer, release.facts_digest) == ({"ndcg-sum": 12.5}, "f" * 64)
        purposes = [entry.purpose for entry in ledger.entries("recommender")]
        assert purposes == ["training", "evaluation"]
    # The DP-SGD steps and the release compose in one accountant; the model's segments name
    # two, so the larger ε of the two is on record.
    segments = [ROUND, *RELEASE]
    both = [create_accountant(name).epsilon(segments, DELTA) for name in ("rdp", "pld")]
    assert reserved == pytest.approx(max(both))


def test_a_release_beyond_the_cap_or_the_runs_limits_is_refused(tmp_path: Path) -> None:
    with PrivacyLedger(tmp_path / "ledger.sqlite") as ledger:
        with pytest.raises(BudgetExceeded):
            reserve_evaluation(ledger, budget_epsilon=0.5)
        limit = (2, 100.0)
        reserve_evaluation(ledger, run_limit=limit)
        reserve_evaluation(ledger, run_limit=limit)
        with pytest.raises(ReleaseLimit, match="2 evaluation release"):
            reserve_evaluation(ledger, run_limit=limit)
        reserve_evaluation(ledger, run="run-2", run_limit=limit)  # another run: its own limit
        one = create_accountant("pld").epsilon(RELEASE, DELTA)
        reserve_evaluation(ledger, run="run-3", run_limit=(9, one * 1.2))
        with pytest.raises(ReleaseLimit, match="would spend"):
            reserve_evaluation(ledger, run="run-3", run_limit=(9, one * 1.2))
        assert len(ledger.releases("recommender")) == 4


def test_a_version_3_ledger_is_upgraded_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with sqlite3.connect(path) as connection:  # the schema before releases
        connection.executescript(
            """
            CREATE TABLE segments (
                id INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, server_round INTEGER,
                sample_rate REAL NOT NULL, noise_multiplier REAL NOT NULL,
                planned_steps INTEGER NOT NULL, steps INTEGER NOT NULL,
                max_grad_norm REAL NOT NULL, budget_epsilon REAL NOT NULL, delta REAL NOT NULL,
                status TEXT NOT NULL, reserved_at TEXT NOT NULL, committed_at TEXT,
                accountant TEXT NOT NULL DEFAULT 'rdp', run TEXT);
            CREATE INDEX segments_by_model ON segments (model, id);
            CREATE TABLE policies (id INTEGER PRIMARY KEY AUTOINCREMENT, set_at TEXT NOT NULL,
                set_by TEXT NOT NULL, reason TEXT NOT NULL, policy TEXT NOT NULL);
            INSERT INTO segments VALUES (1, 'churn', 1, 0.05, 1.5, 60, 60, 1.0, 8.0, 1e-5,
                                         'committed', '2026-01-01', '2026-01-01', 'rdp', 'r');
            PRAGMA user_version = 3;
            """
        )
    with PrivacyLedger(path) as ledger:
        [entry] = ledger.entries("churn")
        assert (entry.purpose, entry.run, entry.segment) == ("training", "r", ROUND)
        assert ledger.epsilon("churn", DELTA) == epsilon_for([ROUND], DELTA)
        reserve_evaluation(ledger)  # the new tables work
