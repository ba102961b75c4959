"""Fast checks of the stored preset estimates (qconf/estimate/preset_cache.py): the keys, the
bounded user tree, the stores read as untrusted data, and which presets are computed again.

The estimates themselves come from a stand-in `compute` that counts its calls (the cache is
agnostic of how an estimate is made; tests/test_fits.py runs it with the real estimator): a
broken cache then costs microseconds, not a re-estimate of every built-in preset."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from qconf.estimate import preset_cache
from qconf.estimate.preset_cache import Entry, Stored
from qconf.estimate.preset_estimate import PresetEstimate
from qconf.plan.conftree import conf_dir, group_options

USER_PRESET = "# @package _global_\ndefaults:\n  - override /model: sdxl\n"
KEY = "a" * 64


class Counting:
    """A stand-in estimator: a fixed complete estimate per name (`broken-*`: none)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, name: str, config_dir: str | Path | None) -> PresetEstimate:
        self.names.append(name)
        if name.startswith("broken"):
            return PresetEstimate(name, "?", None, None, None, "cannot")
        return PresetEstimate(name, f"org/{name}", 3000 + len(name), 1000 + len(name), 1500)


def _stored(model: str = "org/m", unquantized: int = 30, weights: int = 10, peak: int = 12):
    return Stored(model=model, bytes_unquantized=unquantized, bytes=weights, load_peak_bytes=peak)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QCONF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "conf"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    root.mkdir(exist_ok=True)
    return root


def _digest(files: list[tuple[str, bytes]]) -> str:
    """The documented tree hash: each file's relative path, a NUL, the sha256 of its bytes."""
    digest = hashlib.sha256()
    for relative, data in files:
        digest.update(relative.encode() + b"\0")
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


# --- what is stored ---------------------------------------------------------------------------


def test_a_stored_estimate_is_bounded_and_its_peak_holds_its_weights() -> None:
    assert _stored(peak=10).load_peak_bytes == 10  # peak equal to the weights: fine
    assert _stored(unquantized=0, weights=0, peak=2**50).load_peak_bytes == 2**50
    bad = [
        {"load_peak_bytes": 9},  # below the weights
        {"bytes": -1},
        {"bytes_unquantized": 2**50 + 1},
        {"load_peak_bytes": 2**50 + 1},
        {"model": ""},
        {"model": "m" * 1001},
        {"bytes": "10"},  # strict: no string for a number
        {"extra": 1},
    ]
    good = {"model": "org/m", "bytes_unquantized": 30, "bytes": 10, "load_peak_bytes": 12}
    assert Stored(**{**good, "model": "m" * 1000}).model == "m" * 1000
    for change in bad:
        with pytest.raises(ValidationError):
            Stored(**{**good, **change})
    with pytest.raises(ValidationError, match="load_peak_bytes is below bytes"):
        Stored(**{**good, "load_peak_bytes": 9})


def test_an_entry_names_a_sha256_key_and_at_most_so_many_presets() -> None:
    entry = Entry(key=KEY, presets={"p": _stored()})
    assert entry.versions == {}
    for key in ("A" * 64, "a" * 63, "a" * 65, "g" * 64):
        with pytest.raises(ValidationError):
            Entry(key=key, presets={})
    with pytest.raises(ValidationError):
        Entry(key=KEY, presets={"": _stored()})
    one = _stored()
    assert len(Entry(key=KEY, presets={str(i): one for i in range(20_000)}).presets) == 20_000
    with pytest.raises(ValidationError):
        Entry(key=KEY, presets={str(i): one for i in range(20_001)})


def test_only_a_complete_estimate_is_stored_and_it_reads_back_the_same() -> None:
    complete = PresetEstimate("p", "org/m", 30, 10, 12)
    kept = preset_cache.stored(complete)
    assert kept == _stored()
    assert preset_cache.restored("p", kept) == complete
    for incomplete in (
        PresetEstimate("p", "org/m", 30, 10, 12, "why"),
        PresetEstimate("p", "org/m", None, 10, 12),
        PresetEstimate("p", "org/m", 30, None, 12),
        PresetEstimate("p", "org/m", 30, 10, None),
    ):
        assert preset_cache.stored(incomplete) is None


