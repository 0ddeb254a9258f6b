"""The k8s/ manifests and `raytron k8s`: every overlay renders with `kubectl kustomize` and validates
strictly (core kinds against Kubernetes' own schemas with kubernetes-validate, ServiceMonitor,
RayCluster and RayJob against their CRDs' schemas in k8s/crds/), and says what the issue asks:
least-privilege RBAC, a headless Triton Service, locked-down containers, probes, a NetworkPolicy.

No API server can run here, so `apply` is tested up to the point where it needs one: it must fail
with one clear line. Needs kubectl on PATH (`apt-get install kubectl`; .ci/run installs it).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shlex
import socket

import jsonschema
import kubernetes_validate
import pytest
import yaml
from helpers import REPO, base_env, run_cli

from raytron.serving.errors import K8sConfigError, K8sError
from raytron.serving.k8s import OVERLAYS, RenderConfig, kustomize, render

K8S = REPO / "k8s"
CRDS = K8S / "crds"
CRD_FILES = {"ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml", "RayCluster": "ray.io_rayclusters.yaml",
             "RayJob": "ray.io_rayjobs.yaml"}
#: The newest Kubernetes version whose schemas kubernetes-validate ships.
K8S_VERSION = kubernetes_validate.utils.latest_version()


# -- helpers ---------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _overlay_text(overlay: str) -> str:
    try:
        return kustomize(K8S / OVERLAYS[overlay])
    except K8sError as exc:  # kubectl missing: the message says how to install it
        pytest.fail(f"cannot render the {overlay} overlay: {exc}")


def overlay_docs(overlay: str) -> list[dict]:
    """The overlay as `kubectl kustomize` prints it, as fresh dicts (tests may change them)."""
    return [d for d in yaml.safe_load_all(_overlay_text(overlay)) if d]


def strict(schema):
    """A CRD's structural schema as the API server applies it with strict field validation: an object
    with `properties` and no `additionalProperties` (or x-kubernetes-preserve-unknown-fields) accepts
    no other field. jsonschema alone would let a misspelled field through."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        if out.get("x-kubernetes-embedded-resource"):
            out["properties"] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}, **out["properties"]}
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=None)
def crd_validator(kind: str, api_version: str):
    crd = yaml.load((CRDS / CRD_FILES[kind]).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    assert version in served, f"{kind} {api_version}: the CRD serves {sorted(served)}"
    schema = strict(served[version]["schema"]["openAPIV3Schema"])
    return jsonschema.Draft202012Validator(schema)


def validate(doc: dict) -> None:
    """Strict validation of one object; raises with the failing path."""
    if doc["kind"] in CRD_FILES:
        crd_validator(doc["kind"], doc["apiVersion"]).validate(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def find(docs, kind: str, name: str | None = None) -> dict:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def pod_specs(node):
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield node
        for value in node.values():
            yield from pod_specs(value)
    elif isinstance(node, list):
        for value in node:
            yield from pod_specs(value)


def containers(doc):
    for pod in pod_specs(doc):
        yield from ((pod, c) for c in pod.get("initContainers", []) + pod["containers"])


def triton_container(docs) -> dict:
    return next(c for _, c in containers(find(docs, "Deployment", "triton")) if c["name"] == "triton")


# -- rendering and strict validation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_overlay_renders_and_validates_strictly(overlay):
    docs = overlay_docs(overlay)
    assert docs
    for doc in docs:
        try:
            validate(doc)
        except Exception as exc:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']} does not validate: {exc}")


def test_the_crds_are_the_stored_upstream_files():
    for kind, name in CRD_FILES.items():
        crd = yaml.load((CRDS / name).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
    readme = (CRDS / "README.md").read_text()
    assert all(name in readme for name in CRD_FILES.values()) and "Apache-2.0" in readme


@pytest.mark.parametrize("kind, overlay, path, misspelled", [
    ("RayCluster", "kuberay", ("spec", "headGroupSpec"), "rayStartParam"),
    ("RayCluster", "kuberay", ("spec", "workerGroupSpecs", 0, "template", "spec", "containers", 0), "imagePullPolicyy"),
    ("RayJob", "kuberay", ("spec",), "entryPoint"),
    ("ServiceMonitor", "cpu", ("spec", "endpoints", 0), "intervall"),
    ("Deployment", "cpu", ("spec", "template", "spec", "containers", 0), "readinesProbe"),
    ("Service", "cpu", ("spec",), "clusterIp"),
    ("HorizontalPodAutoscaler", "hpa-prometheus", ("spec",), "maxReplica"),
])
def test_a_misspelled_field_fails_validation(kind, overlay, path, misspelled):
    doc = copy.deepcopy(next(d for d in overlay_docs(overlay) if d["kind"] == kind))
    validate(doc)
    target = doc
    for key in path:
        target = target[key]
    target[misspelled] = "x"
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)) as error:
        validate(doc)
    assert misspelled in str(error.value)


def test_a_wrong_type_in_a_crd_field_fails_validation():
    doc = copy.deepcopy(find(overlay_docs("kuberay"), "RayCluster"))
    doc["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError, match="two"):
        validate(doc)


# -- what the manifests must say -------------------------------------------------------------------------------------

def test_the_autoscaler_role_allows_only_get_and_patch_on_tritons_scale():
    docs = overlay_docs("cpu")
    role = find(docs, "Role", "autoscaler")
    assert role["rules"] == [{"apiGroups": ["apps"], "resources": ["deployments/scale"], "resourceNames": ["triton"], "verbs": ["get", "patch"]}]
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    binding = find(docs, "RoleBinding", "autoscaler")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "autoscaler"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "autoscaler", "namespace": "raytron"}]
    deployment = find(docs, "Deployment", "autoscaler")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "autoscaler"
    # Only the autoscaler's pods get an API token.
    for other in ("triton", "gateway"):
        assert find(docs, "Deployment", other)["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert shlex.join(pod["containers"][0]["args"]) == ("autoscaler --namespace '$(POD_NAMESPACE)' --deployment triton --service triton-headless "
                                                        "--min-replicas 1 --max-replicas 8 --metrics-port 8002")


