"""The torch-free table of pipeline parts matches the installed diffusers."""

from __future__ import annotations

import json
from importlib import resources

from qconf.source.table import TABLE_FILE, generate


def test_table_matches_installed_diffusers() -> None:
    stored = json.loads(resources.files("qconf.data").joinpath(TABLE_FILE).read_text())
    fresh = generate()
    assert stored["diffusers_version"] == fresh["diffusers_version"], (
        "regenerate with `python -m qconf.source.table`"
    )
    assert stored["pipelines"] == fresh["pipelines"], "regenerate: python -m qconf.source.table"


def test_tiny_pipelines_are_saved_with_the_parts_the_table_names(tmp_path) -> None:
    from qconf.source.model import open_source
    from qconf.source.parts import TINY_PIPELINES
    from qconf.source.tiny import tiny_pipeline_path

    for name in ("tiny-flux", "tiny-sd", "tiny-sd3"):
        from_table = open_source(name, None)[0].parts
        from_folder = open_source(str(tiny_pipeline_path(name)), None)[0].parts
        assert from_folder.pipeline == TINY_PIPELINES[name]
        assert from_table.weighted.keys() == from_folder.weighted.keys()
        for part in from_folder.weighted.values():
            assert from_table.parts[part.name].library == part.library
