"""Mixed precision for the encoder passes of `FewShotClassifier` (`fit`, `predict`, `embed` and a frozen copy).

The names are accelerate's (`mixed_precision="no" | "bf16" | "fp16"`, what `MetaTrainer` gets from the Trainer's
`bf16=True` / `fp16=True`). Only the encoder runs under `torch.autocast`: its matrix products in half precision,
while the pooled embeddings, the head fit, the logits and the probabilities stay float32, so a probability is
rounded once, at the encoder, not at every step after it.

bf16 pays where the hardware multiplies in it (a GPU, a CPU with AVX-512 BF16 or AMX units); elsewhere torch emulates
it and it is slower than float32. fp16 is for GPUs only.

Example:
    ```python
    >>> clf = FewShotClassifier.from_pretrained("out", mixed_precision="bf16")
    >>> clf.fit(texts, labels).freeze().predict(test_texts)      # every encoder pass autocast to bf16
    ```
"""

from __future__ import annotations

import contextlib
import platform
from typing import Literal

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .choices import check_choice

MixedPrecision = Literal["no", "bf16", "fp16"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_mixed_precision(
    value: str, device: torch.device | str | None = None, name: str = "mixed_precision"
) -> MixedPrecision:
    """`value` if it is one of `"no"`, `"bf16"`, `"fp16"` (and, given a `device`, one torch autocasts to there),
    else a clear error naming `name`."""
    check_choice(name, value, MixedPrecision)
    if value == "no" or device is None:
        return value
    device_type = torch.device(device).type
    if value == "fp16" and device_type == "cpu":
        raise ValueError(
            f"`{name}='fp16'` needs a GPU: on a CPU torch autocasts to bf16 only. Use `{name}='bf16'` (fast on CPUs "
            "with AVX-512 BF16 or AMX units) or `'no'`, or move the classifier to a GPU first (`clf.to('cuda')`)."
        )
    if not torch.amp.autocast_mode.is_autocast_available(device_type):
        raise ValueError(f"`{name}={value!r}`: torch has no autocast for device type {device_type!r}; use 'no'.")
    return value


def bf16_is_emulated(device: torch.device | str) -> bool:
    """Whether bf16 on `device` would run in torch's emulation: an x86 CPU without AVX-512 BF16 or AMX units
    (there it is slower than float32). Other devices and architectures are not judged (`False`)."""
    if torch.device(device).type != "cpu" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    probes = [probe for probe in probes if probe is not None]
    return bool(probes) and not any(probe() for probe in probes)


def encoder_autocast(mixed_precision: MixedPrecision, device: torch.device) -> contextlib.AbstractContextManager:
    """`torch.autocast` to the dtype of `mixed_precision` on `device`'s type, or a null context for `"no"`.

    On a CPU with gradients enabled it also selects the math backend of `scaled_dot_product_attention`, whose
    backward in bf16 is fast where the flash kernel's is not (attention of eager models is unaffected).

    Raises the error of [`check_mixed_precision`] where torch has no autocast for that device and dtype.
    """
    if mixed_precision == "no":
        return contextlib.nullcontext()
    check_mixed_precision(mixed_precision, device)
    return _autocast(torch.device(device).type, DTYPES[mixed_precision])


@contextlib.contextmanager
def _autocast(device_type: str, dtype: torch.dtype):
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast(device_type, dtype=dtype))
        if device_type == "cpu" and torch.is_grad_enabled():
            # The CPU flash-attention kernel's bf16 backward runs about ten times slower than its float32 one and
            # undoes what bf16 saves in the matmuls; the math backend's attention (matmuls and a softmax)
            # backpropagates at bf16 speed. Only passes that may be differentiated switch: the flash forward is the
            # faster one.
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        yield
