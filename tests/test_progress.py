"""What the stages tell the user: a progress bar only in a terminal, and the data source used."""

import io
from pathlib import Path

import pytest
import yaml

from mnistlab import training
from mnistlab.params import TrainerParams, TrainParams
from stages import download

TRAINER = TrainerParams(accelerator="cpu", devices=1, strategy="auto", num_nodes=1, precision="32-true")
TINY = TrainParams(epochs=1, learning_rate=0.01, batch_size=16, eval_batch_size=32)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stderr", "ci", "expected"),
    [(Terminal, None, True), (Terminal, "true", False), (io.StringIO, None, False), (io.StringIO, "true", False)],
    ids=["terminal", "terminal-in-ci", "pipe", "pipe-in-ci"],
)
def test_progress_bar_only_in_a_terminal_outside_ci(monkeypatch, stderr, ci, expected) -> None:
    monkeypatch.setattr("sys.stderr", stderr())
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert training.show_progress() is expected
    trainer = training.build_trainer(TINY, TRAINER, None)
    assert (trainer.progress_bar_callback is not None) is expected


@pytest.mark.slow  # needs the real files (the mnist_raw fixture)
def test_download_says_which_source_it_used(mnist_raw: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    sources = [f"dir:{empty}", f"dir:{mnist_raw}"]  # the first cannot deliver, the second can
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"download": {"sources": sources, "timeout_s": 1}}))
    monkeypatch.chdir(tmp_path)
    download.main([str(tmp_path / "raw")])
    assert capsys.readouterr().out.strip() == (
        f"MNIST from source 'dir:{mnist_raw}': four files checked (MD5) in {tmp_path / 'raw'}"
    )
