"""Test session set-up: offline, and tiny pipelines cached in a fresh folder per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings

os.environ["HF_HUB_OFFLINE"] = "1"
if "QCONF_CACHE" not in os.environ:
    os.environ["QCONF_CACHE"] = tempfile.mkdtemp(prefix="qconf-test-cache-")
    atexit.register(shutil.rmtree, os.environ["QCONF_CACHE"], ignore_errors=True)
warnings.filterwarnings("ignore", category=FutureWarning)
