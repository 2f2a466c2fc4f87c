"""Progress lines: the ServerApp's markers, and what the console makes of flwr's output."""

from __future__ import annotations

import io
import json
import math
import time

from server import progress
from server.progress import RoundEvent
from simulations.runner import RunConsole

RECORD = {
    "model": "churn",
    "round": 2,
    "accepted": ["France", "Germany"],
    "declined": ["node 7 (Spain): privacy-budget-exhausted: ..."],
    "failed": [],
    "rejected": [],
    "privacy": {
        "France": {"epsilon": 3.2, "delta": 1e-5, "dp-steps": 40},
        "Germany": {"epsilon": 3.9, "delta": 1e-5, "dp-steps": 44},
    },
    "evaluate-metrics": {"roc-auc": 0.71234, "France/roc-auc": 0.7},
}


def flower_line(event: RoundEvent) -> str:
    """A marker as it arrives through ``flwr run --stream`` (Flower's log prefix)."""
    return f"INFO :      {progress.MARKER}{json.dumps(event.__dict__)}\n"


def test_a_finished_round_becomes_one_line_with_sites_epsilon_and_headline_metric() -> None:
    event = progress.round_finished("churn", 4, "roc-auc", RECORD)
    assert progress.parse(flower_line(event)) == event
    line = progress.round_line(event, 12.34)
    assert line == (
        "churn round 2/4: 2 sites accepted, 1 declined, 0 failed · ε ≤ 3.9 · roc-auc 0.7123 · "
        "12.3 s"
    )
    plain = progress.round_finished(
        "churn", 4, "roc-auc", {**RECORD, "privacy": {"France": {"epsilon": math.inf}}}
    )
    assert "no DP" in progress.round_line(plain)
    assert progress.parse("INFO : Starting ScreenedFedAvg strategy:") is None
    assert progress.parse(f"{progress.MARKER}{{not json") is None


def test_the_console_shows_round_lines_only_unless_verbose() -> None:
    started = RoundEvent("churn", 2, 4, "training", sites=7)
    done = progress.round_finished("churn", 4, "roc-auc", RECORD)
    lines = [
        "INFO :      Starting ScreenedFedAvg strategy:\n",
        "UserWarning: Full backward hook is firing\n",
        flower_line(started),
        flower_line(done),
    ]
    quiet, verbose = io.StringIO(), io.StringIO()
    for out, is_verbose in ((quiet, False), (verbose, True)):
        console = RunConsole(out, verbose=is_verbose)
        with console.ticking():
            for line in lines:
                console.show(line)
    [shown] = quiet.getvalue().splitlines()
    assert shown.startswith("[fedshop-sim] churn round 2/4: 2 sites accepted")
    assert verbose.getvalue() == "".join(lines)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_ticker_names_the_stage_under_way_and_is_cleared() -> None:
    out = Terminal()
    console = RunConsole(out)
    with console.ticking():
        console.show(flower_line(RoundEvent("recommender", 1, 3, "training", sites=5)))
        time.sleep(1.3)
        ticking = out.getvalue()
        console.show(flower_line(progress.round_finished("recommender", 3, "ndcg@10", RECORD)))
    assert "[fedshop-sim] recommender round 1/3: training at 5 sites · 1 s" in ticking
    final = out.getvalue()[len(ticking) :]
    assert final.startswith("\r") and "recommender round 2/3: 2 sites accepted" in final
