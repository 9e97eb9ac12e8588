"""Class names as weighted support examples (the inner loop, the collator, the frozen cache, `fit`), and the
shot-aware head prior."""

import pytest
import torch
from conftest import WORDS, tiny_encoder, tiny_trainer, top_layer_lora

from hf_meta import AdaptationConfig, EpisodeCollator, build_episodes
from hf_meta.adaptation import adapt, episode_meta_gradient
from hf_meta.episode_collator import episode_name_phrases
from hf_meta.frozen_states import FrozenStates
from hf_meta.inner_loop import HEAD, fit_head, weighted_cross_entropy
from hf_meta.modeling import FunctionalEncoder, meta_parameters

E = torch.nn.functional.normalize(torch.randn(12, 5, generator=torch.Generator().manual_seed(0)), dim=-1)
Y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
PRIOR = torch.nn.functional.normalize(torch.randn(3, 5, generator=torch.Generator().manual_seed(1)), dim=-1)


def fit(embeddings, labels, **kwargs):
    return fit_head(embeddings, labels, PRIOR, scale=10.0, l2=0.5, steps=200, **kwargs)


def test_weighted_cross_entropy_weight_two_equals_a_duplicate():
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 2, 1])
    weighted = weighted_cross_entropy(logits[:3], labels[:3], torch.tensor([1.0, 2.0, 1.0]))
    duplicated = torch.nn.functional.cross_entropy(logits[[0, 1, 1, 2]], labels[[0, 1, 1, 2]])
    torch.testing.assert_close(weighted, duplicated)
    summed = weighted_cross_entropy(logits[:3], labels[:3], torch.tensor([1.0, 2.0, 1.0]), reduction="sum")
    torch.testing.assert_close(summed, 4 * duplicated)


def test_sum_prior_fades_with_shots_and_mean_prior_does_not():
    few, many = (E[:6], Y[:6]), (torch.cat([E[:6]] * 4), torch.cat([Y[:6]] * 4))  # the same data, 4x the shots
    mean_few, mean_many = fit(*few, head_prior="mean"), fit(*many, head_prior="mean")
    torch.testing.assert_close(mean_few, mean_many, rtol=1e-4, atol=1e-5)  # the mean is blind to repetition
    sum_few, sum_many = fit(*few, head_prior="sum"), fit(*many, head_prior="sum")
    # 4x the shots under a fixed prior is the original shots under a 4x weaker pull, and lands further from it.
    weaker = fit_head(*few, PRIOR, scale=10.0, l2=0.5 / 4, steps=200, head_prior="sum")
    torch.testing.assert_close(sum_many, weaker, rtol=1e-4, atol=1e-5)
    assert (sum_many - PRIOR).norm() > (sum_few - PRIOR).norm() + 0.05


def test_fit_head_sample_weight_equals_duplicated_examples():
    weight = torch.ones(12)
    weight[0] = 3.0
    duplicated = (torch.cat([E, E[:1], E[:1]]), torch.cat([Y, Y[:1], Y[:1]]))
    for prior in ("mean", "sum"):
        torch.testing.assert_close(
            fit(E, Y, sample_weight=weight, head_prior=prior), fit(*duplicated, head_prior=prior), rtol=1e-4, atol=1e-5
        )


def test_fit_head_refuses_unknown_prior():
    with pytest.raises(ValueError, match="`head_prior`.*'median'"):
        fit(E, Y, head_prior="median")


@pytest.fixture(scope="module")
def encoder(tokenizer):
    return FunctionalEncoder(top_layer_lora(tiny_encoder("bert", vocab_size=tokenizer.vocab_size), [1]), chunk_size=4)


def tokenized(tokenizer, texts, labels=None):
    out = dict(tokenizer(texts, padding=True, return_tensors="pt"))
    out = {k: out[k] for k in ("input_ids", "attention_mask")}
    if labels is not None:
        out["labels"] = torch.tensor(labels)
    return out


def meta(encoder):
    return {n: p.detach().clone() for n, p in meta_parameters(encoder.model).items()}


