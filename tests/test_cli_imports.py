"""The console scripts' light commands run without loading the training stack.

``fedshop-sim --help``/``synth``, ``fedshop-site keygen``/``prepare`` and ``fedshop-server
certs`` need neither torch, Opacus, Flower nor matplotlib; each case runs in a fresh
interpreter and asserts which of those modules it loaded (module presence, not timings).
The commands that train import their module when they run; their handlers must resolve.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lab import cli as lab_cli
from simulations import cli as sim_cli

HEAVY_MODULES = ("torch", "opacus", "flwr", "matplotlib")

# Runs one console script's main(argv) in this fresh interpreter, then reports its exit
# code and the heavy modules loaded, as JSON on the last line of stdout.
PROBE = f"""
import importlib, json, sys
module, argv = sys.argv[1], sys.argv[2:]
try:
    code = importlib.import_module(module).main(argv)
except SystemExit as exit:
    code = exit.code
heavy = sorted(name for name in {HEAVY_MODULES!r} if name in sys.modules)
print(json.dumps({{"code": code, "heavy": heavy}}))
"""


def run_probe(module: str, *argv: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, module, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_importing_the_three_command_lines_loads_no_heavy_module() -> None:
    probe = (
        "import sys, simulations.cli, clients.cli, server.cli, lab.cli\n"
        "for cli in (simulations.cli, clients.cli, server.cli, lab.cli): cli.build_parser()\n"
        f"print(sorted(name for name in {HEAVY_MODULES!r} if name in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "argv",
    [
        ["simulations.cli", "--help"],
        ["simulations.cli", "synth", "--storefronts", "2", "--customers", "20", "--items", "10"],
        ["lab.cli", "--help"],
        ["lab.cli", "compare", "--help"],
    ],
    ids=["help", "synth", "lab-help", "compare-help"],
)
def test_light_research_commands_load_no_heavy_module(tmp_path: Path, argv: list[str]) -> None:
    if argv[1] == "synth":
        argv = [*argv, "--order-lines", "200", "--out", str(tmp_path / "split")]
    assert run_probe(*argv) == {"code": 0, "heavy": []}


def test_fedshop_site_keygen_and_prepare_load_no_heavy_module(retail_csv, tmp_path: Path) -> None:
    key = tmp_path / "site.key"
    assert run_probe("clients.cli", "keygen", "--key", str(key)) == {"code": 0, "heavy": []}
    prepared = run_probe(
        "clients.cli", "prepare", str(retail_csv()), "--key", str(key), "--out", str(tmp_path)
    )
    assert prepared == {"code": 0, "heavy": []}
    assert (tmp_path / "orders.parquet").is_file()


def test_fedshop_server_certs_loads_no_heavy_module(tmp_path: Path) -> None:
    issued = run_probe("server.cli", "certs", "--out", str(tmp_path / "certs"), "--site", "fr")
    assert issued == {"code": 0, "heavy": []}
    assert (tmp_path / "certs" / "sites").is_dir()


@pytest.mark.slow  # imports the training stack: about 10 s when nothing loaded it yet
def test_training_commands_defer_to_handlers_that_exist() -> None:
    deferred = {
        command.name: command.handler
        for command in (*sim_cli.COMMANDS, *lab_cli.COMMANDS)
        if isinstance(command.handler, sim_cli.DeferredHandler)
    }
    assert sorted(deferred) == ["compare", "main", "run", "tune"]
    for handler in deferred.values():
        assert callable(getattr(importlib.import_module(handler.module), handler.function))
