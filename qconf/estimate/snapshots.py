"""Config-only snapshots: where `qconf estimate` finds a hub model's config files.

In order: the local Hugging Face cache (a real download), a snapshot shipped in the wheel
(qconf/data/snapshots/<owner>--<name>/: model_index.json and each weight-bearing part's
config.json, every file carrying the `_qconf_source` it was copied from, see SOURCES.md), then,
with network, the hub itself asked for `model_index.json` and `*/config.json` only (never a
weight, never a tokenizer). Offline the error says exactly which files are missing.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from qconf.errors import ModelSourceError, Problem

CONFIG_PATTERNS = ["model_index.json", "*/config.json"]


def slug(repo_id: str) -> str:
    """Folder name of a hub id's snapshot (as the hub cache spells it, without `models--`)."""
    return repo_id.replace("/", "--")


def snapshots_root() -> Path:
    return Path(str(resources.files("qconf.data").joinpath("snapshots")))


def snapshot_folder(repo_id: str) -> Path | None:
    """The shipped config-only snapshot of `repo_id`, or None."""
    folder = snapshots_root() / slug(repo_id)
    return folder if (folder / "model_index.json").is_file() else None


def is_shipped(folder: Path) -> bool:
    """Whether `folder` is (inside) a snapshot shipped with qconf."""
    return folder.resolve().is_relative_to(snapshots_root().resolve())


def shipped() -> dict[str, Path]:
    """{hub id: snapshot folder} for every shipped snapshot."""
    root = snapshots_root()
    return {
        p.parent.name.replace("--", "/", 1): p.parent
        for p in sorted(root.glob("*/model_index.json"))
    }


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def fetch_configs(repo_id: str, pipeline: str | None = None) -> Path:
    """Download `model_index.json` and `*/config.json` of `repo_id` into the hub cache (no
    weights, no tokenizer files) and return the snapshot folder; a user error when offline."""
    wanted = _expected_files(repo_id, pipeline)
    if _offline():
        raise ModelSourceError(_missing(repo_id, wanted, "HF_HUB_OFFLINE is set"))
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, allow_patterns=CONFIG_PATTERNS))
    except Exception as exc:  # network, auth (gated repos), unknown repo: all user-side
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise ModelSourceError(_missing(repo_id, wanted, reason)) from exc
    if not (folder / "model_index.json").is_file():
        raise ModelSourceError(
            Problem(repo_id, "has no model_index.json on the hub", "give a diffusers pipeline")
        )
    return folder


def _expected_files(repo_id: str, pipeline: str | None) -> list[str]:
    """The files an estimate of `repo_id` needs: model_index.json and, when the plan or a
    model= option names its pipeline class, each required weight-bearing part's config.json."""
    from qconf.plan.conftree import group_options
    from qconf.source.table import load_table
    from qconf.trust.yamlsafe import load_yaml_file

    for path in group_options("model", ()).values():
        data = load_yaml_file(path) or {}
        if pipeline is None and data.get("source") == repo_id:
            pipeline = data.get("pipeline")
    parts = load_table().get(pipeline or "", {})
    names = sorted(n for n, p in parts.items() if p["weights"] and not p["optional"])
    return ["model_index.json", *(f"{name}/config.json" for name in names)]


def _missing(repo_id: str, files: list[str], reason: str) -> Problem:
    return Problem(
        "model.source",
        f"'{repo_id}' has no built-in snapshot and no local copy, and its config files could "
        f"not be fetched ({reason}); missing: {', '.join(files)}",
        "go online once (only those config files are downloaded), or copy them into a local "
        "folder and pass --folder DIR",
    )
