"""Whether a hub model that is not in the local cache can be downloaded from here — decided
before torch is imported, so a run that cannot load says so in one line, in well under a
second, instead of diffusers' stack trace after the imports.

Decision (documented in the README): a hub id missing from the local cache is refused only when
the download is known to fail —
- offline mode is set (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE true, as huggingface_hub reads
  them), or
- the hub's host name does not resolve and no proxy is configured (a proxy may resolve names
  this machine cannot).
Anything else (the host resolves, a proxy is set) goes on to the normal download: a slow or
flaky network is the library's to report, never guessed here. Torch-free, hub-free."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from qconf.errors import ModelSourceError, Problem

_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub.constants.ENV_VARS_TRUE_VALUES
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY",
                    "http_proxy")  # fmt: skip
DEFAULT_ENDPOINT = "https://huggingface.co"


def hub_cache_dir() -> Path:
    """The hub cache folder as huggingface_hub computes it (HF_HUB_CACHE, the older
    HUGGINGFACE_HUB_CACHE, else HF_HOME/hub, HF_HOME defaulting under XDG_CACHE_HOME)."""
    home = os.path.expanduser(
        os.path.expandvars(
            os.environ.get("HF_HOME")
            or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
        )
    )
    cache = (
        os.environ.get("HF_HUB_CACHE")
        or os.environ.get("HUGGINGFACE_HUB_CACHE")
        or os.path.join(home, "hub")
    )
    return Path(os.path.expanduser(os.path.expandvars(cache)))


def offline_reason() -> str | None:
    """Why a download cannot happen from here (None: it may)."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").upper() in _TRUE:
            return f"this machine is offline ({name}={os.environ[name]})"
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    endpoint = os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    host = urlparse(endpoint).hostname
    if not host:
        return None
    try:
        socket.getaddrinfo(host, 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return f"the hub cannot be reached from here ({host} does not resolve)"
    except OSError:
        return None
    return None


def check_downloadable(repo_id: str) -> None:
    """Refuse, in one line, a hub id not in the local cache that cannot be downloaded."""
    reason = offline_reason()
    if reason is None:
        return
    raise ModelSourceError(
        Problem(
            "model.source",
            f"'{repo_id}' is not in the local Hugging Face cache ({hub_cache_dir()}) and {reason}",
            f"download it on a machine with network (`hf download {repo_id}`) and copy the "
            "cache folder here (or set HF_HUB_CACHE to it), or set model.source to a local "
            "pipeline folder or a tiny-* model",
        )
    )


__all__ = ["check_downloadable", "hub_cache_dir", "offline_reason"]
