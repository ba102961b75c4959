"""The command line filters known library noise (see qconf.quiet; QCONF_VERBOSE=1 shows it),
keeps library log lines off stdout, and turns the libraries' progress bars off: qconf shows its
own (qconf.cli.progress), and only on a terminal."""

from __future__ import annotations

import os

from qconf.quiet import library_logs_to_stderr, silence

__all__ = ["quiet_library_noise"]


def quiet_library_noise() -> None:
    silence()
    library_logs_to_stderr()
    if os.environ.get("QCONF_VERBOSE", "") in ("", "0"):
        # tqdm reads TQDM_* defaults from the environment: every library bar (diffusers'
        # pipeline steps and component loading, transformers' weight loading, hub downloads)
        # is off, in this process and in the launcher processes it starts.
        os.environ["TQDM_DISABLE"] = "1"
