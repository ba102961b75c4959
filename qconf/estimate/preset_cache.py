"""Preset estimates kept between runs, so that `qconf list presets --fits` answers without
importing torch.

A preset's estimate follows from the conf files its composition can read (qconf's tree and the
user's --config-dir), the config snapshot of its model shipped with qconf, qconf's code and the
installed libraries that build and quantize the model. Those are hashed into a key (file
contents, never times; libraries by their installed version from importlib.metadata, nothing
imported): an estimate stored under the same key is the estimate qconf would compute now.

Two stores:
- `qconf/data/preset_estimates.json` (shipped): the built-in presets, computed under the key it
  names (qconf's conf tree, the snapshots and the library versions; qconf's code ships with it
  and tests/test_fits.py keeps it equal to a fresh computation). Used for the built-in presets
  when its key is this installation's and a --config-dir shadows none of qconf's files.
- `QCONF_CACHE/presets/<key>.json`: everything else (a user's presets, the built-in ones under
  other library versions), with qconf's code in the key too.
Both are read as data from outside: a regular file under a size cap, bounded JSON, validated by
pydantic, naming the key it was written for; anything else is not used (the user cache says so
on stderr) and the presets are estimated again. A preset that cannot be estimated is never
stored: it is tried again on every run, so its reason is always today's.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from qconf.errors import QconfError
from qconf.estimate.preset_estimate import PresetEstimate

FORMAT = 1  # bump when what is stored, or how a key is made, changes
SHIPPED = "preset_estimates.json"
FOLDER = "presets"  # under qconf's cache root
WHERE = "QCONF_CACHE"
MAX_ENTRY_BYTES = 4 * 2**20  # ~150 bytes a preset
MAX_PRESETS = 20_000
MAX_BYTES = 2**50  # 1 PiB of weights: more is a forged number, not a model
# A --config-dir is hashed whole (every YAML file Hydra could read from it), within these
# bounds; a bigger or unreadable tree is not cached (its presets are estimated every run).
MAX_TREE_FILES = 5_000
MAX_TREE_BYTES = 64 * 2**20
MAX_TREE_DEPTH = 16
# What builds a part on the meta device and what decides its bytes; each backend's package
# comes from the registry.
MODEL_LIBRARIES = ("torch", "diffusers", "transformers", "accelerate")

Bytes = Annotated[int, Field(ge=0, le=MAX_BYTES)]
Text = Annotated[str, Field(min_length=1, max_length=1000)]
Key = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Stored(BaseModel):
    """One preset's estimate as stored (see PresetEstimate)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    model: Text
    bytes_unquantized: Bytes
    bytes: Bytes
    load_peak_bytes: Bytes

    @model_validator(mode="after")
    def _peak_holds_the_weights(self) -> Stored:
        if self.load_peak_bytes < self.bytes:  # each part peaks at its weights x a ratio >= 1
            raise ValueError("load_peak_bytes is below bytes")
        return self


class Entry(BaseModel):
    """A file of stored estimates: the key they were computed under and one per preset."""

    model_config = ConfigDict(extra="forbid", strict=True)
    key: Key
    presets: Annotated[dict[Text, Stored], Field(max_length=MAX_PRESETS)]
    versions: dict[Text, Text | None] = {}  # shipped file only: for people reading it


# --- the keys ---------------------------------------------------------------------------------


def builtin_key() -> str:
    """The built-in presets' inputs: qconf's conf tree, the shipped snapshots, the versions."""
    from qconf.estimate.snapshots import snapshots_root
    from qconf.plan.conftree import conf_dir

    return _hash(
        format=FORMAT,
        conf=_own_tree(conf_dir(), (".yaml",)),
        snapshots=_own_tree(snapshots_root(), (".json",)),
        versions=library_versions(),
    )


