"""The trust flags and interpolation bounds of the plan core, pinned fast for `make mutate`:
qconf.plan.trust (each flag as written and as resolved, what typed overrides turn on, the exact
problems, a running Hydra app's command line and every `model:` section of its config) and
qconf.plan.interpolation (the reference count, the exact resolved-size bound at its edges,
where a reference points, the refusing resolvers and the exception chain)."""

from __future__ import annotations

import sys

import pytest
from omegaconf import OmegaConf

from qconf import PlanError
from qconf.errors import Problem
from qconf.plan import interpolation
from qconf.plan.interpolation import (
    MAX_INTERPOLATIONS,
    MAX_RESOLVED_CHARS,
    EnvironmentRead,
    _dotted,
    _refusing,
    _target,
    check_interpolation_count,
    check_interpolation_size,
    exception_chain,
    no_environment_reads,
    strings,
)
from qconf.plan.trust import (
    TRUST_FLAGS,
    _model_sections,
    _typed_app_overrides,
    app_trust_problems,
    flag_values,
    trust_problems,
    typed_trust_flags,
)

PICKLE, REMOTE = "model.allow_pickle", "model.trust_remote_code"
SIZE_FIX = "write values instead of references"


def lines(call, *args, **kwargs) -> list[str]:  # noqa: ANN001
    with pytest.raises(PlanError) as caught:
        call(*args, **kwargs)
    return caught.value.lines


def too_big(where: str) -> list[str]:
    return [
        f"{where}: its interpolations (${{...}}) would resolve to more than 1,000,000 "
        f"characters — {SIZE_FIX}"
    ]


def turned_on(flag: str, source: str = "a file") -> Problem:
    return Problem(
        flag,
        f"turned on by {source}; it lets the model run code",
        f"type {flag}=true on the command line if you trust this model",
    )


def set_to(flag: str, shown: str, source: str = "a file") -> Problem:
    return Problem(
        flag,
        f"set to {shown} by {source}; it lets the model run code",
        f"type {flag}=true on the command line if you trust this model",
    )


# --- trust: flag_values ---------------------------------------------------------------------


def test_flag_values_of_plain_data() -> None:
    assert TRUST_FLAGS == (PICKLE, REMOTE)
    assert flag_values({"model": {"allow_pickle": True, "trust_remote_code": "yes"}}) == {
        PICKLE: [True],
        REMOTE: ["yes"],
    }
    assert flag_values({"model": {"trust_remote_code": 1}}) == {PICKLE: [None], REMOTE: [1]}
    for data in ({"model": "tiny-flux"}, {"other": {}}, ["model"], None):
        assert flag_values(data) == {PICKLE: [None], REMOTE: [None]}


def test_flag_values_as_written_and_as_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = OmegaConf.create(
        {"model": {"allow_pickle": "${x}", "trust_remote_code": False}, "x": True}
    )
    assert flag_values(cfg) == {PICKLE: ["${x}", True], REMOTE: [False, False]}
    # A reference that cannot resolve, or an environment read: resolved counts as unknown.
    cfg = OmegaConf.create({"model": {"allow_pickle": "${missing}", "trust_remote_code": 1}})
    assert flag_values(cfg) == {PICKLE: ["${missing}", None], REMOTE: [1, None]}
    monkeypatch.setenv("HOME", "/home/qconf")
    cfg = OmegaConf.create({"model": {"allow_pickle": "${oc.env:HOME}"}})
    assert flag_values(cfg) == {PICKLE: ["${oc.env:HOME}", None], REMOTE: [None, None]}
    assert OmegaConf.create({"h": "${oc.env:HOME}"}).h == "/home/qconf"  # guard undone
    for cfg in (OmegaConf.create({"other": 1}), OmegaConf.create(["model"])):
        assert flag_values(cfg) == {PICKLE: [None, None], REMOTE: [None, None]}


