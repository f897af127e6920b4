"""Stage train_mlp: fit the lab's MLP with Lightning (params: seed, train_mlp, trainer)."""

from mnistlab.stage import check_params_first, run_stage

if __name__ == "__main__":
    check_params_first("train_mlp")  # before torch and Lightning load: a typo costs a second, not ten

from mnistlab.training import stage_main


def main(argv: list[str]) -> None:
    stage_main("mlp", argv)


if __name__ == "__main__":
    run_stage(main)
