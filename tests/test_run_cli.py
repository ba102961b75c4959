"""`qconf run` / `load` / `compare` answers that come before any work: a hub model that is not
downloaded while offline (one line, before torch, no run folder), Ctrl-C in a run (one line,
exit 130, nothing left), qconf's own `--help` pages, unknown flags. Each command runs in a
fresh process (tests/qconf_driver.py), which also reports whether torch was imported."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from qconf_driver import TORCH_FREE, errors, qconf

from qconf.cli.hydra_run import _Sweep, interrupted_text
from qconf.source import hub

SD3 = "stabilityai/stable-diffusion-3-medium-diffusers"  # sd3-* presets; never downloaded here


# --- a hub model that is not downloaded, offline (the tests run with HF_HUB_OFFLINE=1) ---


@pytest.mark.parametrize(
    "args",
    [
        ["run", "preset=sd3-int8wo"],
        ["load", "preset=sd3-int8wo"],
        ["compare", "preset=sd3-int8wo,sd3-quanto-int8"],  # one line for the sweep, not per job
        ["run", "-m", "preset=sd3-int8wo", "run.seed=0,1"],
    ],
)
def test_an_offline_hub_model_is_one_line_before_torch_and_leaves_no_folder(
    tmp_path: Path, args: list[str]
) -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # conftest
    result = qconf(*args, cwd=tmp_path)
    assert result.returncode == 2
    [line] = errors(result)
    assert line.startswith(f"error: model.source: '{SD3}' is not in the local Hugging Face cache")
    assert "offline (HF_HUB_OFFLINE=1)" in line and f"hf download {SD3}" in line
    assert "local pipeline folder" in line
    assert TORCH_FREE in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_validate_still_accepts_a_plan_for_a_model_not_downloaded(tmp_path: Path) -> None:
    result = qconf("validate", "preset=sd3-int8wo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_offline_is_decided_from_the_environment_without_the_hub_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", *hub._PROXY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    looked_up: list[str] = []

    def no_such_host(host: str, *args: object, **kwargs: object) -> None:
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    assert "huggingface.co does not resolve" in str(hub.offline_reason())
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.org")
    assert "hub.example.org does not resolve" in str(hub.offline_reason())
    assert looked_up == ["huggingface.co", "hub.example.org"]
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")  # a proxy may resolve what we cannot
    assert hub.offline_reason() is None
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")  # huggingface_hub reads both variables
    assert hub.offline_reason() == "this machine is offline (TRANSFORMERS_OFFLINE=yes)"
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [])  # resolves: may download
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.delenv("HTTPS_PROXY")
    assert hub.offline_reason() is None


def test_the_hub_cache_folder_is_the_one_huggingface_hub_uses(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from huggingface_hub import constants

    assert hub.hub_cache_dir() == Path(os.environ["HF_HUB_CACHE"]) == Path(constants.HF_HUB_CACHE)
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "old"))
    assert hub.hub_cache_dir() == tmp_path / "old"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "new"))
    assert hub.hub_cache_dir() == tmp_path / "new"


# --- Ctrl-C in qconf run ---


def test_ctrl_c_in_a_run_is_one_line_with_exit_130_and_no_folder(tmp_path: Path) -> None:
    result = qconf("run", "model=tiny-flux", cwd=tmp_path, interrupt=1)
    assert result.returncode == 130
    [line] = errors(result)
    assert line.startswith("interrupted: the job in ") and str(tmp_path / "outputs") in line
    assert line.endswith("did not finish (removed) — run the command again")
    assert list(tmp_path.iterdir()) == []  # outputs/<date>/<time> and its parents removed


def test_ctrl_c_in_a_sweep_names_the_jobs_that_finished_and_how_to_gather(tmp_path: Path) -> None:
    done = [str(tmp_path / "sweep" / name) for name in ("0", "1")]
    sweep = _Sweep(None, "qconf", multirun=True, finished=done,
                   interrupted=str(tmp_path / "sweep" / "2"))  # fmt: skip
    text = interrupted_text(sweep)
    assert text.startswith(f"2 job(s) finished in {tmp_path / 'sweep'} (0, 1); the job in ")
    assert f"gather them: qconf compare {tmp_path / 'sweep'}" in text
    nothing = interrupted_text(_Sweep(None, "qconf", multirun=True))
    assert nothing == "no job finished in this process — run the command again"


# --- help and flags ---


def test_run_help_is_qconfs_own_page(tmp_path: Path) -> None:
    result = qconf("run", "--help", cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == ""
    page = result.stdout
    for text in ("usage: qconf run", "model=NAME", "tiny-flux (default)", "preset=NAME",
                 "quant.mapping.<part>=<option>", "int8wo", "run.steps=N", "run.seed=N",
                 "outputs/<date>/<time>/", "hydra.run.dir=DIR", "exit codes", "130",
                 "--hydra-help"):  # fmt: skip
        assert text in page, text
    steps = next(line for line in page.splitlines() if line.strip().startswith("run.steps"))
    assert steps.split()[-1] == "2"  # the default, from qconf's conf tree
    assert "Powered by Hydra" not in page and "backend: " not in page  # no unusable group
    assert TORCH_FREE in page
    assert list(tmp_path.iterdir()) == []


def test_compare_help_says_where_output_goes_and_how_to_resume(tmp_path: Path) -> None:
    result = qconf("compare", "--help", cwd=tmp_path)
    assert result.returncode == 0
    for text in ("usage: qconf compare", "--no-baseline", "multirun/<date>/<time>/",
                 "hydra.sweep.dir=DIR", "resume:", "sweep.json", "exit codes"):  # fmt: skip
        assert text in result.stdout, text


def test_hydras_own_help_stays_behind_hydra_help(tmp_path: Path) -> None:
    result = qconf("run", "--hydra-help", cwd=tmp_path)
    assert result.returncode == 0 and "Hydra" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--multirn", "model=tiny-flux"], "unknown flag '--multirn' — did you mean "
         "'--multirun'?"),
        (["compare", "--no-baselin", "quant.mapping.transformer=int8wo"], "did you mean "
         "'--no-baseline'?"),
        (["run", "--cfg", "model=tiny-flux"], "--cfg takes job, hydra or all"),
        (["compare", "--cfg", "job", "quant.mapping.transformer=int8wo"], "a flag of qconf run"),
    ],
)  # fmt: skip
def test_a_wrong_flag_is_one_line_before_anything_runs(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = qconf(*args, cwd=tmp_path)
    assert result.returncode == 2
    [line] = errors(result)
    assert message in line
    assert TORCH_FREE in result.stdout
    assert list(tmp_path.iterdir()) == []
