"""The simulation runner: the real app through ``flwr run``, the run directory it leaves,
and the managed local SuperLink stopped by pid — only the job's own."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SIMULATION_EPSILON as EPSILON
from conftest import SIMULATION_MIN_COHORT as MIN_COHORT
from conftest import SIMULATION_ROUNDS as ROUNDS
from conftest import SIMULATION_STOREFRONTS as STOREFRONTS
from wire_audit import check_sent_messages

from common.flower_processes import flower_environment
from models.registry import get_model
from models.settings_per_epsilon import settings_for
from server.bundle import load_bundle
from server.checkpoint import CHECKPOINT_DIR
from simulations.local_superlink import SUPERLINK_LOG, find_local_superlink, stop_processes
from simulations.loopback_ports import free_port
from simulations.runner import (
    FLWR_HOME_DIR,
    RUN_LOG,
    SimulationError,
    app_run_config,
    run_simulation_job,
)
from simulations.storefronts import INDEX_FILE, prepare_storefronts
from simulations.synthetic import generate_orders

MODELS = ("churn", "recommender")
STOPPED = re.compile(r"stopped the local SuperLink by pid: (.+)")


def processes_with_flwr_home(flwr_home: Path) -> list[int]:
    """Live (non-zombie) processes whose environment names ``flwr_home`` as FLWR_HOME."""
    wanted = f"FLWR_HOME={flwr_home.resolve()}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if wanted in environ and state != "Z":
            found.append(int(entry.name))
    return found


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_fedshop_sim_run_leaves_no_superlink_running(synthetic_run):
    result = synthetic_run.result
    assert result.returncode == 0, result.stderr[-3000:]
    [stopped] = STOPPED.findall(result.stderr)
    pids = {name: int(pid) for name, pid in (item.split() for item in stopped.split(", "))}
    assert {"flower-superlink", "flower-superexec"} <= set(pids)
    assert not any(is_alive(pid) for pid in pids.values())
    assert processes_with_flwr_home(synthetic_run.run_dir / FLWR_HOME_DIR) == []
    # The SuperLink was the job's own: its log is under the run's FLWR_HOME.
    log = (synthetic_run.run_dir / FLWR_HOME_DIR / SUPERLINK_LOG).read_text()
    assert "Starting Flower SuperLink" in log


@pytest.mark.slow
def test_fedshop_sim_run_writes_the_run_directory_of_the_design(synthetic_run):
    run_dir = synthetic_run.run_dir
    assert synthetic_run.result.returncode == 0, synthetic_run.result.stderr[-3000:]

    config = json.loads((run_dir / "config.json").read_text())  # the resolved config
    assert config["run-dir"] == str(run_dir.resolve())
    assert config["storefronts-dir"] == str((run_dir / "storefronts").resolve())
    assert (config["epsilon"], config["num-server-rounds"]) == (EPSILON, ROUNDS)
    assert set(config) == {*app_run_config(), "validated-settings"}
    for model in MODELS:  # the settings chosen on validation for the run's ε, and which
        entry = settings_for(model, "federated", EPSILON)
        record = config["validated-settings"][model]
        replaced = model == "churn"  # the run --sets churn's batch size
        assert record["epsilon"] == entry.epsilon
        assert record["chosen-on"] == ("--set" if replaced else entry.chosen_on)
        for key, value in entry.run_config().items():
            assert config[key] == (32 if key == "churn.batch-size" else value)

    index = json.loads((run_dir / "storefronts" / INDEX_FILE).read_text())
    names = sorted(entry["name"] for entry in index["storefronts"])
    assert len(names) == STOREFRONTS
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [(r["model"], r["round"]) for r in rounds] == [
        (model, number) for model in MODELS for number in range(1, ROUNDS + 1)
    ]
    for record in rounds:
        assert sorted(record["accepted"]) == names, record
        if record["round"] < ROUNDS:  # evaluation-rounds = "last": the final model only
            assert not record["evaluate-metrics"]
            continue
        metrics = record["evaluate-metrics"]
        for name in names:  # per storefront, flat keys; noisy, so each with its spread
            assert metrics[f"{name}/num-customers"] > 0
        assert metrics["num-customers"] == sum(metrics[f"{n}/num-customers"] for n in names)
        headline = get_model(record["model"]).headline_metric
        assert metrics[f"{headline}-sd"] > 0
        exact = json.loads((run_dir / "exact-evaluation.json").read_text())[record["model"]]
        assert abs(metrics[headline] - exact[headline]) <= 4 * metrics[f"{headline}-sd"]

    privacy = json.loads((run_dir / "privacy_report.json").read_text())
    assert list(privacy["accountants"]) == ["pld"]
    assert privacy["accountants"]["pld"].startswith("PLD")
    assert {s["accountant"] for s in privacy["sites"]} == {"pld"}
    assert {(s["model"], s["storefront"]) for s in privacy["sites"]} == {
        (m, n) for m in MODELS for n in names
    }
    for site in privacy["sites"]:
        assert site["check"] == "match"
        assert site["dp_steps"] > 0 and site["rounds"] == ROUNDS
        assert 0.99 * EPSILON <= site["epsilon"] <= EPSILON  # training and releases
        assert 0 < site["evaluation_epsilon"] < site["epsilon"]
        assert site["releases"] == 2  # the run's cohort sizes and its one evaluation

    assert any((run_dir / CHECKPOINT_DIR).iterdir())
    manifest, weights = load_bundle(run_dir / "bundle")
    assert set(weights) == set(MODELS)
    assert all(np.isfinite(a).all() for state in weights.values() for a in state.values())
    assert {m: manifest["models"][m]["rounds-done"] for m in MODELS} == dict.fromkeys(
        MODELS, ROUNDS
    )
    assert (run_dir / "report.html").is_file()
    assert "Successfully started run" in (run_dir / RUN_LOG).read_text()


@pytest.fixture(scope="module")
def small_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    split = tmp_path_factory.mktemp("split") / "storefronts"
    frame = generate_orders(n_storefronts=2, n_customers=60, n_items=30, seed=1)
    prepare_storefronts(frame, split)
    return split


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"run_config": {"no-such-key": 1}}, "no-such-key are not in [tool.flwr.app.config]"),
        ({"run_config": {}, "num_supernodes": 3}, "between 1 and the 2 storefronts"),
        ({"run_config": {"epsilon": [1.0]}}, "must be bool, int, float or str, got [1.0]"),
    ],
)
def test_bad_jobs_are_refused_before_flower_starts(small_split, tmp_path, arguments, message):
    run_dir = tmp_path / "run"
    with pytest.raises(SimulationError) as error:
        run_simulation_job(small_split, run_dir, **arguments)
    assert message in str(error.value)
    assert not run_dir.exists()


def test_a_run_directory_with_checkpoints_is_only_resumed_on_request(small_split, tmp_path):
    (tmp_path / CHECKPOINT_DIR).mkdir()
    (tmp_path / CHECKPOINT_DIR / "checkpoint-000001.npz").write_bytes(b"")
    with pytest.raises(SimulationError, match="already holds a run"):
        run_simulation_job(small_split, tmp_path, run_config={})
    assert not (tmp_path / FLWR_HOME_DIR).exists()


def start_managed_superlink(flwr_home: Path, port: int) -> subprocess.Popen:
    """``flower-superlink`` with the command line ``flwr run`` gives its managed SuperLink."""
    log_file = flwr_home.resolve() / SUPERLINK_LOG
    log_file.parent.mkdir(parents=True)
    command = [
        *(sys.executable, str(Path(sys.executable).parent / "flower-superlink")),
        *("--insecure", "--simulation", "--isolation", "subprocess"),
        *("--host", "127.0.0.1", "--port", str(port), "--log-file", str(log_file)),
    ]
    return subprocess.Popen(
        command,
        env=flower_environment(flwr_home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_for_superexec(flwr_home: Path, port: int, timeout: float = 60.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find_local_superlink(flwr_home, port)
        if {p.name for p in found} >= {"flower-superlink", "flower-superexec"}:
            return found
        time.sleep(0.5)
    raise AssertionError(f"no SuperLink with SuperExec for {flwr_home} within {timeout} s")


@pytest.mark.slow
def test_only_the_jobs_own_superlink_is_found_and_stopped(tmp_path):
    homes = {"ours": (tmp_path / "ours", free_port()), "theirs": (tmp_path / "theirs", free_port())}
    started = {who: start_managed_superlink(*home) for who, home in homes.items()}
    try:
        found = wait_for_superexec(*homes["ours"])
        assert found[0].pid == started["ours"].pid
        their_processes = wait_for_superexec(*homes["theirs"])
        # Our FLWR_HOME with their port, or their FLWR_HOME with our port: not ours.
        assert find_local_superlink(homes["ours"][0], homes["theirs"][1]) == []
        assert find_local_superlink(homes["theirs"][0], homes["ours"][1]) == []

        stop_processes(found)
        assert not any(is_alive(p.pid) for p in found)
        assert all(is_alive(p.pid) for p in their_processes)
        assert processes_with_flwr_home(homes["ours"][0]) == []
    finally:
        for home in homes.values():
            stop_processes(find_local_superlink(*home))
        for process in started.values():
            process.kill()
            process.wait(timeout=30)


@pytest.mark.slow
def test_the_console_shows_one_line_per_round_and_model_and_no_library_output(synthetic_run):
    result = synthetic_run.result
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    rounds = [line for line in lines if re.search(r"\] \w+ round \d+/\d+: ", line)]
    assert [re.search(r"\] (\w+) round (\d+)/", line).groups() for line in rounds] == [
        (model, str(number)) for model in MODELS for number in range(1, ROUNDS + 1)
    ]
    for line in rounds:
        assert f"{STOREFRONTS} sites accepted, 0 declined, 0 failed" in line
        assert re.search(r"ε ≤ \d", line)
        evaluated = f"round {ROUNDS}/{ROUNDS}" in line  # evaluation-rounds = "last"
        assert bool(re.search(r"(roc-auc|ndcg@10) 0\.\d{4}", line)) == evaluated
    # Flower's, Ray's and Opacus's own lines went to the log, not the console.
    assert not [line for line in lines if re.search(r"INFO|WARNING|Warning|backward hook", line)]
    longest = max(lines, key=len)
    assert len(longest) <= 200, longest
    log = (synthetic_run.run_dir / RUN_LOG).read_text()
    assert "Starting ScreenedFedAvg strategy" in log and "fedshop-progress" in log


@pytest.mark.slow
def test_nothing_beyond_the_wire_contract_left_a_simulated_site(synthetic_run):
    assert synthetic_run.result.returncode == 0, synthetic_run.result.stderr[-3000:]
    run_dir = synthetic_run.run_dir
    manifest, _ = load_bundle(run_dir / "bundle")
    facts = {
        model: get_model(model).facts_from_artefacts(entry["artefacts"])
        for model, entry in manifest["models"].items()
    }
    orders = pd.concat(
        pd.read_parquet(path) for path in (run_dir / "storefronts").glob("*/orders.parquet")
    )
    secrets = set(orders["customer"]) | set(orders["order_id"])
    kinds = check_sent_messages(
        synthetic_run.audit_dir,
        facts=facts,
        secrets=secrets,
        min_cohort=MIN_COHORT,
        ledgers=(run_dir / "sites").glob("*/privacy-ledger.sqlite"),
    )
    # every site answered every train message of both models and the evaluation of each
    # final model, acknowledged the delivery of the final models, and sent nothing else
    assert kinds == {
        "train": 2 * ROUNDS * STOREFRONTS,
        "evaluate": 2 * STOREFRONTS,
        "install": STOREFRONTS,
    }
