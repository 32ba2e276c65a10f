"""Image and text encoding: ours vs openai/CLIP's ``model.py``, same weights, same process.

Image rows time ``encode_image`` on one batch of preprocessed photo-like images; text rows time
caption-length texts (10-20 tokens) in batches of ``--batch``:

* ``reference``: openai/CLIP under ``torch.no_grad``; texts as ``clip.tokenize`` gives them (77 tokens);
* ``ours``: our model as ``ClipEF`` runs it on CPU (``optimize_for_inference``: batch norms folded
  into channels-last convolutions, linear weights packed for oneDNN), same tensors, under
  ``torch.inference_mode`` (texts: the same 77-token rows, so the model's own work is compared);
* ``ours, no rewrite``: the model exactly as ``ce.load`` returns it (trainable), to show what the
  inference rewrite buys on its own;
* ``ours bf16``: weights cast with ``cast_weights(model, torch.bfloat16)`` (opt-in, ``--bf16``);
* ``ours compiled``: ``torch.compile`` of the tower (opt-in, ``--compile``; compile time reported);
* ``ours length-sorted``: the same texts sorted by length into batches, as ``ClipEF`` does (vs
  ``ours``, whose batches are in input order: what length bucketing saves);
* ``ClipEF.embed_texts``: the whole text path (tokenizer, length-sorted batches, normalisation).

Agreement columns compare each row's features with the reference's fp32 features of the same
inputs: the smallest cosine similarity over rows and the largest absolute difference (for
``ClipEF`` rows, of unit vectors against the reference's normalised features).

Run: ``.venv/bin/python benchmarks/bench_encode.py --models ViT-B/32 RN50 [--quick] [--bf16]``
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

import _common as c  # noqa: I001 (sets sys.path for tests.*)


def preprocessed_photos(n: int, resolution: int) -> torch.Tensor:
    """``n`` photo-like images (640x480 JPEGs) through the real decode and preprocessing."""
    from PIL import Image
    import io

    from clip_embeddings.preprocess import Preprocess

    pre = Preprocess(resolution)
    return torch.stack([pre(Image.open(io.BytesIO(c.photo_jpeg(i, (640, 480)))).convert("RGB")) for i in range(n)])


def bench_images(name: str, reference, ours, fast, args) -> dict:
    from clip_embeddings.model import cast_weights

    x = preprocessed_photos(args.images, ours.visual.input_resolution)
    with torch.no_grad():
        expected = reference.encode_image(x)
    fns = {
        "reference": lambda: _no_grad(reference.encode_image, x),
        "ours": lambda: _inference(fast.encode_image, x),
        "ours, no rewrite": lambda: _inference(ours.encode_image, x),
    }
    variants = {}
    if args.bf16:
        low = cast_weights(copy.deepcopy(ours), torch.bfloat16)
        fns["ours bf16"] = lambda: _inference(low.encode_image, x)
    if args.compile:
        compiled = torch.compile(ours.visual)
        start = time.perf_counter()
        _inference(compiled, x)
        variants["ours compiled"] = {"compile_s": time.perf_counter() - start}
        fns["ours compiled"] = lambda: _inference(compiled, x)
    results = c.time_interleaved(fns, len(x), args.repeats, warmup=1)
    c.ratio_to(results, "reference")
    for key, fn in fns.items():
        results[key] |= variants.get(key, {}) | c.agreement(fn(), expected)
    return results


def bench_texts(name: str, reference, ours, fast, weights, args) -> dict:
    from clip_embeddings import ClipEF
    from clip_embeddings.model import cast_weights
    from tests.reference import reference_tokenize

    texts = c.captions(args.texts)
    tokens = reference_tokenize(texts)
    batches = [tokens[i : i + args.batch] for i in range(0, len(texts), args.batch)]
    with torch.no_grad():
        expected = torch.cat([reference.encode_text(b) for b in batches])
    expected_unit = torch.nn.functional.normalize(expected, dim=-1)
    lengths = (tokens != 0).sum(1)  # start + ids + end: 0 is never a real token here
    ef = ClipEF(model=str(weights), device="cpu", dtype="fp32", batch_size=args.batch, cache=False)
    ef.embed_texts(texts[:2])  # load the model into the registry before any timing
    order = sorted(range(len(texts)), key=lambda i: int(lengths[i]))  # what ClipEF does
    by_length = [tokens[order[i : i + args.batch]] for i in range(0, len(texts), args.batch)]
    restore = torch.argsort(torch.tensor(order))

    def encode_all(model, rows):
        return torch.cat([model.encode_text(b) for b in rows])

    fns = {
        "reference": lambda: _no_grad(encode_all, reference, batches),
        "ours": lambda: _inference(encode_all, fast, batches),
        "ours length-sorted": lambda: _inference(encode_all, fast, by_length)[restore],
        "ours, no rewrite": lambda: _inference(encode_all, ours, batches),
        "ClipEF.embed_texts": lambda: torch.from_numpy(ef.embed_texts(texts)),
    }
    if args.bf16:
        low = cast_weights(copy.deepcopy(ours), torch.bfloat16)
        fns["ours bf16"] = lambda: _inference(encode_all, low, batches)
    results = c.time_interleaved(fns, len(texts), args.repeats, warmup=1)
    c.ratio_to(results, "reference")
    for key, fn in fns.items():
        target = expected_unit if key.startswith("ClipEF") else expected
        results[key] |= c.agreement(fn(), target)
    results["reference"]["tokens_mean"] = float(lengths.float().mean())
    results["reference"]["tokens_range"] = [int(lengths.min()), int(lengths.max())]
    return results


def _no_grad(fn, *args):
    with torch.no_grad():
        return fn(*args)


def _inference(fn, *args):
    with torch.inference_mode():
        return fn(*args)


def run(args) -> dict:
    from clip_embeddings.inference import optimize_for_inference

    torch.manual_seed(0)
    out = {"environment": c.environment(), "settings": vars(args).copy(), "models": {}}
    for name in args.models:
        print(f"[encode] {name}: building the reference and ours from the same random weights", flush=True)
        reference, ours, weights = c.model_pair(name, args.data_dir)
        fast = optimize_for_inference(copy.deepcopy(ours))
        out["models"][name] = {
            "image": bench_images(name, reference, ours, fast, args),
            "text": bench_texts(name, reference, ours, fast, weights, args),
        }
        del reference, ours, fast
    return out


def table_rows(result: dict) -> list[dict]:
    rows = []
    for name, tasks in result["models"].items():
        for task, variants in tasks.items():
            for variant, entry in variants.items():
                rows.append({"model": name, "task": f"{task} encode", "variant": variant, **entry})
    return rows


COLUMNS = [
    ("model", "model", str), ("task", "task", str), ("variant", "variant", str),
    ("items/s median [IQR]", "items_per_s", None), ("ratio", "ratio", lambda v: f"{v:.2f}x"),
    ("peak RSS MB", "peak_rss_mb", lambda v: f"{v:.0f}"), ("cos min", "cosine_min", lambda v: f"{v:.6f}"),
    ("max abs", "max_abs_diff", lambda v: f"{v:.1e}"),
]


def print_results(result: dict) -> None:
    rows = table_rows(result)
    for row in rows:
        row["items_per_s"] = c.fmt_rate(row)
    cols = [(h, k, f or str) for h, k, f in COLUMNS]
    c.print_table("Encode throughput (items/s; ratio = reference time / this time, median over repeats)", rows, cols)
    for row in rows:
        if "compile_s" in row:
            print(f"  {row['model']} {row['task']}: torch.compile first call took {row['compile_s']:.1f} s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=["ViT-B/32", "RN50"], help="architectures (tests/model_factory.py)")
    parser.add_argument("--images", type=int, default=16, help="images per timed encode_image call")
    parser.add_argument("--texts", type=int, default=256, help="captions per timed text run")
    parser.add_argument("--batch", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="also time bf16 weights (slow without native bf16)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    parser.add_argument("--quick", action="store_true", help="small sizes, ViT-B/32 only, for smoke tests")
    parser.add_argument("--data-dir", type=c.Path, default=c.DEFAULT_DATA)


def apply_quick(args) -> None:
    if args.quick:
        args.models = ["ViT-B/32"] if args.models == ["ViT-B/32", "RN50"] else args.models
        args.images, args.texts, args.repeats = min(args.images, 4), min(args.texts, 32), min(args.repeats, 2)


def main(argv=None) -> dict:
    return c.run_script(sys.modules[__name__], "encode", argv)


if __name__ == "__main__":
    main()
