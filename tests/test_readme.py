"""README code blocks run: every `qconf ...` line of a bash block, every python block."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README.read_text(), flags=re.S | re.M)
COMMANDS = [
    line.split("#")[0].strip()
    for lang, body in BLOCKS
    if lang == "bash"
    for line in body.splitlines()
    if line.startswith("qconf ")
]
PYTHON = [body for lang, body in BLOCKS if lang == "python"]


def test_readme_has_the_two_setup_commands() -> None:
    bash = "\n".join(body for lang, body in BLOCKS if lang == "bash")
    assert "make run" in bash and "make test" in bash
    makefile = (README.parent / "Makefile").read_text()
    assert "pytest" in makefile.split("\ntest:")[1].split("\n\n")[0]
    assert "make test" in (README.parent / ".ci" / "run").read_text()


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs(command: str) -> None:
    """Run from the repository root, as the README says."""
    args = shlex.split(command)[1:]
    result = subprocess.run(
        [sys.executable, "-m", "qconf.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=README.parent,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_readme_python_block_runs(
    index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(PYTHON[index], f"README.md python block {index}", "exec"), {})
