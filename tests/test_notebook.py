"""Execute examples/notebook.ipynb with nbclient against the tiny random model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "notebook.ipynb"


def venv_kernel(tmp_path: Path, monkeypatch) -> str:
    """A kernelspec that runs this interpreter, so the notebook sees the venv's packages.

    A kernelspec written for this test (found through JUPYTER_PATH) is used instead of whatever
    ``python3`` resolves to, which could be another installation's interpreter.
    """
    name = "clip-embeddings-test"
    spec_dir = tmp_path / "jupyter" / "kernels" / name
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "clip-embeddings test", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    from jupyter_client.kernelspec import KernelSpecManager

    assert KernelSpecManager().get_kernel_spec(name).argv[0] == sys.executable
    return name


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None


def test_notebook_runs_on_tiny_model(tmp_path, monkeypatch, tiny_model_path):
    monkeypatch.setenv("CLIP_WEIGHTS", str(tiny_model_path))
    monkeypatch.setenv("CLIP_NOTEBOOK_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=venv_kernel(tmp_path, monkeypatch), timeout=300,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, with the cell's traceback, if a cell fails

    texts, images = [], 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                texts.append(output.text)
            elif output.output_type in ("display_data", "execute_result"):
                texts.append(output.get("data", {}).get("text/plain", ""))
                images += "image/png" in output.get("data", {})
    text = "\n".join(texts)
    assert f"model: {tiny_model_path}" in text
    assert "image embeddings: (7, 64)" in text
    assert "new 7, " in text
    assert "top hit for cat.jpg: cat.jpg (score 1.000)" in text
    assert "cat.jpg         ->" in text  # the classification table
    heatmap = tmp_path / "out" / "similarity_heatmap.png"
    assert f"saved {heatmap}" in text and heatmap.stat().st_size > 1000
    assert images == 1  # the heat-map was displayed inline
