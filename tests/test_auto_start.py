"""``dtype="auto"`` from the first call: the shipped decision table, the background probe, what it says.

No timing is asserted: the probe is fed made-up timings where a test needs one choice or another;
what is checked is which decision is used, what is cached, and what a terminal shows.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import textwrap

import pytest

import clip_embeddings as ce
from clip_embeddings.embedding.loaded import shared_model
from clip_embeddings.runtime import auto as runtime
from clip_embeddings.runtime import onnx_backend, refine
from clip_embeddings.runtime import table as decision_table
from clip_embeddings.runtime.auto import PathResult
from clip_embeddings.runtime.table import isa_level, load_table, table_decision
from tests.model_factory import save_state_dict, tiny_reference_clip
from tests.test_runtime import AMD_BF16, AVX2_ONLY, INTEL_AMX

VIT = "vit-w768-l12-p32-r224-text512x12"
RN = "resnet3-4-6-3-w64-r224-text512x12"
ROWS = [{"isa": "avx2", "family": "vit", "torch": "2.13", "image": "ort", "text": "fp32+onednn", "source": "a"},
        {"isa": "avx2", "family": "vit", "torch": "2.9", "image": "fp32", "text": "fp32", "source": "older"},
        {"isa": "avx512_bf16", "family": "resnet", "torch": "2.13", "image": "bf16+fold+channels_last+onednn",
         "text": "bf16+onednn", "source": "b"}]
ALL = {"fp32": ("fold", "channels_last", "onednn"), "bf16": ("fold", "channels_last", "onednn")}


# --- the pure table lookup ---------------------------------------------------------------------

def test_the_isa_level_is_the_best_of_what_decides_the_path():
    assert [isa_level(c) for c in (AVX2_ONLY, AMD_BF16, INTEL_AMX)] == ["avx2", "avx512_bf16", "amx"]
    assert isa_level(runtime.Capabilities("arm", (), "DEFAULT", "2.13.0")) == "baseline"


def test_a_table_entry_gives_each_tower_its_path():
    decision = table_decision(AVX2_ONLY, VIT, ROWS, rewrites=ALL, onnx_available=True)
    assert decision.precision == "ort, text fp32+onednn" and decision.source == "table"
    assert "table: avx2, vit, torch 2.13 (a)" in decision.reason
    rn = table_decision(AMD_BF16, RN, ROWS, rewrites=ALL, onnx_available=True)
    assert rn.precision == "bf16+fold+channels_last+onednn, text bf16+onednn"
    assert table_decision(AMD_BF16, VIT, ROWS, rewrites=ALL, onnx_available=True) is None  # no row: the caller decides


def test_the_nearest_torch_version_is_used_and_what_cannot_run_here_falls_back_to_fp32():
    newer = runtime.Capabilities("cpu", ("avx2",), "AVX2", "2.15.1+cpu")
    assert table_decision(newer, VIT, ROWS, rewrites=ALL, onnx_available=True).precision.startswith("ort")
    older = runtime.Capabilities("cpu", ("avx2",), "AVX2", "2.8.0")
    assert table_decision(older, VIT, ROWS, rewrites=ALL, onnx_available=True).precision == "fp32"
    no_onnx = table_decision(AVX2_ONLY, VIT, ROWS, rewrites={"fp32": ("onednn",)}, onnx_available=False)
    assert no_onnx.precision == "fp32+onednn" and "not installed" in no_onnx.reason
    hand_edited = [{"isa": "avx2", "family": "vit", "torch": "2.13", "image": "bf16", "text": "fp32+fold+onednn"}]
    emulated = table_decision(AVX2_ONLY, VIT, hand_edited, rewrites={"fp32": ("onednn",)}, onnx_available=True)
    assert emulated.precision == "fp32+onednn"  # bf16 never on an AVX2 CPU; a rewrite that does not apply dropped


def test_the_shipped_table_covers_every_isa_level_and_family_it_was_measured_on():
    rows = {(e["isa"], e["family"]) for e in load_table()}
    assert {(isa, fam) for isa in ("avx2", "avx512", "avx512_bf16", "amx") for fam in ("vit", "resnet")} <= rows
    for entry in load_table():
        assert entry["source"] and entry["torch"].count(".") == 1


def test_a_corrupt_table_is_ignored_with_a_warning(tmp_path):
    bad = tmp_path / "decision-table.json"
    bad.write_text('{"version": 1, "entries": [oops')
    with pytest.warns(RuntimeWarning, match="ignoring the decision table"):
        assert load_table(bad) == ()
    wrong_shape = tmp_path / "wrong-shape.json"
    wrong_shape.write_text(json.dumps({"version": 1, "entries": {"not": "a list"}}))
    with pytest.warns(RuntimeWarning):
        assert load_table(wrong_shape) == ()
    assert load_table(tmp_path / "missing.json") == ()  # no file: nothing to warn about


def test_a_corrupt_decision_cache_is_ignored_with_a_warning(tmp_path):
    path = tmp_path / "decisions.json"
    path.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="damaged decision cache"):
        assert runtime.cached_decision(AMD_BF16, "vit-a", path) is None


# --- ClipEF: the table at once, the probe in the background ------------------------------------------

@pytest.fixture
def probed_model(monkeypatch, tmp_path):
    """A tiny ViT saved to disk, treated as big enough to probe, on an AVX2-only CPU; records probe calls."""
    reference = tiny_reference_clip("vit")
    path = tmp_path / "vit.pt"
    save_state_dict(reference, path)
    monkeypatch.setattr(runtime, "MIN_PROBE_WEIGHTS", 0)
    monkeypatch.setattr(runtime, "detect_capabilities", lambda: AVX2_ONLY)
    table = [{"isa": "avx2", "family": "vit", "torch": "2.13", "image": "fp32+onednn", "text": "fp32+onednn",
              "source": "test"}]
    monkeypatch.setattr(decision_table, "load_table", lambda path=None: table)
    monkeypatch.setattr(refine, "PROBE_NICE", 0)  # at nice 19 a loaded test machine could starve it for minutes
    calls = []
    return path, reference, calls


def test_a_table_entry_is_used_without_probing(probed_model, monkeypatch):
    path, _, calls = probed_model
    monkeypatch.setenv("CLIP_AUTO_PROBE", "0")
    monkeypatch.setattr(runtime, "probe", lambda *a, **k: calls.append(a) or pytest.fail("probed"))
    ef = ce.ClipEF(model=str(path), device="cpu", cache=False)
    ef.embed_texts(["a photo of a cat"])
    info = ef.runtime_info()
    assert info["source"] == "table" and info["precision"] == "fp32+onednn" and "table: avx2, vit" in info["reason"]
    assert ef.loaded_model().refinement is None and not calls  # CLIP_AUTO_PROBE=0: the table only, nothing started


def test_a_probe_that_disagrees_replaces_the_table_in_the_cache_and_in_the_running_model(probed_model, monkeypatch):
    path, reference, calls = probed_model

    def slow_onednn(build, names, images, tokens, repeats=3):  # made-up timings: plain fp32 wins this time
        calls.append(list(names))
        timing = {n: PathResult(1.0 if n == "fp32" else 1.5, 1.0) for n in names}
        return {"image": timing, "text": dict(timing)}

    monkeypatch.setattr(runtime, "probe", slow_onednn)
    lm = shared_model(str(path), "cpu", "auto")
    assert lm.runtime["source"] == "table" and lm.precision == "fp32+onednn"
    assert not calls  # the first call does not wait for the probe ...
    ce.ClipEF(model=str(path), device="cpu", cache=False).embed_texts(["a dog"])
    lm.refinement.join(timeout=600)  # ... which runs after it, in the background
    assert calls and lm.precision == "fp32" and lm.runtime["source"] == "probe"
    again = decision_table.first_decision(ce.build_model(reference.state_dict()), AVX2_ONLY)
    assert again.from_cache and again.source == "probe" and again.precision == "fp32"  # the table's is replaced
    stored = json.loads(runtime.decisions_file().read_text())["decisions"][AVX2_ONLY.cache_key]
    assert [entry["dtype"] for entry in stored.values()] == ["fp32"]


def test_the_background_work_says_once_on_a_terminal_what_it_does(tmp_path):
    # A real terminal (a pty) on stderr, a real ClipEF whose probe runs in the background, twice.
    script = textwrap.dedent(f"""
        import clip_embeddings as ce
        from clip_embeddings.embedding.loaded import shared_model
        from clip_embeddings.runtime import auto as runtime
        from clip_embeddings.runtime import refine
        refine.PROBE_NICE = 0
        from tests.model_factory import save_state_dict, tiny_reference_clip
        from tests.test_runtime import AVX2_ONLY
        runtime.MIN_PROBE_WEIGHTS = 0
        runtime.detect_capabilities = lambda: AVX2_ONLY
        runtime.probe = lambda build, names, *a, **k: {{t: {{n: runtime.PathResult(1.0, 1.0) for n in names}}
                                                       for t in ("image", "text")}}
        path = {str(tmp_path)!r} + "/m.pt"
        save_state_dict(tiny_reference_clip("vit"), path)
        for _ in range(2):
            ce.ClipEF(model=path, device="cpu", cache=False).embed_texts(["a cat"])
        shared_model(path, "cpu", "auto").refinement.join(600)
        other = {str(tmp_path)!r} + "/other.pt"  # same architecture: the probe's cached decision, no more work
        save_state_dict(tiny_reference_clip("vit", seed=1), other)
        ce.ClipEF(model=other, device="cpu", cache=False).embed_texts(["a cat"])
        assert shared_model(other, "cpu", "auto").refinement is None
        print("done", flush=True)
    """)
    leader, follower = pty.openpty()
    env = os.environ | {"PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]),
                        "CLIP_AUTO_PROBE": "1"}
    result = subprocess.run([sys.executable, "-c", script], stderr=follower, stdout=subprocess.PIPE, env=env,
                            timeout=300, cwd=os.getcwd())
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    terminal = b"".join(chunks).decode(errors="replace")
    assert result.returncode == 0 and b"done" in result.stdout, terminal
    probing = [line for line in terminal.splitlines() if line.startswith("clip-embeddings: timing")]
    assert len(probing) == 1, terminal  # once, not once per call
    assert all("in the background" in line and "CLIP_AUTO_PROBE=0" in line for line in probing)
    exporting = [line for line in terminal.splitlines() if line.startswith("clip-embeddings: exporting")]
    assert len(exporting) == (1 if onnx_backend.available() else 0), terminal  # the table says ONNX Runtime here


def test_the_announcement_is_said_once_and_only_on_a_terminal(caplog):
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, pipe = Terminal(), io.StringIO()
    with caplog.at_level("INFO", logger="clip_embeddings"):
        assert refine.announce("test-key-1", "exporting the tower", terminal)
        assert not refine.announce("test-key-1", "exporting the tower", terminal)
        assert refine.announce("test-key-2", "probing", pipe)
    assert terminal.getvalue() == "clip-embeddings: exporting the tower\n" and pipe.getvalue() == ""
    assert [r.getMessage() for r in caplog.records] == ["exporting the tower", "probing"]  # the log has both
