"""Mutation testing (`make mutate`): mutmut plants one small bug at a time in the torch-free core
(qconf/plan/{schema,checks,messages,compose,safety,resolve,interpolation,trust}.py, saving.py)
and in the code that turns a plan into library objects and numbers (qconf/backends/*,
qconf/estimate/*, loading/report.py, loading/inspect.py, cli/main.py), and runs the fast tests
that reach each mutant (configured in pyproject.toml, [tool.mutmut]).
Prints the kill rate per module and every mutant that no test kills, with the reason recorded
for it in bench/mutation-survivors.md (equivalent mutant, or covered only by the torch tests).
A survivor without a recorded reason is shown with its diff: add a test that kills it, or record
why none can. Exits 1 when the kill rate is below 90 % or a survivor has no recorded reason.

    python bench/mutate.py [--reuse] [PATTERN ...]
    # --reuse: keep mutants/ results from an earlier run
    # PATTERN: only these mutants, e.g. 'qconf.loading.inspect.*' (one module at a time)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REASONS_FILE = ROOT / "bench" / "mutation-survivors.md"
THRESHOLD = 90.0
KILLED = ("killed", "timeout")


def mutmut(*args: str, **kwargs) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "mutmut"), *args]
    # mutmut forks one child per mutant from a server that has imported (collected) the tests.
    # Collecting runs a torch op that starts torch's OpenMP thread team; a forked child then
    # waits forever on that team's barrier at its first parallel op (GNU libgomp is not
    # fork-safe), so every mutant a torch test reaches ended as a wall-clock "timeout", counted
    # as killed whatever the tests said. One OpenMP thread starts no team, and with two mutants
    # running at once on 2 cores a second thread would not help anyway.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, text=True, env=env, **kwargs)


def recorded_reasons() -> dict[str, str]:
    """`- \\`mutant name\\`: reason` lines of the survivors file."""
    if not REASONS_FILE.is_file():
        return {}
    found = re.findall(r"^- `([^`]+)`: (.+)$", REASONS_FILE.read_text(), flags=re.M)
    return dict(found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reuse", action="store_true", help="keep earlier results in mutants/")
    parser.add_argument("patterns", nargs="*", help="mutant name globs (default: all)")
    args = parser.parse_args()
    if not args.reuse:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    started = time.perf_counter()
    run = mutmut("run", *args.patterns, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        print(f"mutmut run failed (exit {run.returncode})", file=sys.stderr)
        return run.returncode
    listing = mutmut("results", "--all", "true", capture_output=True).stdout
    status = dict(re.findall(r"^\s*(\S+): (.+)$", listing, flags=re.M))
    if args.patterns:  # results of other modules (an earlier run) are not this run's
        status = {n: v for n, v in status.items() if any(fnmatch(n, p) for p in args.patterns)}
    by_module: dict[str, Counter] = defaultdict(Counter)
    for name, verdict in status.items():
        by_module[name.split(".x")[0]][verdict] += 1

    print(f"mutation testing: {len(status)} mutants in {seconds:.0f} s\n")
    # timeouts count as killed, but shown apart: a hang in every child (see mutmut() above) looks
    # like a kill, so a module killed mostly by timeouts deserves a look
    print(f"{'module':<34} {'mutants':>8} {'killed':>8} {'timeout':>8} {'rate':>7}")
    for module, counts in sorted(by_module.items()):
        total, killed = sum(counts.values()), sum(counts[k] for k in KILLED)
        rate = 100 * killed / total
        print(f"{module:<34} {total:>8} {killed:>8} {counts['timeout']:>8} {rate:>6.1f}%")
    total = len(status)
    killed = sum(1 for verdict in status.values() if verdict in KILLED)
    rate = 100 * killed / total if total else 0.0
    timeouts = sum(1 for verdict in status.values() if verdict == "timeout")
    print(f"{'all':<34} {total:>8} {killed:>8} {timeouts:>8} {rate:>6.1f}%")

    reasons = recorded_reasons()
    survivors = sorted(name for name, verdict in status.items() if verdict not in KILLED)
    print(f"\n{len(survivors)} not killed (reasons: {REASONS_FILE.relative_to(ROOT)}):")
    unexplained = []
    for name in survivors:
        reason = reasons.get(name)
        print(f"  {name} [{status[name]}]: {reason or 'NO REASON RECORDED'}")
        if reason is None:
            unexplained.append(name)
    for name in unexplained:
        print(f"\n--- {name} (add a test that kills it, or record why none can)")
        print(mutmut("show", name, capture_output=True).stdout.strip())
    if rate < THRESHOLD:
        print(f"\nkill rate {rate:.1f}% is below {THRESHOLD:.0f}%", file=sys.stderr)
        return 1
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
