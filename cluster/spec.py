"""Typed job specs: the envelope every kind shares, loading from YAML, overrides and the kind registry.

A spec is YAML with a `kind:` and a typed body under a key named after the kind::

    name: hello
    kind: python
    resources: {num_workers: 1, cpus_per_worker: 1}
    runtime: {env: {GREETING: hi}, working_dir: .}
    storage: {path: ./runs}
    python:
      function: hello_job:main
      kwargs: {n: 3}

Kinds are registered through the `raytron.kinds` entry-point group (see pyproject.toml), so the core
knows no capability: a kind is a subclass of :class:`JobSpec` that adds its body field and names the
function that runs it on the cluster. Specs are validated completely before anything is submitted;
every problem is reported with its field path, the value given and what is allowed.
"""

from __future__ import annotations

import difflib
import importlib
import json
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from raytron.cluster.errors import SpecError, SpecProblem

__all__ = [
    "JobSpec",
    "Resources",
    "Runtime",
    "Storage",
    "available_kinds",
    "spec_class",
    "load_spec",
    "parse_spec",
    "apply_overrides",
    "import_object",
]

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OBJECT_PATH_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
#: Environment variables raytron sets for the job itself; a spec may not override them.
RESERVED_ENV_PREFIX = "RAYTRON_"


class SpecModel(BaseModel):
    """Base of every spec section: unknown keys are errors, types are not coerced, values are frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)


class Resources(SpecModel):
    """What each worker of the job needs from the cluster."""

    num_workers: int = Field(1, ge=1, le=4096)
    """How many workers (Ray tasks or train workers) the job runs."""
    cpus_per_worker: float = Field(1.0, gt=0, le=1024)
    """Logical CPUs reserved for each worker (fractions allowed)."""
    gpus_per_worker: float = Field(0.0, ge=0, le=64)
    """GPUs reserved for each worker; a fraction below 1 shares one GPU, above 1 must be whole."""

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_gpus_above_one(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError("a worker may share one GPU (0 < gpus < 1) or own whole GPUs (1, 2, ...), not a fraction above 1")
        return value

    @property
    def total_cpus(self) -> float:
        return self.num_workers * self.cpus_per_worker

    @property
    def total_gpus(self) -> float:
        return self.num_workers * self.gpus_per_worker


class Runtime(SpecModel):
    """The environment the job runs in on the cluster."""

    env: dict[str, str] = Field(default_factory=dict)
    """Environment variables for the job's processes (strings only; quote numbers in YAML)."""
    working_dir: str | None = None
    """A local directory uploaded to the cluster and used as the job's working directory.
    Relative paths are relative to the spec file."""

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _ENV_NAME_RE.match(name):
                raise ValueError(f"environment variable name {name!r} must match [A-Za-z_][A-Za-z0-9_]*")
            if name.startswith(RESERVED_ENV_PREFIX):
                raise ValueError(f"environment variable {name!r} is reserved: names starting with {RESERVED_ENV_PREFIX} are set by raytron")
        return value


class Storage(SpecModel):
    """Where the job writes checkpoints and results."""

    path: str = "~/raytron_runs"
    """A path every worker can reach (local for the embedded head, a shared filesystem or an
    s3://, gs:// URI for a real cluster). Relative paths are relative to the spec file; `~` is
    expanded on the cluster."""

    @field_validator("path")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a non-empty path or URI")
        return value

    @property
    def is_uri(self) -> bool:
        return "://" in self.path


class JobSpec(SpecModel):
    """The envelope every job kind shares. Subclasses add a body field named after their kind."""

    KIND: ClassVar[str] = ""
    """The `kind:` value this class parses."""
    RUNNER: ClassVar[str] = ""
    """`module:function` that runs a validated spec of this kind inside the job on the cluster."""

    name: str
    """Job name: lowercase letters, digits and '-', at most 48 characters; prefixes the submission id."""
    kind: str
    """Which kind of job this is; selects the body and how it runs."""
    resources: Resources = Field(default_factory=Resources)
    runtime: Runtime = Field(default_factory=Runtime)
    storage: Storage = Field(default_factory=Storage)

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("must be 1-48 lowercase letters, digits or '-', starting and ending with a letter or digit")
        return value

    def problems(self) -> list[SpecProblem]:
        """Cross-field checks a kind adds beyond its field types. Empty when the spec is consistent."""
        return []

    def entrypoint_resources(self) -> tuple[float, float]:
        """CPUs and GPUs the job's driver process itself reserves (the default: none)."""
        return (0.0, 0.0)

    def resolve_paths(self, base_dir: Path) -> "JobSpec":
        """Make a kind's own relative local paths absolute against the spec file's directory."""
        return self

    def to_json(self) -> str:
        """The validated spec as JSON; `parse_spec(json.loads(...))` gives it back."""
        return self.model_dump_json()


