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


def _nli_checkpoint(folder, id2label):
    """A random-weight DeBERTa-v2 sequence classifier (the architecture of the SEP seed's deberta-v3-small MNLI) with
    the packaged MiniLM's tokenizer: enough to run the NLI path end to end without the hub."""
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2ForSequenceClassification

    from raypipe.config import DEFAULT_EMBEDDING_MODEL
    from raypipe.labels.semantic_models import embedding_model_path

    tokenizer = AutoTokenizer.from_pretrained(embedding_model_path(DEFAULT_EMBEDDING_MODEL))
    config = DebertaV2Config(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                             relative_attention=True, pos_att_type=["p2c", "c2p"], type_vocab_size=0,
                             id2label=id2label, label2id={v: k for k, v in id2label.items()})
    DebertaV2ForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_nli_clusters_by_bidirectional_entailment_with_a_real_nli_architecture(tmp_path):
    """Labels come from id2label (entailment is class 2 here, not MNLI's 0), every ordered pair is classified in
    batches on the CPU, and two samples share a cluster only when each entails the other: checked against the
    same model run pair by pair."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from raypipe.config import DEFAULT_NLI_MODEL, LabelConfig
    from raypipe.labels.semantic import make_clusterer
    from raypipe.labels.semantic_models import load_nli

    assert LabelConfig(semantic_method="nli").nli_model == DEFAULT_NLI_MODEL  # a default, as in the seed
    path = _nli_checkpoint(tmp_path / "nli", {0: "contradiction", 1: "neutral", 2: "entailment"})
    texts = ["Paris.", "It is Paris.", "The answer is Lyon.", "I think it is Paris, France.", "No idea."]
    entails = load_nli(path, batch_pairs=3)  # 20 ordered pairs: 7 batches, the last one short
    matrix = entails(texts)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForSequenceClassification.from_pretrained(path)
    for i, premise in enumerate(texts):
        for j, hypothesis in enumerate(texts):
            if i != j:
                with torch.inference_mode():
                    single = int(model(**tokenizer(premise, hypothesis, return_tensors="pt")).logits.argmax())
                assert matrix[i][j] == (single == 2), (i, j)
    clusters = make_clusterer("nli", path)(texts, ["stop"] * len(texts))
    expected = greedy_clusters(list(range(len(texts))), lambda a, b: matrix[a][b] and matrix[b][a])
    assert clusters == expected and clusters[0] == 0
    assert next(model.parameters()).device.type == "cpu"


def test_an_nli_model_without_an_entailment_class_is_refused_and_generic_names_read_as_mnli(tmp_path):
    from raypipe.labels.semantic_models import entailment_class, load_nli

    assert entailment_class({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}) == 0  # GLUE MNLI: entailment first
    with pytest.raises(ValueError, match="no single entailment class"):
        load_nli(_nli_checkpoint(tmp_path / "sentiment", {0: "negative", 1: "positive"}))
