"""The ``clip-embeddings`` command line, against the tiny random model.

The end-to-end paths (the installed console script, ``index`` then ``search``, a one-line error)
run as subprocesses. The rest call ``main(argv)`` in this process, which is what the console
script runs, because each subprocess pays a torch import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import clip_embeddings as ce
from clip_embeddings.apps import cli, console
from clip_embeddings.apps.cli import bench
from clip_embeddings.apps.cli.finetune import read_pairs
from clip_embeddings.core.loading import default_model
from clip_embeddings.core.download import MODELS

SUBCOMMANDS = {
    "index": ["--db", "--location", "--collection", "--extensions", "--no-recursive", "--on-error", "--model",
              "--sync", "--dry-run", "--watch", "--tags"],
    "search": ["QUERY", "--image", "--modality", "-k", "--db", "--collection", "--like", "--min-score", "--tag"],
    "delete": ["ID", "--where", "--tag"],
    "classify": ["IMAGES", "--labels", "--labels-file", "--templates", "-k"],
    "eval": ["--dataset", "--labels", "--templates"],
    "finetune": ["--pairs", "--epochs", "--lr", "--batch-size", "--output", "--freeze-image", "--freeze-text"],
    "models": ["cache"],
    "bench": ["run_all.py"],
    "cache": ["stats", "prune", "clear", "--path", "--max-size"],
    "dedup": ["--threshold", "--gap", "--delete", "--sheets", "--db", "--collection", "--json"],
    "export": ["OUTPUT", "--format", "--modality", "--shard-size", "--json"],
    "map": ["OUTPUT.png", "--projection", "--clusters", "--vocabulary", "--html", "--json"],
    "score": ["PAIRS", "--min", "--w", "--output", "--json"],
}


def clip_embeddings_command() -> list[str]:
    """The installed console script next to this interpreter, else the module."""
    script = Path(sys.executable).with_name("clip-embeddings")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "clip_embeddings.apps.cli"]


def run_cli(*args: str, model: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)  # carries the per-test CLIP_CACHE_DIR
    if model is not None:
        env["CLIP_WEIGHTS"] = str(model)
    return subprocess.run([*clip_embeddings_command(), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def tiny_env(monkeypatch, tiny_model_path):
    """In-process commands default to the tiny model, as the subprocesses do through CLIP_WEIGHTS."""
    monkeypatch.setenv("CLIP_WEIGHTS", str(tiny_model_path))
    return tiny_model_path


# --- subprocesses: the console script itself ----------------------------------------------------

def test_index_then_search_finds_the_indexed_photo(tmp_path, tiny_model_path, sample_images):
    db = tmp_path / "db"
    common = ["--db", "chroma", "--location", str(db), "--collection", "photos"]
    index = run_cli("index", str(sample_images[0].parent), *common, model=tiny_model_path)
    assert index.returncode == 0, index.stderr
    assert f"new {len(sample_images)}, updated 0, already present 0, duplicates 0, skipped 0" in index.stdout

    target = next(p for p in sample_images if p.name == "rocket.jpg")
    search = run_cli("search", "--image", str(target), "-k", "3", *common, model=tiny_model_path)
    assert search.returncode == 0, search.stderr
    lines = search.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["rank", "score", "id"])
    first = lines[header + 2].split()  # after the header and its rule
    assert first[0] == "1" and first[-1] == str(target.resolve())
    assert float(first[1]) == pytest.approx(1.0, abs=1e-3)
    assert len(lines) == header + 2 + 3


def test_bad_folder_is_one_line_error(tmp_path):
    result = run_cli("index", str(tmp_path / "missing"), "--location", str(tmp_path / "db"), "--collection", "c")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_tool_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in SUBCOMMANDS:
        assert command in result.stdout
    assert "--debug" in result.stdout


# --- in process: main(argv) ---------------------------------------------------------------------

@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(command, capsys):
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: clip-embeddings {command}")
    for option in SUBCOMMANDS[command]:
        assert option in out, f"{command} --help does not mention {option}"


def test_usage_error_exits_2(capsys):
    assert cli.main(["index"]) == 2
    assert "the following arguments are required" in capsys.readouterr().err
    assert cli.main(["search", "a cat", "--location", "x", "--collection", "c", "--db", "mongo"]) == 2


def test_debug_prints_the_traceback(tmp_path, capsys):
    args = ["index", str(tmp_path / "missing"), "--location", str(tmp_path / "db"), "--collection", "photos"]
    assert cli.main(["--debug", *args]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert cli.main([*args, "--debug"]) == 1  # after the command as well
    assert "Traceback" in capsys.readouterr().err


def test_search_needs_exactly_one_query(tmp_path, capsys):
    assert cli.main(["search", "--location", str(tmp_path), "--collection", "photos"]) == 1
    assert capsys.readouterr().err.startswith("error: search takes a QUERY, --image PATH or --like ID")


@pytest.mark.parametrize("db", ["qdrant", "lancedb", "pgvector", "milvus"])
def test_index_and_search_other_databases(db, store_location, tiny_env, other_tiny_model_path, sample_images, capsys):
    common = ["--db", db, "--location", store_location(db), "--collection", "photos"]
    folder = sample_images[0].parent
    assert cli.main(["index", str(folder), "--extensions", ".jpg", "--no-recursive", *common]) == 0
    assert f"new {len(sample_images)}, " in capsys.readouterr().out
    assert cli.main(["search", "--image", str(sample_images[2]), "-k", "2", *common]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line[:4].strip() == "1"]
    assert rows[0][-1] == str(sample_images[2].resolve()) and float(rows[0][1]) == pytest.approx(1.0, abs=1e-3)

    # Other weights than the collection's: refused, with a hint about --model.
    assert cli.main(["search", "a cat", "--model", str(other_tiny_model_path), *common]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "was built with model" in err and "--model" in err
    assert cli.main(["search", "a cat", *common[:-1], "missing"]) == 1
    assert "create it with `clip-embeddings index" in capsys.readouterr().err


def test_index_lists_skipped_files_with_reasons(tmp_path, tiny_env, sample_images, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(sample_images[0].read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    assert cli.main(["index", str(folder), "--location", str(tmp_path / "db"), "--collection", "photos"]) == 0
    out = capsys.readouterr().out
    assert "new 1, updated 0, already present 0, duplicates 0, skipped 1" in out
    assert "broken.jpg" in out.split("skipped 1 item(s):")[1]

    assert cli.main(["index", str(folder), "--location", str(tmp_path / "db"), "--collection", "photos",
                     "--on-error", "raise"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "broken.jpg" in err and len(err.strip().splitlines()) == 1


def test_models_lists_all_nine_with_cache_state(isolated_cache, capsys):
    (isolated_cache / "RN50.pt").write_bytes(b"\0" * 2048)
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.split("\n\n")[0].splitlines()[3:]}  # the table, up to a blank line
    assert list(rows) == list(MODELS) and len(rows) == 9
    assert "cached" in rows["RN50"] and "2.0 KiB" in rows["RN50"]
    assert "not cached" in rows["ViT-B/32"]
    assert str(isolated_cache) in out


def test_classify_prints_the_labels(tiny_env, sample_images, tmp_path, capsys):
    labels = ["cat", "rocket", "cup of coffee"]
    assert cli.main(["classify", *map(str, sample_images[:2]), "--labels", ",".join(labels), "-k", "3"]) == 0
    out = capsys.readouterr().out
    table = out.split("probability\n", 1)[1].splitlines()[1:]  # the rows, after the header's rule
    assert len(table) == 6  # three labels ranked for each of two images
    for label in labels:
        assert sum(label in row for row in table) == 2
    assert table[0].startswith(sample_images[0].name) and table[3].startswith(sample_images[1].name)

    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("# pets\ncat\ndog\n")
    assert cli.main(["classify", str(sample_images[0]), "--labels-file", str(labels_file),
                     "--templates", "imagenet", "-k", "1"]) == 0
    out = capsys.readouterr().out
    assert "imagenet templates" in out and ("cat" in out or "dog" in out)


def _image_folder(root: Path) -> Path:
    for name, colour in {"red": (230, 20, 20), "blue": (20, 20, 230), "green_leaf": (20, 200, 20)}.items():
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (48, 40), tuple(max(0, c - 30 * i) for c in colour)).save(root / name / f"{i}.png")
    return root


def test_eval_prints_top1_and_top5(tmp_path, tiny_env, capsys):
    dataset = _image_folder(tmp_path / "ds")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"red": "red", "blue": "blue", "green_leaf": "green leaf"}))
    assert cli.main(["eval", "--dataset", str(dataset), "--labels", str(labels)]) == 0
    out = capsys.readouterr().out
    assert "6 image(s), 3 class(es)" in out
    assert "top-1 accuracy:" in out
    assert "top-5 accuracy: 100.00%" in out  # 3 classes: every label is within the top 5
    assert "green leaf" in out

    assert cli.main(["eval", "--dataset", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err.startswith("error:")


def test_finetune_writes_a_loadable_checkpoint(tmp_path, tiny_env, sample_images, capsys):
    captions = json.loads((sample_images[0].parent / "captions.json").read_text())
    pairs = tmp_path / "pairs.jsonl"
    # Relative image paths are resolved against the pairs file, so copy a few photos beside it.
    lines = []
    for path in sample_images[:4]:
        (tmp_path / path.name).write_bytes(path.read_bytes())
        lines.append(json.dumps({"image": path.name, "caption": captions[path.name]}))
    pairs.write_text("\n".join(lines) + "\n")
    output = tmp_path / "tuned.pt"
    args = ["finetune", "--pairs", str(pairs), "--epochs", "1", "--lr", "1e-3", "--batch-size", "2",
            "--output", str(output), "--freeze-image", "--device", "cpu"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "image tower frozen" in out and f"saved checkpoint: {output}" in out
    model, preprocess = ce.load(output, device="cpu")
    assert model.embed_dim == 64 and preprocess.resolution == 32


def test_read_pairs_csv_with_and_without_header(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    with_header = tmp_path / "with.csv"
    with_header.write_text('caption,image\n"a cat, sleeping",a.jpg\n')
    bare = tmp_path / "bare.csv"
    bare.write_text(f"{tmp_path / 'a.jpg'},a dog\n")
    assert read_pairs(with_header) == [(str(tmp_path / "a.jpg"), "a cat, sleeping")]
    assert read_pairs(bare) == [(str(tmp_path / "a.jpg"), "a dog")]


def test_bench_runs_the_script_or_explains(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(bench, "benchmarks_script", lambda: tmp_path / "benchmarks" / "run_all.py")
    assert cli.main(["bench"]) == 1
    err = capfd.readouterr().err
    assert err.startswith("error:") and "source checkout" in err

    script = tmp_path / "benchmarks" / "run_all.py"
    script.parent.mkdir()
    script.write_text("import sys\nprint('bench args', sys.argv[1:])\nsys.exit(3)\n")
    capfd.readouterr()
    assert cli.main(["bench", "--quick", "-k", "3"]) == 3  # the script's exit status is the command's
    assert "bench args ['--quick', '-k', '3']" in capfd.readouterr().out


def test_default_model_comes_from_clip_weights(monkeypatch, tmp_path):
    from clip_embeddings.apps.cli.common import make_ef

    monkeypatch.delenv("CLIP_WEIGHTS", raising=False)
    assert default_model() == "ViT-B/32"
    tuned = tmp_path / "tuned.pt"
    tuned.write_bytes(b"")  # only its existence is checked before the first use
    monkeypatch.setenv("CLIP_WEIGHTS", str(tuned))
    # classify's --model stays unset (so a --model beside --server can be told apart); the
    # embedding function the command builds takes $CLIP_WEIGHTS, as evaluate's parser default does.
    args = cli.build_parser().parse_args(["classify", "x.jpg", "--labels", "a,b"])
    assert args.model is None and make_ef(args).model_name == str(tuned)
    assert cli.build_parser().parse_args(["eval", "--dataset", "data"]).model == str(tuned)


def test_one_line_collapses_multiline_messages():
    assert console.one_line(ValueError("first\n  second")) == "first; second"
    assert console.one_line(RuntimeError("")) == "RuntimeError"
