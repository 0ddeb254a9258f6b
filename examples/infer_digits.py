"""Call a served digits model with tritonclient, exactly as one calls NVIDIA Triton.

    python examples/infer_digits.py --url 127.0.0.1:8001 --model digits --shards .demo/digits

Sends the validation split in batches of --batch-size and prints the accuracy, plus the model's
metadata as the server reports it.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import tritonclient.grpc as grpcclient

from raytron.datasets.reader import ReaderConfig, ShardLoader


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8001")
    parser.add_argument("--model", default="digits")
    parser.add_argument("--shards", default=".demo/digits")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--token", default=None, help="bearer token, if the server requires one")
    args = parser.parse_args()

    headers = {"authorization": f"Bearer {args.token}"} if args.token else None
    client = grpcclient.InferenceServerClient(args.url)
    if not client.is_model_ready(args.model, headers=headers):
        print(f"model {args.model} is not ready at {args.url}", file=sys.stderr)
        return 1
    meta = client.get_model_metadata(args.model, headers=headers)
    print(f"{meta.name}: inputs {[(i.name, i.datatype, list(i.shape)) for i in meta.inputs]}, outputs {[(o.name, o.datatype, list(o.shape)) for o in meta.outputs]}")
    correct = total = 0
    for batch in ShardLoader(ReaderConfig(manifest=args.shards, split="val", batch_size=args.batch_size, shuffle_buffer=0)):
        x = batch["x"].numpy().astype(np.float32)
        request = grpcclient.InferInput("x", list(x.shape), "FP32")
        request.set_data_from_numpy(x)
        result = client.infer(args.model, [request], outputs=[grpcclient.InferRequestedOutput("logits")], headers=headers)
        correct += int((result.as_numpy("logits").argmax(-1) == batch["y"].numpy()).sum())
        total += len(x)
    client.close()
    print(f"{total} validation samples through {args.url}: accuracy {correct / total:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
