"""Training on Ray: data-parallel (DDP) and DeepSpeed strategies, checkpoints, tuning and RL."""

__all__: list[str] = []