# --------------------------------------------------------------------------- kind registry

#: Kinds the core itself defines; capabilities add theirs through the `raytron.kinds` entry points.
_BUILTIN_KINDS = {"python": "raytron.cluster.pyjob:PythonJobSpec"}


@lru_cache(maxsize=1)
def _kind_paths() -> dict[str, str]:
    paths = dict(_BUILTIN_KINDS)
    for ep in entry_points(group="raytron.kinds"):
        paths.setdefault(ep.name, ep.value)
    return paths


def available_kinds() -> list[str]:
    """Names of every job kind that can be parsed in this installation."""
    return sorted(_kind_paths())


def spec_class(kind: str) -> type[JobSpec]:
    """The spec class registered for `kind`.

    Raises:
        SpecError: `kind` is not registered.
    """
    path = _kind_paths().get(kind)
    if path is None:
        raise SpecError(SpecProblem("kind", f"unknown kind; allowed: {', '.join(available_kinds())}", kind))
    cls = import_object(path)
    if not (isinstance(cls, type) and issubclass(cls, JobSpec)):
        raise TypeError(f"the `raytron.kinds` entry {kind!r} -> {path} is not a JobSpec subclass")
    return cls


def import_object(path: str) -> Any:
    """Import `package.module:attr.sub` and return the attribute."""
    module_name, _, attr_path = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    return obj


def is_object_path(text: str) -> bool:
    """Whether `text` has the shape `package.module:function` (attributes may be dotted)."""
    return bool(_OBJECT_PATH_RE.match(text))


# --------------------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate keys, which PyYAML would otherwise silently overwrite."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})", mark
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)
# PyYAML follows YAML 1.1, where a float needs a dot: `1e-4` and `3e5` would be strings, so a search
# space `loguniform: [1e-4, 0.3]` was refused as not numeric. Read them as YAML 1.2 (and Python) do.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - SafeLoader subclass


def load_spec(path: str | Path, overrides: Iterable[str] = ()) -> JobSpec:
    """Read, override and validate a YAML job spec file.

    Args:
        path: The YAML file.
        overrides: `key.path=value` strings (the CLI's `--set`), applied before validation; values
            are parsed as YAML scalars, so `resources.num_workers=2` sets an integer.

    Returns:
        The validated spec, with relative paths resolved against the file's directory.

    Raises:
        SpecError: the file is unreadable, not YAML, or fails validation; every problem is listed.
    """
    path = Path(path)
    source = f"spec {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(SpecProblem("", f"file not found: {path}", has_value=False), source=source) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise SpecError(SpecProblem("", f"cannot read {path}: {exc}", has_value=False), source=source) from None
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        raise SpecError(SpecProblem("", f"not valid YAML: {exc}", has_value=False), source=source) from None
    return parse_spec(data, overrides=overrides, base_dir=path.resolve().parent, source=source)


