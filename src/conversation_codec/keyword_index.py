"""The blind keyword index's values: grams, keyed tokens and posting lists (FORMAT.md §17).

No I/O and no file layout here (``storage/file/kwi.py`` stores segments; ``indexing``
keeps the sidecar in step with the log). What is indexed is decided by the one rule that
makes the index exact for the scan's substring matching:

* A message's text is its searchable text (``search.searchable_text``) joined by newlines
  and case-folded, exactly as ``Query.matches`` folds it. Its **grams** are the distinct
  character trigrams inside each maximal run of word characters (``\\w+``) of that text.
* A query term (a word or a quoted phrase, case-folded as well, even for a case-sensitive
  query, since ``str.casefold`` maps each character on its own) that occurs in the text
  has every trigram of its own ``\\w+`` runs among the text's grams: a run of word
  characters inside the term lies inside one run of the text. So the messages holding
  every gram of a query are a **superset** of the matches; the scan's own matcher then
  checks each candidate. A query with no run of 3 word characters has no grams: it is
  answered by the scan, as a regex query is.

Grams are mapped to **tokens** (``HMAC-SHA256(token_key, UTF-8 gram)``, first
``TOKEN_BYTES``); a token's posting list holds the **blocks** (``seq >> BLOCK_SHIFT``) of
the messages with that gram. Blocks, not seqs, keep the index near a fifth of the log:
a block's messages share most of their grams. A candidate block costs ``BLOCK`` decryptions.
"""

from __future__ import annotations

import hmac
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from .format.varint import encode_varint
from .search import searchable_text

__all__ = [
    "BLOCK",
    "BLOCK_SHIFT",
    "TOKEN_BYTES",
    "PendingIndex",
    "Postings",
    "Tokenizer",
    "block_entries",
    "encode_blocks",
    "message_grams",
    "message_words",
    "query_grams",
]

BLOCK_SHIFT = 4  # FORMAT.md §17.1: a posting names the block seq >> 4
BLOCK = 1 << BLOCK_SHIFT  # messages per block
TOKEN_BYTES = 4  # a token's stored length (why 4: FORMAT.md §17.2)
GRAM = 3  # characters per gram
# The maximal runs of word characters that hold a gram: at a run's first character the
# greedy match takes the whole run, and a run shorter than GRAM fails at each of its
# characters, so findall yields exactly the runs of GRAM or more. (A lookahead for every
# trigram, ``(?=(\w{3}))``, was 4x slower: a regex step per character of the text.)
_WORDS = re.compile(rf"\w{{{GRAM},}}")
_CACHE_MAX = 1 << 18  # grams whose token is remembered (memory only)
_WORD_CACHE_MAX = 1 << 14  # words whose tokens are remembered (memory only: ~5 MB)
_WORD_CACHE_LEN = 16  # longer words (ids, hashes: rarely repeated) are not remembered


def _word_grams(word: str) -> set[str]:
    return {word[i : i + GRAM] for i in range(len(word) - GRAM + 1)}


def text_grams(folded: str) -> set[str]:
    """Return the trigrams inside the word-character runs of ``folded`` (already folded)."""
    grams: set[str] = set()
    for word in set(_WORDS.findall(folded)):
        grams |= _word_grams(word)
    return grams


def message_words(message: Mapping[str, Any]) -> list[str]:
    """Return the runs of ``GRAM`` or more word characters of a stored message's folded
    searchable text: its grams are theirs (``text_grams``)."""
    return _WORDS.findall("\n".join(searchable_text(dict(message))).casefold())


def message_grams(message: Mapping[str, Any]) -> set[str]:
    """Return the grams of a stored message's searchable text (module docstring)."""
    return text_grams("\n".join(searchable_text(dict(message))).casefold())


def query_grams(terms: Iterable[str] | None) -> set[str] | None:
    """Return the grams every match must hold, or None when the index cannot help (a
    regex, or no term with a run of ``GRAM`` word characters): the scan answers those."""
    if terms is None:
        return None
    grams: set[str] = set()
    for term in terms:
        grams |= text_grams(term.casefold())
    return grams or None


class Tokenizer:
    """Map grams to keyed tokens under one log's ``token_key`` (FORMAT.md §17.2).

    Tokens are remembered by gram and, for short words, by word (a word's tokens are its
    grams'): most words of a conversation repeat, so an append usually costs a dictionary
    look-up per distinct word, and an HMAC only per gram never seen before.
    """

    __slots__ = ("_cache", "_key", "_words")

    def __init__(self, token_key: bytes) -> None:
        self._key = token_key
        self._cache: dict[str, bytes] = {}  # grams stay in memory, never reach a file
        self._words = _WordTokens(self.token)

    def token(self, gram: str) -> bytes:
        found = self._cache.get(gram)
        if found is None:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            found = hmac.digest(self._key, gram.encode("utf-8"), "sha256")[:TOKEN_BYTES]
            self._cache[gram] = found
        return found

    def tokens(self, words: Iterable[str]) -> set[bytes]:
        """Return the tokens of every gram of ``words`` (runs of word characters)."""
        known = self._words
        if len(known) >= _WORD_CACHE_MAX:
            known.clear()
        return set().union(*map(known.__getitem__, words))

    def __repr__(self) -> str:  # never the key
        return "<Tokenizer>"


