"""Checkpoints never run code, and a collection is never opened with the wrong model.

Malicious files here carry a harmless payload: unpickling them would create a marker file (via
``builtins.open`` or ``os.system("touch ...")``). Every test asserts the marker does not exist.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import clip_embeddings as ce
from clip_embeddings.core.checkpoint import read_checkpoint
from clip_embeddings.errors import ModelLoadError, ModelMismatchError
from tests.model_factory import save_torchscript, tiny_reference_clip

ROOT = Path(__file__).resolve().parent.parent


class _OpensAFile:
    """Unpickling this calls ``open(marker, "w")``: the file appearing means code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _rewrite_zip(src: Path, dst: Path, replace: dict) -> None:
    """Copy a zip entry by entry, replacing the entries whose name ends with a key of ``replace``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new(data) if callable(new) else new
            zout.writestr(info.filename, data)


@pytest.fixture(scope="module")
def torchscript_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ts") / "tiny-scripted.pt"
    save_torchscript(tiny_reference_clip("vit", seed=0), path, 32)
    return path


def _refused(path: Path, marker: Path, *expected: str) -> str:
    with pytest.raises(ModelLoadError) as info:
        ce.load(path, device="cpu")
    message = str(info.value)
    assert str(path) in message, message
    assert any(e in message for e in expected), message
    assert not marker.exists(), "loading the checkpoint ran code from it"
    return message


# ---------------------------------------------------------------------------------------------
# Pickles


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned-plain"
    path = tmp_path / "evil.pt"
    state = tiny_reference_clip("vit").state_dict()
    torch.save({**state, "evil": _OpensAFile(marker)}, path)
    message = _refused(path, marker, "refused to unpickle")
    assert "would run code" in message and "trust" in message  # says why, and the way out
    # The same through every entry point that reads weights.
    with pytest.raises(ModelLoadError):
        read_checkpoint(path)
    with pytest.raises(ModelLoadError):
        ce.ClipEF(path, device="cpu", cache=False).embed_texts(["x"])
    assert not marker.exists()
    # Control: the payload is live; an unrestricted load does create the marker.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_malicious_pickle_inside_open_clip_wrapper_is_refused(tmp_path):
    marker = tmp_path / "pwned-wrapped"
    path = tmp_path / "epoch_32.pt"
    state = tiny_reference_clip("vit").state_dict()
    torch.save({"epoch": 32, "name": "run", "state_dict": {**state, "module.evil": _OpensAFile(marker)},
                "optimizer": {"evil": _OpensAFile(marker)}}, path)
    _refused(path, marker, "refused to unpickle")
    # A clean open_clip checkpoint loads: the wrapper itself is fine.
    clean = tmp_path / "clean.pt"
    torch.save({"epoch": 32, "state_dict": {f"module.{k}": v for k, v in state.items()}}, clean)
    model, _ = ce.load(clean, device="cpu")
    assert model.embed_dim == 64


def test_malicious_legacy_non_zip_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned-legacy"
    path = tmp_path / "legacy.pt"
    torch.save({"evil": _OpensAFile(marker)}, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    _refused(path, marker, "refused to unpickle")
    # A legacy file of plain tensors is still readable.
    clean = tmp_path / "legacy-clean.pt"
    torch.save(tiny_reference_clip("vit").state_dict(), clean, _use_new_zipfile_serialization=False)
    assert ce.load(clean, device="cpu")[0].embed_dim == 64


def test_malicious_pytorch_model_bin_in_hf_folder_is_refused(tmp_path):
    marker = tmp_path / "pwned-hf"
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"text_config": {}, "vision_config": {}}))
    torch.save({"evil": _OpensAFile(marker)}, folder / "pytorch_model.bin")
    _refused(folder, marker, "refused to unpickle")


def test_plain_pickle_not_torch_is_refused(tmp_path):
    marker = tmp_path / "pwned-raw"
    path = tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps({"evil": _OpensAFile(marker)}, protocol=2))
    _refused(path, marker, "refused to unpickle", "not a readable checkpoint")


# ---------------------------------------------------------------------------------------------
# TorchScript archives


def _global_pickle(module: str, name: str, *args: str) -> bytes:
    """A protocol-2 pickle calling ``module.name(*args)``: GLOBAL, MARK, args, TUPLE, REDUCE."""
    body = b"".join(b"X" + len(a.encode()).to_bytes(4, "little") + a.encode() for a in args)
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"(" + body + b"tR."


@pytest.mark.parametrize("payload", ["os system", "builtins open", "nested in the module record"])
def test_tampered_torchscript_data_pkl_is_refused(tmp_path, torchscript_path, payload):
    marker = tmp_path / "pwned-ts"
    if payload == "os system":
        data = _global_pickle("os", "system", f"touch {marker}")
    elif payload == "builtins open":
        data = _global_pickle("builtins", "open", str(marker), "w")
    else:  # the real data.pkl with one attribute swapped for the payload: the refusal is per global
        with zipfile.ZipFile(torchscript_path) as z:
            original = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
        data = original.replace(b"ctorch._utils\n_rebuild_tensor_v2\n", b"cbuiltins\nopen\n", 1)
        assert data != original
    path = tmp_path / "tampered.pt"
    _rewrite_zip(torchscript_path, path, {"/data.pkl": data})
    assert ce.core.checkpoint.is_torchscript(path)
    _refused(path, marker, "TorchScript")
    assert not marker.exists()


def test_torchscript_is_read_without_running_its_code(tmp_path, torchscript_path, monkeypatch):
    reference = tiny_reference_clip("vit", seed=0)
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference.encode_image(image)

    # Corrupt every code/ file: a loader that compiled or ran them would fail.
    broken = tmp_path / "broken-code.pt"
    _rewrite_zip(torchscript_path, broken, {".py": b"def forward(self):\n    this is not ( valid\n",
                                            ".debug_pkl": b"garbage"})
    with zipfile.ZipFile(broken) as z:
        assert any("/code/" in n and n.endswith(".py") for n in z.namelist())

    def no_jit(*args, **kwargs):
        raise AssertionError("torch.jit.load was called with jit=False")

    with monkeypatch.context() as m:
        m.setattr(torch.jit, "load", no_jit)
        for path in (torchscript_path, broken):
            model, preprocess = ce.load(path, device="cpu")  # jit=False: tensors only
            with torch.no_grad():
                torch.testing.assert_close(model.encode_image(image), expected, atol=1e-5, rtol=1e-5)
            assert preprocess.resolution == 32
        ef = ce.ClipEF(broken, device="cpu", cache=False)
        assert ef.embed_texts(["a cat"]).shape == (1, 64)

    # jit=True asks for the archive's own code: the intact one runs, the corrupted one cannot.
    scripted, _ = ce.load(torchscript_path, device="cpu", jit=True)
    with torch.no_grad():
        torch.testing.assert_close(scripted.encode_image(image), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception) as info:
        ce.load(broken, device="cpu", jit=True)
    assert not isinstance(info.value, AssertionError)


# ---------------------------------------------------------------------------------------------
# Model mismatch: every store says which model a collection was built with and how to open it


def _assert_actionable(message: str, built_with: str) -> None:
    assert built_with in message, message
    assert "ClipEF(model=" in message, message  # says how to open it
    assert "re-index" in message, message


@pytest.fixture
def weights(tmp_path, tiny_model_path, other_tiny_model_path):
    """Three weights files: A, B (same shape, other values) and C (other embedding dimension)."""
    a, b, c = tmp_path / "model-a.pt", tmp_path / "model-b.pt", tmp_path / "model-c-dim32.pt"
    shutil.copy(tiny_model_path, a)
    shutil.copy(other_tiny_model_path, b)
    torch.save(tiny_reference_clip("vit", seed=2, embed_dim=32).state_dict(), c)
    return a, b, c


def _ef(path: Path) -> ce.ClipEF:
    return ce.ClipEF(path, device="cpu", cache=False)


@pytest.mark.parametrize("kind", ["chroma", "qdrant", "lancedb"])
def test_opening_with_other_weights_or_dimension_is_refused(tmp_path, weights, kind):
    pytest.importorskip({"chroma": "chromadb", "qdrant": "qdrant_client", "lancedb": "lancedb"}[kind])
    from clip_embeddings.adapters import open_store

    a, b, c = weights
    location = str(tmp_path / f"{kind}-db")

    def opened(ef):
        """The store, and a function that releases it (local Qdrant locks its folder per client)."""
        if kind != "qdrant":
            store = open_store(kind, location, "photos", ef)
            return store, lambda: None
        # Qdrant through its own client, closed even when the constructor raises: open_store would
        # leave the refused client holding the folder lock (reported; not this test's subject).
        from qdrant_client import QdrantClient

        from clip_embeddings.adapters.qdrant import QdrantStore

        client = QdrantClient(path=location)
        try:
            return QdrantStore(client, "photos", ef), client.close
        except BaseException:
            client.close()
            raise

    store, close = opened(_ef(a))
    store.add_texts(["a cat", "a dog"])
    close()
    for other in (b, c):
        with pytest.raises(ModelMismatchError) as info:
            opened(_ef(other))
        _assert_actionable(str(info.value), str(a))
        assert str(other) in str(info.value)
        if other == c:
            assert "dim 64" in str(info.value) and "dim 32" in str(info.value)
    # The right model (or none: rebuilt from the stored config) still opens it.
    store, close = opened(_ef(a))
    assert store.count() >= 2
    close()
    store, close = opened(None)
    assert store.query("a cat", k=1, modality="text")[0].document == "a cat"
    close()


_FRESH_PROCESS = r"""
import json, sys
import chromadb, clip_embeddings as ce
from clip_embeddings.adapters.chroma import ChromaStore
client = chromadb.PersistentClient(sys.argv[1], settings=chromadb.Settings(anonymized_telemetry=False))
out = {}
collection = client.get_collection("photos")  # ClipEF rebuilt from the stored config
for what, call in [("query", lambda: collection.query(query_texts=["a cat"], n_results=1)),
                   ("store", lambda: ChromaStore(client, "photos"))]:
    try:
        call()
        out[what] = ["no error", ""]
    except Exception as e:
        out[what] = [type(e).__name__, str(e)]
print(json.dumps(out))
"""


def test_chroma_get_collection_in_fresh_process_after_weights_replaced(tmp_path, weights):
    chromadb = pytest.importorskip("chromadb")
    from clip_embeddings.adapters.chroma import ChromaStore

    a, b, _ = weights
    db = tmp_path / "db"
    client = chromadb.PersistentClient(str(db), settings=chromadb.Settings(anonymized_telemetry=False))
    ChromaStore(client, "photos", _ef(a)).add_texts(["a cat", "a dog"])
    # Same architecture, same path, other values: only the fingerprint can tell.
    shutil.copy(b, a)
    env = dict(os.environ, PYTHONPATH=str(ROOT), ANONYMIZED_TELEMETRY="False")
    proc = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, str(db)], capture_output=True, text=True,
                          timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for what in ("query", "store"):
        kind, message = out[what]
        assert kind == "ModelMismatchError", out
        _assert_actionable(message, str(a))
        assert "fingerprint" in message
