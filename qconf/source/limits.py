"""Bounds on the work an estimate does for untrusted model files (DESIGN's trust model).

An estimate builds each part's module on the meta device from its config.json, so the numbers in
that file decide how long the build takes: `num_layers: 200000` is minutes of Python. Everything
here runs before anything is built, on plain dicts and paths (the intake that reads a model
folder once can call it with what it read):

- `check_part_config`: every count and dimension a config names is an int (not a bool, float or
  string) in range, and the layers and parameters they imply are bounded;
- `check_pipeline_configs`: the same for every part, plus the layers of the whole pipeline;
- `check_weight_headers`: how many *.safetensors files and header bytes a part makes qconf read;
- `check_folder`: all of the above for a pipeline folder, read through qconf's bounded reader;
- `counted_build`: a backstop while building, for what no key name gives away (a class that
  loops over a key these rules do not know): modules and tensors registered are counted and the
  build stops past a pipeline-wide cap.

The caps sit well above every shipped snapshot (see the constants) and far below what hangs.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
import struct
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qconf.errors import ModelSourceError, Problem
from qconf.source.files import MAX_PARTS, parse_json, part_safetensors, read_json
from qconf.trust.reading import open_regular, read_regular

# A part's config.json: the largest shipped one (Qwen2.5-VL's) is 3 KB.
MAX_CONFIG_BYTES = 2 * 2**20
# One layer, head or block count: Llama-3.1-405B has 126 layers, the deepest shipped part 48.
MAX_COUNT = 256
# Experts of a mixture-of-experts layer: the largest open models have 256 to 512.
MAX_EXPERTS = 1024
# Layers one part's config implies (all layer counts of it and its sub-configs added up): the
# shipped maximum is 88 (Qwen2.5-VL: 28 text + 28 sliding-window + 32 vision).
MAX_PART_LAYERS = 512
# Layers of a whole pipeline: the shipped maximum is 174 (HiDream-I1, six parts).
MAX_PIPELINE_LAYERS = 1024
# A model's structural width, channel count, patch or vocabulary size (the keys every model
# uses, `_STRICT`): the largest shipped is Gemma's 256,000 vocabulary.
MAX_DIM = 2**20
# Any other size (max_position_embeddings, an audio chunk of 1.44M samples): Llama 4 has 10M.
MAX_SIZE = 2**24
# Any other integer: beyond 2**53 a JSON number is no longer exact anywhere.
MAX_INT = 2**53
# Entries of a list of counts or sizes: per block (3 to 6) or per layer (up to MAX_COUNT).
MAX_LIST = MAX_COUNT
# Parameters a config implies (a rough upper figure: layers x the two widest sizes x 4, plus
# the vocabulary): FLUX.2's 24B text encoder comes out at 3e10.
MAX_IMPLIED_PARAMS = 10**12
# Modules, parameters and buffers registered while building one pipeline's parts on the meta
# device: the largest shipped part (Qwen-Image's transformer) registers about 4,300, a whole
# pipeline about 10,000; building 100,000 takes seconds.
MAX_BUILT = 100_000
# *.safetensors files of one part, and their header bytes together (the reader parses them all).
MAX_SHARDS = 256
MAX_HEADER_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Rule:
    """What a size or count key may hold: a whole number from `low` to `high`, or null. A
    `strict` key is a size or count in every model; elsewhere a bool or float is some model's
    flag or factor (`freeze_text_layers: true`, `min_depth: 0.001`) and -1 its "unset"."""

    low: int
    high: int
    word: str  # "size" or "count", for messages
    strict: bool


# Keys by name (lower-cased). Layer counts also add up to the layers a part builds.
_LAYERS = re.compile(r"(^|_)(layers|depth)$|layers_per_block$|^n_layers?$")
# The widths every model names: a positive whole number (zero builds nothing real).
_WIDTHS = re.compile(
    r"^(hidden_size|intermediate_size|vocab_size|d_model|d_ff|d_kv|attention_head_dim|"
    r"in_channels|out_channels|latent_channels|block_out_channels|patch_size|sample_size|"
    r"cross_attention_dim|joint_attention_dim|pooled_projection_dim|ffn_dim)$"
)
# head_dim 0 is some models' "derived" (GLM's MLA attention)
_STRICT = re.compile(
    r"^(num|n)_|^(depth|head_dim|(transformer_)?layers_per_block)$|" + _WIDTHS.pattern
)
_RULES = (  # first match wins: (pattern, highest, word)
    (re.compile(r"experts$"), MAX_EXPERTS, "count"),
    (
        re.compile(r"(^|_)(layers|depth|blocks|heads)$|layers_per_block$|^n_(layer|head)s?$"),
        MAX_COUNT,
        "count",
    ),
    (re.compile(r"max_position_embeddings$|^n_positions$|^n_ctx$"), MAX_SIZE, "size"),
    (re.compile(r"(_len|_length|_seq_len)$"), MAX_SIZE, "size"),  # rope_max_seq_len, ...
    (_STRICT, MAX_DIM, "size"),
    (re.compile(r"(^|_)(dim|dims|channels|features)$|._size$|^d_"), MAX_SIZE, "size"),
)
# Sizes that are not a layer's width (they do not multiply into the parameter figure).
_NOT_WIDTH = re.compile(r"vocab|patch|kernel|sample|image|window|^num_|position|stride|group")
_HEADS = ("num_attention_heads", "num_heads", "n_head")
_HEAD_DIMS = ("attention_head_dim", "head_dim", "d_kv")


@dataclass(frozen=True)
class ConfigSize:
    """What a part's config implies: layers it builds and a rough parameter figure."""

    layers: int
    params: int


