"""The benchmarks still run: --help, and one tiny encode run whose JSON has what the README reads.

No timing is asserted (timings belong to benchmarks/README.md, not to tests).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_run_all_help_lists_the_flags():
    done = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    for flag in ("--models", "--quick", "--repeats", "--images", "--json"):
        assert flag in done.stdout


def test_tiny_encode_run_writes_the_expected_json(tmp_path):
    out = tmp_path / "encode.json"
    cmd = [sys.executable, str(BENCH / "bench_encode.py"), "--models", "tiny", "--images", "2", "--texts", "8",
           "--batch", "4", "--repeats", "1", "--json", str(out), "--data-dir", str(tmp_path / "data")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"environment", "settings", "models"} <= set(result)
    tasks = result["models"]["tiny"]
    assert set(tasks) == {"image", "text"}
    assert {"reference", "ours"} <= set(tasks["image"])
    assert {"reference", "ours", "ours length-sorted", "ClipEF.embed_texts"} <= set(tasks["text"])
    for variants in tasks.values():
        for name, entry in variants.items():
            for key in ("items_per_s", "iqr", "min", "max", "ratio", "peak_rss_mb", "cosine_min", "max_abs_diff"):
                assert key in entry, (name, key)
            assert entry["cosine_min"] >= 0.999, name
    assert tasks["text"]["ours"]["max_abs_diff"] <= 1e-5
