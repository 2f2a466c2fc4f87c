"""A storefront's path from the delivered model to its systems, with real components only.

The shared real simulation (``synthetic_run`` in conftest.py: ``fedshop-sim run`` through
``flwr run``) delivers the final models to its simulated sites. A site then does what a
storefront does, through the installed console script: ``keygen``, ``prepare`` of its
export — here the storefront's orders without the next-basket protocol's test invoices,
so its history is exactly the federation's training history — ``install-model`` of the
run its simulated site received, and ``serve`` (uvicorn on loopback), called with a real
HTTP client. Processes are started in their own group and stopped by pid.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import SIMULATION_ROUNDS, SimulationRun
from in_process import read_rounds
from independent_accounting import matches_ledger_oracle

from common import flower_processes, wire
from models import metrics, schema
from models.recommender.protocol import clean_purchases, last_invoices, split_next_basket
from privacy.ledger import LEDGER_FILE, PrivacyLedger
from simulations.loopback_ports import free_port

pytestmark = pytest.mark.slow

SITE_CLI = str(Path(sys.executable).parent / "fedshop-site")
STOREFRONT = "storefront-0"  # the larger synthetic storefront
RUN = "run-one"  # the run directory "run 'one'", made safe as a folder name
RETURNS_ONLY = "returns-only"
"""A customer whose only order is a cancellation: known, without a purchase history."""
MAPPING = """customer = "CustomerID"
order = "InvoiceNo"
item = "StockCode"
quantity = "Quantity"
price = "UnitPrice"
timestamp = "InvoiceDate"
timezone = "UTC"
country = "Country"
return-order-prefix = "C"
product-code-regex = "[0-9]{5}"
"""


def site_cli(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [SITE_CLI, *map(str, args)], capture_output=True, text=True, timeout=300, check=False
    )
    assert not check or result.returncode == 0, result.stderr[-3000:]
    return result


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Site:
    """A storefront's prepared directory with the delivered run installed."""

    data: Path
    key: Path
    export: Path
    mapping: Path
    test_baskets: pd.Series
    """The protocol's held-out customers (by the site's own id) -> their test basket."""
    run_dir: Path


@pytest.fixture(scope="module")
def site(synthetic_run: SimulationRun, tmp_path_factory: pytest.TempPathFactory) -> Site:
    assert synthetic_run.result.returncode == 0, synthetic_run.result.stderr[-3000:]
    run_dir = synthetic_run.run_dir
    split_dir = Path(json.loads((run_dir / "config.json").read_text())["storefronts-dir"])
    orders = pd.read_parquet(split_dir / STOREFRONT / schema.ORDERS_FILE)
    test = pd.MultiIndex.from_frame(last_invoices(clean_purchases(orders)))
    kept = orders[~pd.MultiIndex.from_frame(orders[[schema.CUSTOMER, schema.ORDER]]).isin(test)]
    # the simulation's tokens play the storefront's own customer ids in its export
    rows = {
        "InvoiceNo": kept[schema.ORDER].tolist() + ["C999999"],
        "StockCode": kept[schema.ITEM].tolist() + [kept[schema.ITEM].iloc[0]],
        "Description": "free text, dropped at ingest",
        "Quantity": kept[schema.QUANTITY].tolist() + [-1],
        "InvoiceDate": kept[schema.TIMESTAMP].dt.strftime("%Y-%m-%d %H:%M:%S").tolist()
        + ["2011-06-01 10:00:00"],
        "UnitPrice": kept[schema.UNIT_PRICE].tolist() + [1.25],
        "CustomerID": kept[schema.CUSTOMER].tolist() + [RETURNS_ONLY],
        "Country": STOREFRONT,
    }
    root = tmp_path_factory.mktemp("storefront")
    export, mapping, key, data = (root / name for name in ("export.csv", "m.toml", "key", "site"))
    pd.DataFrame(rows).to_csv(export, index=False)
    mapping.write_text(MAPPING)
    site_cli("keygen", "--key", key)
    site_cli("prepare", export, "--mapping", mapping, "--key", key, "--out", data)
    # the storefront's own privacy ledger, as its simulated site kept it
    shutil.copy(run_dir / "sites" / STOREFRONT / LEDGER_FILE, data / LEDGER_FILE)
    installed = site_cli(
        "install-model", run_dir / "sites" / STOREFRONT / "models" / RUN, "--data", data
    )
    assert f"installed model run '{RUN}'" in installed.stdout
    test_baskets = split_next_basket(orders).test_baskets
    return Site(data, key, export, mapping, test_baskets, run_dir)


