"""``keygen`` and ``demo``: the commands that make a key rather than read one."""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from typing import TYPE_CHECKING, Any

import click

from .._fsio import make_private_dirs
from ..errors import DecryptionError
from ._args import as_json, command, durability
from ._common import EXIT_OK, Args, InputError, emit, ts

if TYPE_CHECKING:
    from ..codec import Message

_DEMO_KEY = "demo.key"
_DEMO_FILE = "support-chat.log"


@command(
    "keygen",
    "print a new encryption key (or write it to a file)",
    "conversation-codec keygen --out chat.key",
)
@click.option("--out", metavar="FILE", help="write the key to a new 0600 file instead (-: stdout)")
@as_json('print {"key"} (or, with --out, {"path", "mode"}) as one JSON object')
def _keygen(args: Args) -> int:
    from ..crypto import generate_key
    from ..errors import KeyFileError
    from ..keyfile import create_key_file

    if args.out in (None, "-"):  # -: stdout, as everywhere (not a file named "-")
        key = generate_key()  # the one place a key is printed: for a pipe into a secret store
        emit({"key": key}) if args.json else print(key)
        return EXIT_OK
    try:
        # Written, synced, linked into place and the directory synced: a key lost to a power
        # cut would make every log sealed with it unreadable (keyfile.create_key_file).
        create_key_file(args.out, io=args.io)
    except KeyFileError as exc:
        raise InputError(str(exc)) from None
    if args.json:
        emit({"path": args.out, "mode": "0600"})
    else:
        print(f"wrote a new key to {args.out} (mode 0600); use it with --key-file {args.out}")
    return EXIT_OK


@command(
    "demo",
    "write, reopen and show an encrypted sample conversation",
    "conversation-codec demo --dir /tmp/codec-demo",
)
@click.option(
    "--dir",
    metavar="DIR",
    help="write the log and its key file into DIR (default: a new temp dir, kept)",
)
@durability()
def _demo_command(args: Args) -> int:
    if args.dir is not None:
        make_private_dirs(args.dir)
        folder = args.dir
    else:
        folder = tempfile.mkdtemp(prefix="conversation-codec-demo-")  # kept: it is named below
    log, key_file = os.path.join(folder, _DEMO_FILE), os.path.join(folder, _DEMO_KEY)
    _demo(log, key_file, args.durability)
    print(f"\nKept in {folder}: the log and its key file (0600). Try next:")
    shown, key_shown = shlex.quote(log), shlex.quote(key_file)  # copy-pasteable as printed
    for example in (f"tail {shown} -n 3", f"search {shown} refund", f"verify {shown}"):
        print(f"  conversation-codec {example} --key-file {key_shown}")
    return EXIT_OK


COMMANDS = [_keygen, _demo_command]


# -- demo ------------------------------------------------------------------------------------


def _call(call_id: str, name: str, arguments: dict[str, Any]) -> Message:
    function = {"name": name, "arguments": json.dumps(arguments)}
    return {"id": call_id, "type": "function", "function": function}


_DEMO_TURN_1: list[Message] = [
    {"role": "system", "content": "You are Ava, support agent for Northwind Outfitters. "
     "Be brief; look orders up with tools before answering."},
    {"role": "user", "content": "Hi, order A1042 was due last Tuesday and still hasn't "
     "arrived. Can you check where it is?"},
    {"role": "assistant", "content": None,
     "tool_calls": [_call("call_1", "lookup_order", {"order_id": "A1042"})]},
    {"role": "tool", "tool_call_id": "call_1", "content": json.dumps(
        {"status": "in_transit", "carrier": "UPS", "last_scan": "Memphis, TN",
         "eta": "2025-11-24", "shipping_paid": "7.95"})},
    {"role": "assistant", "content": "It's with UPS, last scanned in Memphis, TN; the new "
     "delivery date is Monday, Nov 24. Sorry for the delay!"},
]  # fmt: skip
_DEMO_TURN_2: list[Message] = [
    {"role": "user", "content": "I needed it for the weekend. Can I get the shipping back?"},
    {"role": "assistant", "content": None, "tool_calls": [
        _call("call_2", "refund_shipping", {"order_id": "A1042", "amount": "7.95"})]},
    {"role": "tool", "tool_call_id": "call_2",
     "content": json.dumps({"refund_id": "R-88213", "amount": "7.95", "currency": "USD"})},
    {"role": "assistant", "content": "Done: $7.95 shipping refunded (ref R-88213); it shows "
     "on your card in 3-5 business days."},
    {"role": "user", "content": "Perfect, thanks Ava!"},
]  # fmt: skip


def _summary(message: Message, width: int = 62) -> str:
    calls = message.get("tool_calls") or []
    text = " ".join(
        [f"-> {c['function']['name']}({c['function']['arguments']})" for c in calls]
        + [str(message.get("content") or "")]
    ).strip()
    return text if len(text) <= width else text[: width - 3] + "..."


def _demo(path: str, key_file: str, durability: str) -> None:
    """Write, reopen and show one encrypted support conversation; ~25 lines of output."""
    from ..codec import ConversationCodec
    from ..crypto import generate_key
    from ..keyfile import load_or_create_key

    for existing in (path, key_file):
        if os.path.lexists(existing):
            raise InputError(f"{existing} already exists; give --dir an empty folder")
    key = load_or_create_key(key_file)  # a new 0600 key file; the key itself is never printed
    with ConversationCodec(path, encryption_key=key, durability=durability) as codec:
        messages = codec.load() or []  # the seed pattern: load, add a turn, save
        messages.extend(_DEMO_TURN_1)
        codec.save(messages)  # appends only what is new
        for message in _DEMO_TURN_2:  # or one record per message
            codec.append(message)
    print(f"Wrote an encrypted support chat to {path}")
    print(f"  turn 1 with load()/save(), turn 2 with append(); key in {key_file}\n")
    with ConversationCodec(path, encryption_key=key) as codec:  # reopen, as a new process would
        tail, info = codec.tail(4), codec.info()
    print("Last 4 messages after reopening:")
    for message in tail:
        print(f"  {message['role']:<9}  {_summary(message)}")
    plain = len(json.dumps(_DEMO_TURN_1 + _DEMO_TURN_2).encode())
    on_disk = info.log_bytes + info.index_bytes
    print(f"\nInfo: {info.message_count} messages, format v{info.format_version}, encrypted")
    print(f"  first {ts(info.first_timestamp)}, last {ts(info.last_timestamp)}")
    print(
        f"  {plain} bytes of plaintext JSON -> {on_disk} bytes on disk "
        f"({info.log_bytes} log + {info.index_bytes} index)"
    )
    try:
        ConversationCodec(path, encryption_key=generate_key()).close()
    except DecryptionError:
        print("\nWrong key: refused with DecryptionError; nothing was decrypted.")
