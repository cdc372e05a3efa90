"""The README's configuration tables are the ones the code reads, and it starts with the two
commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_tables_match_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- config:start -->\n") + len("<!-- config:start -->\n")
    end = readme.index("<!-- config:end -->")
    generated = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "config_tables.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert readme[start:end] == generated, "run tools/config_tables.py and paste its output"


def test_the_two_commands_come_first() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```", 2)[1]
    assert "make up" in first_block and "make test" in first_block
