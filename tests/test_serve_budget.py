"""What one request may cost the server: the budget is checked before any work is queued.

The app runs in-process (Starlette's TestClient) with the tiny model; "no work queued" is read
from the batcher's own counters, and the tokenizer's cost from the lengths handed to BPE.
"""

from __future__ import annotations

import base64
import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

import clip_embeddings as ce  # noqa: E402
import clip_embeddings.core.tokenizer as tokenizer_module  # noqa: E402
from clip_embeddings.apps.server import ServeLimits, create_app  # noqa: E402
from clip_embeddings.tasks.zeroshot import ZeroShotClassifier  # noqa: E402

# A template is literal text (any character but a brace, or a doubled brace) around exactly one
# bare "{}": written from the format-string grammar, independently of string.Formatter.
_LITERAL = r"(?:[^{}]|\{\{|\}\})*"
VALID_TEMPLATE = re.compile(_LITERAL + r"\{\}" + _LITERAL, re.DOTALL)


@pytest.fixture(scope="module")
def app(tiny_model_path):
    return create_app(ce.ClipEF(tiny_model_path, device="cpu", cache=False), None, ServeLimits(request_timeout=60))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture(scope="module")
def image64(sample_images) -> dict:
    return {"base64": base64.b64encode(sample_images[0].read_bytes()).decode()}


def jobs(app) -> int:
    batcher = app.state.service.batcher
    return batcher.stats.jobs + batcher.depth


def refused(client, app, path: str, body: dict, status: int, *words: str) -> str:
    """POST ``body``; assert the status, that the reason names ``words``, and that nothing was queued."""
    before = jobs(app)
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail
    assert jobs(app) == before, "a refused request queued work for the model"
    return detail


# --- templates ----------------------------------------------------------------------------------

@pytest.mark.parametrize("template, why", [
    ("{{}}{:>40000000}", "format spec"),        # the high-severity probe: 200 bytes asking for 40 MB
    ("{} {}", "exactly one"),
    ("{0.__class__}", "field"),
    ("{__class__}", "field"),
    ("{!r}", "conversion"),
    ("{:{}}", "format spec"),
    ("{{}}", "exactly one"),                      # an escaped brace pair is text, not a placeholder
    ("a photo of {", "not a valid template"),
    ("}{}", "not a valid template"),
])
def test_templates_that_are_not_one_bare_placeholder_are_refused(client, app, image64, template, why):
    detail = refused(client, app, "/classify", {"labels": ["a", "b"], "templates": ["{}", template], "images": [image64]},
                     400, "templates[1]", why)
    assert len(detail) < 400


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(template=st.text(alphabet="{}:>!r0.a_ x", max_size=12))
def test_a_template_is_accepted_exactly_when_it_is_text_around_one_placeholder(tiny_model_path, template):
    ef = ce.ClipEF(tiny_model_path, device="cpu", cache=False)
    if VALID_TEMPLATE.fullmatch(template):
        classifier = ZeroShotClassifier(ef, ["cat", "dog"], [template])
        assert classifier.prompts("cat") == [template.format("cat")]
    else:
        with pytest.raises(ValueError, match="template"):
            ZeroShotClassifier(ef, ["cat", "dog"], [template])


def test_a_valid_template_fills_like_format(tiny_model_path):
    ef = ce.ClipEF(tiny_model_path, device="cpu", cache=False)
    classifier = ZeroShotClassifier(ef, ["x"], ["{{literal}} a {}.", "{}"])
    assert classifier.prompts("cat") == ["{literal} a cat.", "cat"]


# --- sizes and counts ---------------------------------------------------------------------------

def test_prompt_counts_and_lengths_are_bounded(client, app, image64):
    limits = app.state.service.limits
    labels = [f"l{i}" for i in range(limits.max_items)]
    many = [f"{i} {{}}" for i in range(limits.max_templates + 1)]
    refused(client, app, "/classify", {"labels": ["a", "b"], "templates": many, "images": [image64]},
            413, "templates", str(limits.max_templates))
    per_label = limits.max_prompts // len(labels) + 1
    refused(client, app, "/classify", {"labels": labels, "templates": [f"{i} {{}}" for i in range(per_label)],
                                       "images": [image64]}, 413, "labels x templates", str(limits.max_prompts))
    long_label = "x" * (limits.max_prompt_chars + 1)
    refused(client, app, "/classify", {"labels": ["a", long_label], "images": [image64]},
            413, "labels[1]", f"{limits.max_prompt_chars:,}")
    long_template = "y" * (limits.max_prompt_chars - 5) + "{}"
    refused(client, app, "/classify", {"labels": ["a", "a long label"], "templates": [long_template], "images": [image64]},
            413, "templates[0]", "labels[1]", f"{limits.max_prompt_chars:,}")


