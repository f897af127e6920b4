"""Run by tests/test_reproducibility.py in a fresh process: a short fit of each model named, at a given
thread count (one process for several models: each process costs seconds of imports).

Prints one JSON line: the thread count torch used, MKL's mode and, for each model, the SHA-256 of its
checkpoint's weights and of its history (in OUT_DIR/<model>/). Importing ``mnistlab`` first pins MKL's
arithmetic, as in a stage.
"""

import argparse
import hashlib
import json
from pathlib import Path

import torch

import mnistlab  # noqa: F401  (first: it sets MKL's mode before torch runs anything)
from mnistlab.machine import mkl_mode
from mnistlab.params import TrainerParams, TrainParams
from mnistlab.training import fit, save_checkpoint

TRAINER = TrainerParams(accelerator="cpu", devices=1, strategy="auto", num_nodes=1, precision="32-true")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("split_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--models", nargs="+", default=["mlp"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = TrainParams(epochs=2, learning_rate=0.01, batch_size=256, eval_batch_size=2000)
    digests = {}
    for model in args.models:
        out_dir = args.out_dir / model
        trainer, system = fit(model, params, TRAINER, 0, args.split_dir, out_dir)
        save_checkpoint(trainer, out_dir / "model.ckpt")
        weights = hashlib.sha256(b"".join(t.numpy().tobytes() for t in system.model.state_dict().values()))
        history = hashlib.sha256((out_dir / "metrics.csv").read_bytes())
        digests[model] = {"weights": weights.hexdigest(), "history": history.hexdigest()}
    print(json.dumps({"threads": torch.get_num_threads(), "mkl": mkl_mode(), "models": digests}))


if __name__ == "__main__":
    main()
