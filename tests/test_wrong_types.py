"""A value of the wrong type at any plan key is a PlanError (one line per problem, exit 2 on the
command line), never a TypeError from inside qconf. Torch-free."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import pytest
from omegaconf import OmegaConf

import qconf
from qconf.backends import REGISTRY
from qconf.cli.main import main

LINE = re.compile(r"^error: \S.*?: .+ — .+$")

# What a command line or a YAML file can put at a key, of every shape.
WRONG: list[Any] = [[], {"x": 1}, {}, [1, 2], [[1]], {"a": {"b": 1}}, [None], None, 1, -1,
                    1.5, True, "abc", "", float("inf"), float("nan"), [{"x": 1}], {1: 2},
                    2**70]  # fmt: skip

# One plan of each entry shape, so that every key the schema knows is present somewhere.
PLANS: dict[str, list[str]] = {
    "granular": [
        "quant.mapping.transformer=int4wo",  # torchao: quant_type with fields
        "+quant.mapping.text_encoder={backend:quanto,kwargs:{weights_dtype:int8},skip:[x]}",
        "quant.mapping.text_encoder_2=nf4",  # bitsandbytes kwargs
        "+quant.mapping.vae={backend:gguf,file:x.gguf,kwargs:{compute_dtype:bfloat16}}",
    ],
    "global": [
        "quant.backend=quanto",
        "++quant.kwargs={weights_dtype:int8}",
        "quant.components=[transformer,vae]",
    ],  # fmt: skip
}


def _plain(overrides: list[str]) -> dict[str, Any]:
    return OmegaConf.to_container(qconf.compose(overrides), resolve=True)  # type: ignore[return-value]


def _keys(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path of the plan, containers included (hydra's node is not part of a plan)."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        if prefix == () and key == "hydra":
            continue
        yield (*prefix, key)
        if isinstance(value, (dict, list)) and value:
            yield from _keys(value, (*prefix, key))


def _cases() -> Iterator[tuple[str, tuple[Any, ...]]]:
    seen = set()
    for name, overrides in PLANS.items():
        for path in _keys(_plain(overrides)):
            shape = tuple(p if isinstance(p, str) else 0 for p in path)  # list items alike
            if shape not in seen:
                seen.add(shape)
                yield name, path


CASES = list(_cases())


def _with(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


@pytest.mark.parametrize(("plan", "path"), CASES, ids=[".".join(map(str, p)) for _, p in CASES])
def test_every_wrong_type_at_every_key_is_a_plan_error(plan: str, path: tuple[Any, ...]) -> None:
    base = _plain(PLANS[plan])
    base.pop("hydra", None)
    for value in WRONG:
        for data in (_with(base, path, value), OmegaConf.create(_with(base, path, value))):
            try:
                qconf.validate(data)
            except qconf.PlanError as exc:
                assert exc.problems, (path, value)
                assert all("\n" not in str(p) for p in exc.problems), (path, value, exc)


def test_the_key_walk_reaches_the_nested_keys() -> None:
    """The corpus is only as good as its key list."""
    keys = {".".join(map(str, path)) for _, path in CASES}
    assert {"quant.backend", "quant.kwargs.weights_dtype", "quant.components.0",
            "quant.mapping.transformer.kwargs.quant_type.group_size",
            "quant.mapping.text_encoder.skip.0", "quant.mapping.vae.file",
            "quant.mapping.text_encoder_2.kwargs.bnb_4bit_quant_type", "model.source",
            "model.device_map", "run.seed", "run.prompt"} <= keys  # fmt: skip


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ("quant.backend=[]", "quant.backend"),
        ("quant.backend={x:1}", "quant.backend"),
        ("quant.backend={}", "quant.backend"),
        ("quant.backend=[[1]]", "quant.backend"),
        ("+quant.mapping.vae={backend:[]}", "quant.mapping.vae.backend"),
        ("+quant.mapping.vae={backend:{x:1}}", "quant.mapping.vae.backend"),
        ("++quant.kwargs=[]", ""),  # Hydra refuses the merge: "config: Error merging override"
        ("model.source=[]", "model.source"),
        ("model.source={x:1}", "model.source"),
        ("quant.components={x:1}", "quant.components"),
    ],
)
def test_wrong_types_on_the_command_line_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], override: str, where: str
) -> None:
    code = main(["validate", override])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert lines and all(LINE.match(line) for line in lines), err
    assert any(line.startswith(f"error: {where}") for line in lines), err


def test_quant_backend_of_the_wrong_type_names_the_backends() -> None:
    with pytest.raises(qconf.PlanError) as caught:
        qconf.validate(qconf.compose(["quant.backend=[]"]))
    assert caught.value.lines == [
        f"quant.backend: [] is not a backend name — set one of: {', '.join(REGISTRY)}; or per "
        "part: quant.mapping.<part>=<option>"
    ]
