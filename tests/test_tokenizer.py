"""Parity of clip_embeddings.core.tokenizer with openai/CLIP's tokenizer, id for id, on hard inputs."""

from __future__ import annotations

import random
import threading

import pytest
import torch

import clip_embeddings.core.tokenizer as tokmod
from clip_embeddings.errors import TextTooLongError
from clip_embeddings.core.tokenizer import Tokenizer, get_tokenizer, pad_tokens, token_windows, tokenize
from tests.reference import reference_tokenize, tokenizer_module

SOT, EOT = 49406, 49407

HARD = [
    "a photo of a cat",
    "A Photo Of A CAT",
    # accents, precomposed and combining (ftfy NFC-normalises), and case folds with side effects
    "café crème brûlée", "cafe\u0301", "niño año mañana", "ÅNGSTRÖM Straße", "İstanbul", "ǅemal", "Ⅻ ﬁne ﬂ",
    "Z\u0351\u0361a\u035c\u0328l\u0334g\u0334o\u0337",
    # other scripts
    "東京タワーの写真", "中文分词测试", "한국어 문장", "مرحبا بالعالم", "שלום עולם", "Привет, мир!", "γειά σου κόσμε",
    "हिन्दी पाठ", "ไทยภาษา",
    # emoji: single, skin tone, ZWJ family, flags, keycaps, variation selectors
    "😀", "👍🏽 nice", "👨‍👩‍👧‍👦", "🏳️‍🌈 pride", "🇫🇷🇯🇵", "1️⃣ #️⃣", "❤️❤", "cat🐱dog🐶",
    # HTML entities, single and double escaped, numeric, and unknown ones
    "fish &amp; chips", "&lt;b&gt;bold&lt;/b&gt;", "&amp;amp;", "&amp;lt;p&amp;gt;", "&#39;quoted&#39; &#x263A;",
    "&nbsp;&nbsp;spaced&nbsp;", "&notanentity; &", "AT&T", "&amp;amp;amp;",
    # mojibake ftfy repairs
    "cafÃ©", "doesnÃ¢â‚¬â„¢t", "âœ” done", "Ã¼ber", "The Mona Lisa doesnÃƒÂ¢Ã¢â€šÂ¬Ã¢â€žÂ¢t have eyebrows.",
    # contractions, including upper case and ones the pattern does not know
    "it's they're we've i'm you'll he'd don't", "IT'S THEY'RE WE'VE I'M YOU'LL HE'D DON'T", "y'all o'clock",
    "rock 'n' roll", "it\u2019s curly", "''s '''", "'s", "it'ſ",
    # numbers: every digit is its own token
    "1234567890", "3.14159", "1,000,000", "½ ² ٣ ४", "v2.0.1-beta", "2024-01-01T12:00:00Z",
    # whitespace
    "", " ", "   \t\n  ", "a\tb\nc\r\nd", "many     spaces   inside", "\u00a0nbsp\u00a0", "zero\u200bwidth",
    "ideo\u3000graphic", "a\x1cb\x1dc", "line\u2028sep", "\x00nul\x07bell",
    # punctuation, specials written in the text, long words, URLs, code
    "!!!???...", "--==**&&^^%%", "«quotes» “curly” ‘single’", "<|startoftext|>", "x<|endoftext|>y",
    "<|ENDOFTEXT|>", "<|end of text|>",
    "supercalifragilisticexpialidocious" * 3, "a" * 300, "ab" * 150,
    "https://example.com/path?query=1&amp;x=2#frag", "user@example.org",
    "def f(x):\n    return x**2  # square", "for (int i = 0; i < n; ++i) { a[i] = b[i]; }",
]


@pytest.fixture(scope="module")
def ref():
    return tokenizer_module().SimpleTokenizer()


@pytest.fixture(scope="module")
def ref_rows():
    # reference_tokenize builds a tokenizer per call (~0.5 s), so every hard text goes in one call.
    return dict(zip(HARD, reference_tokenize(HARD, truncate=True)))


@pytest.mark.parametrize("text", HARD)
def test_encode_and_tokenize_match_reference(text, ref, ref_rows):
    assert get_tokenizer().encode(text) == ref.encode(text)
    assert torch.equal(tokenize(text, truncate=True)[0], ref_rows[text])


@pytest.mark.parametrize("text", HARD)
def test_decode_matches_reference_without_trailing_space(text, ref):
    ids = ref.encode(text)
    assert get_tokenizer().decode(ids) == ref.decode(ids).removesuffix(" ")


