"""Downloading an hf_meta folder or a plain encoder from the Hub: safetensors and JSON only, errors kept clear."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

TOKENIZER_PATTERNS = ("tokenizer*", "vocab*", "special_tokens_map.json", "added_tokens.json", "*.model", "merges.txt")
# A plain encoder repo: its config and safetensors weights (single file or shards) at the top level; never a
# pickle (`pytorch_model.bin`), nor the ONNX / OpenVINO / sentence-transformers subfolders.
ENCODER_PATTERNS = ("config.json", "model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors")


def download(repo_id: str, allow_patterns: list[str], hub_kwargs: dict[str, Any]) -> Path | None:
    """`snapshot_download(repo_id, allow_patterns=...)`, or `None` when the Hub cannot be reached (offline, no
    connection, not in the cache), so the caller can try the locally embedded copies.

    Every other failure is raised with the repo named: an unknown or gated repo, a missing revision, a refused
    token (`OSError`), a keyword `snapshot_download` does not take (`TypeError`).
    """
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=list(allow_patterns), **hub_kwargs))
    except TypeError as err:
        raise TypeError(
            f"`from_pretrained` passes its extra keyword arguments {sorted(hub_kwargs)} to "
            f"`huggingface_hub.snapshot_download`, which refused them ({err}); use its names (`revision`, `token`, "
            "`cache_dir`, ...)."
        ) from None
    except HfHubHTTPError as err:  # 401 / 403 / 404 / gated / revision: the Hub answered, so say what it said
        raise OSError(
            f"Could not download {repo_id!r} from the Hub ({type(err).__name__}: {str(err).splitlines()[0]}). Check "
            "the repo id and `revision`; for a private or gated repo pass `token=` (or log in with `hf auth login`)."
        ) from err
    except HFValidationError as err:
        raise ValueError(f"{repo_id!r} is neither a local folder nor a valid Hub repo id ({err}).") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError, TimeoutError) as err:
        logger.info(f"Could not reach the Hub for {repo_id!r} ({type(err).__name__}); trying local copies.")
        return None
    except Exception as err:
        if type(err).__module__.split(".")[0] in ("httpx", "requests", "urllib3", "httpcore"):  # network errors
            logger.info(f"Could not reach the Hub for {repo_id!r} ({type(err).__name__}); trying local copies.")
            return None
        raise
