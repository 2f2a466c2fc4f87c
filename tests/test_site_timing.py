"""The site's phase timers of the per-message overhead benchmark (clients/site_timing.py):
one line per message when asked for, nothing otherwise."""

import time

from clients import site_timing


def test_a_timed_message_records_its_phases_in_one_line_per_message(tmp_path, monkeypatch):
    monkeypatch.setenv(site_timing.TIMINGS_ENV, str(tmp_path))
    for _ in range(2):
        with site_timing.message("train"):
            with site_timing.phase("read"):
                time.sleep(0.01)
            with site_timing.phase("train"):
                time.sleep(0.02)
            with site_timing.phase("train"):  # a phase met twice adds up
                time.sleep(0.01)
    records = site_timing.read_timings(tmp_path)
    assert [r["kind"] for r in records] == ["train", "train"]
    for record in records:
        assert record["read"] >= 0.01 and record["train"] >= 0.03
        assert record["seconds"] >= record["read"] + record["train"]


def test_untimed_messages_write_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(site_timing.TIMINGS_ENV, raising=False)
    with site_timing.message("evaluate"), site_timing.phase("evaluate"):
        pass
    with site_timing.phase("read"):  # outside any message: ignored
        pass
    assert site_timing.read_timings(tmp_path) == []
