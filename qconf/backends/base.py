"""What every backend declares. Torch-free: library objects are built lazily in `build`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from qconf.backends.bytes import ByteModel
from qconf.backends.measure import Measure
from qconf.errors import Problem

Library = Literal["diffusers", "transformers"]
LIBRARIES: tuple[Library, ...] = ("diffusers", "transformers")

# dtype names as YAML spells them; converted to torch dtypes only when a config object is built.
FloatDType = Literal["float32", "float16", "bfloat16"]


class StrictModel(BaseModel):
    """Base of every schema model: unknown keys are errors, so a stale key fails loudly."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KwargsBase(StrictModel):
    """Per-backend kwargs in qconf's spelling. `None` means "the library's default"."""

    def given(self) -> dict[str, Any]:
        """The kwargs the user actually set, JSON-able (nested models as dicts)."""
        return self.model_dump(mode="json", exclude_none=True)


class EntryBase(StrictModel):
    """One backend applied to one part (granular mode) or to many (global mode)."""

    backend: str
    kwargs: KwargsBase
    skip: list[str] | None = Field(
        None,
        description="Module names left unquantized, added to the library's own default skips "
        "(translated to llm_int8_skip_modules or modules_to_not_convert).",
    )

    # Filled by each backend module: the registry spec this entry belongs to.
    spec: ClassVar[Backend]
    # The library knob `skip` is translated to (None: this backend has none).
    skip_param: ClassVar[str | None] = "modules_to_not_convert"

    def check(self, library: Library) -> list[Problem]:
        """Problems applying this entry to a part owned by `library` (where = relative key)."""
        spec = self.spec
        params = spec.params.get(library)
        if params is None:
            owners = ", ".join(spec.params)
            return [
                Problem(
                    "backend",
                    f"{spec.key} has no {library} config class (it supports {owners} parts)",
                    "pick another backend for this part",
                )
            ]
        problems = []
        for name in self.kwargs.given():
            if name not in params:
                problems.append(
                    Problem(
                        f"kwargs.{name}",
                        f"not accepted by {library}'s {spec.config_class[library]}",
                        f"{library} accepts: {', '.join(sorted(params))}",
                    )
                )
        return problems

    def check_consistency(self) -> list[Problem]:
        """Cross-field rules (e.g. bit width vs backend key); where = relative to the entry."""
        problems = self.check_backend_rules()
        if self.skip is not None and self.skip_param is None:
            problems.append(Problem("skip", f"{self.spec.key} has no skip list", "remove it"))
        elif self.skip is not None and self.skip_param in self.kwargs.given():
            problems.append(
                Problem(
                    f"kwargs.{self.skip_param}",
                    "set together with skip; it would replace the library's default skips",
                    "list the modules under skip only",
                )
            )
        return problems

    def check_backend_rules(self) -> list[Problem]:
        return []

    def library_kwargs(self, library: Library, default_skips: Sequence[str] = ()) -> dict[str, Any]:
        """kwargs in the library's own parameter names, JSON-able (what `show` prints).
        `skip` extends `default_skips`, the modules the library leaves alone by itself."""
        params = self.spec.params[library]
        kwargs = {params[k]: v for k, v in self.kwargs.given().items()}
        if self.skip is not None and self.skip_param is not None:
            kwargs[self.skip_param] = [*dict.fromkeys([*default_skips, *self.skip])]
        return kwargs

    def cuda_reason(self, library: Library) -> str | None:
        """Why this entry needs a CUDA GPU on a `library` part, or None if it runs on CPU."""
        return self.spec.needs_cuda.get(library)

    def variant(self) -> str:
        """What decides which kernels run (quanto's weight dtype, torchao's quant type): the
        key of the backend's known-failure rows. One variant per backend unless overridden."""
        return ""

    def describe(self) -> str:
        """The entry in a few words, for messages (e.g. "quanto int8")."""
        return f"{self.spec.key} {self.variant()}".strip()

    def train_reason(self, library: Library) -> str | None:
        """Why LoRA cannot be trained on a `library` part under this entry (None = it can:
        gradients reach the adapters and the layer input; tested for real in test_train.py)."""
        if self.spec.trainable.get(library, False):
            return None
        return f"{self.spec.key} on {library} parts does not pass gradients in qconf's tests"

    def build(self, library: Library, default_skips: Sequence[str] = ()) -> Any:
        """The real library config object. Imports torch and the library."""
        raise NotImplementedError

    def load_peak_ratio(self) -> float:
        """Peak memory while a part is quantized on load under this entry, as a multiple of
        the part's weights after load (the estimate's load-peak rule)."""
        return self.spec.load_peak_ratio

    def save_problem(self) -> tuple[str, str] | None:
        """(what, fix) when this entry's variant cannot be saved though the backend can."""
        return None

    # --- entries that name a pre-quantized file (Backend.quantizes_on_load False) ---

    # the entry field naming its pre-quantized source (FileEntry: file, FolderEntry: folder)
    source_field: ClassVar[str] = "file"

    def own_source(self) -> str | None:
        """The pre-quantized file or folder this entry reads its part from, if it names one."""
        return getattr(self, self.source_field, None)

    def check_file(self, where: str, part_class: str | None = None) -> None:
        """Refuse a truncated or malformed file (or one for another class of part than
        `part_class`) before anything loads (raises)."""

    def file_bytes(self, dtype_size: int) -> tuple[int, str] | None:
        """(bytes after load, a note) read from the file's own header, or None."""
        return None

    def file_layers(self) -> int | None:
        """Quantized layers the named file or folder holds (None: not counted)."""
        return None

    def loaded_fix(self) -> str:
        """The fix line when `loaded_problem` finds a part loaded otherwise than its source."""
        return "quantize this part with an option instead (this pipeline does not keep it)"

    def saved_bytes(
        self, header: Mapping[str, tuple[tuple[int, ...], str]], dtype_size: int, library: Library
    ) -> tuple[int, int] | None:
        """(bytes after load, quantized layers) of a part saved pre-quantized with this entry,
        from its safetensors header (None: priced like a plan, from the built module)."""
        return None

    def loaded_problem(
        self, model: Any, header: Mapping[str, tuple[tuple[int, ...], str]] | None = None
    ) -> str | None:
        """What is wrong with a part loaded from this entry's file or saved folder, judged
        against it (`header`: the saved part's safetensors header, when there is one); None:
        it loaded as saved."""
        return None

    def load_from_file(self, model_cls: Any, source: str, subfolder: str, dtype: Any,
                       torch_dtype: str | None) -> Any:  # fmt: skip
        """The part loaded from its file, as a ready pipeline component."""
        raise NotImplementedError

    # Library defaults, as a saved config.json spells them: dropped by `canonical` so that a
    # plan and a saved checkpoint compare equal when they mean the same thing.
    defaults: ClassVar[Mapping[str, Any]] = {}

    def canonical(self) -> dict[str, Any]:
        """The entry without values that equal the library defaults (for comparing plans)."""
        kwargs = {k: v for k, v in self.kwargs.given().items() if self.defaults.get(k, ...) != v}
        data: dict[str, Any] = {"backend": self.backend, "kwargs": kwargs}
        if self.skip:
            data["skip"] = sorted(self.skip)
        return data

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> dict[str, Any]:
        """Entry data (unvalidated) from a saved `quantization_config` block of a config.json."""
        raise NotImplementedError


