"""Adapting CLIP to your data: contrastive fine-tuning on (image, caption) pairs, and linear probes.

Fine-tuning follows the paper's recipe (Radford et al., 2021, Section 2.5): the symmetric
cross-entropy over the batch's image-text similarity matrix, a learnable temperature clipped so
it never scales logits by more than 100, AdamW with decoupled weight decay on the weight matrices
only, and a cosine learning-rate schedule after a linear warm-up.

Example:
    >>> from clip_embeddings import ClipEF
    >>> from clip_embeddings.tasks.finetune import finetune
    >>> pairs = [("photos/cat.jpg", "a cat on a sofa"), ("photos/rocket.jpg", "a rocket launch")]
    >>> result = finetune(weights, pairs, epochs=3, output="tuned.pt")  # weights: e.g. "ViT-B/32"
    >>> ClipEF("tuned.pt").embed_texts(["a rocket launch"]).shape
    (1, 512)
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import EmbeddingConfig, check_on_error
from ..core.loading import default_device, load
from ..core.model import CLIP
from ..core.preprocess import Preprocess
from ..core.tokenizer import tokenize
from ..embedding.pipeline import OnError, SkippedItem, preprocess_many
from ..errors import ImageLoadError
from ..inputs.options import ImageLike

__all__ = ["FinetuneResult", "LinearProbe", "contrastive_loss", "finetune", "linear_probe", "parameter_groups"]

#: The paper clips the learned temperature so logits are never scaled by more than 100.
MAX_LOGIT_SCALE = math.log(100.0)


# --- the loss -----------------------------------------------------------------------------------

def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                     logit_scale: torch.Tensor | float) -> torch.Tensor:
    """CLIP's symmetric InfoNCE loss for a batch of matching pairs (row ``i`` goes with row ``i``).

    Features are L2-normalised here (normalising twice changes nothing). ``logit_scale`` is the
    temperature *multiplier*, i.e. ``model.logit_scale.exp()``, not the log-parameter itself.
    The loss is the mean of the image-to-text and text-to-image cross-entropies.

    Example:
        >>> import torch
        >>> f = torch.eye(3)
        >>> round(contrastive_loss(f, f, 100.0).item(), 6)
        0.0
        >>> round(contrastive_loss(f, f, 0.0).item(), 4)  # uniform logits: log(3)
        1.0986
    """
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale * image_features @ text_features.t()
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


# --- fine-tuning ------------------------------------------------------------------------------

@dataclass
class FinetuneResult:
    """What :func:`finetune` returns.

    Attributes:
        losses: the training loss of every optimisation step, in order.
        model: the fine-tuned model (fp32, eval mode, on the training device).
        epoch_losses: the mean loss of each epoch.
        logit_scale: the final temperature multiplier.
        skipped: pairs whose image could not be read (``on_error="skip"``), each listed once.
        output: where the weights were saved, if anywhere.
    """

    losses: list[float]
    model: CLIP
    epoch_losses: list[float] = field(default_factory=list)
    logit_scale: float = 100.0
    skipped: list[SkippedItem] = field(default_factory=list)
    output: Path | None = None


def _text_parameter(name: str) -> bool:
    return not name.startswith("visual.") and name != "logit_scale"


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices; none on gains, biases, embeddings or the temperature.

    Frozen parameters (``requires_grad=False``) are left out.

    Example:
        >>> model, _ = load(weights)
        >>> groups = parameter_groups(model, 0.2)
        >>> [g["weight_decay"] for g in groups]
        [0.2, 0.0]
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # Gains and biases are 1-d; token/positional/class embeddings are lookup tables, not maps.
        exempt = param.ndim < 2 or "embedding" in name or name == "logit_scale"
        (no_decay if exempt else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _cosine_with_warmup(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def _resolve_model(model_or_path: CLIP | str | os.PathLike, device: torch.device) -> CLIP:
    if isinstance(model_or_path, nn.Module):
        if not isinstance(model_or_path, CLIP):
            raise TypeError("fine-tuning needs a clip_embeddings CLIP model (TorchScript archives cannot be trained); "
                            "load it with ce.load(path, jit=False)")
        # A copy: the model may be the one a ClipEF shares process-wide, whose fingerprint
        # would no longer describe its weights if they changed under it.
        model = copy.deepcopy(model_or_path)
    else:
        model, _ = load(model_or_path, device="cpu", dtype=torch.float32)
    return model.float().to(device)


class _Pairs:
    """The images of a batch of pairs as tensors, through the library's one image pipeline."""

    def __init__(self, pairs: Sequence[tuple[ImageLike, str]], preprocess: Preprocess, on_error: OnError, workers: int):
        self.pairs = pairs
        self.preprocess = preprocess
        self.on_error = on_error
        self.workers = workers
        self.skipped: dict[int, SkippedItem] = {}

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, list[str]]:
        images, captions = [], []
        prepared = preprocess_many([self.pairs[i][0] for i in indices], self.preprocess, workers=self.workers)
        for index, out in zip(indices, prepared, strict=True):
            if isinstance(out, ImageLoadError):
                if self.on_error == "raise":
                    raise ImageLoadError(out.reason, index=index, source=out.source)
                self.skipped.setdefault(index, SkippedItem(index, out.source or "", out.reason))
                continue
            images.append(out)
            captions.append(self.pairs[index][1])
        if not images:
            return torch.empty(0), []
        return torch.stack(images), captions

    def close(self) -> None:
        """Nothing to release: each batch's threads end with the batch."""


