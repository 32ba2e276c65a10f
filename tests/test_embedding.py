"""ClipEF: values equal the reference, one model per process, bad items reported, cache reused."""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch
from PIL import Image, ImageOps

import clip_embeddings as ce
from clip_embeddings.embedding import function as embedding
from clip_embeddings.embedding import loaded
from clip_embeddings.core.tokenizer import token_windows
from tests.reference import reference_embeddings


def _ef(path, **kw):
    return ce.ClipEF(str(path), fast_decode=False, **kw)


def _count_image_forwards(ef) -> list[int]:
    """Counts the vision tower's forward passes (images, not calls) on the shared model."""
    calls = [0]
    ef.loaded_model().model.visual.register_forward_hook(lambda m, args, out: calls.__setitem__(0, calls[0] + len(out)))
    return calls


def test_texts_match_reference(tiny_model_path):
    texts = ["a photo of a cat", "", "Straße café 東京 🐱", "two dogs playing in the snow", "x"]
    _, expected = reference_embeddings(tiny_model_path, texts=texts)
    got = _ef(tiny_model_path, batch_size=2).embed_texts(texts)
    assert got.dtype == np.float32 and got.shape == (5, 64)
    assert np.abs(got - expected).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-6)


def _passes(ef, texts) -> list[tuple[int, int]]:
    """Embed ``texts``; each forward pass's (rows, longest row), whether it ran padded or packed.

    A packed pass embeds each group of equal-length rows on its own, so rows are summed over the
    token embedding's calls until the pass reaches ``ln_final``.
    """
    model = ef.loaded_model().model
    groups: list[tuple[int, int]] = []
    passes: list[tuple[int, int]] = []

    def end_of_pass(*_):
        passes.append((sum(rows for rows, _ in groups), max(width for _, width in groups)))
        groups.clear()

    hooks = [model.token_embedding.register_forward_hook(lambda m, args, out: groups.append(tuple(args[0].shape))),
             model.ln_final.register_forward_hook(end_of_pass)]
    try:
        ef.embed_texts(texts)
    finally:
        for hook in hooks:
            hook.remove()
    return passes


def test_short_texts_share_forward_passes_within_the_token_budget(tiny_model_path):
    # batch_size counts full-length rows: 4 x 77 tokens per pass. Six-token captions fit ~12 a
    # pass, so 40 of them take 4 passes where 4 texts a pass took 10, with the same vectors.
    texts = [f"a photo of item {i}" for i in range(40)]
    ef = _ef(tiny_model_path, batch_size=4)
    passes = _passes(ef, texts)
    context = ef.loaded_model().model.context_length
    assert sum(rows for rows, _ in passes) == 40
    assert all(rows * width <= 4 * context for rows, width in passes)
    assert 1 < len(passes) <= 5
    _, expected = reference_embeddings(tiny_model_path, texts=texts)
    assert np.abs(ef.embed_texts(texts) - expected).max() < 1e-5


def test_text_passes_on_a_cpu_stay_within_the_cpu_token_cap(tiny_model_path):
    # batch_size=64 would allow 64 x 77 = 4,928 tokens a pass; on a CPU passes stop at
    # CPU_TEXT_TOKENS, where larger ones measured slower (the activations outgrow the caches).
    texts = [f"a photo of item number {i} seen from far away" for i in range(300)]
    passes = _passes(_ef(tiny_model_path, batch_size=64), texts)
    assert sum(rows for rows, _ in passes) == 300
    assert all(rows * width <= embedding.CPU_TEXT_TOKENS for rows, width in passes)
    assert max(rows * width for rows, width in passes) > embedding.CPU_TEXT_TOKENS // 2


def test_texts_on_a_cpu_run_packed_and_prompt_templates_share_their_head(tiny_model_path, monkeypatch):
    # Captions of different lengths run without padding; a batch of one template's prompts keeps
    # the padded path, which computes the template's common head once. Both give the reference's.
    model_cls = ce.core.model.CLIP
    calls: list[str] = []
    for name in ("encode_text", "encode_text_packed"):
        real = getattr(model_cls, name)
        monkeypatch.setattr(model_cls, name, lambda self, x, real=real, name=name: calls.append(name) or real(self, x))
    ef = _ef(tiny_model_path)
    captions = ["a cat", "a black dog on a beach", "sky", "a red double-decker bus in the rain", "two cats"]
    prompts = [f"a photo of a {label}, a type of animal." for label in ("cat", "dog", "hippopotamus")]
    for texts, path in ((captions, "encode_text_packed"), (prompts, "encode_text")):
        calls.clear()
        got = ef.embed_texts(texts)
        assert calls == [path]
        _, expected = reference_embeddings(tiny_model_path, texts=texts)
        assert np.abs(got - expected).max() < 1e-5