class _WordTokens(dict[str, frozenset[bytes]]):
    """word -> the tokens of its grams, computed on a miss (a look-up that hits stays in C)."""

    __slots__ = ("_token",)

    def __init__(self, token: Callable[[str], bytes]) -> None:
        super().__init__()
        self._token = token

    def __missing__(self, word: str) -> frozenset[bytes]:
        found = frozenset(map(self._token, _word_grams(word)))
        if len(word) <= _WORD_CACHE_LEN:
            self[word] = found
        return found

    def __repr__(self) -> str:  # never a word
        return f"<{len(self)} words>"


def _varints(data: bytes | bytearray, first: int) -> Iterator[int]:
    """Yield ``first`` and then the running sums of the varint deltas in ``data``."""
    value = first
    yield value
    shift = delta = 0
    for byte in data:
        delta |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            continue
        value += delta
        yield value
        shift = delta = 0


class Postings:
    """token -> the blocks holding it: ``[first, last, deltas]`` per token, where
    ``deltas`` are the varint gaps after ``first`` (FORMAT.md §17.3). Appending a later
    segment concatenates bytes, so merging never decodes a list."""

    __slots__ = ("lists",)

    def __init__(self) -> None:
        self.lists: dict[bytes, list[Any]] = {}

    def add(
        self, token: bytes, first: int, last: int, deltas: bytes | bytearray | memoryview
    ) -> bool:
        """Append one token's blocks (all >= the ones it holds); False if they are not."""
        entry = self.lists.get(token)
        if entry is None:
            self.lists[token] = [first, last, bytearray(deltas)]
            return True
        if first < entry[1]:
            return False
        if first > entry[1]:
            entry[2] += encode_varint(first - entry[1])
        entry[2] += deltas
        entry[1] = last
        return True

    def add_blocks(self, blocks: Mapping[bytes, list[int]]) -> bool:
        """Append the blocks of a batch of messages (token -> ascending distinct blocks)."""
        ok = True
        lists = self.lists
        for token, found in blocks.items():
            entry = lists.get(token)
            if entry is None:
                lists[token] = [found[0], found[-1], bytearray(_gaps(found))]
                continue
            if found[0] < entry[1]:
                ok = False
                continue
            if found[0] > entry[1]:
                entry[2] += _varint(found[0] - entry[1])
            if len(found) > 1:
                entry[2] += _gaps(found)
            entry[1] = found[-1]
        return ok

    def add_tokens(self, tokens: Iterable[bytes], block: int) -> None:
        """Append ``block`` (>= every block held) to each token's list (again: no change)."""
        lists = self.lists
        for token in tokens:
            entry = lists.get(token)
            if entry is None:
                lists[token] = [block, block, bytearray()]
            elif entry[1] != block:
                entry[2] += _varint(block - entry[1])
                entry[1] = block

    def blocks(self, token: bytes) -> list[int]:
        entry = self.lists.get(token)
        return [] if entry is None else list(_varints(entry[2], entry[0]))

    def drop_from(self, block: int) -> None:
        """Forget every block from ``block`` on (a pop, FORMAT.md §17.5)."""
        for token in [t for t, e in self.lists.items() if e[1] >= block]:
            kept = [b for b in self.blocks(token) if b < block]
            del self.lists[token]
            if kept:
                self.add_blocks({token: kept})

    def candidates(self, tokens: Iterable[bytes]) -> list[int]:
        """Return the blocks holding every token, ascending (shortest lists first)."""
        entries = []
        for token in set(tokens):
            entry = self.lists.get(token)
            if entry is None:
                return []
            entries.append((len(entry[2]), token))
        entries.sort()
        found: set[int] | None = None
        for _, token in entries:
            blocks = self.blocks(token)
            found = set(blocks) if found is None else found.intersection(blocks)
            if not found:
                return []
        return sorted(found or ())

    def encode(self) -> Iterator[bytes]:
        """Yield the entries of a segment body (FORMAT.md §17.3), tokens in order."""
        for token in sorted(self.lists):
            first, last, deltas = self.lists[token]
            yield token + _varint(first) + _varint(last) + _varint(len(deltas))
            yield bytes(deltas)

    def __len__(self) -> int:
        return len(self.lists)