def test_the_payload_is_sorted_indented_json_with_a_newline() -> None:
    payload = preset_cache._payload(KEY, {"b": _stored(), "a": _stored(weights=11)}, versions={})
    expected = {
        "key": KEY,
        "presets": {
            "a": {"model": "org/m", "bytes_unquantized": 30, "bytes": 11, "load_peak_bytes": 12},
            "b": {"model": "org/m", "bytes_unquantized": 30, "bytes": 10, "load_peak_bytes": 12},
        },
        "versions": {},
    }
    assert payload == (json.dumps(expected, indent=1, sort_keys=True) + "\n").encode()
    assert payload.decode().splitlines()[1] == ' "key": "' + KEY + '",'  # one-space indent


# --- the keys ---------------------------------------------------------------------------------


def test_the_built_in_key_is_the_one_the_shipped_file_was_written_under() -> None:
    shipped = preset_cache.read_shipped()
    assert shipped is not None, "run `python -m qconf.estimate.presets --write`"
    assert shipped.key == preset_cache.builtin_key()
    assert shipped.versions == preset_cache.library_versions()
    assert set(shipped.presets) == set(group_options("preset"))


def test_a_hash_is_the_sha256_of_the_fields_as_sorted_json() -> None:
    expected = hashlib.sha256(b'{"a": [1, "x"], "b": 2}').hexdigest()
    assert preset_cache._hash(b=2, a=[1, "x"]) == expected


def test_a_tree_hash_covers_paths_and_bytes_of_the_chosen_files_only(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"b.py": "b", "a/x.py": "x", "a/y.json": "{}", "c.txt": "no",
                            "skip/z.py": "no", "a/skip/w.py": "no"})  # fmt: skip
    (root / "d.py").mkdir()  # a folder with a chosen suffix is no file
    found = preset_cache._own_tree(root, (".py", ".json"), skip=("skip",))
    assert found == _digest([("a/x.py", b"x"), ("a/y.json", b"{}"), ("b.py", b"b")])
    only_py = preset_cache._own_tree(root, (".py",))
    assert only_py == _digest([("a/skip/w.py", b"no"), ("a/x.py", b"x"), ("b.py", b"b"),
                               ("skip/z.py", b"no")])  # fmt: skip
    assert preset_cache.skip_path(root / "a" / "skip" / "w.py", root, ("skip",))
    assert not preset_cache.skip_path(root / "a" / "skipped.py", root, ("skip",))


def test_the_code_hash_covers_qconfs_code_and_data_but_not_the_stored_estimates() -> None:
    package = Path(preset_cache.__file__).resolve().parents[1]
    assert (package / "estimate" / "preset_cache.py").is_file()
    expected = preset_cache._own_tree(
        package, (".py", ".json"), skip=("snapshots", "preset_estimates.json", "__pycache__")
    )
    assert preset_cache.code_hash() == expected


def test_library_versions_name_every_library_an_estimate_depends_on() -> None:
    from importlib.metadata import version

    from qconf.backends import REGISTRY

    found = preset_cache.library_versions()
    assert list(found) == sorted(found)
    wanted = {"torch", "diffusers", "transformers", "accelerate"}
    assert set(found) == wanted | {spec.distribution for spec in REGISTRY.values()}
    assert found["torch"] == version("torch") and found["diffusers"] == version("diffusers")
    assert preset_cache._installed("qconf-no-such-distribution") is None


# --- a user's tree ----------------------------------------------------------------------------


