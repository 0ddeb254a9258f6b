"""Serving: export with a parity check, Triton model repositories and local replicas, the gRPC gateway.

Modules: `export` (checkpoints and modules to ONNX/TorchScript in a Triton repository), `parity`,
`modelconfig` (config.pbtxt), `triton` (local tritonserver replicas), `gateway` (Triton's gRPC
protocol in front of replicas), `serve` (`raytron serve`). Import what you need from them; this
package imports nothing heavy itself.
"""

__all__: list[str] = []
