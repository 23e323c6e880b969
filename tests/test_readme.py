"""The README's two commands are what CI runs and what a new user types."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_readme_has_exactly_two_commands_at_the_top():
    commands = readme_commands()
    assert len(commands) == 2
    assert "benchmarks" in commands[0] and "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    assert readme_commands()[1] in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_example_runs():
    """The server/client example in the README does what it says it prints."""
    example = re.search(
        r"```python\n(import asyncio.*?)```", (ROOT / "README.md").read_text(), re.S
    )
    result = subprocess.run(
        [sys.executable, "-c", example.group(1)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'op': 'reply', 'echo': b'hello'}"


def test_code_is_ruff_clean():
    for args in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *args, "distributed_comm", "tests", "benchmarks"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stdout + result.stderr