def test_random_strings_match_reference(ref):
    alphabet = (
        list("abcxyzABCXYZ0189 \t\n.,;:!?'\"-_/()<>&#")
        + list("éñüßçøÅ") + ["e\u0301", "\u0308", "İ", "ﬁ"]
        + list("中文日本語한국") + list("مرحبا") + list("привет")
        + ["😀", "👍🏽", "👨‍👩‍👧", "🇩🇪", "\ufe0f", "\u200d"]
        + ["&amp;", "&lt;", "&gt;", "&amp;amp;", "&#39;", "'s", "'LL", "'re", "Ã©", "â€™", "\u00a0", "<|endoftext|>"]
    )
    rng = random.Random(1234)
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(300)]
    ours = get_tokenizer()
    assert [ours.encode(t) for t in texts] == [ref.encode(t) for t in texts]
    assert torch.equal(tokenize(texts, truncate=True), reference_tokenize(texts, truncate=True))


def test_special_ids_and_vocab_size():
    tok = get_tokenizer()
    assert (tok.sot_token, tok.eot_token, tok.vocab_size) == (SOT, EOT, 49408)
    assert tok.decode([SOT, 320, EOT]) == "<|startoftext|>a <|endoftext|>"


def test_digits_split_and_cleaning_effects():
    tok = get_tokenizer()
    assert len(tok.encode("1234567890")) == 10
    assert tok.encode("cafÃ©") == tok.encode("café")  # ftfy repaired the mojibake
    assert tok.encode("&amp;amp;") == tok.encode("&")  # unescaped twice
    assert tok.encode("  A\t\nB  ") == tok.encode("a b")
    assert tok.encode("") == [] and tok.encode(" \n\t ") == []


@pytest.mark.parametrize("text", ["a photo of a cat", "hello world", "the quick brown fox jumps over the lazy dog",
                                  "naïve café", "東京 タワー", "supercalifragilisticexpialidocious"])
def test_decode_round_trips_simple_lowercase_text(text):
    tok = get_tokenizer()
    assert tok.decode(tok.encode(text)) == text


def _text_with_content_tokens(n: int, ref) -> str:
    # Varied words (accent, digit, contraction, punctuation) up to n, then one-token "a"s to land on n.
    words = "the photo shows 3 dogs playing fetch near a río, under a blue sky; it's lovely".split()
    text, i = "", 0
    while len(ref.encode(f"{text} {words[i % len(words)]}")) <= n:
        text, i = f"{text} {words[i % len(words)]}".strip(), i + 1
    text += " a" * (n - len(ref.encode(text)))
    assert len(ref.encode(text)) == n
    return text


@pytest.mark.parametrize("total", [76, 77, 78, 500])
def test_context_length_boundaries(total, ref):
    text = _text_with_content_tokens(total - 2, ref)
    assert torch.equal(tokenize(text, truncate=True), reference_tokenize(text, truncate=True))
    if total <= 77:
        assert torch.equal(tokenize(text), reference_tokenize(text))
        assert tokenize(text)[0, total - 1] == EOT
        return
    with pytest.raises(RuntimeError):
        reference_tokenize(text)
    with pytest.raises(TextTooLongError, match=rf"is {total} tokens .*context length 77.*truncate=True") as info:
        tokenize(["short", text])
    assert isinstance(info.value, ValueError)
    assert text[:40] in str(info.value)
    truncated = tokenize(text, truncate=True)[0]
    assert truncated[-1] == EOT and truncated[:-1].tolist() == [SOT, *ref.encode(text)[:75]]


def test_long_text_is_shortened_in_the_error():
    text = "word " * 200
    with pytest.raises(TextTooLongError) as info:
        tokenize(text)
    message = str(info.value)
    assert "..." in message and text[:57] in message and text[:80] not in message and "202 tokens" in message


def test_tokenize_other_context_lengths_match_reference():
    texts = ["a cat", "a much longer sentence about a dog", ""]
    for length in (8, 16, 100):
        assert torch.equal(tokenize(texts, length, truncate=True), reference_tokenize(texts, length, truncate=True))


def test_tokenize_list_equals_one_by_one():
    texts = HARD[:20]
    batch = tokenize(texts, truncate=True)
    assert batch.shape == (20, 77) and batch.dtype == torch.long
    assert torch.equal(batch, torch.cat([tokenize(t, truncate=True) for t in texts]))
    assert tokenize([]).shape == (0, 77)


def test_pad_tokens():
    padded = pad_tokens([[SOT, EOT], [SOT, 1, 2, EOT]], context_length=5)
    assert padded.tolist() == [[SOT, EOT, 0, 0, 0], [SOT, 1, 2, EOT, 0]] and padded.dtype == torch.long
    with pytest.raises(ValueError):
        pad_tokens([[1, 2, 3]], context_length=2)


