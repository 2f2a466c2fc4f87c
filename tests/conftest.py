"""Shared fixtures: the bundled data file and its ingested canonical frame, and one small
real federated run through ``fedshop-sim run`` (each once per session)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from clients.ingest import IngestReport, ingest_table
from privacy.pseudonymise import generate_key, load_key

ROOT = Path(__file__).resolve().parents[1]
BUNDLED_DATA = ROOT / "simulations" / "data" / "online_retail.csv.gz"


@pytest.fixture(scope="session")
def bundled_data_path() -> Path:
    """The project's bundled copy of UCI Online Retail (gzip CSV)."""
    return BUNDLED_DATA


@pytest.fixture(scope="session")
def bundled_orders(
    bundled_data_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[pd.DataFrame, IngestReport]:
    """``(frame, report)`` of the bundled data through the online-retail adapter, under a
    freshly generated site key. Shared: copy the frame before changing it."""
    key_path = tmp_path_factory.mktemp("site-key") / "site.key"
    generate_key(key_path)
    return ingest_table(bundled_data_path, load_key(key_path))


RETAIL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
RETAIL_ROWS = (
    "536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850,United Kingdom",
    "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850,United Kingdom",
    "536366,22633,HAND WARMER,6,2011-06-01 10:00:00,1.85,12583,France",
)


@pytest.fixture
def retail_csv(tmp_path: Path):
    """Factory writing a small online-retail CSV into ``tmp_path``; returns its path.

    ``retail_csv()`` gives a valid three-row export; pass ``rows`` (lines without the
    header), ``header``, ``name`` or ``text`` (the whole content) to vary it.
    """

    def write(
        rows: tuple[str, ...] | list[str] = RETAIL_ROWS,
        *,
        header: str = RETAIL_HEADER,
        name: str = "export.csv",
        text: str | None = None,
    ) -> Path:
        path = tmp_path / name
        path.write_text(text if text is not None else "\n".join([header, *rows]) + "\n")
        return path

    return write


# One small real federated run, shared by the runner, report and wire tests: ``fedshop-sim
# run --synthetic`` through the installed console script — two synthetic storefronts, both
# models, two rounds at ε = 3 (evaluated after the last), through the real ``flwr run``
# and its managed local SuperLink. The run directory's name holds a space and a quote, so
# the run config's paths must survive the way they are handed to Flower.
SIMULATION_STOREFRONTS = 2
SIMULATION_ROUNDS = 2
SIMULATION_EPSILON = 3.0
SIMULATION_MIN_COHORT = 10
"""The simulated sites' policy: nothing trained or released for a cohort of fewer than 10
customers (the smaller synthetic storefront holds out about 25 churn customers: with the
default minimum of 20 and its noisy count it would evaluate in about two runs of three)."""
SIMULATION_COHORT_NOISE = 3
"""The simulated sites' cohort noise (customers), so that both storefronts are certainly
above their minimum cohort."""


@dataclass(frozen=True)
class SimulationRun:
    """The run directory of the shared run and what the console script printed."""

    run_dir: Path
    result: subprocess.CompletedProcess[str]
    audit_dir: Path
    """Where the simulated sites kept a copy of every message they sent."""


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> SimulationRun:
    """The shared small federated run (see above); check ``result.returncode`` first."""
    run_dir = tmp_path_factory.mktemp("simulation") / "run 'one'"
    audit_dir = run_dir.parent / "audit"
    command = [
        str(Path(sys.executable).parent / "fedshop-sim"),
        "run",
        "--synthetic",
        *("--synthetic-storefronts", str(SIMULATION_STOREFRONTS)),
        *("--synthetic-customers", "800", "--synthetic-items", "80", "--seed", "3"),
        *("--out", str(run_dir), "--models", "churn,recommender"),
        *("--rounds", str(SIMULATION_ROUNDS), "--epsilon", str(SIMULATION_EPSILON)),
        *("--set", "churn.batch-size=32", "--set", f"audit-dir='{audit_dir}'"),
        *("--site-policy", f"min-cohort={SIMULATION_MIN_COHORT}"),
        *("--site-policy", f"cohort-noise={SIMULATION_COHORT_NOISE}"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    return SimulationRun(run_dir, result, audit_dir)
