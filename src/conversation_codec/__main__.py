"""Run the command line: ``python -m conversation_codec``."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
