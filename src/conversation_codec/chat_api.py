"""ChatFormats: a conversation as the message lists model APIs take.

A mixin of ``ConversationCodec`` (and of anything else with ``load()`` and ``tail(n)``):
the newest ``max_context`` messages, read through the index, widened backwards so that no
tool result is cut from its call (``chat_formats.context_window``), in OpenAI's, Ollama's
or Anthropic's shape.
"""

from __future__ import annotations

from typing import Any

from .chat_formats import (
    context_window,
    to_anthropic_messages,
    to_ollama_messages,
    to_openai_messages,
)

__all__ = ["ChatFormats"]

Message = dict[str, Any]


class ChatFormats:
    """``to_openai_messages``, ``to_ollama_messages`` and ``to_anthropic_messages``."""

    def load(self) -> list[Message] | None:
        raise NotImplementedError

    def tail(self, n: int) -> list[Message]:
        raise NotImplementedError

    def _context(self, max_context: int | None) -> list[Message]:
        if max_context is None:
            return self.load() or []
        return context_window(self.tail, max_context)  # widened: tool pairs stay whole

    def to_openai_messages(
        self, system_prompt: str | None = None, max_context: int | None = None
    ) -> list[Message]:
        """The newest ``max_context`` messages (read through the index), as an OpenAI
        ``messages`` list, with ``system_prompt`` first. The window is widened backwards so
        that no tool result is cut from its call (``chat_formats.context_window``)."""
        return to_openai_messages(self._context(max_context), system_prompt)

    def to_ollama_messages(
        self, system_prompt: str | None = None, max_context: int | None = None
    ) -> list[Message]:
        """Like ``to_openai_messages`` in Ollama's chat format (tool arguments as objects)."""
        return to_ollama_messages(self._context(max_context), system_prompt)

    def to_anthropic_messages(
        self, max_context: int | None = None
    ) -> tuple[str | None, list[Message]]:
        """``(system, messages)`` for Anthropic's Messages API: content blocks, tool calls
        as ``tool_use`` and tool results as ``tool_result`` blocks."""
        return to_anthropic_messages(self._context(max_context))
