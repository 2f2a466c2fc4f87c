"""``fedshop-sim run --ray-address`` on a real Ray cluster: a head and a worker node, each
started by ``ray start`` as processes of their own on this machine, and a small federated
run whose ClientApps must run on both.

Where each site's message was answered is told by the sites' own timing records
(:mod:`clients.site_timing`): each node is started with ``FEDSHOP_SITE_TIMINGS`` naming a
directory of its own, and a Ray worker inherits the environment of its node's ``ray
start``, never that of ``fedshop-sim`` (which does not set the variable). A run that did
not use the cluster leaves both directories empty. Ray's own per-node logs
(``<temp-dir>/session_latest/logs/worker-<id>-<job>-<pid>.err``, which a ClientApp actor
starts with ``:actor_name:ClientAppActor``) must name the same processes.

The cluster lives in a private directory: the working directory of every ``ray start``
(and so of every process of the cluster), Ray's ``--temp-dir`` of each node (so no
``/tmp/ray/ray_current_cluster`` for other Ray users on the machine to find), its own free
ports. It is stopped by pid — the processes whose working directory is that directory —
never by ``ray stop``, which stops every Ray on the machine.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clients.site_timing import TIMINGS_ENV
from common.flower_processes import FLOWER_SETTINGS
from simulations.local_superlink import FlowerProcess, is_running, stop_processes
from simulations.loopback_ports import free_port

BIN = Path(sys.executable).parent
STOREFRONTS = 4
CPUS_PER_NODE = 1
ACTOR_LOG = re.compile(r"worker-[0-9a-f]+-[0-9a-f]+-(\d+)\.err$")


@dataclass(frozen=True)
class RayNode:
    """One node of the test cluster: Ray's temp dir and the node's site-timings directory."""

    temp_dir: Path
    timings: Path

    def actor_pids(self) -> set[int]:
        """Processes of this node that hosted a ClientApp actor, from the node's Ray logs."""
        logs = self.temp_dir / "session_latest" / "logs"
        return {
            int(match.group(1))
            for path in logs.glob("worker-*.err")
            if (match := ACTOR_LOG.search(path.name))
            and ":actor_name:ClientAppActor" in path.read_text(errors="replace")[:300]
        }

    def answered(self) -> dict[int, collections.Counter[str]]:
        """Per process of this node: how many messages of each kind its sites answered."""
        return {
            int(path.stem): collections.Counter(
                json.loads(line)["kind"] for line in path.read_text().splitlines()
            )
            for path in self.timings.glob("*.jsonl")
        }


@dataclass(frozen=True)
class RayCluster:
    """A running head and worker node, and the directory all their processes run in."""

    address: str
    head: RayNode
    worker: RayNode
    directory: Path

    def processes(self) -> list[FlowerProcess]:
        """Every live process of the cluster: those running in its directory."""
        return processes_in(self.directory)