def test_triton_service_is_headless_with_grpc_http_and_metrics():
    service = find(overlay_docs("cpu"), "Service", "triton-headless")
    assert service["spec"]["clusterIP"] == "None"
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "triton"}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_container_is_non_root_read_only_and_drops_all_capabilities(overlay):
    seen = 0
    for doc in overlay_docs(overlay):
        for pod, container in containers(doc):
            seen += 1
            pod_ctx, ctx = pod.get("securityContext", {}), container.get("securityContext", {})
            where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']} container {container['name']}"
            assert ctx.get("runAsNonRoot") is True or pod_ctx.get("runAsNonRoot") is True, where
            assert ctx.get("readOnlyRootFilesystem") is True, where
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"] and not ctx["capabilities"].get("add"), where
            assert (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile")) == {"type": "RuntimeDefault"}, where
            # A read-only root needs somewhere to write: /tmp is an emptyDir everywhere.
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]], where
            assert "limits" in container.get("resources", {}) and "requests" in container["resources"], where
    assert seen >= 2


def test_triton_probes_shm_and_model_repository():
    docs = overlay_docs("cpu")
    triton = triton_container(docs)
    assert triton["image"] == "nvcr.io/nvidia/tritonserver:25.01-py3"
    assert triton["args"][0] == "tritonserver" and "--model-repository=/models" in triton["args"]
    assert triton["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    startup = triton["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 600  # 10 minutes for model load
    assert {p["name"]: p["containerPort"] for p in triton["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    pod = find(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    shm = next(m["name"] for m in triton["volumeMounts"] if m["mountPath"] == "/dev/shm")
    assert volumes[shm]["emptyDir"]["medium"] == "Memory" and volumes[shm]["emptyDir"]["sizeLimit"]
    assert volumes["model-repository"]["persistentVolumeClaim"]["claimName"] == "model-repository"
    find(docs, "PersistentVolumeClaim", "model-repository")
    assert "replicas" not in find(docs, "Deployment", "triton")["spec"]  # owned by the autoscaler


def test_cpu_and_gpu_overlays_size_triton():
    cpu, gpu = triton_container(overlay_docs("cpu")), triton_container(overlay_docs("gpu"))
    assert cpu["resources"]["requests"]["cpu"] == cpu["resources"]["limits"]["cpu"] and "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == gpu["resources"]["requests"]["nvidia.com/gpu"] == "1"
    pod = find(overlay_docs("gpu"), "Deployment", "triton")["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_gateway_discovers_triton_through_the_headless_service():
    docs = overlay_docs("cpu")
    deployment = find(docs, "Deployment", "gateway")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[0] == "gateway" and "--host=0.0.0.0" in args
    assert "--replicas-dns=triton-headless.$(POD_NAMESPACE).svc:8001" in args
    assert {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in container["env"]
    assert container["readinessProbe"]["grpc"] == {"port": 8001}
    service = find(docs, "Service", "gateway")
    assert service["spec"]["type"] == "ClusterIP" and {p["name"] for p in service["spec"]["ports"]} == {"grpc", "metrics"}
    params = parse_cli(args)
    assert params["replicas_dns"] == "triton-headless.$(POD_NAMESPACE).svc:8001" and params["host"] == "0.0.0.0"
    assert (params["port"], params["metrics_port"], params["metrics_host"]) == (8001, 9090, "0.0.0.0")


def parse_cli(args: list[str]) -> dict:
    """The parameters the real `raytron` CLI parses from a container's args (unknown options fail)."""
    import typer.main

    from raytron.cluster.cli.main import app

    commands = typer.main.get_command(app).commands
    if args[0] not in commands:
        pytest.skip(f"`raytron {args[0]}` is not registered in this checkout")
    return commands[args[0]].make_context(args[0], list(args[1:])).params


def test_the_autoscaler_command_line_parses():
    container = find(overlay_docs("cpu"), "Deployment", "autoscaler")["spec"]["template"]["spec"]["containers"][0]
    params = parse_cli(container["args"])
    assert params["deployment"] == "triton" and params["namespace"] == "$(POD_NAMESPACE)"


def test_pdbs_networkpolicy_and_servicemonitors():
    docs = overlay_docs("cpu")
    assert find(docs, "PodDisruptionBudget", "triton")["spec"]["maxUnavailable"] == 1
    assert find(docs, "PodDisruptionBudget", "gateway")["spec"]["minAvailable"] == 1
    policy = find(docs, "NetworkPolicy", "triton")["spec"]
    assert policy["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "triton"}} and policy["policyTypes"] == ["Ingress"]
    allowed = {}
    for rule in policy["ingress"]:
        for peer in rule["from"]:
            name = peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
            allowed.setdefault(name, set()).update(p["port"] for p in rule["ports"])
    assert allowed == {"gateway": {8001}, "autoscaler": {8002}, "prometheus": {8002}}
    monitors = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ServiceMonitor"}
    assert set(monitors) == {"triton", "gateway"}
    assert all(m["spec"]["endpoints"][0]["port"] == "metrics" for m in monitors.values())


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_labels_are_consistent(overlay):
    for doc in overlay_docs(overlay):
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "raytron", f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] != "Namespace":
            assert "app.kubernetes.io/name" in labels, f"{doc['kind']}/{doc['metadata']['name']}"
        for template in _templates(doc):
            assert template["metadata"]["labels"].get("app.kubernetes.io/part-of") == "raytron"
            assert "app.kubernetes.io/name" in template["metadata"]["labels"]


def _templates(node):
    if isinstance(node, dict):
        if isinstance(node.get("spec"), dict) and "containers" in node["spec"]:
            yield node
        for value in node.values():
            yield from _templates(value)
    elif isinstance(node, list):
        for value in node:
            yield from _templates(value)


def test_hpa_overlay_replaces_the_autoscaler():
    docs = overlay_docs("hpa-prometheus")
    assert not [d for d in docs if d["metadata"]["name"] == "autoscaler"]
    hpa = find(docs, "HorizontalPodAutoscaler", "triton")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triton"}
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "triton_queue_compute_ratio"
    rules = yaml.safe_load(find(docs, "ConfigMap", "prometheus-adapter-rules")["data"]["config.yaml"])["rules"]
    assert rules[0]["name"]["as"] == "triton_queue_compute_ratio"
    assert "nv_inference_compute_infer_duration_us" in rules[0]["metricsQuery"]


def test_kuberay_runs_a_valid_raytron_spec_on_the_raycluster():
    from raytron.cluster.spec import import_object

    docs = overlay_docs("kuberay")
    cluster, job = find(docs, "RayCluster"), find(docs, "RayJob")
    assert cluster["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert job["spec"]["entrypoint"].endswith("python -m raytron.cluster.runner")
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    spec_cls = import_object(env["RAYTRON_SPEC_CLASS"])
    spec = spec_cls.model_validate(json.loads(env["RAYTRON_SPEC_JSON"]))
    assert spec.kind == "train" and spec.train.data.manifest.startswith("/shared/") and spec.storage.path.startswith("/shared/")
    assert f"--out {spec.train.data.manifest}" in job["spec"]["entrypoint"]
    # The image installs pyproject's ray; KubeRay must be told the same version.
    import re

    pinned = re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert cluster["spec"]["rayVersion"] == pinned


# -- render options --------------------------------------------------------------------------------------------------

def test_render_options_take_effect():
    docs = render(RenderConfig(overlay="gpu", image="registry.example.com/tritonserver:24.12-py3", gateway_image="registry.example.com/raytron:1.2",
                               model_repo="s3://bucket/models", namespace="serving"))
    triton = triton_container(docs)
    assert triton["image"] == "registry.example.com/tritonserver:24.12-py3"
    assert "--model-repository=s3://bucket/models" in triton["args"] and not any(a.startswith("--model-repository=/") for a in triton["args"])
    assert all(m["name"] != "model-repository" for m in triton["volumeMounts"])
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]  # a bucket needs no claim
    for name in ("gateway", "autoscaler"):
        assert find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/raytron:1.2"
    assert find(docs, "Namespace")["metadata"]["name"] == "serving"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"serving"}
    assert find(docs, "RoleBinding")["subjects"][0]["namespace"] == "serving"
    for doc in docs:
        validate(doc)
    # A path keeps the volume.
    path_docs = render(RenderConfig(overlay="cpu", model_repo="/models/prod"))
    assert "--model-repository=/models/prod" in triton_container(path_docs)["args"]
    find(path_docs, "PersistentVolumeClaim", "model-repository")


def test_render_kuberay_with_a_spec(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "hello-k8s", "kind": "python", "runtime": {"env": {"GREETING": "hi"}},
                                    "storage": {"path": "/shared/runs"}, "python": {"function": "mymod:main"}}))
    docs = render(RenderConfig(overlay="kuberay", spec_path=spec, gateway_image="registry.example.com/raytron:1.2", namespace="train"))
    job = find(docs, "RayJob")
    assert job["metadata"]["name"] == "hello-k8s" and job["spec"]["entrypoint"] == "python -m raytron.cluster.runner"
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env["GREETING"] == "hi" and env["RAYTRON_SPEC_CLASS"] == "raytron.cluster.pyjob:PythonJobSpec"
    assert json.loads(env["RAYTRON_SPEC_JSON"])["python"]["function"] == "mymod:main"
    assert job["spec"]["entrypointNumCpus"] == 1 and "entrypointNumGpus" not in job["spec"]  # a 1-worker python job runs in its driver
    images = {c["image"] for _, c in containers(find(docs, "RayCluster"))}
    assert images == {"registry.example.com/raytron:1.2"}
    for doc in docs:
        validate(doc)


@pytest.mark.parametrize("fields, named", [
    ({"overlay": "arm"}, "`--overlay` ('arm')"),
    ({"image": "has space"}, "`--image` ('has space')"),
    ({"model_repo": "models"}, "`--model-repo` ('models')"),
    ({"model_repo": "http://x/models"}, "`--model-repo`"),
    ({"namespace": "Bad_NS"}, "`--namespace` ('Bad_NS')"),
    ({"overlay": "cpu", "spec_path": "spec.yaml"}, "`--spec`"),
])
def test_render_config_errors_name_the_option(fields, named):
    with pytest.raises(K8sConfigError) as error:
        RenderConfig(**fields)
    assert named in str(error.value) and error.value.exit_code == 2


def test_an_option_that_matches_nothing_is_an_error():
    with pytest.raises(K8sConfigError, match="`--image`.*kuberay"):
        render(RenderConfig(overlay="kuberay", image="nvcr.io/nvidia/tritonserver:25.01-py3"))
    with pytest.raises(K8sConfigError, match="`--model-repo`.*kuberay"):
        render(RenderConfig(overlay="kuberay", model_repo="/models"))


def test_missing_kubectl_says_how_to_install_it(monkeypatch, tmp_path):
    import sys

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))  # nor beside the interpreter
    with pytest.raises(K8sError, match="apt-get install kubectl"):
        kustomize(K8S / "overlays" / "cpu")


