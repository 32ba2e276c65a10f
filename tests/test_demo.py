"""``python -m clip_embeddings.demo`` end to end on the tiny random model, and its offline error."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error

from PIL import Image

from clip_embeddings.apps import demo


def test_demo_prints_tables_and_saves_contact_sheet(tmp_path, tiny_model_path):
    env = {**os.environ, "CLIP_WEIGHTS": str(tiny_model_path)}
    result = subprocess.run([sys.executable, "-m", "clip_embeddings.demo", "--output", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "1. indexed 7 photo(s)" in out and "new 7, updated 0, already present 0, duplicates 0, skipped 0" in out
    assert "2. text -> image search" in out
    assert "3. zero-shot classification over 7 labels" in out
    for header in (["query", "rank", "score", "image", "expected"], ["image", "prediction", "probability"]):
        assert any(line.split()[: len(header)] == header for line in out.splitlines() if line.strip())
    for query, _ in demo.QUERIES:
        assert query in out
    assert "cat.jpg" in out and "rocket.jpg" in out

    sheet = tmp_path / "contact_sheet.png"
    assert f"4. contact sheet: {sheet}" in out
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.size == demo.sheet_size(len(demo.QUERIES))
        # Thumbnails were pasted: the sheet is not a blank page.
        assert len(image.getcolors(maxcolors=1 << 20) or range(1 << 20)) > 1000
    assert (tmp_path / "chroma").is_dir()


def test_demo_offline_says_set_clip_weights_in_one_line(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr("clip_embeddings.core.download.urllib.request.urlopen", offline)
    monkeypatch.delenv("CLIP_WEIGHTS", raising=False)
    assert demo.main(["--output", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: Could not reach") and "CLIP_WEIGHTS" in lines[0]
    assert "Traceback" not in captured.err


def test_demo_help(capsys):
    try:
        demo.main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    assert "--model" in out and "--output" in out


def installed_copy(tmp_path):
    """The package as pip installs it: clip_embeddings/ alone in site-packages, no examples/ beside it."""
    import shutil
    from pathlib import Path

    import clip_embeddings

    site = tmp_path / "site-packages"
    shutil.copytree(Path(clip_embeddings.__file__).parent, site / "clip_embeddings",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return site


def test_installed_demo_without_photos_says_how_in_one_line(tmp_path, tiny_model_path):
    site = installed_copy(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(site), "CLIP_WEIGHTS": str(tiny_model_path)}
    output = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "clip_embeddings.demo", "--output", str(output)],
                            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: the sample photos are not installed with the package") and "--images DIR" in line
    assert not output.exists()  # refused before anything was written


def test_installed_demo_runs_on_given_photos(tmp_path, tiny_model_path, sample_images):
    site = installed_copy(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(site), "CLIP_WEIGHTS": str(tiny_model_path)}
    result = subprocess.run([sys.executable, "-m", "clip_embeddings.demo", "--output", str(tmp_path / "out"),
                             "--images", str(sample_images[0].parent)],
                            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1. indexed 7 photo(s)" in result.stdout and (tmp_path / "out" / "contact_sheet.png").is_file()
