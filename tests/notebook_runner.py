"""Execute examples/notebook.ipynb with nbclient, in this interpreter; shared by the test and the refresh script.

``python -m tests.notebook_runner`` re-runs the notebook on the tiny random model and writes it
back with its outputs, which is how the committed outputs are made (they say so in the notebook).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "notebook.ipynb"
KERNEL = "clip-embeddings-test"


def write_kernelspec(root: Path) -> dict[str, str]:
    """A kernelspec that runs this interpreter (so the notebook sees the venv); returns the env to find it."""
    spec_dir = root / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "clip-embeddings test", "language": "python",
    }))
    return {"JUPYTER_PATH": str(root / "jupyter")}


def execute(nb, scratch: Path):
    """Run every cell of ``nb`` in place (raises CellExecutionError naming a failing cell)."""
    import nbclient

    os.environ.update(write_kernelspec(scratch))
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # coalesce_streams: one print() can reach us as two stream messages when the kernel's output
    # thread flushes between its pieces (CI saw "image embeddings:" and " (7, 64)" apart under load);
    # Jupyter shows them as one text, and so do we.
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=300, coalesce_streams=True,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    return nb


def refresh() -> None:
    """Re-run the notebook on the tiny random model and save it with its outputs."""
    import nbformat
    import torch

    from tests.model_factory import tiny_reference_clip

    with tempfile.TemporaryDirectory(prefix="clip-notebook-") as scratch:
        weights = Path(scratch) / "tiny-random-clip.pt"
        torch.save(tiny_reference_clip("vit", seed=0).state_dict(), weights)
        os.environ.update({"CLIP_WEIGHTS": str(weights), "CLIP_CACHE_DIR": str(Path(scratch) / "cache")})
        os.environ.pop("CLIP_NOTEBOOK_OUTPUT", None)
        nb = execute(nbformat.read(NOTEBOOK, as_version=4), Path(scratch))
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, NOTEBOOK)


if __name__ == "__main__":
    refresh()
