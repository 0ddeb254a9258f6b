"""Triton model configurations (`config.pbtxt`) and model repositories.

Configs are parsed and written with the protobuf schema tritonclient ships
(`tritonclient.grpc.model_config_pb2.ModelConfig`) and protobuf's text format, so whatever the
official Triton accepts round-trips exactly and nothing is hand-parsed.

Repository layout (Triton's)::

    REPO/
      NAME/
        config.pbtxt
        1/model.onnx         (platform onnxruntime_onnx)
        2/model.pt           (platform pytorch_libtorch)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from raytron.cluster.storage import write_bytes_atomic
from raytron.serving.errors import ModelRepositoryError

__all__ = [
    "ModelConfig", "read_model_config", "write_model_config", "config_text", "RepoModel", "list_models",
    "PLATFORM_FILES", "triton_dtype", "numpy_dtype", "wire_dtype", "autocomplete_onnx",
]

ModelConfig = mc.ModelConfig

#: The platforms raytron exports, and the default model file name Triton looks for in each.
PLATFORM_FILES = {"onnxruntime_onnx": "model.onnx", "pytorch_libtorch": "model.pt"}
#: Triton's backend names for the same platforms (a config may name either).
_BACKEND_PLATFORM = {"onnxruntime": "onnxruntime_onnx", "pytorch": "pytorch_libtorch"}

_NUMPY = {
    "TYPE_BOOL": np.bool_, "TYPE_UINT8": np.uint8, "TYPE_UINT16": np.uint16, "TYPE_UINT32": np.uint32, "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8, "TYPE_INT16": np.int16, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16, "TYPE_FP32": np.float32, "TYPE_FP64": np.float64, "TYPE_STRING": np.object_,
}


def triton_dtype(dtype) -> str:
    """`TYPE_FP32` etc. for a numpy dtype (or anything `np.dtype` accepts, or a torch dtype)."""
    name = str(dtype).removeprefix("torch.")
    if name == "bfloat16":
        return "TYPE_BF16"
    try:
        np_dtype = np.dtype(dtype if not str(dtype).startswith("torch.") else name)
    except TypeError:
        raise ModelRepositoryError(f"{dtype!r} is not a dtype") from None
    for triton, candidate in _NUMPY.items():
        if candidate is not np.object_ and np.dtype(candidate) == np_dtype:
            return triton
    raise ModelRepositoryError(f"dtype {name} has no Triton data type; use one of {', '.join(sorted(_NUMPY))}")


def numpy_dtype(triton: str | int) -> np.dtype:
    """The numpy dtype of a Triton data type (`TYPE_FP32` or its enum value)."""
    name = mc.DataType.Name(triton) if isinstance(triton, int) else triton
    if name not in _NUMPY:
        raise ModelRepositoryError(f"Triton data type {name} has no numpy equivalent here (BF16 travels as raw bytes)")
    return np.dtype(_NUMPY[name])


def wire_dtype(triton: str | int) -> str:
    """The datatype string the inference protocol uses (`FP32`, `INT64`, `BYTES`) for a config's `TYPE_*`."""
    name = mc.DataType.Name(triton) if isinstance(triton, int) else triton
    return "BYTES" if name == "TYPE_STRING" else name.removeprefix("TYPE_")


def read_model_config(path: str | Path) -> ModelConfig:
    """Parse a `config.pbtxt` (or the one in a model directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.pbtxt"
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelRepositoryError(f"cannot read {path}: {exc.strerror or exc}") from None
    config = ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelRepositoryError(f"{path} is not a valid Triton model configuration: {exc}") from None
    if not config.name:
        config.name = path.parent.name
    return config


def config_text(config: ModelConfig) -> str:
    return text_format.MessageToString(config)


def write_model_config(path: str | Path, config: ModelConfig) -> Path:
    """Write `config.pbtxt` atomically (a temporary file renamed into place)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.pbtxt"
    return write_bytes_atomic(path, config_text(config).encode())


@dataclass(frozen=True)
class RepoModel:
    """One model directory of a repository: its config, its version numbers, and its platform."""

    name: str
    path: Path
    config: ModelConfig
    versions: tuple[int, ...]

    @property
    def platform(self) -> str:
        return self.config.platform or _BACKEND_PLATFORM.get(self.config.backend, self.config.backend)

    def model_file(self, version: int) -> Path:
        """The file Triton would load for `version` (`default_model_filename` or the platform's default)."""
        name = self.config.default_model_filename or PLATFORM_FILES.get(self.platform, "")
        return self.path / str(version) / name


def list_models(repo: str | Path) -> list[RepoModel]:
    """Every model directory (with a config.pbtxt) in a repository, by name."""
    repo = Path(repo)
    if not repo.is_dir():
        raise ModelRepositoryError(f"model repository {repo} does not exist or is not a directory")
    models = []
    for d in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (d / "config.pbtxt").is_file():
            continue
        config = read_model_config(d)
        if config.name != d.name:
            raise ModelRepositoryError(f"{d}/config.pbtxt names the model {config.name!r}, but Triton requires the directory's name {d.name!r}")
        versions = tuple(sorted(int(v.name) for v in d.iterdir() if v.is_dir() and v.name.isdigit()))
        model = RepoModel(d.name, d, config, versions)
        if not (config.input and config.output) and model.platform == "onnxruntime_onnx" and versions:
            model = RepoModel(d.name, d, autocomplete_onnx(config, model.model_file(versions[-1])), versions)
        models.append(model)
    return models


#: What Triton's auto-complete gives a model that can batch but names no max_batch_size (its
#: `--backend-config=default-max-batch-size`, 4 by default).
_DEFAULT_MAX_BATCH_SIZE = 4


def autocomplete_onnx(config: ModelConfig, model_file: Path) -> ModelConfig:
    """Fill in a minimal ONNX config's inputs and outputs from the model, as Triton's auto-complete does.

    Many ONNX configs name only `platform` (and maybe `max_batch_size`): Triton's ONNX Runtime backend
    reads the tensors from the model. With `max_batch_size` > 0 the first dimension is the batch and
    is dropped from `dims`; with none given and every tensor's first dimension dynamic, the model is
    taken to batch, with Triton's default `max_batch_size` of 4. Tensors the config already names keep
    the config's values.
    """
    import onnx
    from onnx import helper

    try:
        graph = onnx.load(str(model_file)).graph
    except Exception as exc:  # noqa: BLE001 - onnx raises several kinds for a bad file
        raise ModelRepositoryError(f"{model_file}: cannot read the ONNX model to complete {model_file.parent.parent}/config.pbtxt ({exc})") from None
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]

    def dims(value) -> list[int]:
        return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]

    completed = ModelConfig()
    completed.CopyFrom(config)
    batching = completed.max_batch_size > 0
    if not batching and all(dims(v)[:1] == [-1] for v in [*inputs, *graph.output]):
        completed.max_batch_size, batching = _DEFAULT_MAX_BATCH_SIZE, True
    for values, field in ((inputs, completed.input), (graph.output, completed.output)):
        named = {t.name for t in field}
        for value in values:
            if value.name in named:
                continue
            tensor = field.add()
            tensor.name = value.name
            tensor.data_type = mc.DataType.Value(triton_dtype(helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)))
            tensor.dims.extend(dims(value)[1:] if batching else dims(value))
    return completed
