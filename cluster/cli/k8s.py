"""`raytron k8s`: render the k8s/ manifests with your images, model repository and namespace, or apply them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

NAME = "k8s"
app = typer.Typer(help="Kubernetes: render the k8s/ kustomize overlays (Triton, gateway, autoscaler; KubeRay) or apply them "
                       "with server-side apply.", no_args_is_help=True)

OverlayOption = Annotated[str, typer.Option("--overlay", help="cpu, gpu, hpa-prometheus (Triton scaled by an HPA through the Prometheus "
                                                              "adapter) or kuberay (a RayCluster and a RayJob).")]
ImageOption = Annotated[Optional[str], typer.Option("--image", help="Triton server image (default: the pinned nvcr.io/nvidia/tritonserver tag).",
                                                    show_default=False)]
GatewayImageOption = Annotated[Optional[str], typer.Option("--gateway-image", help="raytron image of the gateway, autoscaler and Ray pods "
                                                                                   "(default: raytron:0.1.0).", show_default=False)]
ModelRepoOption = Annotated[Optional[str], typer.Option("--model-repo", help="Triton's model repository: a path in the model-repository "
                                                                            "volume (/models/...) or s3://, gs://, as:// (drops the volume).",
                                                        show_default=False)]
NamespaceOption = Annotated[Optional[str], typer.Option("--namespace", "-n", help="Namespace of every object (default: raytron; "
                                                                                 "raytron-training for kuberay).", show_default=False)]
SpecOption = Annotated[Optional[Path], typer.Option("--spec", help="kuberay: the raytron job spec the RayJob runs (paths in it must exist "
                                                                   "on the cluster, e.g. under /shared).", show_default=False)]
ManifestsOption = Annotated[Optional[Path], typer.Option("--manifests", help="The k8s/ directory (default: this checkout's).", show_default=False)]


def _render(overlay, image, gateway_image, model_repo, namespace, spec, manifests):
    from raytron.serving.k8s import RenderConfig, render

    return render(RenderConfig(overlay=overlay, image=image, gateway_image=gateway_image, model_repo=model_repo, namespace=namespace,
                               spec_path=spec, manifests=manifests))


@app.command("render")
def render_command(
    overlay: OverlayOption = "cpu",
    image: ImageOption = None,
    gateway_image: GatewayImageOption = None,
    model_repo: ModelRepoOption = None,
    namespace: NamespaceOption = None,
    spec: SpecOption = None,
    manifests: ManifestsOption = None,
) -> int:
    """Print an overlay's manifests (`kubectl kustomize`, then the options applied) as multi-document YAML on stdout.

    Pipe it to `kubectl apply -f -`, or review it, diff it, commit it.
    """
    import sys

    from raytron.serving.k8s import to_yaml

    docs = _render(overlay, image, gateway_image, model_repo, namespace, spec, manifests)
    sys.stdout.write(to_yaml(docs))  # verbatim: no console markup, emoji codes or wrapping in YAML
    return 0


@app.command("apply")
def apply_command(
    overlay: OverlayOption = "cpu",
    image: ImageOption = None,
    gateway_image: GatewayImageOption = None,
    model_repo: ModelRepoOption = None,
    namespace: NamespaceOption = None,
    spec: SpecOption = None,
    manifests: ManifestsOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="The API server validates and admits everything but persists nothing.")] = False,
    context: Annotated[Optional[str], typer.Option("--context", help="kubeconfig context (default: in-cluster config, else the current "
                                                                     "context).", show_default=False)] = None,
) -> int:
    """Apply an overlay with server-side apply (field manager `raytron`), as `render` prints it.

    Fields other managers own, such as the autoscaler's replica count, are left alone. Exit 1 when no
    cluster is reachable or the API server refuses an object (the message names it), 2 for bad options.
    """
    from raytron.cluster.cli._common import err
    from raytron.serving.k8s import apply

    docs = _render(overlay, image, gateway_image, model_repo, namespace, spec, manifests)
    for applied in apply(docs, dry_run=dry_run, context=context):
        err.print(str(applied), markup=False)
    return 0
