"""Functions the tests run as `kind: python` jobs on a real local Ray head."""

import os
import time
from pathlib import Path


def write_file(path: str, text: str) -> dict:
    Path(path).write_text(text)
    print(f"wrote {path}", flush=True)
    return {"path": path, "bytes": len(text)}


def fail(message: str) -> None:
    raise ValueError(f"job failed on purpose: {message}")


def sleep_forever(pid_file: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))
    print("sleeping", flush=True)
    while True:
        time.sleep(0.5)


def rank_info() -> dict:
    return {"rank": int(os.environ["RAYTRON_RANK"]), "world_size": int(os.environ["RAYTRON_WORLD_SIZE"]), "pid": os.getpid()}