def _error(where: str | Path, what: str, fix: str) -> ModelSourceError:
    return ModelSourceError(Problem(str(where), what, fix))


def _refuse(where: str | Path, key: str, what: str, fix: str) -> ModelSourceError:
    key = key if len(key) <= 60 else key[:57] + "..."  # a key may be as long as the file
    return _error(f"{where} ({key})", what, fix)


def _number(value: int) -> str:
    """`value` for a message: a huge one by its magnitude (a 4,000-digit number is one line)."""
    if abs(value) < 10**15:
        return f"{value:,}"
    return f"about {'-' if value < 0 else ''}10^{int(math.log10(abs(value)))}"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _rule(key: str) -> Rule | None:
    """What `key` may hold, or None when it is not a size or count."""
    name = key.lower()
    for pattern, high, word in _RULES:
        if pattern.search(name):
            low = 1 if _WIDTHS.search(name) else 0
            return Rule(low, high, word, bool(_STRICT.search(name)))
    return None


def _check_number(value: Any, where: str | Path, key: str, rule: Rule) -> None:
    fix = "fix the value in config.json (compare with the original model's)"
    if isinstance(value, bool) or not isinstance(value, int):
        if not rule.strict:
            return  # a flag (`freeze_text_layers: true`) or factor (`min_depth: 0.001`)
        # a bool is an int to Python, and 1e3 or "768" would reach the library as a size
        raise _refuse(where, key, f"is {_shown(value)}, not a whole number ({rule.word})", fix)
    if value < 0 and (rule.strict or value != -1):
        raise _refuse(where, key, f"is {_number(value)}, a negative {rule.word}", fix)
    if 0 <= value < rule.low:
        raise _refuse(where, key, f"is {value}, not a positive {rule.word}", fix)
    if value > rule.high:
        raise _refuse(
            where,
            key,
            f"is {_number(value)}, over qconf's limit of {rule.high:,} for a {rule.word}",
            fix,
        )


def _check_sizes(value: Any, where: str | Path, key: str, rule: Rule) -> None:
    """A size or count key: an int in range, null (derive it), or a (nested) list of those."""
    if value is None or isinstance(value, dict) or (isinstance(value, str) and not rule.strict):
        return  # null means "derive it"; a mapping is a sub-config, a string some model's name
    if isinstance(value, list):
        if len(value) > MAX_LIST:
            raise _refuse(
                where,
                key,
                f"lists {len(value):,} values (qconf reads up to {MAX_LIST})",
                "fix the list in config.json",
            )
        for item in value:
            _check_sizes(item, where, key, rule)
        return
    _check_number(value, where, key, rule)


