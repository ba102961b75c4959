"""The command line filters known library noise (see qconf.quiet; QCONF_VERBOSE=1 shows it)."""

from __future__ import annotations

from qconf.quiet import silence


def quiet_library_noise() -> None:
    silence()