# -- the CLI ---------------------------------------------------------------------------------------------------------

def _env(tmp_path, **extra) -> dict[str, str]:
    env = {k: v for k, v in base_env(tmp_path).items() if not k.startswith("KUBERNETES_")}  # not "in a pod"
    env.update(extra)
    return env


def test_cli_render_prints_what_kustomize_gives_with_the_options(tmp_path):
    result = run_cli("k8s", "render", "--overlay", "cpu", "--model-repo", "gs://b/repo", "--namespace", "ns1", env=_env(tmp_path), timeout_s=60)
    assert result.returncode == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert [d["kind"] for d in docs] == [d["kind"] for d in overlay_docs("cpu") if d["kind"] != "PersistentVolumeClaim"]
    assert "--model-repository=gs://b/repo" in triton_container(docs)["args"]
    bad = run_cli("k8s", "render", "--overlay", "nope", env=_env(tmp_path), timeout_s=60)
    assert bad.returncode == 2 and "`--overlay` ('nope')" in bad.stderr


def test_cli_apply_dry_run_without_a_cluster_fails_clearly(tmp_path):
    result = run_cli("k8s", "apply", "--dry-run", env=_env(tmp_path, KUBECONFIG=str(tmp_path / "no-kubeconfig")), timeout_s=60)
    assert result.returncode == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no Kubernetes cluster to apply to"), result.stderr
    assert "KUBECONFIG" in lines[0] and "Traceback" not in result.output


