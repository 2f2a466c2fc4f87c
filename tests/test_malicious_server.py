"""A hostile central team against a deployed site: every message below is built by hand the
way a malicious server would, and answered by the site's real handlers
(:func:`clients.client_app.train`, :func:`clients.client_app.evaluate`) on a real prepared
site with its policy and ledger on disk.

The four attacks an audit of the honest-server design found, and what each now learns:

1. evaluation as an exact query the server programs (crafted churn weights that single
   out the top spender): answers are noisy releases, rationed per run and accounted, and
   the attack tells the site with the customer from the site without them no better than
   the stated noise allows;
2. non-finite traps: weights that could overflow are refused before anything is reserved,
   and an update is finite whether or not a given customer is in the data;
3. cohort-shaping facts: facts outside the policy's bounds are refused, a run's facts are
   fixed by its first message, cohort sizes leave only noisy, and a refusal below the
   minimum cohort reads the same whatever the count;
4. δ shaped by the cohort: δ is the policy's, whatever the facts, and under any sequence
   of the messages tried the site's lifetime ε at its own δ stays within its cap.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from scipy.stats import norm

from clients import client_app
from clients.site_privacy import data_period, ensure_default_policy
from common import wire
from lab.sequential import server_message
from models import schema
from models.churn import model as churn
from models.churn.protocol import FEATURES, churn_features
from privacy.ledger import LEDGER_FILE, PrivacyLedger
from privacy.planning import accounting_delta
from privacy.policy import SitePolicy, from_settings
from server.server_app import ModelRun, plan_models
from simulations.runner import app_run_config
from simulations.shared_facts import with_split_facts
from simulations.storefronts import prepare_storefronts
from simulations.synthetic import generate_orders

STOREFRONT = "storefront-0"


def prepared_site(frame: pd.DataFrame, directory: Path, **policy) -> Path:
    """A deployed site's prepared directory for ``frame``: its orders and the policy its
    ``prepare`` writes, changed by ``policy`` (field names)."""
    prepare_storefronts(frame, directory)
    site = directory / STOREFRONT
    ensure_default_policy(site, set_by="fedshop-site prepare")
    if policy:
        with PrivacyLedger(site / LEDGER_FILE) as ledger:
            changed = from_settings(ledger.policy(), policy)
            ledger.set_policy(changed, set_by="dpo@test", reason="test policy")
    return site


def context(site: Path, run: int, run_config: dict) -> Context:
    node = {"data-path": str(site), "storefront": "Testland"}
    return Context(run, 1, node, RecordDict(), run_config)


def arrays(weights: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.asarray(value)) for name, value in weights.items()})


def evaluate(run: ModelRun, weights, ctx: Context, **config) -> Message:
    message = server_message(
        run.content(arrays(weights), {**run.evaluate_config, **config}), "evaluate", 1
    )
    return client_app.evaluate(message, ctx)


def train(run: ModelRun, weights, ctx: Context, epsilon: float = 3.0, **config) -> Message:
    settings = {
        **run.train_config,
        wire.EPSILON_BUDGET: epsilon,
        wire.SERVER_ROUND: 1,
        wire.UPDATE_ENCODING: "float32",
        **config,
    }
    return client_app.train(server_message(run.content(arrays(weights), settings), "train", 1), ctx)


def ledger_of(site: Path) -> PrivacyLedger:
    return PrivacyLedger(site / LEDGER_FILE)


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """One storefront of 400 synthetic customers (data set D), the same without its top
    spender (D'; a held-out churn customer at this seed), both prepared with the default
    policy, and the run config whose facts (catalogue, churn cutoff) both receive."""
    root = tmp_path_factory.mktemp("hostile")
    frame = generate_orders(n_storefronts=1, n_customers=400, n_items=60, seed=19)
    split = root / "split"
    prepare_storefronts(frame, split)
    run_config = {**app_run_config(), "storefronts-dir": str(split), "run-dir": str(root / "r")}
    runs = {run.model.name: run for run in plan_models(with_split_facts(run_config))}
    cutoff = pd.Timestamp(runs["churn"].facts[churn.CUTOFF])
    target = churn_features(frame, cutoff)["monetary"].idxmax()
    data = churn.MODEL.site_data(frame, runs["churn"].facts)
    assert target in data.evaluation.labels.index
    without = frame[frame[schema.CUSTOMER] != target]
    return root, frame, without, target, cutoff, run_config, runs


def step_weights(frame: pd.DataFrame, cutoff: pd.Timestamp, target: str) -> dict[str, np.ndarray]:
    """The audit's crafted churn weights: logit = A·relu(z_monetary − t) − 30, with t between
    the target's standardised log spend and the next highest, so only the target scores
    near 1 and everyone else near 0."""
    features = churn_features(frame, cutoff)
    column = FEATURES.index("monetary")
    z = (np.log1p(features["monetary"]) - churn.LOG_FEATURE_MEAN[column]) / churn.LOG_FEATURE_STD[
        column
    ]
    top, second = float(z.loc[target]), float(z.drop(target).max())
    threshold = (top + second) / 2
    slope = min(60.0 / (top - threshold), churn.MODEL.max_abs_weight)
    module = churn.ChurnModel()
    weights = {name: np.zeros_like(value.numpy()) for name, value in module.state_dict().items()}
    weights["hidden.weight"][0, column] = 1.0
    weights["hidden.bias"][0] = -threshold
    weights["output.weight"][0, 0] = slope
    weights["output.bias"][0] = -30.0
    return weights


def top_cells(answer: dict) -> float:
    """The attack's statistic: customers in the two highest-probability cells."""
    histogram = answer[churn.SCORE_HISTOGRAM]
    return float(histogram[churn.SCORE_CELLS - 1] + histogram[2 * churn.SCORE_CELLS - 1])


def test_the_crafted_weights_would_single_out_the_target_exactly(federation) -> None:
    """Without the release mechanism the attack works: the exact top cells hold exactly the
    target in D and nobody in D' (so the tests below measure the mechanism, not a dud)."""
    _, frame, without, target, cutoff, _, runs = federation
    weights = step_weights(frame, cutoff, target)
    module = churn.ChurnModel()
    module.load_state_dict({k: __import__("torch").from_numpy(v) for k, v in weights.items()})
    exact = []
    for orders in (frame, without):
        data = churn.MODEL.site_data(orders, runs["churn"].facts)
        values = churn.MODEL.evaluation_values(module, data.evaluation)
        histogram = np.bincount(values[churn.SCORE_HISTOGRAM].astype(int), minlength=20)
        exact.append(top_cells({churn.SCORE_HISTOGRAM: histogram}))
    assert exact == [1.0, 0.0]


def test_evaluations_are_rationed_per_run_and_each_is_a_ledger_release(federation) -> None:
    """The audit's 41-message binary search in one run: the site answers at most its
    policy's evaluations per run, within its evaluation ε, each recorded before it left."""
    root, frame, _, target, cutoff, run_config, runs = federation
    site = prepared_site(frame, root / "rationed")
    weights = step_weights(frame, cutoff, target)
    replies = [
        evaluate(
            runs["churn"], weights, context(site, 7, run_config), **{wire.PLANNED_EVALUATIONS: 41}
        )
        for _ in range(41)
    ]
    answered = [reply for reply in replies if not reply.has_error()]
    policy = SitePolicy()
    assert len(answered) == policy.max_evaluations_per_run
    for reply in replies:
        if reply.has_error():
            assert reply.error.code == wire.DECLINED_POLICY
            assert "evaluation release(s) the policy allows" in reply.error.reason
    with ledger_of(site) as ledger:
        released = ledger.releases("churn", run="7", purpose="evaluation")
        entries = ledger.entries("churn")
        delta = accounting_delta(ledger.policy(), entries)
    assert [r.answer[churn.SCORE_HISTOGRAM] for r in released] == [
        list(reply.content[wire.METRICS][churn.SCORE_HISTOGRAM]) for reply in answered
    ]
    last = answered[-1].content[wire.METRICS]
    assert last[wire.EVALUATION_EPSILON] <= policy.evaluation_epsilon
    assert last[wire.EVALUATION_EPSILON] >= 0.99 * policy.evaluation_epsilon
    from privacy.ledger import ledger_epsilon

    assert last[wire.EPSILON] == pytest.approx(ledger_epsilon(entries, delta))
    assert delta == ledger_of(site).__enter__().policy().delta


@pytest.mark.slow
def test_the_attack_tells_the_site_with_the_target_from_the_site_without_no_better_than_the_noise(
    federation,
) -> None:
    """Neighbouring sites D (with the target) and D' (without) answer the crafted evaluation
    in 150 fresh runs each. Bound checked: for every threshold τ on the attack's statistic,
    P_D[stat ≥ τ] ≤ e^ε · P_D'[stat ≥ τ] + δ (and the other way round), ε being the run's
    releases composed by the site's ledger — and the attack's best advantage is no more
    than a shift of one customer in a cell with the stated noise allows."""
    root, frame, without, target, cutoff, run_config, runs = federation
    weights = step_weights(frame, cutoff, target)
    policy = {"epsilon_cap": 1e6}  # each trial a fresh run; the cap is not what is tested
    templates = {
        "D": prepared_site(frame, root / "with", **policy),
        "D'": prepared_site(without, root / "without", **policy),
    }
    trials = 150
    statistic: dict[str, list[float]] = {"D": [], "D'": []}
    for name, template in templates.items():
        for trial in range(trials):
            site = root / f"trial-{name}-{trial}"
            shutil.copytree(template, site)
            reply = evaluate(runs["churn"], weights, context(site, 100 + trial, run_config))
            assert not reply.has_error(), reply.error.reason
            statistic[name].append(top_cells(reply.content[wire.METRICS]))
            noise = reply.content[wire.METRICS][wire.NOISE_SD]
            shutil.rmtree(site)
    with ledger_of(templates["D"]) as ledger:
        delta = ledger.policy().delta
    run_epsilon = _one_run_epsilon(templates["D"], runs, weights, run_config, delta)
    with_target, without_target = np.array(statistic["D"]), np.array(statistic["D'"])
    slack = 4 * math.sqrt(0.25 / trials)
    for threshold in np.arange(-6.5, 8.5, 1.0):
        p, q = (with_target >= threshold).mean(), (without_target >= threshold).mean()
        assert p <= math.exp(run_epsilon) * q + delta + slack
        assert 1 - q <= math.exp(run_epsilon) * (1 - p) + delta + slack
    # The best threshold test against a shift of 1 in a sum of two cells of noise sd z.
    advantage = max(
        (with_target >= t).mean() - (without_target >= t).mean() for t in np.arange(-6.5, 8.5, 1.0)
    )
    gaussian = 2 * norm.cdf(1 / (2 * noise * math.sqrt(2))) - 1
    assert advantage <= gaussian + slack
    # On average the releases do differ by the one customer, as their noise allows.
    shift = with_target.mean() - without_target.mean()
    assert abs(shift - 1.0) < 4 * noise * math.sqrt(2) * math.sqrt(2 / trials)


def _one_run_epsilon(site: Path, runs, weights, run_config, delta: float) -> float:
    """ε of one run's releases (cohort sizes and one evaluation), as the ledger composes them."""
    from privacy.ledger import ledger_epsilon

    fresh = site.parent / "epsilon-of-a-run"
    shutil.copytree(site, fresh)
    with ledger_of(fresh) as ledger:
        before = len(ledger.entries("churn"))
    evaluate(runs["churn"], weights, context(fresh, 999, run_config))
    with ledger_of(fresh) as ledger:
        entries = ledger.entries("churn")[before:]
    return ledger_epsilon(entries, delta)


def test_weights_a_server_crafts_are_refused_before_anything_is_reserved(federation) -> None:
    root, frame, _, target, cutoff, run_config, runs = federation
    site = prepared_site(frame, root / "weights")
    good = step_weights(frame, cutoff, target)
    trap = {**good, "output.weight": good["output.weight"] * 1e30}  # overflows for the target
    cases = {
        "not finite": {**good, "hidden.bias": good["hidden.bias"] + np.nan},
        "exceeds the largest magnitude": trap,
        "has shape": {**good, "hidden.weight": np.zeros((3, 3), dtype=np.float32)},
        "differently from the model": {**good, "extra": np.zeros(1, dtype=np.float32)},
    }
    for phrase, weights in cases.items():
        for answer in (train, evaluate):
            reply = answer(runs["churn"], weights, context(site, 3, run_config))
            assert reply.error.code == wire.INVALID_INPUT
            assert phrase in reply.error.reason
    with ledger_of(site) as ledger:
        assert ledger.entries("churn") == [] and ledger.releases("churn") == []


def test_an_update_is_finite_whether_or_not_the_trap_customer_is_in_the_data(federation) -> None:
    """The strongest trap within the accepted magnitudes, in four alternating rounds at D
    and D': every update is finite and nobody refuses — finiteness says nothing about the
    target (the audit saw a NaN or a refusal exactly when the target was sampled)."""
    root, frame, without, target, cutoff, run_config, runs = federation
    trap = step_weights(frame, cutoff, target)
    trap["output.weight"][0, 0] = churn.MODEL.max_abs_weight
    trap["hidden.weight"][0, FEATURES.index("monetary")] = churn.MODEL.max_abs_weight
    sites = {
        "D": prepared_site(frame, root / "trap-with"),
        "D'": prepared_site(without, root / "trap-without"),
    }
    for round_number in range(1, 5):
        for name, site in sites.items():
            reply = train(
                runs["churn"], trap, context(site, 40 + round_number, run_config), epsilon=1.0
            )
            assert not reply.has_error(), (name, reply.error.reason)
            update = reply.content[wire.ARRAYS]
            assert all(np.isfinite(update[k].numpy()).all() for k in update)


def test_facts_outside_the_policy_are_refused_and_a_runs_facts_are_fixed(federation) -> None:
    root, frame, _, _, cutoff, run_config, runs = federation
    site = prepared_site(frame, root / "facts")
    run = runs["churn"]
    weights = run.model.initial_weights(run.facts)
    first_order = frame[schema.TIMESTAMP].min()
    for shaped in (first_order, frame[schema.TIMESTAMP].max() + pd.Timedelta(days=30)):
        hostile = ModelRun(run.model, {churn.CUTOFF: shaped.isoformat()}, *_configs(run))
        reply = train(hostile, weights, context(site, 5, run_config))
        assert reply.error.code == wire.DECLINED_POLICY
        assert "cutoff" in reply.error.reason and "this site's" in reply.error.reason
    with ledger_of(site) as ledger:
        assert ledger.entries("churn") == []  # refused before anything was reserved

    assert not train(run, weights, context(site, 6, run_config)).has_error()
    moved = ModelRun(
        run.model, {churn.CUTOFF: (cutoff - pd.Timedelta(days=20)).isoformat()}, *_configs(run)
    )
    reply = train(moved, weights, context(site, 6, run_config))
    assert reply.error.code == wire.INVALID_INPUT
    assert "changed within run 6" in reply.error.reason
    with ledger_of(site) as ledger:
        assert len(ledger.releases("churn", run="6", purpose="cohort")) == 1


def _configs(run: ModelRun) -> tuple[dict, dict]:
    return run.evaluate_config, run.train_config


def test_cohort_sizes_leave_only_noisy_and_refusals_do_not_say_by_how_much(federation) -> None:
    root, frame, _, _, _, run_config, runs = federation
    run = runs["churn"]
    weights = run.model.initial_weights(run.facts)
    site = prepared_site(frame, root / "sizes", epsilon_cap=1e6)  # 40 runs, one count each
    data = run.model.site_data(pd.read_parquet(site / schema.ORDERS_FILE), run.facts)
    # A train reply's num-examples is the run's released training count (the wire audit
    # ties it to the ledger); the evaluations of 40 runs show the released held-out counts.
    trained = train(run, weights, context(site, 199, run_config)).content[wire.METRICS]
    with ledger_of(site) as ledger:
        [released] = ledger.releases("churn", run="199", purpose="cohort")
    assert trained[wire.NUM_EXAMPLES] == int(released.answer["cohort"][0])
    sent = [
        evaluate(run, weights, context(site, 200 + trial, run_config)).content[wire.METRICS][
            wire.NUM_EXAMPLES
        ]
        for trial in range(40)
    ]
    exact = run.model.held_out_size(data.evaluation)
    noise = SitePolicy().cohort_noise
    assert len(set(sent)) > 5  # a fresh noisy count per run, never the exact size every time
    assert np.mean(sent) == pytest.approx(exact, abs=3 * noise / math.sqrt(40))
    assert np.std(sent) == pytest.approx(noise, rel=0.5)

    # Two sites below the minimum cohort, one with nobody at all: the same refusal.
    reasons = []
    for customers in (0, 6):
        small = frame[frame[schema.CUSTOMER].isin(frame[schema.CUSTOMER].unique()[:customers])]
        tiny = _tiny_site(small, frame, root / f"tiny-{customers}")
        reply = train(run, weights, context(tiny, 9, run_config))
        assert reply.error.code == wire.DECLINED_COHORT
        reasons.append(reply.error.reason)
    assert reasons[0] == reasons[1]
    assert re.findall(r"\d+", reasons[0]) == [str(SitePolicy().min_cohort)]


def _tiny_site(orders: pd.DataFrame, frame: pd.DataFrame, directory: Path) -> Path:
    """A site holding ``orders`` (perhaps none before the cutoff: one order line after it
    keeps the export non-empty), with the export period of the whole ``frame`` and cohort
    sizes noisy by three customers (so that both are below the minimum but in one run in a
    million)."""
    late = frame[frame[schema.TIMESTAMP] == frame[schema.TIMESTAMP].max()].head(1)
    return prepared_site(
        pd.concat([orders, late]), directory, data_period=data_period(frame), cohort_noise=3.0
    )


def test_delta_is_the_policys_whatever_the_cohort_the_facts_pick(federation) -> None:
    root, frame, _, _, cutoff, run_config, runs = federation
    site = prepared_site(frame, root / "delta", delta=1e-7)
    run = runs["churn"]
    weights = run.model.initial_weights(run.facts)
    earliest = pd.Timestamp(data_period(frame)[0], tz="UTC") + churn.CUTOFF_MARGIN
    deltas = []
    for number, moment in enumerate((cutoff, earliest + pd.Timedelta(days=1))):
        shaped = ModelRun(run.model, {churn.CUTOFF: moment.isoformat()}, *_configs(run))
        reply = train(shaped, weights, context(site, 300 + number, run_config), epsilon=2.0)
        if not reply.has_error():
            deltas.append(reply.content[wire.METRICS][wire.DELTA])
    assert deltas and set(deltas) == {1e-7}


def test_a_ledger_accounted_at_several_deltas_uses_the_smallest(tmp_path) -> None:
    from privacy.accountants import DPSegment

    with PrivacyLedger(tmp_path / "l.sqlite") as ledger:
        for delta in (1e-5, 1e-6):
            ledger.reserve(
                "churn",
                DPSegment(0.1, 1.0, 10),
                budget_epsilon=50,
                delta=delta,
                max_grad_norm=1.0,
                accountant="pld",
            )
        entries = ledger.entries("churn")
    assert accounting_delta(SitePolicy(delta=None), entries) == 1e-6
    assert accounting_delta(SitePolicy(delta=1e-7), entries) == 1e-7


def test_under_any_sequence_of_these_messages_the_lifetime_epsilon_stays_within_the_cap(
    federation,
) -> None:
    """40 messages a hostile server might send, drawn at random: train and evaluate, ε asked
    from 0.1 to 50, rounds and evaluations planned from 0 to 9, runs repeated and new,
    facts moved within the policy's window. After each, the model's ε at the policy's δ,
    recomputed from the ledger, is within the cap."""
    root, frame, _, _, cutoff, run_config, runs = federation
    cap = 3.0
    site = prepared_site(frame, root / "sequence", epsilon_cap=cap)
    run = runs["churn"]
    weights = run.model.initial_weights(run.facts)
    rng = np.random.default_rng(4)
    from privacy.ledger import ledger_epsilon

    for _ in range(40):
        moment = cutoff - pd.Timedelta(days=int(rng.integers(0, 60)))
        shaped = ModelRun(run.model, {churn.CUTOFF: moment.isoformat()}, *_configs(run))
        ctx = context(site, int(rng.integers(1, 6)), run_config)
        planned = {wire.PLANNED_EVALUATIONS: int(rng.integers(0, 10))}
        if rng.random() < 0.5:
            epsilon = float(rng.choice([0.1, 1.0, 3.0, 8.0, 50.0]))
            rounds = {wire.PLANNED_ROUNDS: int(rng.integers(1, 10))}
            train(shaped, weights, ctx, epsilon=epsilon, **rounds, **planned)
        else:
            evaluate(shaped, weights, ctx, **planned)
        with ledger_of(site) as ledger:
            entries = ledger.entries("churn")
            delta = accounting_delta(ledger.policy(), entries)
        assert ledger_epsilon(entries, delta) <= cap + 1e-9
