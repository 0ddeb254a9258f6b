"""Checks of a ModelInfer request that answer exactly as Triton would, before the request reaches Triton.

The gateway rejects a bad request itself only when it can give Triton's own answer: the same gRPC
status code and the same message text, found in the same order Triton checks things. Triton 2.51
(r24.10) checks a ModelInfer request in this order (server `src/grpc/infer_handler.cc`, core
`src/infer_request.cc`):

1. the version string (`std::stol`), then the model's existence;
2. request parameters, then each input's name (a duplicate is an error);
3. each input's data in request order: `contents` beside `raw_input_contents`, or no raw data left;
4. `InferenceRequest::Normalize`: requested outputs (a `std::set`, so sorted), the input count,
   then two passes over the inputs -- batch dimension, then data type, shape and byte size.

Triton keeps the inputs in a `std::unordered_map`, so its passes visit them in libstdc++'s hash
table order, not request order; that order decides which input an error names when several are
wrong, and how the "Got input(s)" list of a count error reads. `unordered_map_order` reproduces it
(libstdc++'s `std::hash<std::string>` and bucket policy); tests compare it with live Triton.

Whatever this module does not reproduce (explicit `contents` tensors, shared memory, BYTES tensors,
shape tensors, reshapes, odd parameters, versions that are not ready, more than `MAX_CHECKED_INPUTS`
inputs) is *forwarded*: the replica then answers, which is exact by construction. So a request is
either rejected here with Triton's answer, or sent on.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple

import grpc
from tritonclient.grpc import model_config_pb2 as mc

__all__ = ["TritonStatus", "InputSpec", "ModelSpec", "check_model_infer", "parse_version", "unordered_map_order", "UNPARSABLE",
           "MAX_CHECKED_INPUTS"]


class TritonStatus(NamedTuple):
    """A gRPC status the way Triton would send it."""

    code: grpc.StatusCode
    message: str


#: Triton's answer to a body that is not a ModelInferRequest (grpc's C++ deserializer fails).
UNPARSABLE = TritonStatus(grpc.StatusCode.INTERNAL, "Unable to parse request")

#: Requests with more inputs than this are forwarded unchecked: Triton (C++) words the error faster than
#: the gateway's event loop would emulate it (30,000 inputs take ~0.1 s here), so a hostile request cannot stall it.
MAX_CHECKED_INPUTS = 1024

_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_WILDCARD = -1
_INT64 = 1 << 64
_UINT32 = 1 << 32

# Byte size per element of each wire data type; BYTES has none (`GetDataTypeByteSize` returns 0).
_ELEMENT_SIZE = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8,
                 "FP16": 2, "FP32": 4, "FP64": 8, "BF16": 2, "BYTES": 0}
# The text of Triton's note after a shape mismatch on a model with a batch dimension (infer_request.cc).
_BATCH_NOTE = ("NOTE: Setting a non-zero max_batch_size in the model config requires a batch dimension to be prepended to each input shape. "
               "If you want to specify the full shape including the batch dim in your input dims config, try setting max_batch_size to zero. "
               "See the model configuration docs for more info on max_batch_size.")
# Request parameters Triton's gRPC frontend accepts with a `triton_` prefix (TRITON_RESERVED_REQUEST_PARAMS).
_TRITON_PARAMS = {"triton_enable_empty_final_response"}


@dataclass(frozen=True)
class InputSpec:
    """One input of a model config, as validation needs it."""

    name: str
    datatype: str
    """Wire data type: `FP32`, `INT32`, ..., `BYTES`."""
    dims: tuple[int, ...]
    """Config dims, without the batch dimension; -1 is variable."""
    optional: bool
    element_size: int


@dataclass(frozen=True)
class ModelSpec:
    """What validation needs to know about one loaded model."""

    name: str
    max_batch_size: int
    inputs: dict[str, InputSpec]
    """By name, in config order."""
    outputs: frozenset[str]
    versions: frozenset[int]
    """Versions that are loaded and ready."""
    emulated: bool
    """False when the config uses something this module does not reproduce; every request is then forwarded."""

    @property
    def required(self) -> list[str]:
        return [name for name, spec in self.inputs.items() if not spec.optional]

    @classmethod
    def from_config(cls, config: mc.ModelConfig, versions: Iterable[int]) -> ModelSpec:
        """Build from a (Triton-normalized) model config and the model's ready versions."""
        inputs, emulated = {}, not config.model_transaction_policy.decoupled
        for tensor in config.input:
            datatype = "BYTES" if tensor.data_type == mc.TYPE_STRING else mc.DataType.Name(tensor.data_type).removeprefix("TYPE_")
            size = _ELEMENT_SIZE.get(datatype, 0)
            if size == 0 or tensor.HasField("reshape") or tensor.is_shape_tensor or tensor.is_non_linear_format_io:
                emulated = False
            inputs[tensor.name] = InputSpec(tensor.name, datatype, tuple(tensor.dims), tensor.optional, size)
        return cls(name=config.name, max_batch_size=config.max_batch_size, inputs=inputs,
                   outputs=frozenset(o.name for o in config.output), versions=frozenset(versions), emulated=emulated)


