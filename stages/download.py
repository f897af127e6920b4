"""Stage download: the four canonical MNIST files into data/MNIST/raw (params: download)."""

import argparse
from collections.abc import Sequence
from pathlib import Path

from mnistlab.params import DownloadParams, parse_section, read_params
from mnistlab.sources import fetch_mnist
from mnistlab.stage import run_stage


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("raw_dir", type=Path, help="where torchvision.datasets.MNIST(root) looks: ROOT/MNIST/raw")
    args = parser.parse_args(argv)
    params = parse_section(DownloadParams, read_params(), "download")
    source = fetch_mnist(params.sources, args.raw_dir, params.timeout_s)
    print(f"MNIST from source '{source}': four files checked (MD5) in {args.raw_dir}")


if __name__ == "__main__":
    run_stage(main)
