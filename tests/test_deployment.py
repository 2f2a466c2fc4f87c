"""Deployment: the real SuperLink and SuperNodes on loopback, plus the checks before they start.

The slow tests start real processes (``fedshop-server start``, ``fedshop-site join``'s handler,
``fedshop-server submit``) on free ports with per-test FLWR_HOME directories; every process
is started in its own process group and stopped by its id in the fixture teardown. One of
them SIGKILLs a site's SuperNode while it trains (the reliability tests: a site dropping
out mid-round).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flwr.common.constant import ErrorCode
from in_process import read_rounds
from independent_accounting import matches_ledger_oracle
from wire_audit import check_sent_messages

from clients.join import (
    EXIT_GAVE_UP,
    JoinError,
    add_parser,
    check_site_ready,
    supernode_command,
)
from clients.site_privacy import changed_policy, ensure_default_policy
from common import flower_processes, wire
from models.settings_per_epsilon import settings_for
from privacy.ledger import LEDGER_FILE, LedgerEntry, PrivacyLedger
from privacy.planning import opacus_sample_rate, opacus_steps_per_epoch
from server.certificates import issue_credentials, site_key_pair, write_new_file
from server.cli import main as server_main
from server.deployment import CONNECTION, SuperLinkSettings, write_connection
from simulations.loopback_ports import free_port
from simulations.storefronts import prepare_storefronts
from simulations.synthetic import generate_orders

ROUNDS = 2
EPSILON = 3.0
ROUND_TIMEOUT = 150


class Processes:
    """Processes a test starts: each in its own group, all stopped by pid at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[subprocess.Popen] = []

    def start(self, name: str, command: list[str]) -> tuple[subprocess.Popen, Path]:
        """Start ``command`` with output to ``<root>/<name>.log``; returns (process, log)."""
        log_path = self.root / f"{name}.log"
        with log_path.open("wb") as log:
            process = flower_processes.spawn(command, self.root / f"{name}-home", stdout=log)
        self.started.append(process)
        return process, log_path

    def stop_all(self) -> None:
        for process in reversed(self.started):
            flower_processes.stop(process, timeout=15)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def _wait_for_line(process: subprocess.Popen, log: Path, text: str, timeout: float) -> None:
    def seen() -> bool:
        if text in log.read_text(errors="replace"):
            return True
        assert process.poll() is None, f"exited {process.returncode}:\n{log.read_text()[-3000:]}"
        return False

    _wait_for(seen, timeout, f"{text!r} in {log}")


def _join_command(superlink: str, data: Path, *options: str) -> list[str]:
    site_cli = str(Path(sys.executable).parent / "fedshop-site")
    return [site_cli, "join", "--superlink", superlink, "--data", str(data), *options]


SITE_POLICY = ["min-cohort=3", "cohort-noise=1.5"]
"""What the tiny test storefronts' data teams set (the smallest has 9 training customers):
a small minimum cohort, and cohort sizes noisy by 1.5 customers, so that every site is
above its minimum but in one run in tens of thousands."""


def _site_dirs(split: Path, catalogue: Path | None = None, n_customers: int = 300) -> list[Path]:
    """Three prepared site directories, largest storefront first (synthetic storefront 0 is
    the big one); ``catalogue`` gets the item ids, one per line."""
    frame = generate_orders(n_storefronts=3, n_customers=n_customers, n_items=40, seed=7)
    prepare_storefronts(frame, split)
    if catalogue is not None:
        catalogue.write_text("".join(f"{item}\n" for item in sorted(frame["item_id"].unique())))
    sites = sorted(p.parent for p in split.glob("*/orders.parquet"))
    assert len(sites) == 3
    for site in sites:  # what `fedshop-site prepare` does: the default privacy policy
        policy = ensure_default_policy(site, set_by="fedshop-site prepare")
        with PrivacyLedger(site / LEDGER_FILE) as ledger:  # then the site's own choice
            ledger.set_policy(
                changed_policy(policy, SITE_POLICY), set_by="dpo@test", reason="tiny storefronts"
            )
    return sites


@dataclass(frozen=True)
class TLSFederation:
    """A running ``fedshop-server start`` (TLS, registered site keys) and its ``flwr`` home."""

    certs: Path
    cli_home: Path
    superlink: str
    server_log: Path

    def join_command(self, name: str, data: Path, *options: str) -> list[str]:
        """``fedshop-site join`` for the registered site ``name`` reading ``data``."""
        return _join_command(self.superlink, data, "--ca", str(self.certs / "ca.crt")) + [
            "--key",
            str(self.certs / "sites" / f"{name}.key"),
            "--port",
            str(free_port()),
            *options,
        ]


