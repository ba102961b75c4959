"""Test session set-up: offline, and tiny pipelines cached in a fresh folder per session."""

from __future__ import annotations

import os
import tempfile
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("QCONF_CACHE", tempfile.mkdtemp(prefix="qconf-test-cache-"))
warnings.filterwarnings("ignore", category=FutureWarning)
