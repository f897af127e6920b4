"""Stage train_mlr: fit the lab's MLR with Lightning (params: seed, train_mlr, trainer)."""

from mnistlab.stage import check_params_first, run_stage

if __name__ == "__main__":
    check_params_first("train_mlr")  # before torch and Lightning load: a typo costs a second, not ten

from mnistlab.training import stage_main


def main(argv: list[str]) -> None:
    stage_main("mlr", argv)


if __name__ == "__main__":
    run_stage(main)
