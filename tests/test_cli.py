"""The command line as a user meets it: exit codes, one line per problem, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

QCONF = [sys.executable, "-m", "qconf.cli.main"]


def qconf(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*QCONF, *args], capture_output=True, text=True, cwd=cwd, env=os.environ.copy(), timeout=300
    )


def test_validate_ok_line() -> None:
    result = qconf("validate", "preset=flux-int8wo")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "OK: FluxPipeline from black-forest-labs/FLUX.1-dev, granular mode, "
        "quantized: text_encoder_2=torchao, transformer=torchao"
    )


def test_validate_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from qconf.cli.main import main\n"
        "assert main(['validate', 'preset=flux-int8wo']) == 0\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'torchao', 'bitsandbytes') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="on a GPU machine bitsandbytes can run")
def test_validate_nf4_on_cpu_is_exit_2_unless_plan_only() -> None:
    result = qconf("validate", "preset=flux-nf4")
    assert result.returncode == 2
    assert result.stderr.startswith(
        "error: quant.mapping.transformer: bitsandbytes_4bit on 'transformer' (diffusers part) "
        "needs a CUDA GPU"
    )
    assert qconf("validate", "--plan-only", "preset=flux-nf4").returncode == 0


# A corpus of wrong input, as a new user types it: (args, text the one-line error must contain)
WRONG = [
    (["validate", "quant.mapping.transformer=nf5"], "did you mean 'nf4'"),
    (["validate", "quant.mapping.tokenizer=int8wo"], "quant.mapping.tokenizer"),
    (["validate", "quant.mapping.unet=int8wo"], "'unet' is not a part of FluxPipeline"),
    (["validate", "preset=flux-nf8"], "unknown preset 'flux-nf8'"),
    (["validate", "model=tiny-fluxx"], "did you mean 'tiny-flux'"),
    (["validate", "quant.backend=nf4"], "'nf4' is a backend option"),
    (["validate", "quant.backend=torchao"], "quant.kwargs.quant_type"),
    (["validate", "quant.bakend=torchao"], "quant.bakend"),
    (["validate", "quant.mapping=[1"], "bad override syntax"),
    (["validate", "quant.mapping.vae=int8wo", "quant.components=[vae]"], "quant.components"),
    (["validate", "model.torch_dtype=fp16"], "model.torch_dtype"),
    (["validate", "model.source=/no/such/folder"], "/no/such/folder"),
    (
        [
            "validate",
            "quant.mapping.transformer=nf4",
            "quant.mapping.transformer.kwargs.compute_dtype=bfloat16",
        ],
        "bnb_4bit_compute_dtype",
    ),
    (
        ["show", "quant.mapping.transformer={backend:torchao,kwargs:{quant_type:{name:Int4}}}"],
        "unknown torchao quant type 'Int4'",
    ),
    (["load", "quant.mapping.transformer=nf4"], "needs a CUDA GPU"),
    (
        [
            "validate",
            "quant.mapping.transformer={backend:torchao,kwargs:{quant_type:{name:Int4WeightOnlyConfig}}}",
        ],
        "needs a CUDA GPU",
    ),
    (["show", "--config-dir", "/no/such/dir"], "--config-dir"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize(("args", "expected"), WRONG, ids=[" ".join(a) for a, _ in WRONG])
def test_wrong_input_is_exit_2_with_a_line_naming_it(args: list[str], expected: str) -> None:
    if "CUDA" in expected and Path("/dev/nvidia0").exists():
        pytest.skip("runs on a GPU machine")
    result = qconf(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert expected in result.stderr


def test_malformed_yaml_in_a_user_config_dir(tmp_path: Path) -> None:
    (tmp_path / "preset").mkdir()
    (tmp_path / "preset" / "broken.yaml").write_text("# @package _global_\nquant: [\n")
    result = qconf("validate", "--config-dir", str(tmp_path), "preset=broken")
    assert result.returncode == 2
    assert "broken.yaml" in result.stderr and "malformed YAML" in result.stderr
    assert "Traceback" not in result.stderr


def test_show_json_contract() -> None:
    result = qconf("show", "--json", "preset=flux-int8wo", "model=tiny-flux")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert set(shown) == {"mode", "model", "components"}
    assert shown["mode"] == "granular"
    assert shown["model"] == {
        "source": "tiny-flux",
        "pipeline": "FluxPipeline",
        "torch_dtype": "bfloat16",
        "allow_pickle": False,
        "trust_remote_code": False,
        "device_map": None,
    }
    assert shown["components"] == {
        "text_encoder": None,
        "text_encoder_2": {
            "backend": "torchao",
            "library": "transformers",
            "config_class": "TorchAoConfig",
            "kwargs": {"quant_type": {"name": "Int8WeightOnlyConfig"}},
        },
        "transformer": {
            "backend": "torchao",
            "library": "diffusers",
            "config_class": "TorchAoConfig",
            "kwargs": {"quant_type": {"name": "Int8WeightOnlyConfig"}},
        },
        "vae": None,
    }


def test_show_table_and_list() -> None:
    shown = qconf("show", "preset=flux-nf4")
    assert shown.returncode == 0 and "bitsandbytes_4bit" in shown.stdout
    listed = qconf("list")
    assert listed.returncode == 0
    for word in ("bitsandbytes_4bit", "torchao", "quanto", "int8wo", "flux-nf4", "tiny-flux"):
        assert word in listed.stdout


def test_schema_is_json_schema_with_typed_kwargs() -> None:
    result = qconf("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["$defs"]["BitsAndBytesKwargs"]["additionalProperties"] is False
    assert "bnb_4bit_compute_dtype" in schema["$defs"]["BitsAndBytesKwargs"]["properties"]
    conditions = schema["$defs"]["QuantSpec"]["allOf"]
    assert {c["if"]["properties"]["backend"]["const"] for c in conditions} >= {"torchao", "quanto"}


def test_load_prints_the_report() -> None:
    result = qconf("load", "--json", "quant.mapping.transformer=int8wo")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    transformer = report["components"]["transformer"]
    assert transformer["backend"] == "torchao"
    assert (
        transformer["quantized_layers"] and transformer["bytes"] < transformer["bytes_unquantized"]
    )
    assert report["load_seconds"] > 0


def test_run_writes_image_plan_and_report(tmp_path: Path) -> None:
    result = qconf("run", "preset=flux-int8wo", "model=tiny-flux", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (image,) = tmp_path.glob("outputs/*/*/image.png")
    folder = image.parent
    assert (folder / "plan.yaml").is_file() and (folder / "report.json").is_file()
    assert (
        json.loads((folder / "report.json").read_text())["components"]["transformer"]["backend"]
        == "torchao"
    )
    from PIL import Image

    assert Image.open(image).size == (32, 32)


def test_run_user_error_is_exit_2_and_leaves_no_run_folder(tmp_path: Path) -> None:
    result = qconf("run", "quant.mapping.transformer=nf5", cwd=tmp_path)
    assert result.returncode == 2
    assert "did you mean 'nf4'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_run_multirun_sweeps_options(tmp_path: Path) -> None:
    result = qconf("run", "-m", "quant.mapping.transformer=int8wo,int4wo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.glob("multirun/*/*/*/image.png"))) == 2
