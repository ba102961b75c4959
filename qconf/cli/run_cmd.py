"""`qconf run [flags] [overrides]`: a Hydra app (run folders, -m sweeps, launchers). The app
itself lives in qconf.cli.hydra_run, which `qconf compare` shares; `--help` is qconf's own page
(qconf.cli.run_help), Hydra's stays behind `--hydra-help`."""

from __future__ import annotations

from qconf.cli import hydra_run

__all__ = ["main"]


def main(argv: list[str]) -> int:
    if {"-h", "--help"} & set(argv):
        from qconf.cli.run_help import run_help

        print(run_help(), end="")
        return 0
    return hydra_run.main(argv)
