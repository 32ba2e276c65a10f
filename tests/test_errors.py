"""The error tree: drawn in errors.py's docstring, every public error under ClipError and its builtin,
the old import paths still the same classes, and domain failures typed where users would catch them."""

from __future__ import annotations

import builtins
import inspect
import re

import pytest

import clip_embeddings as ce
from clip_embeddings import errors

_LINE = re.compile(r"^\s*(?P<indent>(?:[│ ]   )*)(?:[├└]── )?(?P<name>[A-Z]\w+)(?: \[(?P<builtin>\w+)\])?")


def _drawn_tree() -> dict[str, tuple[str | None, str | None]]:
    """name -> (drawn parent, bracketed builtin), parsed from the module docstring's drawing."""
    doc = errors.__doc__ or ""
    block = doc.split("::", 1)[1].split("\n\n", 3)
    lines = [line for part in block[1:3] for line in part.splitlines() if line.strip()]
    tree: dict[str, tuple[str | None, str | None]] = {}
    stack: list[str] = []
    for line in lines:
        m = _LINE.match(line)
        assert m, f"unparsable tree line: {line!r}"
        depth = len(m["indent"]) // 4 + (1 if "── " in line else 0)
        stack[depth:] = [m["name"]]
        tree[m["name"]] = (stack[depth - 1] if depth else None, m["builtin"])
    return tree


def _module_classes() -> dict[str, type]:
    return {name: obj for name, obj in vars(errors).items()
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__}


def test_the_drawn_tree_lists_exactly_the_classes_of_the_module():
    assert set(_drawn_tree()) == set(_module_classes())


def test_each_class_has_the_drawn_parent_and_builtin():
    classes = _module_classes()
    for name, (parent, builtin) in _drawn_tree().items():
        cls = classes[name]
        if parent is not None:
            assert classes[parent] in cls.__bases__, (name, parent)
        if builtin is not None:
            assert issubclass(cls, getattr(builtins, builtin)), (name, builtin)


def test_every_error_is_a_clip_error_and_every_warning_a_clip_warning():
    for name, cls in _module_classes().items():
        if issubclass(cls, Warning):
            assert issubclass(cls, errors.ClipWarning), name
        else:
            assert issubclass(cls, errors.ClipError), name
            assert cls is errors.ClipError or any(b.__module__ == "builtins" and b is not Exception
                                                  for b in cls.__mro__[1:-2]), f"{name} has no builtin to catch"


def test_the_facade_exports_every_error():
    for name in _module_classes():
        assert getattr(ce, name) is getattr(errors, name)
        assert name in ce.__all__


def test_old_import_paths_are_the_same_classes():
    from clip_embeddings.apps.console import UsageError
    from clip_embeddings.apps.server import QueueFull
    from clip_embeddings.apps.server.inputs import BadRequest
    from clip_embeddings.embedding.cache import CacheWarning
    from clip_embeddings.embedding.remote import ServerError

    assert (UsageError, QueueFull, BadRequest, CacheWarning, ServerError) == (
        errors.UsageError, errors.QueueFull, errors.BadRequest, errors.CacheWarning, errors.ServerError)
    assert errors.BadRequest("too big", 413).status == 413


def test_a_newer_config_is_a_config_error_still_a_value_error():
    config = {"model": "ViT-B/32", "fingerprint": "f" * 16, "dim": 512, "version": 999}
    with pytest.raises(ce.ConfigError, match="newer") as caught:
        ce.ClipEF.validate_config(config)
    assert isinstance(caught.value, ValueError)


def test_a_config_without_the_keys_is_an_incompatible_collection():
    with pytest.raises(ce.IncompatibleCollectionError, match="not a clip-embeddings config"):
        ce.ClipEF.validate_config({"name": "someone else's"})


def test_a_bad_option_value_is_a_config_error(tiny_model_path):
    with pytest.raises(ce.ConfigError, match="on_error"):
        ce.ClipEF(str(tiny_model_path), on_error="ignore")
    with pytest.raises(ce.ConfigError, match="loader_options"):
        ce.LoaderOptions.from_config({"no_such_option": 1})


@pytest.mark.parametrize("address", ["chroma:/", "nosuchdb:///x#y", "chroma+ftp://host/photos", "qdrant+http:///"])
def test_a_bad_store_address_is_a_store_address_error(address):
    from clip_embeddings.adapters import parse_sink

    with pytest.raises(ce.StoreAddressError):
        parse_sink(address)


def test_a_bad_location_is_a_store_address_error():
    with pytest.raises(ce.StoreAddressError, match="without a scheme"):
        ce.open_store("chroma", "localhost:8000", "photos")
    with pytest.raises(ValueError):  # what callers caught before it was typed
        ce.open_store("nosuchdb", "folder", "photos")


def test_a_chroma_collection_not_made_by_us_is_incompatible(tmp_path):
    chromadb = pytest.importorskip("chromadb")
    client = chromadb.PersistentClient(path=str(tmp_path / "db"))
    client.create_collection("plain")  # Chroma's default function, not ClipEF
    del client
    with pytest.raises(ce.IncompatibleCollectionError):
        ce.open_store("chroma", tmp_path / "db", "plain")


def test_finetune_is_the_function_and_the_module_stays_a_module():
    import importlib
    import types

    module = importlib.import_module("clip_embeddings.tasks.finetune")
    assert isinstance(module, types.ModuleType)
    assert callable(ce.finetune) and not isinstance(ce.finetune, types.ModuleType)
    assert ce.finetune is module.finetune
