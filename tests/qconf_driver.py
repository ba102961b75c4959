"""Run `qconf ARGS...` in a fresh process as the entry point does, for the command-line tests
that need more than the exit code: with `interrupt=N`, qconf's own job runner
(qconf.cli.hydra_run._generate) raises KeyboardInterrupt as job N starts, as a Ctrl-C there
would (diffusers and transformers are left alone); the last stdout line says whether torch
was imported (answers that must come before it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DRIVER = """
import os, sys
from qconf.cli import hydra_run
from qconf.cli.main import main

stop_at, calls = int(os.environ.get("QCONF_TEST_INTERRUPT", "0")), []
real = hydra_run._generate

def interrupting(*args, **kwargs):
    calls.append(args[1])
    if len(calls) == stop_at:
        raise KeyboardInterrupt
    return real(*args, **kwargs)

hydra_run._generate = interrupting
code = main(sys.argv[1:])
print(f"\\ntorch imported: {'torch' in sys.modules}")
sys.exit(code)
"""
TORCH_FREE = "torch imported: False"


def qconf(*args: str, cwd: Path, interrupt: int = 0, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "QCONF_TEST_INTERRUPT": str(interrupt), **env}
    result = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True,
                            text=True, cwd=cwd, env=environment, timeout=600)  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return result


def errors(result: subprocess.CompletedProcess) -> list[str]:
    """stderr without Hydra's own log lines (its launcher announces jobs there)."""
    return [line for line in result.stderr.splitlines() if not line.startswith("[")]