def finetune(
    model_or_path: CLIP | str | os.PathLike,
    pairs: Sequence[tuple[ImageLike, str]],
    *,
    epochs: int = 1,
    lr: float = 1e-5,
    batch_size: int = 32,
    weight_decay: float = 0.2,
    freeze_image: bool = False,
    freeze_text: bool = False,
    warmup_steps: int = 0,
    device: str | torch.device | None = None,
    output: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    on_error: OnError = "raise",
    num_workers: int = EmbeddingConfig.num_workers,
) -> FinetuneResult:
    """Fine-tune CLIP contrastively on (image, caption) pairs; optionally save the weights.

    Each step embeds a shuffled batch of pairs and minimises :func:`contrastive_loss`, the other
    pairs of the batch serving as negatives (so captions should tell the images apart, and larger
    batches give more negatives). The temperature is learned with the towers and clamped to
    ``[1, 100]``. AdamW uses the paper's betas (0.9, 0.98) and eps 1e-6, with ``weight_decay``
    on weight matrices only; the learning rate warms up linearly for ``warmup_steps`` and then
    follows a cosine to 0 over the remaining steps. Training runs in fp32.

    The model stays in eval mode while training: CLIP has no dropout, so the mode only decides
    whether the ResNets' BatchNorm layers use batch statistics. Fine-tuning batches are small and
    narrow, and their statistics would overwrite the pretrained running ones; in eval mode those
    stay frozen (the norms' affine weights still learn).

    Args:
        model_or_path: a model name, a checkpoint path, or a ``CLIP`` (which is copied, not changed).
        pairs: ``(image, caption)`` pairs; an image is anything :func:`~clip_embeddings.inputs.sources.load_image` reads.
        epochs: passes over the pairs.
        lr: peak learning rate (1e-5 suits the pretrained models; a tiny model trained from
            scratch needs far more).
        batch_size: pairs per step; a last batch of fewer than 2 pairs is dropped (no negatives).
        weight_decay: AdamW decay on weight matrices (the paper used 0.2).
        freeze_image, freeze_text: keep that tower's weights fixed (``requires_grad=False``).
        warmup_steps: steps of linear learning-rate warm-up.
        device: default CUDA when available.
        output: if given, save the fine-tuned state dict (OpenAI's key layout, fp32) to this
            ``.pt`` path; :func:`clip_embeddings.load` and ``ClipEF(output)`` read it back.
        seed: seeds the order in which pairs are shuffled.
        progress: show a progress bar with the running loss.
        on_error: ``"raise"`` at the first unreadable image, or ``"skip"`` its pair.
        num_workers: threads decoding images.

    Example:
        >>> pairs = [("photos/cat.jpg", "a cat"), ("photos/rocket.jpg", "a rocket"), ("photos/coffee.jpg", "coffee")]
        >>> result = finetune(weights, pairs, epochs=2, lr=1e-5, output="tuned.pt", progress=False)
        >>> len(result.epoch_losses)  # one mean loss per epoch
        2
    """
    pairs = _checked_pairs(pairs, epochs, batch_size, freeze_image, freeze_text, on_error)
    device = torch.device(device or default_device())
    model = _resolve_model(model_or_path, device)
    _freeze(model, freeze_image, freeze_text)
    steps_per_epoch = sum(1 for start in range(0, len(pairs), batch_size) if len(pairs) - start >= 2)
    step = _Step(model, device, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                 total_steps=epochs * steps_per_epoch)
    data = _Pairs(pairs, Preprocess(model.visual.input_resolution), on_error, num_workers)
    try:
        losses, epoch_losses = _train(step, data, epochs=epochs, batch_size=batch_size, seed=seed,
                                      progress=progress)
    finally:
        data.close()
    saved = _hand_back(model, output)
    skipped = [data.skipped[i] for i in sorted(data.skipped)]
    return FinetuneResult(losses, model, epoch_losses, float(model.logit_scale.detach().exp()), skipped, saved)