# --- the model version string ----------------------------------------------------------------------------------------

def parse_version(text: str) -> int | TritonStatus:
    """The version number a request names (-1 for "latest"), or Triton's error (`GetModelVersionFromString`)."""
    if not text:
        return -1
    value = _stol(text)
    if value is None:
        return TritonStatus(_INVALID, f"failed to get model version from specified version string '{text}' (details: stol), "
                                      "version should be an integral value > 0")
    if value < 0:
        return TritonStatus(_INVALID, f"invalid model version specified '{text}' , version should be an integral value > 0")
    return value


def _stol(text: str) -> int | None:
    """`std::stol(text)`: leading C-locale space, a sign, then the longest run of digits; None where it throws."""
    i, n = 0, len(text)
    while i < n and text[i] in " \t\n\v\f\r":
        i += 1
    start = i
    if i < n and text[i] in "+-":
        i += 1
    digits = i
    while i < n and "0" <= text[i] <= "9":
        i += 1
    if i == digits:
        return None
    value = int(text[start:i])
    return value if -(1 << 63) <= value < (1 << 63) else None


# --- libstdc++'s std::unordered_map<std::string, T> iteration order --------------------------------------------------

_MASK = (1 << 64) - 1
_MUL = (0xC6A4A793 << 32) + 0x5BD1E995
_SEED = 0xC70F6907
_FAST_BUCKETS = (2, 2, 2, 3, 5, 5, 7, 7, 11, 11, 11, 11, 13, 13)
_PRIMES = (17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 103, 109, 113, 127, 137, 139, 149, 157, 167,
           179, 193, 199, 211, 227, 241, 257, 277, 293, 313, 337, 359, 383, 409, 439, 467, 503, 541, 577, 619, 661, 709, 761, 823,
           887, 953, 1031, 1109, 1193, 1289, 1381, 1493, 1613, 1741, 1879, 2029, 2179, 2357, 2549, 2753, 2971, 3209, 3469, 3739,
           4027, 4349, 4703, 5087, 5503, 5953, 6427, 6949, 7517, 8123, 8783, 9497, 10273, 11113, 12011, 12983, 14033, 15173,
           16411, 17749, 19183, 20753, 22447, 24281, 26267, 28411, 30727, 33223, 35933, 38873, 42043, 45481, 49201, 53201,
           57557, 62233, 67307, 72817, 78779, 85229, 92203, 99733, 107897, 116731, 126271, 136607, 147793, 159871, 172933)


