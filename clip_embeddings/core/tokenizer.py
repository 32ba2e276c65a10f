"""CLIP's text tokenizer: byte-level BPE over the 49,152-merge vocabulary CLIP was trained with.

A text model only understands the exact ids it saw in training, so this module reproduces
openai/CLIP's ``simple_tokenizer`` and ``clip.tokenize`` id for id: the same ftfy/HTML cleaning,
the same word-splitting regex and the same merge order. It adds a shared lazily built instance,
a bounded word cache and :func:`token_windows` for embedding texts longer than one context.
"""

from __future__ import annotations

import gzip
import heapq
import html
import threading
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources

import ftfy
import regex
import torch

from clip_embeddings.errors import TextTooLongError

__all__ = ["Tokenizer", "get_tokenizer", "pad_tokens", "prefix_worth_sharing", "shared_prefix", "tokenize", "token_windows"]

_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_NUM_MERGES = 49152 - 256 - 2  # the released vocabulary is cut to 49,152 entries before specials
_SOT, _EOT = "<|startoftext|>", "<|endoftext|>"
# The original pattern, kept verbatim: IGNORECASE and the specials alternative both change ids.
_WORD = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_CACHED_WORD_CHARS = 64  # longer words are rare and would let one hostile text fill the cache with megabytes
# ...but one long label written into every prompt template is the same long word again and again:
# a small cache of its own, bounded in entries and word length (256 x 4 KB at most).
_LONG_WORD_CACHE = 256
_LONG_WORD_CHARS = 4096
# With ``max_ids``, a text is read only as far as the model can reach: a word is cut before BPE
# once it surely holds enough ids (no token spans more than the vocabulary's longest entry), with
# slack so the cut cannot change the ids kept, and the raw text is cut at a generous number of
# characters per id (cleaning shrinks runs of whitespace and HTML entities, nothing else).
_WORD_CUT_SLACK = 256
_RAW_CHARS_PER_ID = 256
_WHITESPACE = regex.compile(r"\s+")  # regex as the original: re's \s adds \x1c-\x1f (ftfy drops them)


def _byte_alphabet() -> dict[int, str]:
    """Map every byte to a printable character so merges never see whitespace or controls."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def _clean(text: str) -> str:
    text = html.unescape(html.unescape(ftfy.fix_text(text)))  # twice: captions were often double-escaped
    return _WHITESPACE.sub(" ", text.strip()).strip().lower()


def _pair(line: str) -> tuple[str, str]:
    """One line of the merges file: the two symbols that merge, e.g. ``"t h"``."""
    left, right = line.split()
    return left, right


def _merge(chars: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges to one word's characters, in O(n log n) rather than the original's O(n^2).

    openai/CLIP repeatedly finds the lowest-ranked adjacent pair and rebuilds the whole word
    merging every occurrence of it, left to right: quadratic in the word length, minutes for one
    100 KB word. Here the symbols form a linked list and candidate pairs sit in a heap ordered by
    (rank, position), so each merge costs a pop and two pushes. The result is the original's,
    merge for merge: a pass over one rank takes its occurrences left to right (``"aaa"`` gives
    ``"aa" + "a"``), an occurrence already consumed by its left neighbour is stale and skipped,
    and pairs the pass creates join the heap only when the pass ends, as the original only sees
    them on its next scan.
    """
    symbols = [*chars[:-1], chars[-1] + "</w>"]
    n = len(symbols)
    nxt = list(range(1, n + 1))  # n marks the end
    prv = list(range(-1, n - 1))
    alive = [True] * n
    # Neighbouring pairs: symbols[1:] is one shorter by design, so not strict.
    heap = [(ranks[pair], i) for i, pair in enumerate(zip(symbols, symbols[1:], strict=False)) if pair in ranks]
    heapq.heapify(heap)
    while heap:
        rank = heap[0][0]
        fresh: list[tuple[int, int]] = []
        while heap and heap[0][0] == rank:
            _, i = heapq.heappop(heap)
            j = nxt[i] if alive[i] else n
            if j == n or ranks.get((symbols[i], symbols[j])) != rank:
                continue  # stale: one side was merged into something else since it was pushed
            symbols[i] += symbols[j]
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[i] < n:
                prv[nxt[i]] = i
            for left in (prv[i], i):
                if left >= 0 and nxt[left] < n:
                    new_rank = ranks.get((symbols[left], symbols[nxt[left]]))
                    if new_rank is not None:
                        fresh.append((new_rank, left))
        for entry in fresh:
            heapq.heappush(heap, entry)
    return [s for s, keep in zip(symbols, alive, strict=True) if keep]


