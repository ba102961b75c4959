"""Property-based: any plan or override list yields a valid Plan or a QconfError, never another
exception; valid plans round-trip through YAML."""

from __future__ import annotations

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qconf
from qconf.backends import REGISTRY
from qconf.plan.conftree import backend_options, group_options

PARTS = [
    "transformer",
    "text_encoder",
    "text_encoder_2",
    "vae",
    "tokenizer",
    "unet",
    "scheduler",
    "x",
]
OPTIONS = sorted(backend_options())
KWARG_KEYS = [
    "quant_type",
    "bnb_4bit_compute_dtype",
    "weights_dtype",
    "load_in_4bit",
    "group_size",
    "compute_dtype",
]
SCALARS = st.one_of(
    st.sampled_from(
        OPTIONS + list(REGISTRY) + ["null", "true", "bfloat16", "int4", "0", "[]", "{}"]
    ),
    st.text(alphabet=st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=12),
    st.integers(-3, 300).map(str),
)
KEYS = st.one_of(
    st.sampled_from(PARTS).map(lambda p: f"quant.mapping.{p}"),
    st.sampled_from(PARTS).map(lambda p: f"quant.mapping.{p}.kwargs.quant_type.group_size"),
    st.sampled_from(KWARG_KEYS).map(lambda k: f"quant.kwargs.{k}"),
    st.sampled_from(
        [
            "quant.backend",
            "quant.components",
            "model",
            "preset",
            "model.source",
            "model.torch_dtype",
            "model.pipeline",
            "quant.mapping",
            "run.steps",
            "quant.bogus",
        ]
    ),
)
OVERRIDE = st.one_of(
    st.tuples(st.sampled_from(["", "+", "++", "~"]), KEYS, SCALARS).map(
        lambda t: f"{t[0]}{t[1]}" if t[0] == "~" else f"{t[0]}{t[1]}={t[2]}"
    ),
    st.text(max_size=20),
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(OPTIONS + PARTS + list(REGISTRY)),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(PARTS + KWARG_KEYS + ["backend", "kwargs", "name"]),
            children,
            max_size=3,
        )
    ),
    max_leaves=8,
)
PLAN_DICT = st.fixed_dictionaries(
    {
        "model": st.fixed_dictionaries(
            {"source": st.sampled_from(["tiny-flux", "tiny-sd", "nope/x"])}
        )
    },
    optional={
        "quant": st.fixed_dictionaries(
            {},
            optional={
                "backend": st.none() | st.sampled_from(list(REGISTRY) + ["nf4"]),
                "kwargs": st.dictionaries(st.sampled_from(KWARG_KEYS), JSON, max_size=2),
                "components": st.none() | st.lists(st.sampled_from(PARTS), max_size=3),
                "mapping": st.dictionaries(
                    st.sampled_from(PARTS), st.none() | st.sampled_from(OPTIONS) | JSON, max_size=3
                ),
            },
        ),
        "extra": JSON,
    },
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.lists(OVERRIDE, max_size=4))
def test_any_overrides_give_a_plan_or_a_qconf_error(overrides: list[str]) -> None:
    try:
        plan = qconf.validate(qconf.compose(overrides))
    except qconf.QconfError as exc:
        assert exc.lines and all(line.strip() for line in exc.lines)
        return
    plan.resolve()


@SETTINGS
@given(PLAN_DICT)
def test_any_plan_dict_gives_a_plan_or_a_qconf_error(data: dict) -> None:
    try:
        qconf.validate(data)
    except qconf.QconfError as exc:
        assert exc.lines


FLUX_MAPPING = st.dictionaries(
    st.sampled_from(["transformer", "text_encoder", "text_encoder_2", "vae"]),
    st.none() | st.sampled_from(OPTIONS),
    max_size=4,
)


@SETTINGS
@given(
    st.one_of(
        FLUX_MAPPING.map(lambda m: [f"quant.mapping.{p}={o or 'null'}" for p, o in m.items()]),
        st.sampled_from(sorted(group_options("preset"))).map(lambda name: [f"preset={name}"]),
    )
)
def test_valid_plans_round_trip_through_yaml(overrides: list[str]) -> None:
    plan = qconf.validate(qconf.compose(overrides))
    text = yaml.safe_dump(plan.model_dump(mode="json"))
    again = qconf.validate(yaml.safe_load(text))
    assert again == plan
    assert again.resolve().to_json() == plan.resolve().to_json()
