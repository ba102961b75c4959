"""`qconf run [flags] [overrides]`: a Hydra app (run folders, -m sweeps, launchers). The app
itself lives in qconf.cli.hydra_run, which `qconf compare` shares."""

from __future__ import annotations

from qconf.cli.hydra_run import main

__all__ = ["main"]