def test_url_count_is_bounded(client, app):
    limits = app.state.service.limits
    urls = [{"url": f"http://192.0.2.1/{i}.jpg"} for i in range(limits.max_urls + 1)]
    refused(client, app, "/embed", {"images": urls}, 413, "URL", str(limits.max_urls))
    refused(client, app, "/classify", {"labels": ["a", "b"], "images": urls}, 413, "URL", str(limits.max_urls))


def test_the_documented_budget_is_what_the_server_enforces():
    docs = (ce.__file__.rsplit("/clip_embeddings/", 1)[0] + "/docs/serving.md")
    text = open(docs, encoding="utf-8").read()
    limits = ServeLimits()
    for flag, value in (("--max-templates", limits.max_templates), ("--max-prompts", limits.max_prompts),
                        ("--max-prompt-chars", limits.max_prompt_chars), ("--max-urls", limits.max_urls)):
        assert re.search(re.escape(flag) + r"` \| " + f"{value:,}", text), flag


def test_a_classify_within_the_budget_still_works(client, image64):
    answer = client.post("/classify", json={"labels": ["a cat", "a dog"], "templates": ["{{x}} {}"], "images": [image64]})
    assert answer.status_code == 200, answer.text
    assert sorted(answer.json()["results"][0]["labels"]) == ["a cat", "a dog"]


# --- text length: the tokenizer reads only what the model reads ----------------------------------

@pytest.fixture
def bpe_lengths(monkeypatch) -> list[int]:
    """Record the length of every word handed to BPE (the tokenizer's expensive step)."""
    lengths: list[int] = []
    real = tokenizer_module._merge

    def recording(chars, ranks):
        lengths.append(len(chars))
        return real(chars, ranks)

    monkeypatch.setattr(tokenizer_module, "_merge", recording)
    tokenizer_module.get_tokenizer()._word_ids.cache_clear()
    return lengths


def test_a_two_megabyte_word_costs_bpe_only_what_the_context_reads(client, app, bpe_lengths):
    # 2 MB in one word used to hold the model thread 9-20 s: BPE over every character.
    word = "".join(string.ascii_lowercase[(i * 7919) % 26] for i in range(2_000_000))
    response = client.post("/embed", json={"texts": [word, "a cat"]})
    assert response.status_code == 200, response.text
    assert max(bpe_lengths) <= tokenizer_module.get_tokenizer().max_word_chars(75), max(bpe_lengths)


def test_truncating_a_text_before_bpe_keeps_the_ids_the_model_reads(bpe_lengths):
    tok = tokenizer_module.get_tokenizer()
    text = " ".join(["photograph"] * 5) + " " + "Zq" * 40_000 + " tail"
    full = tok.encode(text)  # no limit: every character through BPE
    assert tok.encode(text, max_ids=75)[:75] == full[:75]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzé東京😀-'"), min_size=1, max_size=40),
       st.integers(2_000, 6_000), st.integers(1, 75))
def test_a_long_word_cut_before_bpe_gives_the_same_first_ids(seed_text, length, max_ids):
    word = (seed_text * (length // len(seed_text) + 1))[:length]
    tok = tokenizer_module.get_tokenizer()
    assert tok.encode(word, max_ids=max_ids)[:max_ids] == tok.encode(word)[:max_ids]


def test_a_long_label_is_split_into_tokens_once_for_all_its_templates(bpe_lengths, tiny_model_path):
    # 64 labels of 990 letters x 8 templates held the model thread 19 s: each prompt re-ran BPE on its label.
    ef = ce.ClipEF(tiny_model_path, device="cpu", cache=False)
    tokenizer_module.get_tokenizer()._long_word_ids.cache_clear()
    labels = [f"label{chr(97 + i)}" + "ab" * 400 for i in range(4)]
    ZeroShotClassifier(ef, labels, [f"{i} {{}}" for i in range(8)]).prototypes  # noqa: B018
    assert sum(n > 500 for n in bpe_lengths) == len(labels)
