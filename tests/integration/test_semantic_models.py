"""The models behind semantic equivalence, loaded for real: the packaged MiniLM, and an NLI model that is missing."""

import pytest

from raypipe.labels.semantic import greedy_clusters


def test_embedding_clusters_with_the_packaged_minilm():
    from raypipe.config import DEFAULT_EMBEDDING_MODEL
    from raypipe.labels.semantic_models import load_embedder

    embed = load_embedder(DEFAULT_EMBEDDING_MODEL)
    texts = ["The capital of France is Paris.", "Paris is the capital city of France.",
             "Bananas are rich in potassium."]
    vectors = embed(texts)
    assert vectors.shape == (3, 384)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > 0.8 > unrelated
    assert greedy_clusters(list(range(3)), lambda a, b: float(vectors[a] @ vectors[b]) >= 0.8) == [0, 0, 1]


def test_an_nli_model_that_does_not_load_raises(tmp_path):
    from raypipe.labels.semantic_models import load_nli

    with pytest.raises(OSError):
        load_nli(str(tmp_path / "missing-nli"))
