"""Collections written by release 0.1.0 still open and answer queries with the current code.

The fixtures in ``tests/fixtures/old_collections`` were written once, by 0.1.0's public API
(``tests/fixtures/make_old_collections.py``); they are never regenerated. Each test copies them
to a temporary folder and opens the store in a fresh process, from its stored config alone (no
``ClipEF`` given), the way a user who upgraded would reopen their database.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "old_collections"
IMAGES = ROOT / "examples" / "images"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
CAPTIONS = json.loads((IMAGES / "captions.json").read_text())

# Runs in the copy's folder: the stored config names the model as "tiny-clip.pt", relative.
PROBE = r"""
import json, sys
from clip_embeddings.adapters import open_store
kind, images, text = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
store = open_store(kind, kind, "photos")
out = {"images": store.count("image"), "texts": store.count("text"), "by_image": {}}
for path in images:
    hit = store.query(image=path, k=3)[0]
    out["by_image"][path] = {"id": hit.id, "score": hit.score, "document": hit.document, "metadata": hit.metadata}
hit = store.query(text, k=1, modality="text")[0]
out["by_text"] = {"id": hit.id, "score": hit.score, "document": hit.document}
out["config_model"] = store.ef.model_name
print(json.dumps(out))
"""


@pytest.fixture
def old_copy(tmp_path) -> Path:
    """The fixtures copied (a store may write on open) with the gzipped checkpoint unpacked."""
    folder = tmp_path / "old"
    shutil.copytree(FIXTURES, folder)
    with gzip.open(folder / "tiny-clip.pt.gz", "rb") as src, open(folder / "tiny-clip.pt", "wb") as dst:
        shutil.copyfileobj(src, dst)
    return folder


@pytest.mark.parametrize("kind", sorted(EXPECTED["stores"]))
def test_a_collection_written_by_0_1_0_opens_and_answers(kind, old_copy):
    want = EXPECTED["stores"][kind]
    images = [str(IMAGES / name) for name in sorted(want["image_ids"])]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", PROBE, kind, ",".join(images), want["text"]], cwd=old_copy,
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert (got["images"], got["texts"]) == (3, 4)  # three images, their three captions, one text
    assert got["config_model"] == "tiny-clip.pt"
    for path in images:
        name = Path(path).name
        hit = got["by_image"][path]
        # The same photo comes back first, as itself: the stored vector and today's agree.
        assert hit["id"] == want["image_ids"][name]
        assert hit["score"] == pytest.approx(1.0, abs=1e-3)
        assert hit["document"] == CAPTIONS[name]
        assert hit["metadata"] == {"file": name}
    assert got["by_text"]["document"] == want["text"]
    assert got["by_text"]["id"] == want["text_id"]
    assert got["by_text"]["score"] == pytest.approx(1.0, abs=1e-3)


def test_the_fixtures_stay_small():
    size = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert size < 2_000_000
