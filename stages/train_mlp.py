"""Stage train_mlp: fit the lab's MLP with Lightning (params: seed, train_mlp, trainer)."""

from mnistlab.stage import run_stage
from mnistlab.training import stage_main


def main(argv: list[str]) -> None:
    stage_main("mlp", argv)


if __name__ == "__main__":
    run_stage(main)
