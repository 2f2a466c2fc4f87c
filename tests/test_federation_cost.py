"""The federation-cost benchmark's split of the federated − sequential gap into a fixed
cost per run and a marginal overhead per site-round."""

from __future__ import annotations

import pytest

from lab.benchmarks.federation_cost import print_marginal_overhead


def _run(federated: float, sequential: float) -> dict[str, float]:
    return {"federated-seconds": federated, "sequential-seconds": sequential}


def test_the_gap_splits_into_a_fixed_cost_and_a_marginal_overhead(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 30 s fixed + 40 ms per site-round, over 200 and 600 site-rounds
    print_marginal_overhead(_run(68.0, 30.0), 200, _run(114.0, 60.0), 600)
    printed = capsys.readouterr().out
    assert "gaps 38.0 s and 54.0 s" in printed
    assert "fixed cost per run **30.0 s**" in printed
    assert "marginal overhead per site-round **40 ms** (target ≤ 50 ms: met)" in printed

    print_marginal_overhead(_run(68.0, 30.0), 200, _run(134.0, 60.0), 600)
    assert "**90 ms** (target ≤ 50 ms: NOT met)" in capsys.readouterr().out
