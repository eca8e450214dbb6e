"""bench/bench.py runs every scenario and counts every job (a smoke test, not a timing test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = str(ROOT / "bench" / "bench.py")

SCENARIOS = {
    "drain_small", "drain_large", "worker_overhead", "enqueue_one_empty", "enqueue_one_script", "enqueue_one_loaded",
    "enqueue_file", "status_loaded", "list_loaded", "worker_peak_memory", "claim_waiting", "export", "import",
}
HISTORY = {"show_first", "show_middle", "show_last", "logs_middle", "cancel_finished", "list_20",
           "list_20_completed", "list_20_dead", "list_20_cancelled", "list_20_pending"}
HISTORY_STREAMED = {"stats_history", "purge_dry", "purge_history"}  # no time target, memory and lock only
SCENARIOS |= HISTORY | {f"{key}_{what}" for key in HISTORY | HISTORY_STREAMED for what in ("memory", "lock")}
DRAINS = {"drain_small", "drain_large", "worker_overhead", "worker_peak_memory"}


def test_help() -> None:
    proc = subprocess.run([sys.executable, BENCH, "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--quick", "--reps", "--jobs", "--json"):
        assert flag in proc.stdout


def test_quick_run_covers_every_scenario_and_counts_every_job(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = dict(os.environ, TMPDIR=str(temp))
    env.pop("QUEUECTL_HOME", None)
    proc = subprocess.run([sys.executable, BENCH, "--quick", "--json", "--quiet"], capture_output=True, text=True,
                          env=env, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 0, f"bench.py exited with {proc.returncode}\n{proc.stderr}"
    result = json.loads(proc.stdout)

    rows = {row["key"]: row for row in result["rows"]}
    assert set(rows) == SCENARIOS
    for row in rows.values():
        assert isinstance(row["pass"], bool)
        assert isinstance(row["value"], (int, float)), row
        assert row["value"] >= 0 if row["key"].endswith("_lock") else row["value"] > 0, row  # a lock may be free
        assert row["target"]["op"] in ("<=", ">=")
    assert result["summary"].startswith("SUMMARY:")
    assert result["all_pass"] == all(row["pass"] for row in rows.values())

    sizes = result["sizes"]
    counted = result["counted"]
    assert DRAINS | {"enqueue_file"} <= set(counted)
    for key in DRAINS:
        assert counted[key], key
        for check in counted[key]:
            assert check["completed"] == check["expected"] > 0, (key, check)
    assert [c["expected"] for c in counted["drain_small"]] == [sizes["small"]] * result["reps"]
    assert [c["expected"] for c in counted["drain_large"]] == [sizes["large"]] * result["reps"]
    assert all(c["pending_left"] == sizes["large"] for c in counted["enqueue_file"])
    assert all(c["pending_left"] == sizes["pending"] for c in counted["worker_peak_memory"])

    # Nothing is left behind: the temporary folder is gone, and nothing was written where it ran.
    assert list(temp.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]
