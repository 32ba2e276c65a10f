"""The example scripts run end to end, offline, with the tiny model's weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ["chroma_quickstart.py", "qdrant_quickstart.py", "lancedb_quickstart.py", "text_to_image_rag.py"]
NAMES = {p.name for p in (ROOT / "examples" / "images").glob("*.jpg")}


def run(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], capture_output=True, text=True,
                          timeout=240, cwd=ROOT, env={**os.environ, **(env or {})})


def test_every_example_has_help():
    for script in EXAMPLES:
        done = run(script, "--help")
        assert done.returncode == 0, done.stderr
        assert "--model" in done.stdout and "CLIP_WEIGHTS" in done.stdout


def test_qdrant_quickstart(tiny_model_path, tmp_path):
    done = run("qdrant_quickstart.py", "--model", str(tiny_model_path), "--location", str(tmp_path / "q"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "new 7, updated 0, already present 0, duplicates 0, skipped 0" in done.stdout
    # The probe image is its own nearest image.
    assert "image -> image: astronaut.jpg\n  1.000  astronaut.jpg" in done.stdout


def test_lancedb_quickstart_takes_weights_from_the_environment(tiny_model_path, tmp_path):
    done = run("lancedb_quickstart.py", "--db", str(tmp_path / "l"), env={"CLIP_WEIGHTS": str(tiny_model_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "indexed 7 images" in done.stdout
    assert "image -> image (PIL query): astronaut.jpg\n  1.000  astronaut.jpg" in done.stdout


def test_text_to_image_rag(tiny_model_path, tmp_path):
    # LanceDB here: the Qdrant quickstart already runs the Qdrant path, and each run starts Python anew.
    done = run("text_to_image_rag.py", "--model", str(tiny_model_path), "--store", "lancedb",
               "--location", str(tmp_path / "lancedb"), "-k", "2", "What is in the sky?")
    assert done.returncode == 0, done.stderr[-3000:]
    photos = [line for line in done.stdout.splitlines() if line.startswith("- ")]
    assert len(photos) == 2 and all(line[2:].split(" ")[0] in NAMES for line in photos)
    assert "Question: What is in the sky?" in done.stdout


def test_chroma_quickstart(tiny_model_path, tmp_path):
    done = run("chroma_quickstart.py", "--model", str(tiny_model_path), "--db", str(tmp_path / "c"))
    assert done.returncode == 0, done.stderr[-3000:]
    # The query image is in the collection, so it is its own nearest image.
    assert "cat.jpg looks like ['cat'," in done.stdout
    answers = [line for line in done.stdout.splitlines() if line.startswith("  '") and " → " in line]
    assert len(answers) == 3 and all(line.split(" → ")[1].split()[0] + ".jpg" in NAMES for line in answers)