def _std_hash(data: bytes) -> int:
    """libstdc++'s `std::_Hash_bytes(data, len, 0xc70f6907)` for a 64-bit size_t (what `std::hash<std::string>` returns)."""
    def shift_mix(v: int) -> int:
        return v ^ (v >> 47)

    n = len(data)
    h = (_SEED ^ (n * _MUL)) & _MASK
    aligned = n & ~7
    for i in range(0, aligned, 8):
        word = (shift_mix((int.from_bytes(data[i:i + 8], "little") * _MUL) & _MASK) * _MUL) & _MASK
        h = ((h ^ word) * _MUL) & _MASK
    if n & 7:
        h = ((h ^ int.from_bytes(data[aligned:], "little")) * _MUL) & _MASK
    return shift_mix((shift_mix(h) * _MUL) & _MASK)


def unordered_map_order(names: Iterable[str]) -> list[str] | None:
    """The order a libstdc++ `std::unordered_map<std::string, T>` visits `names` after emplacing them in turn.

    A transcription of `_Hashtable::_M_insert_bucket_begin` and `_M_rehash_aux` (unique keys): one
    singly linked list, each bucket remembering the node *before* its first node; a new node goes
    first in its bucket, or first in the list when its bucket is empty; growth (load factor 1, the
    `__prime_list` bucket counts) re-inserts the nodes in list order the same way. Duplicates are
    ignored, as `emplace` ignores them. Linear time. None beyond `_PRIMES` (more than ~170k names),
    where the caller forwards the request instead.
    """
    head = object()  # _M_before_begin
    after: dict = {head: None}
    before: dict[int, object] = {}  # bucket -> node before its first node
    hashes: dict[str, int] = {}
    buckets, next_resize = 1, 0

    def insert(node, bucket: int, before_map: dict) -> None:
        prev = before_map.get(bucket)
        if prev is not None:
            after[node], after[prev] = after[prev], node
            return
        after[node], after[head] = after[head], node
        if after[node] is not None:
            before_map[hashes[after[node]] % buckets] = node
        before_map[bucket] = head

    for name in names:
        if name in hashes:
            continue
        hashes[name] = _std_hash(name.encode("utf-8", "surrogateescape"))
        count = len(hashes) - 1
        if count + 1 > next_resize:
            # _Prime_rehash_policy::_M_need_rehash: a fresh table asks for at least 11 buckets.
            wanted = max(count + 1, 0 if next_resize else 11)
            if wanted >= buckets:
                target = max(wanted + 1, buckets * 2)
                if target < len(_FAST_BUCKETS):
                    buckets = _FAST_BUCKETS[target]
                else:
                    i = bisect.bisect_left(_PRIMES, target)
                    if i == len(_PRIMES):
                        return None
                    buckets = _PRIMES[i]
                next_resize = buckets
                node, after[head], before = after[head], None, {}
                while node is not None:
                    following = after[node]
                    insert(node, hashes[node] % buckets, before)
                    node = following
            else:
                next_resize = buckets
        insert(name, hashes[name] % buckets, before)
    order, node = [], after[head]
    while node is not None:
        order.append(node)
        node = after[node]
    return order


# --- the request -----------------------------------------------------------------------------------------------------