def test_a_user_tree_hashes_every_yaml_file_in_walk_order(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"b/y.yml": "y", "a/x.yaml": "x", "z.yaml": "z", "notes.txt": "n"})
    found = preset_cache.user_tree(root)
    # top-level files first, then each folder by name
    assert found == (
        _digest([("z.yaml", b"z"), ("a/x.yaml", b"x"), ("b/y.yml", b"y")]),
        frozenset({"z.yaml", "a/x.yaml", "b/y.yml"}),
    )
    (root / "a" / "x.yaml").write_text("changed")
    assert preset_cache.user_tree(root)[0] != found[0]  # type: ignore[index]


def test_a_user_tree_over_its_bounds_is_not_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = "/".join(["d"] * 16)
    root = _tree(tmp_path, {f"{deep}/x.yaml": "x"})
    assert preset_cache.user_tree(root) is not None  # 16 folders down: still read
    (root / deep / "d").mkdir()
    assert preset_cache.user_tree(root) is None  # a 17th: a loop or no config tree

    files = _tree(tmp_path / "files", {"a.yaml": "12345", "b.yaml": "123456"})
    monkeypatch.setattr(preset_cache, "MAX_TREE_BYTES", 11)
    assert preset_cache.user_tree(files) is not None  # 11 bytes in all: at the bound
    monkeypatch.setattr(preset_cache, "MAX_TREE_BYTES", 10)
    assert preset_cache.user_tree(files) is None  # each file fits, the two do not
    monkeypatch.setattr(preset_cache, "MAX_TREE_BYTES", 64 * 2**20)
    monkeypatch.setattr(preset_cache, "MAX_TREE_FILES", 2)
    assert preset_cache.user_tree(files) is not None
    (files / "c.yml").write_text("c")
    assert preset_cache.user_tree(files) is None


def test_a_user_tree_with_a_fifo_is_not_hashed_and_a_linked_file_is(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"a.yaml": "a"})
    (tmp_path / "outside.yaml").write_text("o")
    (root / "b.yaml").symlink_to(tmp_path / "outside.yaml")
    found = preset_cache.user_tree(root)
    assert found is not None and found[1] == {"a.yaml", "b.yaml"}
    os.mkfifo(root / "c.yaml")
    assert preset_cache.user_tree(root) is None


def test_a_user_file_standing_in_for_one_of_qconfs_shadows_the_built_in_presets() -> None:
    assert (conf_dir() / "backend" / "nf4.yaml").is_file()
    assert preset_cache._shadows(frozenset({"backend/nf4.yaml"}))
    assert preset_cache._shadows(frozenset({"mine.yaml", "preset/flux-nf4.yml"}))
    assert preset_cache._shadows(frozenset({"qconf.yaml"}))
    assert not preset_cache._shadows(frozenset({"preset/mine.yaml", "backend/my-int8.yaml"}))
    assert not preset_cache._shadows(frozenset())


# --- reading and writing ----------------------------------------------------------------------


def _entry_text(key: str = KEY, **presets: Stored) -> str:
    return preset_cache._payload(key, presets or {"p": _stored()}).decode()


def test_a_missing_entry_is_nothing_and_says_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert preset_cache._read(tmp_path / "none.json", KEY) is None
    assert capsys.readouterr().err == ""