def test_cli_apply_to_an_unreachable_api_server_fails_clearly(tmp_path):
    with socket.socket() as s:  # a free loopback port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}],
    }))
    result = run_cli("k8s", "apply", "--dry-run", "--overlay", "gpu", env=_env(tmp_path, KUBECONFIG=str(kubeconfig)), timeout_s=60)
    assert result.returncode == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"cannot reach the Kubernetes API server at http://127.0.0.1:{port}" in lines[0], result.stderr
    assert "Traceback" not in result.output
    bad = run_cli("k8s", "apply", "--dry-run", "--namespace", "UPPER", env=_env(tmp_path, KUBECONFIG=str(kubeconfig)), timeout_s=60)
    assert bad.returncode == 2 and "`--namespace` ('UPPER')" in bad.stderr


def test_readme_and_dockerfile_match_the_manifests():
    readme = (REPO / "README.md").read_text()
    assert "## Kubernetes: k8s/" in readme and readme.index("## Kubernetes: k8s/") < readme.index("## Benchmarks")
    for overlay in ("overlays/cpu", "overlays/gpu", "overlays/hpa-prometheus", "kuberay"):
        assert f"k8s/{overlay}" in readme
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "USER 10001" in dockerfile  # the uid the manifests run the raytron image as
    assert os.path.isfile(REPO / ".dockerignore")


