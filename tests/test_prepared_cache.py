"""The sites' prepared-data cache: one process serves many sites across rounds without
re-reading their exports, re-reads an export that changed, and stays within its byte
budget; another process loads what the first prepared from the site's disk
(clients/prepared_cache.py, clients/prepared_store.py, clients/site_task.py)."""

import os

import numpy as np
import pandas as pd
import pytest
import torch

from clients import prepared_store, site_task
from clients.prepared_cache import ByteBudgetCache, estimated_bytes
from clients.prepared_store import load_or_prepare, prepared_file
from clients.site_data import load_orders, locate_site
from common import wire
from models import schema
from server.server_app import plan_models
from simulations.runner import app_run_config
from simulations.shared_facts import with_split_facts
from simulations.storefronts import prepare_storefronts
from simulations.synthetic import generate_orders

SITES = 12


def shared(facts: dict) -> site_task.SharedFacts:
    """Facts as a site holds them: with their digest, the cache's key."""
    return site_task.SharedFacts(facts, wire.facts_digest(facts))


@pytest.fixture
def many_sites(tmp_path):
    """A split of many small storefronts, and the churn model's shared facts for it."""
    frame = generate_orders(n_storefronts=SITES, n_customers=SITES * 60, n_items=20, seed=3)
    prepare_storefronts(frame, tmp_path / "split")
    run_config = {
        **app_run_config(),
        "models": "churn",
        "storefronts-dir": str(tmp_path / "split"),
        "run-dir": str(tmp_path / "run"),
    }
    (run,) = plan_models(with_split_facts(run_config))
    locations = [
        locate_site({"partition-id": site, "num-partitions": SITES}, run_config)
        for site in range(SITES)
    ]
    site_task.site_data_cache.clear()
    yield locations, run.model, shared(run.facts)
    site_task.site_data_cache.clear()


def test_one_process_serves_many_sites_for_many_rounds_reading_each_export_once(many_sites):
    locations, model, facts = many_sites
    first = [site_task.prepared_data(location, model, facts) for location in locations]
    for _ in range(3):  # later rounds: every site again, in the same order
        again = [site_task.prepared_data(location, model, facts) for location in locations]
        assert all(a[0] is b[0] for a, b in zip(first, again, strict=True))
    stats = site_task.site_data_cache.stats
    assert (stats.misses, stats.hits, stats.evictions) == (SITES, 3 * SITES, 0)
    assert len(site_task.site_data_cache) == SITES