def code_hash() -> str:
    """qconf's own code and data (the shipped estimates and snapshots are keyed apart)."""
    package = Path(__file__).resolve().parents[1]
    return _own_tree(package, (".py", ".json"), skip=("snapshots", SHIPPED, "__pycache__"))


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries an estimate depends on (no import)."""
    from qconf.backends import REGISTRY

    names = {*MODEL_LIBRARIES, *(spec.distribution for spec in REGISTRY.values())}
    return {name: _installed(name) for name in sorted(names)}


def _installed(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _hash(**fields: Any) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _own_tree(root: Path, suffixes: tuple[str, ...], skip: tuple[str, ...] = ()) -> str:
    """Hash of qconf's own files under `root` (relative path and bytes of each)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix in suffixes and not skip_path(path, root, skip) and path.is_file():
            digest.update(f"{path.relative_to(root).as_posix()}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def skip_path(path: Path, root: Path, skip: tuple[str, ...]) -> bool:
    return any(part in skip for part in path.relative_to(root).parts)


def user_tree(folder: Path) -> tuple[str, frozenset[str]] | None:
    """(hash, relative paths) of every YAML file under a user's config dir, links followed as
    Hydra follows them; None when the tree is over the bounds or a file cannot be read (then
    nothing of it is cached). Read through qconf's bounded reader: a FIFO is never opened."""
    from qconf.trust.reading import read_regular

    digest, paths, total = hashlib.sha256(), set(), 0
    for top, dirs, files in os.walk(folder, followlinks=True):
        depth = len(Path(top).relative_to(folder).parts)
        if depth > MAX_TREE_DEPTH:
            return None  # a link loop, or a tree no config needs
        dirs.sort()
        for name in sorted(files):
            if not name.endswith((".yaml", ".yml")):
                continue
            path = Path(top, name)
            relative = path.relative_to(folder).as_posix()
            try:
                if not stat.S_ISREG(os.stat(path).st_mode):
                    return None
                data = read_regular(path, "a config file", MAX_TREE_BYTES - total)
            except (OSError, QconfError):
                return None
            total += len(data)
            paths.add(relative)
            if len(paths) > MAX_TREE_FILES:
                return None
            digest.update(f"{relative}\0".encode())
            digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest(), frozenset(paths)


def _shadows(user_paths: frozenset[str]) -> bool:
    """Whether a user's file stands in for one of qconf's (same group and name): the built-in
    presets may then compose differently, so none of them is taken from the shipped file."""
    from qconf.plan.conftree import conf_dir

    root = conf_dir()
    return any((root / Path(p).with_suffix(".yaml")).is_file() for p in user_paths)


# --- reading and writing ----------------------------------------------------------------------


def shipped_path() -> Path:
    return Path(str(resources.files("qconf.data").joinpath(SHIPPED)))


def read_shipped() -> Entry | None:
    return _read(shipped_path(), notice=False)


def entry_path(key: str) -> Path:
    from qconf.source.tiny import cache_root

    return cache_root() / FOLDER / f"{key}.json"


def _read(path: Path, key: str | None = None, *, notice: bool = True) -> Entry | None:
    """The entry at `path` if it is one qconf wrote (for `key`, when given), else None."""
    from pydantic import ValidationError

    from qconf.source.files import parse_json
    from qconf.trust.reading import read_regular

    try:
        os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError:
        pass  # the reader says why
    try:
        # follow_symlinks=False: a link planted as an entry is refused on open
        text = read_regular(path, "stored estimates", MAX_ENTRY_BYTES, follow_symlinks=False)
        entry = Entry.model_validate(parse_json(text, path, "stored estimates"))
    except QconfError as exc:
        why = exc.problems[0].what
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(p) for p in first["loc"][:4])
        why = f"is not what qconf writes ({at}: {first['msg']})"
    else:
        if key is None or entry.key == key:
            return entry
        why = "was not written for this key (copied or forged)"
    if notice:
        from qconf.text import safe

        print(f"note: {safe(str(path))}: {safe(why)} — estimated again", file=sys.stderr)
    return None


def _cache_folder_usable() -> bool:
    """Whether QCONF_CACHE and its presets folder are real folders or missing (a link, or a
    file in their place: the cache is not used, said once)."""
    from qconf.source.tiny import cache_root
    from qconf.text import safe

    root = cache_root()
    for folder in (root, root / FOLDER):
        try:
            info = os.lstat(folder)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            print(
                f"note: {safe(str(folder))} is not a real folder: preset estimates are not "
                "cached (point QCONF_CACHE at a folder only you write)",
                file=sys.stderr,
            )
            return False
    return True


