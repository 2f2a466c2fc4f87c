"""Benchmark: a storefront's recommendation API under load, and batch ``recommend``.

Run ``python -m lab.benchmarks.serving``; it prints a Markdown section for
BENCHMARKS.md. The site is the largest storefront of the bundled data (its prepared
orders from the storefront split, its key), with a model bundle installed: ``--bundle``
(e.g. a main job's ``runs/main/bundle``), else one of the models' initial weights over the
bundled catalogue — the work per request does not depend on the weights' values.

- **batch**: ``fedshop-site recommend --out`` for every customer, timed end to end (a
  fresh process: imports, loading, scoring, writing) and as the command reports its
  scoring alone;
- **API**: a real ``fedshop-site serve`` process (uvicorn, loopback), asked for
  ``/v1/customers/{id}/recommendations?k=10`` with the site's own customer ids (hashed by
  the server), by a load generator in this process: ``--workers`` threads, each with its
  own keep-alive ``httpx`` client. *Open loop*: requests are scheduled at ``--rate`` per
  second whatever the answers' speed; latency is from the scheduled start to the answer,
  so a generator or server that falls behind shows in it. *Closed loop*: the workers ask
  back to back, which gives the most requests per second the machine serves.

Generator and server share the machine (2 cores here), so the numbers are conservative;
the load average before and after each measurement is reported.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from clients.adapters import ADAPTERS
from clients.model_store import install_bundle_dir
from clients.own_ids import own_ids
from common.flower_processes import stop
from models import schema
from privacy.pseudonymise import load_key
from server.bundle import export_bundle
from server.server_app import plan_models
from simulations.loopback_ports import free_port
from simulations.runner import app_run_config, storefront_slugs
from simulations.shared_facts import with_split_facts
from simulations.storefronts import BUNDLED_DATA, KEY_FILE, prepare_bundled_storefronts

K = 10


@dataclass(frozen=True)
class LoadResult:
    """One load measurement."""

    label: str
    offered: float | None
    """Requests per second scheduled (None: closed loop)."""
    achieved: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    load_before: float
    load_after: float


def largest_storefront(split: Path) -> str:
    """The slug of the storefront with the most customers."""
    return max(
        storefront_slugs(split),
        key=lambda slug: pd.read_parquet(split / slug / schema.ORDERS_FILE)[
            schema.CUSTOMER
        ].nunique(),
    )


def initial_bundle(split: Path, run_dir: Path) -> Path:
    """A bundle of every model's initial weights over the split's shared facts."""
    config = {**app_run_config(), "storefronts-dir": str(split), "run-dir": str(run_dir)}
    runs = plan_models(with_split_facts(config))
    return export_bundle(
        run_dir,
        {run.model.name: run.model.initial_weights(run.facts) for run in runs},
        rounds_done={},
        privacy={},
        run_config=config,
        artefacts={run.model.name: run.model.artefacts(run.facts) for run in runs},
    )


def start_server(site_cli: str, data: Path, key: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """Start ``fedshop-site serve`` on a free loopback port; returns it once healthy."""
    port = free_port()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [site_cli, "serve", "--data", str(data), "--key", str(key), "--port", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    stop(process)
    raise SystemExit("serve did not start within 180 s")


def run_load(
    url: str,
    token: str,
    customers: list[str],
    *,
    seconds: float,
    workers: int,
    rate: float | None,
    label: str,
) -> LoadResult:
    """Ask for recommendations for ``seconds``: scheduled at ``rate`` per second (open
    loop) or back to back (``rate`` None); see the module docstring."""
    jobs: queue.Queue[tuple[float, str] | None] = queue.Queue()
    results: list[tuple[float, float, int]] = []  # (scheduled, done, status)
    lock = threading.Lock()
    started = time.monotonic() + 0.2
    ends = started + seconds

    def work(worker: int) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
            request = 0
            while True:
                if rate is None:
                    scheduled = time.monotonic()
                    if scheduled >= ends:
                        return
                    customer = customers[(worker * 7919 + request) % len(customers)]
                    request += 1
                else:
                    job = jobs.get()
                    if job is None:
                        return
                    scheduled, customer = job
                    time.sleep(max(0.0, scheduled - time.monotonic()))
                try:
                    status = client.get(
                        f"/v1/customers/{customer}/recommendations", params={"k": K}
                    ).status_code
                except httpx.HTTPError:
                    status = 0
                with lock:
                    results.append((scheduled, time.monotonic(), status))

    load_before = os.getloadavg()[0]
    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    if rate is not None:
        count = int(seconds * rate)
        for index in range(count):
            scheduled = started + index / rate
            time.sleep(max(0.0, scheduled - time.monotonic() - 0.05))
            jobs.put((scheduled, customers[index % len(customers)]))
        for _ in threads:
            jobs.put(None)
    for thread in threads:
        thread.join()
    load_after = os.getloadavg()[0]
    scheduled, done, status = (np.array(column) for column in zip(*results, strict=True))
    latency_ms = (done - scheduled) * 1000
    return LoadResult(
        label=label,
        offered=rate,
        achieved=len(results) / (done.max() - started),
        p50_ms=float(np.percentile(latency_ms, 50)),
        p99_ms=float(np.percentile(latency_ms, 99)),
        errors=int((status != 200).sum()),
        requests=len(results),
        load_before=load_before,
        load_after=load_after,
    )


def main(argv: list[str] | None = None) -> int:
    """Measure batch and API throughput at the largest bundled storefront; print Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each load run")
    parser.add_argument("--workers", type=int, default=8, help="load generator threads")
    parser.add_argument("--bundle", type=Path, help="a model bundle (default: initial weights)")
    args = parser.parse_args(argv)
    site_cli = str(Path(sys.executable).parent / "fedshop-site")
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as temporary:
        root = Path(temporary)
        split = root / "storefronts"
        prepare_bundled_storefronts(split)
        slug = largest_storefront(split)
        data, key = root / "site", split / KEY_FILE
        data.mkdir()
        shutil.copy(split / slug / schema.ORDERS_FILE, data / schema.ORDERS_FILE)
        install_bundle_dir(args.bundle or initial_bundle(split, root / "initial-weights"), data)
        tokens = set(pd.read_parquet(data / schema.ORDERS_FILE)[schema.CUSTOMER])
        ids = own_ids(BUNDLED_DATA, load_key(key), ADAPTERS["online-retail"])
        customers = sorted(ids[token] for token in tokens)
        np.random.default_rng(0).shuffle(customers)

        load_before = os.getloadavg()[0]
        started = time.monotonic()
        batch = subprocess.run(
            [site_cli, "recommend", "--data", str(data), "--out", str(root / "recs.parquet")],
            capture_output=True,
            text=True,
            check=True,
        )
        batch_seconds = time.monotonic() - started
        batch_load = (load_before, os.getloadavg()[0])
        scored_line = next(line for line in batch.stderr.splitlines() if line.startswith("scored"))

        server, url = start_server(site_cli, data, key, root / "serve.log")
        try:
            token = (data / "api-token").read_text().strip()
            run_load(url, token, customers, seconds=3, workers=args.workers, rate=None, label="")
            results = [
                run_load(
                    url,
                    token,
                    customers,
                    seconds=args.seconds,
                    workers=args.workers,
                    rate=args.rate,
                    label="open loop",
                ),
                run_load(
                    url,
                    token,
                    customers,
                    seconds=args.seconds,
                    workers=args.workers,
                    rate=None,
                    label="closed loop",
                ),
            ]
        finally:
            stop(server)
    print_section(argv, slug, len(customers), args, batch_seconds, batch_load, scored_line, results)
    return 0