class _FakeResource:
    def __init__(self, calls, kind, namespaced):
        self.calls, self.kind, self.namespaced = calls, kind, namespaced

    def server_side_apply(self, **kwargs):
        self.calls.append((self.kind, kwargs))


class _FakeDynamicClient:
    """The slice of `kubernetes.dynamic.DynamicClient` that `apply` uses: discovery by kind, then server-side apply."""

    def __init__(self, served: set[str]):
        self.calls: list = []
        self.served = served
        self.resources = self

    def get(self, *, api_version, kind):
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        if kind not in self.served:
            raise ResourceNotFoundError(f"No matches found for {{'api_version': {api_version!r}, 'kind': {kind!r}}}")
        return _FakeResource(self.calls, kind, namespaced=kind != "Namespace")


def test_apply_is_server_side_under_the_raytron_field_manager():
    from raytron.serving.k8s import apply

    docs = render(RenderConfig(overlay="cpu", namespace="serving"))
    client = _FakeDynamicClient({d["kind"] for d in docs})
    applied = apply(docs, dry_run=True, client=client)
    assert [(a.kind, a.name) for a in applied] == [(d["kind"], d["metadata"]["name"]) for d in docs]
    for (kind, call), doc in zip(client.calls, docs):
        assert call["body"] is doc and call["field_manager"] == "raytron" and call["dry_run"] == "All"
        assert call["namespace"] == (None if kind == "Namespace" else "serving")
    assert str(applied[0]) == "Namespace/serving validated (dry run)"
    client = _FakeDynamicClient({d["kind"] for d in docs} - {"ServiceMonitor"})
    with pytest.raises(K8sError, match=r"does not serve ServiceMonitor .*prometheus-operator.*nothing was applied"):
        apply(docs, client=client)
    assert client.calls == []