def test_an_entry_is_read_for_its_key_or_any_key(tmp_path: Path) -> None:
    path = tmp_path / "e.json"
    path.write_text(_entry_text())
    assert preset_cache._read(path, KEY) == Entry(key=KEY, presets={"p": _stored()})
    assert preset_cache._read(path) == Entry(key=KEY, presets={"p": _stored()})


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "stored estimates"),
        (_entry_text("b" * 64), "was not written for this key (copied or forged)"),
        (_entry_text().replace('"bytes": 10', '"bytes": -1'),
         "is not what qconf writes (presets.p.bytes: Input should be greater than or equal to 0)"),
        (_entry_text().replace('"key"', '"other": 1, "key"'),
         "is not what qconf writes (other: Extra inputs are not permitted)"),
    ],
    ids=["not-json", "other-key", "negative", "unknown-field"],
)  # fmt: skip
def test_an_entry_qconf_did_not_write_for_this_key_is_not_used_and_said_once(
    text: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "e.json"
    path.write_text(text)
    assert preset_cache._read(path, KEY) is None
    err = capsys.readouterr().err
    assert err.startswith(f"note: {path}: ") and err.endswith(" — estimated again\n")
    assert why in err and err.count("\n") == 1
    assert preset_cache._read(path, KEY, notice=False) is None
    assert capsys.readouterr().err == ""


def test_an_entry_that_is_a_link_or_under_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = tmp_path / "real.json"
    real.write_text(_entry_text())
    (tmp_path / "link.json").symlink_to(real)
    assert preset_cache._read(tmp_path / "link.json", KEY) is None
    assert "link.json" in capsys.readouterr().err
    assert preset_cache._read(real / "below.json", KEY) is None  # lstat: not a directory
    assert "below.json" in capsys.readouterr().err


def test_an_entry_over_its_size_cap_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "e.json"
    text = _entry_text()
    path.write_text(text)
    assert preset_cache.MAX_ENTRY_BYTES == 4 * 2**20
    monkeypatch.setattr(preset_cache, "MAX_ENTRY_BYTES", len(text))
    assert preset_cache._read(path, KEY) is not None
    monkeypatch.setattr(preset_cache, "MAX_ENTRY_BYTES", len(text) - 1)
    assert preset_cache._read(path, KEY) is None
    assert "over qconf's limit" in capsys.readouterr().err


def test_entries_are_written_under_the_cache_folder_by_key(cache: Path) -> None:
    assert preset_cache.entry_path(KEY) == cache / "presets" / f"{KEY}.json"
    preset_cache.write(KEY, {"p": _stored()})
    path = cache / "presets" / f"{KEY}.json"
    assert path.read_bytes() == preset_cache._payload(KEY, {"p": _stored()})
    assert preset_cache._read(path, KEY) == Entry(key=KEY, presets={"p": _stored()})
    assert [p.name for p in (cache / "presets").iterdir()] == [f"{KEY}.json"]  # no temp left


def test_a_cache_qconf_cannot_write_is_a_note(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache.mkdir()
    (cache / "presets").symlink_to(tmp_path)
    preset_cache.write(KEY, {"p": _stored()})
    err = capsys.readouterr().err
    assert err.startswith("note: preset estimates not cached: ") and "symbolic link" in err
    assert not (tmp_path / f"{KEY}.json").exists()


def test_the_cache_folder_is_used_only_when_real(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert preset_cache._cache_folder_usable()  # missing: created when written
    cache.mkdir()
    assert preset_cache._cache_folder_usable()
    (cache / "presets").mkdir()
    assert preset_cache._cache_folder_usable()
    assert capsys.readouterr().err == ""
    (cache / "presets").rmdir()
    (cache / "presets").write_text("")
    assert not preset_cache._cache_folder_usable()
    err = capsys.readouterr().err
    assert err == (
        f"note: {cache / 'presets'} is not a real folder: preset estimates are not cached "
        "(point QCONF_CACHE at a folder only you write)\n"
    )
    (cache / "presets").unlink()
    (cache / "presets").symlink_to(tmp_path)
    assert not preset_cache._cache_folder_usable()
    cache.rename(tmp_path / "moved")
    cache.symlink_to(tmp_path / "moved")
    assert not preset_cache._cache_folder_usable()
    assert f"note: {cache} is not a real folder" in capsys.readouterr().err


# --- which presets are computed ---------------------------------------------------------------


def _user_tree(tmp_path: Path, files: dict[str, str] | None = None) -> Path:
    return _tree(tmp_path, files or {"preset/mine.yaml": USER_PRESET})


def test_built_in_presets_come_from_the_shipped_file_in_the_order_asked(cache: Path) -> None:
    shipped = preset_cache.read_shipped()
    assert shipped is not None
    compute = Counting()
    names = ["sdxl-nf4", "flux-nf4", "auraflow-int8wo"]
    found = preset_cache.cached_estimates(iter(names), None, compute)
    assert compute.names == []
    assert found == [preset_cache.restored(n, shipped.presets[n]) for n in names]
    assert not cache.exists()  # nothing computed, nothing written


def test_a_user_preset_is_computed_once_and_kept_under_its_trees_key(
    cache: Path, tmp_path: Path
) -> None:
    tree = _user_tree(tmp_path)
    compute = Counting()
    names = ["mine", "flux-nf4"]
    first = preset_cache.cached_estimates(names, tree, compute)
    assert compute.names == ["mine"]  # the built-in one from the shipped file
    assert [e.preset for e in first] == names and first[0] == Counting()("mine", None)
    user_hash = preset_cache.user_tree(tree)[0]  # type: ignore[index]
    key = preset_cache._hash(
        builtin=preset_cache.builtin_key(), user=user_hash, code=preset_cache.code_hash()
    )
    (entry,) = (cache / "presets").iterdir()
    assert entry.name == f"{key}.json"
    assert preset_cache._read(entry, key).presets == {"mine": preset_cache.stored(first[0])}
    again = preset_cache.cached_estimates(names, str(tree), compute)
    assert compute.names == ["mine"] and again == first
    (tree / "preset" / "mine.yaml").write_text(USER_PRESET + "# changed\n")
    preset_cache.cached_estimates(names, tree, compute)
    assert compute.names == ["mine", "mine"]
    assert len(list((cache / "presets").iterdir())) == 2


def test_a_preset_that_cannot_be_estimated_is_computed_every_time(
    cache: Path, tmp_path: Path
) -> None:
    tree = _user_tree(tmp_path, {"preset/broken.yaml": USER_PRESET, "preset/mine.yaml": "x"})
    compute = Counting()
    for _ in range(2):
        found = preset_cache.cached_estimates(["broken", "mine"], tree, compute)
        assert found[0].missing == "cannot"
    assert compute.names == ["broken", "mine", "broken"]
    (entry,) = (cache / "presets").iterdir()
    assert set(json.loads(entry.read_text())["presets"]) == {"mine"}


def test_nothing_new_is_nothing_written(cache: Path, tmp_path: Path) -> None:
    tree = _user_tree(tmp_path, {"preset/broken.yaml": USER_PRESET})
    preset_cache.cached_estimates(["broken"], tree, Counting())
    assert not (cache / "presets").exists()


def test_a_tree_shadowing_qconfs_files_has_its_built_in_presets_computed_and_kept(
    cache: Path, tmp_path: Path
) -> None:
    tree = _user_tree(tmp_path, {"preset/mine.yaml": USER_PRESET, "backend/nf4.yaml": "x: 1"})
    compute = Counting()
    first = preset_cache.cached_estimates(["flux-nf4", "mine"], tree, compute)
    assert compute.names == ["flux-nf4", "mine"]
    assert first[0] == Counting()("flux-nf4", None)
    (entry,) = (cache / "presets").iterdir()
    assert set(json.loads(entry.read_text())["presets"]) == {"flux-nf4", "mine"}
    assert preset_cache.cached_estimates(["flux-nf4", "mine"], tree, compute) == first
    assert compute.names == ["flux-nf4", "mine"]


def test_a_tree_over_its_bounds_is_computed_every_time_and_never_kept(
    cache: Path, tmp_path: Path
) -> None:
    tree = _user_tree(tmp_path)
    os.mkfifo(tree / "preset" / "pipe.yaml")
    compute = Counting()
    for _ in range(2):
        preset_cache.cached_estimates(["mine", "flux-nf4"], tree, compute)
    # the built-in one too: an unread tree may shadow qconf's files
    assert compute.names == ["mine", "flux-nf4"] * 2
    assert not cache.exists()


def test_built_in_presets_the_shipped_file_does_not_hold_are_computed_and_kept(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = tmp_path / "shipped.json"
    shipped.write_text(
        preset_cache._payload(preset_cache.builtin_key(), {"flux-nf4": _stored()}).decode()
    )
    monkeypatch.setattr(preset_cache, "shipped_path", lambda: shipped)
    compute = Counting()
    names = ["flux-nf4", "sdxl-nf4"]
    found = preset_cache.cached_estimates(names, None, compute)
    assert compute.names == ["sdxl-nf4"]
    assert found == [preset_cache.restored("flux-nf4", _stored()), Counting()("sdxl-nf4", None)]
    key = preset_cache._hash(builtin=preset_cache.builtin_key(), code=preset_cache.code_hash())
    assert (cache / "presets" / f"{key}.json").is_file()
    assert preset_cache.cached_estimates(names, None, compute) == found
    assert compute.names == ["sdxl-nf4"]
    # a shipped file of another key is not believed at all
    shipped.write_text(preset_cache._payload("c" * 64, {"flux-nf4": _stored()}).decode())
    again = preset_cache.cached_estimates(["flux-nf4"], None, compute)
    assert compute.names == ["sdxl-nf4", "flux-nf4"]
    assert again == [Counting()("flux-nf4", None)]


def test_an_unusable_cache_folder_is_not_read_nor_written(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tree = _user_tree(tmp_path)
    cache.parent.mkdir(exist_ok=True)
    cache.write_text("")
    compute = Counting()
    for _ in range(2):
        preset_cache.cached_estimates(["mine"], tree, compute)
    assert compute.names == ["mine", "mine"]
    assert capsys.readouterr().err.count("is not a real folder") == 2


def test_a_group_reads_its_entry_and_rewrites_it_with_what_it_computed(cache: Path) -> None:
    preset_cache.write(KEY, {"kept": _stored(), "other": _stored(weights=11)})
    compute = Counting()
    found = preset_cache._group(["kept", "new"], KEY, None, compute)
    assert compute.names == ["new"]
    assert found == {
        "kept": preset_cache.restored("kept", _stored()),
        "new": Counting()("new", None),
    }
    entry = preset_cache._read(preset_cache.entry_path(KEY), KEY)
    assert entry is not None and set(entry.presets) == {"kept", "other", "new"}
    assert preset_cache._group(["kept"], None, None, compute)["kept"] == Counting()("kept", None)


# --- the shipped file -------------------------------------------------------------------------


def test_the_shipped_file_is_written_from_complete_estimates_only(tmp_path: Path) -> None:
    good = [PresetEstimate("b", "org/m", 30, 10, 12), PresetEstimate("a", "org/n", 3, 1, 2)]
    path = preset_cache.write_shipped(good, tmp_path / "shipped.json")
    assert path == tmp_path / "shipped.json"
    entry = preset_cache._read(path, preset_cache.builtin_key())
    assert entry is not None
    assert entry.presets == {"b": _stored(), "a": _stored("org/n", 3, 1, 2)}
    assert entry.versions == preset_cache.library_versions()
    broken = [*good, PresetEstimate("x", "?", None, None, None, "why"),
              PresetEstimate("y", "org/y", 1, None, 1, "no snapshot")]  # fmt: skip
    with pytest.raises(SystemExit, match=r"^not estimated: x: why; y: no snapshot$"):
        preset_cache.write_shipped(broken, tmp_path / "other.json")
    assert not (tmp_path / "other.json").exists()


def test_the_shipped_file_lives_in_qconfs_data() -> None:
    import qconf

    expected = Path(qconf.__file__).parent / "data" / "preset_estimates.json"
    assert preset_cache.shipped_path() == expected and expected.is_file()
