"""ConversationCodec: one conversation log, the class most users touch.

The codec validates and encodes messages (``encoding``), assigns seqs and timestamps and
seals records (``writing``), reads them back authenticated (``reading``), keeps ``save()``'s
rule (``saving``) and hands rewrites to ``maintenance.compact``. Where records live is a
``LogStorage`` (``storage``): a file (FORMAT.md), memory, or a database. Every public method
runs inside one transaction of the storage, so threads and processes sharing a log see each
other's writes and never tear a record. The class is assembled from ``core.CodecCore``
(opening, transactions, life cycle), ``maintenance.api.Maintenance`` (rewrites, checks,
export, import), ``chat_api.ChatFormats`` (model-API message lists) and
``waiting.LiveTail`` (``wait``); this module holds the everyday API: writes, reads, search.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime

from ._fsio import remove_flat_dir
from .chat_api import ChatFormats
from .core import MEMORY, CodecCore, Message, TimeInput, TimestampInput
from .encoding import encode_json
from .errors import LogReplacedError
from .keyword_search import indexed_search
from .maintenance.api import Maintenance
from .options import check_int
from .paths import blobs_path
from .reading import READ_BATCH, LogInfo
from .search import Hit, SearchQuery
from .search_progress import SearchProgress
from .waiting import LiveTail
from .writing import check_timestamp

__all__ = [
    "MEMORY",
    "CodecCore",
    "ConversationCodec",
    "LogInfo",
    "Message",
    "TimeInput",
    "TimestampInput",
]


class ConversationCodec(Maintenance, ChatFormats, LiveTail):
    """One conversation history stored as an append-only, optionally encrypted log.

    :param path: the log file (its sidecars are ``<path>.idx`` and ``<path>.lock``), or
        ``":memory:"`` for a log that lives as long as this object (users' tests).
    :param encryption_key: None for a plaintext (JSONL) log; a Fernet key (str or bytes);
        or a list of keys that all open the log; the first seals new logs and rewrites
        (``rotate_key``), while appends keep the key the log's header is under.
    :param redact_fn: applied to each message before it is written. It must be
        deterministic, so ``save()`` can tell kept messages from changed ones.
    :param durability: ``"fsync"`` (a returned call is on stable storage) or ``"flush"``
        (handed to the OS: survives a process crash, not a power loss).
    :param clock: seam returning microseconds since the epoch (UTC) for new records.
    :param lock_timeout: seconds to wait for another process's lock; None waits forever.
    :param io: the filesystem seam (LevelDB's ``Env``), a ``FileIO``: every write, sync,
        truncate, rename, link and unlink of the log, its index, lock file and blobs goes
        through it. Default: the operating system. For fault injection: pass a subclass
        that records calls or fails the Nth one (see :class:`CodecOptions`).
    :param password: instead of a key: a scrypt-derived key, salt and cost in the header.
    :param max_messages: reads see only the newest N messages, and seqs are positions in
        that window (each append slides a full one); compaction drops the rest.
    :param attachments: ``"keep"`` inline base64 data; ``"strip"`` it to a placeholder
        (type, size, sha256); or move it to an ``"external"`` encrypted, deduplicated blob
        store beside the log (``<path>.blobs``), restored transparently on read. A log that
        has that store keeps using it whatever this says ("keep" acts as "external").
    :param context: the identity the log is stored under (``ConversationStore`` passes the
        conversation id). A log created or rewritten with a context is bound to it, and then
        opens only with that same context: a log copied or swapped in from another
        conversation raises ``BindingError`` (FORMAT.md §4.2). An unbound log (written
        without one, or by an older version) still opens, and is bound when next rewritten
        (``compact``, ``save`` that rewrites, ``replace``, ``prune``). A
        ``format.header.ContextDigest`` names a context by its SHA-256 alone (how a store
        opens a log under a hashed name, whose id it does not know).
    :param search_index: keep a blind keyword index of an encrypted log (beside a file:
        ``<path>.kwi``; in a database: its segment rows, FORMAT.md §17, §17.9), so a keyword
        search decrypts only candidate records (a rare word: milliseconds instead of a
        scan). Opt-in: someone watching the reads learns which groups of 16 messages share
        a searched word, never the words (§16). Not for ``:memory:``. Once a log
        has one, every writer keeps it, with or without this option; ``reindex()`` builds it
        at once (else the first append does). Regex queries and words shorter than three
        letters are still answered by the scan; results are the scan's in every case.
    :param index_cache: an ``index_cache.IndexCache`` that codecs share: one closing hands
        its decrypted keyword index back, the next one opening the same unchanged log takes
        it instead of decrypting the sidecar (``ConversationStore`` passes its own).
    :param storage: instead of a file: opens the log's ``LogStorage`` given the codec's
        header reader (``storage.base.StorageOpener``); ``path`` then only names the log in
        messages. ``ConversationStore`` passes it for a database root.
    :raises InvalidKeyError: ``encryption_key`` or ``password`` is unusable (its subclass
        ``KeyTypeError``, also a ``TypeError``, for a wrong type); the value is never shown.
    :raises StorageError: ``path`` is a directory, or too long for the log and its sidecars.
    :raises DecryptionError: no key given opens the existing log.
    :raises BindingError: the log is bound to another context, or to one not given.
    :raises KeyRequiredError: the log is encrypted and no key was given.
    :raises NotEncryptedError: a key was given but the log is plaintext.
    :raises FormatError: the file is not a conversation-codec log (see ``migrate``).

    >>> import tempfile, os
    >>> from conversation_codec import generate_key
    >>> path = os.path.join(tempfile.mkdtemp(), "chat.log")
    >>> with ConversationCodec(path, encryption_key=generate_key()) as codec:
    ...     codec.append({"role": "user", "content": "hi"})
    ...     codec.tail(1)
    0
    [{'role': 'user', 'content': 'hi'}]
    """

    # -- writing ---------------------------------------------------------------------------

    def append(self, message: Message, *, timestamp: TimestampInput | None = None) -> int:
        """Append one message as one new record; return its seq (under ``max_messages``, its
        position in the window: N - 1 once the window is full; see ``extend``).

        :param timestamp: the record's time (aware datetime or epoch seconds); default now.
        :raises NotSerializableError: the message is not a JSON object that round-trips.
        :raises ValueError: ``timestamp`` is earlier than the last record's.
        """
        if timestamp is not None or self._quick is None or self._kwi.wanted:  # (reindex())
            return self.extend([message], timestamps=None if timestamp is None else [timestamp])[0]
        encoded = self._encoder.encode(message)  # outside the lock, as extend()
        seq = self._quick(encoded[1])  # None: not the steady state (issue 15), nothing done
        return self._append_one(encoded) if seq is None else seq

    def extend(
        self, messages: Iterable[Message], *, timestamps: Sequence[TimestampInput] | None = None
    ) -> list[int]:
        """Append many messages under one lock with one write and one sync; return their seqs.

        A seq is a position in the visible history. Under ``max_messages`` that is the window
        this write leaves, which every later append slides once it is full: a message the
        same call already pushed out of the window gets a negative number, which does not
        address it (to ``get()`` a negative seq counts from the end; README, "Seqs under
        max_messages"): ``[-2, -1, 0, 1, 2]`` for 5 messages under ``max_messages=3``.

        A crash during ``extend`` may keep a prefix of the batch; an error raised before
        anything is written (a bad message) keeps none of it.
        """
        messages = list(messages)
        # Validate outside the lock (other writers wait less), except for external blobs:
        # stored under the lock, a compaction cannot delete them before a record refers to them.
        early = self._encoder.blobs is None
        # map(), not a comprehension: no comprehension frame per append (issue 15)
        encoded = list(map(self._encoder.encode, messages)) if early else []
        if not messages:
            return []
        with self._holding(write=True):
            if not early:
                encoded = [self._encoder.encode(m) for m in messages]
            return self._append_locked(encoded, timestamps)

    def save(self, messages: Sequence[Message]) -> None:
        """Make the stored history equal ``messages``, deleting nothing this instance never saw.

        When the stored history is a prefix of ``messages`` only the new tail is appended
        (kept messages keep their seq and timestamp). Otherwise the log is replaced
        atomically (temp file, fsync, rename), keeping the timestamps of the common prefix —
        but only when this instance has seen the whole current history: its last ``load()``
        (or complete iteration, ``save()`` or ``replace()``) and no change since, by any
        writer, this instance's own ``append``/``extend`` included. With ``max_messages``,
        "the stored history" is the window it was handed; older records stay (``saving``).

        :raises ConflictError: the list diverges from a history this instance has not seen
            whole, or would append again messages another writer removed since this
            instance last read the log. Nothing is changed: reload, or call ``replace()``.
        :raises NotSerializableError: a new message cannot be stored.
        """
        messages = list(messages)
        with self._holding(write=True):
            start, keep, stored = self._history.plan(messages, self._base())
            if keep == stored:
                if len(messages) > keep:
                    self._history.refuse_resurrection()
                    self._append_locked([self._encoder.encode(m) for m in messages[keep:]], None)
                self._history.whole(start)
                return
            self._history.refuse_blind_rewrite()
            encoded = [self._encoder.encode(m) for m in messages]
            kept = list(self._log.index.tss[start : start + keep])
            tail = self._writer.stamps(len(encoded) - keep, None) if len(encoded) > keep else []
            self._rewrite(encoded, kept + tail, start)

    def replace(
        self, messages: Sequence[Message], *, timestamps: Sequence[TimestampInput] | None = None
    ) -> None:
        """Atomically replace the whole history, giving each message its time.

        Unlike ``save()``, nothing is kept: the log is rewritten (temp file, fsync, rename),
        then the blobs no message refers to are deleted (FORMAT.md §15).
        ``timestamps`` must not decrease; None stamps every message with now.
        """
        if timestamps is not None and len(timestamps) != len(messages):
            raise ValueError(f"got {len(timestamps)} timestamps for {len(messages)} messages")
        with self._holding(write=True):
            encoded = [self._encoder.encode(m) for m in messages]
            if timestamps is None:
                tss = [self._writer.now()] * len(encoded)
            else:
                tss = [check_timestamp(t) for t in timestamps]
                if any(b < a for a, b in itertools.pairwise(tss)):
                    raise ValueError("timestamps must not decrease")
            self._rewrite(encoded, tss)

    def pop(self) -> Message | None:
        """Remove and return the last message (None when empty); O(1), a truncation. The
        temp copies crashed rewrites left beside the log, which may hold it, go first. The
        blobs of its attachments go after, when no record left refers to them, if at most
        ``core.POP_SWEEP_RECORDS`` (256) are left; else at the next rewrite (FORMAT.md §15)."""
        with self._holding(write=True):
            count = len(self._log.index)
            if count == self._base():
                return None
            self._log.remove_stale_temps()
            message = self._present(stored := self._reader.read_one(count - 1))
            before = self._history.state()
            exact = self._kwi.before_pop(count - 1)
            self._log.truncate(count - 1)
            self._kwi.popped(exact, count - 1)
            self._popped_blobs(stored, count - 1)
            # The caller gets the message back: a history it held whole stays whole.
            self._history.moved(before, keeps_view=True)
            self._history.popped(count)
            return message

    def clear(self) -> None:
        """Delete the whole history: the log, its index, its blob store, the temp copies
        crashed rewrites left, and its lock file (FORMAT.md §8.5). A migration's
        ``<path>.bak`` is the user's original and stays."""
        with self._holding(write=True):
            if self._file:  # a link or a stray entry at P.blobs is refused before the log goes
                remove_flat_dir(blobs_path(self._path), check_only=True)
            self._log.remove(also=self._remove_blobs)
            self._history.cleared()

    # -- reading ---------------------------------------------------------------------------

    def load(self) -> list[Message] | None:
        """Return the whole (visible) history in order, or None when there is none."""
        with self._holding(write=False):
            base, count = self._base(), len(self._log.index)
            messages: list[Message] = []
            datas: list[bytes] = []
            sealed = self._log.fmt is not None and self._log.fmt.sealed
            for _, texts, parsed, _ in self._reader.parsed(base, count):
                # A sealed record's text is the stored JSON; a plain one's is the whole line.
                datas += texts if sealed else map(encode_json, parsed)
                messages += parsed if self._blobs_now() is None else map(self._present, parsed)
            self._history.loaded(datas, base)  # the seed pattern calls save() next
            return messages if count > base else None

    def get(self, seq: int) -> Message:
        """Return one message by position; negative seqs count from the end. Under
        ``max_messages`` a position is in the window as it is now (0: its oldest message).

        :raises IndexError: no such record.
        """
        with self._holding(write=False):
            return self._present(self._reader.read_one(self._position(seq)))

    def tail(self, n: int) -> list[Message]:
        """Return the last ``n`` messages, oldest first, reading only those records.

        :raises ValueError, TypeError: ``n`` is negative, or not an int."""
        with self._holding(write=False, tail=check_int(n, "n", 0)):
            count = len(self._log.index)
            start = max(self._base(), count - n)
            messages: list[Message] = []
            for _, _, parsed, _ in self._reader.parsed(start, count):
                messages += parsed
            return messages if self._blobs_now() is None else list(map(self._present, messages))

    def message_count(self) -> int:
        """Return the number of (visible) messages, from the index (no decryption)."""
        with self._holding(write=False, tail=0):
            return len(self._log.index) - self._base()

    def __len__(self) -> int:
        return self.message_count()

    def timestamp(self, seq: int) -> datetime:
        """Return the UTC time record ``seq`` was written, from the index (no decryption).

        The index is an unauthenticated cache: an edit of it can make this answer wrong, never
        raise a foreign error (``verify()`` reports "index-ts-mismatch"); time queries
        (``search``, ``between``) and ``prune`` check the records themselves.

        :raises IndexError: no such record (as ``get``: negative seqs count from the end).
        :raises CorruptRecordError: its own time is no date in years 1..9999 (a forged record).
        """
        with self._holding(write=False):
            return self._reader.when(self._position(seq))

    def __iter__(self) -> Iterator[Message]:
        """Stream the messages in order, decoding a batch per lock hold (bounded memory).

        :raises LogReplacedError: another writer replaced or truncated the log meanwhile.
        """
        with self._holding(write=False):
            start = self._history.state()
            origin = seq = self._base()
            count = start[2]
        unchanged = True
        while seq < count:
            with self._holding(write=False):
                now = self._history.state()
                if now[0] != start[0] or now[2] < min(count, seq + READ_BATCH):
                    raise LogReplacedError("the log was replaced or truncated while iterating")
                stop = min(count, seq + READ_BATCH)
                batch = [self._present(m) for _, m, _ in self._reader.decoded(seq, stop)]
                unchanged = unchanged and now == start
            yield from batch
            seq += len(batch)
        if unchanged:  # every message was handed out, and no writer came in between
            self._history.iterated(start, origin)

    def search(
        self,
        query: str | None = None,
        *,
        since: TimeInput | None = None,
        until: TimeInput | None = None,
        role: str | Iterable[str] | None = None,
        limit: int | None = None,
        newest_first: bool = False,
        regex: bool = False,
        case_sensitive: bool = False,
    ) -> Iterator[Hit]:
        """Stream the messages that match, as ``Hit(seq, timestamp, message)``.

        The matching rules are those of ``conversation_codec.search``: the text a person would
        search (string content, content-part text, tool-call names and arguments), Unicode
        case folding unless ``case_sensitive``, several words all required, a "quoted phrase"
        as written, or one regular expression with ``regex=True``; ``None`` matches all.

        ``since`` (inclusive), ``until`` (exclusive): aware datetimes (a naive one raises
        ``NaiveDatetimeError``), epoch seconds or ISO-8601 strings (no offset: UTC); only the
        records in range are decrypted. ``limit`` and ``newest_first`` stop early: the 5 newest
        matches read from the end. Records are decoded a batch per lock hold, in bounded memory.

        :raises QueryTypeError: ``query`` is not a str or None.
        :raises SearchError: an invalid regex, or ``regex=True`` without RE2 installed
            (``pip install "conversation-codec[regex]"``; see ``conversation_codec.search``).
        :raises ValueError: ``since`` after ``until``, a negative limit.
        :raises TypeError: a role that is not a string or a collection of strings.
        :raises LogReplacedError: the first or last message read was rewritten meanwhile
            (``save()``, ``clear()``, ``pop()``), or the log was replaced again and again;
            not for a compaction, key rotation or prune: each position the log held at the
            start is read at most once, as it then is, numbered as then (README search).
        """
        parsed = SearchQuery.parse(
            query,
            since=since,
            until=until,
            role=role,
            limit=limit,
            newest_first=newest_first,
            regex=regex,
            case_sensitive=case_sensitive,
        )
        return self._search(parsed)

    def _search(self, parsed: SearchQuery, progress: SearchProgress | None = None) -> Iterator[Hit]:
        return indexed_search(
            self._kwi,
            self._reader,
            self._log,
            parsed,
            reading=lambda: self._holding(write=False),
            base=self._base,
            present=self._present,
            writing=lambda: self._holding(write=True),
            progress=progress,
        )

    def between(self, since: TimeInput, until: TimeInput) -> list[Hit]:
        """Return every message with ``since <= timestamp < until`` (a pure date range)."""
        return list(self.search(None, since=since, until=until))

    def info(self) -> LogInfo:
        """Describe the log from its header and index alone (no message is decrypted).

        The first and last times come from the index, as ``timestamp()`` does (the last
        entry is authenticated whenever a process opens the log).
        """
        with self._holding(write=False):
            return self._reader.info(self._base(), self.encrypted)
