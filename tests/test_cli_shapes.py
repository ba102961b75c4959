"""One shape per idea across commands: `--train [PARTS]` in validate and estimate (a bare
`--train` never swallows the override after it), and argument mistakes answered before torch is
imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qconf.cli.main import main


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
