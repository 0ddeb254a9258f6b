"""`raytron export`: a training checkpoint into a Triton model repository, checked for parity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

NAME = "export"


def command(
    checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT_OR_RUN", help="A run directory (its latest checkpoint) or a checkpoints/step-NNNNNNNN directory.",
                                               show_default=False)],
    name: Annotated[str, typer.Option("--name", help="Model name in the repository (its directory).", show_default=False)],
    format: Annotated[str, typer.Option("--format", help="onnx, torchscript, or both (ONNX under NAME, TorchScript under NAME-torchscript).")] = "onnx",
    repo: Annotated[Path, typer.Option("--repo", help="The Triton model repository.")] = Path("model_repository"),
    version: Annotated[Optional[int], typer.Option("--version", help="Version to create. Default: one more than the highest existing.", show_default=False)] = None,
    max_batch_size: Annotated[Optional[int], typer.Option("--max-batch-size", help="Largest batch Triton may form. Default: an existing config's, else 64.",
                                                          show_default=False)] = None,
    max_queue_delay_us: Annotated[Optional[int], typer.Option("--max-queue-delay-us", help="Dynamic batcher's wait to fill a batch. Default: an existing "
                                                              "config's, else 100.", show_default=False)] = None,
    instance_count: Annotated[Optional[int], typer.Option("--instance-count", help="Model instances. Default: an existing config's, else 1.", show_default=False)] = None,
    kind: Annotated[Optional[str], typer.Option("--kind", help="cpu or gpu instances. Default: an existing config's, else cpu.", show_default=False)] = None,
    atol: Annotated[Optional[float], typer.Option("--atol", help="Largest absolute difference allowed between exported and eager float outputs. "
                                                  "Default: 1e-4 for fp32; integer outputs must be equal.", show_default=False)] = None,
    samples: Annotated[int, typer.Option("--samples", help="Real samples from the run's val split (else train split) for the parity check.")] = 64,
    manifest: Annotated[Optional[str], typer.Option("--manifest", help="Use these shards instead of the run's recorded ones (same content: same "
                                                    "manifest sha256).", show_default=False)] = None,
) -> int:
    """Export a training checkpoint to a Triton model repository (ONNX and/or TorchScript) with a parity check.

    The model is rebuilt from the checkpoint's recorded spec and compared with the exported file on
    real samples of the run's shards at batch sizes 1 and --samples. If any output differs by more
    than --atol, nothing is written (exit 1). Bad paths or settings exit 2. Prints the version
    directories written.
    """
    from raytron.cluster.cli._common import err, out
    from raytron.serving.export import export_checkpoint

    fields = {"name": name, "format": format, "repo": repo, "version": version, "max_batch_size": max_batch_size, "max_queue_delay_us": max_queue_delay_us,
              "instance_count": instance_count, "kind": kind, "atol": atol, "samples": samples}
    result = export_checkpoint(checkpoint, manifest=manifest, **fields)
    for model in result.models:
        parity = model.parity
        split = result.sample_source.get("split")
        sample_note = f"{parity.samples} `{split}` samples" if split else f"{parity.samples} samples"
        err.print(f"[green]exported[/] {model.name} version {model.version} ({model.platform}): {model.model_file}; config.pbtxt {model.config_status}")
        diffs = ", ".join(f"`{o.name}` max |diff| {o.max_abs_diff:.2g} (atol {o.atol:g})" for o in parity.outputs)
        err.print(f"  parity on {sample_note} at batch sizes {', '.join(map(str, parity.batch_sizes))}: {diffs}")
        out.print(str(model.path))
    return 0
