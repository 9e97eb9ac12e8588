"""How far a LoRA adapter moves the encoder's weights from the pretrained ones, as a differentiable quantity.

`relative_lora_delta(model)` is the mean over the adapted linear layers of `||scaling * B @ A||^2 / ||W||^2`: the
squared size of each layer's LoRA update relative to its pretrained weight, so layers of any width count alike and
the value reads the same for any backbone. `MetaTrainer` logs it (`lora_delta`) and, with
`MetaTrainingArguments(lora_delta_penalty=...)`, adds it times that weight to the meta-loss: a lever that keeps a
broadly meta-trained adapter near the pretrained geometry (off by default).

Example:
    ```python
    >>> from hf_meta.lora_delta import relative_lora_delta
    >>> relative_lora_delta(peft_model)          # 0 for a fresh adapter (peft initialises B to zero)
    tensor(0.)
    ```
"""

from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer


def relative_lora_delta(model: torch.nn.Module) -> torch.Tensor:
    """Mean over LoRA layers of `||scaling * B @ A||_F^2 / ||W||_F^2` for the active adapter; differentiable in
    `A` and `B`. Raises `ValueError` if `model` holds no LoRA layer."""
    terms = []
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        for name in module.active_adapters:
            if name not in module.lora_A:
                continue
            a, b = module.lora_A[name].weight, module.lora_B[name].weight
            delta = module.scaling[name] * (b @ a)
            base = module.get_base_layer().weight.detach()
            terms.append(delta.float().pow(2).sum() / base.float().pow(2).sum().clamp_min(1e-12))
    if not terms:
        raise ValueError(
            f"`model` ({type(model).__name__}) holds no LoRA layer; wrap it with `peft.get_peft_model(model, "
            "LoraConfig(...))`, as `MetaTrainer` does."
        )
    return torch.stack(terms).mean()
