"""`model.source` resolved and checked once: what kind it is, where its files are, its parts as
their files say. Every later step (validation, resolve, load, load_part, estimate, sensitivity)
takes this object instead of a path, so a model folder is read once per plan. Torch-free.

A local folder (or a hub snapshot in the local cache) is untrusted: before its files are read
it is scanned for entries a library would hang on (FIFOs, sockets, devices) and bounded in size
(parts, files); model_index.json and each part's config.json are read by qconf's bounded reader
(qconf.source.files)."""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from qconf.errors import ModelSourceError, Problem
from qconf.source.files import read_json
from qconf.source.parts import (
    TINY_PIPELINES,
    PipelineParts,
    SourceKind,
    from_model_index,
    hub_cache_index,
    parts_from_table,
    source_kind,
    tiny_parts,
    unread_weights,
)
from qconf.source.table import load_table
from qconf.trust.reading import bad_file, on_pseudo_filesystem
from qconf.trust.userpath import user_path

MAX_FOLDER_ENTRIES = 10_000  # files and folders looked at in one pipeline folder, all levels
MAX_FOLDER_DEPTH = 8


@dataclass(frozen=True)
class ModelSource:
    given: str  # model.source as the plan says it
    kind: SourceKind  # "tiny" | "folder" | "hub"
    parts: PipelineParts
    folder: Path | None = None  # the local pipeline folder (a folder, a hub snapshot in cache)
    pipeline_asked: str | None = None  # model.pipeline as the plan says it

    def local_folder(self) -> Path | None:
        """The folder the pipeline loads from on this machine (None: a hub id not in the local
        cache). A tiny pipeline is built here on first use (imports torch)."""
        if self.kind == "tiny":
            from qconf.source.tiny import tiny_pipeline_path

            return _checked_cache_folder(tiny_pipeline_path(self.given))
        return self.folder

    def load_path(self) -> str:
        """What `from_pretrained` receives: the local folder, else the hub id (refused in one
        line, before torch is imported, when it cannot be downloaded from here)."""
        folder = self.local_folder()
        if folder is None:
            self.check_available()
        return str(folder) if folder is not None else self.given

    def check_available(self) -> None:
        """A hub id not in the local cache must be downloadable (qconf.source.hub): `qconf
        run`/`compare` ask before any run folder exists, a load before importing torch. Not
        part of validation: a plan for a model you have not downloaded yet is still valid."""
        if self.kind == "hub" and self.folder is None:
            from qconf.source.hub import check_downloadable

            check_downloadable(self.given)


def _checked_cache_folder(folder: Path) -> Path:
    """A built tiny pipeline in qconf's cache: the cache may be shared, so the folder gets the
    checks of any model folder, and code in it (which qconf never writes) is refused."""
    parts = read_folder(folder)
    reasons = [parts.custom_code] + [p.custom_code for p in parts.parts.values()]
    reason = next((r for r in reasons if r), None)
    if reason is not None:
        raise ModelSourceError(
            Problem(
                str(folder),
                f"the cached tiny pipeline was changed: {reason}",
                "delete the folder; qconf builds it again",
            )  # fmt: skip
        )
    return folder


def open_source(source: str, pipeline: str | None) -> tuple[ModelSource | None, list[Problem]]:
    """The source `model.source` names, read and checked once; problems say why it cannot be."""
    table = load_table()
    if pipeline is not None and pipeline not in table:
        return None, [
            Problem(
                "model.pipeline",
                f"unknown pipeline class '{pipeline}'",
                "use a class name of the installed diffusers (e.g. FluxPipeline) or null",
            )
        ]
    kind = source_kind(source)
    folder: Path | None = None
    if kind == "tiny":
        found = tiny_parts(source)
    elif kind == "folder":
        folder = user_path(source, "model.source")
        if not os.path.lexists(folder / "model_index.json"):  # a FIFO there: read_folder says
            return None, [
                Problem(
                    "model.source",
                    f"'{source}' has no model_index.json",
                    "point model.source at a diffusers pipeline folder (save_pretrained output)",
                )
            ]
        found = read_folder(folder)
    else:
        cached = hub_cache_index(source)
        if cached is not None:
            folder = cached.parent
            found = read_folder(folder)
        elif pipeline is not None:
            found = parts_from_table(pipeline, f"{pipeline} (parts table)")
        else:
            return None, [
                Problem(
                    "model.pipeline",
                    f"cannot tell the parts of '{source}': not a folder, not in the local cache",
                    "set model.pipeline (e.g. FluxPipeline), or pick a model= option or a folder",
                )
            ]
    if pipeline is not None and found.pipeline != pipeline:
        return None, [
            Problem(
                "model.pipeline",
                f"'{pipeline}' but {found.origin} is a {found.pipeline}",
                f"set model.pipeline={found.pipeline} or null",
            )
        ]
    return ModelSource(source, kind, found, folder, pipeline), []


def read_folder(folder: Path) -> PipelineParts:
    """A pipeline folder's parts, after the folder passed `check_folder_entries`, with the
    counts and sizes their config.json files give bounded (qconf.source.limits) before any
    library builds anything from them."""
    check_folder_entries(folder)
    found = from_model_index(folder / "model_index.json")
    from qconf.source.limits import check_pipeline_configs  # folders only: not on every import

    check_pipeline_configs({name: part.config for name, part in found.parts.items()}, folder)
    return found


