"""``fedshop-sim`` end to end: the installed console script writes splits and prints
their summary; user errors are one line with exit code 2."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from clients.ingest import REPORT_FILE
from models import schema
from simulations import cli, jobs
from simulations.storefronts import INDEX_FILE, KEY_FILE, SUMMARY_FILE

FEDSHOP_SIM = Path(sys.executable).parent / "fedshop-sim"


def run_console_script(*args: str) -> subprocess.CompletedProcess[str]:
    assert FEDSHOP_SIM.is_file(), f"{FEDSHOP_SIM} is not installed (pip install -e .)"
    return subprocess.run(
        [str(FEDSHOP_SIM), *args], capture_output=True, text=True, timeout=300, check=False
    )


def read_split(out: Path) -> pd.DataFrame:
    index = json.loads((out / INDEX_FILE).read_text())
    return pd.concat(pq.read_table(out / e["file"]).to_pandas() for e in index["storefronts"])


@pytest.mark.slow
def test_synth_writes_a_seeded_split_and_prints_its_summary(tmp_path: Path) -> None:
    sizes = ["--storefronts", "3", "--customers", "60", "--items", "40", "--order-lines", "2000"]
    first = run_console_script("synth", "--out", str(tmp_path / "a"), *sizes, "--seed", "5")
    assert first.returncode == 0, first.stderr
    summary = pd.read_csv(tmp_path / "a" / SUMMARY_FILE)
    assert list(summary["storefront"]) == ["storefront-0", "storefront-1", "storefront-2", "Total"]
    assert summary["order_lines"].iloc[-1] == 2000
    assert summary["customers"].iloc[-1] == 60
    printed = first.stdout.splitlines()
    assert printed[0].split() == [
        "storefront",
        "customers",
        "orders",
        "order_lines",
        "items",
        "first_date",
        "last_date",
    ]
    assert printed[-1].split()[:4] == ["Total", "60", f"{summary['orders'].iloc[-1]:,}", "2,000"]
    assert "generate synthetic order lines: done in" in first.stderr
    rows = read_split(tmp_path / "a")
    assert len(rows) == 2000

    again = run_console_script("synth", "--out", str(tmp_path / "b"), *sizes, "--seed", "5")
    assert again.returncode == 0, again.stderr
    sort = [schema.ORDER, schema.ITEM, schema.IS_RETURN]
    pd.testing.assert_frame_equal(
        rows.sort_values(sort).reset_index(drop=True),
        read_split(tmp_path / "b").sort_values(sort).reset_index(drop=True),
    )


@pytest.mark.slow
def test_main_prepares_the_bundled_storefronts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only main's first stage: the federated stages are tested in tests/test_runner.py.
    monkeypatch.setattr(jobs, "MAIN_STAGES", [jobs.prepare_storefronts_stage])
    run_dir = tmp_path / "run"
    assert cli.main(["main", "--out", str(run_dir)]) == 0
    result = capsys.readouterr()
    split = run_dir / "storefronts"
    key = split / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.stat().st_size == 32
    summary = pd.read_csv(split / SUMMARY_FILE).set_index("storefront")
    assert set(summary.index) == {
        "United Kingdom",
        "Germany",
        "France",
        "Spain",
        "Belgium",
        "Switzerland",
        "Other",
        "Total",
    }
    report = json.loads((split / REPORT_FILE).read_text())
    assert summary.loc["Total", "order_lines"] == report["rows_written"]
    assert summary.loc["Total", "customers"] == report["customers_written"] == 4362
    for name in summary.index.drop("Total"):
        assert f"{name} " in result.out
    assert f"Total {summary.loc['Total', 'customers']:,} " in " ".join(result.out.split())
    assert "ingest online_retail.csv.gz: done in" in result.err
    assert len(read_split(split)) == summary.loc["Total", "order_lines"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["synth", "--storefronts", "5", "--customers", "3", "--items", "9"], "n_customers=3"),
        (["synth", "--storefronts", "1", "--customers", "9", "--items", "1"], "n_items"),
        (["storefronts"], "refusing to replace"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("not a split")
    assert cli.main([*argv, "--out", str(occupied)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fedshop-sim: error: ") and message in err[-1]
    assert not any("Traceback" in line for line in err)
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]


def test_bad_arguments_exit_2_without_traceback(tmp_path: Path) -> None:
    result = run_console_script("synth", "--out", str(tmp_path / "x"), "--storefronts", "0")
    assert result.returncode == 2
    assert "--storefronts: must be at least 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_synth_takes_the_largest_storefronts_share_or_zipf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sizes = ["--storefronts", "10", "--customers", "2000", "--items", "30", "--order-lines", "6000"]
    for share, out in (("0.5", "half"), ("zipf", "zipf")):
        assert (
            cli.main(["synth", "--out", str(tmp_path / out), *sizes, "--largest-share", share]) == 0
        )
    half = json.loads((tmp_path / "half" / INDEX_FILE).read_text())
    zipf = json.loads((tmp_path / "zipf" / INDEX_FILE).read_text())
    assert (half["largest-share"], zipf["largest-share"]) == (0.5, "zipf")
    assert half["storefronts"][0]["customers"] == pytest.approx(1000, abs=10)
    assert 700 < zipf["storefronts"][0]["customers"] < 900  # ~40 % on the k^-1.2 curve
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["synth", "--out", str(tmp_path / "x"), *sizes, "--largest-share", "1"])
    assert exit_code.value.code == 2
    assert "--largest-share: must be in (0, 1) or 'zipf', got 1" in capsys.readouterr().err


def test_run_passes_order_lines_and_largest_share_to_the_generator() -> None:
    args = cli.build_parser().parse_args(
        ["run", "--synthetic", "--out", "x", "--synthetic-order-lines", "5000"]
        + ["--synthetic-largest-share", "zipf"]
    )
    assert (args.synthetic_order_lines, args.synthetic_largest_share) == (5000, None)
    defaults = cli.build_parser().parse_args(["run", "--synthetic", "--out", "x"])
    assert (defaults.synthetic_order_lines, defaults.synthetic_largest_share) == (None, 0.85)


@pytest.mark.slow
def test_writing_a_synthetic_split_gives_the_lines_memory_back(tmp_path: Path) -> None:
    # `fedshop-sim run` keeps its process through the federation: after writing the split,
    # its resident memory must be far below the generation's peak (Arrow's allocator
    # otherwise keeps the freed pages of every line).
    script = f"""
from pathlib import Path
from simulations.synthetic import write_synthetic_split
from simulations.progress import SILENT
write_synthetic_split(Path({str(tmp_path / "split")!r}), storefronts=50, customers=100_000,
    items=2000, order_lines=2_000_000, seed=0, progress=SILENT, largest=None)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    resident, peak = map(int, result.stdout.split())
    assert resident < 0.4 * peak, (resident, peak)  # ~0.27 here; ~0.54 without the release
