"""The image tower through ONNX Runtime: a candidate ``dtype="auto"`` times beside torch's paths.

Where the CPU has no native bf16, torch is left with fp32, and there ONNX Runtime's own fp32
kernels (fused convolution + add + ReLU in blocked layouts) can run a ResNet image tower faster
than oneDNN through torch: on a 2-core EPYC, RN50 1.76x openai/CLIP vs our 1.28x. So the probe
times this backend too, on such CPUs, and keeps it only where it wins (:mod:`.runtime`). Where
bf16 is native it is not tried: bf16 does the same work at twice the rate, and the export costs
a first load tens of seconds and the tower's size on disk for a candidate that cannot win there.

The tower is exported once from the fp32 model (the TorchScript exporter, which needs the
``onnx`` package; ``onnxruntime`` comes with ``chromadb``), into the cache dir under the
model's fingerprint, and run with as many intra-op threads as torch uses, none of them spinning
while idle (``SESSION_CONFIG``). Texts stay in torch:
the text tower runs only as far as each batch's longest text, which an exported graph does not.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ..core.model import CLIP, ModifiedResNet, VisionTransformer

__all__ = ["OnnxImageTower", "available", "export_image_tower"]

OPSET = 17
# ONNX Runtime's pool threads busy-wait for work by default, inside a run and for a while after
# it. Texts run in torch's own pool right after an image batch, and on a 2-core CPU (shared with
# the decode threads and other processes) every cycle a spinning thread burns is one torch's
# threads wait for. Measured in one process on a 2-core AVX2 EPYC (ViT-B/32, batch 8): the same
# image batch used 12-15% less CPU time without spinning, at equal or lower wall time.
SESSION_CONFIG = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def available() -> bool:
    """Whether ONNX Runtime and the exporter's ``onnx`` package are both installed.

    Example:
        >>> available()  # with the onnx extra installed
        True
    """
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


class _ImageTower(nn.Module):
    def __init__(self, model: CLIP):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)


def export_image_tower(model: CLIP, path: Path) -> Path:
    """Export ``model``'s fp32 image tower to ``path`` (written atomically), unless it is there already.

    Example:
        >>> import clip_embeddings as ce
        >>> export_image_tower(ce.build_model(sd), Path("vit-b-32-image.onnx"))
        PosixPath('vit-b-32-image.onnx')
    """
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    resolution = model.visual.input_resolution
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes
            torch.onnx.export(_ImageTower(model.eval()), (torch.zeros(2, 3, resolution, resolution),), str(tmp),
                              dynamo=False, input_names=["images"], output_names=["features"],
                              dynamic_axes={"images": {0: "n"}, "features": {0: "n"}}, opset_version=OPSET)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class OnnxImageTower(nn.Module):
    """Stands in for ``model.visual``: preprocessed fp32 images [N, 3, R, R] in, features [N, D] out.

    Example:
        >>> import clip_embeddings as ce
        >>> model, path = ce.build_model(sd), Path("vit-b-32-image.onnx")
        >>> model.visual = OnnxImageTower(export_image_tower(model, path), model.visual)
        >>> r = model.visual.input_resolution  # the stand-in keeps the tower's attributes: 224 for ViT-B/32
        >>> model.encode_image(torch.zeros(1, 3, r, r)).shape  # images run in ONNX Runtime, texts in torch
        torch.Size([1, 512])
    """

    input_dtype = torch.float32  # what CLIP.encode_image casts its input to

    def __init__(self, path: Path, visual: ModifiedResNet | VisionTransformer | OnnxImageTower):
        super().__init__()
        import onnxruntime as ort

        self.path = Path(path)
        self.input_resolution: int = visual.input_resolution
        self.output_dim: int = visual.output_dim
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1  # one graph at a time: no second pool to park on the cores
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        for key, value in SESSION_CONFIG.items():
            options.add_session_config_entry(key, value)
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.session.run(None, {"images": images.detach().float().contiguous().numpy()})[0]
        return torch.from_numpy(features)

    def __deepcopy__(self, memo):  # a session cannot be copied; a second one on the same file can
        return OnnxImageTower(self.path, self)