class Tokenizer:
    """Byte-level BPE tokenizer giving the same ids as openai/CLIP's ``SimpleTokenizer``.

    Example:
        >>> tok = Tokenizer()
        >>> tok.encode("A photo of a cat")
        [320, 1125, 539, 320, 2368]
        >>> tok.decode([320, 1125, 539, 320, 2368])
        'a photo of a cat'
    """

    def __init__(self, cache_size: int = 65536) -> None:
        self._byte_to_char = _byte_alphabet()
        self._char_to_byte = {c: b for b, c in self._byte_to_char.items()}
        lines = gzip.decompress(resources.files("clip_embeddings").joinpath("data").joinpath(_VOCAB_FILE).read_bytes())
        merges = [_pair(line) for line in lines.decode("utf-8").split("\n")[1 : _NUM_MERGES + 1]]
        symbols = list(self._byte_to_char.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [_SOT, _EOT]
        self._encoder = {token: i for i, token in enumerate(vocab)}
        self._decoder = vocab
        self._ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._longest_token = max(len(token.removesuffix("</w>")) for token in vocab[:-2])
        # Per instance rather than on the class, so the cache dies with its tokenizer.
        self._word_ids = lru_cache(maxsize=cache_size)(self._bpe)
        self._long_word_ids = lru_cache(maxsize=_LONG_WORD_CACHE)(self._bpe)

    @property
    def sot_token(self) -> int:
        """Id of ``<|startoftext|>``. Example: ``Tokenizer().sot_token`` is ``49406``."""
        return self._encoder[_SOT]

    @property
    def eot_token(self) -> int:
        """Id of ``<|endoftext|>``. Example: ``Tokenizer().eot_token`` is ``49407``."""
        return self._encoder[_EOT]

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included. Example: ``Tokenizer().vocab_size`` is ``49408``."""
        return len(self._decoder)

    def _bpe(self, word: str) -> tuple[int, ...]:
        if word in (_SOT, _EOT):  # the original lets a literal marker in the text through as itself
            return (self._encoder[word],)
        chars = "".join(self._byte_to_char[b] for b in word.encode("utf-8"))
        return tuple(self._encoder[p] for p in _merge(chars, self._ranks))

    def max_word_chars(self, max_ids: int) -> int:
        """The most characters of one word that :meth:`encode` hands to BPE when ``max_ids`` are wanted.

        Example:
            >>> Tokenizer().max_word_chars(75)
            2656
        """
        return max_ids * self._longest_token + _WORD_CUT_SLACK

    def encode(self, text: str, max_ids: int | None = None) -> list[int]:
        """Clean ``text`` and return its BPE ids, without start/end tokens.

        ``max_ids`` stops once that many ids are known (the result may be a few ids longer, up to
        the end of the last word): the first ids never depend on later words, so truncating
        callers need not tokenize the rest of a long text. It also bounds the work on one long
        text: only the first ``256 * max_ids`` characters are read, and a word is cut to
        :meth:`max_word_chars` before BPE (enough for ``max_ids`` ids with slack, so the first
        ``max_ids`` ids are the uncut word's). A 2 MB word costs milliseconds, not 20 s of BPE.

        Example:
            >>> Tokenizer().encode("&lt;b&gt; 42")
            [283, 321, 285, 275, 273]
            >>> Tokenizer().encode("a photo of a cat", max_ids=2)
            [320, 1125]
        """
        ids: list[int] = []
        if max_ids is not None:
            text = text[: max_ids * _RAW_CHARS_PER_ID]
        for match in _WORD.finditer(_clean(text)):
            word = match.group()
            if max_ids is not None:
                word = word[: self.max_word_chars(max(max_ids - len(ids), 1))]
            if len(word) <= _CACHED_WORD_CHARS:
                ids += self._word_ids(word)
            else:
                ids += self._long_word_ids(word) if len(word) <= _LONG_WORD_CHARS else self._bpe(word)
            if max_ids is not None and len(ids) >= max_ids:
                break
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Turn ids back into (cleaned, lower-case) text; word ends become single spaces.

        Example:
            >>> Tokenizer().decode(Tokenizer().encode("Hello,  World!"))
            'hello , world !'
        """
        chars = "".join(self._decoder[int(i)] for i in ids)
        text = bytes(self._char_to_byte[c] for c in chars).decode("utf-8", errors="replace")
        return text.replace("</w>", " ").removesuffix(" ")  # the original leaves a trailing space


_shared: Tokenizer | None = None
_shared_lock = threading.Lock()


def get_tokenizer() -> Tokenizer:
    """The process-wide :class:`Tokenizer`, built on first use (once, even under threads).

    Example:
        >>> get_tokenizer() is get_tokenizer()
        True
    """
    global _shared
    if _shared is None:
        with _shared_lock:
            if _shared is None:
                _shared = Tokenizer()
    return _shared


def pad_tokens(sequences: Sequence[Sequence[int]], context_length: int = 77) -> torch.Tensor:
    """Stack id sequences into a zero-padded ``[N, context_length]`` LongTensor.

    Example:
        >>> pad_tokens([[49406, 320, 49407]], context_length=5).tolist()
        [[49406, 320, 49407, 0, 0]]
    """
    result = torch.zeros(len(sequences), context_length, dtype=torch.long)
    for row, ids in enumerate(sequences):
        if len(ids) > context_length:
            raise ValueError(f"sequence {row} has {len(ids)} ids, more than {context_length}")
        result[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return result


def tokenize(texts: str | Sequence[str], context_length: int = 77, truncate: bool = False) -> torch.Tensor:
    """Tokenize one text or many into ``[N, context_length]`` ids, exactly as ``clip.tokenize``.

    Each row is ``SOT, ids..., EOT`` then zeros. A text too long raises
    :class:`~clip_embeddings.errors.TextTooLongError` unless ``truncate=True``, which keeps the
    first ``context_length`` ids and makes the last one EOT.

    Example:
        >>> tokenize("a cat", context_length=6).tolist()
        [[49406, 320, 2368, 49407, 0, 0]]
    """
    tok = get_tokenizer()
    texts = [texts] if isinstance(texts, str) else list(texts)
    # Truncating needs one id past the cut to know there is a cut; the rest is never tokenized.
    limit = context_length - 1 if truncate else None
    rows = [[tok.sot_token, *tok.encode(text, max_ids=limit), tok.eot_token] for text in texts]
    for text, ids in zip(texts, rows, strict=True):
        if len(ids) <= context_length:
            continue
        if not truncate:
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise TextTooLongError(
                f"text {shown!r} is {len(ids)} tokens long (start and end tokens included), more than "
                f"the context length {context_length}; pass truncate=True to keep only its beginning"
            )
        del ids[context_length:]
        ids[-1] = tok.eot_token
    return pad_tokens(rows, context_length)


def token_windows(text: str, context_length: int = 77, stride: int | None = None,
                  max_windows: int | None = None) -> list[list[int]]:
    """Split one text's ids into windows of at most ``context_length - 2`` ids, each within SOT/EOT.

    Windows start every ``stride`` ids (default: the window width, so they do not overlap) and the
    last one reaches the end of the text; an empty text gives the single window ``[SOT, EOT]``.
    ``max_windows`` keeps only the first windows (and tokenizes only as far as they reach), so
    one huge text costs a bounded number of forward passes.

    Example:
        >>> token_windows("one two three", context_length=4)
        [[49406, 637, 1237, 49407], [49406, 2097, 49407]]
        >>> token_windows("one two three", context_length=4, max_windows=1)
        [[49406, 637, 1237, 49407]]
    """
    width = context_length - 2
    stride = width if stride is None else stride
    if width < 1 or not 1 <= stride <= width:
        raise ValueError(f"need context_length >= 3 and 1 <= stride <= {width}, got {context_length}, {stride}")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be >= 1, got {max_windows}")
    tok = get_tokenizer()
    reach = None if max_windows is None else (max_windows - 1) * stride + width
    ids = tok.encode(text, max_ids=reach)[:reach]
    starts = range(0, max(len(ids) - width, 0) + stride, stride)[:max_windows]
    return [[tok.sot_token, *ids[start : start + width], tok.eot_token] for start in starts]


def shared_prefix(tokens: torch.Tensor, eot: torch.Tensor) -> int:
    """How many leading positions hold the same id in every row, stopping before any row's end.

    Example:
        >>> shared_prefix(torch.tensor([[9, 5, 7, 3], [9, 5, 8, 3]]), torch.tensor([3, 3]))
        2
    """
    if tokens.shape[0] < 2:  # one row: nothing to share
        return 0
    same = (tokens == tokens[:1]).all(dim=0).long().cumprod(dim=0)
    return min(int(same.sum()), int(eot.min()))


def prefix_worth_sharing(tokens: torch.Tensor, eot: torch.Tensor) -> int:
    """The :func:`shared_prefix` that pays to compute once, on one row, or 0: at least a quarter of the
    longest row (a prompt template's head; that row still reads every weight per layer, memory-bound).

    Example:
        >>> prefix_worth_sharing(torch.tensor([[9, 5, 7, 3], [9, 5, 8, 3]]), torch.tensor([3, 3]))
        2
    """
    shared = shared_prefix(tokens, eot)
    return shared if 4 * shared >= int(eot.max()) + 1 else 0
