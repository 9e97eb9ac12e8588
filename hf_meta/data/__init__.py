"""Text-classification collections as uniform `datasets.DatasetDict`s (`text` and a `ClassLabel` `label`)."""

from .collections import (
    DATA_DIR_ENV_VAR,
    HUB_REPO_IDS,
    HUB_SOURCES,
    MULTI_LABEL_COLLECTIONS,
    list_collections,
    load_collection,
    resolve_data_dir,
)

__all__ = [
    "DATA_DIR_ENV_VAR",
    "HUB_REPO_IDS",
    "HUB_SOURCES",
    "MULTI_LABEL_COLLECTIONS",
    "list_collections",
    "load_collection",
    "resolve_data_dir",
]
