"""compression: one zstd frame per payload, bounded before it is inflated (FORMAT.md §5.2)."""

from __future__ import annotations

import os

import pytest
import zstandard

from conversation_codec.compression import Compressor

from conftest import in_threads


@pytest.mark.parametrize("with_size", [True, False], ids=["content-size", "no-content-size"])
@pytest.mark.parametrize("checksum", [False, True])
@pytest.mark.parametrize("size", [0, 1, 300, 200_000])
def test_one_frame_and_nothing_after_it(with_size: bool, checksum: bool, size: int) -> None:
    data = os.urandom(size // 2) + b"a" * (size - size // 2)
    frame = zstandard.ZstdCompressor(
        write_content_size=with_size, write_checksum=checksum
    ).compress(data)
    codec = Compressor()
    assert codec.decompress(frame) == data
    assert codec.decompress(memoryview(frame)) == data
    for extra in (b"\x00", b"junk", frame):  # a stray byte, garbage, a second frame
        with pytest.raises(zstandard.ZstdError):
            codec.decompress(frame + extra)


def test_a_truncated_or_reserved_block_is_refused() -> None:
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"abc" * 1000)
    codec = Compressor()
    with pytest.raises(zstandard.ZstdError):
        codec.decompress(frame[:-1])
    header = zstandard.frame_header_size(frame)
    reserved = bytearray(frame)
    reserved[header] |= 0x06  # block type 3: reserved
    with pytest.raises(zstandard.ZstdError):
        codec.decompress(bytes(reserved))


def test_a_frame_claiming_too_much_is_refused_before_inflating() -> None:
    size = (64 * 1024 * 1024 + 1).to_bytes(8, "little")
    frame = b"\x28\xb5\x2f\xfd\xe0" + size + b"\x09\x00\x00{"  # one raw block of 1 byte
    with pytest.raises(zstandard.ZstdError, match="over the record limit"):
        Compressor().decompress(frame)


def test_compressors_without_a_dictionary_read_alike_across_threads() -> None:
    # They share their thread's decompression context (issue 15); interleaved calls in a
    # thread and calls in four threads at once each get their own frame's text back.
    texts = [f'{{"role": "user", "content": "{i} {"spam " * i}"}}'.encode() for i in range(64)]

    def worker(offset: int) -> None:
        zstds = [Compressor() for _ in range(3)]
        frames = [zstds[i % 3].compress(t)[0] for i, t in enumerate(texts)]
        for r in range(50):
            for i in range(len(frames)):
                k = (i + r + offset) % len(frames)
                if frames[k] is not texts[k]:  # stored as is when not smaller
                    assert zstds[(i + r) % 3].decompress(frames[k]) == texts[k]

    assert in_threads(worker, 4) == []
