"""Run by tests/test_reproducibility.py in a fresh process: one short fit at a given thread count.

Prints one JSON line: the SHA-256 of the checkpoint's weights and of the history, the thread
count torch used and MKL's mode. Importing ``mnistlab`` first pins MKL's arithmetic, as in a stage.
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
    parser.add_argument("--model", default="mlp")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = TrainParams(epochs=2, learning_rate=0.01, batch_size=256, eval_batch_size=2000)
    trainer, system = fit(args.model, params, TRAINER, 0, args.split_dir, args.out_dir)
    save_checkpoint(trainer, args.out_dir / "model.ckpt")
    weights = hashlib.sha256(b"".join(t.numpy().tobytes() for t in system.model.state_dict().values()))
    history = hashlib.sha256((args.out_dir / "metrics.csv").read_bytes())
    print(
        json.dumps(
            {
                "weights": weights.hexdigest(),
                "history": history.hexdigest(),
                "threads": torch.get_num_threads(),
                "mkl": mkl_mode(),
            }
        )
    )


if __name__ == "__main__":
    main()
