"""The one rule for reading user files (images, caption sidecars, captions files): issue 24.

Regular files only, never opened otherwise (a FIFO must not hang ``index``); no symbolic link
followed out of the indexed folder; every refusal named, with its path, in the report; a folder
that cannot be listed makes the report (and the CLI's exit status) say so; a captions file that
cannot be read or parsed is named in the error. The kinds of entry a folder may hold are drawn by
hypothesis, so the rule is tested as a class, not one example at a time.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import clip_embeddings as ce
from clip_embeddings.apps import cli
from clip_embeddings.adapters import open_store
from clip_embeddings.adapters.base import item_id
from clip_embeddings.inputs.captions import folder_captions, read_captions_file
from clip_embeddings.inputs.folders import iter_image_files
from clip_embeddings.inputs.sources import read_image_source
from clip_embeddings.inputs.user_files import FolderFile, Refused, read_regular_file, walk_folder

SECRET = "TOP-SECRET-KEY-MATERIAL"
AS_ROOT = os.geteuid() == 0  # root reads every file whatever its mode: "unreadable" needs another user
SIDECAR_KINDS = ["regular", "link_inside", "link_outside", "fifo", "directory", "dangling"] + (
    [] if AS_ROOT else ["unreadable"])
IMAGE_KINDS = ["regular", "link_inside", "link_outside", "folder_link_outside", "fifo", "dangling"]
STORED = {"regular", "link_inside"}
REASONS = {"link_outside": "outside the folder", "folder_link_outside": "outside the folder",
           "fifo": "not a regular file", "directory": "is a directory", "dangling": "broken symbolic link",
           "unreadable": "permission denied"}
SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def ef(tiny_model_path) -> ce.ClipEF:
    return ce.ClipEF(str(tiny_model_path), cache=False)


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


class Layout:
    """A folder to index beside an ``outside`` folder holding a secret and an image."""

    def __init__(self, base: Path):
        self.root, self.outside = base / "indexed", base / "outside"
        (self.root / ".kept").mkdir(parents=True)  # hidden: reached only through links inside
        self.outside.mkdir()
        self.secret = self.outside / "id_rsa"
        self.secret.write_text(SECRET)
        (self.outside / "elsewhere.png").write_bytes(png(10_000))

    def sidecar(self, image: Path, kind: str, text: str) -> None:
        sidecar = image.with_suffix(".txt")
        if kind == "regular":
            sidecar.write_text(text)
        elif kind == "link_inside":
            target = self.root / ".kept" / sidecar.name
            target.write_text(text)
            sidecar.symlink_to(target)
        elif kind == "link_outside":
            sidecar.symlink_to(self.secret)
        elif kind == "fifo":
            os.mkfifo(sidecar)
        elif kind == "directory":
            sidecar.mkdir()
        elif kind == "dangling":
            sidecar.symlink_to(self.root / "gone.txt")
        elif kind == "unreadable":
            sidecar.write_text(text)
            sidecar.chmod(0)

    def image(self, name: str, kind: str, data: bytes) -> Path:
        path = self.root / name
        if kind == "regular":
            path.write_bytes(data)
        elif kind == "link_inside":
            (self.root / ".kept" / name).write_bytes(data)
            path.symlink_to(self.root / ".kept" / name)
        elif kind == "link_outside":
            path.symlink_to(self.outside / "elsewhere.png")
        elif kind == "folder_link_outside":
            path = self.root / name.replace(".png", "-album")
            path.symlink_to(self.outside, target_is_directory=True)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "dangling":
            path.symlink_to(self.root / "gone.png")
        return path


def reasons_by_name(report) -> dict[str, str]:
    return {Path(s.source).name: s.reason for s in report.skipped}


@pytest.mark.timeout(300)  # a FIFO opened for reading would block forever: fail, do not hang
@SETTINGS
@given(kinds=st.lists(st.sampled_from(SIDECAR_KINDS), min_size=1, max_size=6))
def test_sidecar_captions_follow_the_one_rule(ef, kinds):
    with tempfile.TemporaryDirectory() as base:
        layout = Layout(Path(base))
        images = []
        for i, kind in enumerate(kinds):
            data = png(i)
            path = layout.image(f"img{i}.png", "regular", data)
            layout.sidecar(path, kind, f"caption number {i}")
            images.append((path, kind, item_id("image", hashlib.sha256(data).hexdigest())))
        store = open_store("chroma", ":memory:", f"c{uuid.uuid4().hex}", ef)
        report = store.index_folder(layout.root, progress=False)

        assert report.ids == [item for _, kind, item in images if kind in STORED]
        skipped = reasons_by_name(report)
        assert set(skipped) == {path.name for path, kind, _ in images if kind not in STORED}
        for i, (path, kind, item) in enumerate(images):
            if kind in STORED:
                assert store.get_item(item, "text").document == f"caption number {i}"
            else:  # the image is not stored half-done: the reason names the caption file and what it is
                assert skipped[path.name].startswith(f"caption file {path.with_suffix('.txt')}: ")
                assert REASONS[kind] in skipped[path.name]
        documents = [h.document for h in store.query("x", k=50, modality="text")] if report.ids else []
        assert not any(SECRET in (d or "") for d in documents)
        assert report.unread_folders == []


@pytest.mark.timeout(300)
@SETTINGS
@given(kinds=st.lists(st.sampled_from(IMAGE_KINDS), min_size=1, max_size=6))
def test_image_entries_follow_the_one_rule(ef, kinds):
    with tempfile.TemporaryDirectory() as base:
        layout = Layout(Path(base))
        entries = [(layout.image(f"img{i}.png", kind, png(i)), kind) for i, kind in enumerate(kinds)]
        store = open_store("chroma", ":memory:", f"c{uuid.uuid4().hex}", ef)
        report = store.index_folder(layout.root, progress=False)

        expected = [item_id("image", hashlib.sha256(png(i)).hexdigest()) for i, k in enumerate(kinds) if k in STORED]
        assert report.ids == expected
        assert store.count() == len(expected)  # nothing from outside the folder was stored
        skipped = reasons_by_name(report)
        assert set(skipped) == {path.name for path, kind in entries if kind not in STORED}
        for path, kind in entries:
            if kind not in STORED:
                assert REASONS[kind] in skipped[path.name]
        sources = {h.source for h in store.query("x", k=50)} if expected else set()
        assert sources == {os.path.abspath(p) for p, k in entries if k in STORED}  # the path as found
        assert report.unread_folders == []


def test_a_file_swapped_for_a_link_out_after_the_walk_is_not_read(tmp_path):
    root, outside = tmp_path / "indexed", tmp_path / "outside.png"
    root.mkdir()
    outside.write_bytes(png(1))
    (root / "a.png").write_bytes(png(2))
    (found,) = walk_folder(root, [".png"])
    found.unlink()
    found.symlink_to(outside)  # what a writer in the folder could do while the index runs
    with pytest.raises(ce.ImageLoadError, match="outside the folder"):
        read_image_source(FolderFile(found, os.path.realpath(root)))
    assert read_image_source(str(found)).data == png(1)  # a path named directly is read where it leads


def test_regular_files_only_and_fifos_never_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    for path, reason in [(tmp_path / "pipe", "not a regular file"), ("/dev/zero", "not a regular file"),
                         (tmp_path, "is a directory"), (tmp_path / "none", "file not found")]:
        with pytest.raises(Refused, match=reason) as caught:
            read_regular_file(path, 100)
        assert caught.value.path == str(path)
    (tmp_path / "big").write_bytes(b"x" * 101)
    with pytest.raises(Refused, match="101 bytes"):
        read_regular_file(tmp_path / "big", 100)
    assert read_regular_file(tmp_path / "big", 100, cut=True) == b"x" * 100


def _in_child_as_nobody(fn) -> str:
    """``fn()``'s text, computed in a forked child that runs as user ``nobody`` (so modes apply)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgid(65534)
            os.setuid(65534)
            out = fn()
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            out = f"child failed: {e!r}"
        os.write(write, out.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return text


def _shared_tmp() -> Path:
    base = Path(tempfile.mkdtemp())
    base.chmod(0o755)  # pytest's tmp_path is private to its user: nobody could not even look
    return base


def test_unreadable_files_and_folders_are_refused_by_name():
    base = _shared_tmp()
    (base / "a.png").write_bytes(png(1))
    (base / "secret.txt").write_text("x")
    (base / "secret.txt").chmod(0)
    (base / "locked").mkdir()
    (base / "locked" / "b.png").write_bytes(png(2))
    (base / "locked").chmod(0)

    def probe() -> str:
        walked = [x.reason if isinstance(x, Refused) else x.name for x in walk_folder(base, [".png"])]
        try:
            read_regular_file(base / "secret.txt", 100)
            read = "read"
        except Refused as e:
            read = e.reason
        return json.dumps([walked, read])

    run = _in_child_as_nobody if AS_ROOT else probe
    walked, read = json.loads(run(probe))
    assert walked[0] == "a.png" and walked[1].startswith("folder could not be read (permission denied)")
    assert read == "permission denied"


@pytest.fixture
def locked_folder(tmp_path, monkeypatch) -> Path:
    """A folder to index whose subfolder ``locked`` cannot be listed (EACCES)."""
    folder = tmp_path / "photos"
    (folder / "locked").mkdir(parents=True)
    (folder / "a.png").write_bytes(png(1))
    (folder / "locked" / "b.png").write_bytes(png(2))
    if AS_ROOT:  # root lists any folder: give it the error a user without the right gets
        real = os.scandir

        def scandir(path=".", *args):
            if Path(path) == folder / "locked":
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, *args)

        monkeypatch.setattr(os, "scandir", scandir)
    else:
        (folder / "locked").chmod(0)
    return folder


