"""Labels computed from a shard's rollouts. Pure functions of token ids: no model, no Ray."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

LABEL_DEFINITIONS = {
    "loop": "1 if some n-gram of the first sample's generated token ids occurs at least k times (has_ngram_loop), "
            "else 0",
    "loop_fraction": "fraction of the K samples that loop (has_ngram_loop with the same n, k)",
    "max_tokens_fraction": "fraction of the K samples that stopped at the max-token limit (finish_reason 'length')",
    "correct": "1 if the first sample's final answer (last boxed, else last number; normalised) equals the row's "
               "reference answer, else 0; NaN without a reference",
    "success_rate": "fraction of the K samples whose final answer is correct (the probe pipeline's regression label)",
    "semantic_entropy": "entropy (nats) of the frequencies of the K samples' meaning clusters (greedy clustering)",
    "semantic_entropy_high": "1 if semantic_entropy is above the threshold, else 0",
    "mean_logprob": "baseline: mean log-probability of the sampled tokens, averaged over the K samples",
    "mean_token_entropy": "baseline: mean entropy of the top-k next-token distribution over generated tokens, "
                          "averaged over the K samples (SEP's entropy baseline; top-k lower bound)",
}
KINDS = {"loop": "binary", "correct": "binary", "semantic_entropy_high": "binary", "mean_logprob": "baseline",
         "mean_token_entropy": "baseline"}


def has_ngram_loop(token_ids: Sequence[int], n: int = 30, k: int = 20) -> bool:
    """True when some n-gram of `token_ids` occurs at least `k` times (occurrences may overlap).

    loop_probe's detector: a trajectory that repeats the same n tokens k times is stuck in a loop.
    """
    if n < 1 or k < 1:
        raise ValueError(f"n and k must be at least 1, got n={n}, k={k}")
    if len(token_ids) < n:
        return False
    ids = tuple(token_ids)
    counts: Counter[tuple[int, ...]] = Counter()
    for start in range(len(ids) - n + 1):
        gram = ids[start:start + n]
        counts[gram] += 1
        if counts[gram] >= k:
            return True
    return False


def loop_labels(samples_per_row: Sequence[Sequence[Sequence[int]]], n: int, k: int) -> list[int]:
    """The `loop` label of each row: the detector on the row's first sample."""
    return [int(has_ngram_loop(samples[0], n, k)) for samples in samples_per_row]


def semantic_method(config, has_answers: bool) -> str | None:
    """The clustering used for semantic entropy, or None when it is off (or K < 2 samples)."""
    if config.semantic_method == "off":
        return None
    if config.semantic_method == "auto":
        return "answer" if has_answers else "embedding"
    return config.semantic_method


def planned_labels(model, label_config, columns: list[str], has_answers: bool) -> dict[str, dict]:
    """The labels a build will store, with their definitions, as the manifest records them."""
    names = ["loop"]
    if model.num_samples >= 2:
        names += ["loop_fraction", "max_tokens_fraction"]
    if has_answers:
        names += ["correct", "success_rate"]
    method = semantic_method(label_config, has_answers) if model.num_samples >= 2 else None
    if method:
        names.append("semantic_entropy")
        if label_config.se_threshold is not None:
            names.append("semantic_entropy_high")
    if model.entropy_top_k > 0:
        names += ["mean_logprob", "mean_token_entropy"]
    labels = {name: {"kind": KINDS.get(name, "continuous"), "definition": LABEL_DEFINITIONS[name], "counts": {}}
              for name in names}
    labels["loop"]["params"] = {"n": model.loop_n, "k": model.loop_k}
    if method:
        labels["semantic_entropy"]["params"] = {"method": method, "nli_model": label_config.nli_model,
                                                "embedding_model": label_config.embedding_model,
                                                "similarity_threshold": label_config.similarity_threshold}
    if "semantic_entropy_high" in labels:
        labels["semantic_entropy_high"]["params"] = {"threshold": label_config.se_threshold}
    for column in columns:
        labels[column] = {"kind": "given", "definition": f"the source's column {column!r}, as given", "counts": {}}
    return labels


def _fraction(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else float("nan")


def row_labels(samples: list[list[int]], texts: list[str], finish: list[str], answer: str | None, *, loop_n: int,
               loop_k: int, cluster=None) -> dict[str, float]:
    """Every rollout-derived label of one prompt from its K samples (cluster: texts -> cluster ids, or None)."""
    from raypipe.stages.answers import is_correct
    from raypipe.stages.semantic import cluster_entropy

    loops = [has_ngram_loop(ids, loop_n, loop_k) for ids in samples]
    labels: dict[str, float] = {"loop": int(loops[0]), "loop_fraction": _fraction(loops),
                                "max_tokens_fraction": _fraction(reason == "length" for reason in finish)}
    if answer is not None:
        correct = [is_correct(text, answer) for text in texts]
        labels["correct"], labels["success_rate"] = float(correct[0]), _fraction(correct)
    else:
        labels["correct"] = labels["success_rate"] = float("nan")
    if cluster is not None:
        labels["semantic_entropy"] = cluster_entropy(cluster(texts))
    return labels


class LabelStage:
    """Callable for `map_batches`: adds one list per planned label to a one-shard batch that has rollouts."""

    def __init__(self, loop_n: int, loop_k: int, labels=None, planned: dict | None = None):
        from raypipe.config import LabelConfig

        self.loop_n, self.loop_k = loop_n, loop_k
        self.config = labels or LabelConfig()
        self.planned = planned or {"loop": {}}
        self.cluster = None
        if "semantic_entropy" in self.planned:
            self.cluster = self._clusterer(self.planned["semantic_entropy"]["params"]["method"])

    def _clusterer(self, method: str):
        from raypipe.stages.answers import extract_answer, normalize_answer
        from raypipe.stages.semantic import answer_clusters, greedy_clusters

        if method == "answer":
            return lambda texts: answer_clusters([normalize_answer(extract_answer(t)) for t in texts])
        if method == "nli":
            from raypipe.stages.semantic_models import load_nli

            entails = load_nli(self.config.nli_model)
            return lambda texts: greedy_clusters(texts, lambda a, b: entails(a, b) and entails(b, a))
        from raypipe.stages.semantic_models import load_embedder

        embed, threshold = load_embedder(self.config.embedding_model), self.config.similarity_threshold

        def by_embedding(texts):
            vectors = embed(texts)
            return greedy_clusters(list(range(len(texts))), lambda a, b: float(vectors[a] @ vectors[b]) >= threshold)

        return by_embedding

    def __call__(self, batch):
        from raypipe.payload import run_stage

        return run_stage("label", batch, self.work, retries=0)

    def work(self, shard) -> None:
        rows = [row_labels(samples, texts, finish, answer, loop_n=self.loop_n, loop_k=self.loop_k,
                           cluster=self.cluster)
                for samples, texts, finish, answer in zip(shard["token_ids"], shard["text"], shard["finish_reason"],
                                                          shard["answer"])]
        labels = {}
        for name, definition in self.planned.items():
            if definition.get("kind") == "given":  # a source column wins over a computed label of the same name
                labels[name] = [columns[name] for columns in shard["columns"]]
            elif name in rows[0]:
                labels[name] = [row[name] for row in rows]
            elif name == "semantic_entropy_high":
                threshold = self.config.se_threshold
                labels[name] = [int(row["semantic_entropy"] > threshold) for row in rows]
            else:  # the rollout stage's uncertainty baselines
                labels[name] = list(shard[name])
        shard["labels"] = labels