def _checked_pairs(pairs: Sequence[tuple[ImageLike, str]], epochs: int, batch_size: int, freeze_image: bool,
                   freeze_text: bool, on_error: OnError) -> list[tuple[ImageLike, str]]:
    """The pairs as a list, after checking them and the settings: every refusal before any work."""
    if epochs < 1 or batch_size < 2:
        raise ValueError("epochs must be at least 1 and batch_size at least 2 (a batch needs negatives)")
    if freeze_image and freeze_text:
        raise ValueError("freeze_image and freeze_text together leave only the temperature to train")
    check_on_error(on_error)
    pairs = list(pairs)
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[1], str)):
            raise TypeError(f"pair {i}: expected (image, caption str), got {type(pair).__name__}")
    if len(pairs) < 2:
        raise ValueError("fine-tuning needs at least 2 pairs")
    return pairs


def _freeze(model: CLIP, freeze_image: bool, freeze_text: bool) -> None:
    for name, param in model.named_parameters():
        frozen = (freeze_image and name.startswith("visual.")) or (freeze_text and _text_parameter(name))
        param.requires_grad_(not frozen)
    model.eval()  # see finetune's docstring: BatchNorm statistics stay frozen; nothing else depends on mode


class _Step:
    """One optimisation step of the paper's recipe: AdamW, the warm-up + cosine schedule, the clamp."""

    def __init__(self, model: CLIP, device: torch.device, *, lr: float, weight_decay: float, warmup_steps: int,
                 total_steps: int):
        self.model, self.device, self.total_steps = model, device, total_steps
        self.optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                          _cosine_with_warmup(warmup_steps, total_steps))

    def __call__(self, images: torch.Tensor, captions: list[str]) -> float | None:
        """Learn from one batch; the loss, or None (the schedule still advances) when skipped images
        left fewer than 2 pairs: no negatives, nothing to learn."""
        if len(captions) < 2:
            self.schedule.step()
            return None
        model = self.model
        tokens = tokenize(captions, context_length=model.context_length, truncate=True).to(self.device)
        loss = contrastive_loss(model.encode_image(images.to(self.device)), model.encode_text(tokens),
                                model.logit_scale.exp())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
        return float(loss.detach())


def _train(step: _Step, data: _Pairs, *, epochs: int, batch_size: int, seed: int,
           progress: bool) -> tuple[list[float], list[float]]:
    """Every step's loss and each epoch's mean, over ``epochs`` shuffled passes (a last batch of
    fewer than 2 pairs is dropped)."""
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    epoch_losses: list[float] = []
    with tqdm(total=step.total_steps, disable=not progress, unit="step", desc="fine-tuning") as bar:
        for _ in range(epochs):
            order = torch.randperm(len(data.pairs), generator=generator).tolist()
            epoch = []
            for start in range(0, len(order), batch_size):
                indices = order[start : start + batch_size]
                if len(indices) < 2:
                    continue
                loss = step(*data.batch(indices))
                bar.update(1)
                if loss is not None:
                    losses.append(loss)
                    epoch.append(loss)
                    bar.set_postfix(loss=f"{loss:.4f}")
            epoch_losses.append(float(np.mean(epoch)) if epoch else float("nan"))
    return losses, epoch_losses


