"""The demo's results writer: summary with a row per episode and the four plots."""

from __future__ import annotations

import json

from healmesh.ops.narrated_demo import Recording, Reply, Sample, write_results


def test_summary_and_plots_cover_every_episode(tmp_path):
    rec = Recording()
    for i in range(400):
        t = i * 0.1
        variant = "pytorch" if 10 <= t < 20 else ("xgboost_stable" if i % 5 else "pytorch")
        rec.replies.append(Reply(t, 200 if i != 7 else 0, variant if i != 7 else "", 10.0 + i % 7))
    for k in range(80):
        t = k * 0.5
        rec.samples.append(Sample(t, {"xgboost_stable": 0.8, "pytorch": 0.2},
                                  {"xgboost_stable": "open" if 10 <= t < 20 else "closed", "pytorch": "closed"},
                                  10 if t >= 30 else 0, "running" if t >= 30 else "idle",
                                  {"amount": 0.9, "hour": 0.01} if t >= 25 else {}))
    rec.episodes = [("1. steady", 0, 10), ("2. kill", 10, 20), ("3. drift", 20, 30), ("4. bad", 30, 40)]
    rec.marks = [(10.0, "xgboost killed"), (19.5, "xgboost back (supervisor)")]
    figures = {"requests": len(rec.replies), "client_errors": 1}
    write_results(tmp_path, rec, figures)
    for png in ("traffic_share.png", "latency.png", "breakers.png", "drift.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| 2. kill | 100 |")]
    assert rows and "pytorch 100%" in rows[0]
    assert "| 1. steady | 100 | 1 |" in summary  # the failed request is counted in its episode
    assert json.loads((tmp_path / "figures.json").read_text())["client_errors"] == 1
    events = summary.split("## Process events")[1].split("## Timeline")[0]
    assert "`   10.0s` xgboost killed" in events and "`   19.5s` xgboost back (supervisor)" in events