def encode_blocks(blocks: Mapping[bytes, list[int]]) -> Iterator[bytes]:
    """Yield the entries of a segment body for ``token -> ascending blocks`` (the same
    bytes as ``Postings.encode`` of those lists; one append's segment, built fast)."""
    for token in sorted(blocks):
        found = blocks[token]
        if len(found) == 1:
            one = _varint(found[0])
            yield token + one + one + b"\x00"
        else:
            gaps = _gaps(found)
            yield token + _varint(found[0]) + _varint(found[-1]) + _varint(len(gaps)) + gaps


class PendingIndex:
    """The messages ``[lo, hi)`` past ``P.kwi``'s last segment, which a catch-up indexes
    (FORMAT.md §17.5): the words of each block, tokenized once per block when they are
    written (``tokens``) or merged (``fold``), not once per message; a block's messages
    share most words. Messages are added in seq order."""

    __slots__ = ("_folded", "_tokens", "_words", "hi", "lo")

    def __init__(self, lo: int = 0) -> None:
        self.lo = self.hi = lo
        self._folded = lo  # the messages before it are in the postings fold() was given
        self._words: dict[int, set[str]] = {}  # block -> its words
        self._tokens: dict[int, tuple[int, set[bytes]]] = {}  # block -> (words seen, tokens)

    def __bool__(self) -> bool:
        return self.hi > self.lo

    def add(self, seq: int, message: Mapping[str, Any]) -> None:
        block = seq >> BLOCK_SHIFT
        words = self._words.get(block)
        if words is None:
            self._words[block] = words = set()
        words.update(message_words(message))
        self.hi = seq + 1

    def tokens(self, tokenizer: Tokenizer) -> list[tuple[int, set[bytes]]]:
        """Return ``(block, its tokens)`` for every block, ascending."""
        out = []
        for block, words in sorted(self._words.items()):
            done = self._tokens.get(block)
            if done is None or done[0] != len(words):
                done = self._tokens[block] = (len(words), tokenizer.tokens(words))
            out.append((block, done[1]))
        return out

    def unfolded(self, blocks: list[tuple[int, set[bytes]]]) -> list[tuple[int, set[bytes]]]:
        """Those of ``blocks`` (``tokens()``) that ``fold`` has not added in full, which
        may follow what it added (a block folded in part is given again: no change)."""
        if self._folded == self.lo:
            return blocks
        first = self._folded >> BLOCK_SHIFT
        return [(block, tokens) for block, tokens in blocks if block >= first]

    def fold(self, postings: Postings, tokenizer: Tokenizer) -> None:
        """Add the messages not folded yet to ``postings`` (which holds every earlier one)."""
        if self._folded < self.hi:
            first = self._folded >> BLOCK_SHIFT
            for block, tokens in self.tokens(tokenizer):
                if block >= first:  # a block folded in part is added again: no change
                    postings.add_tokens(tokens, block)
            self._folded = self.hi


def block_entries(blocks: list[tuple[int, set[bytes]]]) -> list[bytes]:
    """Return the entries of a segment body (the bytes of ``encode_blocks``) for
    ``(block, tokens)`` pairs in ascending block order.

    An append's segment spans two or three blocks: the tokens are split by the blocks
    holding them with set operations (at most 2^k - 1 groups for k blocks) and each group
    shares one encoded tail: the one Python loop over tokens makes the entries' bytes.
    """
    if len(blocks) > 4:  # a catch-up or a batch: the groups could number in the tokens
        lists: dict[bytes, list[int]] = {}
        for block, tokens in blocks:
            for token in tokens:
                found = lists.get(token)
                if found is None:
                    lists[token] = [block]
                else:
                    found.append(block)
        return list(encode_blocks(lists))
    groups: dict[tuple[int, ...], set[bytes]] = {}
    held: set[bytes] = set()
    for block, tokens in blocks:
        split: dict[tuple[int, ...], set[bytes]] = {}
        for key, members in groups.items():
            both = members & tokens
            if both:
                longer = (*key, block)
                split[longer] = both
                members = members - both
            if members:
                split[key] = members
        fresh = tokens - held
        if fresh:
            split[(block,)] = fresh
        held |= tokens
        groups = split
    entries: list[bytes] = []
    for key, members in groups.items():
        gaps = _gaps(list(key))
        tail = _varint(key[0]) + _varint(key[-1]) + _varint(len(gaps)) + gaps
        entries += [token + tail for token in members]
    entries.sort()  # tokens are of one length and each in one group: sorted by token
    return entries


def _varint(value: int) -> bytes:
    if value < 128:
        return _SMALL[value]
    if value < 16384:
        return bytes((value & 0x7F | 0x80, value >> 7))
    return encode_varint(value)


def _gaps(ordered: list[int]) -> bytes:
    return b"".join(_varint(b - a) for a, b in itertools.pairwise(ordered))


_SMALL = [bytes((i,)) for i in range(128)]
