"""Fast, exact checks of the preset estimates (qconf/estimate/{presets,preset_estimate,
preset_table}.py) on a family of one's own: a user --config-dir with a tiny DDPM model whose
config-only snapshot sits in a temporary snapshots folder (tests/tiny_family.py: its bytes
counted by hand there), so each estimate builds one small UNet on the meta device.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_family import BF16, INT8WO, INT8WO_PEAK, UNET, write_ddpm

from qconf.estimate import presets, snapshots
from qconf.estimate.preset_estimate import PresetEstimate
from qconf.estimate.preset_table import (
    END_MARKER,
    START_MARKER,
    _option_label,
    preset_row,
    readme_section,
    replace_section,
)
from qconf.estimate.snapshots import slug
from qconf.plan.conftree import backend_options, group_options

pytest.importorskip("torch")
pytest.importorskip("diffusers.models.unets.unet_2d")  # at collection: once per run

GIB = 2**30
REPO = "tiny/ddpm"
PRESETS = {
    "ddpm-plain": "defaults:\n  - override /model: ddpm\n",
    "ddpm-int8wo": (
        "defaults:\n  - /backend@quant.mapping.unet: int8wo\n  - override /model: ddpm\n"
    ),
    "ddpm-nf4-fp16": (
        "defaults:\n  - /backend@quant.mapping.unet: nf4\n  - override /model: ddpm\n"
        "quant:\n  mapping:\n    unet:\n      kwargs:\n        bnb_4bit_compute_dtype: float16\n"
    ),
    "ddpm-broken": "quant:\n  mapping:\n    unet: no-such-option\n",
    # a bare name of the user's own option: found through the --config-dir only
    "ddpm-mine": "defaults:\n  - override /model: ddpm\nquant:\n  mapping:\n    unet: my-int8\n",
    "ddpm-mine-composed": (
        "defaults:\n  - /backend@quant.mapping.unet: my-int8\n  - override /model: ddpm\n"
    ),
    "ddpm-interpolated": (
        "defaults:\n  - /backend@quant.mapping.unet: nf4\n  - override /model: ddpm\n"
        "quant:\n  mapping:\n    unet:\n      kwargs:\n"
        "        bnb_4bit_compute_dtype: ${model.torch_dtype}\n"
    ),
    "ddpm-global": (
        "defaults:\n  - override /model: ddpm\n"
        "quant:\n  backend: torchao\n  kwargs:\n    quant_type:\n      name: Int8WeightOnlyConfig\n"
    ),
    "ddpm-elsewhere": "defaults:\n  - override /model: elsewhere\n",
    "ddpm-tiny": "defaults:\n  - override /model: tiny-sd\n",
}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def conf_tree(tmp_path: Path) -> Path:
    """A --config-dir with the DDPM family (its snapshot is not shipped)."""
    conf = tmp_path / "conf"
    _write(conf / "model" / "ddpm.yaml", f"source: {REPO}\npipeline: DDPMPipeline\n")
    _write(conf / "model" / "elsewhere.yaml", "source: nobody/nothing\npipeline: DDPMPipeline\n")
    _write(
        conf / "backend" / "my-int8.yaml",
        "backend: torchao\nkwargs:\n  quant_type:\n    name: Int8WeightOnlyConfig\n"
        "    group_size: 8\n",
    )
    for name, body in PRESETS.items():
        _write(conf / "preset" / f"{name}.yaml", f"# @package _global_\n# {name}\n{body}")
    return conf


@pytest.fixture
def family(conf_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The DDPM family's --config-dir, its snapshot in a snapshots folder of its own."""
    root = tmp_path / "snapshots"
    write_ddpm(root / slug(REPO))
    monkeypatch.setattr(snapshots, "snapshots_root", lambda: root)
    return conf_tree


# --- one preset's estimate --------------------------------------------------------------------


def test_a_preset_is_estimated_against_its_models_snapshot(family: Path) -> None:
    plain = presets.estimate_preset("ddpm-plain", family)
    assert plain == PresetEstimate("ddpm-plain", REPO, BF16, BF16, BF16)  # nothing quantized
    int8 = presets.estimate_preset("ddpm-int8wo", family)
    assert int8 == PresetEstimate("ddpm-int8wo", REPO, BF16, INT8WO, INT8WO_PEAK)