def write(key: str, presets: dict[str, Stored], **extra: Any) -> None:
    """Store `presets` under `key` in the cache folder, atomically; a cache qconf cannot write
    is a notice, never an error (the listing itself is done)."""
    from qconf.source.tiny import cache_root
    from qconf.text import safe
    from qconf.trust.userpath import real_folder, replace_in

    payload = _payload(key, presets, **extra)
    try:
        with real_folder(cache_root(), [FOLDER], WHERE) as folder:
            replace_in(folder, f"{key}.json", payload, WHERE)
    except QconfError as exc:
        print(f"note: preset estimates not cached: {safe(exc.lines[0])}", file=sys.stderr)


def _payload(key: str, presets: dict[str, Stored], **extra: Any) -> bytes:
    data = {
        "key": key,
        "presets": {name: presets[name].model_dump() for name in sorted(presets)},
        **extra,
    }
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


def stored(estimate: PresetEstimate) -> Stored | None:
    """What is kept of an estimate: only a complete one."""
    if estimate.missing or None in (
        estimate.bytes_unquantized, estimate.bytes, estimate.load_peak_bytes
    ):  # fmt: skip
        return None
    return Stored(model=estimate.source, bytes_unquantized=estimate.bytes_unquantized,
                  bytes=estimate.bytes, load_peak_bytes=estimate.load_peak_bytes)  # fmt: skip


def restored(name: str, found: Stored) -> PresetEstimate:
    return PresetEstimate(name, found.model, found.bytes_unquantized, found.bytes,
                          found.load_peak_bytes)  # fmt: skip


# --- the estimates ----------------------------------------------------------------------------

Compute = Callable[[str, "str | Path | None"], PresetEstimate]


def cached_estimates(
    names: Iterable[str], config_dir: str | Path | None, compute: Compute
) -> list[PresetEstimate]:
    """Each of `names` (presets of qconf's tree and `config_dir`): stored, else `compute`d
    and stored. The order of `names` is kept."""
    from qconf.plan.conftree import group_options
    from qconf.trust.userpath import user_path

    names = list(names)
    base = builtin_key()
    tree = None
    if config_dir is not None:
        tree = user_tree(user_path(config_dir, "--config-dir").resolve())
    builtin = set(group_options("preset"))
    # The built-in presets keep the shipped key unless a user's file may change them.
    apart = config_dir is None or (tree is not None and not _shadows(tree[1]))
    own = [n for n in names if n in builtin and apart]
    theirs = [n for n in names if n not in own]
    found: dict[str, PresetEstimate] = {}
    groups: list[tuple[list[str], str | None]] = []
    if own:
        shipped = read_shipped()
        if shipped is not None and shipped.key == base:
            found.update((n, restored(n, shipped.presets[n])) for n in own if n in shipped.presets)
        groups.append(([n for n in own if n not in found], _hash(builtin=base, code=code_hash())))
    if theirs:
        key = _hash(builtin=base, user=tree[0], code=code_hash()) if tree is not None else None
        groups.append((theirs, key))
    usable = _cache_folder_usable()
    for group, key in groups:
        if group:
            found.update(_group(group, key if usable else None, config_dir, compute))
    return [found[n] for n in names]


def _group(
    names: list[str], key: str | None, config_dir: str | Path | None, compute: Compute
) -> dict[str, PresetEstimate]:
    """`names` from the user cache entry under `key` (None: not cached), the rest computed
    and the entry rewritten with them."""
    entry = _read(entry_path(key), key) if key is not None else None
    kept = dict(entry.presets) if entry is not None else {}
    found = {n: restored(n, kept[n]) for n in names if n in kept}
    added = False
    for name in names:
        if name not in found:
            found[name] = compute(name, config_dir)
            keep = stored(found[name])
            if keep is not None:
                kept[name], added = keep, True
    if added and key is not None:
        write(key, kept)
    return found


# --- the shipped file -------------------------------------------------------------------------


def write_shipped(estimates: list[PresetEstimate], path: Path | None = None) -> Path:
    """Write the shipped file from every built-in preset's fresh estimate (a preset that
    cannot be estimated is an error: every built-in preset has a snapshot)."""
    broken = [f"{e.preset}: {e.missing}" for e in estimates if stored(e) is None]
    if broken:
        raise SystemExit("not estimated: " + "; ".join(broken))
    presets = {e.preset: stored(e) for e in estimates}
    target = path or shipped_path()
    target.write_bytes(_payload(builtin_key(), presets, versions=library_versions()))  # type: ignore[arg-type]
    return target