def print_section(
    argv: list[str] | None,
    slug: str,
    customers: int,
    args: argparse.Namespace,
    batch_seconds: float,
    batch_load: tuple[float, float],
    scored_line: str,
    results: list[LoadResult],
) -> None:
    """The Markdown section for BENCHMARKS.md."""
    command = " ".join(["python -m lab.benchmarks.serving", *(argv or sys.argv[1:])])
    weights = f"bundle `{args.bundle}`" if args.bundle else "the models' initial weights"
    print("## Serving at a storefront (recommendations API, batch recommend)\n")
    print(
        f"Command: `{command.strip()}`; storefront `{slug}` of the bundled data ({customers:,}"
        f" customers), {weights}, k = {K}; {os.cpu_count()} cores shared by the server and "
        f"the load generator ({args.workers} threads of keep-alive httpx clients); "
        f"{args.seconds:.0f} s per load run after a 3 s warm-up.\n"
    )
    print("| load | offered req/s | achieved req/s | p50 ms | p99 ms | errors | load avg |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for result in results:
        offered = f"{result.offered:.0f}" if result.offered else "as fast as answered"
        print(
            f"| {result.label} | {offered} | {result.achieved:.0f} | {result.p50_ms:.1f} | "
            f"{result.p99_ms:.1f} | {result.errors} of {result.requests:,} | "
            f"{result.load_before:.1f} → {result.load_after:.1f} |"
        )
    print(
        f"\nBatch: `fedshop-site recommend --out recs.parquet` for all {customers:,} customers "
        f"took {batch_seconds:.1f} s end to end ({customers / batch_seconds:,.0f} customers/s,"
        f" load avg {batch_load[0]:.1f} → {batch_load[1]:.1f}); the command reports: "
        f'"{scored_line}".'
    )


if __name__ == "__main__":
    sys.exit(main())
