"""The CLI guard's other exits (tests/test_cli_shapes.py pins bug = 1, qconf's errors = 2, Ctrl-C
= 130): a too-deep input and running out of memory are user errors with one line, a closed pipe
is a quiet 0, and the exact lines each prints. Torch-free and fast (for `make mutate`)."""

from __future__ import annotations

import os
import sys

import pytest

from qconf.cli.common import BUG
from qconf.cli.main import main


def _raising(monkeypatch: pytest.MonkeyPatch, raised: BaseException) -> None:
    import qconf.cli.validate_cmd as validate_cmd

    def run(_args: object) -> int:
        raise raised

    monkeypatch.setattr(validate_cmd, "run", run)


def test_too_deep_input_is_one_user_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _raising(monkeypatch, RecursionError("maximum recursion depth exceeded"))
    assert main(["validate"]) == 2
    assert capsys.readouterr().err == (
        "error: input nested too deeply — flatten the value or the file\n"
    )


def test_out_of_memory_is_one_user_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from qconf.loading.out_of_memory import out_of_memory_problem

    raised = MemoryError("cannot allocate 12 GiB")
    _raising(monkeypatch, raised)
    assert main(["validate"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {out_of_memory_problem(raised)}\n"
    assert "ran out of CPU memory (MemoryError: cannot allocate 12 GiB)" in err
    assert "Traceback" not in err


def test_closed_pipe_is_a_quiet_success(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = []
    _raising(monkeypatch, BrokenPipeError())

    class Stderr:
        def close(self) -> None:
            closed.append(True)

    monkeypatch.setattr(sys, "stderr", Stderr())
    assert main(["validate"]) == 0
    assert closed == [True]


def test_a_returned_code_passes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    import qconf.cli.validate_cmd as validate_cmd

    monkeypatch.setattr(validate_cmd, "run", lambda _args: 3)
    assert main(["validate"]) == 3
    monkeypatch.setattr(validate_cmd, "run", lambda _args: None)
    assert main(["validate"]) == 0
    assert BUG == 1


def test_user_error_lines_are_escaped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import qconf
    from qconf.text import safe

    what = "bad \x1b[31mred\x1b[0m value"
    _raising(monkeypatch, qconf.PlanError(qconf.Problem("quant.backend", what, "fix it")))
    assert main(["validate"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err
    error = qconf.PlanError(qconf.Problem("quant.backend", what, "fix it"))
    assert err == "".join(f"error: {safe(line)}\n" for line in error.lines)


def test_verbose_is_taken_anywhere_and_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    import qconf.cli.validate_cmd as validate_cmd

    seen = []
    # setenv (not delenv): the value main() writes is undone after the test, so later tests'
    # subprocesses do not inherit --verbose
    monkeypatch.setenv("QCONF_VERBOSE", "0")
    monkeypatch.setattr(validate_cmd, "run", lambda args: seen.append(args) or 0)
    assert main(["validate", "--verbose"]) == 0
    assert os.environ["QCONF_VERBOSE"] == "1"
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("argv", "code"),
    [([], 2), (["no-such-command"], 2), (["--help"], 0), (["validate", "--no-such-flag"], 2)],
)
def test_parser_exits(argv: list[str], code: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == code
    capsys.readouterr()
