"""What `qconf --help`, a missing command and an unknown one print (qconf/cli/main.py's top-level
parser): every command listed with its one-line help, the exit codes the README promises, and a
mistake answered in one line that says what was wrong and where the help is. Torch-free."""

from __future__ import annotations

import re

import pytest

from qconf.cli.main import COMMANDS, main


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_help_lists_every_command_with_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("usage: qconf [-h] command ...")
    flat = _flat(out)
    # the description and the epilog (the README's exit codes and --verbose), each whole
    assert "\n\nDeclarative, validated quantization plans for diffusers pipelines.\n\n" in out
    epilog = out[out.index("show this help message and exit") :].split("\n\n", 1)[1]
    assert _flat(epilog) == (
        "Exit codes: 0 ok, 2 your input is wrong (one line per problem), 1 a bug. "
        "--verbose (anywhere) shows library warnings that qconf hides. "
    )
    assert "{" + ",".join(COMMANDS) + "}" not in flat  # metavar "command", not the choices
    assert "positional arguments: command " in flat
    for name, help_text in COMMANDS.items():
        assert f" {name} {_flat(help_text)}" in flat, name


def test_a_missing_command_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == ("error: the following arguments are required: command — see `qconf --help`\n")


def test_an_unknown_command_names_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("error: argument command: invalid choice:")
    assert "'frobnicate'" in err and err.endswith(" — see `qconf --help`\n")
    for name in COMMANDS:
        assert f"'{name}'" in err, name


def test_a_subcommand_mistake_names_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--no-such-flag"]) == 2
    _, err = capsys.readouterr()
    assert err == "error: unrecognized arguments: --no-such-flag — see `qconf validate --help`\n"


def test_subcommand_help_is_its_description(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--help"]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("usage: qconf schema")
    assert COMMANDS["schema"] in _flat(out)


@pytest.mark.parametrize(("argv", "code"), [(["qconf", "--help"], 0), (["qconf"], 2)])
def test_the_console_script_exits_with_mains_code(
    argv: list[str], code: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from qconf.cli.main import entry

    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as caught:
        entry()
    assert caught.value.code == code
    capsys.readouterr()
