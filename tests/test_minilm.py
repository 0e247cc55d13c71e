import json
from pathlib import Path

import pytest
import torch

from course_lib.measure import count_parameters
from course_lib.minilm import MiniLM, embed, lee_correlation, load_minilm, tokenize

REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


def test_matches_sentence_transformers(minilm):
    """Embeddings computed by sentence-transformers (tests/data/make_minilm_reference.py) are reproduced."""
    ours = embed(minilm, REFERENCE["sentences"])
    reference = torch.tensor(REFERENCE["embeddings"])
    assert (ours - reference).abs().max().item() < 2e-6
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(ours)), atol=1e-6)


def test_parameter_count(minilm):
    # 22.7 M in the published checkpoint, less the 147,840 of the pooler that sentence embeddings do not use
    assert count_parameters(minilm) == 22_565_376


def test_padding_does_not_change_embeddings(minilm):
    sentences = ["short", "a noticeably longer sentence with many more tokens in it"]
    tight = tokenize(sentences)
    padded = tokenize(sentences, pad_to=64)
    assert padded["input_ids"].shape == (2, 64)
    with torch.inference_mode():
        a = minilm(**tight)
        b = minilm(**padded)
    assert torch.allclose(a, b, atol=1e-5)


def test_long_inputs_are_truncated_like_sentence_transformers():
    tokens = tokenize(["word " * 1000])
    assert tokens["input_ids"].shape == (1, 256)


def test_bad_inputs_get_clear_errors(minilm):
    with pytest.raises(TypeError, match="list of strings"):
        tokenize("not a list")
    with pytest.raises(ValueError, match="pad_to=300 is longer than max_length=256"):
        tokenize(["x"], pad_to=300)
    with pytest.raises(ValueError, match=r"both be \[batch, length\]"):
        minilm(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds the model's 512 positions"):
        minilm(torch.zeros(1, 600, dtype=torch.long), torch.ones(1, 600, dtype=torch.long))


def test_lee_correlation_of_the_pretrained_model(minilm):
    assert lee_correlation(minilm) == pytest.approx(0.6564, abs=0.002)


def test_an_untrained_encoder_scores_far_lower():
    torch.manual_seed(0)
    assert lee_correlation(MiniLM().eval()) < 0.5


def test_truncated_minilm_copies_the_chosen_layers():
    from course_lib.minilm import MiniLMConfig, truncated_minilm

    torch.manual_seed(0)
    teacher = MiniLM(MiniLMConfig(vocab_size=50, hidden=16, layers=4, heads=2, intermediate=32)).eval()
    student = truncated_minilm(teacher, [0, 3])
    assert student.cfg.layers == 2 and len(student.layers) == 2
    assert torch.equal(student.layers[1].ffn.output.weight, teacher.layers[3].ffn.output.weight)
    assert torch.equal(student.word_embeddings.weight, teacher.word_embeddings.weight)
    for bad in ([], [0, 0], [4]):
        with pytest.raises(ValueError, match="distinct layer indices"):
            truncated_minilm(teacher, bad)


def test_distill_embeddings_moves_the_student_towards_the_teacher():
    from course_lib.distill import distill_embeddings
    from course_lib.minilm import MiniLMConfig, truncated_minilm

    torch.manual_seed(0)
    teacher = MiniLM(MiniLMConfig(vocab_size=30522, hidden=32, layers=3, heads=2, intermediate=64)).eval()
    sentences = [f"sentence number {i} says something about topic {i % 7}." for i in range(64)]
    targets = embed(teacher, sentences)
    student = truncated_minilm(teacher, [0])
    before = torch.nn.functional.cosine_similarity(embed(student, sentences), targets).mean()
    table = student.word_embeddings.weight.clone()
    losses = distill_embeddings(student, targets, sentences, epochs=3, lr=1e-3, batch_size=16, progress=False)
    after = torch.nn.functional.cosine_similarity(embed(student, sentences), targets).mean()
    assert after > before and losses[-1] < losses[0]
    assert torch.equal(student.word_embeddings.weight, table), "the embedding tables stay frozen"
    with pytest.raises(ValueError, match="one teacher embedding per sentence"):
        distill_embeddings(student, targets[:3], sentences)


def test_wikipedia_sentences_split_by_article():
    from course_lib.data import load_wikipedia_sentences

    train, val, held_out = load_wikipedia_sentences()
    assert len(train) > 10_000 and len(val) > 500 and len(held_out) > 500
    assert not set(train) & set(held_out) and not set(val) & set(held_out)
    assert all(8 <= len(s.split()) <= 60 and s[-1] in ".!?" for s in held_out)
