"""The command line's surface: `m3ae --help` and every command's `--help` print exactly the text in
tests/fixtures/cli_help.json (recorded before the commands moved into m3ae/cli/), so moving code
never changes a flag, a default or a help line. After a deliberate change, regenerate the fixture
and review its diff."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from m3ae.cli import COMMANDS, main

EXPECTED = json.loads((Path(__file__).parent / "fixtures" / "cli_help.json").read_text())


def help_text(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(([] if command == "m3ae" else [command]) + ["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_every_command_has_a_recorded_help() -> None:
    assert set(EXPECTED) == {"m3ae", *COMMANDS}


@pytest.mark.parametrize("command", sorted(EXPECTED))
def test_help_text_is_unchanged(command: str, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps at the terminal width
    assert help_text(command, capsys) == EXPECTED[command]