@pytest.mark.parametrize("text", ["", "a cat", " ".join(f"word{i}" for i in range(200)), "東京" * 100 + " 😀" * 50])
@pytest.mark.parametrize("context_length", [77, 10])
def test_token_windows_reconstruct_the_text(text, context_length):
    ids = get_tokenizer().encode(text)
    windows = token_windows(text, context_length)
    assert all(w[0] == SOT and w[-1] == EOT and 2 <= len(w) <= context_length for w in windows)
    assert [i for w in windows for i in w[1:-1]] == ids
    assert len(windows) == max(1, -(-len(ids) // (context_length - 2)))
    assert all(len(w) == context_length for w in windows[:-1])


def test_token_windows_with_overlap():
    text = " ".join(str(i) for i in range(10, 40))  # 60 single-digit tokens
    ids = get_tokenizer().encode(text)
    windows = token_windows(text, context_length=12, stride=4)
    assert [w[1:-1] for w in windows] == [ids[s : s + 10] for s in range(0, 53, 4)]
    assert windows[-1][-2] == ids[-1]
    assert token_windows("", 77) == [[SOT, EOT]]
    with pytest.raises(ValueError):
        token_windows(text, context_length=12, stride=11)
    with pytest.raises(ValueError):
        token_windows(text, context_length=2)


def test_word_cache_is_bounded_and_used():
    tok = Tokenizer(cache_size=4)
    tok.encode("alpha beta alpha beta alpha")
    info = tok._word_ids.cache_info()
    assert info.maxsize == 4 and info.hits == 3 and info.misses == 2
    tok.encode("one two three four five six")
    assert tok._word_ids.cache_info().currsize == 4


def test_shared_instance_is_built_once_across_threads(monkeypatch):
    built = []

    class Counting(Tokenizer):
        def __init__(self):
            built.append(self)
            super().__init__()

    monkeypatch.setattr(tokmod, "_shared", None)
    monkeypatch.setattr(tokmod, "Tokenizer", Counting)
    barrier = threading.Barrier(8)
    seen = []

    def grab():
        barrier.wait()
        seen.append(get_tokenizer())

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and len(seen) == 8 and all(s is built[0] for s in seen)


def _random_word(rng: random.Random, alphabet: str, length: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


@pytest.mark.parametrize("alphabet", ["abcdefghijklmnopqrstuvwxyz", "ab", "aeiou", "éñüßçøåæ", "東京タワー写真中文"])
def test_long_random_words_match_reference(alphabet, ref):
    # Long words are where a fast merge could drift from the original's pass-by-pass order:
    # runs of one letter ("aaaa"), few letters (many competing pairs), multi-byte characters.
    rng = random.Random(len(alphabet))
    words = [_random_word(rng, alphabet, n) for n in (50, 301, 1000, 2000)]
    words += [alphabet[0] * 777, (alphabet[:2] * 400)[:799]]
    tok = get_tokenizer()
    for word in words:
        assert tok.encode(word) == ref.encode(word), word[:40]
    text = " ".join(words)
    assert tok.encode(text) == ref.encode(text)


def test_one_long_word_is_linear_not_quadratic():
    # The original's merge is quadratic: 10,000 letters took 5.4 s and 100,000 about 190 s (35x).
    # A ratio of two sizes in one process, not a wall-clock bound: load slows both alike, so
    # ten times the letters must cost about ten times, never the hundred a quadratic merge costs.
    import time

    def fastest(word: str) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            Tokenizer(cache_size=0).encode(word)
            times.append(time.perf_counter() - start)
        return min(times)

    rng = random.Random(7)
    small, large = (_random_word(rng, "abcdefghijklmnopqrstuvwxyz", n) for n in (10_000, 100_000))
    growth = fastest(large) / fastest(small)
    assert growth < 35, f"10x the letters took {growth:.0f}x the time: the merge is not linear"
    ids = Tokenizer().encode(large)
    row = tokenize(large, truncate=True)
    assert len(ids) > 10_000 and row[0, :76].tolist() == [SOT, *ids[:75]] and row[0, 76] == EOT


def test_truncating_stops_after_the_context():
    # Truncating callers get the first ids without the rest being tokenized.
    tok = Tokenizer()
    text = "cat " * 10 + " ".join(f"w{i}x" for i in range(5000))
    assert tok.encode(text, max_ids=10) == tok.encode("cat " * 10)
    tok.encode(text, max_ids=76)
    assert tok._word_ids.cache_info().misses < 100  # 5,000 distinct words were never looked at


def test_long_words_stay_out_of_the_word_cache():
    tok = Tokenizer(cache_size=8)
    tok.encode("x" * 10_000 + " cat")
    assert tok._word_ids.cache_info().currsize == 1  # only "cat": a hostile text cannot fill it with megabytes
