"""`qconf list`: `--fits SIZE` means the load fits (peak while loading), `--json` on every form,
and the stored preset estimates (qconf.estimate.preset_cache): the shipped file equals a fresh
computation, a changed --config-dir preset is estimated again, a corrupt or forged entry is not
believed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from qconf.cli.list_cmd import LISTINGS, WHAT
from qconf.cli.main import main as cli_main
from qconf.estimate import preset_cache
from qconf.estimate.presets import (
    SIZE_RULE,
    PresetEstimate,
    estimate_preset,
    estimate_presets,
    fitting,
    over_by_peak,
)

GIB = 2**30
USER_PRESET = "# @package _global_\ndefaults:\n  - override /model: sdxl\n"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty QCONF_CACHE of this test's own."""
    monkeypatch.setenv("QCONF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert cli_main(["list", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# --- the peak rule ----------------------------------------------------------------------------


def test_a_preset_fits_by_its_peak_and_one_over_by_peak_alone_is_listed_apart() -> None:
    both = PresetEstimate("both", "m", 30 * GIB, 8 * GIB, 9 * GIB)
    peak = PresetEstimate("peak", "m", 30 * GIB, 10 * GIB, 13 * GIB)  # weights fit, peak not
    over = PresetEstimate("over", "m", 30 * GIB, 14 * GIB, 15 * GIB)
    broken = PresetEstimate("broken", "?", None, None, None, "why")
    estimates = [both, peak, over, broken]
    assert fitting(estimates, 12 * GIB) == [both]
    assert over_by_peak(estimates, 12 * GIB) == [peak]
    assert fitting(estimates, 13 * GIB) == [both, peak]  # at the budget exactly: it fits


def test_fits_lists_only_presets_whose_peak_fits_and_says_which_are_over_by_peak(
    capsys: pytest.CaptureFixture[str],
) -> None:
    budget = 12 * GIB
    out = _json(capsys, "presets", "--fits", "12GiB")
    assert out["budget_bytes"] == budget and out["fits"]
    assert all(row["load_peak_bytes"] <= budget for row in out["fits"])
    assert all(row["bytes"] <= row["load_peak_bytes"] for row in out["fits"])
    peaks = [row["load_peak_bytes"] for row in out["fits"]]
    assert peaks == sorted(peaks)
    over = {row["preset"]: row for row in out["over_by_peak"]}
    # quanto int4 on Flux: 10.2 GiB of weights, ~24 GiB while quantizing on load (2.4x)
    assert "flux-quanto-int4" in over and "flux-quanto-int4" not in {
        r["preset"] for r in out["fits"]
    }
    for row in over.values():
        assert row["bytes"] <= budget < row["load_peak_bytes"]
        assert row["over_by_bytes"] == row["load_peak_bytes"] - budget
    # the table says the same, in a section of its own
    assert cli_main(["list", "presets", "--fits", "12GiB"]) == 0
    text = capsys.readouterr().out
    left_out = text[text.index("over by peak while loading") :]
    assert (
        "flux-quanto-int4" in left_out
        and "flux-quanto-int4" not in text[: len(text) - len(left_out)]
    )


def test_every_size_flag_states_one_rule(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["list", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert " ".join(SIZE_RULE.split()) in help_text and "peak while loading" in help_text


# --- --json on every form ---------------------------------------------------------------------


@pytest.mark.parametrize("what", [*WHAT, None])
def test_every_list_form_prints_json_with_the_table_rows(
    what: str | None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _json(capsys, *([what] if what else []))
    forms = [what] if what else list(WHAT)
    assert list(out) == forms
    assert cli_main(["list", *([what] if what else [])]) == 0
    table = capsys.readouterr().out
    for form in forms:
        listing = LISTINGS[form](())
        assert out[form] == json.loads(json.dumps(listing.rows, default=str)) and out[form]
        assert list(out[form][0]) == [c.key for c in listing.columns]
        first = listing.columns[0].key
        assert all(row[first] in table for row in out[form])  # same rows as the table


# --- the stored estimates ---------------------------------------------------------------------


def test_the_shipped_estimates_are_a_fresh_computation_of_the_built_in_presets() -> None:
    shipped = preset_cache.read_shipped()
    fix = "run `python -m qconf.estimate.presets --write`"
    assert shipped is not None and shipped.key == preset_cache.builtin_key(), fix
    fresh = {e.preset: preset_cache.stored(e) for e in estimate_presets(cached=False)}
    assert None not in fresh.values(), fresh
    assert shipped.presets == fresh, fix


def test_a_listing_of_the_built_in_tree_never_imports_torch(tmp_path: Path) -> None:
    import subprocess

    code = (
        "import sys; from qconf.cli.main import main; "
        "assert main(['list', 'presets', '--fits', '12GiB', '--json']) == 0; "
        "heavy = {'torch', 'diffusers', 'transformers'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    env = {"QCONF_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)


class Counting:
    """estimate_preset, counting the presets it really estimates."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, name: str, config_dir: str | Path | None) -> PresetEstimate:
        self.names.append(name)
        return estimate_preset(name, config_dir)


def _user_tree(tmp_path: Path, text: str = USER_PRESET) -> Path:
    (tmp_path / "conf" / "preset").mkdir(parents=True, exist_ok=True)
    (tmp_path / "conf" / "preset" / "mine.yaml").write_text(text)
    return tmp_path / "conf"


def _estimates(tree: Path) -> tuple[dict[str, PresetEstimate], list[str]]:
    from qconf.estimate.presets import preset_names

    compute = Counting()
    found = preset_cache.cached_estimates(preset_names(tree), tree, compute)
    return {e.preset: e for e in found}, compute.names


def test_a_user_preset_is_estimated_once_and_again_when_its_file_changes(
    tmp_path: Path, cache: Path
) -> None:
    tree = _user_tree(tmp_path)
    first, computed = _estimates(tree)
    assert computed == ["mine"]  # the built-in presets come from the shipped file
    assert first["mine"].bytes == first["mine"].bytes_unquantized  # nothing quantized
    again, computed = _estimates(tree)
    assert computed == [] and again == first
    _user_tree(tmp_path, USER_PRESET + "quant:\n  mapping:\n    unet: int8wo\n")
    changed, computed = _estimates(tree)
    assert computed == ["mine"]
    assert changed["mine"] == estimate_preset("mine", tree)
    assert changed["mine"].bytes < first["mine"].bytes


def test_a_broken_user_preset_is_never_stored_and_says_why_every_time(
    tmp_path: Path, cache: Path
) -> None:
    tree = _user_tree(tmp_path, "# @package _global_\nquant:\n  mapping:\n    unet: no-such\n")
    for _ in range(2):
        found, computed = _estimates(tree)
        assert computed == ["mine"] and "no-such" in (found["mine"].missing or "")


@pytest.mark.parametrize(
    "forge",
    [
        lambda data: "{not json",
        lambda data: json.dumps({**data, "key": "0" * 64}),  # written for another key
        lambda data: json.dumps(data).replace('"bytes": ', '"bytes": -'),  # negative
        lambda data: json.dumps(  # a peak below the weights
            {
                **data,
                "presets": {n: {**p, "load_peak_bytes": 1} for n, p in data["presets"].items()},
            }
        ),
        lambda data: json.dumps({**data, "extra": 1}),
    ],
    ids=["not-json", "other-key", "negative", "peak-below-weights", "unknown-field"],
)
def test_a_corrupt_or_forged_cache_entry_is_estimated_again(
    forge, tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = _user_tree(tmp_path)
    first, _ = _estimates(tree)
    (entry,) = [p for p in (cache / "presets").glob("*.json")
                if "mine" in json.loads(p.read_text())["presets"]]  # fmt: skip
    entry.write_text(forge(json.loads(entry.read_text())))
    capsys.readouterr()
    found, computed = _estimates(tree)
    assert computed == ["mine"] and found["mine"] == first["mine"]
    assert "estimated again" in capsys.readouterr().err
    assert json.loads(entry.read_text())["presets"]["mine"]["bytes"] == first["mine"].bytes


def test_a_user_file_standing_in_for_a_built_in_one_keeps_the_shipped_estimates_out(
    tmp_path: Path,
) -> None:
    assert preset_cache._shadows(frozenset({"backend/nf4.yaml"}))
    assert preset_cache._shadows(frozenset({"preset/flux-nf4.yml"}))
    assert preset_cache._shadows(frozenset({"qconf.yaml"}))
    assert not preset_cache._shadows(frozenset({"preset/mine.yaml", "backend/my-int8.yaml"}))
    tree = _user_tree(tmp_path)
    found = preset_cache.user_tree(tree)
    assert found is not None and found[1] == {"preset/mine.yaml"}
    (tree / "preset" / "mine.yaml").write_text(USER_PRESET + "# changed\n")
    assert preset_cache.user_tree(tree)[0] != found[0]  # type: ignore[index]
