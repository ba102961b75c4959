"""stdout carries qconf's own output only; a library's repeated warning is shown once; the
libraries' progress bars are off on the command line; a user's Hydra app can hand qconf its
whole config and its per-part overrides are typed as on `qconf run`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import qconf
from qconf.quiet import EscapedFormatter, OncePerMessage

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_CONF = REPO / "examples" / "conf"


def test_run_prints_no_library_line_on_stdout_and_a_repeated_warning_once(tmp_path: Path) -> None:
    # bitsandbytes warns "MatMul8bitLt: inputs will be cast" once per Linear (12 here)
    env = {**os.environ, "QCONF_VERBOSE": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "qconf.cli.main", "run", "model=tiny-flux",
         "quant.mapping.text_encoder=bnb-int8", "run.steps=1"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MatMul8bitLt" not in result.stdout and "WARNING" not in result.stdout
    assert "[HYDRA]" not in result.stdout
    assert result.stderr.count("MatMul8bitLt") == 1
    assert "it/s" not in result.stderr and "Loading pipeline components" not in result.stderr
    assert result.stdout.rstrip().splitlines()[-1].startswith("wrote ")
    (log,) = tmp_path.glob("outputs/*/*/qconf.log")  # the full log stays in the run folder
    assert log.read_text().count("MatMul8bitLt") >= 2


def test_once_per_message_lets_each_distinct_library_message_through_once() -> None:
    once = OncePerMessage()

    def record(name: str, message: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, message, None, None)

    assert once.filter(record("bitsandbytes", "cast"))
    assert not once.filter(record("bitsandbytes", "cast"))
    assert once.filter(record("bitsandbytes", "another"))
    assert once.filter(record("torchao", "cast"))  # another logger: its own message
    assert once.filter(record("qconf.run", "same")) and once.filter(record("qconf.run", "same"))


def test_library_messages_are_escaped_before_the_terminal() -> None:
    line = EscapedFormatter("%(message)s").format(
        logging.LogRecord(
            "lib", logging.WARNING, __file__, 1, "path \x1b[31mred\x1b[0m", None, None
        )
    )
    assert "\x1b" not in line and "\\x1b" in line


@pytest.fixture(scope="module")
def app_cfg():  # noqa: ANN201 - a Hydra app's whole config: the plan beside keys of its own
    with initialize_config_dir(config_dir=str(EXAMPLE_CONF), version_base=None):
        return compose(
            "train", overrides=["+out=somewhere", "++quant.mapping={transformer: int8wo}"]
        )


def test_load_pipeline_takes_the_plan_sections_of_a_whole_app_config(app_cfg) -> None:  # noqa: ANN001
    pipeline = qconf.load_pipeline(app_cfg)
    assert type(pipeline.transformer.proj_out.weight).__name__ == "Int8Tensor"


def test_a_misspelt_plan_section_in_an_app_config_is_refused_not_ignored(app_cfg) -> None:  # noqa: ANN001
    bigger = {**app_cfg, "qaunt": {"mapping": {"vae": "int8wo"}}}
    with pytest.raises(qconf.PlanError, match="qaunt: looks like the plan section 'quant'"):
        qconf.load_pipeline(bigger)
    # keys of the app's own that only resemble a section are left to the app
    own = {**app_cfg, "mode": "train", "models": ["a"], "runs": 3, "quants": {}}
    assert qconf.intake(app_config=True, cfg=own).model.source == "tiny-flux"
    with pytest.raises(qconf.PlanError, match="model: missing from the app config"):
        qconf.load_pipeline({"out": "somewhere", "steps": 3})


def test_the_app_command_line_takes_per_part_overrides_as_qconf_run_does() -> None:
    typed = ["quant.mapping.transformer=quanto-int8", "train.rank=8"]
    argv = qconf.app_command_line(EXAMPLE_CONF, "train", typed)
    with initialize_config_dir(config_dir=str(EXAMPLE_CONF), version_base=None):
        cfg = compose("train", overrides=argv)
    plan = qconf.intake(model=cfg.model, quant=cfg.quant, run=cfg.run)
    assert plan.resolve().quantized["transformer"].backend == "quanto"
    assert cfg.train.rank == 8
    with pytest.raises(qconf.PlanError):  # a file's hydra node is still checked first
        qconf.app_command_line(EXAMPLE_CONF, "train", ["hydra.job.name=bad name!"])


def test_qconf_hears_every_denoising_step_for_its_own_bar() -> None:
    from qconf.run.generate import generate

    plan = qconf.intake(overrides=["model=tiny-flux", "run.steps=2", "run.seed=[0,1]"])
    heard: list[tuple[int, int, str]] = []
    images = generate(qconf.load_pipeline(plan), plan.run, lambda *step: heard.append(step))
    assert len(images) == 2
    assert heard == [(1, 4, "image 1/2"), (2, 4, "image 1/2"), (3, 4, "image 2/2"),
                     (4, 4, "image 2/2")]  # fmt: skip
