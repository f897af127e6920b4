"""bench/isa.py (and its isa_*.py): its letters and parsing, and that what --quick reports as identical really is."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.isa import run_worker
from bench.isa_ops import digest
from bench.isa_report import compare_reports, digest_table, letters, verbose_libraries
from bench.isa_settings import SETTINGS
from mnistlab.data import Split, save_split
from mnistlab.workspace import ROOT, venv_env

MKL_LINE = (
    "MKL_VERBOSE SGEMM(T,N,256,256,784,0x7ff,0x55b,784,0x55b,784,0x7ff,0x55b,256) 1.06ms "
    "CNR:AUTO,STRICT Dyn:1 FastMM:1 TID:0  NThr:2"
)


def test_letters_name_equal_values_alike_in_order_of_first_appearance() -> None:
    assert letters(["x", "y", "x", "z"]) == ["A", "B", "A", "C"]


def test_digest_sees_one_flipped_bit() -> None:
    values = torch.linspace(0, 1, 100)
    flipped = values.clone()
    flipped.view(torch.int32)[7] ^= 1
    assert digest(values) == digest(values.clone()) != digest(flipped)


def test_table_gives_a_cell_per_setting_and_a_letter_per_thread_count() -> None:
    def report(op: str, epoch: str) -> dict:
        return {"ops": {"mm": op}, "epoch": epoch}

    runs = {"a": {1: report("p", "e"), 2: report("q", "e")}, "b": {2: report("p", "f")}}
    assert digest_table(runs) == {"mm": ["AB", "A"], "one epoch (trained weights)": ["AA", "B"]}


def test_compare_names_the_differing_rows_and_skips_epochs_of_other_lengths() -> None:
    def report(steps: int, mm: str, epoch: str) -> dict:
        return {"steps": steps, "digests": {"default": {"2": {"mm": mm, "one epoch (trained weights)": epoch}}}}

    assert compare_reports(report(188, "p", "e"), report(188, "q", "e")) == {"default @2T": ["mm"]}
    assert compare_reports(report(188, "p", "e"), report(40, "p", "f")) == {"default @2T": []}


def test_verbose_lines_name_the_routine_the_cnr_mode_and_threads() -> None:
    verbose = f"{MKL_LINE}\n{MKL_LINE}\nonednn_verbose,v1,primitive,exec,cpu,inner_product,x\nother"
    parsed = verbose_libraries(verbose)
    assert parsed["mkl_calls"] == {"SGEMM": 2}
    assert parsed["mkl_call_shapes"] == ["SGEMM(T,N,256,256,784)"] * 2
    assert parsed["mkl_cnr"] == ["AUTO,STRICT"] and parsed["mkl_threads"] == [2]
    assert parsed["onednn_runs"] == 1


@pytest.mark.slow
def test_quick_report_holds_and_identical_means_identical_in_a_fresh_process(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (600, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (600,), generator=generator)
    train = tmp_path / "train"
    save_split(Split(images, labels, torch.arange(600)), train)
    report_path = tmp_path / "isa.json"
    command = [sys.executable, "-m", "bench.isa", "--quick", "--train", str(train), "--json", str(report_path)]
    done = subprocess.run(command, cwd=ROOT, env=venv_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())

    summary, digests = report["summary"], report["digests"]
    assert set(summary) == set(digests) == {"default", "cbwr=AVX2,STRICT"}
    assert all(len(cells) == 2 for cells in report["table"].values())
    assert "MLP forward, eval, x600" in report["table"]
    # MKL runs what it was asked for: CNR off by default, a strict mode (AVX2 on Intel, AUTO elsewhere)
    # under the project's setting, though importing mnistlab pins MKL_CBWR in every process.
    assert summary["default"]["mkl_cbwr"] == "OFF"
    assert summary["cbwr=AVX2,STRICT"]["mkl_cbwr"] in ("AVX2,STRICT", "AUTO,STRICT")
    # Strict mode: every op and the training give the same bits at 1 and 2 threads ...
    strict = digests["cbwr=AVX2,STRICT"]
    assert summary["cbwr=AVX2,STRICT"]["varies_with_threads"] == []
    assert strict["1"] == strict["2"]
    # ... and again in another fresh process.
    again, _ = run_worker(train, SETTINGS["cbwr=AVX2,STRICT"][0], threads=2, steps=report["steps"])
    assert {**again["ops"], "one epoch (trained weights)": again["epoch"]} == strict["2"]