def test_names_enter_head_fit_and_inner_steps_with_their_weight(encoder, tokenizer):
    support = tokenized(tokenizer, [f"{WORDS[c]} example" for c in range(3)], [0, 1, 2])
    names = tokenized(tokenizer, ["card", "exchange", "pin"])
    config = AdaptationConfig(inner_steps=2, inner_learning_rate=0.5, head_fit_steps=20)
    without, _ = adapt(encoder, meta(encoder), support, 3, config)
    with_names, losses = adapt(encoder, meta(encoder), support, 3, config, names)
    for name in with_names:  # the names move both the head and (through the same fast weights) the LoRA tensors
        assert not torch.allclose(with_names[name], without[name]), name
    zero_weight, _ = adapt(
        encoder, meta(encoder), support, 3, AdaptationConfig(**{**config.to_dict(), "label_name_weight": 0.0}), names
    )
    off, _ = adapt(
        encoder, meta(encoder), support, 3, AdaptationConfig(**{**config.to_dict(), "use_label_names": False}), names
    )
    for name in without:
        torch.testing.assert_close(zero_weight[name], without[name])
        torch.testing.assert_close(off[name], without[name])
    with pytest.raises(ValueError, match="`names` has 2 rows but the task has 3 classes"):
        adapt(encoder, meta(encoder), support, 3, config, tokenized(tokenizer, ["card", "pin"]))


def test_names_do_not_enter_the_prototypes(encoder, tokenizer):
    support = tokenized(tokenizer, [f"{WORDS[c]} example" for c in range(3)], [0, 1, 2])
    names = tokenized(tokenizer, ["card", "exchange", "pin"])
    config = AdaptationConfig(inner_steps=0, head_fit_steps=0, head_init="prototypes", head_bias=False)  # prototypes
    a, _ = adapt(encoder, meta(encoder), support, 3, config)
    b, _ = adapt(encoder, meta(encoder), support, 3, config, names)
    torch.testing.assert_close(a[HEAD], b[HEAD])


def test_collator_adds_name_rows_and_skips_codes(tokenizer, toy_dataset):
    (episode,) = build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=1, num_episodes=1, seed=0)
    batch = EpisodeCollator(tokenizer, AdaptationConfig(max_length=16))([episode])
    assert batch["names_input_ids"].shape[0] == 3
    expected = tokenizer(episode_name_phrases(episode["class_names"]), padding=True)["input_ids"]
    assert batch["names_input_ids"].tolist() == expected
    assert "names_input_ids" not in EpisodeCollator(tokenizer, AdaptationConfig(use_label_names=False))([episode])
    coded = {**episode, "class_names": ["0", "1", "2"]}
    assert "names_input_ids" not in EpisodeCollator(tokenizer, AdaptationConfig(max_length=16))([coded])


def test_names_with_frozen_states_match_the_plain_path(encoder, tokenizer, toy_dataset, tmp_path):
    episodes = build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=2, num_episodes=2, seed=1)
    texts = [t for column in ("support_text", "query_text") for episode in episodes[column] for t in episode]
    # A prototype-centred head, as in test_frozen_states: the cache, not the head's conditioning, is under test.
    config = AdaptationConfig(max_length=16, inner_steps=2, head_init="prototypes", head_bias=False)
    weights = {n: p.detach().clone().requires_grad_() for n, p in meta_parameters(encoder.model).items()}
    # Without the phrases in the cache the collator tokenises them; with them it reads their states.
    for extra in ([], [p for names in episodes["class_names"] for p in episode_name_phrases(names)]):
        states = FrozenStates.build(
            encoder, tokenizer, texts + extra, max_length=16, cache_dir=tmp_path / str(len(extra))
        )
        for episode in episodes:
            plain = EpisodeCollator(tokenizer, config)([episode])
            cached = EpisodeCollator(tokenizer, config, frozen_states=states)([episode])
            assert ("names_frozen_row_states" in cached) == bool(extra)
            for algorithm in ("fomaml", "reptile"):
                a = episode_meta_gradient(encoder, dict(weights), plain, config, algorithm)
                b = episode_meta_gradient(encoder, dict(weights), cached, config, algorithm)
                for name in a.meta_gradient:
                    torch.testing.assert_close(b.meta_gradient[name], a.meta_gradient[name], rtol=1e-4, atol=1e-6)
            no_names = episode_meta_gradient(
                encoder, dict(weights), {k: v for k, v in plain.items() if not k.startswith("names_")}, config
            )
            assert any(not torch.allclose(no_names.meta_gradient[n], a.meta_gradient[n]) for n in a.meta_gradient)


@pytest.fixture(scope="module")
def classifier(tokenizer):
    from hf_meta import FewShotClassifier
    from hf_meta.modeling import with_lora

    model = with_lora(tiny_encoder("bert", vocab_size=tokenizer.vocab_size), None)
    return FewShotClassifier(model, tokenizer, AdaptationConfig(inner_steps=1, inner_learning_rate=0.5))


