"""Issue 14, saving: a save owns its folder's hf_meta files (items 2) and stages inside the target (item 10)."""

import errno
import os

import pytest

from hf_meta import io_utils
from hf_meta.io_utils import HF_META_FILES, MANIFEST_NAME, STAGING_MARKER, atomic_directory


def save(target, files, **kwargs):
    with atomic_directory(target, **kwargs) as staging:
        for name, content in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_text(content)


def test_a_save_removes_the_hf_meta_files_it_did_not_write(tmp_path):
    target = tmp_path / "out"
    save(
        target,
        {"adapter_model.safetensors": "fitted", "classifier_head.safetensors": "head", "classifier_labels.json": "[]"},
    )
    (target / "checkpoint-2").mkdir()
    (target / "checkpoint-2" / "optimizer.pt").write_text("user state")
    (target / "notes.txt").write_text("mine")
    save(target, {"adapter_model.safetensors": "unfitted"})
    assert sorted(p.name for p in target.iterdir()) == [
        "adapter_model.safetensors",
        "checkpoint-2",
        MANIFEST_NAME,
        "notes.txt",
    ]
    assert (target / "checkpoint-2" / "optimizer.pt").read_text() == "user state"


def test_owned_names_cover_the_classifier_and_trainer_files():
    assert {
        "classifier_head.safetensors",
        "classifier_labels.json",
        "adaptation_config.json",
        "adapter_config.json",
        "adapter_model.safetensors",
        "training_args.json",
    } <= set(HF_META_FILES)
    assert "README.md" not in HF_META_FILES  # a user's own card is never deleted (our savers overwrite it)


def test_owned_can_be_turned_off(tmp_path):
    target = tmp_path / "out"
    save(target, {"classifier_head.safetensors": "head"})
    save(target, {"adapter_model.safetensors": "x"}, owned=())
    assert (target / "classifier_head.safetensors").is_file()


def test_staging_lives_inside_the_target_so_a_mount_point_works(tmp_path, monkeypatch):
    """Simulate `target` being a mount: any rename from outside it into it fails with EXDEV, as across devices."""
    target = tmp_path / "mounted"
    target.mkdir()
    real_replace = os.replace

    def replace(src, dst):
        inside = [str(p).startswith(str(target) + os.sep) for p in (src, dst)]
        if inside[0] != inside[1]:
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(io_utils.os, "replace", replace)
    save(target, {"adapter_model.safetensors": "weights", "sub/file.txt": "x"})
    assert (target / "adapter_model.safetensors").read_text() == "weights"
    assert sorted(p.name for p in target.iterdir()) == ["adapter_model.safetensors", MANIFEST_NAME, "sub"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mounted"]


def test_an_interrupted_save_is_cleaned_up_by_the_next_one(tmp_path):
    target = tmp_path / "out"
    save(target, {"adapter_model.safetensors": "old"})
    left = target / ".staging-killed"  # what a killed hf_meta save leaves behind (with its marker)
    left.mkdir()
    (left / STAGING_MARKER).write_text("12345")
    (left / "adapter_model.safetensors").write_text("half")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "adapter_model.safetensors").write_text("half-written new")
        raise RuntimeError("crash mid-save")
    assert (target / "adapter_model.safetensors").read_text() == "old"
    save(target, {"adapter_model.safetensors": "new"})
    assert sorted(p.name for p in target.iterdir()) == ["adapter_model.safetensors", MANIFEST_NAME]
    assert (target / "adapter_model.safetensors").read_text() == "new"


def test_a_folder_replaces_a_folder(tmp_path):
    target = tmp_path / "out"
    save(target, {"sub/a.txt": "a"})
    save(target, {"sub/b.txt": "b"})
    assert sorted(p.name for p in (target / "sub").iterdir()) == ["b.txt"]
    assert not [p for p in target.iterdir() if p.name.startswith(".")]


# ---- Issue 27 item 5: one save at a time, a manifest written last, nothing deleted that hf_meta did not write ----


def test_a_concurrent_save_fails_clearly_and_the_live_one_completes(tmp_path):
    from hf_meta.io_utils import ConcurrentSaveError

    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        (staging / "adapter_model.safetensors").write_text("first")
        with pytest.raises(ConcurrentSaveError, match="Another save into"):
            save(target, {"adapter_model.safetensors": "second"})
        assert staging.is_dir()  # the live save's staging folder was not removed by the other save
    assert (target / "adapter_model.safetensors").read_text() == "first"
    save(target, {"adapter_model.safetensors": "third"})  # the lock was released
    assert (target / "adapter_model.safetensors").read_text() == "third"


def test_a_save_into_a_model_folder_keeps_the_files_hf_meta_did_not_write(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    theirs = ["vocab.txt", "special_tokens_map.json", "merges.txt", "training_args.bin", "tokenizer.json"]
    for name in theirs:
        (target / name).write_text("the model's own")
    (target / ".staging-mine").mkdir()  # a user's folder that happens to share the prefix
    (target / ".staging-mine" / "notes.txt").write_text("mine")
    save(target, {"adapter_model.safetensors": "x", "adaptation_config.json": "{}"})
    for name in theirs:
        assert (target / name).read_text() == "the model's own", name
    assert (target / ".staging-mine" / "notes.txt").read_text() == "mine"
    # What hf_meta wrote itself is still its to remove the next time.
    save(target, {"adapter_model.safetensors": "y", "tokenizer_config.json": "{}"})
    save(target, {"adapter_model.safetensors": "z"})
    assert not (target / "tokenizer_config.json").exists() and not (target / "adaptation_config.json").exists()
    assert (target / "vocab.txt").is_file()


def test_a_save_interrupted_between_two_moves_is_refused_at_load(tmp_path, monkeypatch):
    from hf_meta.io_utils import verify_saved_folder

    target = tmp_path / "out"
    save(target, {"adapter_model.safetensors": "old", "classifier_head.safetensors": "old head"})
    verify_saved_folder(target)
    real_replace = os.replace
    moves = []

    def interrupted(src, dst):
        if ".staging-" in str(src) and ".staging-" not in str(dst):
            moves.append(dst)
            if len(moves) == 2:
                raise KeyboardInterrupt  # Ctrl-C between the first and the second move
        return real_replace(src, dst)

    monkeypatch.setattr(io_utils.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save(target, {"adapter_model.safetensors": "new", "classifier_head.safetensors": "new head"})
    monkeypatch.setattr(io_utils.os, "replace", real_replace)
    with pytest.raises(ValueError, match="did not finish"):
        verify_saved_folder(target)


def test_files_of_two_saves_mixed_are_refused_at_load(tmp_path):
    from hf_meta.io_utils import verify_saved_folder

    a, b = tmp_path / "a", tmp_path / "b"
    save(a, {"adapter_model.safetensors": "adapter a", "classifier_head.safetensors": "head a"})
    save(b, {"adapter_model.safetensors": "adapter b", "classifier_head.safetensors": "head b"})
    (a / "classifier_head.safetensors").write_bytes((b / "classifier_head.safetensors").read_bytes())
    with pytest.raises(ValueError, match="mixes files of different saves"):
        verify_saved_folder(a)
    save(a, {"adapter_model.safetensors": "adapter a"})
    (a / "classifier_labels.json").write_text("[]")  # a head's labels that no save of this folder wrote
    with pytest.raises(ValueError, match="was not written by the save"):
        verify_saved_folder(a)
