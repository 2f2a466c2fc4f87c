"""``python -m lab tune``: seeded draws, a real centralized search on small data, its table and
chosen entry, and that the test split never changes a trial's score."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from lab import cli
from lab.tuning import (
    CHOSEN_JSON,
    FEDERATED_ROUNDS,
    TRIALS_CSV,
    TRIALS_MARKDOWN,
    Trial,
    best_trial,
    tune,
)
from lab.tuning_space import draw_trials
from models import schema
from models.churn.protocol import churn_cutoff
from models.settings_per_epsilon import NON_PRIVATE, load_entries, settings_for
from models.study import search_space, validation_note
from privacy.ledger import PrivacyLedger
from simulations.storefronts import prepare_storefronts
from simulations.synthetic import generate_orders
from tests.test_validation_protocols import scrambled_test_invoices

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `python -m lab tune` does: tiny models, busy cores
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return generate_orders(n_storefronts=2, n_customers=160, n_items=40, seed=5)


def test_draws_start_with_the_current_settings_and_are_seeded() -> None:
    current = settings_for("churn", "centralized", 3.0).settings
    draws = draw_trials("churn", "centralized", current, 6, seed=1)
    assert draws[0] == current
    assert draws == draw_trials("churn", "centralized", current, 6, seed=1)
    assert draws != draw_trials("churn", "centralized", current, 6, seed=2)
    assert len({json.dumps(d, sort_keys=True) for d in draws}) == 6
    space = search_space("churn", "centralized", private=True)
    for draw in draws[1:]:
        assert all(draw[key] in values for key, values in space.items())
    # A space smaller than the trials asked for is tried whole, once.
    tiny = search_space("churn", "federated", private=True)
    size = 1
    for values in tiny.values():
        size *= len(values)
    everything = draw_trials("churn", "federated", {"local-epochs": 0}, size + 10, seed=0)
    assert len(everything) == size + 1


def test_a_search_can_vary_some_settings_and_hold_the_rest() -> None:
    current = settings_for("recommender", "federated", 8.0).settings
    draws = draw_trials("recommender", "federated", current, 10, seed=0, vary=["target-window"])
    windows = search_space("recommender", "federated", private=True)["target-window"]
    assert draws[0] == current
    assert sorted(map(str, (d["target-window"] for d in draws))) == sorted(map(str, windows))
    held = [{k: v for k, v in d.items() if k != "target-window"} for d in draws]
    assert all(settings == held[0] for settings in held)
    with pytest.raises(ValueError, match="vary one or more of .*got hidden-size"):
        draw_trials("recommender", "federated", current, 4, seed=0, vary=["hidden-size"])


def _churn_trial(number: int, roc_auc: float, brier: float) -> Trial:
    seeds = [{"roc-auc": roc_auc, "brier": brier, "churn-rate": 0.4}] * 2
    return Trial(number, {"learning-rate": number}, seeds, "roc-auc", 1.0)


def test_churn_is_chosen_among_trials_that_beat_the_base_rates_brier() -> None:
    base = 0.4 * 0.6  # forecasting the churn rate 0.4 for everyone
    sharp_but_miscalibrated = _churn_trial(0, roc_auc=0.76, brier=base + 0.01)
    calibrated = _churn_trial(1, roc_auc=0.74, brier=base - 0.01)
    also_calibrated = _churn_trial(2, roc_auc=0.73, brier=base - 0.03)
    assert calibrated.base_rate_brier == pytest.approx(base)
    assert [t.calibrated for t in (sharp_but_miscalibrated, calibrated)] == [False, True]
    assert best_trial([sharp_but_miscalibrated, calibrated, also_calibrated]) is calibrated
    # with no calibrated trial, the best of all; a model without Brier is never held back
    assert best_trial([sharp_but_miscalibrated, _churn_trial(3, 0.7, 0.3)]).number == 0
    ndcg = Trial(0, {}, [{"ndcg@10": 0.2}], "ndcg@10", 1.0)
    assert ndcg.calibrated and ndcg.brier is None


def test_a_centralized_search_runs_and_writes_its_table(small, tmp_path: Path) -> None:
    result = tune(
        small,
        model="recommender",
        mode="centralized",
        epsilon=3.0,
        trials=3,
        seed=0,
        out_dir=tmp_path,
        data="synthetic",
    )
    scores = [trial.score for trial in result.trials]
    assert len(scores) == 3 and all(0 < score <= 1 for score in scores)
    assert result.trials[0].settings == settings_for("recommender", "centralized", 3.0).settings
    best = max(result.trials, key=lambda trial: (trial.score, -trial.number))
    chosen = result.chosen
    assert chosen.settings == best.settings
    assert chosen.validation_score == round(best.score, 4)
    assert chosen.chosen_on == validation_note("recommender") and chosen.trials == 3
    assert chosen.seeds == [0] and "trial 0 was the entry before (" in chosen.note
    table = pd.read_csv(tmp_path / TRIALS_CSV)
    assert table["trial"].tolist() == [0, 1, 2]
    assert table["ndcg@10"].tolist() == [round(score, 4) for score in scores]
    assert table["chosen"].tolist() == [trial is best for trial in result.trials]
    assert "| trial | local-epochs |" in (tmp_path / TRIALS_MARKDOWN).read_text()
    entry = json.loads((tmp_path / CHOSEN_JSON).read_text())
    assert entry["settings"] == best.settings and entry["chosen-on"].startswith("validation")
    # The same seed gives the same search, number for number.
    again = tune(
        small,
        model="recommender",
        mode="centralized",
        epsilon=3.0,
        trials=3,
        seed=0,
        out_dir=tmp_path / "again",
        data="synthetic",
    )
    assert [trial.score for trial in again.trials] == scores


def test_the_test_split_never_changes_a_trial(small, tmp_path: Path) -> None:
    # Recommender: scramble every test invoice; churn: everyone buys again after the test
    # cutoff (its last timestamp stays). The validation scores stay the same to the bit.
    test_cutoff = churn_cutoff(small)
    everyone = small.drop_duplicates(schema.CUSTOMER).assign(
        **{schema.TIMESTAMP: test_cutoff + pd.Timedelta(days=1), schema.IS_RETURN: False}
    )
    changed = {
        "recommender": scrambled_test_invoices(small),
        "churn": pd.concat([small, everyone], ignore_index=True),
    }
    for model, other in changed.items():
        scores = []
        for number, frame in enumerate((small, other)):
            result = tune(
                frame,
                model=model,
                mode="centralized",
                epsilon=8.0,
                trials=2,
                seed=3,
                out_dir=tmp_path / f"{model}-{number}",
                data="synthetic",
            )
            scores.append([trial.score for trial in result.trials])
        assert scores[0] == scores[1], model


def test_the_command_tunes_a_split_and_leaves_the_settings_file_alone(
    small, tmp_path: Path, capsys
) -> None:
    split = tmp_path / "split"
    prepare_storefronts(small, split)
    before = load_entries()
    code = cli.main(
        [
            *("tune", "--model", "churn", "--mode", "centralized", "--epsilon", "1"),
            *("--trials", "2", "--storefronts", str(split), "--out", str(tmp_path / "out")),
            *("--seed", "4", "--repeats", "2"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# churn, centralized, ε = 1: 2 trials")
    chosen = json.loads((tmp_path / "out" / CHOSEN_JSON).read_text())
    assert chosen["data"].startswith("storefronts") and chosen["seeds"] == [4, 5]
    table = pd.read_csv(tmp_path / "out" / TRIALS_CSV)
    assert (table["spread"] > 0).all()  # two training seeds, two scores per trial
    # churn's table shows each trial's calibration against the base rate's Brier
    assert (table["calibrated"] == (table["brier"] < table["base-rate brier"])).all()
    assert table["base-rate brier"].between(0.05, 0.25).all()
    if table["calibrated"].any():
        assert table.loc[table["chosen"], "calibrated"].all()
    assert load_entries() == before  # only --write-settings records the choice


def test_a_federated_search_trains_every_trial_and_seed_with_fresh_site_budgets(
    tmp_path: Path,
) -> None:
    frame = generate_orders(n_storefronts=2, n_customers=600, n_items=40, seed=5)
    for model, seeds in (("churn", [3, 4]), ("recommender", [3])):
        result = tune(
            frame,
            model=model,
            mode="federated",
            epsilon=8.0,
            trials=2,
            seed=3,
            out_dir=tmp_path / model,
            data="synthetic",
            repeats=len(seeds),
        )
        assert [trial.number for trial in result.trials] == [0, 1]
        assert all(len(trial.scores) == len(seeds) for trial in result.trials)
        assert all(0 < score <= 1 for trial in result.trials for score in trial.scores)
        assert result.trials[0].settings == settings_for(model, "federated", 8.0).settings
        assert f"{FEDERATED_ROUNDS} rounds, training seeds 3..{seeds[-1]}" in result.chosen.note
        assert result.chosen.seeds == seeds
        # one run directory (with the sites' own ledgers) per trial and seed
        runs = {
            str(path.relative_to(tmp_path / model))
            for path in (tmp_path / model).glob("trial-*/seed-*")
        }
        assert runs == {f"trial-{t}/seed-{s}" for t in (0, 1) for s in seeds}
        if len(seeds) > 1:  # the simulation seed reaches the sites
            assert result.trials[0].scores[0] != result.trials[0].scores[1]


def test_the_non_private_settings_are_searched_without_dp(small, tmp_path: Path) -> None:
    # centralized: the ε = 0 entry first, then draws from the non-private space
    result = tune(
        small,
        model="churn",
        mode="centralized",
        epsilon=NON_PRIVATE,
        trials=3,
        seed=1,
        out_dir=tmp_path / "centralized",
        data="synthetic",
    )
    space = search_space("churn", "centralized", private=False)
    assert result.trials[0].settings == settings_for("churn", "centralized", 0.0).settings
    for trial in result.trials[1:]:
        assert all(trial.settings[key] in values for key, values in space.items())
    assert result.chosen.epsilon == NON_PRIVATE and all(t.brier for t in result.trials)
    # federated: the simulated sites consent to no DP, and no DP step is recorded
    federated = tune(
        generate_orders(n_storefronts=2, n_customers=600, n_items=40, seed=5),
        model="recommender",
        mode="federated",
        epsilon=NON_PRIVATE,
        trials=2,
        seed=2,
        out_dir=tmp_path / "federated",
        data="synthetic",
        vary=["target-window"],
    )
    first, second = (trial.settings for trial in federated.trials)
    assert first == settings_for("recommender", "federated", 0.0).settings
    assert {k: v for k, v in second.items() if k != "target-window"} == {
        k: v for k, v in first.items() if k != "target-window"
    }
    assert second["target-window"] != first["target-window"]
    assert all(0 < trial.score <= 1 for trial in federated.trials)
    assert "--epsilon 0 --trials 2 --seed 2 --vary target-window:" in federated.chosen.note
    ledgers = list((tmp_path / "federated").glob("trial-*/seed-*/sites/*/*.sqlite"))
    assert len(ledgers) == 4  # two sites, two trials
    for ledger_file in ledgers:
        with PrivacyLedger(ledger_file) as ledger:  # no DP-SGD step, only releases
            assert ledger.policy().dp_required is False
            for model in ledger.models():
                assert {e.purpose for e in ledger.entries(model)} <= {"cohort", "evaluation"}


def test_a_search_needs_at_least_one_seed(small, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        tune(
            small,
            model="churn",
            mode="federated",
            epsilon=3.0,
            trials=2,
            seed=0,
            out_dir=tmp_path,
            data="synthetic",
            repeats=0,
        )