@dataclass(frozen=True)
class Server:
    """A running ``fedshop-site serve`` and a client that sends its token."""

    url: str
    token: str
    log: Path

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@contextmanager
def running_server(site: Site, data: Path) -> Iterator[Server]:
    """``fedshop-site serve`` on the prepared directory ``data``, up until the block ends;
    stopped by its pid."""
    port = free_port()
    log = data.parent / f"serve-{port}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [SITE_CLI, "serve", "--data", str(data), "--key", str(site.key), "--port", str(port)]
            + ["--own-ids", str(site.export), "--mapping", str(site.mapping)],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while not _healthy(url):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"serve did not start:\n{log.read_text()}"
            time.sleep(0.3)
        yield Server(url, (data / "api-token").read_text().strip(), log)
    finally:
        flower_processes.stop(process, timeout=15)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def served(site: Site) -> Iterator[Server]:
    """One server on the prepared site, shared by the read-only tests."""
    with running_server(site, site.data) as server:
        yield server


def test_every_simulated_site_holds_the_final_models_with_the_servers_checksums(
    synthetic_run: SimulationRun,
) -> None:
    run_dir = synthetic_run.run_dir
    bundle = run_dir / "bundle"
    manifest = json.loads((bundle / wire.MANIFEST).read_text())
    delivery = json.loads((run_dir / "delivery.json").read_text())
    slugs = sorted(p.name for p in (run_dir / "sites").iterdir())
    assert delivery == {"sent": len(slugs), "installed": slugs, "failed": []}
    for slug in slugs:
        site_dir = run_dir / "sites" / slug
        installed = site_dir / "models" / RUN
        assert (site_dir / "models" / "current").read_text() == f"{RUN}\n"
        assert (installed / wire.MANIFEST).read_bytes() == (bundle / wire.MANIFEST).read_bytes()
        for entry in manifest[wire.MANIFEST_MODELS].values():
            assert entry[wire.ROUNDS_DONE] == SIMULATION_ROUNDS
            weights = entry[wire.WEIGHTS_FILE]
            assert sha256(installed / weights) == sha256(bundle / weights) == entry[wire.SHA256]
        spent = json.loads((installed / "site-privacy.json").read_text())
        with PrivacyLedger(site_dir / LEDGER_FILE) as ledger:
            for model in manifest[wire.MANIFEST_MODELS]:
                entries = ledger.entries(model)
                assert spent[model][wire.DP_STEPS] == sum(e.segment.steps for e in entries)
                assert matches_ledger_oracle(
                    spent[model][wire.EPSILON], entries, spent[model][wire.DELTA]
                )


def test_serve_lets_nothing_through_without_the_bearer_token(site: Site, served: Server) -> None:
    assert (site.data / "api-token").stat().st_mode & 0o777 == 0o600
    assert httpx.get(f"{served.url}/healthz").json() == {"status": "ok", "run": RUN}
    customer = site.test_baskets.index[0]
    for path in ("/v1/model", f"/v1/customers/{customer}/recommendations", "/v1/churn-risk"):
        missing = httpx.get(served.url + path)
        assert missing.status_code == 401, path
        assert missing.headers["www-authenticate"] == "Bearer"
        assert missing.json() == {
            "detail": "missing bearer token: send 'Authorization: Bearer <token>'"
        }
        with served.client(token="not-the-token") as wrong:
            assert wrong.get(path).json() == {"detail": "invalid bearer token"}
    assert httpx.get(f"{served.url}/docs").status_code == 200
    paths = httpx.get(f"{served.url}/openapi.json").json()["paths"]
    assert sorted(paths) == [
        "/healthz",
        "/v1/churn-risk",
        "/v1/customers/{customer_id}/churn-risk",
        "/v1/customers/{customer_id}/recommendations",
        "/v1/model",
    ]


def test_serve_answers_bad_requests_with_clear_4xx(site: Site, served: Server) -> None:
    customer = site.test_baskets.index[0]
    with served.client() as client:
        for resource in ("recommendations", "churn-risk"):
            unknown = client.get(f"/v1/customers/no-such-customer/{resource}")
            assert unknown.status_code == 404
            assert unknown.json() == {
                "detail": "unknown customer: no orders under this id at this storefront"
            }
        for k in ("0", "101", "ten"):
            bad = client.get(f"/v1/customers/{customer}/recommendations", params={"k": k})
            assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "k"]
        assert client.get("/v1/churn-risk", params={"top": 0}).status_code == 422
        # known, but no purchase: the storefront's popular items, flagged; no churn risk
        popular = client.get(f"/v1/customers/{RETURNS_ONLY}/recommendations", params={"k": 3})
        assert popular.status_code == 200 and popular.json()["source"] == "storefront-popular"
        assert len(popular.json()["items"]) == 3
        no_risk = client.get(f"/v1/customers/{RETURNS_ONLY}/churn-risk")
        assert no_risk.status_code == 404
        assert no_risk.json()["detail"] == "no churn risk: the customer has no purchase to score"
    assert customer not in served.log.read_text()  # no customer id in the server's output


