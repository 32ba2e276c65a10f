"""Malformed and hostile checkpoints (issue 15, defect 6): a clear ModelLoadError, never gigabytes.

Memory is measured honestly: each hostile file is loaded in a fresh subprocess and the growth of
its peak resident set (``ru_maxrss``) is reported, since torch allocates outside tracemalloc.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

import clip_embeddings as ce
from clip_embeddings.errors import ModelLoadError
from tests.model_factory import tiny_reference_clip

ROOT = Path(__file__).resolve().parent.parent

_LOAD_SCRIPT = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
import clip_embeddings as ce
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    ce.load(sys.argv[2], device="cpu")
    outcome = "LOADED"
except Exception as e:
    outcome = f"{type(e).__name__}: {e}"
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"outcome": outcome, "grown": grown}))
"""


def _load_in_subprocess(path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, str(ROOT), str(path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _tiny_state_dict() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tiny_reference_clip("vit", seed=0).state_dict().items()}


def _refusal(path: Path, *expected: str) -> str:
    with pytest.raises(ModelLoadError) as info:
        ce.load(path, device="cpu")
    message = str(info.value)
    assert all(e in message for e in expected), message
    assert "weights_only=False" not in message
    return message


# --- memory: shapes checked against storages and the file before anything is allocated ---------

def test_stride_zero_views_claiming_a_wide_text_tower_allocate_nothing(tmp_path):
    # Text tensors replaced by stride-0 views of one float: the shapes say a 2048-wide text tower
    # (about 1 GB of weights), the file holds a few hundred KB.
    wide = {64: 2048, 192: 3 * 2048, 256: 4 * 2048}
    state = _tiny_state_dict()
    for name, tensor in list(state.items()):
        if not name.startswith("visual.") and name != "logit_scale":
            shape = tuple(wide.get(d, d) for d in tensor.shape)
            state[name] = torch.zeros(1).expand(shape)
    path = tmp_path / "wide.pt"
    torch.save(state, path)
    assert path.stat().st_size < 2_000_000
    result = _load_in_subprocess(path)
    assert result["outcome"].startswith("ModelLoadError") and "storage" in result["outcome"], result
    assert result["grown"] < 100 * 2**20, result


def _torchscript_like(path: Path, size: tuple[int, ...], stride: tuple[int, ...], storage_numel: int = 1,
                      names: int = 1) -> None:
    """A minimal TorchScript archive whose data.pkl rebuilds tensors from one small storage."""
    class Storage:  # pickled as a persistent id, the way torch writes storages
        pass

    storage = Storage()

    class Record:  # pickled as GLOBAL __torch__ Record: what the reader treats as a scripted module
        def __reduce__(self):
            attributes = {f"w{i}": _Rebuild() for i in range(names)}
            return (_ScriptModule, (), attributes)

    class _Rebuild:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, (storage, 0, size, stride, False, OrderedDict()))

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is storage:
                return ("storage", torch.FloatStorage, "0", "cpu", storage_numel)
            return None

    import io

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(Record())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buffer.getvalue())
        z.writestr("archive/code/__torch__.py", "class M: pass\n")
        z.writestr("archive/data/0", bytes(4 * storage_numel))


class _ScriptModule:  # stands for a scripted module's class; pickled as __torch__._ScriptModule
    pass


_ScriptModule.__module__ = "__torch__"
sys.modules.setdefault("__torch__", type(sys)("__torch__"))
sys.modules["__torch__"]._ScriptModule = _ScriptModule


def test_torchscript_stride_zero_tensor_is_refused_before_clone(tmp_path):
    path = tmp_path / "stride0.pt"
    _torchscript_like(path, (12_000, 12_000), (0, 0))  # 576 MB claimed, 4 bytes stored
    assert path.stat().st_size < 2000 and ce.core.checkpoint.is_torchscript(path)
    result = _load_in_subprocess(path)
    assert result["outcome"].startswith("ModelLoadError") and "claims more than its storage" in result["outcome"]
    assert result["grown"] < 100 * 2**20, result


def test_torchscript_storage_named_many_times_is_read_once_and_refused(tmp_path):
    # 200 tensors, each a full view of one 1 MB storage: cloning them all would cost 200 MB.
    path = tmp_path / "aliases.pt"
    _torchscript_like(path, (2**18,), (1,), storage_numel=2**18, names=200)
    message = _refusal(path, "share")
    assert "views of one another" in message


