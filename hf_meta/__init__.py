"""hf_meta: meta-learned LoRA initialisations for few-shot text classification."""

from .adaptation_config import AdaptationConfig
from .classifier import FewShotClassifier
from .data import load_collection
from .episode_collator import EpisodeCollator
from .episodes import EpisodeBuilder, EpisodeConfig, build_episodes, split_classes
from .meta_trainer import MetaTrainer
from .meta_training_args import MetaTrainingArguments
from .modeling import default_lora_config
from .multi_label_episodes import mix_episodes
from .self_training import SelfTrainingConfig
from .smlmt import build_smlmt_episodes

__version__ = "0.1.0"

__all__ = [
    "AdaptationConfig",
    "EpisodeBuilder",
    "EpisodeCollator",
    "EpisodeConfig",
    "FewShotClassifier",
    "MetaTrainer",
    "MetaTrainingArguments",
    "SelfTrainingConfig",
    "build_episodes",
    "build_smlmt_episodes",
    "default_lora_config",
    "load_collection",
    "mix_episodes",
    "split_classes",
]
