"""The file storage (spec/FORMAT.md), one module per job; each imports only those below it.

==============  ==========================================================================
``check``       the byte-by-byte scanner behind ``verify()`` and ``salvage()`` (§11)
``log``         ``FileLog``: one log file behind the storage seam; the cached view, and
                every procedure, run under the lock
``quick``       ``FileLog``'s append of one record in the steady state, in one frame
``recovery``    torn tail or damage? Index the intact records, judge the rest (§10)
``dictionary``  the log's dictionary record, and the record codec's copy of it (§5.3)
``transaction`` the lock holds of a log in this process, and its counters as last seen
``writer``      framing an append; writing a new log and renaming it over (§8)
``reader``      frames read back (LevelDB's log_reader); resynchronising after damage
``index``       ``<log>.idx``, the offset index (§7)
``lock``        ``<log>.lock``, the writer lock and change counters (§8.1)
==============  ==========================================================================
"""
