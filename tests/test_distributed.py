"""Two processes under `accelerate launch` (CPU, gloo) meta-train like one process with the same meta-batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("distributed_meta_training.py")


def launch(tmp_path: Path, tokenizer_path: str, processes: int, accumulation: int) -> Path:
    out = tmp_path / f"p{processes}"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    if processes > 1:
        launcher += ["--multi_gpu", "--num_processes", str(processes), "--main_process_port", "29512"]
    else:
        launcher += ["--num_processes", "1", "--cpu"]
    cmd = [
        *launcher,
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(SCRIPT),
        str(out),
        tokenizer_path,
        str(accumulation),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.mark.distributed
def test_two_processes_match_one_process_with_same_meta_batch(tmp_path, minilm_path):
    two = launch(tmp_path, minilm_path, processes=2, accumulation=2)
    one = launch(tmp_path, minilm_path, processes=1, accumulation=4)
    rank0, rank1 = (load_file(two / f"lora_rank{r}_of2.safetensors") for r in (0, 1))
    single = load_file(one / "lora_rank0_of1.safetensors")
    assert rank0.keys() == rank1.keys() == single.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name  # every process ends with identical meta-parameters
        # SGD steps of lr 10: a different meta-batch (half the episodes) moves the weights by ~3e-2, the order of
        # float additions in the all-reduce by ~1e-5.
        torch.testing.assert_close(rank0[name], single[name], rtol=1e-4, atol=1e-5)
    b_sizes = [rank0[name].abs().max() for name in rank0 if "lora_B" in name]
    assert all(size > 0 for size in b_sizes) and max(b_sizes) > 1e-2  # every B left zero: it trained