def processes_in(directory: Path) -> list[FlowerProcess]:
    """Live processes whose working directory is ``directory`` (Ray renames its workers'
    command lines and overwrites their environment, but not their working directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) != directory:
                continue
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            args = tuple(arg.decode(errors="replace") for arg in command if arg)
            found.append(FlowerProcess(int(entry.name), int(fields[19]), args))
    return found


def ray_start(directory: Path, node: RayNode, *args: str) -> None:
    """``ray start`` one node in ``directory`` with its own temp dir and timings directory."""
    node.timings.mkdir(parents=True)
    env = {
        **os.environ,
        **FLOWER_SETTINGS,
        "FLWR_HOME": str(directory / "flwr-home"),
        TIMINGS_ENV: str(node.timings),
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_ADDRESS", None)
    command = [str(BIN / "ray"), "start", *args, "--num-cpus", str(CPUS_PER_NODE)]
    command += ["--temp-dir", str(node.temp_dir), "--disable-usage-stats"]
    command += ["--dashboard-agent-listen-port", str(free_port())]
    result = subprocess.run(
        command, cwd=directory, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def ray_cluster() -> Iterator[RayCluster]:
    """A Ray head and one worker node (1 CPU each) on this machine, stopped by pid after."""
    # Not pytest's tmp_path: Ray's socket paths under the temp dir must stay short.
    directory = Path(tempfile.mkdtemp(prefix="fedshop-ray-", dir="/tmp")).resolve()
    port = free_port()
    cluster = RayCluster(
        address=f"127.0.0.1:{port}",
        head=RayNode(directory / "head", directory / "timings-head"),
        worker=RayNode(directory / "worker", directory / "timings-worker"),
        directory=directory,
    )
    try:
        ray_start(
            directory,
            cluster.head,
            "--head",
            *("--port", str(port), "--ray-client-server-port", str(free_port())),
            "--include-dashboard=false",
        )
        ray_start(directory, cluster.worker, "--address", cluster.address)
        yield cluster
    finally:
        stop_processes(cluster.processes(), timeout=10)
        left = cluster.processes()
        shutil.rmtree(directory, ignore_errors=True)
        assert not left, f"processes of the test's Ray cluster still running: {left}"


@pytest.mark.slow
def test_a_run_attached_to_a_two_node_ray_cluster_trains_sites_on_both_nodes(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    cluster_processes = ray_cluster.processes()
    raylets = [p for p in cluster_processes if p.name == "raylet"]
    assert len(raylets) == 2  # the head's and the worker's

    run_dir = tmp_path / "run"
    env = {**os.environ, **FLOWER_SETTINGS, "FLWR_HOME": str(tmp_path / "flwr-home")}
    env.pop(TIMINGS_ENV, None)  # only the cluster's nodes record where sites answered
    env.pop("RAY_ADDRESS", None)
    started = time.monotonic()
    result = subprocess.run(
        [
            str(BIN / "fedshop-sim"),
            "run",
            "--synthetic",
            *("--synthetic-storefronts", str(STOREFRONTS), "--synthetic-customers", "800"),
            *("--synthetic-items", "80", "--seed", "3"),
            *("--models", "churn", "--rounds", "1", "--client-cpus", "1"),
            *("--site-policy", "min-cohort=5", "--site-policy", "cohort-noise=2"),
            *("--ray-address", ray_cluster.address, "--out", str(run_dir)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    wall = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"ClientApps run on the Ray cluster at {ray_cluster.address}" in result.stderr

    # Every site trained and the ledgers agree with what the sites reported.
    (record,) = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    storefronts = {f"storefront-{i}" for i in range(STOREFRONTS)}
    assert set(record["accepted"]) == storefronts
    assert record["failed"] == [] and record["declined"] == []
    report = json.loads((run_dir / "privacy_report.json").read_text())
    assert {site["storefront"] for site in report["sites"]} == storefronts
    assert all(site["check"] == "match" and site["dp_steps"] > 0 for site in report["sites"])

    # Each node hosted one ClientApp actor (1 CPU per node, 1 CPU per ClientApp), and the
    # processes Ray's logs name on a node are exactly those that answered sites there.
    head, worker = ray_cluster.head.answered(), ray_cluster.worker.answered()
    assert set(head) == ray_cluster.head.actor_pids() and len(head) == 1
    assert set(worker) == ray_cluster.worker.actor_pids() and len(worker) == 1
    head_kinds = sum(head.values(), collections.Counter())
    worker_kinds = sum(worker.values(), collections.Counter())
    # Every train message was answered on the cluster, and both nodes trained sites.
    assert head_kinds["train"] + worker_kinds["train"] == STOREFRONTS
    assert head_kinds["train"] >= 1 and worker_kinds["train"] >= 1

    # The run stopped its own SuperLink and left the cluster running.
    assert all(is_running(process) for process in raylets)
    print(f"\nwall {wall:.1f} s; head answered {dict(head_kinds)}, worker {dict(worker_kinds)}")

    # A ClientApp asking for more CPUs than any node has: Ray places none, and the run
    # stops with Flower's reason in one line.
    too_big = subprocess.run(
        [str(BIN / "fedshop-sim"), "run", "--storefronts", str(run_dir / "storefronts")]
        + ["--models", "churn", "--rounds", "1", "--client-cpus", str(CPUS_PER_NODE + 1)]
        + ["--ray-address", ray_cluster.address, "--out", str(tmp_path / "too-big")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert too_big.returncode == 2
    assert "Traceback" not in too_big.stderr
    assert (
        too_big.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"fedshop-sim: error: the simulation could not run on the Ray cluster at "
            f"{ray_cluster.address}: The ActorPool is empty. The system (CPUs={CPUS_PER_NODE}.0, "
            f"GPUs=0) does not meet the criteria to host at least one client with resources: "
            f"{{'num_cpus': {CPUS_PER_NODE + 1}, 'num_gpus': 0.0}}.; see "
        )
    )
    assert all(is_running(process) for process in raylets)


def test_an_unreachable_ray_cluster_is_one_line_before_any_work(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = subprocess.run(
        [str(BIN / "fedshop-sim"), "run", "--synthetic", "--out", str(run_dir)]
        + ["--ray-address", address],
        env={**os.environ, **FLOWER_SETTINGS, "FLWR_HOME": str(tmp_path / "flwr-home")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"fedshop-sim: error: cannot reach the Ray cluster at {address} (Connection refused); "
        f"is its head running (`ray start --head --port {address.rsplit(':', 1)[1]}`)?"
    ]
    assert not run_dir.exists()  # no split generated, nothing written


def test_a_ray_address_that_is_not_host_port_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "fedshop-sim"), "run", "--synthetic", "--out", str(tmp_path / "run")]
        + ["--ray-address", "ray://head:10001"],
        env={**os.environ, **FLOWER_SETTINGS, "FLWR_HOME": str(tmp_path / "flwr-home")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "fedshop-sim: error: a Ray cluster address is HOST:PORT, as `ray start --head` "
        "prints it, got 'ray://head:10001'"
    ]
