"""Site-side privacy gate: σ calibrated for the whole plan, budget reserved before training."""

from flwr.app import Error

from clients import messages as wire
from clients.site_task import LEDGER_FILE, plan_dp, reserve_round
from privacy.accountant import epsilon_for
from privacy.ledger import PrivacyLedger, Reservation


def test_plan_spends_the_budget_in_exactly_the_planned_rounds(tmp_path):
    plan = plan_dp(
        n_customers=200, batch_size=32, local_epochs=2, planned_rounds=3, epsilon_budget=3.0
    )
    assert plan.sample_rate == 1 / 7 and plan.delta == 1e-5  # min(1e-5, 1/(10*200))
    assert plan.steps_per_round == 2 * 7
    reservations = [
        reserve_round(tmp_path, "churn", plan, max_grad_norm=1.0, server_round=r) for r in (1, 2, 3)
    ]
    assert all(isinstance(r, Reservation) for r in reservations)
    spent = epsilon_for([plan.round_segment] * 3, plan.delta)
    assert 0.99 * 3.0 <= spent <= 3.0
    with PrivacyLedger(tmp_path / LEDGER_FILE) as ledger:
        assert ledger.epsilon("churn", plan.delta) == spent  # the ledger is the source of truth

    fourth = reserve_round(tmp_path, "churn", plan, max_grad_norm=1.0, server_round=4)
    assert isinstance(fourth, Error)
    assert fourth.code == wire.DECLINED_BUDGET_EXHAUSTED
    assert fourth.reason.startswith("privacy-budget-exhausted: ")
    # The other model has its own history and budget.
    assert isinstance(
        reserve_round(tmp_path, "recommender", plan, max_grad_norm=1.0, server_round=1), Reservation
    )


def test_unreadable_ledger_fails_closed(tmp_path):
    (tmp_path / LEDGER_FILE).write_bytes(b"this is not a database" * 100)
    plan = plan_dp(
        n_customers=50, batch_size=10, local_epochs=1, planned_rounds=2, epsilon_budget=1.0
    )
    result = reserve_round(tmp_path, "churn", plan, max_grad_norm=1.0, server_round=1)
    assert isinstance(result, Error) and result.code == wire.DECLINED_BUDGET_EXHAUSTED
