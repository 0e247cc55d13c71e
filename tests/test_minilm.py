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