def test_a_preset_that_cannot_be_estimated_says_why_instead_of_a_number(family: Path) -> None:
    broken = presets.estimate_preset("ddpm-broken", family)
    assert (broken.preset, broken.source) == ("ddpm-broken", "?")
    assert (broken.bytes_unquantized, broken.bytes, broken.load_peak_bytes) == (None, None, None)
    assert "no-such-option" in (broken.missing or "")
    elsewhere = presets.estimate_preset("ddpm-elsewhere", family)
    assert elsewhere == PresetEstimate(
        "ddpm-elsewhere", "nobody/nothing", None, None, None,
        "no config snapshot of nobody/nothing in qconf/data/snapshots/nobody--nothing",
    )  # fmt: skip
    tiny = presets.estimate_preset("ddpm-tiny", family)  # not a hub id: never a snapshot
    assert tiny == PresetEstimate(
        "ddpm-tiny", "tiny-sd", None, None, None,
        "no config snapshot of tiny-sd in qconf/data/snapshots/tiny-sd",
    )  # fmt: skip


def test_a_snapshot_the_estimate_refuses_is_the_presets_reason(family: Path) -> None:
    unet = snapshots.snapshots_root() / "tiny--ddpm" / "unet" / "config.json"
    unet.unlink()
    found = presets.estimate_preset("ddpm-plain", family)
    assert (found.preset, found.source) == ("ddpm-plain", REPO)
    assert (found.bytes_unquantized, found.bytes, found.load_peak_bytes) == (None, None, None)
    assert found.missing is not None and "config.json" in found.missing


def test_preset_names_are_the_built_in_ones_plus_the_users_sorted(family: Path) -> None:
    built_in = presets.preset_names()
    assert built_in == sorted(group_options("preset")) and "flux-nf4" in built_in
    assert not set(PRESETS) & set(built_in)
    assert presets.preset_names(family) == sorted([*built_in, *PRESETS])