def test_a_new_export_is_read_again_and_the_old_one_dropped(many_sites):
    locations, model, facts = many_sites
    location = locations[0]
    before, _ = site_task.prepared_data(location, model, facts)
    orders = load_orders(location)
    customers = orders[schema.CUSTOMER].unique()
    # The site's data team exports again, without a third of its customers.
    kept = orders[orders[schema.CUSTOMER].isin(customers[: 2 * len(customers) // 3])]
    stat = location.orders_file.stat()
    kept.to_parquet(location.orders_file, index=False)
    os.utime(location.orders_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    after, _ = site_task.prepared_data(location, model, facts)
    assert len(after.train) < len(before.train)
    assert site_task.site_data_cache.stats.misses == 2
    assert len(site_task.site_data_cache) == 1  # the old version is gone, not just shadowed
    assert site_task.prepared_data(location, model, facts)[0] is after


def test_other_shared_facts_are_another_entry(many_sites):
    locations, model, facts = many_sites
    site_task.prepared_data(locations[0], model, facts)
    cutoff = pd.Timestamp(facts.values["cutoff"]) - pd.Timedelta(days=30)
    earlier = shared({**facts.values, "cutoff": str(cutoff)})
    site_task.prepared_data(locations[0], model, earlier)
    assert site_task.site_data_cache.stats.misses == 2
    assert len(site_task.site_data_cache) == 2


def test_the_byte_budget_evicts_the_least_recently_used():
    tensor_bytes = estimated_bytes(torch.zeros(1000))
    assert tensor_bytes == 4000
    cache = ByteBudgetCache[torch.Tensor](budget_bytes=2 * tensor_bytes)
    for key in ("a", "b"):
        cache.get(key, 1, lambda: torch.zeros(1000))
    cache.get("a", 1, lambda: torch.ones(1000))  # a hit: "a" is now the most recent
    cache.get("c", 1, lambda: torch.zeros(1000))  # evicts "b"
    assert cache.stats.evictions == 1 and cache.bytes == 2 * tensor_bytes
    assert cache.get("a", 1, lambda: torch.ones(1000)).sum() == 0  # still the cached one
    assert cache.get("b", 1, lambda: torch.ones(1000)).sum() == 1000  # computed again
    # Larger than the whole budget: returned, never kept.
    assert cache.get("big", 1, lambda: torch.zeros(10_000)).numel() == 10_000
    assert len(cache) == 2 and cache.bytes == 2 * tensor_bytes


def test_sizes_count_buffers_of_tensors_arrays_and_frames():
    frame = pd.DataFrame({"x": np.zeros(1000)})
    nested = {"frame": frame, "array": np.zeros(500), "tensors": [torch.zeros(250)] * 2}
    size = estimated_bytes(nested)
    # the list holds one tensor twice: counted once
    assert 8000 + 4000 + 1000 <= size < 8000 + 4000 + 1000 + 2000


def _orders_unreadable(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the orders were read again")

    monkeypatch.setattr(site_task, "load_orders", refuse)


def _same_examples(a, b) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.train.tensors, b.train.tensors, strict=True)
    ) and a.evaluation.labels.equals(b.evaluation.labels)


def test_another_process_loads_the_prepared_data_from_the_sites_disk(many_sites, monkeypatch):
    locations, model, facts = many_sites
    first = [site_task.prepared_data(location, model, facts) for location in locations]
    stored = prepared_file(locations[0].ledger_dir, model.name)
    assert stored.is_file() and stored.stat().st_mode & 0o777 == 0o600
    site_task.site_data_cache.clear()  # as a fresh worker process starts
    _orders_unreadable(monkeypatch)
    again = [site_task.prepared_data(location, model, facts) for location in locations]
    for (before, name), (after, again_name) in zip(first, again, strict=True):
        assert after is not before and name == again_name and _same_examples(before, after)


def test_the_stored_data_serve_only_their_exact_inputs(many_sites, monkeypatch):
    locations, model, facts = many_sites
    location = locations[0]
    before, _ = site_task.prepared_data(location, model, facts)
    stored = prepared_file(location.ledger_dir, model.name)
    # other shared facts: prepared again from the orders, and the file replaced
    cutoff = pd.Timestamp(facts.values["cutoff"]) - pd.Timedelta(days=30)
    earlier = shared({**facts.values, "cutoff": str(cutoff)})
    site_task.site_data_cache.clear()
    other, _ = site_task.prepared_data(location, model, earlier)
    assert not _same_examples(before, other)
    site_task.site_data_cache.clear()
    _orders_unreadable(monkeypatch)
    assert _same_examples(site_task.prepared_data(location, model, earlier)[0], other)
    # other code preparing the data, or a file cut short: a miss, not an error
    monkeypatch.setattr(prepared_store, "_code_digest", lambda module: "other code")
    site_task.site_data_cache.clear()
    with pytest.raises(AssertionError, match="read again"):
        site_task.prepared_data(location, model, earlier)
    monkeypatch.undo()
    stored.write_bytes(stored.read_bytes()[:100])
    site_task.site_data_cache.clear()
    assert _same_examples(site_task.prepared_data(location, model, earlier)[0], other)
    assert len(stored.read_bytes()) > 100  # rewritten whole


def test_data_over_the_budget_are_not_stored(tmp_path):
    path = tmp_path / "prepared-big.pickle"
    value = load_or_prepare(path, ("a",), "models.churn.model", lambda: np.zeros(1000), 100)
    assert value.shape == (1000,) and not path.exists()
    load_or_prepare(path, ("a",), "models.churn.model", lambda: np.zeros(10), 100)
    assert path.is_file()
    assert load_or_prepare(path, ("a",), "models.churn.model", lambda: np.ones(10), 100).sum() == 0
    assert load_or_prepare(path, ("b",), "models.churn.model", lambda: np.ones(10), 100).sum() == 10
