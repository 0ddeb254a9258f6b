"""Serving: export with a parity check, Triton model repositories and replicas, the gRPC gateway."""

__all__: list[str] = []
