#!/usr/bin/env bash
# Serve .demo/model_repository with 2 Triton replicas behind the gateway on a free loopback port,
# call it with tritonclient, then stop it with Ctrl-C's signal (the server drains and exits).
set -euo pipefail
BIN=${BIN:-.venv/bin}
REPO=${1:-.demo/model_repository}
PORT=$("$BIN/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$BIN/raytron" serve "$REPO" --replicas 2 --port "$PORT" &
SERVER=$!
trap 'kill -INT $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
"$BIN/python" - "$PORT" <<'PY'
import sys, time
import tritonclient.grpc as grpcclient
client = grpcclient.InferenceServerClient(f"127.0.0.1:{sys.argv[1]}")
deadline = time.monotonic() + 120
while True:
    try:
        if client.is_server_ready():
            break
    except Exception:
        pass
    if time.monotonic() > deadline:
        sys.exit("the server did not become ready within 120 s")
    time.sleep(0.2)
PY
"$BIN/python" examples/infer_digits.py --url "127.0.0.1:$PORT" --model digits --shards .demo/digits