def check_model_infer(request, models: Mapping[str, ModelSpec], known: frozenset[str] | set[str]) -> TritonStatus | None:
    """Triton's answer to a bad ModelInferRequest, or None when the request should be forwarded.

    Args:
        request: a parsed `service_pb2.ModelInferRequest`.
        models: the loaded models by name.
        known: every model name the replicas' repository index lists (loaded or not). A name in
            neither is unknown to Triton; one known but not loaded is forwarded, because Triton's
            answer then depends on its history with the model.
    """
    version = parse_version(request.model_version)
    if isinstance(version, TritonStatus):
        return version
    spec = models.get(request.model_name)
    if spec is None:
        if request.model_name in known:
            return None
        return TritonStatus(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{request.model_name}' is not found")
    if (version != -1 and version not in spec.versions) or not spec.emulated or len(request.inputs) > MAX_CHECKED_INPUTS:
        return None
    if _looks_valid(request, spec):
        return None
    return _explain(request, spec)


def _looks_valid(request, spec: ModelSpec) -> bool:
    """Cheap check of the common, correct request; False sends it to the exact (slower) emulation."""
    if request.parameters and not _parameters_ok(request.parameters):
        return False
    raws = request.raw_input_contents
    if len(request.inputs) > len(raws):
        return False
    batched = spec.max_batch_size > 0
    seen: set[str] = set()
    batch = None
    for index, tensor in enumerate(request.inputs):
        config = spec.inputs.get(tensor.name)
        if config is None or tensor.name in seen or tensor.datatype != config.datatype or tensor.HasField("contents") or tensor.parameters:
            return False
        seen.add(tensor.name)
        shape = tensor.shape
        count = 1
        for d in shape:
            count *= d
        if batched:
            if not shape:
                return False
            if batch is None:
                batch = shape[0]
            elif shape[0] != batch:
                return False
            dims = shape[1:]
        else:
            dims = shape
        if len(dims) != len(config.dims):
            return False
        for d, c in zip(dims, config.dims):
            if d < 0 or (c != _WILDCARD and c != d):
                return False
        if len(raws[index]) != count * config.element_size:
            return False
    if batched and not (batch is not None and 1 <= batch <= spec.max_batch_size):
        return False
    for name in spec.required:
        if name not in seen:
            return False
    for output in request.outputs:
        if output.name not in spec.outputs or output.parameters:
            return False
    return True


def _parameters_ok(parameters) -> bool:
    """Whether Triton's frontend accepts the request parameters (`SetInferenceRequestMetadata`).

    Where it would not, the request is forwarded so that Triton words the error itself.
    """
    for key, value in parameters.items():
        kind = value.WhichOneof("parameter_choice")
        if key == "sequence_id":
            ok = kind in ("int64_param", "string_param")
        elif key in ("sequence_start", "sequence_end"):
            ok = kind == "bool_param"
        elif key == "priority":
            ok = kind == "uint64_param" or (kind == "int64_param" and value.int64_param >= 0)
        elif key == "timeout":
            ok = kind == "int64_param"
        elif key.startswith("triton_"):
            ok = key in _TRITON_PARAMS and kind == "bool_param"
        else:
            ok = kind in ("int64_param", "bool_param", "string_param", "double_param")
        if not ok:
            return False
    return True


def _dims_text(dims: Iterable[int]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _wrap64(value: int) -> int:
    value %= _INT64
    return value - _INT64 if value >= (1 << 63) else value


def _byte_size(element_size: int, dims: list[int]) -> int:
    """`triton::common::GetByteSize`: 0 for no dims, -1 when a dim is -1, else a wrapping int64 product."""
    count = 0
    for i, d in enumerate(dims):
        if d == _WILDCARD:
            return -1
        count = d if i == 0 else _wrap64(count * d)
    return _wrap64(count * element_size)


def _explain(request, spec: ModelSpec) -> TritonStatus | None:
    """Walk Triton's checks in Triton's order; the first failure, word for word, or None (forward)."""
    model = request.model_name
    prefix = f"[request id: {request.id or '<id_unknown>'}] "
    if request.parameters and not _parameters_ok(request.parameters):
        return None
    tensors: dict[str, object] = {}
    for tensor in request.inputs:
        if tensor.name in tensors:
            return TritonStatus(_INVALID, prefix + f"input '{tensor.name}' already exists in request")
        tensors[tensor.name] = tensor

    # InferGRPCToInput: each input's data, in request order.
    raws = request.raw_input_contents
    sizes: dict[str, int] = {}
    for tensor in request.inputs:
        if "shared_memory_region" in tensor.parameters:
            return None
        if tensor.HasField("contents"):
            if raws:
                return TritonStatus(_INVALID, f"contents field must not be specified when using raw_input_contents for '{tensor.name}' "
                                              f"for model '{model}'")
            return None
        if len(raws) <= len(sizes):
            return TritonStatus(_INVALID, f"unable to find data for input tensor '{tensor.name}' for model '{model}' in request.")
        sizes[tensor.name] = len(raws[len(sizes)])
    if any(output.parameters for output in request.outputs):
        return None  # classification or shared-memory outputs: Triton checks those next

    # InferenceRequest::Normalize.
    for name in sorted({output.name for output in request.outputs}, key=lambda s: s.encode("utf-8", "surrogateescape")):
        if name not in spec.outputs:
            return TritonStatus(_INVALID, f"unexpected inference output '{name}' for model '{model}'")
    order = unordered_map_order(tensors)
    if order is None:
        return None
    required = spec.required
    if len(order) > len(spec.inputs) or len(order) < len(required):
        missing = "[" + ",".join(f"'{n}'" for n in required if n not in tensors)
        missing = (missing if len(missing) > 1 else "") + "]"  # Triton drops the last character, even the "[" of an empty list
        got = "[" + ",".join(f"'{n}'" for n in order) + "]"
        head = (f"expected {len(spec.inputs)} inputs" if len(required) == len(spec.inputs)
                else f"expected number of inputs between {len(required)} and {len(spec.inputs)}")
        return TritonStatus(_INVALID, prefix + f"{head} but got {len(order)} inputs for model '{model}'. Got input(s) {got}, "
                                               f"but missing required input(s) {missing}. Please provide all required input(s).")
    batched = spec.max_batch_size > 0
    batch = 0  # uint32_t batch_size_
    for name in order:
        if name not in spec.inputs:
            return TritonStatus(_INVALID, f"unexpected inference input '{name}' for model '{model}'")
        if not batched:
            continue
        shape = tensors[name].shape
        if not shape:
            return TritonStatus(_INVALID, prefix + f"input '{name}' has no shape but model requires batch dimension for '{model}'")
        if batch == 0:
            batch = shape[0] % _UINT32
        elif shape[0] != batch:
            return TritonStatus(_INVALID, prefix + f"input '{name}' batch size does not match other inputs for '{model}'")
    if (batch - _UINT32 if batch >= (1 << 31) else batch) > spec.max_batch_size:  # `(int)batch_size_ > max_batch_size`
        return TritonStatus(_INVALID, prefix + f"inference request batch-size must be <= {spec.max_batch_size} for '{model}'")
    for name in order:
        config, tensor = spec.inputs[name], tensors[name]
        if tensor.datatype != config.datatype:
            given = tensor.datatype if tensor.datatype in _ELEMENT_SIZE else "<invalid>"
            return TritonStatus(_INVALID, prefix + f"inference input '{name}' data-type is '{given}', but model '{model}' expects "
                                                   f"'{config.datatype}'")
        full = list(tensor.shape)
        dims = full[1:] if batched else full
        match = len(dims) == len(config.dims)
        if match:
            for d, c in zip(dims, config.dims):
                if d == _WILDCARD:
                    return TritonStatus(_INVALID, prefix + f"All input dimensions should be specified for input '{name}' for model "
                                                           f"'{model}', got {_dims_text(full)}")
                if c != _WILDCARD and c != d:
                    match = False
                    break
        if not match:
            expected = ([_WILDCARD] if batched else []) + list(config.dims)
            note = _BATCH_NOTE if batched else ""
            return TritonStatus(_INVALID, prefix + f"unexpected shape for input '{name}' for model '{model}'. Expected "
                                                   f"{_dims_text(expected)}, got {_dims_text(full)}. {note}")
        with_batch = dims if batch == 0 else [batch, *dims]
        expected_size = _byte_size(config.element_size, with_batch)
        if sizes[name] != expected_size:
            return TritonStatus(_INVALID, prefix + f"input byte size mismatch for input '{name}' for model '{model}'. Expected "
                                                   f"{expected_size}, got {sizes[name]}")
    return None