class FileEntry(EntryBase):
    """An entry that names a pre-quantized file of its part (GGUF, BFL): the path must be a
    file with the format's suffix; the config object needs no file."""

    file: str
    skip_param: ClassVar[str | None] = None
    file_suffix: ClassVar[str]  # ".gguf", ".safetensors"

    def check_backend_rules(self) -> list[Problem]:
        from qconf.errors import PlanError
        from qconf.trust.userpath import user_path

        try:
            path = user_path(self.file, "file")
        except PlanError as exc:  # said at `file`, relative to the entry
            return list(exc.problems)
        if path.suffix != self.file_suffix or not path.is_file():
            what = f"'{self.file}' is not a {self.file_suffix} file"
            return [Problem("file", what, "give the path of one")]
        return []

    def build(self, library: Library, default_skips: Sequence[str] = ()) -> Any:
        return self.config_for(None)

    def config_for(self, model_dtype: str | None) -> Any:
        """The library config object, computing in `model_dtype` unless the kwargs say."""
        raise NotImplementedError


class FolderEntry(EntryBase):
    """An entry that may name a part folder saved pre-quantized by another tool (its config.json
    holds the backend's quantization_config, beside .safetensors weights): that part is read
    from the folder with the library's from_pretrained, and the folder's settings are what
    loads (a plan's kwargs must say the same). Without `folder`, the part must come saved in
    the pipeline folder (`saved_only`)."""

    folder: str | None = Field(
        None, description="A part folder saved pre-quantized (config.json + .safetensors)."
    )
    source_field: ClassVar[str] = "folder"

    def check_backend_rules(self) -> list[Problem]:
        if self.folder is None:
            return []
        from qconf.errors import PlanError
        from qconf.trust.userpath import user_path

        try:
            path = user_path(self.folder, "folder")
        except PlanError as exc:  # said at `folder`, relative to the entry
            return list(exc.problems)
        if not (path / "config.json").is_file():
            what = f"'{self.folder}' is not a part folder (no config.json in it)"
            return [Problem("folder", what, "give the folder holding the part's config.json")]
        return []

    def folder_settings(self, where: str, part_class: str | None = None) -> EntryBase | None:
        """The folder's own quantization settings as an entry (None: no folder named), after
        the checks every model folder gets (config size, weight files and headers, no custom
        code) and that it holds a `part_class` part."""
        if self.folder is None:
            return None
        from pydantic import ValidationError

        from qconf.errors import PlanError
        from qconf.source.files import read_part_config
        from qconf.source.limits import check_part_config, check_weight_headers
        from qconf.source.model import weight_files_problem
        from qconf.trust.userpath import user_path

        path = user_path(self.folder, where)
        if not path.is_dir():
            what = f"'{self.folder}' is {'a file' if path.exists() else 'not there'}"
            raise PlanError(Problem(where, what, "give a part folder (config.json + weights)"))
        config = read_part_config(path)
        check_part_config(config, path / "config.json")
        problem = weight_files_problem(path, "diffusers")
        if problem is not None:
            raise PlanError(Problem(where, f"'{self.folder}' {problem[0]}", problem[1]))
        check_weight_headers(path)
        block = config.get("quantization_config")
        fix = f"give a part folder saved with {self.spec.key}"
        if not isinstance(block, dict):
            what = f"'{self.folder}' is not saved pre-quantized (no quantization_config)"
            raise PlanError(Problem(where, what, fix))
        method = block.get("quant_method")
        if method != self.spec.quant_method:
            what = f"'{self.folder}' says quant_method {str(method)[:40]!r}, not {self.spec.key}"
            raise PlanError(Problem(where, what, fix))
        if "auto_map" in config:
            what = f"'{self.folder}/config.json' has an auto_map (code shipped with the model)"
            raise PlanError(Problem(where, what, "give a folder without custom code"))
        saved_class = config.get("_class_name")
        if part_class is not None and saved_class != part_class:
            what = f"'{self.folder}' holds a {str(saved_class)[:60]}; this part is {part_class}"
            raise PlanError(Problem(where, what, f"give the folder of a {part_class} part"))
        try:
            saved = type(self).model_validate(self.from_saved(block))
        except (ValidationError, TypeError, KeyError, ValueError) as exc:
            first = str(exc).strip().splitlines()[:3]
            what = f"'{self.folder}' has quantization settings qconf does not model: "
            raise PlanError(Problem(where, what + " ".join(first)[:160], fix)) from None
        rules = saved.check_backend_rules()
        if rules:
            what = f"'{self.folder}' says quantization_config.{rules[0].where}: {rules[0].what}"
            raise PlanError(Problem(where, what, fix))
        # a config given at load would override the folder's (diffusers lets it): refused
        stored = {**self.defaults, **saved.kwargs.given()}
        differs = {k: v for k, v in self.kwargs.given().items() if stored.get(k) != v}
        if differs:
            what = f"the plan says {differs}, the folder was saved with " + str(
                {k: stored.get(k) for k in differs}
            )
            raise PlanError(Problem(where, what, "drop those kwargs: the folder says how it loads"))
        return saved

    def check_file(self, where: str, part_class: str | None = None) -> None:
        saved = self.folder_settings(where, part_class)
        reason = saved.cuda_reason("diffusers") if saved is not None else None
        if reason is not None and not cuda_visible():
            from qconf.errors import PlanError

            what = f"'{self.folder}' needs a CUDA GPU and none is visible: {reason}"
            raise PlanError(Problem(where, what, self.spec.cpu_alternative))

    def _header(self) -> dict[str, tuple[tuple[int, ...], str]]:
        from qconf.source.files import part_header
        from qconf.trust.userpath import user_path

        return part_header(user_path(self.folder or "", "folder"))

    def _priced(self, dtype_size: int) -> tuple[int, int] | None:
        if self.folder is None:
            return None
        return self.saved_bytes(self._header(), dtype_size, "diffusers")

    def file_bytes(self, dtype_size: int) -> tuple[int, str] | None:
        priced = self._priced(dtype_size)
        if priced is None:
            return None
        return priced[0], f"{self.spec.key}: bytes from the folder's safetensors header"

    def file_layers(self) -> int | None:
        priced = self._priced(2)
        return None if priced is None else priced[1]

    def loaded_fix(self) -> str:
        return self.spec.cpu_alternative

    def load_from_file(self, model_cls: Any, source: str, subfolder: str, dtype: Any,
                       torch_dtype: str | None) -> Any:  # fmt: skip
        from qconf.errors import ModelSourceError
        from qconf.trust.userpath import user_path

        where = f"quant.mapping.{subfolder}.folder"
        from diffusers.utils import logging as diffusers_logging

        # a path qconf refuses is said as is (a PlanError is a ValueError: not the load's)
        path = str(user_path(self.folder or "", where))
        # its "weights not used / newly initialized" warning is loaded_problem's to say, once
        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        try:
            return model_cls.from_pretrained(path, torch_dtype=dtype, use_safetensors=True)
        except (OSError, ValueError, RuntimeError, TypeError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            what = f"'{self.folder}' does not load as {model_cls.__name__}: {first}"
            raise ModelSourceError(Problem(where, what, f"give a {subfolder} folder")) from None
        finally:
            diffusers_logging.set_verbosity(level)


# The NVIDIA driver's first device node: a CUDA GPU is there (checked without importing torch).
CUDA_DEVICE_FILE = "/dev/nvidia0"


def cuda_visible() -> bool:
    """torch's answer when torch is loaded; otherwise whether an NVIDIA GPU device exists."""
    import os
    import sys

    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    return os.path.exists(CUDA_DEVICE_FILE)


def saved_names(value: Any) -> Any:
    """A module-name list from a saved config.json, as a list; anything else unchanged so that
    validation reports it (list("abc") would silently make three names)."""
    return list(value) if isinstance(value, (list, tuple)) else value


Device = Literal["cpu", "cuda"]

# The fix line when a plan needs a CUDA GPU that is not there.
CPU_ALTERNATIVE = "on CPU use a torchao option (int8wo, int4wo) or quanto-int8/quanto-int4"


@dataclass(frozen=True)
class KnownFailure:
    """One measured failure (qconf.backends.capabilities): entries whose `variant()` is
    `variant`, on parts of class `part_class`, computing on `device`, loaded in one of `dtypes`,
    fail with `reason`."""

    variant: str
    part_class: str
    device: Device
    dtypes: tuple[str, ...]
    reason: str  # the measured error's first line (type: message)


@dataclass(frozen=True)
class Backend:
    """A registry entry: everything qconf knows about one quantization backend."""

    key: str  # diffusers' backend key (quant_backend), also the `backend:` value in YAML
    description: str
    extra: str  # pip extra that installs it: pip install 'qconf[<extra>]'
    module: str  # import name probed for availability
    distribution: str  # distribution name for the version
    entry: type[EntryBase]
    config_class: Mapping[Library, str]  # class name per library that has this backend
    # qconf kwarg name -> that library's __init__ parameter name
    params: Mapping[Library, Mapping[str, str]]
    # library -> why it needs CUDA there (absent = runs on CPU)
    needs_cuda: Mapping[Library, str] = field(default_factory=dict)
    can_save: Mapping[Library, bool] = field(default_factory=dict)
    # library -> LoRA trains on a frozen part quantized with it (test_train.py checks each claim)
    trainable: Mapping[Library, bool] = field(default_factory=dict)
    quant_method: str = ""  # `quant_method` in a saved config.json
    # library -> its deprecation notice for this backend (shown once, by `qconf list backends`)
    deprecated: Mapping[Library, str] = field(default_factory=dict)
    # Peak memory while a part is quantized on load, as a multiple of that part's weights after
    # load (the estimate's load-peak rule; entries may refine it per quant type). Each backend
    # states where its figure comes from; the default is for what nobody measured yet.
    load_peak_ratio: float = 1.3
    # Combinations measured to fail (qconf.backends.capabilities; python -m
    # qconf.sensitivity.capability_walk measures them, tests/test_capability.py keeps them honest).
    known_failures: tuple[KnownFailure, ...] = ()
    # The estimator's byte model and layer rules (None: the backend does not quantize on load,
    # e.g. a pre-quantized file; the entry's `file_bytes` prices it instead).
    byte_model: ByteModel | None = None
    # How a loaded layer is read (report bytes, sensitivity's dequantized weight).
    measure: Measure = field(default_factory=Measure)
    # Whether the part is quantized on load from a plain checkpoint (False: it is read from a
    # pre-quantized file the entry names, e.g. GGUF: see EntryBase.load_from_file).
    quantizes_on_load: bool = True
    # Load dtype a plan that sets none gets when this backend is used (None: the library's).
    plan_dtype: str | None = None
    # The only load dtypes its layers compute in (empty: any); another is refused at validate.
    load_dtypes: tuple[str, ...] = ()
    # The backend quantizes on the device the weights load to (a CUDA-only variant then needs
    # a device map, not just a visible GPU).
    quantizes_where_loaded: bool = False
    # What to use instead on a machine without a CUDA GPU (the fix line of that refusal).
    cpu_alternative: str = CPU_ALTERNATIVE
    # Harmless noise the backend's library prints (qconf.quiet drops it): logger -> level below
    # which its records are dropped, and (category, message regex) of warnings.
    quiet_loggers: Mapping[str, int] = field(default_factory=dict)
    quiet_warnings: tuple[tuple[type[Warning], str], ...] = ()
    # Tagged unions inside the kwargs: discriminator field -> (what a tag names, {tag: model});
    # validation messages find the models and spell the tags from here.
    nested_tags: Mapping[str, tuple[str, Mapping[str, Any]]] = field(default_factory=dict)
    # Dotted callables (beyond config_class) that a config file may name as `_target_`.
    config_targets: tuple[str, ...] = ()
    # library -> the module its config class lives in, when not the library itself (a backend
    # that ships one config class for both libraries)
    config_module: Mapping[Library, str] = field(default_factory=dict)
    # Run before any load or reload of a part this backend quantized or will quantize, with
    # whether adapters will be trained: imports and environment the library needs first (a
    # library that registers itself with transformers on import), or a refusal (raises).
    prepare: Callable[[bool], None] | None = None
    # Environment variables the library reads once, at import, and the values qconf needs
    # (set as defaults before qconf imports it; `library_environment` sets them for callers
    # that import the library themselves, e.g. a test session).
    environment: Callable[[], Mapping[str, str]] | None = None
    # A context entered while the weights load (e.g. a fixed seed for a randomized step, so
    # that two loads of one plan give the same weights).
    during_load: Callable[[], AbstractContextManager[Any]] | None = None
    # A saved folder of this method can be reloaded though qconf cannot save one (a format
    # made by another tool).
    reloads_saved: bool = False
    # It reads saved folders only (a plan cannot map it onto a plain part).
    saved_only: bool = False
    # Why the backend cannot work with the libraries installed here (None: it can): a plan
    # using it is refused in one line instead of failing inside the libraries.
    unusable: Callable[[], str | None] | None = None
    # Library kwargs qconf does not offer -> why (what a plan that sets one is told).
    withheld: Mapping[str, str] = field(default_factory=dict)

    def config_path(self, library: Library) -> str:
        """The config class's dotted name for `library` parts ("diffusers.QuantoConfig")."""
        return f"{self.config_module.get(library, library)}.{self.config_class[library]}"