TEXTS = [f"{WORDS[c]} example {i}" for c in range(3) for i in range(2)]
NAMES = ["card_arrival", "exchange_rate", "pin_blocked"]
LABELS = [NAMES[c] for c in range(3) for _ in range(2)]


def head_of(clf, *args, **kwargs):
    return clf.fit(*args, **kwargs).weights[HEAD].clone()


def test_fit_uses_string_label_names_and_descriptions(classifier):
    with_names = head_of(classifier, TEXTS, LABELS)
    without = head_of(classifier, TEXTS, LABELS, use_label_names=False)
    assert not torch.allclose(with_names, without)
    # A description equal to the name's phrase changes nothing; another text does.
    same = head_of(classifier, TEXTS, LABELS, label_descriptions={"card_arrival": "card arrival"})
    torch.testing.assert_close(same, with_names)
    other = head_of(classifier, TEXTS, LABELS, label_descriptions={"card_arrival": "where is my new card"})
    assert not torch.allclose(other, with_names)


def test_fit_skips_names_for_int_and_code_labels(classifier):
    ints = [c for c in range(3) for _ in range(2)]
    torch.testing.assert_close(
        head_of(classifier, TEXTS, ints), head_of(classifier, TEXTS, ints, use_label_names=False)
    )
    codes = [str(c) for c in ints]
    torch.testing.assert_close(
        head_of(classifier, TEXTS, codes), head_of(classifier, TEXTS, codes, use_label_names=False)
    )
    # Int labels with every class described do use the descriptions.
    described = head_of(classifier, TEXTS, ints, label_descriptions={0: "card", 1: "exchange", 2: "pin"})
    assert not torch.allclose(described, head_of(classifier, TEXTS, ints))


@pytest.mark.parametrize(
    "descriptions, error, message",
    [
        ({"card_arival": "card"}, ValueError, r"`label_descriptions` names the label 'card_arival'"),
        ({"card_arrival": 3}, ValueError, r"`label_descriptions\['card_arrival'\]` must be a non-empty string, got 3"),
        ({"card_arrival": "  "}, ValueError, r"non-empty string"),
        (["card"], TypeError, r"`label_descriptions` must be a dict"),
    ],
)
def test_fit_refuses_bad_label_descriptions(classifier, descriptions, error, message):
    with pytest.raises(error, match=message):
        classifier.fit(TEXTS, LABELS, label_descriptions=descriptions, use_label_names=False)


def test_a_saved_config_without_a_setting_takes_its_default(tmp_path):
    import json

    AdaptationConfig(head_prior="mean", head_bias=False).save_pretrained(tmp_path)
    path = tmp_path / "adaptation_config.json"
    saved = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("head_prior", "head_bias")}
    path.write_text(json.dumps({**saved, "head_l2": 0.03}))
    loaded = AdaptationConfig.from_pretrained(tmp_path)
    assert (loaded.head_prior, loaded.head_bias, loaded.head_l2) == ("sum", True, 0.03)


def test_meta_trainer_caches_the_name_phrases_with_the_sentences(tmp_path, toy_dataset, tokenizer):

    episodes = build_episodes(toy_dataset, n_way=3, k_shot=2, num_query=1, num_episodes=2, seed=0)
    model = top_layer_lora(tiny_encoder("bert", vocab_size=tokenizer.vocab_size), [1])
    trainer = tiny_trainer(tmp_path, tokenizer, episodes, model=model, max_length=16)
    collator = trainer.data_collator
    assert collator.use_label_names and collator.frozen_states is not None
    for names in episodes["class_names"]:
        assert collator.frozen_states.covers(episode_name_phrases(names))
    batch = collator([episodes[0]])
    assert "names_frozen_row_states" in batch and len(batch["names_input_ids"]) == 3


def test_a_zero_head_that_is_never_fitted_is_refused():
    with pytest.raises(ValueError, match="leaves the head at zero"):
        AdaptationConfig(head_init="zero", head_fit_steps=0, inner_steps=0)
    AdaptationConfig(head_init="zero", head_fit_steps=0, inner_steps=3)  # SGD trains it: a zero-initialised MAML head
    AdaptationConfig(head_init="prototypes", head_fit_steps=0, inner_steps=0)  # the prototype head as it is
