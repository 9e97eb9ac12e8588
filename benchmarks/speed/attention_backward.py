"""bf16 on a CPU: the encoder's LoRA layers forward and backward, with each attention kernel `torch` can pick.

The top 3 layers of MiniLM with LoRA (the intent recipe's configuration) on batches of the sizes a meta-step and a
`predict` chunk run, in float32 and under bf16 autocast, with gradients (forward, then the LoRA weights' gradient)
and without (forward only), each with the flash-attention kernel `scaled_dot_product_attention` picks by default on
a CPU and with its math backend (matmuls and a softmax). The arms alternate within each round, so drift of a shared
machine falls on all of them; the table gives the median over rounds and each arm's ratio to float32 with the flash
kernel (the default before `hf_meta.precision.encoder_autocast` chose the math backend for bf16 passes with
gradients).

    HF_HUB_OFFLINE=1 python benchmarks/speed/attention_backward.py          # about 2 minutes on 2 CPU cores
    HF_HUB_OFFLINE=1 python benchmarks/speed/attention_backward.py --quick --output outputs/attention.json

Writes `benchmarks/speed/results/attention_backward.json`.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `_common`

import torch
from _common import machine, make_parser, parse, print_table
from peft import get_peft_model
from torch.nn.attention import SDPBackend, sdpa_kernel

from hf_meta.bench.scripts import load_encoder, lora_config, write_results

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = [("float32", "flash"), ("float32", "math"), ("bf16", "flash"), ("bf16", "math")]
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}


def one_pass(layers, hidden, mask, lora, grad: bool, dtype: str, backend: str) -> float:
    """Seconds of one forward (and, with `grad`, the LoRA weights' gradient) through `layers`."""
    start = time.perf_counter()
    with (
        sdpa_kernel(BACKENDS[backend]),
        torch.set_grad_enabled(grad),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"),
    ):
        x = hidden
        for layer in layers:
            out = layer(x, attention_mask=mask)
            x = out[0] if isinstance(out, tuple) else out
        loss = x.float().pow(2).mean()
    if grad:
        torch.autograd.grad(loss, lora)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = make_parser(__doc__, RESULTS / "attention_backward.json")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--shapes", nargs="+", default=["60x16", "240x16", "64x24"], help="rows x tokens")
    args = parse(parser, argv, quick={"rounds": 2, "shapes": ["60x16"]})
    torch.manual_seed(0)
    model, _ = load_encoder(args.model)
    model = get_peft_model(model.eval(), lora_config(model, 3))
    layers = list(model.get_base_model().encoder.layer)[-3:]
    lora = [p for p in model.parameters() if p.requires_grad]
    hidden_size = model.get_base_model().config.hidden_size
    rows = []
    for shape in args.shapes:
        batch, tokens = (int(n) for n in shape.split("x"))
        hidden = torch.randn(batch, tokens, hidden_size)
        mask = torch.zeros(batch, 1, 1, tokens)  # additive mask: every token attended
        for grad in (True, False):
            seconds = {arm: [] for arm in ARMS}
            for arm in ARMS:  # warm-up: the first call of each kernel pays its one-time set-up
                one_pass(layers, hidden, mask, lora, grad, *arm)
            for _ in range(args.rounds):
                for arm in ARMS:
                    seconds[arm].append(one_pass(layers, hidden, mask, lora, grad, *arm))
            reference = statistics.median(seconds[ARMS[0]])
            for (dtype, backend), times in seconds.items():
                median = statistics.median(times)
                rows.append(
                    {
                        "shape": shape,
                        "gradients": grad,
                        "dtype": dtype,
                        "attention": backend,
                        "ms": round(1000 * median, 1),
                        "speedup_vs_float32_flash": round(reference / median, 3),
                        "seconds": times,
                    }
                )
    columns = ["shape", "gradients", "dtype", "attention", "ms", "speedup_vs_float32_flash"]
    print_table(rows, columns, title=f"top 3 LoRA layers of {args.model}, median of {args.rounds} rounds")
    write_results(args.output, machine=machine(), model=args.model, rounds=args.rounds, rows=rows)


if __name__ == "__main__":
    main()
