"""Semantic entropy over a prompt's K samples, as in the SEP seed: cluster samples by meaning, then take the entropy
of the cluster frequencies.

Clustering is greedy, as in the SEP code: each sample joins the first cluster whose representative (its first
member) it is equivalent to, else it opens a new cluster. Equivalence is pluggable: equal normalised answers for
math-style prompts, bidirectional entailment with an NLI model, or cosine similarity of sentence embeddings.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Sequence

from raypipe.labels import semantic_models
from raypipe.labels.matching import answer_key, answers_agree


def greedy_clusters(samples: Sequence, equivalent: Callable[[object, object], bool]) -> list[int]:
    """Cluster id of each sample (0, 1, ... in order of first appearance)."""
    representatives: list = []
    ids = []
    for sample in samples:
        for cluster, representative in enumerate(representatives):
            if equivalent(representative, sample):
                ids.append(cluster)
                break
        else:
            representatives.append(sample)
            ids.append(len(representatives) - 1)
    return ids


def cluster_entropy(cluster_ids: Sequence[int]) -> float:
    """Discrete entropy (nats) of the cluster frequencies: 0 when all samples agree, log K when all differ."""
    counts = Counter(cluster_ids)
    total = sum(counts.values())
    return float(-sum(n / total * math.log(n / total) for n in counts.values())) if total else 0.0


def answer_clusters(answers: Sequence[str | None]) -> list[int]:
    """Clusters by equal normalised final answers; samples without an answer each stand alone."""
    tagged = [(i, a) for i, a in enumerate(answers)]
    return greedy_clusters(tagged, lambda x, y: x[1] is not None and x[1] == y[1])


def best_split_threshold(values: Sequence[float]) -> float:
    """The threshold that splits the values into two groups with the least total squared deviation (SEP's
    'best split'); the midpoint between the two neighbouring values it falls between."""
    ordered = sorted(values)
    if len(ordered) < 2 or ordered[0] == ordered[-1]:
        return ordered[0] if ordered else 0.0
    best, best_cost = ordered[0], math.inf
    for i in range(1, len(ordered)):
        if ordered[i] == ordered[i - 1]:
            continue
        low, high = ordered[:i], ordered[i:]
        cost = sum((v - sum(low) / len(low)) ** 2 for v in low) + sum((v - sum(high) / len(high)) ** 2 for v in high)
        if cost < best_cost:
            best, best_cost = (ordered[i - 1] + ordered[i]) / 2, cost
    return best


def make_clusterer(method: str, nli_model: str | None = None, embedding_model: str | None = None,
                   similarity_threshold: float = 0.9, match: str = "math", f1_threshold: float = 0.5,
                   answer_after: str | None = None) -> Callable[..., list[int]]:
    """(texts, finish reasons[, the row's Reference]) -> cluster ids, for one of the equivalences: 'answer', 'nli'
    or 'embedding'. Models load here, once. Answer equality reads the final answers exactly as correctness does (the
    same matcher: math keys, free-form F1, the option picked)."""
    if method == "answer":

        def by_answer(texts: list[str], finish: list[str], reference=None) -> list[int]:
            options = getattr(reference, "options", None)
            keys = [(i, answer_key(t, r, match, answer_after, options)) for i, (t, r) in enumerate(zip(texts, finish))]
            return greedy_clusters(keys, lambda x, y: answers_agree(x[1], y[1], match, f1_threshold))

        return by_answer
    if method == "nli":

        entails = semantic_models.load_nli(nli_model)

        def by_entailment(texts: list[str], finish: list[str], reference=None) -> list[int]:
            matrix = entails(texts)  # bidirectional entailment: i and j mean the same when each entails the other
            return greedy_clusters(list(range(len(texts))), lambda a, b: matrix[a][b] and matrix[b][a])

        return by_entailment
    if method != "embedding":
        raise ValueError(f"unknown semantic clustering method {method!r}")

    embed = semantic_models.load_embedder(embedding_model)

    def by_embedding(texts: list[str], finish: list[str], reference=None) -> list[int]:
        vectors = embed(texts)
        return greedy_clusters(list(range(len(texts))),
                               lambda a, b: float(vectors[a] @ vectors[b]) >= similarity_threshold)

    return by_embedding