def _flat_ints(value: Any) -> list[int]:
    if isinstance(value, list):
        return [n for item in value for n in _flat_ints(item)]
    return [value] if isinstance(value, int) and not isinstance(value, bool) else []


def _layer_count(name: str, value: Any) -> int:
    """Layers the count key `name` adds to a (sub-)config. Lists add up only for
    `*layers_per_block` (per block); other layer lists are indices (`llama_layers`)."""
    if not _LAYERS.search(name) or name.startswith("max_"):
        return 0  # max_window_layers says how many of the layers slide, not more layers
    if isinstance(value, list):
        return sum(_flat_ints(value)) if name.endswith("layers_per_block") else 0
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _params_of(config: Mapping[str, Any], layers: int, widths: list[int]) -> int:
    """A rough parameter figure for one (sub-)config: layers x the two widest sizes x 4 (a block
    holds a few matrices of those sides), plus a vocabulary embedding."""
    heads = next((config[k] for k in _HEADS if isinstance(config.get(k), int)), 0)
    head_dim = next((config[k] for k in _HEAD_DIMS if isinstance(config.get(k), int)), 0)
    # e.g. Flux names its width only as heads x head dim
    first, second = sorted([1, 1, heads * head_dim, *widths])[-2:][::-1]
    vocab = config.get("vocab_size")
    vocab = vocab if isinstance(vocab, int) and not isinstance(vocab, bool) else 0
    return max(layers, 1) * first * second * 4 + vocab * first


def _walk(config: Mapping[str, Any], where: str | Path, prefix: str = "") -> ConfigSize:
    """Check every key of `config` and its sub-configs (text_config, vision_config, ...); each
    key's rule is looked up once (a config may have 100,000 keys)."""
    layers = params = own_layers = 0
    widths: list[int] = []
    for key, value in config.items():
        name, shown = str(key).lower(), f"{prefix}{key}"
        rule = _rule(name)
        if rule is not None:
            _check_sizes(value, where, shown, rule)
            own_layers += _layer_count(name, value) if rule.word == "count" else 0
            if rule.word == "size" and not _NOT_WIDTH.search(name):
                widths += _flat_ints(value)
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise _refuse(
                where,
                shown,
                f"is {_number(value)}, over qconf's limit of {MAX_INT:,}",
                "fix the value in config.json",
            )
        # sub-configs: a mapping, or a list of them (per-block settings)
        subs = [value] if isinstance(value, dict) else value if isinstance(value, list) else []
        for sub in subs:
            if isinstance(sub, dict):
                inner = _walk(sub, where, f"{shown}.")
                layers, params = layers + inner.layers, params + inner.params
    own_params = _params_of(config, own_layers, widths)
    return ConfigSize(layers + own_layers, params + own_params)


def check_part_config(config: Mapping[str, Any], where: str | Path) -> ConfigSize:
    """Refuse a part's config (`where`: its config.json) whose counts or sizes are not whole
    numbers in range, or that implies more layers or parameters than any real model; else what
    it implies. Reads nothing and builds nothing."""
    size = _walk(config, where)
    if size.layers > MAX_PART_LAYERS:
        raise _error(
            str(where),
            f"its layer counts add up to {size.layers:,} (qconf builds up to {MAX_PART_LAYERS})",
            "fix the layer counts in config.json",
        )
    if size.params > MAX_IMPLIED_PARAMS:
        raise _error(
            str(where),
            f"its sizes imply about {size.params:.1e} parameters (qconf estimates up to "
            f"{MAX_IMPLIED_PARAMS:.0e})",
            "fix the sizes in config.json",
        )
    return size


def check_part_count(count: int, where: Path) -> None:
    """model_index.json (in the folder `where`) lists `count` parts: each is a config read, a
    header read and a build."""
    if count > MAX_PARTS:
        raise _error(
            str(where / "model_index.json"),
            f"lists {count:,} parts (a pipeline has at most {MAX_PARTS})",
            "point model.source at a diffusers pipeline folder",
        )


