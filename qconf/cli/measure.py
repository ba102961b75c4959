"""What the measuring commands (sensitivity, tune) share: which options and parts to try, the
measuring setting from the plan arguments (through the intake), a progress bar."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from qconf.errors import PlanError, Problem


def add_measure_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--options", metavar="A,B",
                        help="backend options to try (default: every option)")  # fmt: skip
    parser.add_argument(
        "--parts", metavar="A,B", help="parts to try (default: every weight-bearing part)"
    )


def setting_from_args(args: argparse.Namespace) -> Any:
    from qconf.sensitivity.parts import setting
    from qconf.trust.bounds import check_override_depth
    from qconf.trust.userpath import user_path

    config_dir = str(user_path(args.config_dir, "--config-dir")) if args.config_dir else None
    check_override_depth(args.overrides)
    return setting(list(args.overrides), config_dir, plan_file=args.plan)


def chosen(text: str | None, known: list[str], flag: str) -> list[str]:
    from qconf.plan.messages import did_you_mean

    if not text:
        return known
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise PlanError(Problem(flag, f"'{text}' names nothing", f"e.g. {flag} {known[0]}"))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise PlanError([Problem(flag, f"unknown '{n}'", did_you_mean(n, known) +
                                 f"known: {', '.join(known)}") for n in unknown])  # fmt: skip
    return names


def option_names(config_dir: str | None) -> list[str]:
    from qconf.plan.compose import user_config_dirs
    from qconf.plan.conftree import backend_options

    return sorted(backend_options(user_config_dirs(config_dir)))


@contextmanager
def progress_bar(title: str) -> Iterator[Callable[[int, int, str], None]]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from qconf.text import markup

    console = Console(stderr=True)
    with Progress(TextColumn(title), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console, transient=True,
                  disable=not console.is_terminal) as bar:  # fmt: skip
        task = bar.add_task("", total=None)

        def update(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=markup(label))

        yield update
