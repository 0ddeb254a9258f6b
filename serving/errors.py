"""The serving subsystem's exception root and its kinds."""

from __future__ import annotations

from raytron.cluster.errors import RaytronError

__all__ = ["ServingError", "ModelRepositoryError", "ExportError", "ParityError", "ReplicaError", "GatewayError", "AutoscaleError", "AutoscaleConfigError", "K8sError", "K8sConfigError"]


class ServingError(RaytronError):
    """Root of the errors raised while exporting or serving models."""


class ModelRepositoryError(ServingError):
    """A Triton model repository, a model directory or a config.pbtxt is missing or invalid."""

    exit_code = 2


class ExportError(ServingError):
    """A model could not be exported (bad checkpoint, unsupported model, existing version)."""

    exit_code = 2


class ParityError(ExportError):
    """The exported model's outputs differ from the eager model's by more than the tolerance; nothing was written."""

    exit_code = 1


class ReplicaError(ServingError):
    """A local Triton replica failed to start, to load its models, or died."""


class GatewayError(ServingError):
    """The gateway could not start (bad address, certificate, or repository)."""

    exit_code = 2


class AutoscaleError(ServingError):
    """The autoscaler cannot observe or scale its replicas (no cluster, API refused, metrics unreachable)."""


class AutoscaleConfigError(AutoscaleError):
    """An autoscale setting is invalid (bounds, targets, windows, scaling policies)."""

    exit_code = 2


class K8sError(ServingError):
    """Rendering or applying the k8s/ manifests failed (kubectl missing, kustomize failed, no cluster, the API server refused)."""


class K8sConfigError(K8sError):
    """A `raytron k8s` option or the manifests directory is invalid."""

    exit_code = 2
