"""``IndexBuilder``: the postings of messages seen in seq order (FORMAT.md §17.1), for a
rebuild, a rewrite, or an append to a keyword index (``indexing``)."""

from __future__ import annotations

from typing import Any

from .keyword_index import BLOCK_SHIFT, Postings, Tokenizer, message_grams

__all__ = ["IndexBuilder"]

Message = dict[str, Any]


class IndexBuilder:
    """Collect the postings of messages seen in seq order (a rebuild, a rewrite)."""

    def __init__(self, tokens: Tokenizer) -> None:
        self._tokens = tokens
        self._grams: dict[int, set[str]] = {}  # block -> its grams (a block's share most)

    def add(self, seq: int, message: Message) -> None:
        grams = message_grams(message)
        block = seq >> BLOCK_SHIFT
        found = self._grams.get(block)
        if found is None:
            self._grams[block] = grams
        else:
            found |= grams

    def postings(self) -> Postings:
        out = Postings()
        out.add_blocks(self.blocks())
        return out

    def blocks(self) -> dict[bytes, list[int]]:
        """token -> the ascending blocks holding it."""
        token = self._tokens.token
        blocks: dict[bytes, list[int]] = {}
        for block in sorted(self._grams):
            for gram in self._grams[block]:
                found = blocks.get(token(gram))
                if found is None:
                    blocks[token(gram)] = [block]
                elif found[-1] != block:  # two grams may share a token
                    found.append(block)
        return blocks
