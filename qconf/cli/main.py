"""`qconf <command> [flags] [hydra overrides...]`. Exit 0 ok, 2 user error (one line per problem
on stderr, no traceback), 1 a bug. Subcommand modules are imported lazily so that `validate`
never pays for torch."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from qconf.cli.common import USER_ERROR, bare_flags_kept_bare, report_bug
from qconf.errors import QconfError

COMMANDS = {
    "list": "List backends, presets and models from the registry and the conf tree.",
    "show": "Print the composed, validated, resolved plan (--json: the machine contract).",
    "validate": "Check a plan (and that its backends can run here); one OK line or the problems.",
    "schema": "Print the JSON Schema of a plan (for YAML language servers).",
    "estimate": "Parameters and bytes per part, unquantized and under the plan (no weights read).",
    "load": "Load the quantized pipeline and print the per-part report.",
    "run": "Load and generate an image; writes image, plan and report to Hydra's run folder.",
    "inspect": "Print the plan of a saved pipeline folder (from each part's config.json).",
    "sensitivity": "Quantize each part alone under each option that runs here and measure how far "
    "the part's output and the image move (cached).",
    "tune": "Choose per-part options for a memory budget (--budget 12GiB) from measured "
    "sensitivity, measure the best, write the winner as a preset.",
    "compare": "Run plans side by side (a sweep plus the unquantized baseline): images, bytes, "
    "speed, PSNR/SSIM; or gather DIR.",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a mistake answered in one line (what, and where the help is), exit 2."""

    def error(self, message: str) -> NoReturn:
        from qconf.text import safe

        print(f"error: {safe(message)} — see `{self.prog} --help`", file=sys.stderr)
        raise SystemExit(USER_ERROR)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser (for `qconf --help` and unknown commands)."""
    parser = OneLineParser(
        prog="qconf",
        description="Declarative, validated quantization plans for diffusers pipelines.",
        epilog="Exit codes: 0 ok, 2 your input is wrong (one line per problem), 1 a bug. "
        "--verbose (anywhere) shows library warnings that qconf hides.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text, add_help=False)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """One subcommand's parser; only that subcommand's module is imported."""
    parser = OneLineParser(prog=f"qconf {name}", description=COMMANDS[name])
    _module(name).add_arguments(parser)
    return parser


def _module(name: str):  # noqa: ANN202 - a subcommand module
    return importlib.import_module(f"qconf.cli.{name}_cmd")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in args_list:  # every command, anywhere on the line: show library noise too
        args_list = [a for a in args_list if a != "--verbose"]
        os.environ["QCONF_VERBOSE"] = "1"
    command = args_list[0] if args_list else None
    if command in ("run", "compare"):
        # Hydra apps: Hydra parses their flags (-m, --config-dir, hydra.* keys).
        return _guard(lambda: _module(command).main(args_list[1:]))
    try:
        if command not in COMMANDS:
            build_parser().parse_args(args_list)  # prints help or "invalid choice"
            return USER_ERROR
        flags_anywhere = bare_flags_kept_bare(args_list[1:])
        args = command_parser(command).parse_intermixed_args(flags_anywhere)
    except SystemExit as exc:  # argparse already printed a usage line
        return USER_ERROR if exc.code else 0
    return _guard(lambda: _module(command).run(args))


def _guard(action) -> int:  # noqa: ANN001
    from qconf.cli.quiet import quiet_library_noise
    from qconf.text import safe

    quiet_library_noise()
    try:
        return int(action() or 0)
    except QconfError as exc:
        for line in exc.lines:
            print(f"error: {safe(line)}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt:
        return 130
    except RecursionError:  # a value nested thousands deep, typed or in a file
        print("error: input nested too deeply — flatten the value or the file", file=sys.stderr)
        return USER_ERROR
    except BrokenPipeError:  # `qconf show --json | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    except Exception as exc:  # running out of memory is the user's plan meeting the machine
        from qconf.loading.out_of_memory import out_of_memory_problem

        problem = out_of_memory_problem(exc)
        if problem is None:
            return report_bug()
        print(f"error: {safe(str(problem))}", file=sys.stderr)
        return USER_ERROR


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
