"""`LearnedInnerLoop`: meta-learned inner-loop step sizes and logit scale, saved as `inner_loop.safetensors`."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .adaptation_config import AdaptationConfig
from .inner_loop import HEAD

INNER_LOOP_FILE = "inner_loop.safetensors"
# What `inner_loop.safetensors` may hold: the bounds `inner_learning_rate` and `logit_scale` have as settings.
MAX_LEARNED_RATE, MAX_LEARNED_LOGIT_SCALE = 1e3, 1e4


class LearnedInnerLoop(torch.nn.Module):
    """Meta-learned inner-loop step sizes, one per LoRA tensor and one for the head, and the logit scale.

    Meta-SGD (Li et al. 2017) / MAML++ LSLR (Antoniou et al. 2019) with first-order hypergradients: the
    parameters are logarithms (so the rates stay positive) that the Trainer's optimizer updates beside the LoRA
    weights. Saved as `inner_loop.safetensors` beside the adapter and used by `FewShotClassifier.fit`. With
    `inner_steps=0` (the fitted head alone) there is no step to size and only the logit scale would matter, so
    `learn_inner_learning_rates` needs `inner_steps >= 1`.

    Example:
        ```python
        >>> inner = LearnedInnerLoop(list(meta_weights), inner_learning_rate=0.05, logit_scale=20.0)
        >>> round(float(inner.learning_rates()[HEAD]), 4), round(inner.logit_scale(), 4)
        (0.05, 20.0)
        ```
    """

    def __init__(self, tensor_names: list[str], inner_learning_rate: float, logit_scale: float):
        super().__init__()
        self.names = [*tensor_names, HEAD]
        self.log_learning_rates = torch.nn.Parameter(torch.full((len(self.names),), math.log(inner_learning_rate)))
        self.log_logit_scale = torch.nn.Parameter(torch.tensor(math.log(logit_scale)))

    def learning_rates(self) -> dict[str, torch.Tensor]:
        """The current step size of each fast weight (detached: the inner loop never differentiates them)."""
        rates = self.log_learning_rates.detach().exp()
        return {name: rates[i] for i, name in enumerate(self.names)}

    def logit_scale(self) -> float:
        return float(self.log_logit_scale.detach().exp())

    def adaptation_config(self, config: AdaptationConfig) -> AdaptationConfig:
        """`config` with the learned logit scale (what is saved in `adaptation_config.json`)."""
        return dataclasses.replace(config, logit_scale=self.logit_scale())

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        save_file(
            {
                "log_learning_rates": self.log_learning_rates.detach().cpu().contiguous(),
                "log_logit_scale": self.log_logit_scale.detach().cpu().reshape(1),
            },
            os.path.join(save_directory, INNER_LOOP_FILE),
            metadata={"names": json.dumps(self.names)},
        )

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> LearnedInnerLoop:
        """Read `inner_loop.safetensors`; errors name the file and what is wrong with it."""
        path = os.path.join(directory, INNER_LOOP_FILE)
        try:
            with safe_open(path, framework="pt") as f:
                names = json.loads((f.metadata() or {})["names"])
                rates, scale = f.get_tensor("log_learning_rates"), f.get_tensor("log_logit_scale")
        except FileNotFoundError:
            raise FileNotFoundError(
                f"No {INNER_LOOP_FILE} in {directory!s}, but its `adaptation_config.json` sets "
                "`learn_inner_learning_rates`; copy the file saved with the adapter beside it, or set "
                '"learn_inner_learning_rates": false in that JSON to adapt with `inner_learning_rate`.'
            ) from None
        except Exception as err:  # a corrupt header, a missing key: safetensors raises several types
            raise ValueError(f"{path} is not an hf_meta inner-loop file ({type(err).__name__}: {err}).") from None
        if len(names) != len(rates) or not (torch.isfinite(rates).all() and torch.isfinite(scale).all()):
            raise ValueError(f"{path} holds {len(rates)} rates for {len(names)} names, or NaN/inf; save it again.")
        largest_rate = float(rates.max().exp()) if rates.numel() else 0.0
        if largest_rate >= MAX_LEARNED_RATE or float(scale.max().exp()) >= MAX_LEARNED_LOGIT_SCALE:
            raise ValueError(
                f"{path} holds a step size of {largest_rate:.3g} or a logit scale of {float(scale.max().exp()):.3g}, "
                f"beyond {MAX_LEARNED_RATE:g} / {MAX_LEARNED_LOGIT_SCALE:g} (the bounds of `inner_learning_rate` and "
                "`logit_scale`): every prediction would be the same. Restore the file saved with the adapter, or set "
                '"learn_inner_learning_rates": false in adaptation_config.json.'
            )
        inner = cls(names[:-1], 1.0, 1.0)
        with torch.no_grad():
            inner.log_learning_rates.copy_(rates)
            inner.log_logit_scale.copy_(scale.reshape(()))
        return inner

    def check_fits(self, tensor_names: list[str], where: str) -> None:
        """Refuse step sizes learned for other tensors than `tensor_names` (an adapter's LoRA tensors); `where`
        names the inner loop in the error (its file, or the argument)."""
        expected = [*tensor_names, HEAD]
        if self.names != expected:
            missing = sorted(set(expected) - set(self.names))[:2]
            raise ValueError(
                f"{where} has step sizes for {len(self.names)} tensors, but the adapter has {len(expected)} (e.g. no "
                f"rate for {missing}); it belongs to another adapter: save them together."
            )

    def summary(self) -> dict[str, float]:
        """Learned step sizes by tensor name (and `logit_scale`), rounded, for model cards and logs."""
        rates = {name: round(float(rate), 5) for name, rate in self.learning_rates().items()}
        return {**rates, "logit_scale": round(self.logit_scale(), 3)}
