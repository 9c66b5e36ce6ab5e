"""Operations on whole logs, built on ``ConversationCodec`` and the storage layer.

``verify`` (salvage), ``migrate`` and ``legacy`` (other tools' files), ``transfer`` (export
and import). Nothing below this package imports it, except the codec's thin wrappers over
``transfer`` and ``compact``, which import no codec in turn.
"""