def test_every_preset_is_listed_the_built_in_ones_from_the_shipped_file(
    conf_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qconf.estimate import preset_cache

    monkeypatch.setenv("QCONF_CACHE", str(tmp_path / "cache"))
    for name in set(PRESETS) - {"ddpm-tiny", "ddpm-elsewhere"}:
        (conf_tree / "preset" / f"{name}.yaml").unlink()  # left: two with no snapshot
    shipped = preset_cache.read_shipped()
    assert shipped is not None
    estimate_preset = presets.estimate_preset

    def only_the_users(name: str, config_dir: str | Path | None) -> PresetEstimate:
        # a built-in preset estimated here is a miss of the shipped file (and a minute)
        assert name not in shipped.presets, f"{name} estimated again"
        return estimate_preset(name, config_dir)

    monkeypatch.setattr(presets, "estimate_preset", only_the_users)
    found = {e.preset: e for e in presets.estimate_presets(conf_tree)}
    assert list(found) == presets.preset_names(conf_tree)
    for name, stored in shipped.presets.items():
        assert found[name] == preset_cache.restored(name, stored)
    assert found["ddpm-tiny"] == PresetEstimate(
        "ddpm-tiny", "tiny-sd", None, None, None,
        "no config snapshot of tiny-sd in qconf/data/snapshots/tiny-sd",
    )  # fmt: skip
    assert found["ddpm-elsewhere"].source == "nobody/nothing"


def test_every_preset_estimate_with_or_without_the_cache(
    family: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only two presets (all of them would take a minute): the same estimates either way, and
    only the cached way keeps them."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("QCONF_CACHE", str(cache))
    names = ["ddpm-int8wo", "ddpm-tiny"]
    asked: list[object] = []

    def two(config_dir: object = None) -> list[str]:
        asked.append(config_dir)
        return names

    monkeypatch.setattr(presets, "preset_names", two)
    expected = [presets.estimate_preset(name, family) for name in names]
    assert expected[0] == PresetEstimate("ddpm-int8wo", REPO, BF16, INT8WO, INT8WO_PEAK)
    assert presets.estimate_presets(family, cached=False) == expected
    assert asked == [family] and not cache.exists()
    assert presets.estimate_presets(family) == expected
    (entry,) = (cache / "presets").iterdir()
    assert set(json.loads(entry.read_text())["presets"]) == {"ddpm-int8wo"}


def test_presets_never_read_a_hub_cache_only_the_shipped_snapshot(
    family: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same figures on every machine: a download of the model in the local hub cache (here
    a wider one) is not what a preset's estimate reads."""
    hub = tmp_path / "hub"
    write_ddpm(
        hub / "models--tiny--ddpm" / "snapshots" / ("0" * 40), {**UNET, "block_out_channels": [16]}
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    plain = presets.estimate_preset("ddpm-plain", family)
    assert plain == PresetEstimate("ddpm-plain", REPO, BF16, BF16, BF16)


def test_a_local_folder_named_like_a_hub_id_is_no_snapshot(
    family: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_ddpm(tmp_path / REPO)  # ./tiny/ddpm is a folder: model.source names it, not the hub
    found = presets.estimate_preset("ddpm-plain", family)
    assert found == PresetEstimate(
        "ddpm-plain", REPO, None, None, None,
        "no config snapshot of tiny/ddpm in qconf/data/snapshots/tiny--ddpm",
    )  # fmt: skip


def test_a_config_dir_that_is_no_path_is_said_at_the_flag() -> None:
    from qconf.errors import PlanError

    with pytest.raises(PlanError) as caught:
        presets.preset_names("~qconf-no-such-user/conf")
    assert caught.value.problems[0].where == "--config-dir"


# --- fits -------------------------------------------------------------------------------------


def test_fitting_and_over_by_peak_sort_by_peak_then_weights_then_name() -> None:
    a = PresetEstimate("a", "m", 9, 5, 8)
    b = PresetEstimate("b", "m", 9, 4, 8)  # same peak, fewer weights: first
    c = PresetEstimate("c", "m", 9, 4, 8)  # a tie on both: by name
    small = PresetEstimate("small", "m", 9, 2, 3)
    peak = PresetEstimate("peak", "m", 9, 6, 20)
    peak2 = PresetEstimate("peak2", "m", 9, 7, 12)
    tie = PresetEstimate("tie", "m", 9, 6, 12)
    broken = PresetEstimate("broken", "?", None, None, None, "why")
    everything = [peak, a, c, broken, peak2, b, small, tie]
    assert presets.fitting(everything, 8) == [small, b, c, a]
    assert presets.over_by_peak(everything, 8) == [tie, peak2, peak]
    assert presets.fitting(everything, 2) == [] and presets.over_by_peak(everything, 1) == []


def test_a_preset_estimate_fits_by_its_peak() -> None:
    found = PresetEstimate("p", "m", 30, 10, 12)
    assert found.loads_in(12) and not found.loads_in(11)
    assert found.over_by_peak(10) and found.over_by_peak(11)
    assert not found.over_by_peak(9)  # the weights do not fit either
    assert not found.over_by_peak(12)  # it loads
    missing = PresetEstimate("p", "m", None, None, None, "why")
    assert not missing.loads_in(2**60) and not missing.over_by_peak(2**60)
    only_weights = PresetEstimate("p", "m", 30, 10, None)
    assert not only_weights.loads_in(100) and only_weights.over_by_peak(10)


def test_a_preset_estimate_as_json() -> None:
    found = PresetEstimate("p", "org/m", 30, 10, 12)
    assert found.to_json() == {
        "preset": "p",
        "model": "org/m",
        "bytes_unquantized": 30,
        "bytes": 10,
        "load_peak_bytes": 12,
    }
    missing = PresetEstimate("q", "?", None, None, None, "no snapshot")
    assert missing.to_json() == {
        "preset": "q",
        "model": "?",
        "bytes_unquantized": None,
        "bytes": None,
        "load_peak_bytes": None,
        "missing": "no snapshot",
    }


# --- the README table -------------------------------------------------------------------------


def test_a_table_row_names_the_parts_their_options_and_the_weights(family: Path) -> None:
    head = "| `ddpm-int8wo` | `tiny/ddpm` | DDPMPipeline | unet: `int8wo` |"
    assert preset_row("ddpm-int8wo", family, memory=False) == f"{head}  |"
    estimate = PresetEstimate("ddpm-int8wo", REPO, 30 * GIB, 8 * GIB + GIB // 4, 9 * GIB)
    assert preset_row("ddpm-int8wo", family, memory=estimate) == f"{head} 30.0 → **8.2** |"
    assert preset_row("ddpm-int8wo", family) == f"{head} 0.0 → **0.0** |"  # estimated now
    plain = preset_row("ddpm-plain", family, memory=False)
    assert plain == "| `ddpm-plain` | `tiny/ddpm` | DDPMPipeline | nothing |  |"
    nf4 = preset_row("ddpm-nf4-fp16", family, memory=False)
    assert "| unet: `nf4` (bnb_4bit_compute_dtype=float16) |" in nf4
    assert preset_row("ddpm-elsewhere", family).endswith("| nothing | no snapshot |")
    broken = PresetEstimate("x", REPO, 30 * GIB, None, None, "why")
    assert preset_row("ddpm-plain", family, memory=broken).endswith("| no snapshot |")
    half = PresetEstimate("x", REPO, None, 8 * GIB, 9 * GIB)
    assert preset_row("ddpm-plain", family, memory=half).endswith("| no snapshot |")


def test_a_row_names_the_users_own_options_and_what_a_preset_changed(family: Path) -> None:
    def part(name: str) -> str:
        return preset_row(name, family, memory=False).split(" | ")[3]

    assert part("ddpm-mine") == "unet: `my-int8`"  # a bare name: validated with --config-dir
    assert part("ddpm-mine-composed") == "unet: `my-int8`"  # the user's option changes least
    assert part("ddpm-interpolated") == "unet: `nf4`"  # ${model.torch_dtype} is nf4's bfloat16
    assert part("ddpm-global") == "unet: `torchao`"  # no per-part entry: the backend


def test_a_row_lists_every_quantized_part() -> None:
    row = preset_row("auraflow-int8wo", memory=False)
    assert row == (
        "| `auraflow-int8wo` | `fal/AuraFlow-v0.3` | AuraFlowPipeline | "
        "text_encoder: `int8wo`, transformer: `int8wo` |  |"
    )


def test_an_entry_is_labelled_with_the_option_it_changes_least() -> None:
    options = backend_options()
    assert _option_label("int8wo", "torchao", options) == "`int8wo`"
    assert _option_label(None, "torchao", options) == "`torchao`"  # global mode
    nf4 = {"backend": "bitsandbytes_4bit", "kwargs": dict(options["nf4"]["kwargs"])}
    assert _option_label(nf4, "bitsandbytes_4bit", options) == "`nf4`"
    fp4 = {**nf4, "kwargs": {**nf4["kwargs"], "bnb_4bit_quant_type": "fp4"}}
    assert _option_label(fp4, "bitsandbytes_4bit", options) == "`fp4`"
    changed = {**nf4, "kwargs": {**nf4["kwargs"], "bnb_4bit_compute_dtype": "float16"}}
    label = _option_label(changed, "bitsandbytes_4bit", options)
    assert label == "`nf4` (bnb_4bit_compute_dtype=float16)"
    skipping = {**nf4, "skip": ["proj_out", "norm"], "extra": None}
    assert _option_label(skipping, "bitsandbytes_4bit", options) == "`nf4` (skip=[proj_out, norm])"
    nested = {"backend": "torchao", "kwargs": {"quant_type": {"name": "X", "group_size": 32}}}
    label = _option_label(nested, "torchao", options)
    assert label.endswith("(quant_type={name=X, group_size=32})")
    # no option of the backend holds these kwargs' keys: the backend and every kwarg
    alone = {"backend": "nowhere", "kwargs": {"a": 1, "b": [2]}}
    assert _option_label(alone, "nowhere", options) == "`nowhere` (a=1, b=[2])"
    bare = {"backend": "nowhere"}
    assert _option_label(bare, "nowhere", options) == "`nowhere`"


def test_an_option_whose_keys_an_entry_lacks_is_not_its_base() -> None:
    options = {
        "a-full": {"backend": "b", "kwargs": {"x": 1, "y": 2}},
        "b-one": {"backend": "b", "kwargs": {"x": 5}},
        "c-other": {"backend": "c", "kwargs": {"x": 1}},
    }
    # x=1 alone: a-full has y, which the entry removed, so b-one is the base (x changed)
    assert _option_label({"backend": "b", "kwargs": {"x": 1}}, "b", options) == "`b-one` (x=1)"
    # a tie in changes goes to the first option by name
    options["0-first"] = {"backend": "b", "kwargs": {"x": 7}}
    assert _option_label({"backend": "b", "kwargs": {"x": 1}}, "b", options) == "`0-first` (x=1)"
    both = {"backend": "b", "kwargs": {"x": 1, "y": 3}}
    assert _option_label(both, "b", options) == "`a-full` (y=3)"


def test_the_readme_section_between_the_markers() -> None:
    readme = f"intro\n{START_MARKER}\n| old |\n{END_MARKER}\nrest\n"
    assert readme_section(readme) == "| old |"
    assert readme_section(f"{START_MARKER}\n X| a |X \n{END_MARKER}") == " X| a |X "
    assert readme_section(f"{START_MARKER}\nX\n{END_MARKER}") == "X"  # newlines stripped only
    # the first start marker and the first end marker after it
    twice = f"{START_MARKER}\na\n{START_MARKER}\nb\n{END_MARKER}\nc\n{END_MARKER}"
    assert readme_section(twice) == f"a\n{START_MARKER}\nb"
    assert replace_section(twice, "new") == f"{START_MARKER}\nnew\n{END_MARKER}\nc\n{END_MARKER}"
    assert replace_section(readme, "| new |\n| rows |") == (
        f"intro\n{START_MARKER}\n| new |\n| rows |\n{END_MARKER}\nrest\n"
    )
    assert readme_section(f"{START_MARKER}\n\n\nx\n\n{END_MARKER}") == "x"
    for broken in (f"{START_MARKER} only", f"{END_MARKER} only", f"{END_MARKER}\n{START_MARKER}"):
        assert readme_section(broken) is None
        with pytest.raises(ValueError, match="presets:start"):
            replace_section(broken, "| new |")


def test_the_table_has_a_header_and_one_row_a_preset(
    family: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qconf.estimate import preset_table

    listed = [PresetEstimate("ddpm-int8wo", REPO, 30 * GIB, 8 * GIB, 9 * GIB),
              PresetEstimate("ddpm-plain", REPO, 3 * GIB, 3 * GIB, 3 * GIB)]  # fmt: skip
    asked: list[object] = []

    def estimates(config_dir: object = None) -> list[PresetEstimate]:
        asked.append(config_dir)
        return listed

    monkeypatch.setattr(preset_table, "estimate_presets", estimates)
    assert preset_table.markdown_table(family) == (
        "| Preset | Model | Pipeline | Quantized parts (backend option) "
        "| Weights GiB: bf16/fp16 → plan |\n"
        "|---|---|---|---|---|\n"
        "| `ddpm-int8wo` | `tiny/ddpm` | DDPMPipeline | unet: `int8wo` | 30.0 → **8.0** |\n"
        "| `ddpm-plain` | `tiny/ddpm` | DDPMPipeline | nothing | 3.0 → **3.0** |"
    )
    assert asked == [family]


TABLE = "| Preset |\n|---|\n| `a` |\n| `b` |"


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> str:
    """`python -m qconf.estimate.preset_table` with a fixed table (the real one estimates
    every preset: tests/test_presets.py compares it with the README)."""
    from qconf.estimate import preset_table

    monkeypatch.setattr(preset_table, "markdown_table", lambda: TABLE)
    return TABLE


def test_the_table_command_prints_the_table(table: str, capsys: pytest.CaptureFixture[str]) -> None:
    from qconf.estimate.preset_table import main

    assert main([]) == 0
    assert capsys.readouterr().out == table + "\n"


def test_the_table_command_writes_between_the_readme_markers(
    table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qconf.estimate.preset_table import main

    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{START_MARKER}\nold\n{END_MARKER}\nbottom\n")
    assert main(["--write", str(readme)]) == 0
    assert readme.read_text() == f"top\n{START_MARKER}\n{table}\n{END_MARKER}\nbottom\n"
    assert capsys.readouterr().out == f"wrote the preset table (2 presets) into {readme}\n"


def test_the_table_command_refuses_a_readme_without_markers_or_none(
    table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qconf.estimate.preset_table import main

    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    assert main(["--write", str(readme)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {readme}: no {START_MARKER} ... {END_MARKER} lines to write between\n")
    assert readme.read_text() == "no markers\n"
    assert main(["--write", str(tmp_path / "missing.md")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'missing.md'}: ")


def test_the_table_command_says_what_it_does(capsys: pytest.CaptureFixture[str]) -> None:
    from qconf.estimate.preset_table import main

    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: python -m qconf.estimate.preset_table [-h] [--write README]")
    assert "[--write README] The presets as a markdown table. options:" in out
    assert f"replace the text between {START_MARKER} and {END_MARKER} in this file" in out


def test_the_estimates_command_writes_the_shipped_file_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from qconf.estimate import preset_cache

    fresh = [PresetEstimate("a", "org/m", 3, 2, 2)]
    calls: list[tuple[str, object]] = []

    def estimate_all(config_dir: object = None, *, cached: bool = True) -> list:
        calls.append(("estimate", cached))
        return fresh

    def write(estimates: list) -> Path:
        calls.append(("write", estimates))
        return tmp_path / "shipped.json"

    monkeypatch.setattr(presets, "estimate_presets", estimate_all)
    monkeypatch.setattr(preset_cache, "write_shipped", write)
    assert presets.main([]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert help_text.startswith("usage: python -m qconf.estimate.presets [-h] [--write]")
    assert (
        "[--write] Estimate every built-in preset afresh and write the shipped estimates. options:"
        in help_text
    )
    assert "--write write qconf/data/preset_estimates.json" in help_text
    assert calls == []
    assert presets.main(["--write"]) == 0
    assert calls == [("estimate", False), ("write", fresh)]
    assert capsys.readouterr().out == f"wrote {tmp_path / 'shipped.json'}\n"
