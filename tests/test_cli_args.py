"""``cli/_args``: the value types every command uses never echo what was typed."""

from __future__ import annotations

from pathlib import Path

import pytest

from conversation_codec.cli import main


@pytest.mark.parametrize("typed", ["²", "-1", "1.5", "x"])
def test_a_bad_count_is_refused_without_echo(
    typed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "²".isdigit() holds but int("²") raises ValueError: argparse then printed its own
    # "invalid _count value" message instead of the type's (click's wording since issue 17).
    code = main(["tail", "-n", typed, f"{tmp_path}/chat.log"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines()[-1] == "error: Invalid value for '-n': expected a whole number >= 0"


@pytest.mark.parametrize(
    "args",
    [
        ["prune", "{root}", "--older-than", "99999999999999d"],  # past timedelta's range
        ["prune", "{root}", "--older-than", "999999999d"],  # now minus it: before year 1
        ["search", "{root}", "hi", "--last", "99999999999d"],
        ["search", "{root}", "hi", "--last", "800000w"],
    ],
    ids=["prune-overflow", "prune-before-year-1", "search-overflow", "search-before-year-1"],
)
def test_a_huge_age_is_a_usage_error_not_a_traceback(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([a.format(root=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines()[-1].startswith("error: Invalid value for '--")
    assert "expected an age such as 30m, 12h, 7d or 2w" in err