def check_folder_entries(folder: Path) -> None:
    """Refuse a pipeline folder holding an entry a library would block on or never finish
    reading (FIFO, socket, device, a kernel file, a link to one), a JSON file larger than any
    config, a weight index pointing outside its part folder, or more entries than a pipeline
    has. Looks at the folder and each part folder (where libraries read), following links as
    they do."""
    seen = 0
    for path in _entries(folder):
        seen += 1
        if seen > MAX_FOLDER_ENTRIES:
            raise ModelSourceError(
                Problem(
                    str(folder),
                    f"holds more than {MAX_FOLDER_ENTRIES:,} files and folders",
                    "point model.source at a pipeline folder",
                )  # fmt: skip
            )
        try:
            info = os.stat(path)
        except OSError:
            continue  # a dangling link or a loop: the library reports it if it reads it
        if stat.S_ISDIR(info.st_mode):
            continue
        if not stat.S_ISREG(info.st_mode) or on_pseudo_filesystem(path):
            raise ModelSourceError(
                Problem(
                    str(path),
                    "is not a regular file (a FIFO, socket, device or kernel file)",
                    "remove it from the model folder",
                )  # fmt: skip
            )
        if path.suffix not in _WEIGHT_SUFFIXES and info.st_size > MAX_LIBRARY_FILE_BYTES:
            raise ModelSourceError(
                Problem(
                    str(path),
                    f"is {info.st_size:,} bytes; no config, tokenizer file or index is that large "
                    f"(qconf's limit for files other than weights: {MAX_LIBRARY_FILE_BYTES:,})",
                    "replace the file",
                )  # fmt: skip
            )
        if path.name.endswith(".index.json"):
            check_weight_index(path)


# The libraries read every other file whole themselves (configs, tokenizer files, chat
# templates, weight indexes): a big tokenizer.json is ~35 MB. Weights are read by length.
MAX_LIBRARY_FILE_BYTES = 64 * 2**20
_WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx",
                              ".msgpack", ".h5", ".pb"})  # fmt: skip


def weight_files_problem(folder: Path, library: str) -> tuple[str, str] | None:
    """(what, fix) when a part folder cannot give `library` its weights as qconf loads them:
    no .safetensors file (pickles are never read), or none with the name the library reads; a
    weight index naming a file outside the folder raises, as for a pipeline folder."""
    names = [entry.name for entry in itertools.islice(folder.iterdir(), MAX_FOLDER_ENTRIES)]
    if not any(name.endswith(".safetensors") for name in names):
        return "holds no .safetensors weights", "give a folder with .safetensors weights"
    unread = unread_weights(names, library)
    if unread is not None:
        return f"has its weights in {unread[0]}, which {library} does not read", (
            f"rename the file to {unread[1]}"
        )
    for name in names:
        if name.endswith(".index.json"):
            check_weight_index(folder / name)
    return None


def check_weight_index(index: Path) -> None:
    """A sharded checkpoint's index may name only weight files beside it: a name with a path in
    it would make the library read (or block on) a file outside the model folder."""
    data = read_json(index, "the weight index", MAX_LIBRARY_FILE_BYTES)
    weight_map = data.get("weight_map", {})
    if not isinstance(weight_map, dict):
        raise bad_file(index, "weight_map is not a mapping", "re-save the model")
    for file in set(weight_map.values()):
        plain = isinstance(file, str) and file == os.path.basename(file) and file not in (".", "..")
        if not plain or not file.endswith((".safetensors", ".bin")):
            raise bad_file(index, f"weight_map names '{str(file)[:80]}', not a weight file beside "
                           "the index", "re-save the model")  # fmt: skip
        target = index.parent / file
        if target.exists() and not target.is_file():
            raise bad_file(target, "is not a regular file", "remove it from the model folder")


def _entries(folder: Path) -> Iterator[Path]:
    """Every entry under the folder, breadth first, at any depth libraries read (a tokenizer's
    `additional_chat_templates/`), links followed as libraries follow them; the walk stops past the
    entry bound (the caller refuses the folder then)."""
    try:
        with os.scandir(folder) as listing:
            level = list(itertools.islice(listing, MAX_FOLDER_ENTRIES + 1))
    except OSError as exc:
        raise ModelSourceError(
            Problem(str(folder), f"cannot list it ({exc.strerror or exc})", "check the path")
        ) from None
    seen = 0
    for _ in range(MAX_FOLDER_DEPTH):
        below = []
        for entry in level:
            seen += 1
            yield Path(entry.path)
            if seen > MAX_FOLDER_ENTRIES:
                return
            if not entry.name.startswith(".") and _is_dir(entry):
                below.append(entry.path)
        level = []
        for path in below:
            try:
                with os.scandir(path) as listing:
                    level += itertools.islice(listing, MAX_FOLDER_ENTRIES + 1 - seen)
            except OSError:
                continue
        if not level:
            return


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # libraries follow links; the depth and entry bounds end loops
    except OSError:  # a link loop, a name too long: not a part folder
        return False


__all__ = ["TINY_PIPELINES", "ModelSource", "open_source"]
