"""Where the records of a log live: the ``LogStorage`` protocol (``base``) and its backends.

``file/`` is the one on disk (the log file, its offset index and lock file: FORMAT.md);
``memory`` keeps a log in memory (tests, throwaway sessions); ``postgres/`` keeps the same
record bodies in a PostgreSQL database (the ``postgres`` extra). Imports point down only:
backends import ``format``, ``records``, ``_fsio``, ``paths`` and ``errors``, never the codec.
"""