def check_pipeline_configs(configs: Mapping[str, Mapping[str, Any] | None], where: Path) -> None:
    """Every part's config (`configs`: part -> its config.json as read, None: the part has none)
    of the pipeline folder `where`, and the layers of all of them together."""
    check_part_count(len(configs), where)
    layers = 0
    for name, config in configs.items():
        if config is not None:
            layers += check_part_config(config, where / name / "config.json").layers
    if layers > MAX_PIPELINE_LAYERS:
        raise _error(
            str(where),
            f"its parts' layer counts add up to {layers:,} (qconf builds up to "
            f"{MAX_PIPELINE_LAYERS} per pipeline)",
            "fix the layer counts in the parts' config.json",
        )


def check_weight_headers(part_folder: Path) -> None:
    """How much the part's *.safetensors headers make qconf parse: at most MAX_SHARDS files and
    MAX_HEADER_BYTES of header in all (each length read from the file's first 8 bytes)."""
    files = part_safetensors(part_folder)
    if len(files) > MAX_SHARDS:
        raise _error(
            str(part_folder),
            f"holds {len(files):,} .safetensors files (qconf reads up to {MAX_SHARDS} per part)",
            "remove the files that are not this part's weights",
        )
    total = 0
    for file in files:
        with open_regular(file, "the safetensors file") as handle:
            head = handle.read(8)
        total += struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        if total > MAX_HEADER_BYTES:
            raise _error(
                str(part_folder),
                f"its .safetensors headers hold over {MAX_HEADER_BYTES:,} bytes (qconf's limit)",
                "re-save the part with fewer tensors",
            )


def _read_config(file: Path) -> dict[str, Any] | None:
    """A part's config.json through the bounded reader (a FIFO or a huge file is refused before
    any library opens it); None when the part has none."""
    if not (file.exists() or file.is_symlink()):
        return None
    config = parse_json(read_regular(file, "config.json", MAX_CONFIG_BYTES), file, "config.json")
    if not isinstance(config, dict):
        raise _error(str(file), "holds no JSON object", "fix the file")
    return config


_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_folder(folder: Path) -> None:
    """All the bounds above for the pipeline folder `folder`, before anything is built: the
    parts model_index.json lists, each part's config.json, each part's safetensors headers."""
    index = read_json(folder / "model_index.json", "model_index.json")
    names = [k for k, v in index.items() if isinstance(v, list) and not k.startswith("_")]
    check_part_count(len(names), folder)  # before any part's file is opened
    # a name that is not a plain identifier is refused by the model_index reader; never use it
    # as a path here ("../x")
    names = [n for n in names if _PART.fullmatch(n)]
    configs = {name: _read_config(folder / name / "config.json") for name in names}
    check_pipeline_configs(configs, folder)
    for name in names:
        check_weight_headers(folder / name)


# --- while building ---------------------------------------------------------------------------


@dataclass
class _Budget:
    limit: int  # registrations allowed
    used: int = 0


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("qconf_build_budget")


@contextlib.contextmanager
def pipeline_budget(limit: int = MAX_BUILT) -> Iterator[None]:
    """One budget of registrations for every part built inside (one pipeline's estimate)."""
    token = _BUDGET.set(_Budget(limit))
    try:
        yield
    finally:
        _BUDGET.reset(token)


@contextlib.contextmanager
def counted_build(where: str | Path) -> Iterator[None]:
    """Count the modules, parameters and buffers registered while building inside (this thread
    only); past the pipeline's budget (or MAX_BUILT for a part built alone) the build stops with
    an error naming `where`. The static checks bound what key names give away; this bounds the
    rest (a class that builds one module per unit of a key no rule knows)."""
    from torch.nn.modules import module as torch_module

    budget = _BUDGET.get(None) or _Budget(MAX_BUILT)
    owner = threading.get_ident()

    def charge(*_: Any) -> None:
        if threading.get_ident() != owner:
            return  # another thread's modules are not this build's
        budget.used += 1
        if budget.used > budget.limit:
            raise _error(
                str(where),
                f"building it registers over {budget.limit:,} modules and tensors (qconf's "
                "limit for an estimate)",
                "fix the sizes in config.json",
            )

    handles = [
        torch_module.register_module_module_registration_hook(charge),
        torch_module.register_module_parameter_registration_hook(charge),
        torch_module.register_module_buffer_registration_hook(charge),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
