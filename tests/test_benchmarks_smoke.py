"""The benchmarks still run: --help, and one tiny encode run whose JSON has what the README reads.

No timing is asserted (timings belong to benchmarks/README.md, not to tests).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clip_embeddings.runtime.auto import INT8_COSINE_BAR
from clip_embeddings.runtime.int8 import int8_available

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
    peers = {"HF transformers CLIPModel", "ONNX Runtime fp32"}
    assert {"reference", "ours auto", "ours, no rewrite"} | peers <= set(tasks["image"])
    assert {"reference", "ours auto", "ours auto length-sorted", "ClipEF.embed_texts"} | peers <= set(tasks["text"])
    assert result["runtime"]["tiny"]["precision"].startswith("fp32")  # too small to probe: exact fp32
    for variants in tasks.values():
        for name, entry in variants.items():
            for key in ("items_per_s", "iqr", "min", "max", "ratio", "peak_rss_mb", "cosine_min", "max_abs_diff"):
                assert key in entry, (name, key)
            assert entry["cosine_min"] >= (INT8_COSINE_BAR if "int8" in name else 0.999), name
    assert tasks["text"]["ours auto"]["max_abs_diff"] <= 1e-5
    if int8_available():  # the int8 rows are there, and really rounded
        assert {"ours int8 (int8)", "ClipEF.embed_texts int8"} <= set(tasks["text"])
        assert tasks["image"]["ours int8 (int8)"]["max_abs_diff"] > 1e-5


@pytest.mark.slow
def test_bench_quick_runs_end_to_end_on_the_tiny_model(tmp_path):
    """``clip-embeddings bench --quick``: every stage (encode with peers, ingest, memory) and a summary."""
    out = tmp_path / "run_all.json"
    cmd = [sys.executable, "-m", "clip_embeddings.apps.cli", "bench", "--quick", "--models", "tiny", "--memory-model", "tiny",
           "--json", str(out), "--data-dir", str(tmp_path / "data")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=BENCH.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "flags seen:" in done.stdout and "auto on tiny:" in done.stdout
    result = json.loads(out.read_text())
    assert {"encode", "ingest", "memory", "summary"} <= set(result)
    image = result["encode"]["models"]["tiny"]["image"]
    for row in ("reference", "ours auto", "HF transformers CLIPModel", "ONNX Runtime fp32"):
        assert image[row]["cosine_min"] >= 0.9999, row  # every peer computes the same model
    assert result["encode"]["runtime"]["tiny"]["cpu_flags"] is not None
    assert result["memory"]["runs"][-1]["n"] == 1000
    assert any("default" in line for line in result["summary"])
    peer = result["ingest"]["models"]["tiny"]["fastembed (same weights, ONNX)"]
    assert peer.get("skipped") or peer["cosine_min"] >= 0.9999  # fastembed on the same weights: the same vectors
    assert result["first_vector"]["models"]["tiny"]["runs"]["auto"][0]["first_vector_s"] > 0


def test_first_vector_run_times_fresh_processes_for_both_dtypes(tmp_path):
    out = tmp_path / "first.json"
    cmd = [sys.executable, str(BENCH / "bench_first_vector.py"), "--models", "tiny", "--repeats", "1", "--json", str(out),
           "--data-dir", str(tmp_path / "data")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    model = json.loads(out.read_text())["models"]["tiny"]
    assert set(model["runs"]) == {"auto", "fp32"}
    auto = model["runs"]["auto"][0]
    assert auto["source_first"] == "small model" and auto["precision_first"].startswith("fp32")  # tiny: never probed
    assert model["runs"]["fp32"][0]["source_first"] == "asked"


def test_store_ingest_run_compares_each_store_to_writing_nowhere(tmp_path):
    out = tmp_path / "stores.json"
    cmd = [sys.executable, str(BENCH / "bench_stores.py"), "--models", "tiny", "tiny", "--images", "4", "--repeats", "1",
           "--stores", "nowhere", "chroma", "--json", str(out), "--data-dir", str(tmp_path / "data")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = json.loads(out.read_text())["runs"]
    assert len(runs) == 2  # a second model run opens fresh collections, not the first run's
    stores = runs[0]["stores"]
    assert set(stores) == {"nowhere", "chroma"}
    assert stores["nowhere"]["ratio"] == 1.0 and stores["chroma"]["ratio"] > 0


def test_hold_avx2_holds_the_kernels_and_what_auto_sees(tmp_path):
    probe = tmp_path / "what_runs.py"
    probe.write_text(
        "import json, os, torch\n"
        "from clip_embeddings.runtime import auto, table\n"
        "caps = auto.detect_capabilities()\n"
        "print(json.dumps({'torch': torch.backends.cpu.get_cpu_capability(), 'level': table.isa_level(caps),\n"
        "                  'bf16': caps.native_bf16, 'mkl': os.environ.get('MKL_ENABLE_INSTRUCTIONS'),\n"
        "                  'probe': os.environ.get('CLIP_AUTO_PROBE')}))\n")
    done = subprocess.run([sys.executable, str(BENCH / "hold_avx2.py"), str(probe)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    # torch's kernel level is at most AVX2 whatever this CPU has (DEFAULT on a CPU without AVX2)
    assert seen["torch"] in ("AVX2", "DEFAULT")
    assert seen == {**seen, "level": "avx2", "bf16": False, "mkl": "AVX2", "probe": "0"}
    done = subprocess.run([sys.executable, str(BENCH / "hold_avx2.py"), "--probe", str(probe)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {**seen, "level": "avx2", "probe": "1"}  # auto may probe, on the held kernels


def test_serve_threads_run_asks_both_servers_every_kind_of_request(tmp_path):
    out = tmp_path / "serve_threads.json"
    cmd = [sys.executable, str(BENCH / "bench_serve_threads.py"), "--quick", "--requests", "2", "--json", str(out),
           "--data-dir", str(tmp_path / "data")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"1 caption", "8 captions", "1 image"}
    for row in rows.values():
        assert set(row["ms"]) == {"compute thread (default)", "CLIP_COMPUTE_THREAD=0"}
        assert min(row["ms"].values()) > 0 and row["ratio"] > 0
