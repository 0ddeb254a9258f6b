"""What a training rank reports it is doing, shared by the loop (torch) and the driver (no torch)."""

#: Phases in which a rank waits in (or is about to enter) a collective with its peers.
COLLECTIVE_PHASES = frozenset({"joining", "backward", "checkpoint", "log", "evaluate"})
