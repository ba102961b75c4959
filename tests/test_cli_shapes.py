"""One shape per idea across commands: `--train [PARTS]` in validate and estimate (a bare
`--train` never swallows the override after it), and argument mistakes answered before torch is
imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qconf.cli.main import main
from qconf.estimate import presets


def test_validate_train_takes_parts_or_means_every_quantized_part(capsys) -> None:  # noqa: ANN001
    plan = ["preset=flux-int8wo", "model=tiny-flux"]
    assert main(["validate", "--train", *plan]) == 0  # the override is not taken as PARTS
    assert main(["validate", "--train", "transformer", *plan]) == 0
    assert main(["validate", *plan, "quant.mapping.transformer=int8dq", "--train"]) == 2
    assert "cannot train LoRA on 'transformer'" in capsys.readouterr().err
    # int8dq on the transformer does not matter when only the text encoder is trained
    assert main(["validate", *plan, "quant.mapping.transformer=int8dq", "--train",
                 "text_encoder_2"]) == 0  # fmt: skip
    assert main(["validate", "--train", "tokenizer", *plan]) == 2
    assert "train part 'tokenizer'" in capsys.readouterr().err
    assert main(["validate", "--train"]) == 0  # nothing quantized: a bf16 base trains


def test_estimate_train_bare_estimates_every_quantized_part(capsys) -> None:  # noqa: ANN001
    assert main(["estimate", "--train", "preset=flux-int8wo", "model=tiny-flux"]) == 0
    out = capsys.readouterr().out
    assert "LoRA r=4 on transformer" in out and "LoRA r=4 on text_encoder_2" in out
    assert main(["estimate", "--train"]) == 2  # nothing quantized, no part named
    assert "--train: the plan quantizes no part" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["estimate", "--train", "transfomer"],
        ["estimate", "--train", "transformer", "--rank", "0"],
        ["validate", "--train", "transfomer"],
    ],
)
def test_argument_mistakes_are_answered_before_torch_is_imported(argv: list[str]) -> None:
    code = (
        "import sys\nfrom qconf.cli.main import main\n"
        f"rc = main({argv!r})\nprint(rc, 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.stdout.split() == ["2", "False"], result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


# --- the CLI guard: exit 2 only for qconf's own errors, a bug stays exit 1 ---


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (RuntimeError("boom"), 1),
        (ValueError("a library's own ValueError"), 1),  # a ValueError is not a user error
        (KeyError("missing"), 1),
        (TypeError("bad call"), 1),
        (OSError("disk"), 1),
        ("plan", 2),  # qconf.PlanError
        ("backend", 2),  # qconf.BackendUnavailableError (an ImportError)
        (KeyboardInterrupt(), 130),
    ],
)
def test_only_qconfs_own_errors_are_exit_2_and_a_bug_stays_exit_1(
    raised: object, code: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import qconf
    import qconf.cli.validate_cmd as validate_cmd

    errors = {
        "plan": qconf.PlanError(qconf.Problem("quant.backend", "wrong", "fix it")),
        "backend": qconf.BackendUnavailableError(qconf.Problem("quanto", "missing", "install")),
    }

    def run(_args: object) -> int:
        raise errors.get(raised, raised)  # type: ignore[misc, call-overload]

    monkeypatch.setattr(validate_cmd, "run", run)
    assert main(["validate"]) == code
    err = capsys.readouterr().err
    if code == 1:
        assert "Traceback" in err and "this is a bug in qconf" in err
        assert err.rstrip().splitlines()[-1].startswith("error: this is a bug in qconf")
    elif code == 2:
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_a_bug_inside_a_run_job_is_exit_1_with_qconfs_report_and_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import qconf.cli.hydra_run as hydra_run

    def broken(*_args: object, **_kwargs: object) -> None:
        raise IndexError("index 0 is out of bounds")  # what a library bug looks like

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hydra_run, "_generate", broken)
    assert main(["run", "model=tiny-flux"]) == 1
    err = capsys.readouterr().err
    assert "IndexError" in err and "this is a bug in qconf" in err
    assert "HYDRA_FULL_ERROR" not in err  # qconf's report, not Hydra's
    assert list(tmp_path.iterdir()) == []  # the job folder and its parents removed


def test_a_scheduler_that_cannot_run_one_step_is_refused_before_the_load() -> None:
    assert main(["validate", "model=tiny-ltx", "run.steps=1"]) == 2
    assert main(["validate", "model=tiny-ltx", "run.steps=2"]) == 0
    assert main(["validate", "model=tiny-wan", "run.steps=1"]) == 0


@pytest.mark.parametrize(
    "override", ["run.steps=true", "run.seed=true", "run.steps=2.0", "run.width=false"]
)
def test_a_boolean_or_a_float_is_not_a_count(override: str) -> None:
    assert main(["validate", override]) == 2
    assert main(["validate", "model=tiny-wan", "run.num_frames=true"]) == 2


def test_argument_mistakes_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["list", "foo", "--json"], ["list", "presets", "--fits"],
                 ["estimate", "--rank", "1e9"], ["nonsense"], ["validate", "--bogus"],
                 ["estimate", "--rank", "8", "model=tiny-flux"]):  # fmt: skip
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), (argv, err)


def test_a_budget_no_preset_meets_says_the_smallest(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every built-in preset's figure comes from the shipped file: none is estimated here (a
    minute for all of them)."""

    def not_from_the_shipped_file(name: str, config_dir: object = None) -> None:
        raise AssertionError(f"{name} was estimated, not read from the shipped file")

    monkeypatch.setattr(presets, "estimate_preset", not_from_the_shipped_file)
    assert main(["list", "presets", "--fits", "1KiB"]) == 0
    out = capsys.readouterr().out
    assert "no preset loads in 1.0 KiB: the smallest peak while loading is" in out


def test_train_parts_may_be_spaced() -> None:
    plan = ["preset=flux-int8wo", "model=tiny-flux"]
    assert main(["validate", "--train", "transformer, text_encoder_2", *plan]) == 0
