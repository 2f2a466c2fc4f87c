"""Checkpoints: atomic per-round writes, resume at the next round, damaged files skipped."""

import numpy as np

from server.checkpoint import (
    Checkpoint,
    ModelProgress,
    latest_checkpoint,
    remaining_rounds,
    save_checkpoint,
)


def weights_after(round_number: int) -> dict[str, np.ndarray]:
    return {"fc.weight": np.full((2, 3), round_number, dtype=np.float32)}


def run_rounds(run_dir, total: int, crash_after: int | None = None) -> list[int]:
    """A server loop in miniature: resume, run the missing rounds, checkpoint each one."""
    checkpoint = latest_checkpoint(run_dir)
    executed = []
    records = checkpoint.round_records if checkpoint else []
    for round_number in remaining_rounds(checkpoint, "churn", total):
        executed.append(round_number)
        records = [*records, {"model": "churn", "round": round_number}]
        moments = {"m_t": {"fc.weight": np.full((2, 3), 0.1 * round_number)}}
        progress = ModelProgress(round_number, weights_after(round_number), moments)
        save_checkpoint(
            run_dir, Checkpoint({"churn": progress}, records, {"num-server-rounds": total})
        )
        if round_number == crash_after:
            break
    return executed


def test_fresh_run_dir_has_no_checkpoint(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert list(remaining_rounds(None, "churn", 3)) == [1, 2, 3]


def test_killed_after_round_k_resumes_at_k_plus_1_with_no_lost_or_repeated_round(tmp_path):
    first = run_rounds(tmp_path, total=5, crash_after=2)
    second = run_rounds(tmp_path, total=5)
    assert first == [1, 2] and second == [3, 4, 5]
    final = latest_checkpoint(tmp_path)
    assert [r["round"] for r in final.round_records] == [1, 2, 3, 4, 5]
    assert final.rounds_done("churn") == 5 and final.rounds_done("recommender") == 0
    np.testing.assert_array_equal(
        final.models["churn"].weights["fc.weight"], weights_after(5)["fc.weight"]
    )
    np.testing.assert_allclose(final.models["churn"].optimizer_state["m_t"]["fc.weight"], 0.5)
    assert final.run_config == {"num-server-rounds": 5}
    assert run_rounds(tmp_path, total=5) == []  # a finished run does nothing more


def test_truncated_latest_checkpoint_falls_back_to_previous(tmp_path):
    run_rounds(tmp_path, total=3)
    newest = sorted((tmp_path / "checkpoints").glob("checkpoint-*.npz"))[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint.rounds_done("churn") == 2
    assert run_rounds(tmp_path, total=3) == [3]


def test_bit_flipped_checkpoint_is_detected_and_skipped(tmp_path):
    run_rounds(tmp_path, total=2)
    newest = sorted((tmp_path / "checkpoints").glob("checkpoint-*.npz"))[-1]
    data = bytearray(newest.read_bytes())
    offset = data.index(np.full((2, 3), 2, dtype=np.float32).tobytes())  # round-2 weights
    data[offset] ^= 0xFF
    newest.write_bytes(bytes(data))
    assert latest_checkpoint(tmp_path).rounds_done("churn") == 1


def test_leftover_temp_file_from_a_crash_is_ignored_and_old_files_pruned(tmp_path):
    run_rounds(tmp_path, total=5)
    (tmp_path / "checkpoints" / ".checkpoint-half.tmp").write_bytes(b"PK\x03\x04 partial")
    assert latest_checkpoint(tmp_path).rounds_done("churn") == 5
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*.npz"))
    assert kept == ["checkpoint-000003.npz", "checkpoint-000004.npz", "checkpoint-000005.npz"]


def test_two_models_share_one_checkpoint_and_resume_independently(tmp_path):
    churn = ModelProgress(3, weights_after(3))
    recommender = ModelProgress(1, {"item_embedding.weight": np.ones((4, 2), dtype=np.float32)})
    save_checkpoint(tmp_path, Checkpoint({"churn": churn, "recommender": recommender}))
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint.sequence == 4
    assert list(remaining_rounds(checkpoint, "churn", 3)) == []
    assert list(remaining_rounds(checkpoint, "recommender", 3)) == [2, 3]
