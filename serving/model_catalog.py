"""What the gateway knows about the replicas' models, and what it tells clients about them.

The catalog caches, per loaded model, the validation view of its config (`ModelSpec`) and the
ModelMetadata / ModelConfig responses the gateway serves, serialized once. It is refreshed from one
ready replica at start, after RepositoryModelLoad/Unload, when a replica comes back into rotation,
and (at most once a second) when a request names a model it does not know.

With a production repository, clients see the production model, not the replicas' local twin:
the local launcher serves each ONNX/TorchScript model through Triton's Python backend
(`raytron.serving.triton`), whose config says `backend: "python"` and carries `raytron_*`
parameters. `public_config` restores the production config's platform, backend, model file name,
instance groups and parameters (tensors and batching are the same by construction, and are taken
from the production file too); `public_metadata` restores the platform.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb

from raytron.serving.modelconfig import RepoModel, list_models
from raytron.serving.validation import ModelSpec

__all__ = ["ModelCatalog", "public_config", "public_metadata"]

log = logging.getLogger(__name__)

# Triton fills `backend` from `platform` for these (model_config_utils.cc, GetNormalizedModelConfig).
_PLATFORM_BACKEND = {"onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch", "tensorflow_savedmodel": "tensorflow",
                     "tensorflow_graphdef": "tensorflow", "tensorrt_plan": "tensorrt"}


def public_config(replica: mc.ModelConfig, model: RepoModel) -> mc.ModelConfig:
    """The config production Triton would report: the replica's normalized config with the production fields restored."""
    platform, production = model.platform, model.config
    config = mc.ModelConfig()
    config.CopyFrom(replica)
    for name in ("input", "output", "instance_group", "parameters", "platform", "backend", "default_model_filename"):
        config.ClearField(name)
    config.input.extend(production.input)
    config.output.extend(production.output)
    config.max_batch_size = production.max_batch_size
    config.platform = platform
    config.backend = production.backend or _PLATFORM_BACKEND.get(platform, "")
    config.default_model_filename = production.default_model_filename
    for key, value in production.parameters.items():
        config.parameters[key].CopyFrom(value)
    for i, group in enumerate(production.instance_group):
        copy = config.instance_group.add()
        copy.CopyFrom(group)
        # Triton names unnamed groups "<model>_<index>" and gives them one instance (model_config_utils.cc).
        copy.name = group.name or f"{config.name}_{i}"
        copy.count = group.count or 1
    return config


def public_metadata(replica: pb.ModelMetadataResponse, model: RepoModel) -> pb.ModelMetadataResponse:
    """The replica's ModelMetadata with the production platform."""
    response = pb.ModelMetadataResponse()
    response.CopyFrom(replica)
    response.platform = model.platform
    return response


class ModelCatalog:
    """Cached model views for validation and for the ModelMetadata / ModelConfig RPCs.

    Args:
        production_repo: the production model repository whose configs clients must see, or None
            to serve the replicas' own answers.
        clock: time source (injected by tests).
    """

    def __init__(self, production_repo: Path | None = None, *, clock=time.monotonic):
        self.production_repo = production_repo
        self.clock = clock
        self.specs: dict[str, ModelSpec] = {}
        self.known: frozenset[str] = frozenset()
        self.refreshed_at: float | None = None
        self._production: dict[str, RepoModel] = {}
        self._responses: dict[tuple[str, str, str], bytes] = {}
        self._lock = asyncio.Lock()

    def load_production(self) -> None:
        """(Re)read the production repository's configs; raises ModelRepositoryError if it is unreadable."""
        if self.production_repo is not None:
            self._production = {m.name: m for m in list_models(self.production_repo)}

    async def refresh(self, stub) -> None:
        """Rebuild the catalog from one replica (a `GRPCInferenceServiceStub` on its channel).

        Raises:
            grpc.aio.AioRpcError: the replica did not answer; the previous catalog is kept.
        """
        async with self._lock:
            index = await stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
            ready = sorted({m.name for m in index.models if m.state == "READY"})
            answers = await asyncio.gather(*(self._fetch(stub, name) for name in ready))
            try:
                self.load_production()
            except Exception as exc:  # noqa: BLE001 - keep the configs read at start
                log.warning("could not re-read the production repository %s: %s", self.production_repo, exc)
            specs, responses = {}, {}
            for name, (config, metadata) in zip(ready, answers):
                if config is None:
                    continue
                versions = [int(v) for v in metadata.versions if v.isdigit()]
                specs[name] = ModelSpec.from_config(config, versions)
                responses[("ModelConfig", name, "")] = self.config_response(name, config)
                responses[("ModelMetadata", name, "")] = self.metadata_response(name, metadata)
            self.specs, self._responses = specs, responses
            self.known = frozenset(m.name for m in index.models)
            self.refreshed_at = self.clock()
            log.info("model catalog refreshed: %d loaded model(s) of %d known", len(specs), len(self.known))

    async def _fetch(self, stub, name: str):
        try:
            config, metadata = await asyncio.gather(stub.ModelConfig(pb.ModelConfigRequest(name=name), timeout=10),
                                                    stub.ModelMetadata(pb.ModelMetadataRequest(name=name), timeout=10))
        except Exception as exc:  # noqa: BLE001 - unloaded between the index and now: skip it
            log.info("model %s not cached: %s", name, exc)
            return None, None
        return config.config, metadata

    def stale(self, min_age_s: float) -> bool:
        return self.refreshed_at is None or self.clock() - self.refreshed_at >= min_age_s

    # -- responses the gateway serves --------------------------------------------------------------------------------

    def config_response(self, name: str, config: mc.ModelConfig) -> bytes:
        production = self._production.get(name)
        public = public_config(config, production) if production is not None else config
        return pb.ModelConfigResponse(config=public).SerializeToString()

    def metadata_response(self, name: str, metadata: pb.ModelMetadataResponse) -> bytes:
        production = self._production.get(name)
        public = public_metadata(metadata, production) if production is not None else metadata
        return public.SerializeToString()

    def cached(self, method: str, name: str, version: str) -> bytes | None:
        return self._responses.get((method, name, version))

    def store(self, method: str, name: str, version: str, response: bytes) -> bytes:
        """Rewrite a replica's ModelConfig/ModelMetadata answer for clients; cache it when it is for a loaded version."""
        if method == "ModelConfig":
            public = self.config_response(name, pb.ModelConfigResponse.FromString(response).config)
        else:
            public = self.metadata_response(name, pb.ModelMetadataResponse.FromString(response))
        spec = self.specs.get(name)
        if spec is not None and version in {str(v) for v in spec.versions}:  # canonical spellings only: the cache stays bounded
            self._responses[(method, name, version)] = public
        return public
