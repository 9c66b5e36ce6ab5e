"""The keyword index's building and reading plans (``indexing``): ``IndexBuilder``, the
postings of messages seen in seq order (FORMAT.md §17.1), for a rebuild, a rewrite or an
append; ``candidate_ranges``, the records a search reads (§17.6), and ``joined``, those
ranges read as few (a database reads each with one query)."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from .keyword_index import BLOCK, BLOCK_SHIFT, Postings, Tokenizer, message_words

__all__ = ["IndexBuilder", "candidate_ranges", "joined"]

Message = dict[str, Any]


class IndexBuilder:
    """Collect the postings of messages seen in seq order (a rebuild, a rewrite, a pop's
    last block, an exact store's append): the words of each block, tokenized once per
    block (a block's messages share most words; ``Tokenizer.tokens``)."""

    def __init__(self, tokens: Tokenizer) -> None:
        self._tokens = tokens
        self._words: dict[int, set[str]] = {}  # block -> its words (a block's share most)

    def add(self, seq: int, message: Message) -> None:
        words = message_words(message)
        block = seq >> BLOCK_SHIFT
        found = self._words.get(block)
        if found is None:
            self._words[block] = set(words)
        else:
            found.update(words)

    def postings(self) -> Postings:
        out = Postings()
        for block in sorted(self._words):
            out.add_tokens(self._tokens.tokens(self._words[block]), block)
        return out

    def blocks(self) -> dict[bytes, list[int]]:
        """token -> the ascending blocks holding it."""
        blocks: dict[bytes, list[int]] = {}
        for block in sorted(self._words):
            for token in self._tokens.tokens(self._words[block]):  # each token once
                found = blocks.get(token)
                if found is None:
                    blocks[token] = [block]
                else:
                    found.append(block)
        return blocks


def candidate_ranges(
    blocks: list[int], covered: int, first: int, stop: int, *, newest_first: bool
) -> Iterator[range]:
    """Yield the seqs to read, in pieces of at most ``BLOCK``: the candidate ``blocks``
    (ascending) within the ``covered`` records, then every record from ``covered`` (not
    indexed yet), all clipped to ``[first, stop)``; newest first when asked."""
    lo_block = bisect.bisect_left(blocks, first >> BLOCK_SHIFT)
    hi_block = bisect.bisect_left(blocks, ((min(stop, covered) - 1) >> BLOCK_SHIFT) + 1)
    wanted = blocks[lo_block:hi_block]
    pieces: Iterable[range] = (
        range(max(b * BLOCK, first), min(b * BLOCK + BLOCK, covered, stop)) for b in wanted
    )
    tail = range(max(covered, first), stop, BLOCK)
    tails = (range(a, min(a + BLOCK, stop)) for a in tail)
    if newest_first:
        pieces = (
            range(max(b * BLOCK, first), min(b * BLOCK + BLOCK, covered, stop))
            for b in reversed(wanted)
        )
        tails = (range(a, min(a + BLOCK, stop)) for a in reversed(tail))
        yield from (r for r in itertools.chain(tails, pieces) if r)
        return
    yield from (r for r in itertools.chain(pieces, tails) if r)


def joined(ranges: list[range], *, newest_first: bool) -> list[range]:
    """Join the ranges that touch (in the order ``candidate_ranges`` gives them)."""
    out: list[range] = []
    for r in ranges:
        last = out[-1] if out else None
        if last is not None and not newest_first and last.stop == r.start:
            out[-1] = range(last.start, r.stop)
        elif last is not None and newest_first and r.stop == last.start:
            out[-1] = range(r.start, last.stop)
        else:
            out.append(r)
    return out