def test_flag_values_of_a_model_section_that_is_one_interpolation() -> None:
    cfg = OmegaConf.create({"model": "${other}", "other": {"allow_pickle": True}})
    shown = "${...} (${other})"
    assert flag_values(cfg) == {PICKLE: [None, True, shown], REMOTE: [None, None, shown]}
    key = "a_rather_long_key_name_for_the_model_section"
    cfg = OmegaConf.create({"model": f"${{{key}}}", key: {"trust_remote_code": "yes"}})
    shown = "${...} (${a_rather_long_key_name_for_the_model_s)"
    assert flag_values(cfg) == {PICKLE: [None, None, shown], REMOTE: [None, "yes", shown]}
    # oc.decode resolves to a plain dict, not a config node.
    decoded = "${oc.decode:'{allow_pickle: true}'}"
    shown = f"${{...}} ({decoded})"
    cfg = OmegaConf.create({"model": decoded})
    assert flag_values(cfg) == {PICKLE: [None, True, shown], REMOTE: [None, None, shown]}


def test_flag_values_counts_references_before_resolving() -> None:
    cfg = OmegaConf.create({"model": {"allow_pickle": "${x}" * (MAX_INTERPOLATIONS + 1)}, "x": 1})
    assert lines(flag_values, cfg) == [
        "config: 31 interpolations (${...}); at most 30 — write values instead of references"
    ]


# --- trust: typed flags and problems --------------------------------------------------------


def test_typed_trust_flags() -> None:
    assert typed_trust_flags([]) == set()
    assert typed_trust_flags([f"{PICKLE}=true", f"{REMOTE}=false"]) == {PICKLE}
    assert typed_trust_flags([f"{REMOTE}=true", f"+{PICKLE}=true"]) == {PICKLE, REMOTE}
    assert typed_trust_flags([f"{PICKLE}=yes", f"{REMOTE}=1", f"~{PICKLE}=true"]) == set()
    assert typed_trust_flags(["pipe.model.allow_pickle=true", "allow_pickle=true"]) == set()


def test_trust_problems_exact() -> None:
    values = {PICKLE: [None, True], REMOTE: [False, "x" * 50]}
    assert trust_problems(values, set(), "a file") == [
        turned_on(PICKLE),
        set_to(REMOTE, repr("x" * 40)),
    ]
    assert trust_problems(values, {PICKLE}, "a file") == [set_to(REMOTE, repr("x" * 40))]
    assert trust_problems(values, {PICKLE, REMOTE}, "a file") == []
    # The first value that is on is shown, whatever follows it.
    assert trust_problems({REMOTE: [None, 1, True]}, set(), "src") == [set_to(REMOTE, "'1'", "src")]
    assert trust_problems({PICKLE: [True, "yes"]}, set(), "src") == [turned_on(PICKLE, "src")]
    assert trust_problems({PICKLE: [None, False, 0]}, set(), "src") == []
    assert trust_problems({}, set(), "src") == []
    assert str(turned_on(PICKLE)) == (
        "model.allow_pickle: turned on by a file; it lets the model run code — type "
        "model.allow_pickle=true on the command line if you trust this model"
    )


# --- trust: a running Hydra app -------------------------------------------------------------


