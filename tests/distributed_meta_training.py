"""Run by tests/test_distributed.py under `accelerate launch`: meta-train a tiny encoder, save each rank's LoRA."""

import os
import sys
from pathlib import Path

import datasets
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer

from hf_meta import MetaTrainer, MetaTrainingArguments, build_episodes
from hf_meta.modeling import meta_parameters

sys.path.insert(0, str(Path(__file__).parent))
from conftest import WORDS, tiny_encoder  # noqa: E402


def main(output: str, tokenizer_path: str, accumulation: int) -> None:
    texts = [f"{WORDS[i % 6]} number {i}" for i in range(120)]
    toy = datasets.Dataset.from_dict({"text": texts, "label": [i % 6 for i in range(120)]})
    episodes = build_episodes(toy, n_way=3, k_shot=2, num_query=2, num_episodes=16, seed=0)
    args = MetaTrainingArguments(
        output_dir=output,
        max_steps=3,
        gradient_accumulation_steps=accumulation,
        inner_steps=2,
        # Plain SGD: Adam's first steps are lr x sign(gradient), so an element whose gradient is ~0 turns the
        # order of float additions in the all-reduce into a full step; SGD moves a weight as its gradient does.
        optim="sgd",
        learning_rate=10.0,
        report_to="none",
        disable_tqdm=True,
        seed=0,
        save_strategy="no",
    )
    trainer = MetaTrainer(
        model=tiny_encoder("bert"),
        args=args,
        train_dataset=episodes,
        processing_class=AutoTokenizer.from_pretrained(tokenizer_path),
    )
    trainer.train()
    rank = trainer.accelerator.process_index
    weights = {name: p.detach().contiguous() for name, p in meta_parameters(trainer.model).items()}
    save_file(weights, os.path.join(output, f"lora_rank{rank}_of{trainer.accelerator.num_processes}.safetensors"))
    torch.save({"episodes_seen": trainer.state.global_step}, os.path.join(output, f"state_rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
