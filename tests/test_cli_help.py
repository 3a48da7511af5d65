"""The command line's surface: `m3ae --help` and every command's `--help` print exactly the text in
tests/fixtures/cli_help.json (recorded before the commands moved into m3ae/cli/), so moving code
never changes a flag, a default or a help line. After a deliberate change, rewrite the fixture with
`python tests/test_cli_help.py` and review its diff."""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest

from m3ae.cli import COMMANDS, main

FIXTURE = Path(__file__).parent / "fixtures" / "cli_help.json"
EXPECTED = json.loads(FIXTURE.read_text())


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


def record() -> dict[str, str]:
    """Every command's --help text at 100 columns (what the fixture holds)."""
    os.environ["COLUMNS"] = "100"
    out = {}
    for name in ["m3ae", *COMMANDS]:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
            main(([] if name == "m3ae" else [name]) + ["--help"])
        out[name] = buf.getvalue()
    return out


if __name__ == "__main__":
    FIXTURE.write_text(json.dumps(record(), indent=1, sort_keys=True))
    print(f"wrote {FIXTURE}")