def _start_tls_server(tmp_path: Path, processes: Processes, names: list[str]) -> TLSFederation:
    """Issue credentials for ``names`` and start ``fedshop-server start`` until it is ready."""
    certs, cli_home = tmp_path / "certs", tmp_path / "cli-home"
    issue_credentials(certs, names)
    port = free_port()
    server, server_log = processes.start(
        "server",
        ["fedshop-server", "start", "--certs", str(certs), "--state", str(tmp_path / "state")]
        + ["--port", str(port), "--flwr-home", str(cli_home)],
    )
    _wait_for_line(server, server_log, "ready;", timeout=120)
    return TLSFederation(certs, cli_home, f"127.0.0.1:{port}", server_log)


def _submit_run(
    processes: Processes, federation: TLSFederation, run_config: str, run_dir: Path
) -> tuple[subprocess.Popen, Path]:
    """Start ``fedshop-server submit`` of the run (outputs to ``run_dir``); returns its
    (process, log) for :func:`_finished_rounds`."""
    run_config += f" run-dir='{run_dir}'"
    return processes.start(
        "submit",
        ["fedshop-server", "submit", "--flwr-home", str(federation.cli_home)]
        + ["--run-config", run_config],
    )


def _finished_rounds(submit: subprocess.Popen, submit_log: Path, run_dir: Path) -> list[dict]:
    """Wait for the submitted run to succeed; returns its round records."""
    try:
        submit.wait(timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail(f"run did not finish:\n{submit_log.read_text()[-3000:]}")
    assert submit.returncode == 0, submit_log.read_text()[-3000:]
    return read_rounds(run_dir)


@pytest.mark.slow
def test_tls_federation_runs_two_rounds_and_refuses_an_unregistered_node(
    tmp_path: Path, processes: Processes
) -> None:
    names = ["site-a", "site-b", "site-c"]
    federation = _start_tls_server(tmp_path, processes, names)
    intruder_key, _ = site_key_pair("intruder")  # never registered
    write_new_file(tmp_path / "intruder.key", intruder_key, 0o600)
    log_text = federation.server_log.read_text()
    for name in names:
        assert f"site {name}: registered" in log_text
    connection = tomllib.loads((federation.cli_home / "config.toml").read_text())["superlink"]
    assert connection[CONNECTION] == {
        "address": federation.superlink,
        "root-certificates": str(federation.certs / "ca.crt"),
    }

    catalogue = tmp_path / "catalogue.txt"  # product data the central team publishes
    sites = _site_dirs(tmp_path / "split", catalogue)
    audit = tmp_path / "audit"  # each site keeps a copy of everything it sends
    for name, data in zip(names, sites, strict=True):
        processes.start(name, federation.join_command(name, data, "--audit-dir", str(audit)))
    intruder, intruder_log = processes.start(
        "intruder",
        _join_command(federation.superlink, sites[0], "--ca", str(federation.certs / "ca.crt"))
        + ["--key", str(tmp_path / "intruder.key"), "--port", str(free_port())],
    )

    # the server never reads site data: it has the catalogue file; sites read their data-path.
    # It asks for ε = 50: every site's policy caps ε at 8 per model, and wins.
    run_config = f"num-server-rounds={ROUNDS} models='recommender' epsilon=50.0 min-sites=3"
    run_config += " fraction-evaluate=0.0"  # every message spawns a ClientApp: train only
    run_config += f" recommender.catalogue='{catalogue}'"
    submit = _submit_run(processes, federation, run_config, tmp_path / "run")
    rounds = _finished_rounds(*submit, tmp_path / "run")
    assert [(r["model"], r["round"]) for r in rounds] == [("recommender", 1), ("recommender", 2)]
    storefronts = sorted(site.name for site in sites)  # synthetic storefront names = slugs
    for record in rounds:
        assert sorted(record["accepted"]) == storefronts
        assert sorted(record["privacy"]) == storefronts
        for privacy in record["privacy"].values():
            assert 0 < privacy[wire.EPSILON] <= 8.0 and privacy[wire.NOISE_MULTIPLIER] > 0
            assert privacy[wire.PRIVACY_NOTE].startswith("planned down: asked ε 50 for this run")
    # The deployment trains what the simulations validated: the entry for ε 8 (nearest the
    # ε 50 asked), which config.json names, is what every site planned its DP-SGD with.
    validated = settings_for("recommender", "federated", 8.0)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["validated-settings"]["recommender"]["epsilon"] == validated.epsilon
    epochs, batch = validated.settings["local-epochs"], validated.settings["batch-size"]
    for site in sites:  # each site's privacy ledger lives next to its data, not on the server
        with PrivacyLedger(site / LEDGER_FILE) as ledger:  # training and its cohort release
            entries = ledger.entries("recommender")
            assert 0.99 * 8.0 <= ledger.epsilon("recommender", entries[0].delta) <= 8.0
            assert {entry.delta for entry in entries} == {ledger.policy().delta}
            [cohort] = ledger.releases("recommender", purpose="cohort")
        customers = int(cohort.answer["cohort"][0])
        for entry in (e for e in entries if e.purpose == "training"):
            assert entry.segment.sample_rate == opacus_sample_rate(customers, batch)
            assert entry.planned_steps == epochs * opacus_steps_per_epoch(customers, batch)

    # The central team reads the privacy report and report.html that submit left, and each
    # site's own ledger-recomputed report agrees with what the server holds of it.
    report = json.loads((tmp_path / "run" / "privacy_report.json").read_text())
    assert (tmp_path / "run" / "report.html").is_file()
    by_site = {row["storefront"]: row for row in report["sites"]}
    assert sorted(by_site) == storefronts
    for site in sites:
        own = subprocess.run(
            [str(Path(sys.executable).parent / "fedshop-site"), "privacy-report"]
            + ["--data", str(site), "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        [row] = json.loads(own.stdout)
        assert row["epsilon"] == by_site[site.name]["epsilon"]
        assert row["dp-steps"] == by_site[site.name]["dp_steps"]

    # every site ends holding the final model, byte for byte the server's bundle
    bundle = tmp_path / "run" / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    checksum = manifest["models"]["recommender"]["sha256"]
    assert checksum == hashlib.sha256((bundle / "recommender.npz").read_bytes()).hexdigest()
    for site in sites:
        installed = site / "models" / "run"
        assert (installed / "manifest.json").read_bytes() == (bundle / "manifest.json").read_bytes()
        assert hashlib.sha256((installed / "recommender.npz").read_bytes()).hexdigest() == checksum
    delivery = json.loads((tmp_path / "run" / "delivery.json").read_text())
    assert delivery["installed"] == storefronts and delivery["failed"] == []

    # Asked to train without DP, every site declines with its reason, and no update comes
    # (one round is enough to see it; each round spawns a ClientApp per site).
    no_dp = run_config.replace("epsilon=50.0", "epsilon=0.0").replace(
        f"num-server-rounds={ROUNDS}", "num-server-rounds=1"
    )
    submit = _submit_run(processes, federation, no_dp, tmp_path / "no-dp")
    [declined_round] = _finished_rounds(*submit, tmp_path / "no-dp")
    assert declined_round["accepted"] == [] and declined_round["kept-previous-model"]
    assert (
        sorted(wire.storefront_of_reason(d.split(": ", 1)[1]) for d in declined_round["declined"])
        == storefronts
    )
    assert all("privacy-policy" in d and "without DP" in d for d in declined_round["declined"])

    # What left the sites: the documented records and keys only, no customer or order value.
    orders = pd.concat(pd.read_parquet(site / "orders.parquet") for site in sites)
    kinds = check_sent_messages(
        audit,
        facts={"recommender": {"catalogue": catalogue.read_text().split()}},
        secrets=set(orders["customer"]) | set(orders["order_id"]),
    )
    # each run ends with the delivery of its bundle, which every site acknowledges
    assert kinds == {
        "train": ROUNDS * len(sites),
        "refused": len(sites),
        "install": 2 * len(sites),
    }

    # the intruder's key was never registered: the SuperLink refuses it, the SuperNode exits
    # with Flower's code 305 (process status 1, as for every Flower error) and join with it
    assert intruder.wait(timeout=60) == 1
    refusal = intruder_log.read_text()
    assert "Exit Code: 305" in refusal and "Failed to activate SuperNode" in refusal


def _rejoin(
    processes: Processes, name: str, command: Callable[[], list[str]], timeout: float
) -> None:
    """Start a SuperNode as a supervisor would: again every few seconds until it is in."""
    deadline = time.monotonic() + timeout
    for attempt in range(1, 100):
        process, log = processes.start(f"{name}-{attempt}", command())
        while process.poll() is None and "SuperNode ID:" not in log.read_text(errors="replace"):
            time.sleep(0.5)
        if process.poll() is None:
            return
        assert time.monotonic() < deadline, f"never let in again:\n{log.read_text()[-2000:]}"
        time.sleep(3)


def _ledger_entries(data: Path, purpose: str = "training") -> list[LedgerEntry]:
    """The recommender's entries of ``purpose`` (``""``: all) in the site's ledger; none
    while the site has not created its ledger (opening it here first would create it)."""
    if not (data / LEDGER_FILE).is_file():
        return []
    with PrivacyLedger(data / LEDGER_FILE) as ledger:
        entries = ledger.entries("recommender")
    return [e for e in entries if purpose in ("", e.purpose)]


@pytest.mark.slow
def test_a_site_killed_mid_round_is_left_out_rejoins_and_the_run_completes(
    tmp_path: Path, processes: Processes
) -> None:
    names = ["site-a", "site-b", "site-c"]
    federation = _start_tls_server(tmp_path, processes, names)
    catalogue = tmp_path / "catalogue.txt"
    # the victim is the biggest storefront (~700 training customers against ~90 and ~40):
    # at batch 8 its round is ~180 DP-SGD steps, seconds long, the others' ~20 and ~10
    victim_data, *survivor_data = _site_dirs(tmp_path / "split", catalogue, n_customers=1500)
    victim_name, *survivor_names = names

    # the victim runs the command join runs, started here so that its pid is the SuperNode's;
    # its process group also holds the SuperExec and ClientApp it starts: SIGKILL to the
    # group is the site's machine losing power mid-round
    def victim_supernode() -> list[str]:
        return supernode_command(
            federation.superlink,
            victim_data,
            ca=federation.certs / "ca.crt",
            key=federation.certs / "sites" / f"{victim_name}.key",
            port=free_port(),
        )

    victim, victim_log = processes.start(victim_name, victim_supernode())
    survivors = [
        processes.start(name, federation.join_command(name, data))
        for name, data in zip(survivor_names, survivor_data, strict=True)
    ]
    # with min-sites=2, round 1 would start with whichever two are up: wait for all three
    for process, log in [(victim, victim_log), *survivors]:
        _wait_for_line(process, log, "SuperNode ID:", timeout=60)
    victim_node = int(victim_log.read_text().split("SuperNode ID:")[1].split()[0])

    run_dir = tmp_path / "run"
    rounds_run = ROUNDS + 1  # a round for the site that comes back
    run_config = f"num-server-rounds={rounds_run} models='recommender' epsilon={EPSILON}"
    run_config += " min-sites=2 min-accepted-updates=1 fraction-evaluate=0.0"
    run_config += " recommender.batch-size=8 recommender.local-epochs=2"
    # Flower 1.42 learns that a SIGKILLed node is gone only from its missing heartbeats
    # (sent every ~24 s, offline after 2 x 30 s; fixed, not a SuperNode option): the
    # SuperLink then answers the node's pending train message itself with error
    # NODE_UNAVAILABLE and the round ends. A round-timeout below that detection plus a
    # healthy site's round (ClientApp start-up + DP training, ~30 s on 2 busy cores) drops
    # the healthy sites' replies too (measured: 30 s lost every reply of both rounds).
    run_config += f" round-timeout={ROUND_TIMEOUT} recommender.catalogue='{catalogue}'"
    submit = _submit_run(processes, federation, run_config, run_dir)
    # "training started": the site reserves the round in its ledger just before DP-SGD
    _wait_for(lambda: bool(_ledger_entries(victim_data)), 180, "the victim's reservation")
    os.killpg(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=10) == -signal.SIGKILL
    assert [e.status for e in _ledger_entries(victim_data)] == ["reserved"]  # mid-training
    # the site's machine comes back, under a supervisor that restarts its SuperNode until it
    # is let in: the SuperLink refuses the same key while the dead node still counts as
    # online (until its missed heartbeats, ~60 s), then lets the node in again
    _rejoin(processes, f"{victim_name}-again", victim_supernode, timeout=2 * ROUND_TIMEOUT)
    rounds = _finished_rounds(*submit, run_dir)

    assert [(r["model"], r["round"]) for r in rounds] == [
        ("recommender", number) for number in range(1, rounds_run + 1)
    ]
    storefronts = sorted(data.name for data in survivor_data)
    first, *later = rounds
    second = later[-1]
    assert sorted(first["accepted"]) == storefronts and sorted(first["privacy"]) == storefronts
    # the SuperLink's stand-in reply names the node only: the server learns a storefront
    # from the site's own replies, and the victim never sent one. Which of the two ends the
    # victim's round depends on the load: the SuperLink's missed-heartbeat verdict, or the
    # round timeout when that verdict comes later
    victim_label = f"node {victim_node} (unknown storefront)"
    assert first["failed"] in (
        [f"{victim_label}: error {ErrorCode.NODE_UNAVAILABLE}"],
        [f"{victim_label}: no reply within the round timeout"],
    )
    assert first["declined"] == [] and first["rejected"] == []
    # the dead node is not sampled again; the rejoined site trains in the same run
    everyone = sorted([*storefronts, victim_data.name])
    assert sorted(second["accepted"]) == everyone and second["failed"] == []
    for record in rounds:
        assert not record["kept-previous-model"]
        assert set(record["accepted"]) >= set(storefronts)
    assert second["train-metrics"]["num-sites"] == len(everyone)
    manifest = json.loads((run_dir / "bundle" / "manifest.json").read_text())
    assert manifest["models"]["recommender"]["rounds-done"] == rounds_run

    # the killed round stays counted at its planned steps, the ledger still opens
    # (PrivacyLedger checks integrity and schema) after the SIGKILL, and the rejoined
    # site's round 2 belongs to the same run, within the same plan and budget
    with PrivacyLedger(victim_data / LEDGER_FILE) as ledger:
        [cohort] = [e for e in ledger.entries("recommender") if e.purpose == "cohort"]
        killed, *again = [e for e in ledger.entries("recommender") if e.purpose == "training"]
        status = ledger.budget_status("recommender", EPSILON, killed.delta)
    assert (killed.server_round, killed.status) == (1, "reserved")
    assert killed.segment.steps == killed.planned_steps
    trained_again = [r["round"] for r in rounds if victim_data.name in r["accepted"]]
    assert [e.server_round for e in again] == trained_again and rounds_run in trained_again
    for entry in again:
        assert (entry.status, entry.run) == ("committed", killed.run)
        assert entry.segment.noise_multiplier == killed.segment.noise_multiplier
    assert status.uncommitted == 1 and 0 < status.epsilon_spent <= EPSILON
    reported = second["privacy"][victim_data.name]
    assert reported[wire.EPSILON] == status.epsilon_spent
    assert matches_ledger_oracle(status.epsilon_spent, [cohort, killed, *again], killed.delta)
    # each survivor's reported ε and steps are what its ledger holds after that round (its
    # cohort sizes released at its first message, then its rounds)
    for data in survivor_data:
        entries = _ledger_entries(data)
        [released] = _ledger_entries(data, "cohort")
        assert [(e.server_round, e.status) for e in entries] == [
            (number, "committed") for number in range(1, rounds_run + 1)
        ]
        for done, record in enumerate(rounds, start=1):
            reported = record["privacy"][data.name]
            assert reported[wire.DP_STEPS] == sum(e.segment.steps for e in entries[:done])
            assert matches_ledger_oracle(
                reported[wire.EPSILON], [released, *entries[:done]], reported[wire.DELTA]
            )


@pytest.mark.slow
def test_site_stops_when_the_superlink_is_gone_for_good(
    tmp_path: Path, processes: Processes
) -> None:
    port = free_port()
    server, server_log = processes.start(
        "server",
        ["fedshop-server", "start", "--insecure", "--state", str(tmp_path / "state")]
        + ["--port", str(port), "--flwr-home", str(tmp_path / "cli-home")],
    )
    _wait_for_line(server, server_log, "ready;", timeout=120)
    assert "WARNING: insecure mode" in server_log.read_text()
    (data,) = _site_dirs(tmp_path / "split")[:1]
    site, site_log = processes.start(
        "site",
        _join_command(f"127.0.0.1:{port}", data, "--insecure", "--port", str(free_port()))
        + ["--max-retries", "3", "--max-wait-time", "10"],
    )
    _wait_for_line(site, site_log, "SuperNode ID", timeout=60)
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0
    assert site.wait(timeout=90) == EXIT_GAVE_UP
    assert "SuperNode stopped: it gave up reconnecting" in site_log.read_text()


# ---- fast checks: what is refused before any process starts ----


def _prepared(directory: Path) -> Path:
    frame = generate_orders(n_storefronts=1, n_customers=5, n_items=5, seed=1)
    prepare_storefronts(frame, directory)
    return next(directory.glob("*/orders.parquet")).parent


def _site_key(tmp_path: Path, mode: int = 0o600) -> Path:
    key = tmp_path / "site.key"
    write_new_file(key, site_key_pair("site")[0], mode)
    return key


def _join(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_site_without_prepared_orders_is_refused(tmp_path: Path) -> None:
    key = _site_key(tmp_path)
    with pytest.raises(JoinError, match=r"orders.parquet: not found.*fedshop-site prepare"):
        check_site_ready(tmp_path, None, key)
    pq.write_table(pa.table({"customer": ["a"], "quantity": [1.5]}), tmp_path / "orders.parquet")
    with pytest.raises(JoinError, match=r"orders.parquet, column 'order_id': missing"):
        check_site_ready(tmp_path, None, key)
    (tmp_path / "orders.parquet").write_text("customer,order_id\n")
    with pytest.raises(JoinError, match="not a readable Parquet file"):
        check_site_ready(tmp_path, None, key)


def test_site_key_must_be_private_and_an_ec_openssh_key(tmp_path: Path) -> None:
    data = _prepared(tmp_path / "split")
    key = _site_key(tmp_path, mode=0o640)
    with pytest.raises(JoinError, match=r"readable by others \(mode 0640\); run chmod 600"):
        check_site_ready(data, None, key)
    key.chmod(0o600)
    check_site_ready(data, None, key)
    bogus = tmp_path / "bogus.key"
    write_new_file(bogus, b"not a key", 0o600)
    with pytest.raises(JoinError, match="not an OpenSSH private key"):
        check_site_ready(data, None, bogus)
    with pytest.raises(JoinError, match="not a PEM CA certificate"):
        check_site_ready(data, bogus, key)


def test_join_flags_and_node_config_are_checked(tmp_path: Path) -> None:
    data = _prepared(tmp_path / "split")
    key = _site_key(tmp_path)
    with pytest.raises(JoinError, match="give both --ca"):
        _join(["join", "--superlink", "127.0.0.1:1", "--data", str(data), "--key", str(key)])
    with pytest.raises(JoinError, match="--insecure cannot be combined"):
        _join(["join", "--superlink", "h:1", "--data", str(data), "--key", str(key), "--insecure"])
    with pytest.raises(JoinError, match="expected HOST:PORT"):
        supernode_command("fl.example.org", data, ca=None, key=None)
    with pytest.raises(JoinError, match="must not contain quotes"):
        supernode_command("h:1", tmp_path / "o'brien", ca=None, key=None)
    command = supernode_command("h:1", data, ca=key, key=key, storefront="UK", port=9123)
    node_config = command[command.index("--node-config") + 1]
    assert node_config == f"data-path='{data.resolve()}' storefront='UK'"
    assert command[command.index("--port") + 1] == "9123"
    assert "--insecure" not in command and "--max-retries" in command


def test_connection_is_written_beside_existing_ones(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
    )
    settings = SuperLinkSettings(state=tmp_path / "s", certs=tmp_path / "c", host="0.0.0.0")
    write_connection(tmp_path, settings)
    config = tomllib.loads((tmp_path / "config.toml").read_text())["superlink"]
    assert config["default"] == "local" and config["local"] == {"address": ":local:"}
    assert config[CONNECTION] == {
        "address": "127.0.0.1:8000",
        "root-certificates": str((tmp_path / "c" / "ca.crt").resolve()),
    }
    write_connection(tmp_path, SuperLinkSettings(state=tmp_path, certs=None, port=9))
    config = tomllib.loads((tmp_path / "config.toml").read_text())["superlink"]
    assert config[CONNECTION] == {"address": "127.0.0.1:9", "insecure": True}


def test_start_refuses_missing_credentials_and_ambiguous_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "state")
    assert server_main(["start", "--state", state]) == 2
    assert "exactly one of --certs DIR and --insecure" in capsys.readouterr().err
    assert server_main(["start", "--state", state, "--certs", str(tmp_path)]) == 2
    assert "ca.crt: not found; create credentials" in capsys.readouterr().err
    issue_credentials(tmp_path / "certs", ["uk"])
    (tmp_path / "certs" / "server.key").chmod(0o644)
    assert server_main(["start", "--state", state, "--certs", str(tmp_path / "certs")]) == 2
    assert "server.key: private key is readable by others" in capsys.readouterr().err
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())


def test_processes_are_started_with_isolated_flower_settings(tmp_path: Path) -> None:
    env = flower_processes.flower_environment(tmp_path / "home", base={"PATH": "/usr/bin"})
    assert env["FLWR_HOME"] == str((tmp_path / "home").resolve())
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
