"""Formats that need a CUDA GPU (nunchaku_lite) or that the installed libraries cannot run
(modelopt): the plan is checked on any machine, and what cannot run here is one line before any
weight is read. Their real loads need a lent GPU (the `gpu` marker)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import qconf
from qconf.loading.environment import cuda_available
from qconf.source.tiny import tiny_pipeline_path

SVDQ = {"precision": "int4", "group_size": 64, "rank": 32, "targets": ["transformer_blocks.0"]}


def nunchaku_folder(tmp_path: Path) -> Path:
    """tiny-flux whose transformer's config.json says it was saved as Nunchaku Lite."""
    folder = tmp_path / "nunchaku-flux"
    shutil.copytree(tiny_pipeline_path("tiny-flux"), folder)
    config_file = folder / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    config["quantization_config"] = {"quant_method": "nunchaku_lite", "svdq_w4a4": SVDQ}
    config_file.write_text(json.dumps(config))
    return folder


@pytest.mark.skipif(cuda_available(), reason="the CPU refusal")
def test_a_nunchaku_folder_is_read_and_refused_in_one_line_without_a_gpu(tmp_path: Path) -> None:
    folder = nunchaku_folder(tmp_path)
    from qconf.loading.inspect import inspect_folder

    assert inspect_folder(folder)["quant"]["mapping"]["transformer"]["backend"] == "nunchaku_lite"
    with pytest.raises(qconf.BackendUnavailableError) as caught:
        qconf.load(qconf.compose([f"model.source={folder}"]))
    message = str(caught.value)
    assert "nunchaku_lite" in message and "CUDA GPU" in message
    assert len(message.splitlines()) == 1


def test_a_nunchaku_folder_with_a_malformed_target_list_is_a_plan_error(tmp_path: Path) -> None:
    folder = nunchaku_folder(tmp_path)
    config_file = folder / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    config["quantization_config"]["svdq_w4a4"]["precision"] = "int3"
    config_file.write_text(json.dumps(config))
    with pytest.raises(qconf.PlanError, match="svdq_w4a4.precision"):
        qconf.validate(qconf.compose([f"model.source={folder}"]))


def test_modelopt_is_refused_with_the_reason_not_a_crash() -> None:
    plan = qconf.compose(
        ["quant.mapping.transformer={backend: modelopt, kwargs: {quant_type: FP8}}"]
    )
    with pytest.raises(qconf.BackendUnavailableError) as caught:
        qconf.load(plan)
    assert "not usable with diffusers" in str(caught.value)


def test_modelopt_kwargs_are_checked_like_any_backend() -> None:
    with pytest.raises(qconf.PlanError) as caught:
        qconf.validate(
            qconf.compose(
                ["quant.mapping.transformer={backend: modelopt, kwargs: {quant_type: FP7}}"]
            )
        )
    assert "quant_type" in str(caught.value)
    with pytest.raises(qconf.PlanError, match="not offered"):
        qconf.validate(
            qconf.compose(
                [
                    "quant.mapping.transformer={backend: modelopt, kwargs: "
                    "{quant_type: FP8, forward_loop: x}}"
                ]
            )  # fmt: skip
        )


def test_a_nunchaku_folder_loads_as_saved_not_as_a_file_part(tmp_path: Path) -> None:
    """Its parts are read by diffusers from config.json (on a GPU), never through a file entry;
    and a plan cannot put nunchaku_lite on a plain part."""
    from qconf.loading.loader import load_file_parts

    folder = nunchaku_folder(tmp_path)
    resolved = qconf.validate(qconf.compose([f"model.source={folder}"])).resolve()
    assert resolved.quantized["transformer"].backend == "nunchaku_lite"
    assert load_file_parts(resolved, str(folder), None) == {}
    with pytest.raises(qconf.PlanError, match="reads pre-quantized folders only"):
        qconf.validate(qconf.compose(["quant.mapping.transformer={backend: nunchaku_lite}"]))
