"""Image and text encoding: ours vs openai/CLIP's ``model.py``, same weights, same process.

Image rows time ``encode_image`` on one batch of preprocessed photo-like images; text rows time
caption-length texts (10-20 tokens) in batches of ``--batch``:

* ``reference``: openai/CLIP under ``torch.no_grad``; texts as ``clip.tokenize`` gives them (77 tokens);
* ``ours auto``: the model ``ClipEF()`` runs by default (``dtype="auto"``: the path the probe in
  ``clip_embeddings/runtime/auto.py`` chose for this CPU, named in the JSON's ``runtime``), same tensors,
  under ``torch.inference_mode`` (texts: the same 77-token rows, so the model's own work is compared);
* ``ours fp32 (...)`` / ``ours bf16 (...)``: each precision path with every rewrite that applies
  (``prepare_for_inference``), unless it is the path ``auto`` took (then it is the auto row); bf16
  only where the CPU has native bf16, or with ``--bf16``;
* ``ours int8``: int8 linear layers (``dtype="int8"``, ``clip_embeddings/runtime/int8.py``), where
  this torch multiplies int8 matrices, unless ``auto`` took it;
* ``ours, no rewrite``: the model exactly as ``ce.load`` returns it (trainable, fp32);
* ``HF transformers CLIPModel``: ``transformers.CLIPModel`` with the same weights (ViT image tower
  and every text tower; HF has no ResNet vision tower); ``ONNX Runtime fp32``: the reference
  exported to ONNX, run by ONNX Runtime's CPU provider (``benchmarks/peers.py``; ``--no-peers``
  skips both);
* ``ours compiled``: ``torch.compile`` of the tower (opt-in, ``--compile``; compile time reported);
* ``ours auto length-sorted``: the same texts sorted by length into batches, as ``ClipEF`` does;
* ``ClipEF.embed_texts``: the whole default text path (tokenizer, length-sorted batches, normalisation);
  ``ClipEF.embed_texts int8``: the same with ``dtype="int8"``, unless that is what ``auto`` runs.

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

    from clip_embeddings.core.preprocess import Preprocess

    pre = Preprocess(resolution)
    return torch.stack([pre(Image.open(io.BytesIO(c.photo_jpeg(i, (640, 480)))).convert("RGB")) for i in range(n)])


def bench_images(name: str, m: dict, args) -> dict:
    x = preprocessed_photos(args.images, m["ours"].visual.input_resolution)
    with torch.no_grad():
        expected = m["reference"].encode_image(x)
    fns = {
        "reference": lambda: _no_grad(m["reference"].encode_image, x),
        "ours, no rewrite": lambda: _inference(m["ours"].encode_image, x),
    }
    for label, model in m["paths"].items():
        fns[label] = lambda model=model: _inference(model.encode_image, x)
    if m["hf"] is not None:
        fns["HF transformers CLIPModel"] = lambda: _no_grad(m["hf"][0], x)
    if m["onnx"] is not None:
        fns["ONNX Runtime fp32"] = lambda: m["onnx"][0](x)
    variants = {}
    if args.compile:
        compiled = torch.compile(m["ours"].visual)
        start = time.perf_counter()
        _inference(compiled, x)
        variants["ours compiled"] = {"compile_s": time.perf_counter() - start}
        fns["ours compiled"] = lambda: _inference(compiled, x)
    results = c.time_interleaved(fns, len(x), args.repeats, warmup=1)
    c.ratio_to(results, "reference")
    for key, fn in fns.items():
        results[key] |= variants.get(key, {}) | c.agreement(fn(), expected)
    return results


def bench_texts(name: str, m: dict, args) -> dict:
    from clip_embeddings import ClipEF
    from clip_embeddings.runtime.int8 import int8_available
    from tests.reference import reference_tokenize

    texts = c.captions(args.texts)
    tokens = reference_tokenize(texts)
    batches = [tokens[i : i + args.batch] for i in range(0, len(texts), args.batch)]
    with torch.no_grad():
        expected = torch.cat([m["reference"].encode_text(b) for b in batches])
    expected_unit = torch.nn.functional.normalize(expected, dim=-1)
    lengths = (tokens != 0).sum(1)  # start + ids + end: 0 is never a real token here
    ef = ClipEF(model=str(m["weights"]), device="cpu", batch_size=args.batch, cache=False)  # the default: auto
    ef.embed_texts(texts[:2])  # load the model into the registry before any timing
    order = sorted(range(len(texts)), key=lambda i: int(lengths[i]))  # what ClipEF does
    by_length = [tokens[order[i : i + args.batch]] for i in range(0, len(texts), args.batch)]
    restore = torch.argsort(torch.tensor(order))

    def encode_all(fn, rows):
        return torch.cat([fn(b) for b in rows])

    fns = {
        "reference": lambda: _no_grad(encode_all, m["reference"].encode_text, batches),
        "ours, no rewrite": lambda: _inference(encode_all, m["ours"].encode_text, batches),
    }
    for label, model in m["paths"].items():
        fns[label] = lambda model=model: _inference(encode_all, model.encode_text, batches)
    auto = m["paths"][AUTO]
    fns[f"{AUTO} length-sorted"] = lambda: _inference(encode_all, auto.encode_text, by_length)[restore]
    fns["ClipEF.embed_texts"] = lambda: torch.from_numpy(ef.embed_texts(texts))
    runtime = ef.loaded_model().runtime
    if int8_available() and runtime.get("text", runtime)["dtype"] != "int8":  # "text": the text tower's own path
        ef8 = ClipEF(model=str(m["weights"]), device="cpu", batch_size=args.batch, cache=False, dtype="int8")
        fns["ClipEF.embed_texts int8"] = lambda: torch.from_numpy(ef8.embed_texts(texts))
    if m["hf"] is not None:
        fns["HF transformers CLIPModel"] = lambda: _no_grad(encode_all, m["hf"][1], batches)
    if m["onnx"] is not None:
        fns["ONNX Runtime fp32"] = lambda: encode_all(m["onnx"][1], batches)
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


AUTO = "ours auto"  # the model ClipEF() runs by default (dtype="auto"), whatever path it chose


def models_for(name: str, args) -> dict:
    """Every candidate for one architecture, all from the same random weights."""
    import peers

    from clip_embeddings.runtime import auto as runtime
    from clip_embeddings.embedding.loaded import shared_model
    from clip_embeddings.runtime.inference import applicable_rewrites, prepare_for_inference
    from clip_embeddings.runtime.int8 import int8_available

    reference, ours, weights = c.model_pair(name, args.data_dir)
    lm = shared_model(str(weights), "cpu", "auto")  # probes (or reads the cached decision) once
    c.steady_state(lm, f"[encode] {name}:")
    print(f"[encode] {name}: auto chose {lm.precision} ({decided_by(lm.runtime)}): "
          f"{lm.runtime['reason']}", flush=True)
    paths = {AUTO: lm.model}
    dtypes = [torch.float32] + ([torch.bfloat16] if args.bf16 or runtime.detect_capabilities().native_bf16 else [])
    for dtype in dtypes:
        label = "ours fp32" if dtype == torch.float32 else "ours bf16"
        rewrites = applicable_rewrites(ours, dtype)
        precision = runtime.path_name("fp32" if dtype == torch.float32 else "bf16", rewrites)
        if precision != lm.precision:  # the same path as auto's is timed once, as the auto row
            paths[f"{label} ({precision})"] = prepare_for_inference(copy.deepcopy(ours), dtype, rewrites)
    if int8_available() and lm.precision != "int8":
        convolutions = tuple(r for r in applicable_rewrites(ours) if r in runtime.IMAGE_ONLY_REWRITES)
        paths[f"ours int8 ({runtime.path_name('int8', convolutions)})"] = \
            prepare_for_inference(copy.deepcopy(ours), torch.int8, convolutions)
    hf = peers.hf_clip(reference) if not args.no_peers else None
    onnx = peers.onnx_encoders(reference, name, args.data_dir) if not args.no_peers else None
    return {"reference": reference, "ours": ours, "weights": weights, "paths": paths, "hf": hf, "onnx": onnx,
            "runtime": lm.runtime}


def run(args) -> dict:
    from clip_embeddings.runtime import auto as runtime

    torch.manual_seed(0)
    caps = runtime.detect_capabilities()
    out = {"environment": c.environment(), "settings": vars(args).copy(), "models": {}, "runtime": {}}
    print(f"[encode] CPU: {caps.cpu_model}; flags seen: {' '.join(caps.flags) or 'none'}; torch kernels: "
          f"{caps.torch_capability}; native bf16: {'yes' if caps.native_bf16 else 'no'}", flush=True)
    for name in args.models:
        print(f"[encode] {name}: building the reference, ours and peers from the same random weights", flush=True)
        m = models_for(name, args)
        out["runtime"][name] = m["runtime"]
        out["models"][name] = {"image": bench_images(name, m, args), "text": bench_texts(name, m, args)}
        del m
    return out


def table_rows(result: dict) -> list[dict]:
    rows = []
    for name, tasks in result["models"].items():
        auto = result.get("runtime", {}).get(name, {}).get("precision", "?")
        for task, variants in tasks.items():
            for variant, entry in variants.items():
                label = f"{variant} ({auto})" if variant.startswith(AUTO) or variant == "ClipEF.embed_texts" else variant
                rows.append({"model": name, "task": f"{task} encode", "variant": label, **entry})
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
    print_runtime(result)
    for row in rows:
        if "compile_s" in row:
            print(f"  {row['model']} {row['task']}: torch.compile first call took {row['compile_s']:.1f} s")


def decided_by(runtime: dict) -> str:
    """Where ``auto``'s decision came from, as a report says it (the table's is not a probe's)."""
    if runtime.get("from_cache"):
        return "from the decision cache"
    source = runtime.get("source", "probe")
    return {"probe": "probed now", "table": "the shipped decision table"}.get(source, source)


def print_runtime(result: dict) -> None:
    """The CPU flags seen and what ``dtype="auto"`` decided for each model, with its probe."""
    for name, info in result.get("runtime", {}).items():
        print(f"\n  auto on {name}: {info['precision']} ({decided_by(info)}); "
              f"CPU {info['cpu']}, flags {' '.join(info['cpu_flags']) or 'none'}, torch {info['torch_capability']}")
        for tower in (info, info.get("text")):
            if tower is None:
                continue
            print(f"    why: {tower['reason']}")
            for path, probe in tower.get("probe", {}).items():
                print(f"    probe {path:34s} {probe['seconds'] * 1000:8.1f} ms  cosine {probe['cosine']:.6f}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=["ViT-B/32", "RN50"], help="architectures (tests/model_factory.py)")
    parser.add_argument("--images", type=int, default=16, help="images per timed encode_image call")
    parser.add_argument("--texts", type=int, default=256, help="captions per timed text run")
    parser.add_argument("--batch", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action="store_true",
                        help="also time bf16 where the CPU emulates it (always timed where it is native)")
    parser.add_argument("--no-peers", action="store_true", help="skip the HF transformers and ONNX Runtime rows")
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
