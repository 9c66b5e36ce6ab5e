"""The file storage: ``log`` (one log file: append, read, recover, truncate, rewrite),
``index`` (the ``.idx`` offset index) and ``lock`` (the ``.lock`` file and its counters)."""
