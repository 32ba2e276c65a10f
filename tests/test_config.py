"""EmbeddingConfig: one owner of the defaults, the checks and the dict form, and everything built from it."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

import clip_embeddings as ce
from clip_embeddings.config import CONFIG_VERSION, EmbeddingConfig, check_on_error
from clip_embeddings.inputs.options import LoaderOptions

ROOT = Path(__file__).resolve().parent.parent


def test_clip_ef_signature_defaults_are_the_configs():
    defaults = EmbeddingConfig()
    parameters = inspect.signature(ce.ClipEF).parameters
    for name in ("device", "batch_size", "dtype", "long_text", "cache", "on_error", "fast_decode", "num_workers",
                 "download_root", "server"):
        assert parameters[name].default == getattr(defaults, name), name


@pytest.mark.parametrize("change, message", [
    ({"on_error": "ignore"}, "on_error"), ({"long_text": "wrap"}, "long_text"), ({"batch_size": 0}, "batch_size"),
    ({"num_workers": True}, "num_workers"), ({"num_workers": "4"}, "num_workers"), ({"dim": -1}, "dim"),
])
def test_bad_values_are_config_errors_everywhere(change, message, tiny_model_path):
    with pytest.raises(ce.ConfigError, match=message):
        EmbeddingConfig(**change)
    if "dim" not in change:
        with pytest.raises(ce.ConfigError, match=message):
            ce.ClipEF(str(tiny_model_path), **change)
        ef = ce.ClipEF(str(tiny_model_path))
        (name, value), = change.items()
        with pytest.raises(ce.ConfigError, match=message):  # a later change is checked the same way
            setattr(ef, name, value)
        assert getattr(ef, name) == getattr(EmbeddingConfig(), name)


def test_the_config_is_frozen_and_ef_changes_make_a_new_one(tiny_model_path):
    ef = ce.ClipEF(str(tiny_model_path))
    before = ef.config
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.batch_size = 3  # type: ignore[misc]
    ef.batch_size = 3
    assert ef.config.batch_size == 3 and before.batch_size == 32


def test_dict_form_round_trips_and_leaves_machine_settings_out(tiny_model_path):
    config = EmbeddingConfig(model=str(tiny_model_path), device="cpu", batch_size=7, long_text="chunk",
                             on_error="skip", num_workers=2, cache=False, download_root="/tmp/x",
                             loader_options=LoaderOptions(allow_urls=False), fingerprint="ab" * 8, dim=64)
    document = config.to_dict()
    assert document["version"] == CONFIG_VERSION
    assert not {"device", "cache", "download_root"} & set(document)
    back = EmbeddingConfig.from_dict(document)
    assert back.replace(device="cpu", cache=False, download_root="/tmp/x",
                        loader_options=LoaderOptions.from_config(back.loader_options)) == config


def test_a_version_0_1_0_config_loads_with_the_defaults_of_then():
    old = {"model": "tiny-clip.pt", "fingerprint": "0123456789abcdef", "dim": 64, "batch_size": 32, "dtype": None,
           "long_text": "truncate"}  # no version, no on_error, num_workers, loader_options
    config = EmbeddingConfig.from_dict(old)
    assert (config.on_error, config.num_workers, config.loader_options, config.fast_decode) == ("raise", 4, None, True)
    ef = ce.ClipEF.build_from_config(old)
    assert ef.expected_fingerprint == "0123456789abcdef" and ef.loader_options == LoaderOptions()


def test_stored_config_errors_are_typed():
    base = {"model": "x", "fingerprint": "f", "dim": 8}
    with pytest.raises(ce.ConfigError, match="newer"):
        EmbeddingConfig.from_dict({**base, "version": CONFIG_VERSION + 1})
    with pytest.raises(ce.ConfigError, match="config num_workers"):
        ce.ClipEF.validate_config({**base, "num_workers": 0})
    with pytest.raises(ce.ConfigError, match="loader_options"):
        ce.ClipEF.validate_config({**base, "loader_options": {"nope": 1}})
    with pytest.raises(ce.IncompatibleCollectionError):
        EmbeddingConfig.from_dict({"model": "x"})
    assert EmbeddingConfig.from_dict({**base, "added_by_a_newer_minor": 1}).model == "x"


def test_get_config_is_the_configs_dict_form(tiny_model_path):
    ef = ce.ClipEF(str(tiny_model_path), batch_size=5, on_error="skip")
    stored = ef.get_config()
    assert stored == ef.config.replace(fingerprint=ef.fingerprint, dim=ef.dim).to_dict()
    rebuilt = ce.ClipEF.build_from_config(stored)
    assert rebuilt.config.replace(fingerprint=None, dim=None) == ef.config.replace(device=None)


def test_check_on_error_is_the_one_check():
    assert check_on_error("skip") == "skip"
    with pytest.raises(ce.ConfigError):
        check_on_error("ignore")


def test_the_library_spells_the_defaults_once():
    """``num_workers=4`` and the on_error check appear in config.py only (a fine-tuning batch of 32 is another setting)."""
    offenders = []
    for path in (ROOT / "clip_embeddings").rglob("*.py"):
        if path.name == "config.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(node.value, ast.Constant):
                if (node.target.id, node.value.value) in (("num_workers", 4),):
                    offenders.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.arguments):
                names = [a.arg for a in node.args + node.kwonlyargs]
                values = [None] * (len(node.args) - len(node.defaults)) + list(node.defaults) + list(node.kw_defaults)
                for name, value in zip(names, values):
                    if isinstance(value, ast.Constant) and (name, value.value) in (("num_workers", 4),):
                        offenders.append(f"{path.name}:{value.lineno} {name}")
            if (isinstance(node, ast.Compare) and getattr(node.left, "id", None) == "on_error"
                    and isinstance(node.ops[0], (ast.In, ast.NotIn))):  # a check of the value, not a use
                offenders.append(f"{path.name}:{node.lineno} on_error check")
    assert not offenders, offenders


def test_lancedb_model_takes_its_defaults_and_checks_from_the_config():
    pytest.importorskip("lancedb")
    from clip_embeddings.adapters.lancedb import ClipLanceEmbeddings

    defaults = EmbeddingConfig()
    fields = ClipLanceEmbeddings.model_fields
    for name in ("batch_size", "num_workers", "long_text", "on_error", "dtype"):
        assert fields[name].default == getattr(defaults, name), name
    with pytest.raises(ValueError, match="num_workers"):
        ClipLanceEmbeddings(model="ViT-B/32", num_workers=0)


def test_cli_model_options_show_the_config_default():
    from clip_embeddings.apps.cli.common import model_options

    args = model_options().parse_args([])
    assert args.batch_size == EmbeddingConfig().batch_size