def test_an_unreadable_subfolder_is_in_the_report(locked_folder, ef):
    store = open_store("chroma", ":memory:", f"c{uuid.uuid4().hex}", ef)
    report = store.index_folder(locked_folder, progress=False)
    assert report.new == 1 and report.unread_folders == [str(locked_folder / "locked")]
    (skipped,) = report.skipped
    assert skipped.source == str(locked_folder / "locked") and "permission denied" in skipped.reason
    assert "locked" in str(report)
    with pytest.raises(ce.ImageLoadError, match="locked"):
        list(iter_image_files(locked_folder))


def test_cli_index_exits_1_when_a_subfolder_could_not_be_read(locked_folder, tiny_model_path, tmp_path, capsys):
    args = ["index", str(locked_folder), "--location", str(tmp_path / "db"), "--collection", "photos",
            "--model", str(tiny_model_path)]
    assert cli.main(args) == 1
    captured = capsys.readouterr()
    assert "new 1" in captured.out and "folder(s) could not be read" in captured.err
    assert str(locked_folder / "locked") in captured.err
    assert cli.main([*args, "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["unread_folders"] == [str(locked_folder / "locked")] and document["present"] == 1


BAD_CAPTION_FILES = [  # (name, bytes, what the error says)
    ("captions.csv", b"path,caption\na.png," + b"x" * 200_000 + b"\n", "field larger than field limit"),
    ("captions.json", b'{"a.png": "caf\xe9"}', "not UTF-8"),
    ("captions.json", b'{"a.png": ', "not valid JSON"),
    ("captions.json", b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    ("captions.csv", b"name,words\na.png,x\n", "path column"),
]


@pytest.mark.parametrize("name,data,says", BAD_CAPTION_FILES, ids=[c[2] for c in BAD_CAPTION_FILES])
def test_a_captions_file_that_fails_stops_the_index_naming_it(tmp_path, ef, tiny_model_path, capsys, name, data, says):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(png(1))
    (folder / name).write_bytes(data)
    store = open_store("chroma", ":memory:", f"c{uuid.uuid4().hex}", ef)
    with pytest.raises(ValueError, match=f"captions file {folder / name}: .*{says}"):
        store.index_folder(folder, progress=False)
    assert store.count() == 0
    assert cli.main(["index", str(folder), "--location", str(tmp_path / "db"), "--collection", "photos",
                     "--model", str(tiny_model_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: captions file {folder / name}: ") and says in err


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["fifo", "link_outside", "directory"])
def test_a_captions_file_that_is_not_a_regular_file_inside_is_refused(tmp_path, kind):
    layout = Layout(tmp_path)
    target = layout.root / "captions.json"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "link_outside":
        target.symlink_to(layout.secret)
    else:
        target.mkdir()
    with pytest.raises(ValueError, match=f"captions file {target}: .*{REASONS[kind]}") as caught:
        folder_captions(layout.root)
    assert SECRET not in str(caught.value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)),
       suffix=st.sampled_from([".json", ".csv"]))
def test_any_captions_file_parses_or_names_itself(tmp_path, data, suffix):
    path = tmp_path / f"captions{suffix}"
    path.write_bytes(data)
    try:
        captions = read_captions_file(path)
    except ValueError as e:
        assert str(e).startswith(f"captions file {path}: ")
    else:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in captions.items())


def test_a_relative_pathlib_path_is_read_not_held_to_a_folder(tmp_path, monkeypatch):
    """A pathlib.Path has a ``root`` attribute ("" when relative); only a walked FolderFile is held to a folder."""
    from clip_embeddings.inputs.sources import read_image_source

    photo = Path(__file__).resolve().parent.parent / "examples" / "images" / "cat.jpg"
    (tmp_path / "class").mkdir()
    shutil.copy(photo, tmp_path / "class" / "cat.jpg")
    monkeypatch.chdir(tmp_path)
    raw = read_image_source(Path("class/cat.jpg"))
    assert raw.data == photo.read_bytes()