def test_model_endpoint_names_the_run_and_the_epsilon_this_site_spent(
    site: Site, served: Server
) -> None:
    installed = site.data / "models" / RUN
    manifest = json.loads((installed / wire.MANIFEST).read_text())
    with served.client() as client:
        model = client.get("/v1/model").json()
    assert model["run"] == RUN and model["created_at"] == manifest[wire.CREATED_AT]
    assert model["customers"] == pd.read_csv(site.export)["CustomerID"].nunique()
    with PrivacyLedger(site.data / LEDGER_FILE) as ledger:
        for name, resource in (("churn", "churn-risk"), ("recommender", "recommendations")):
            served_model = model["models"][name]
            assert served_model["resource"] == resource
            assert served_model["rounds"] == SIMULATION_ROUNDS
            entries = ledger.entries(name)
            assert served_model["epsilon"] == ledger.epsilon(name, entries[-1].delta)
            assert 0 < served_model["epsilon"] <= 3.0 and served_model["delta"] == entries[-1].delta


def ndcg_at_10(items: list[str], basket: np.ndarray, catalogue: pd.Index) -> float:
    targets = np.zeros((1, len(catalogue)), dtype=bool)
    targets[0, catalogue.get_indexer(basket)] = True
    return float(metrics.ndcg_at_k(catalogue.get_indexer(items)[None, :], targets, 10)[0])


def test_served_recommendations_reproduce_the_sites_exact_ndcg_for_the_storefront(
    site: Site, served: Server, tmp_path: Path
) -> None:
    """The site's own exact evaluation of the delivered model (kept at the site at
    delivery), the simulation's exact one and the served lists agree to the last digit; the
    server saw a noisy estimate of it, within its stated spread."""
    local = json.loads(
        (site.run_dir / "sites" / STOREFRONT / "models" / RUN / "local-evaluation.json").read_text()
    )["recommender"]
    exact = json.loads((site.run_dir / "exact-evaluation.json").read_text())["recommender"]
    [final] = [r for r in read_rounds(site.run_dir) if r["model"] == "recommender"][-1:]
    estimate = final["evaluate-metrics"]
    manifest = json.loads((site.data / "models" / RUN / wire.MANIFEST).read_text())
    catalogue = pd.Index(
        manifest[wire.MANIFEST_MODELS]["recommender"]["artefacts"]["item-vocabulary"]
    )
    served_lists = {}
    with served.client() as client:
        for customer in site.test_baskets.index:
            answer = client.get(f"/v1/customers/{customer}/recommendations", params={"k": 10})
            assert answer.status_code == 200 and answer.json()["source"] == "personal"
            served_lists[customer] = answer.json()["items"]
    ndcg = [
        ndcg_at_10([i["item_id"] for i in served_lists[c]], basket, catalogue)
        for c, basket in site.test_baskets.items()
    ]
    assert len(ndcg) == local["num-customers"] == exact[f"{STOREFRONT}/num-customers"] > 50
    assert abs(np.mean(ndcg) - local["ndcg@10"]) < 1e-6
    assert abs(np.mean(ndcg) - exact[f"{STOREFRONT}/ndcg@10"]) < 1e-6
    spread = estimate[f"{STOREFRONT}/ndcg@10-sd"]
    assert abs(estimate[f"{STOREFRONT}/ndcg@10"] - local["ndcg@10"]) <= 4 * spread

    # the command line gives the same lists, keyed by pseudonym, with own ids on request
    table_path = tmp_path / "recommendations.parquet"
    site_cli(
        "recommend", "--data", site.data, "--out", table_path, "--key", site.key,
        "--own-ids", site.export, "--mapping", site.mapping,
    )  # fmt: skip
    assert table_path.stat().st_mode & 0o777 == 0o600
    table = pd.read_parquet(table_path)
    assert table["site_customer_id"].nunique() == table["customer"].nunique()
    for customer, items in list(served_lists.items())[:20]:
        rows = table[table["site_customer_id"] == customer].sort_values("rank")
        assert rows["item_id"].tolist() == [i["item_id"] for i in items]
        assert rows["score"].tolist() == [i["score"] for i in items]
    one = json.loads(
        site_cli(
            "recommend", "--data", site.data, "--customer", customer, "--key", site.key, "-k", 3
        ).stdout
    )
    assert one["items"] == items[:3]


