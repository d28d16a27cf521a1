"""`make bench-faces` (benchmarks.faces) end to end at a tiny size: it runs, and its JSON says what the docs quote."""
from __future__ import annotations

import json
import os

import pytest

from benchmarks import faces as bench


@pytest.mark.slow
def test_the_faces_benchmark_runs_at_a_tiny_size(tmp_path, face_weights):
    cores = os.sched_getaffinity(0)
    r = bench.run(tmp_path, str(face_weights), seconds=2, width=180, height=320, num_frames=8, repeat=1, lfw=1)
    assert os.sched_getaffinity(0) == cores                       # the pin to one core is undone
    assert json.loads((tmp_path / "bench_faces.json").read_text()) == json.loads(json.dumps(r))
    assert r["faces_stage"]["found"] == 8 and r["expression"]["crops"] == 8 and r["egemaps"]["rows"] == 1
    assert r["expression"]["top"] == "happy"                       # the smiling astronaut
    for part in ("faces_stage", "expression", "egemaps", "old_path"):
        assert 0 < r[part]["wall"] and 0 < r[part]["cpu"]
    assert set(r["recall"]) == {"astronaut", "hopper", "lfw"}
    assert all(0 <= rec["stage"] <= 1 and 0 <= rec["full_search"] <= 1 for rec in r["recall"].values())
    assert r["recall"]["astronaut"]["stage"] == 1.0
    text = bench.report(r)
    assert "faces + expression" in text and "2-s target" in text and "recall lfw (8 frames)" in text
