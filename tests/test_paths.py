"""paths.py: every name built here is recognised by the parser that sweeps or lists it."""

from __future__ import annotations

import os

from conversation_codec import paths


def test_built_names_parse_back() -> None:
    log = "chat.log"
    tmp = paths.temp_path(log)
    assert len(tmp) - len(log) == paths.LONGEST_SUFFIX
    assert paths.is_leftover(tmp, log) and paths.is_log_file(tmp, log)
    migrating = paths.migrating_path(log)
    for name in (migrating, paths.index_path(migrating), paths.lock_path(migrating)):
        assert paths.is_leftover(name, log) and not paths.is_log_file(name, log)
        assert paths.migrate_leftovers(log, None).fullmatch(name)
    for name in (log, paths.index_path(log), paths.lock_path(log)):
        assert paths.is_log_file(name, log) and not paths.is_leftover(name, log)
    backup = paths.backup_path(log)
    assert not paths.is_leftover(backup, log)  # the user's original: never swept
    assert paths.migrate_leftovers(log, backup).fullmatch(paths.temp_path(backup))
    assert not paths.migrate_leftovers(log, backup).fullmatch(backup)
    assert paths.is_blob_temp(paths.blob_temp_name())
    hidden = os.path.basename(paths.hidden_temp_path(os.path.join("d", "k.key")))
    assert hidden.startswith(".k.key.tmp-") and paths.is_sidecar(hidden)
    for name in (backup, paths.index_path(log), paths.lock_path(log), tmp, migrating):
        assert paths.is_sidecar(name)


def test_other_names_are_not_ours() -> None:
    log = "chat.log"
    for name in ("chat.log2", "chat.log.tmp-XYZ", "chat.log.tmp-0123", "chat.log.idx.bak"):
        assert not paths.is_leftover(name, log) and not paths.is_log_file(name, log)
    assert not paths.is_blob_temp("0" * 64) and not paths.is_sidecar("history.jsonl")
    assert not paths.is_leftover("other.log.tmp-0123456789abcdef", log)


def test_every_leftover_passes_the_cheap_filter() -> None:
    """``may_be_leftover`` filters a store's names before ``is_leftover`` runs per log: a
    name it drops would never be swept, so every leftover a writer can leave passes it."""
    log = "chat.log"
    migrating = paths.migrating_path(log)
    leftovers = [
        paths.temp_path(log),
        paths.temp_path(paths.kwi_path(log)),
        migrating,
        paths.index_path(migrating),
        paths.lock_path(migrating),
        paths.temp_path(migrating),
    ]
    for name in leftovers:
        assert paths.is_leftover(name, log), name
        assert paths.may_be_leftover(name), name
    for name in (log, paths.index_path(log), paths.lock_path(log), paths.kwi_path(log)):
        assert not paths.may_be_leftover(name)
