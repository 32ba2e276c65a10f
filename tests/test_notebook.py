"""examples/notebook.ipynb: committed with the outputs of a tiny-random-model run, and it still runs.

The committed outputs are made by ``python -m tests.notebook_runner``; this test re-executes the
notebook (with nbclient, in this interpreter) and checks both the fresh outputs and the committed
ones: the same kinds of output per cell, search hits drawn as thumbnails, and the notice that the
shown numbers come from a random model.
"""

from __future__ import annotations

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

from tests.notebook_runner import NOTEBOOK, execute  # noqa: E402


def outputs_of(nb) -> tuple[str, list[list[str]], int]:
    """All text shown, the output kinds per code cell, and how many PNG images are displayed."""
    texts, kinds, images = [], [], 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kinds.append([])
        for output in cell.get("outputs", []):
            kinds[-1].append(output.output_type)
            if output.output_type == "stream":
                texts.append(output.text)
            elif output.output_type in ("display_data", "execute_result"):
                texts.append(output.get("data", {}).get("text/plain", ""))
                images += "image/png" in output.get("data", {})
            assert output.output_type != "error", output
    return "\n".join(texts), kinds, images


def test_committed_notebook_shows_a_tiny_model_run_with_thumbnails():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    text, kinds, images = outputs_of(nb)
    assert all(kinds), "every code cell has its output committed"
    assert "tiny random model" in nb.cells[0].source and "meaningless" in nb.cells[0].source
    assert "model: tiny-random-clip.pt" in text and "image embeddings: (7, 64)" in text
    assert images == 2  # the search results as thumbnails, and the heat-map
    search = next(c for c in nb.cells if c.cell_type == "code" and "contact_sheet" in c.source)
    assert any("image/png" in o.get("data", {}) for o in search.outputs)
    assert "/tmp" not in text and "saved " not in text  # nothing written, no machine-specific paths


def test_notebook_runs_on_tiny_model(tmp_path, monkeypatch, tiny_model_path):
    monkeypatch.setenv("CLIP_WEIGHTS", str(tiny_model_path))
    monkeypatch.setenv("CLIP_NOTEBOOK_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("JUPYTER_PATH", "")  # set by execute(); monkeypatch restores it afterwards
    nb = execute(nbformat.read(NOTEBOOK, as_version=4), tmp_path)  # raises CellExecutionError if a cell fails

    text, kinds, images = outputs_of(nb)
    assert f"model: {tiny_model_path.name}" in text
    assert "image embeddings: (7, 64)" in text
    assert "new 7, " in text
    assert "top hit for cat.jpg: cat.jpg (score 1.000)" in text
    assert "cat.jpg         ->" in text  # the classification table
    heatmap = tmp_path / "out" / "similarity_heatmap.png"
    assert f"saved {heatmap}" in text and heatmap.stat().st_size > 1000
    assert images == 2  # the thumbnails and the heat-map, displayed inline
    # The committed outputs are of the same kinds, cell by cell, as a fresh run (whose last cell
    # also prints the "saved" line the committed run, without CLIP_NOTEBOOK_OUTPUT, has not).
    committed = outputs_of(nbformat.read(NOTEBOOK, as_version=4))[1]
    kinds[-1] = [k for k in kinds[-1] if k != "stream"]
    assert [sorted(set(k)) for k in kinds] == [sorted(set(k)) for k in committed]