def test_token_budget_batches_keep_order_and_budget():
    lengths = [2, 3, 3, 5, 9, 9, 77]
    batches = list(embedding.token_budget_batches(lengths, list("abcdefg"), budget=20))
    assert batches == [["a", "b", "c", "d"], ["e", "f"], ["g"]]  # 4*5, 2*9, and one row alone over budget


def test_images_match_reference_for_every_input_kind(tiny_model_path, sample_images):
    pil = [Image.open(p).convert("RGB") for p in sample_images[:3]]
    expected, _ = reference_embeddings(tiny_model_path, images=pil)
    as_bytes = sample_images[1].read_bytes()
    items = [str(sample_images[0]), as_bytes, np.asarray(pil[2])]
    got = _ef(tiny_model_path, batch_size=2).embed_images(items)
    assert got.shape == (3, 64)
    assert np.abs(got - expected).max() < 1e-5


def test_draft_decode_stays_close_to_full_decode(tiny_model_path, tmp_path, sample_images):
    big = Image.open(sample_images[0]).convert("RGB").resize((2400, 2400), Image.BICUBIC)
    big.save(tmp_path / "big.jpg", quality=92)
    exact = _ef(tiny_model_path).embed_images([tmp_path / "big.jpg"])
    fast = ce.ClipEF(str(tiny_model_path), fast_decode=True, cache=False).embed_images([tmp_path / "big.jpg"])
    assert float(exact[0] @ fast[0]) > 0.999


def test_long_text_truncates_by_default_and_chunks_on_request(tiny_model_path):
    long_text = " ".join(f"word{i}" for i in range(200))
    truncated = _ef(tiny_model_path).embed_texts([long_text])
    _, expected = reference_embeddings(tiny_model_path, texts=[long_text])  # reference truncate=True
    assert np.abs(truncated - expected).max() < 1e-5

    chunked = _ef(tiny_model_path, long_text="chunk").embed_texts([long_text])
    windows = token_windows(long_text)
    assert len(windows) > 1
    lm = loaded.shared_model(str(tiny_model_path))
    with torch.no_grad():
        per_window = torch.nn.functional.normalize(
            torch.cat([lm.model.encode_text(torch.tensor([w])) for w in windows]), dim=-1)
    direct = torch.nn.functional.normalize(per_window.mean(0), dim=0).numpy()
    assert np.abs(chunked[0] - direct).max() < 1e-5
    assert float(chunked[0] @ truncated[0]) < 0.9999  # the later windows did count


def test_call_keeps_order_of_mixed_inputs(tiny_model_path, sample_images):
    ef = _ef(tiny_model_path)
    image = np.asarray(Image.open(sample_images[0]).convert("RGB"))
    rows = ef(["a cat", image, "a dog"])
    assert [r.shape for r in rows] == [(64,)] * 3
    assert np.allclose(rows[0], ef.embed_texts(["a cat"])[0], atol=1e-6)
    assert np.allclose(rows[1], ef.embed_images([image])[0], atol=1e-6)
    assert np.allclose(rows[2], ef.embed_texts(["a dog"])[0], atol=1e-6)


def test_model_is_loaded_once_across_instances_and_rebuilds(tiny_model_path):
    ef = _ef(tiny_model_path)
    ef.embed_texts(["warm up"])
    before = loaded.model_load_count()
    for _ in range(20):
        rebuilt = ce.ClipEF.build_from_config(ef.get_config())
        rebuilt.embed_texts(["again"])
        ce.ClipEF(str(tiny_model_path)).embed_texts(["and again"])
    assert loaded.model_load_count() == before


def test_config_round_trip_carries_fingerprint(tiny_model_path):
    ef = _ef(tiny_model_path, batch_size=7, long_text="chunk")
    config = ef.get_config()
    assert config["dim"] == 64 and len(config["fingerprint"]) == 16 and config["batch_size"] == 7
    rebuilt = ce.ClipEF.build_from_config(config)
    assert rebuilt.get_config() == config
    assert rebuilt.fingerprint == ef.fingerprint


def test_fingerprint_depends_on_weights_not_file_format(tiny_model_path, other_tiny_model_path, tmp_path):
    from safetensors.torch import save_file

    state = torch.load(tiny_model_path, weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "same.safetensors"))
    a = ce.ClipEF(str(tiny_model_path)).fingerprint
    assert ce.ClipEF(str(tmp_path / "same.safetensors")).fingerprint == a
    assert ce.ClipEF(str(other_tiny_model_path)).fingerprint != a


def test_rebuilt_function_detects_replaced_weights(tiny_model_path, other_tiny_model_path):
    config = ce.ClipEF(str(tiny_model_path)).get_config()
    config["model"] = str(other_tiny_model_path)  # as if the file at the stored path had changed
    with pytest.raises(ce.ModelMismatchError) as e:
        ce.ClipEF.build_from_config(config).embed_texts(["x"])
    message = str(e.value)
    assert config["fingerprint"] in message and "ClipEF(model=" in message