def test_zip_bombed_entry_is_refused_from_the_directory(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(_tiny_state_dict(), plain)
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("/data/0"):
                deflated = zipfile.ZipInfo(info.filename)
                deflated.compress_type = zipfile.ZIP_DEFLATED
                with zout.open(deflated, "w", force_zip64=True) as entry:
                    for _ in range(300):  # 300 MB of zeros, a few hundred KB deflated
                        entry.write(bytes(2**20))
            else:
                zout.writestr(info.filename, data)
    assert path.stat().st_size < 20_000_000
    result = _load_in_subprocess(path)
    assert result["outcome"].startswith("ModelLoadError") and "inflates to" in result["outcome"], result
    assert result["grown"] < 100 * 2**20, result


# --- every malformed file is a ModelLoadError naming the problem ---------------------------------

@pytest.mark.parametrize("case", ["text width 32", "1-D text_projection", "3-D conv1", "no text blocks",
                                  "positions not a square", "wide ln_final", "NaN", "Inf"])
def test_malformed_state_dicts_say_what_is_wrong(tmp_path, case):
    state = _tiny_state_dict()
    expected = {
        "text width 32": "not a positive multiple of 64", "1-D text_projection": "text_projection has shape",
        "3-D conv1": "visual.conv1.weight has shape", "no text blocks": "no transformer blocks",
        "positions not a square": "square number", "wide ln_final": "wrong shapes",
        "NaN": "NaN or infinite values (first in visual.proj)", "Inf": "NaN or infinite",
    }[case]
    if case == "text width 32":
        state["ln_final.weight"], state["ln_final.bias"] = torch.ones(32), torch.zeros(32)
    elif case == "1-D text_projection":
        state["text_projection"] = torch.ones(64)
    elif case == "3-D conv1":
        state["visual.conv1.weight"] = state["visual.conv1.weight"][0]
    elif case == "no text blocks":
        state = {k: v for k, v in state.items() if not k.startswith("transformer.")}
    elif case == "positions not a square":
        state["visual.positional_embedding"] = state["visual.positional_embedding"][:-1]
    elif case == "wide ln_final":  # a 4096-wide text tower claimed by one 16 KB tensor
        state["ln_final.weight"], state["ln_final.bias"] = torch.ones(4096), torch.zeros(4096)
    elif case == "NaN":
        state["visual.proj"][3, 5] = float("nan")
    else:
        state["token_embedding.weight"][7, 1] = float("inf")
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    _refusal(path, expected)


def test_a_markdown_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("# My model\n\nDownload the weights from the release page.\n")
    message = _refusal(path, "not a CLIP checkpoint", "text file")
    assert "refused to unpickle" not in message


def test_random_bytes_after_a_proto_opcode_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(b"\x80\x02" + bytes(range(256)) * 4)
    _refusal(path, "not a CLIP checkpoint")


@pytest.mark.parametrize("config", ["{not json", "[]", '{"text_config": 3}', '{"text_config": {"hidden_act": ["x"]}}'])
def test_broken_huggingface_config_is_a_model_load_error(tmp_path, config):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(config)
    torch.save({"text_model.embeddings.token_embedding.weight": torch.ones(2, 2)}, folder / "pytorch_model.bin")
    _refusal(folder, str(folder))


def test_huggingface_weights_with_bad_shapes_are_a_model_load_error(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    hf = {"text_projection.weight": torch.ones(4, 4), "visual_projection.weight": torch.ones(4, 4)}
    for p in "qkv":
        for kind in ("weight", "bias"):
            hf[f"text_model.encoder.layers.0.self_attn.{p}_proj.{kind}"] = torch.ones(4, 4 if p != "v" else 3)
    torch.save(hf, folder / "pytorch_model.bin")
    _refusal(folder, "Hugging Face layout")


def test_the_real_tiny_checkpoint_still_loads(tiny_model_path):
    model, _ = ce.load(tiny_model_path, device="cpu")
    assert model.embed_dim == 64


# --- values the shapes cannot tell: vocabulary, dtypes, logit_scale (issue 24) -----------------

@pytest.mark.parametrize("case", ["vocabulary 1000", "vocabulary 50000", "int8 weights", "uint8 proj",
                                  "logit_scale 1e4", "logit_scale -3", "logit_scale inf is NaN-checked"])
def test_checkpoint_values_that_cannot_embed_are_refused_naming_the_problem(tmp_path, case):
    # Each used to load and then fail with a bare IndexError, embed zero vectors, or give NaN.
    state = _tiny_state_dict()
    if case == "vocabulary 1000":
        state["token_embedding.weight"] = state["token_embedding.weight"][:1000].clone()
        expected = "token_embedding.weight has 1000 rows but the tokenizer has 49408 ids"
    elif case == "vocabulary 50000":
        state["token_embedding.weight"] = torch.cat([state["token_embedding.weight"], torch.zeros(592, 64)])
        expected = "has 50000 rows"
    elif case == "int8 weights":
        state = {k: (v * 100).to(torch.int8) if v.dim() == 2 else v for k, v in state.items()}
        expected = "weights of a type that cannot embed"
    elif case == "uint8 proj":
        state["visual.proj"] = state["visual.proj"].to(torch.uint8)
        expected = "visual.proj (uint8)"
    elif case == "logit_scale 1e4":
        state["logit_scale"] = torch.tensor(1e4)
        expected = "logit_scale is 10000, outside [0, 4.6152]"
    elif case == "logit_scale -3":
        state["logit_scale"] = torch.tensor(-3.0)
        expected = "logit_scale is -3"
    else:
        state["logit_scale"] = torch.tensor(float("inf"))
        expected = "NaN or infinite values (first in logit_scale)"
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    _refusal(path, expected)


def test_checkpoint_value_bounds_admit_clips_own_values(tmp_path):
    from clip_embeddings.core.model import VOCAB_SIZE
    from clip_embeddings.core.tokenizer import Tokenizer

    assert Tokenizer().vocab_size == VOCAB_SIZE
    for scale, dtype in ((4.6052, torch.float16), (0.0, torch.float32), (2.6593, torch.bfloat16)):
        # OpenAI's trained ViT-B/32 value (exp = 100, stored in fp16), the lower bound, CLIP's initial value
        state = {k: v.to(dtype) for k, v in _tiny_state_dict().items()}
        state["logit_scale"] = torch.tensor(scale, dtype=dtype)
        path = tmp_path / f"ok-{scale}.pt"
        torch.save(state, path)
        model, _ = ce.load(path, device="cpu")
        assert model.logit_scale.item() == pytest.approx(scale, abs=0.01)