@pytest.fixture
def hydra_running(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    from hydra.core.hydra_config import HydraConfig

    monkeypatch.setattr(HydraConfig.instance(), "cfg", OmegaConf.create({"hydra": {}}))

    def argv(*typed: str) -> None:
        monkeypatch.setattr(sys, "argv", ["app.py", *typed])

    argv()
    return argv


def test_typed_app_overrides_read_sys_argv(hydra_running) -> None:  # noqa: ANN001
    hydra_running()
    assert _typed_app_overrides() == []
    hydra_running(
        "a=1", "-m", "--cfg=job", "plain", "~b=2", "d=[", "+e.f=true", "x.y='s'", "g=null"
    )
    assert _typed_app_overrides() == [("a", 1), ("e.f", True), ("x.y", "s"), ("g", None)]


def test_model_sections_at_any_depth() -> None:
    inner = {"allow_pickle": True}
    outer = {"trust_remote_code": True, "x": {"model": inner}}
    data = {"model": outer, "l": [{"model": {"a": 1}}, ({"model": "text"},)], "s": "model"}
    assert list(_model_sections(data)) == [outer, inner, {"a": 1}]
    assert list(_model_sections([{"model": inner}, ({"model": outer},)])) == [inner, outer, inner]
    assert list(_model_sections("model")) == []
    assert list(_model_sections({"model": ["x"]})) == []

    def nested(depth: int) -> dict:
        data: dict = {"model": {"n": depth}}
        for _ in range(depth):
            data = {"a": data}
        return data

    # The dict holding `model:` may sit at depth 64 (the top one is depth 0), not deeper.
    assert list(_model_sections(nested(64))) == [{"n": 64}]
    assert list(_model_sections(nested(65))) == []
    listed: list = [{"model": {"n": 0}}]
    for _ in range(63):
        listed = [listed]
    assert list(_model_sections(listed)) == [{"n": 0}]
    assert list(_model_sections([listed])) == []


def test_app_trust_problems_outside_a_running_app() -> None:
    from hydra.core.hydra_config import HydraConfig

    assert not HydraConfig.initialized()
    assert app_trust_problems({"model": {"allow_pickle": True}}, "src") == []


def test_app_trust_problems_in_a_running_app(hydra_running) -> None:  # noqa: ANN001
    data = {
        "cfg": {"pipe": {"model": {"allow_pickle": True, "trust_remote_code": "yes"}}},
        "args": [{"model": {"allow_pickle": True}}, {"model": {"trust_remote_code": False}}],
    }
    src = "the app's config files"
    assert app_trust_problems(data, src) == [turned_on(PICKLE, src), set_to(REMOTE, "'yes'", src)]
    hydra_running("pipe.model.allow_pickle=true")
    assert app_trust_problems(data, src) == [set_to(REMOTE, "'yes'", src)]
    hydra_running("model.trust_remote_code=true", "model.allow_pickle=true")
    assert app_trust_problems(data, src) == []
    for typed in ("xmodel.allow_pickle=true", "model.allow_pickle=yes", "~model.allow_pickle"):
        hydra_running(typed, "model.trust_remote_code=true")
        assert app_trust_problems(data, src) == [turned_on(PICKLE, src)]
    hydra_running()
    assert app_trust_problems({"model": {"allow_pickle": False}, "x": [1]}, src) == []


# --- interpolation: counting and walking ----------------------------------------------------


def test_strings_and_dotted_paths() -> None:
    data = {"a": {"b": "x", "c": 1}, "l": ["y", {"m": "z"}], "n": None}
    assert list(strings(data)) == [("a.b", "x"), ("l[0]", "y"), ("l[1].m", "z")]
    assert list(strings(data, "top")) == [("top.a.b", "x"), ("top.l[0]", "y"), ("top.l[1].m", "z")]
    assert list(strings("s")) == [("", "s")]
    assert _dotted("a[0].b[12][3]") == "a.0.b.12.3"
    assert _dotted("a[x]") == "a[x]"


def test_interpolation_count_limit() -> None:
    check_interpolation_count({"a": "${b}" * 20, "c": ["${b}" * 10], "b": 1})
    assert lines(check_interpolation_count, {"a": "${b}" * 20, "c": ["${b}${b}" * 6]}) == [
        "config: 32 interpolations (${...}); at most 30 — write values instead of references"
    ]
    # Under the count, the size is still checked.
    assert lines(check_interpolation_count, {"a": "x" * (MAX_RESOLVED_CHARS + 1)}) == too_big("a")


# --- interpolation: the resolved-size bound, exact at its edge ------------------------------


def at_edge(make) -> None:  # noqa: ANN001 - make(extra) -> (data, where)
    """`make(0)` resolves to exactly MAX_RESOLVED_CHARS at `where` and passes; one more fails."""
    data, _ = make(0)
    check_interpolation_size(data)
    data, where = make(1)
    assert lines(check_interpolation_size, data) == too_big(where)


def test_a_written_value_at_the_size_edge() -> None:
    assert MAX_RESOLVED_CHARS == 1_000_000
    at_edge(lambda extra: ({"a": {"b": "x" * (MAX_RESOLVED_CHARS + extra)}}, "a.b"))
    at_edge(lambda extra: ({"l": [1, "x" * (MAX_RESOLVED_CHARS + extra)]}, "l.1"))
    at_edge(lambda extra: ("x" * (MAX_RESOLVED_CHARS + extra), "config"))


def test_a_reference_to_a_value_at_the_size_edge() -> None:
    n = MAX_RESOLVED_CHARS - 10
    # 'b' is 7 + 4 written characters plus what `a` resolves to.
    at_edge(lambda extra: ({"a": "x" * (n + extra - 1), "b": "yyy${a}zzzz"}, "b"))
    at_edge(lambda extra: ({"a": ["x" * (n + extra - 1)], "b": "yyy${a[0]}z"}, "b"))
    at_edge(lambda extra: ({"g": {"a": "x" * (n + extra), "b": "${.a}" + "y" * 5}}, "g.b"))
    at_edge(lambda extra: ({"g": {"h": {"b": "${..a}yyyy"}, "a": "x" * (n + extra)}}, "g.h.b"))
    sel = "${oc.select:a, 0}"  # 17 characters
    at_edge(lambda extra: ({"a": "x" * (n + extra - 7), "b": sel}, "b"))
    sel = "${oc.select:a,'p:q'}"  # 20 characters
    at_edge(lambda extra: ({"a": "x" * (n + extra - 10), "b": sel}, "b"))


def test_two_references_at_the_size_edge() -> None:
    # After `${a}` 'b' is exactly at the edge; `${c}` adds one character more.
    data = {"a": "x" * (MAX_RESOLVED_CHARS - 8), "b": "${a}${c}", "c": "y"}
    assert lines(check_interpolation_size, data) == too_big("b")
    data["c"] = ""
    check_interpolation_size(data)


def test_a_reference_to_a_container_at_the_size_edge() -> None:
    # A container counts each value under it plus its key and 4 characters.
    n = MAX_RESOLVED_CHARS - 4 - (10 + 3 + 4) - (5 + 4)
    at_edge(
        lambda extra: (
            {"b": "${c}", "c": {"k": "x" * 10, "l": ["y" * (n + extra)]}, "c-": "z" * 9, "c0": "z"},
            "b",
        )
    )
    # The whole config: another resolver's argument is not followed (`${oc.decode:...}` counts
    # every value, keys included); the referring value itself counts as empty there.
    n = MAX_RESOLVED_CHARS - 14 - (1 + 4) - (1 + 4)
    at_edge(lambda extra: ({"a": "x" * (n + extra), "b": "${oc.decode:a}"}, "b"))
    at_edge(lambda extra: ({"a": "x" * (n + extra + 11), "b": "${}"}, "b"))
    at_edge(lambda extra: ({"-a": "x" * (n + extra - 1), "b": "${oc.decode:a}"}, "b"))


def test_a_container_over_the_edge_stops_counting() -> None:
    data = {"c": {"a": "x" * MAX_RESOLVED_CHARS, "b": "y"}, "r": "${c}", "s": "${c.b}"}
    assert lines(check_interpolation_size, data) == too_big("r")


def test_reference_loops_count_nothing() -> None:
    value = "x" * (MAX_RESOLVED_CHARS - 4)
    check_interpolation_size({"a": value + "${a}"})
    check_interpolation_size({"a": "x" * (MAX_RESOLVED_CHARS - 8) + "${b}", "b": "${a}"})
    assert lines(check_interpolation_size, {"a": value + "${b}", "b": "${a}"}) == too_big("a")


def test_a_long_chain_of_references_is_refused() -> None:
    def chain(length: int) -> dict:
        data = {f"k{i:02d}": f"${{k{i + 1:02d}}}" for i in range(length)}
        data[f"k{length:02d}"] = "v"
        return data

    check_interpolation_size(chain(64))
    assert lines(check_interpolation_size, chain(65)) == too_big("k00")


def test_doubling_references_are_bounded_fast() -> None:
    data = {"k00": "x" * 100}
    for i in range(1, 40):
        data[f"k{i:02d}"] = f"${{k{i - 1:02d}}}${{k{i - 1:02d}}}"
    assert lines(check_interpolation_size, data) == too_big("k14")


def test_where_a_reference_points() -> None:
    assert _target("a.b", "c") == "c"
    assert _target("a.b", " c[1].d ") == "c.1.d"
    assert _target("a.b", ".c") == "a.c"
    assert _target("a.b", ".c.") == "a.c"
    assert _target("a.b", ".") == "a"
    assert _target("a.b.c", "..d") == "a.d"
    assert _target("a.b.c", "..d.e") == "a.d.e"
    assert _target("a", "..d") == "d"
    assert _target("a.b", ".Xc") == "a.Xc"
    assert _target("a.b", ".cX") == "a.cX"
    assert _target("X.b", ".c") == "X.c"
    assert _target("a", " oc.select : b.c , 3") == "b.c"
    assert _target("a.b", "oc.select:.c,x") == "a.c"
    assert _target("a", "oc.select:x,'p:q'") == "x"
    assert _target("a", "oc.env:HOME") == ""
    assert _target("a", "oc.decode:b") == ""


# --- interpolation: refusing resolvers --------------------------------------------------------


def test_environment_read_messages() -> None:
    read = EnvironmentRead("HOME")
    assert (str(read), read.variable, read.resolver) == (
        "reads environment variable 'HOME'",
        "HOME",
        "oc.env",
    )
    assert str(EnvironmentRead("X", "env")) == "reads environment variable 'X'"
    read = EnvironmentRead("x", "app.secret")
    assert (str(read), read.variable, read.resolver) == (
        "calls resolver 'app.secret', which qconf does not run inside a plan",
        "x",
        "app.secret",
    )


def test_refusing_resolvers() -> None:
    for args, variable in (((), ""), (("HOME", "d"), "HOME"), ((7,), "7")):
        with pytest.raises(EnvironmentRead) as caught:
            _refusing("oc.env")(*args)
        assert (caught.value.variable, caught.value.resolver) == (variable, "oc.env")
    with pytest.raises(EnvironmentRead) as caught:
        _refusing("app.secret")()
    assert (
        str(caught.value) == "calls resolver 'app.secret', which qconf does not run inside a plan"
    )


def test_no_environment_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCONF_TRUST_TEST", "secret")
    OmegaConf.register_new_resolver("qconf_trust_test", lambda: "app value", replace=True)
    cfg = OmegaConf.create(
        {"e": "${oc.env:QCONF_TRUST_TEST}", "old": "${env:QCONF_TRUST_TEST}",
         "app": "${qconf_trust_test:}", "s": "${oc.select:x,1}", "x": 2,
         "d": "${oc.decode:'[1, 2]'}", "k": "${oc.dict.keys:m}", "m": {"p": 1}}
    )  # fmt: skip
    try:
        with no_environment_reads():
            for key, resolver in (("e", "oc.env"), ("old", "env"), ("app", "qconf_trust_test")):
                with pytest.raises(Exception) as caught:  # noqa: PT011 - OmegaConf wraps it
                    cfg[key]
                read = next(
                    e for e in exception_chain(caught.value) if isinstance(e, EnvironmentRead)
                )
                assert read.resolver == resolver
            assert (cfg.s, list(cfg.d), list(cfg.k)) == (2, [1, 2], ["p"])
        assert (cfg.e, cfg.app) == ("secret", "app value")
    finally:
        interpolation_resolvers().pop("qconf_trust_test", None)


def interpolation_resolvers() -> dict:
    from omegaconf.basecontainer import BaseContainer

    return BaseContainer._resolvers


def test_exception_chain() -> None:
    assert list(exception_chain(None)) == []
    first, cause, context, later = (ValueError(i) for i in range(4))
    first.__cause__, first.__context__ = cause, later  # the cause comes first
    cause.__context__ = context
    assert list(exception_chain(first)) == [first, cause, context]
    errors = [KeyError(i) for i in range(12)]
    for error, wrapped in zip(errors[:-1], errors[1:], strict=True):
        error.__context__ = wrapped
    assert list(exception_chain(errors[0])) == errors[:10]
    assert interpolation.exception_chain is exception_chain
