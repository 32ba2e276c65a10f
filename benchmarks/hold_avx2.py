"""Run a benchmark script as if on an AVX2-only CPU, on a CPU with AVX-512 (and perhaps native bf16).

What is held, for this process only (child processes that a script starts are not):

* torch's own kernels (``ATEN_CPU_CAPABILITY=avx2``), oneDNN's (``ONEDNN_MAX_CPU_ISA=AVX2``: the
  packed linears) and MKL's (``MKL_ENABLE_INSTRUCTIONS=AVX2``: the reference's matrix multiplies);
* ``dtype="auto"``: told the CPU has AVX2 and nothing above it, it takes the decision table's AVX2
  row; with ``CLIP_AUTO_PROBE=0`` and an empty ``CLIP_CACHE_DIR`` nothing probed here is reused.
  ``--probe`` lets ``auto`` probe (held too) in the background, as on a real AVX2 CPU's first
  run; ``bench_encode.py`` waits for it and times what the probe chose.

What cannot be held: ONNX Runtime and fbgemm pick their kernels from the CPU itself, so their rows
(fastembed, and our image tower where the AVX2 row says ``ort``) run faster than on a real AVX2
CPU. Ratios against them are the emulation's, not a real AVX2 machine's; say so beside them.

Holding MKL matters for the reference: on one AMD EPYC (Zen 4) openai/CLIP's texts ran 16.4/s with
torch and oneDNN held but MKL free, 21.1/s with MKL held too, 22.8/s with nothing held.

Run: ``.venv/bin/python benchmarks/hold_avx2.py [--probe] benchmarks/bench_encode.py --models ViT-B/32``
"""

from __future__ import annotations

import os
import runpy
import sys
import tempfile
from pathlib import Path

HELD = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def hold(probe: bool = False) -> None:
    """Set the environment (before torch is imported) and tell ``auto`` the CPU is AVX2-only."""
    if "torch" in sys.modules:
        raise RuntimeError("hold_avx2 must run before torch is imported: the kernel choice is made at import")
    os.environ.update(HELD, CLIP_AUTO_PROBE="1" if probe else "0",
                      CLIP_CACHE_DIR=tempfile.mkdtemp(prefix="clip-avx2-held-"))
    import torch

    from clip_embeddings.runtime import auto

    real = auto.detect_capabilities()
    held = auto.Capabilities(f"{real.cpu_model}, held to AVX2", ("avx2",), torch.backends.cpu.get_cpu_capability(),
                             real.torch_version)
    auto.detect_capabilities = lambda: held  # the callers look it up on the module at each call


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) > 1 else 2)
    probe = sys.argv[1] == "--probe"
    if probe:
        del sys.argv[1]
    script = Path(sys.argv[1]).resolve()
    hold(probe)
    sys.argv = sys.argv[1:]
    sys.path.insert(0, str(script.parent))
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