def test_an_object_the_api_server_refuses_is_named_with_its_message():
    from kubernetes.client.exceptions import ApiException
    from kubernetes.dynamic.exceptions import api_exception

    from raytron.serving.k8s import apply

    docs = render(RenderConfig(overlay="cpu"))
    refused = next(i for i, d in enumerate(docs) if d["kind"] == "Deployment")
    client = _FakeDynamicClient({d["kind"] for d in docs})

    class Refusing(_FakeResource):
        def server_side_apply(self, **kwargs):
            if kwargs["body"] is docs[refused]:
                error = ApiException(status=422, reason="Unprocessable Entity")
                error.body = json.dumps({"message": 'Deployment.apps "x" is invalid: spec.template.spec.containers[0].image: Required value'})
                raise api_exception(error)
            super().server_side_apply(**kwargs)

    client.get = lambda *, api_version, kind: Refusing(client.calls, kind, kind != "Namespace")
    with pytest.raises(K8sError) as error:
        apply(docs, client=client)
    message = str(error.value)
    assert f"refused Deployment/{docs[refused]['metadata']['name']}: 422 Unprocessable Entity" in message
    assert "Required value" in message and "already applied: Namespace/raytron" in message
    assert len(client.calls) == refused


@pytest.mark.parametrize("command", [("k8s", "render"), ("k8s", "apply"), ("gateway",)])
def test_the_new_commands_have_help(command, tmp_path):
    result = run_cli(*command, "--help", env=_env(tmp_path), timeout_s=60)
    assert result.returncode == 0 and "Usage: raytron " + " ".join(command) in result.stdout, result.output
    top = run_cli("--help", env=_env(tmp_path), timeout_s=60).stdout
    assert command[0] in top
