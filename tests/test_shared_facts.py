"""The facts the server shares with every site: one catalogue, one churn cutoff."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from models import schema
from models.churn.protocol import HORIZON
from models.recommender.protocol import CATALOGUE_COLUMNS, catalogue_of
from models.registry import get_model
from server.server_app import plan_models
from server.shared_facts import shared_facts
from simulations.runner import app_run_config
from simulations.shared_facts import FACTS_DIR, split_columns, split_facts, with_split_facts
from simulations.storefronts import prepare_storefronts
from simulations.synthetic import generate_orders

CHURN = get_model("churn")
RECOMMENDER = get_model("recommender")


def test_simulated_cutoff_is_the_whole_splits_last_timestamp_minus_the_horizon(
    tmp_path: Path,
) -> None:
    frame = generate_orders(n_storefronts=3, n_customers=120, n_items=50, seed=3)
    prepare_storefronts(frame, tmp_path / "split")
    facts = split_facts(CHURN, {}, tmp_path / "split")
    cutoff = pd.Timestamp(facts["cutoff"])
    assert cutoff == frame[schema.TIMESTAMP].max() - HORIZON
    # a small storefront's own last purchase is earlier: its own cutoff would differ
    per_storefront_last = frame.groupby(schema.STOREFRONT)[schema.TIMESTAMP].max()
    assert (per_storefront_last - HORIZON).min() < cutoff
    # the simulated catalogue is the whole split's, as the centralized protocol ranks it
    catalogue = split_facts(RECOMMENDER, {}, tmp_path / "split")
    assert catalogue == {"catalogue": catalogue_of(frame), "target-window": 1}


def test_declared_cutoff_is_normalised_to_utc_and_bad_values_are_refused() -> None:
    declared = shared_facts({"churn.cutoff": "2011-09-10T13:50:00+01:00"}, CHURN)["cutoff"]
    assert pd.Timestamp(declared) == pd.Timestamp("2011-09-10 12:50", tz="UTC")
    with pytest.raises(ValueError, match="churn.cutoff.*not an ISO-8601"):
        shared_facts({"churn.cutoff": "last tuesday"}, CHURN)
    with pytest.raises(ValueError, match="no churn.cutoff in the run config"):
        shared_facts({"storefronts-dir": "any/split"}, CHURN)  # the server reads no split


def test_declared_catalogue_file_is_read_and_a_bad_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.txt"
    path.write_text("20725\n\n84879\n22423\n")
    facts = shared_facts({"recommender.catalogue": str(path)}, RECOMMENDER)
    assert facts["catalogue"] == ["20725", "84879", "22423"]  # file order = output index
    path.write_text("20725\n20725\n")
    with pytest.raises(ValueError, match="lists an item id twice"):
        shared_facts({"recommender.catalogue": str(path)}, RECOMMENDER)
    with pytest.raises(ValueError, match="cannot read the item catalogue"):
        shared_facts({"recommender.catalogue": str(tmp_path / "missing.txt")}, RECOMMENDER)


def test_the_target_window_is_shared_in_run_config_spelling_and_bad_values_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "catalogue.txt"
    path.write_text("20725\n84879\n")
    declared = {"recommender.catalogue": str(path)}
    for value, shared in (("", 1), (1, 1), (3, 3), ("3", 3), ("all", "all")):
        facts = shared_facts({**declared, "recommender.target-window": value}, RECOMMENDER)
        assert facts["target-window"] == shared
    for bad in (0, -2, "2.5", "last", "²"):
        with pytest.raises(ValueError, match="target-window.*whole number >= 1 nor 'all'"):
            shared_facts({**declared, "recommender.target-window": bad}, RECOMMENDER)


def test_the_models_read_only_the_columns_their_facts_need(tmp_path: Path) -> None:
    frame = generate_orders(n_storefronts=4, n_customers=200, n_items=60, seed=5)
    prepare_storefronts(frame, tmp_path / "split")
    asked: list[tuple[str, ...]] = []

    def whole_split(columns=schema.COLUMNS) -> pd.DataFrame:
        asked.append(tuple(columns))
        return split_columns(str(tmp_path / "split"), columns)

    cutoff = CHURN.shared_facts({}, whole_split)["cutoff"]
    catalogue = RECOMMENDER.shared_facts({}, whole_split)["catalogue"]
    assert asked == [(schema.TIMESTAMP,), CATALOGUE_COLUMNS]
    assert pd.Timestamp(cutoff) == frame[schema.TIMESTAMP].max() - HORIZON
    assert catalogue == catalogue_of(frame)


def test_split_columns_reads_strings_as_categoricals_and_refuses_unknown_columns(
    tmp_path: Path,
) -> None:
    frame = generate_orders(n_storefronts=3, n_customers=90, n_items=40, seed=2)
    prepare_storefronts(frame, tmp_path / "split")
    read = split_columns(str(tmp_path / "split"), [schema.ITEM, schema.QUANTITY])
    assert list(read.columns) == [schema.ITEM, schema.QUANTITY]
    assert isinstance(read[schema.ITEM].dtype, pd.CategoricalDtype)
    # three files, one dictionary each, unified: every item keeps its id
    assert sorted(read[schema.ITEM].astype(str)) == sorted(frame[schema.ITEM])
    assert read[schema.QUANTITY].sum() == frame[schema.QUANTITY].sum()
    with pytest.raises(ValueError, match="no column.*colour"):
        split_columns(str(tmp_path / "split"), ["colour"])
    with pytest.raises(ValueError, match="holds no storefront"):
        split_columns(str(tmp_path), [schema.ITEM])


def test_a_simulation_declares_its_split_facts_in_the_run_config_the_server_reads(
    tmp_path: Path,
) -> None:
    frame = generate_orders(n_storefronts=3, n_customers=150, n_items=40, seed=7)
    prepare_storefronts(frame, tmp_path / "split")
    run_config = {
        **app_run_config(),
        "storefronts-dir": str(tmp_path / "split"),
        "run-dir": str(tmp_path / "run"),
        "epsilon": 8.0,
    }
    declared = with_split_facts(run_config)
    catalogue_file = tmp_path / "run" / FACTS_DIR / "recommender.catalogue.txt"
    assert declared["recommender.catalogue"] == str(catalogue_file)
    assert catalogue_file.read_text().split() == catalogue_of(frame)
    assert pd.Timestamp(declared["churn.cutoff"]) == frame[schema.TIMESTAMP].max() - HORIZON
    # a tuned setting that is also a fact stays the ServerApp's to fill from its entry
    assert declared["recommender.target-window"] == ""
    facts = {run.model.name: run.facts for run in plan_models(declared)}
    assert facts["recommender"]["catalogue"] == catalogue_of(frame)
    assert facts["churn"] == split_facts(CHURN, {}, tmp_path / "split")
    # what the run config already declares is left as it is
    mine = with_split_facts({**run_config, "churn.cutoff": "2011-06-01T00:00:00+00:00"})
    assert mine["churn.cutoff"] == "2011-06-01T00:00:00+00:00"
