"""The demo's `kind: python` job: a small computation that reports where it ran and writes a file."""

import json
import os
import platform
import socket
import time
from pathlib import Path


def main(greeting: str = "hello", n: int = 10, out_dir: str | None = None) -> dict:
    rank = int(os.environ.get("RAYTRON_RANK", "0"))
    print(f"{greeting} from rank {rank} on {socket.gethostname()} (Python {platform.python_version()}, pid {os.getpid()})", flush=True)
    started = time.perf_counter()
    total = sum(i * i for i in range(n))
    result = {"rank": rank, "n": n, "sum_of_squares": total, "seconds": round(time.perf_counter() - started, 6)}
    if out_dir:
        path = Path(out_dir).expanduser() / f"hello-rank{rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
        print(f"wrote {path}", flush=True)
    return result