def parse_spec(
    data: Any,
    *,
    overrides: Iterable[str] = (),
    base_dir: Path | None = None,
    source: str = "spec",
    check_local_paths: bool = True,
) -> JobSpec:
    """Validate a spec given as a mapping (parsed YAML or JSON).

    Args:
        data: The spec mapping.
        overrides: `key.path=value` strings applied first.
        base_dir: Directory relative paths are resolved against (default: the current directory).
        source: How to name the spec in error messages.
        check_local_paths: Check that local paths the submitter uploads (the working_dir) exist.
            The job's own process on the cluster turns this off: the upload already happened.

    Raises:
        SpecError: listing every problem found.
    """
    if data is None:
        raise SpecError(SpecProblem("", "the spec is empty; it needs at least `name`, `kind` and the kind's body", has_value=False), source=source)
    if not isinstance(data, Mapping):
        raise SpecError(SpecProblem("", f"the top level must be a mapping of keys to values, not a {type(data).__name__}", data), source=source)
    overridden: set[str] = set()
    if overrides:
        data, overridden = apply_overrides(data, overrides, source=source)
    kind = data.get("kind")
    if "kind" not in data:
        raise SpecError(SpecProblem("kind", f"required; one of: {', '.join(available_kinds())}", has_value=False), source=source)
    if not isinstance(kind, str):
        raise SpecError(SpecProblem("kind", f"must be a string, one of: {', '.join(available_kinds())}", kind), source=source)
    try:
        cls = spec_class(kind)
    except SpecError as exc:
        raise SpecError(exc.problems, source=source) from None
    try:
        spec = cls.model_validate(dict(data))
    except ValidationError as exc:
        raise SpecError(_problems_from(exc, cls, data, overridden), source=source) from None
    spec = _resolve_paths(spec, base_dir or Path.cwd())
    problems = spec.problems()
    if check_local_paths:
        problems = _local_path_problems(spec) + problems
    if problems:
        raise SpecError(problems, source=source)
    return spec


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str], *, source: str = "spec") -> tuple[dict, set[str]]:
    """Apply `key.path=value` overrides to a copy of `data`.

    Returns:
        The new mapping and the set of paths that were overridden.

    Raises:
        SpecError: an override is not `key.path=value`, or walks into a value that is not a mapping.
    """
    result = json.loads(json.dumps(data, default=str))  # deep copy of plain data
    touched: set[str] = set()
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(p.strip() for p in parts):
            raise SpecError(SpecProblem("--set", "expected key.path=value, e.g. resources.num_workers=2", item), source=source)
        try:
            value = _load_yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise SpecError(SpecProblem(key, f"--set value is not a valid YAML scalar: {exc}", raw), source=source) from None
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise SpecError(SpecProblem(where, f"--set {key} needs `{where}` to be a mapping", child), source=source)
            node = child
        node[parts[-1]] = value
        touched.add(".".join(parts))
    return result, touched


# --------------------------------------------------------------------------- internals


def _resolve_paths(spec: JobSpec, base_dir: Path) -> JobSpec:
    """Make relative local paths absolute against `base_dir` (the spec file's directory)."""
    updates: dict[str, Any] = {}
    wd = spec.runtime.working_dir
    if wd is not None and not Path(wd).expanduser().is_absolute():
        updates["runtime"] = spec.runtime.model_copy(update={"working_dir": str((base_dir / wd).resolve())})
    storage = spec.storage.path
    if not spec.storage.is_uri and not storage.startswith("~") and not Path(storage).is_absolute():
        updates["storage"] = spec.storage.model_copy(update={"path": str((base_dir / storage).resolve())})
    spec = spec.model_copy(update=updates) if updates else spec
    return spec.resolve_paths(base_dir)


def _local_path_problems(spec: JobSpec) -> list[SpecProblem]:
    wd = spec.runtime.working_dir
    if wd is None:
        return []
    path = Path(wd).expanduser()
    if not path.exists():
        return [SpecProblem("runtime.working_dir", "directory does not exist (relative paths are relative to the spec file)", wd)]
    if not path.is_dir():
        return [SpecProblem("runtime.working_dir", "must be a directory, not a file", wd)]
    return []


_FRIENDLY = {
    "missing": "required field is missing",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "list_type": "must be a list",
}


def _problems_from(exc: ValidationError, cls: type[BaseModel], data: Mapping, overridden: set[str]) -> list[SpecProblem]:
    problems: list[SpecProblem] = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        path = ".".join(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(cls, loc[:-1])
            msg = "unknown key"
            if allowed:
                close = difflib.get_close_matches(loc[-1], allowed, n=1)
                msg += f"; did you mean `{close[0]}`?" if close else ""
                msg += f" Allowed here: {', '.join(allowed)}"
        elif kind == "missing":
            msg = _FRIENDLY[kind]
            allowed = _allowed_keys(cls, loc[:-1])
        elif kind in _FRIENDLY:
            msg = _FRIENDLY[kind]
        else:
            msg = err["msg"]
            msg = msg.removeprefix("Value error, ")
            msg = msg[0].lower() + msg[1:] if msg else msg
        if path in overridden:
            msg += " (set by --set)"
        has_value = kind != "missing"
        problems.append(SpecProblem(path, msg, err.get("input") if has_value else None, has_value=has_value))
    return problems


def _allowed_keys(cls: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the (nested) model found by walking `loc` from `cls`; [] if it is not a model."""
    model: Any = cls
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    fields = getattr(model, "model_fields", None)
    return list(fields) if fields else []
