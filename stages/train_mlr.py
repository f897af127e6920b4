"""Stage train_mlr: fit the lab's MLR with Lightning (params: seed, train_mlr, trainer)."""

from mnistlab.stage import run_stage
from mnistlab.training import stage_main


def main(argv: list[str]) -> None:
    stage_main("mlr", argv)


if __name__ == "__main__":
    run_stage(main)
