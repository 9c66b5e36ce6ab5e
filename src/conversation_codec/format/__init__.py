"""Pure bytes <-> values for everything on disk (spec/FORMAT.md). No I/O, no crypto."""
