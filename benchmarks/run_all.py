"""Run every benchmark (encode, folder -> Chroma ingest, streaming memory) and write one JSON.

Everything is timed in this one process against openai/CLIP's ``model.py`` on the same random
weights in the real shapes (memory: one fresh subprocess per size). See benchmarks/README.md for
what each number means.

Examples:
    .venv/bin/python benchmarks/run_all.py --quick                 # smoke test, < 3 minutes
    .venv/bin/python benchmarks/run_all.py --models ViT-B/32 RN50 --repeats 5 --bf16
    .venv/bin/python benchmarks/run_all.py --only encode --models ViT-B/16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
import bench_encode  # noqa: E402
import bench_first_vector  # noqa: E402
import bench_ingest  # noqa: E402
import bench_memory  # noqa: E402

TARGETS = """Targets (from the issues), checked against this run; "default" = ClipEF() as it is (dtype="auto"):
  native-bf16 CPU: default images >= 1.8x reference (RN50 >= 2.2x), texts >= 12x, cosine >= 0.9999, ingest >= 4x
  other CPUs: default images >= 1.3x reference, texts >= 6x, exact fp32 (max abs <= 1e-5), ingest >= 3x
  every CPU: default never slower than ONNX Runtime fp32 | ingest wall <= 1.15x model
  re-ingest >= 50x first ingest | peak RSS 10k images <= 1.2x 1k images
  first vector on a fresh cache: default at most +10 s over dtype="fp32" | default ingest >= 2x fastembed"""


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=TARGETS)
    parser.add_argument("--models", nargs="+", default=["ViT-B/32", "RN50"],
                        help="architectures for encode and ingest (default: ViT-B/32 RN50)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: ViT-B/32 only, tiny sizes, 1-2 repeats (< 3 minutes)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (after a warm-up)")
    parser.add_argument("--images", type=int, default=32, help="JPEGs in the ingest folder (1-12 MP)")
    parser.add_argument("--encode-images", type=int, default=16, help="images per timed encode_image call")
    parser.add_argument("--texts", type=int, default=256, help="captions per timed text run")
    parser.add_argument("--batch", type=int, default=32, help="texts per forward pass and ClipEF batch_size")
    parser.add_argument("--workers", type=int, default=None, help="ClipEF num_workers for ingest (default: ClipEF's)")
    parser.add_argument("--bf16", action="store_true",
                        help="also time bf16 where the CPU emulates it (always timed where it is native)")
    parser.add_argument("--no-peers", action="store_true", help="skip the HF transformers and ONNX Runtime rows")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the image tower")
    parser.add_argument("--sweep", action="store_true", help="ingest: also other num_workers and no draft decode")
    parser.add_argument("--memory-sizes", type=int, nargs="+", default=[1000, 10000], help="images streamed per run")
    parser.add_argument("--memory-model", default="tiny", help="model for the memory run ('tiny' or an architecture)")
    parser.add_argument("--only", nargs="+", choices=["encode", "ingest", "memory", "first"],
                        default=["encode", "ingest", "memory", "first"])
    parser.add_argument("--data-dir", type=Path, default=c.DEFAULT_DATA, help="generated images and weights")
    parser.add_argument("--json", help="result file (default benchmarks/results/run_all.json)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    started = time.perf_counter()
    result = {"environment": c.environment(), "settings": vars(args).copy()}
    quick_models = ["ViT-B/32"] if args.quick and args.models == ["ViT-B/32", "RN50"] else args.models
    if "encode" in args.only:
        ns = argparse.Namespace(models=quick_models, images=args.encode_images, texts=args.texts, batch=args.batch,
                                repeats=args.repeats, bf16=args.bf16, compile=args.compile, quick=args.quick,
                                no_peers=args.no_peers, data_dir=args.data_dir)
        bench_encode.apply_quick(ns)
        result["encode"] = bench_encode.run(ns)
        bench_encode.print_results(result["encode"])
    if "ingest" in args.only:
        ns = argparse.Namespace(models=quick_models, images=args.images, repeats=args.repeats, batch=args.batch,
                                workers=args.workers, sweep=args.sweep, quick=args.quick, data_dir=args.data_dir,
                                no_peers=args.no_peers)
        bench_ingest.apply_quick(ns)
        result["ingest"] = bench_ingest.run(ns)
        bench_ingest.print_results(result["ingest"])
    if "memory" in args.only:
        ns = argparse.Namespace(sizes=args.memory_sizes, model=args.memory_model, pool=64, batch=args.batch,
                                quick=args.quick, data_dir=args.data_dir, child=False, n=None)
        bench_memory.apply_quick(ns)
        result["memory"] = bench_memory.run(ns)
        bench_memory.print_results(result["memory"])
    if "first" in args.only:
        ns = argparse.Namespace(models=quick_models, repeats=args.repeats, quick=args.quick, data_dir=args.data_dir,
                                child=False, dtype="auto", weights=None, wait=300)
        bench_first_vector.apply_quick(ns)
        result["first_vector"] = bench_first_vector.run(ns)
        bench_first_vector.print_results(result["first_vector"])
    result["summary"] = summary(result)
    result["total_s"] = time.perf_counter() - started
    print("\n" + TARGETS.splitlines()[0].replace("Targets", "Summary"))
    for line in result["summary"]:
        print("  " + line)
    print(f"\nwrote {c.write_json(args.json, result, 'run_all')} ({result['total_s']:.0f} s)")
    return result


def summary(result: dict) -> list[str]:
    """One line per target: the measured number and whether it is met."""
    from bench_encode import AUTO

    lines = []
    ok = lambda cond: "met" if cond else "NOT met"  # noqa: E731
    encode = result.get("encode", {})
    native = {name: info.get("native_bf16", False) for name, info in encode.get("runtime", {}).items()}
    for name, tasks in encode.get("models", {}).items():
        image, text, bf16 = tasks["image"], tasks["text"], native.get(name, False)
        auto, precision = image[AUTO], encode["runtime"][name]["precision"]
        image_bar = (2.2 if name.startswith("RN") else 1.8) if bf16 else 1.3
        exact = auto["max_abs_diff"] <= 1e-5 if not bf16 else auto["cosine_min"] >= 0.9999
        agreement = f"cosine {auto['cosine_min']:.6f}" if bf16 else f"max abs {auto['max_abs_diff']:.1e}"
        lines.append(f"{name} image encode, default ({precision}): {auto['ratio']:.2f}x, {agreement} "
                     f"({ok(auto['ratio'] >= image_bar and exact)}: >= {image_bar}x)")
        for key, entry in image.items():
            if key.startswith("ours ") and key != AUTO or key == "ours, no rewrite":
                lines.append(f"{name} image encode {key.removeprefix('ours').lstrip(', ')}: {entry['ratio']:.2f}x, "
                             f"cosine {entry['cosine_min']:.6f}")
        if "ONNX Runtime fp32" in image:
            onnx = image["ONNX Runtime fp32"]["ratio"]
            lines.append(f"{name} image encode: default {auto['ratio']:.2f}x vs ONNX Runtime fp32 {onnx:.2f}x "
                         f"({ok(auto['ratio'] >= onnx)})")
        if "HF transformers CLIPModel" in image:
            lines.append(f"{name} image encode HF transformers: {image['HF transformers CLIPModel']['ratio']:.2f}x")
        ef = text["ClipEF.embed_texts"]
        text_bar = 12 if bf16 else 6
        lines.append(f"{name} text, default ClipEF.embed_texts incl. tokenizer: {ef['ratio']:.2f}x, cosine "
                     f"{ef['cosine_min']:.6f} ({ok(ef['ratio'] >= text_bar)}: >= {text_bar}x); model alone, "
                     f"77-token rows {text[AUTO]['ratio']:.2f}x, length-sorted {text[AUTO + ' length-sorted']['ratio']:.2f}x")
        if "ONNX Runtime fp32" in text:
            lines.append(f"{name} text: ONNX Runtime fp32 {text['ONNX Runtime fp32']['ratio']:.2f}x, HF transformers "
                         f"{text.get('HF transformers CLIPModel', {}).get('ratio', float('nan')):.2f}x (77-token rows)")
    for name, v in result.get("ingest", {}).get("models", {}).items():
        first = v["first ingest"]
        bar = 4 if native.get(name, any(native.values())) else 3
        lines.append(f"{name} ingest: {first['ratio']:.2f}x one-image-per-call ({ok(first['ratio'] >= bar)}: >= {bar}x), "
                     f"wall/model {first['wall_over_model']:.2f} ({ok(first['wall_over_model'] <= 1.15)}), "
                     f"model idle {first['model_idle_fraction']:.0%}")
        speedup = v["re-ingest (cache)"]["speedup_over_first"]
        lines.append(f"{name} re-ingest: {speedup:.0f}x first ingest ({ok(speedup >= 50)})")
        peer = v.get("fastembed (same weights, ONNX)", {})
        if "vs_fastembed" in first:
            lines.append(f"{name} ingest: default {first['vs_fastembed']:.2f}x fastembed ({ok(first['vs_fastembed'] >= 2)})")
        elif peer.get("skipped"):
            lines.append(f"{name} ingest vs fastembed: skipped ({peer['skipped']})")
    for name, m in result.get("first_vector", {}).get("models", {}).items():
        lines.append(f"{name} first vector, fresh cache: default {m['auto_median_s']:.1f} s, fp32 {m['fp32_median_s']:.1f} s,"
                     f" {m['extra_s']:+.1f} s ({ok(m['extra_s'] <= 10)}: <= +10 s)")
    if "memory" in result:
        m = result["memory"]
        lines.append(f"peak RSS {m['runs'][-1]['n']} vs {m['runs'][0]['n']} images: {m['peak_ratio']:.3f}x "
                     f"({ok(m['peak_ratio'] <= 1.2)})")
    return lines


if __name__ == "__main__":
    main()