def test_churn_risk_ranking_agrees_between_the_api_and_the_command_line(
    site: Site, served: Server, tmp_path: Path
) -> None:
    with served.client() as client:
        ranking = client.get("/v1/churn-risk", params={"top": 5}).json()
        assert [row["rank"] for row in ranking] == [1, 2, 3, 4, 5]
        probabilities = [row["churn_probability"] for row in ranking]
        assert probabilities == sorted(probabilities, reverse=True)
        for row in ranking:  # the site's own id, mapped back in memory from the export
            own = row.pop("site_customer_id")
            assert client.get(f"/v1/customers/{own}/churn-risk").json() == row
    table_path = tmp_path / "risk.csv"
    site_cli(
        "churn-risk", "--data", site.data, "--out", table_path, "--top", 5, "--key", site.key,
        "--own-ids", site.export, "--mapping", site.mapping,
    )  # fmt: skip
    table = pd.read_csv(table_path)
    assert table["customer"].tolist() == [row["customer"] for row in ranking]
    np.testing.assert_allclose(table["churn_probability"], probabilities, rtol=1e-15)
    assert table["top_features"].tolist() == [row["top_features"] for row in ranking]


def boosted_bundle(site: Site, destination: Path, item: str) -> Path:
    """The delivered bundle as a new run ``run-two`` whose recommender puts ``item`` first
    for everyone (its bias raised far above the rest), checksums updated."""
    shutil.copytree(site.run_dir / "bundle", destination)
    manifest = json.loads((destination / wire.MANIFEST).read_text())
    entry = manifest[wire.MANIFEST_MODELS]["recommender"]
    with np.load(destination / entry[wire.WEIGHTS_FILE]) as npz:
        weights = {key: npz[key] for key in npz.files}
    catalogue = entry["artefacts"]["item-vocabulary"]
    weights["item_bias.bias"][catalogue.index(item)] += 1000.0
    with open(destination / entry[wire.WEIGHTS_FILE], "wb") as file:
        np.savez(file, **weights)
    entry[wire.SHA256] = sha256(destination / entry[wire.WEIGHTS_FILE])
    manifest[wire.RUN_CONFIG]["run-dir"] = str(destination.parent / "run-two")
    (destination / wire.MANIFEST).write_text(json.dumps(manifest))
    return destination


def test_a_newly_installed_model_is_swapped_in_under_load_without_a_failed_request(
    site: Site, tmp_path: Path
) -> None:
    data = tmp_path / "site"
    shutil.copytree(site.data, data)
    with running_server(site, data) as server:
        swap_under_load(site, server, data, tmp_path)
    assert not (data / "models" / "tampered").exists()


def swap_under_load(site: Site, server: Server, data: Path, tmp_path: Path) -> None:
    """Install a new run while four clients keep asking; then a tampered one."""
    customers = list(site.test_baskets.index)
    with server.client() as client:
        firsts = {
            client.get(f"/v1/customers/{c}/recommendations").json()["items"][0]["item_id"]
            for c in customers
        }
    catalogue = json.loads((data / "models" / RUN / wire.MANIFEST).read_text())
    catalogue = catalogue[wire.MANIFEST_MODELS]["recommender"]["artefacts"]["item-vocabulary"]
    marker = next(item for item in catalogue if item not in firsts)  # first for nobody yet
    bundle = boosted_bundle(site, tmp_path / "bundle-two", marker)

    responses: list[tuple[float, int, str]] = []  # (start, status, first item)
    stop = threading.Event()

    def load(worker: int) -> None:
        with server.client() as client:
            for request in range(10**6):
                if stop.is_set():
                    return
                customer = customers[(worker * 7919 + request) % len(customers)]
                started = time.monotonic()
                reply = client.get(f"/v1/customers/{customer}/recommendations", params={"k": 10})
                first = reply.json()["items"][0]["item_id"] if reply.status_code == 200 else ""
                responses.append((started, reply.status_code, first))

    workers = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)
    installing = time.monotonic()
    site_cli("install-model", bundle, "--data", data)
    with server.client() as client:
        deadline = time.monotonic() + 60
        while client.get("/v1/model").json()["run"] != "run-two":
            assert time.monotonic() < deadline, server.log.read_text()[-2000:]
            time.sleep(0.05)
        swapped = time.monotonic()
        time.sleep(1.0)
        stop.set()
        for worker in workers:
            worker.join(timeout=30)

        assert [status for _, status, _ in responses if status != 200] == []
        before = [first for started, _, first in responses if started < installing]
        after = [first for started, _, first in responses if started > swapped]
        assert len(before) > 20 and len(after) > 20
        assert marker not in before and set(after) == {marker}
        assert "now serving model run 'run-two'" in server.log.read_text()

        # a bundle whose weights do not match their checksum is refused; the model stays
        tampered = bundle.parent / "tampered"
        shutil.copytree(bundle, tampered)
        weights = tampered / "recommender.npz"
        weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
        refused = site_cli("install-model", tampered, "--data", data, check=False)
        assert refused.returncode == 2
        assert refused.stderr.strip() == (
            f"fedshop-site: error: {tampered}: recommender.npz does not match its sha256 in"
            " the manifest; refusing the bundle (corrupted or tampered in transit)"
        )
        time.sleep(1.5)
        assert client.get("/v1/model").json()["run"] == "run-two"
