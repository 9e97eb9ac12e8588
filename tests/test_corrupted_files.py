"""Issue 27 item 14: a damaged checkpoint or saved file is an error naming the file, what is wrong and the fix."""

import re
import shutil

import pytest
from conftest import WORDS, tiny_encoder, tiny_trainer

from hf_meta import FewShotClassifier, build_episodes
from hf_meta.checkpoint_checks import check_checkpoint

DAMAGES = {
    "garbage": lambda data: b"\x00not the file{" * 10,
    "truncated": lambda data: data[: len(data) // 2],
    "flipped_byte": lambda data: (
        data[: len(data) // 3] + bytes([data[len(data) // 3] ^ 0xFF]) + data[len(data) // 3 + 1 :]
    ),
}


def damage(path, how: str) -> None:
    path.write_bytes(DAMAGES[how](path.read_bytes()))


@pytest.fixture(scope="module")
def run_with_checkpoints(tmp_path_factory, toy_dataset, tokenizer):
    """A finished 2-step run (learned step sizes, so the inner-loop file is saved too) with checkpoints 1 and 2."""
    root = tmp_path_factory.mktemp("checkpoints")
    episodes = build_episodes(toy_dataset, n_way=3, k_shot=1, num_query=2, num_episodes=4, seed=0)

    def make(output_dir, max_steps):
        return tiny_trainer(
            output_dir, tokenizer, episodes, max_steps=max_steps, gradient_accumulation_steps=1, inner_steps=1,
            save_strategy="steps", save_steps=1, base_model="org/tiny", learn_inner_learning_rates=True,
        )  # fmt: skip

    make(root / "out", 2).train()
    return root / "out", make


# The files a resume reads, and the damages each must be refused for (a flipped byte in a JSON file may still be
# valid JSON, and the hf_meta files carry digests in the manifest, so every damage of them is caught).
RESUMED_FILES = {
    "optimizer.pt": ["garbage", "truncated", "flipped_byte"],
    "scheduler.pt": ["garbage", "truncated"],
    "rng_state.pth": ["garbage", "truncated", "flipped_byte"],
    "trainer_state.json": ["garbage", "truncated"],
    "adapter_model.safetensors": ["garbage", "truncated", "flipped_byte"],
    "inner_loop.safetensors": ["garbage", "truncated"],
}


@pytest.mark.parametrize(
    ("name", "how"), [(name, how) for name, hows in RESUMED_FILES.items() for how in hows], ids=lambda v: str(v)
)
def test_resuming_from_a_damaged_checkpoint_file_names_it_and_the_fix(name, how, run_with_checkpoints, tmp_path):
    out, make = run_with_checkpoints
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    assert (copy / "checkpoint-2" / name).is_file()
    damage(copy / "checkpoint-2" / name, how)
    trainer = make(copy, 3)
    with pytest.raises(ValueError) as caught:
        trainer.train(resume_from_checkpoint=str(copy / "checkpoint-2"))
    message = str(caught.value)
    assert message.startswith(f"{copy / 'checkpoint-2' / name} is damaged")
    assert f"resume_from_checkpoint={str(copy / 'checkpoint-1')!r}" in message  # the fix: the checkpoint before
    assert "Do not load it with `weights_only=False`" in message
    assert trainer.state.global_step == 0  # refused before anything was loaded


def test_resume_true_names_the_damaged_file_of_the_newest_checkpoint(run_with_checkpoints, tmp_path):
    out, make = run_with_checkpoints
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    damage(copy / "checkpoint-2" / "optimizer.pt", "truncated")
    with pytest.raises(ValueError, match=re.escape(f"{copy / 'checkpoint-2' / 'optimizer.pt'} is damaged")):
        make(copy, 3).train(resume_from_checkpoint=True)
    shutil.rmtree(copy / "checkpoint-2")  # the fix the message gives
    resumed = make(copy, 3)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3


def test_the_only_checkpoint_damaged_says_to_train_from_the_start(run_with_checkpoints, tmp_path):
    out, _ = run_with_checkpoints
    shutil.copytree(out / "checkpoint-1", tmp_path / "checkpoint-1")
    damage(tmp_path / "checkpoint-1" / "scheduler.pt", "garbage")
    with pytest.raises(ValueError, match="it is the only checkpoint"):
        check_checkpoint(tmp_path / "checkpoint-1")


def test_an_intact_checkpoint_passes(run_with_checkpoints):
    out, _ = run_with_checkpoints
    check_checkpoint(out / "checkpoint-1")
    check_checkpoint(out / "checkpoint-2")


@pytest.fixture(scope="module")
def saved_classifier(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("saved")
    base = root / "base"
    tiny_encoder().save_pretrained(base)
    tokenizer.save_pretrained(base)
    clf = FewShotClassifier.from_pretrained(base, base_model="org/tiny")
    clf.fit([f"{WORDS[i % 2]} example {i}" for i in range(6)], [WORDS[i % 2].split()[0] for i in range(6)])
    clf.save_pretrained(root / "classifier")
    return base, root / "classifier"


@pytest.mark.parametrize(
    "name",
    [
        "adaptation_config.json",
        "adapter_config.json",
        "adapter_model.safetensors",
        "classifier_head.safetensors",
        "classifier_labels.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ],
)
@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_loading_a_damaged_classifier_file_names_it_and_the_fix(name, how, saved_classifier, tmp_path):
    base, folder = saved_classifier
    copy = tmp_path / "classifier"
    shutil.copytree(folder, copy)
    damage(copy / name, how)
    with pytest.raises(ValueError) as caught:
        FewShotClassifier.from_pretrained(copy, base_model=str(base))
    message = str(caught.value)
    assert str(copy / name) in message
    assert re.search(r"re-download|save (the|it) again|save_pretrained|fit and save", message), message