def test_missing_weights_for_a_stored_config_say_how_to_open_it(tiny_model_path, tmp_path):
    config = ce.ClipEF(str(tiny_model_path)).get_config()
    config["model"] = str(tmp_path / "gone.pt")
    with pytest.raises(ce.ModelMismatchError, match="cannot be loaded here.*ClipEF\\(model="):
        ce.ClipEF.build_from_config(config).embed_texts(["x"])


def _bad_batch(tmp_path, sample_images):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(sample_images[0].read_bytes()[:2000])
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 255))
    rgba.paste((0, 0, 255, 0), (0, 0, 20, 30))  # left half fully transparent
    rgba.save(tmp_path / "rgba.png")
    rotated = Image.open(sample_images[2]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rotated.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    items = [tmp_path / "rgba.png", corrupt, tmp_path / "rotated.jpg", tmp_path / "missing.jpg"]
    return items, rgba, tmp_path / "rotated.jpg"


def test_bad_items_skip_keeps_the_good_and_reports_the_bad(tiny_model_path, tmp_path, sample_images):
    items, rgba, rotated_path = _bad_batch(tmp_path, sample_images)
    result = _ef(tiny_model_path).encode_images(items, on_error="skip")
    assert result.indices == [0, 2]
    assert [(s.index, s.reason) for s in result.skipped][1] == (3, "file not found")
    assert result.skipped[0].index == 1 and "corrupt.jpg" in result.skipped[0].source

    # RGBA composited on white; EXIF orientation applied: compare with doing both by hand.
    on_white = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    upright = ImageOps.exif_transpose(Image.open(rotated_path)).convert("RGB")
    assert upright.size == Image.open(rotated_path).size[::-1]
    expected, _ = reference_embeddings(tiny_model_path, images=[on_white, upright])
    assert np.abs(result.embeddings - expected).max() < 1e-5


def test_bad_items_raise_names_the_first_bad_one(tiny_model_path, tmp_path, sample_images):
    items, _, _ = _bad_batch(tmp_path, sample_images)
    with pytest.raises(ce.ImageLoadError) as e:
        _ef(tiny_model_path).encode_images(items)
    assert e.value.index == 1 and "corrupt.jpg" in str(e.value) and str(e.value).startswith("item 1")


def test_cache_skips_the_model_for_unchanged_files_and_reembeds_changed(tiny_model_path, tmp_path, sample_images):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sample_images:
        (folder / p.name).write_bytes(p.read_bytes())
    files = sorted(folder.iterdir())
    ef = _ef(tiny_model_path)
    calls = _count_image_forwards(ef)
    first = ef.encode_images(files)
    assert calls[0] == len(files) and first.cache_hits == 0

    second = ce.ClipEF(str(tiny_model_path), fast_decode=False).encode_images(files)
    assert calls[0] == len(files), "unchanged files must not reach the model"
    assert second.cache_hits == len(files)
    assert np.array_equal(first.embeddings, second.embeddings)

    Image.open(files[0]).transpose(Image.FLIP_LEFT_RIGHT).save(files[0])  # a real content change
    third = ef.encode_images(files)
    assert calls[0] == len(files) + 1 and third.cache_hits == len(files) - 1
    assert not np.allclose(third.embeddings[0], first.embeddings[0])


def test_cache_can_be_switched_off(tiny_model_path, sample_images):
    ef = _ef(tiny_model_path, cache=False)
    calls = _count_image_forwards(ef)
    ef.encode_images(sample_images[:2])
    ef.encode_images(sample_images[:2])
    assert calls[0] == 4 and ef.cache is None


def test_invalid_arguments_say_what_is_accepted(tiny_model_path):
    with pytest.raises(ValueError, match="long_text"):
        ce.ClipEF(str(tiny_model_path), long_text="split")
    with pytest.raises(ValueError, match="on_error"):
        ce.ClipEF(str(tiny_model_path), on_error="ignore")
    with pytest.raises(TypeError, match="item 1"):
        ce.ClipEF(str(tiny_model_path)).embed_texts(["ok", b"bytes"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(st.sampled_from(["text", "image"]), max_size=6), bad_at=st.integers(0, 6))
def test_call_on_a_mixed_list_names_the_bad_items_own_index(tiny_model_path, sample_images, kinds, bad_at):
    # The index is the bad image's place in the list given, not among the images alone (issue 24).
    bad_at = min(bad_at, len(kinds))
    items: list = [f"text {i}" if kind == "text" else sample_images[i % len(sample_images)]
                   for i, kind in enumerate(kinds)]  # a str is a text: images come as Paths
    items.insert(bad_at, sample_images[0].with_name("no-such-image.jpg"))
    with pytest.raises(ce.ImageLoadError) as caught:
        _ef(tiny_model_path)(items)
    assert caught.value.index == bad_at and str(caught.value).startswith(f"item {bad_at} ")