def _hand_back(model: CLIP, output: str | os.PathLike | None) -> Path | None:
    """An ordinary model again (freezing was a training choice), saved to ``output`` if given."""
    for param in model.parameters():
        param.requires_grad_(True)
    model.eval()
    if output is None:
        return None
    saved = Path(output)
    saved.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()}, saved)
    return saved


# --- linear probes ----------------------------------------------------------------------------

@dataclass
class LinearProbe:
    """A multinomial logistic-regression classifier on frozen embeddings.

    ``classes[j]`` is the label of output column ``j``. ``train_accuracy`` and (when test data
    was given) ``test_accuracy`` are filled in by :func:`linear_probe`.
    """

    weight: np.ndarray  # [classes, dim]
    bias: np.ndarray  # [classes]
    classes: np.ndarray
    C: float
    train_accuracy: float = float("nan")
    test_accuracy: float | None = None

    def decision_function(self, features) -> np.ndarray:
        """Logits ``[N, classes]``."""
        x = np.asarray(features, dtype=np.float64)
        return x @ self.weight.T + self.bias

    def predict_proba(self, features) -> np.ndarray:
        """Class probabilities ``[N, classes]``; rows sum to 1."""
        z = self.decision_function(features)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, features) -> np.ndarray:
        """The most probable label of each row.

        Example:
            >>> probe = linear_probe(ef.embed_images(["cat.jpg", "rocket.jpg"]), ["cat", "rocket"])
            >>> probe.predict(ef.embed_images(["cat.jpg"]))
            array(['cat'], dtype='<U6')
        """
        return self.classes[np.argmax(self.decision_function(features), axis=1)]

    def score(self, features, labels) -> float:
        """Accuracy on ``(features, labels)``, in ``[0, 1]``.

        Example:
            >>> train_x, test_x = ef.embed_images(["cat.jpg", "rocket.jpg"]), ef.embed_images(["cat.jpg"])
            >>> probe = linear_probe(train_x, ["cat", "rocket"])
            >>> probe.score(test_x, ["cat"])
            1.0
        """
        return float(np.mean(self.predict(features) == np.asarray(labels)))


def linear_probe(train_features, train_labels, test_features=None, test_labels=None, *,
                 C: float = 0.316, max_iter: int = 1000) -> LinearProbe:
    """Fit a linear probe: L2-regularised multinomial logistic regression by L-BFGS.

    The objective is scikit-learn's ``LogisticRegression(C=C)``: ``C`` times the summed
    cross-entropy plus half the squared norm of the weights (the bias is not penalised), so
    smaller ``C`` regularises more. The paper sweeps ``C`` on a validation split; 0.316 is the
    value of openai/CLIP's README linear-probe example. Computed in float64 with torch.

    Example:
        >>> train_paths, train_labels = ["cat.jpg", "rocket.jpg", "coffee.jpg"], ["cat", "rocket", "coffee"]
        >>> probe = linear_probe(ef.embed_images(train_paths), train_labels,
        ...                      ef.embed_images(["cat.jpg"]), ["cat"])
        >>> probe.train_accuracy, probe.test_accuracy
        (1.0, 1.0)
    """
    if C <= 0:
        raise ValueError(f"C must be positive, got {C}")
    x = np.asarray(train_features, dtype=np.float64)
    labels = np.asarray(train_labels)
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError(f"expected features [N, dim] and N labels, got {x.shape} and {labels.shape}")
    classes, y = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError("a linear probe needs at least 2 classes in the training labels")

    features = torch.from_numpy(x)
    targets = torch.from_numpy(y.astype(np.int64))
    weight = torch.zeros(len(classes), x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")
    n = len(x)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # The objective divided by C * n: the same minimiser, better-scaled for L-BFGS.
        loss = F.cross_entropy(features @ weight.t() + bias, targets) + (weight**2).sum() / (2 * C * n)
        loss.backward()
        return loss

    optimizer.step(closure)
    probe = LinearProbe(weight.detach().numpy().copy(), bias.detach().numpy().copy(), classes, C)
    probe.train_accuracy = probe.score(x, labels)
    if test_features is not None:
        if test_labels is None:
            raise ValueError("test_features were given without test_labels")
        probe.test_accuracy = probe.score(test_features, test_labels)
    return probe
