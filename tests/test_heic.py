"""HEIC (through the pillow-heif plugin) and AVIF (Pillow's own) embed like the same picture as PNG.

"To JPEG tolerance": each lossy copy's embedding may be as far from the PNG's as a quality-90 JPEG
of the same picture is (times two, plus a little, since each codec loses other details).
Without the plugin, a HEIC file is skipped with a reason naming the extra to install.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clip_embeddings as ce

pillow_heif = pytest.importorskip("pillow_heif")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pictures(tmp_path_factory, sample_images):
    folder = tmp_path_factory.mktemp("formats")
    image = Image.open(sample_images[0]).convert("RGB").resize((96, 96))
    image.save(folder / "photo.png")
    image.save(folder / "photo.jpg", quality=90)
    heif = pillow_heif.from_pillow(image)
    heif.save(folder / "photo.heic", quality=95)
    image.save(folder / "photo.avif", quality=95)
    return folder


def test_heic_and_avif_embed_like_the_png(pictures, tiny_model_path):
    assert (pictures / "photo.heic").read_bytes()[4:12] == b"ftypheic"
    ef = ce.ClipEF(str(tiny_model_path), cache=False)
    png, jpg, heic, avif = ef.embed_images([pictures / f"photo.{x}" for x in ("png", "jpg", "heic", "avif")])
    tolerance = 2 * np.linalg.norm(jpg - png) + 1e-3
    assert np.linalg.norm(heic - png) <= tolerance
    assert np.linalg.norm(avif - png) <= tolerance
    # A different picture is much further away: the check above is not vacuous.
    other = ef.embed_images([Image.open(pictures / "photo.png").rotate(90)])[0]
    assert np.linalg.norm(other - png) > tolerance


WITHOUT_PLUGIN = textwrap.dedent("""
    import json, sys
    sys.modules["pillow_heif"] = None  # as if the heic extra were not installed
    import clip_embeddings as ce
    from clip_embeddings.adapters import open_store
    store = open_store("lancedb", sys.argv[3], "photos", ce.ClipEF(sys.argv[1], cache=False))
    report = store.index_folder(sys.argv[2], progress=False)
    print(json.dumps({"new": report.new, "skipped": [[s.source, s.reason] for s in report.skipped],
                      "sources": sorted(r.source for r in store.records("image", with_vectors=False))}))
""")


def test_without_the_plugin_heic_is_skipped_with_the_install_hint(pictures, tiny_model_path, tmp_path):
    done = subprocess.run([sys.executable, "-c", WITHOUT_PLUGIN, str(tiny_model_path), str(pictures), str(tmp_path / "db")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert [Path(s).name for s, _ in out["skipped"]] == ["photo.heic"]
    assert "pip install 'clip-embeddings[heic]'" in out["skipped"][0][1]
    assert [Path(s).name for s in out["sources"]] == ["photo.avif", "photo.jpg", "photo.png"]
