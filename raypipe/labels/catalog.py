"""The label catalog: what every label means, which labels a build stores, how one shard's rows get them, and the
labels derived from stored ones (`semantic_entropy_high`: a threshold on `semantic_entropy`).

A stored label is a `label.<name>` tensor in every shard. A derived label is never stored: its definition in the
manifest names the label it comes from and the threshold, chosen on the train split once the build is whole (or
given with --se-threshold), and `label_values` computes it wherever labels are read.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from raypipe.errors import UserError
from raypipe.labels.loop import has_ngram_loop
from raypipe.labels.matching import judge
from raypipe.labels.references import Reference, read_reference
from raypipe.labels.semantic import best_split_threshold, cluster_entropy
from raypipe.output.records import LabelDefinition

DEFINITIONS = {
    "loop": "1 if some n-gram of the first sample's generated token ids occurs at least k times (has_ngram_loop), "
            "else 0",
    "loop_fraction": "fraction of the K samples that loop (has_ngram_loop with the same n, k)",
    "max_tokens_fraction": "fraction of the K samples that stopped at the max-token limit (finish_reason 'length')",
    "correct": "1 if the first sample's final answer matches the row's reference, else 0; NaN without a "
               "reference or with one that cannot be read (counted in unreadable_reference). References: a string "
               "(a GSM8K solution's value after '####', a solution's last \\boxed{}), a list of right answers, or "
               "a multiple-choice row's right option. The final answer is the sample's last complete \\boxed{}, "
               "else an explicit answer statement at its end ('the answer is X', 'final answer: X', '#### X', a "
               "last sentence stating a value), read after answer_after (a thinking model's '</think>') when the "
               "sample has it; a sample cut off at the token limit has none unless it boxed one before the cut. A "
               "sample without a final answer is incorrect, and counted in no_final_answer. Matching: math-verify "
               "(match=math), normalised string (exact), SQuAD token F1 >= f1_threshold over the answer's spans "
               "(f1), the option picked by letter or text (multiple choice)",
    "success_rate": "fraction of the K samples whose final answer is correct, as for `correct` (the probe "
                    "pipeline's regression label)",
    "semantic_entropy": "entropy (nats) of the frequencies of the K samples' meaning clusters (greedy clustering)",
    "semantic_entropy_high": "1 if semantic_entropy is above the threshold, else 0 (derived, not stored)",
    "mean_logprob": "baseline: mean log-probability of the sampled tokens, averaged over the K samples",
    "mean_token_entropy": "baseline: mean entropy of the top-k next-token distribution over generated tokens, "
                          "averaged over the K samples (SEP's entropy baseline; top-k lower bound)",
}
KINDS = {"loop": "binary", "correct": "binary", "semantic_entropy_high": "binary", "mean_logprob": "baseline",
         "mean_token_entropy": "baseline"}
GIVEN_KINDS = ("given", "categorical")  # labels from the source's columns (numbers / class ids)
ROLLOUT_BASELINES = ("mean_logprob", "mean_token_entropy")  # computed by the rollout stage from vLLM's logprobs


def semantic_method(config, has_answers: bool) -> str | None:
    """The clustering used for semantic entropy, or None when it is off."""
    if config.semantic_method == "off":
        return None
    if config.semantic_method == "auto":
        return "answer" if has_answers else "embedding"
    return config.semantic_method


def given_label(column: str, classes: list[str] | None = None) -> LabelDefinition:
    """A source column's label definition; a categorical one is stored as class ids and names its classes."""
    if classes is None:
        return LabelDefinition(kind="given", definition=f"the source's column {column!r}, as given", counts={})
    return LabelDefinition(kind="categorical", definition=f"the source's column {column!r} as a class id: the index "
                           "of its value in `classes`", classes=list(classes), counts={})


def plan(model, config, columns: Sequence[str], has_answers: bool, answer_match: str = "math",
         rollouts: bool = True, classes: dict[str, list[str]] | None = None,
         multiple_choice: bool = False) -> dict[str, LabelDefinition]:
    """The labels a build will have, with their definitions, as the manifest records them. `answer_match` is the
    resolved --answer-match (math or exact); `classes`: the categorical columns' class names. Without rollouts
    (--backend none) only the given columns are labels."""
    classes = classes or {}
    if not rollouts:
        return {column: given_label(column, classes.get(column)) for column in columns}
    names = ["loop"]
    if model.num_samples >= 2:
        names += ["loop_fraction", "max_tokens_fraction"]
    if has_answers:
        names += ["correct", "success_rate"]
    method = semantic_method(config, has_answers) if model.num_samples >= 2 else None
    if method:
        names += ["semantic_entropy", "semantic_entropy_high"]
    if model.entropy_top_k > 0:
        names += list(ROLLOUT_BASELINES)
    labels = {name: LabelDefinition(kind=KINDS.get(name, "continuous"), definition=DEFINITIONS[name], counts={})
              for name in names}
    labels["loop"].params = {"n": model.loop_n, "k": model.loop_k}
    if has_answers:
        for name in ("correct", "success_rate"):
            labels[name].params = {"match": answer_match, "f1_threshold": config.f1_threshold,
                                      "answer_after": model.answer_after, "multiple_choice": multiple_choice}
    if method:
        labels["semantic_entropy"].params = {"method": method, "nli_model": config.nli_model,
                                                "embedding_model": config.embedding_model,
                                                "similarity_threshold": config.similarity_threshold}
        given = config.se_threshold is not None
        labels["semantic_entropy_high"].derived_from = "semantic_entropy"
        labels["semantic_entropy_high"].params = {
            "threshold": config.se_threshold,
            "chosen_by": "--se-threshold" if given else "best split of the train split's semantic_entropy, chosen "
                                                        "once every shard is complete"}
    for column in columns:  # a source column wins over a computed label of the same name
        labels[column] = given_label(column, classes.get(column))
    return labels


def absent_without_rollouts(model, config, columns: Sequence[str], has_answers: bool) -> dict[str, str]:
    """The rollout labels a build without rollouts does not have, each with the reason (the manifest says so)."""
    planned = plan(model, config, columns, has_answers)
    return {name: "no rollouts (--backend none)" for name, d in planned.items() if d.kind not in GIVEN_KINDS}


def uses_rollouts(planned: dict[str, LabelDefinition]) -> bool:
    return any(definition.kind not in GIVEN_KINDS for definition in planned.values())


def stored(planned: dict[str, LabelDefinition]) -> list[str]:
    """Names of the labels that shards hold as tensors (derived labels are computed when read)."""
    return [name for name, definition in planned.items() if not definition.derived_from]


# --- one shard ------------------------------------------------------------------------------------------------------

def _fraction(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else float("nan")


# (texts, finish reasons, the row's Reference or None) -> cluster ids
Cluster = Callable[[list[str], list[str], Any], list[int]]


def row_labels(samples: list[list[int]], texts: list[str], finish: list[str], reference, *, loop_n: int,
               loop_k: int, cluster: Cluster | None = None, match: str = "math", f1_threshold: float = 0.5,
               answer_after: str | None = None) -> dict[str, float]:
    """Every rollout-derived label of one prompt from its K samples (reference: a references.Reference, a plain
    answer string, or None; cluster: the semantic clustering, or None). `_answered` counts the samples with a final
    answer (for the manifest's no_final_answer), first sample first; `_unreadable` marks a reference that could not
    be read (its labels are NaN)."""

    if reference is not None and not isinstance(reference, Reference):
        reference = read_reference(reference)
    loops = [has_ngram_loop(ids, loop_n, loop_k) for ids in samples]
    labels: dict[str, float] = {"loop": int(loops[0]), "loop_fraction": _fraction(loops),
                                "max_tokens_fraction": _fraction(reason == "length" for reason in finish)}
    if reference is not None and reference.readable:
        judged = [judge(text, reason, reference, match, f1_threshold, answer_after)
                  for text, reason in zip(texts, finish)]
        correct = [right for right, _ in judged]
        labels["correct"], labels["success_rate"] = float(correct[0]), _fraction(correct)
        labels["_first_answered"] = float(judged[0][1])
        labels["_answered"] = float(sum(answered for _, answered in judged))
    else:
        labels["correct"] = labels["success_rate"] = float("nan")
        if reference is not None:
            labels["_unreadable"] = 1.0
    if cluster is not None:
        labels["semantic_entropy"] = cluster_entropy(cluster(texts, finish, reference))
    return labels


def label_shard(shard: dict[str, Any], planned: dict[str, dict], *, loop_n: int, loop_k: int,
                cluster: Cluster | None = None) -> dict[str, list]:
    """The stored labels of one shard's rows, one list per label, from its rollouts and source columns. Rows and
    samples with a reference but no final answer are counted in shard["answer_counts"]."""
    if not uses_rollouts(planned):  # --backend none: the source's columns only
        return {name: [columns[name] for columns in shard["columns"]] for name in stored(planned)}

    params = (planned["correct"].params if "correct" in planned else None) or {}
    references = [Reference.from_json(text) for text in shard["reference"]] if "reference" in shard \
        else shard["answer"]
    rows = [row_labels(samples, texts, finish, reference, loop_n=loop_n, loop_k=loop_k, cluster=cluster,
                       match=params.get("match", "math"), f1_threshold=params.get("f1_threshold", 0.5),
                       answer_after=params.get("answer_after"))
            for samples, texts, finish, reference in zip(shard["token_ids"], shard["text"], shard["finish_reason"],
                                                         references)]
    referenced = [(row, len(samples)) for row, samples in zip(rows, shard["token_ids"]) if "_answered" in row]
    shard["answer_counts"] = {
        "rows_with_reference": len(referenced),
        "no_final_answer": sum(1 for row, _ in referenced if not row["_first_answered"]),
        "samples_without_final_answer": int(sum(k - row["_answered"] for row, k in referenced)),
        "unreadable_reference": sum(1 for row in rows if row.get("_unreadable")),
    }
    labels: dict[str, list] = {}
    for name in stored(planned):
        if planned[name].kind in GIVEN_KINDS:
            labels[name] = [columns[name] for columns in shard["columns"]]
        elif name in ROLLOUT_BASELINES:
            labels[name] = list(shard[name])
        else:
            labels[name] = [row[name] for row in rows]
    return labels


MAX_COUNTED_CLASSES = 32


def counts(labels: dict[str, Sequence[float]]) -> dict[str, dict[str, int]]:
    """Rows per class of every label whose present values are all 0/1 or class ids (whole numbers, at most
    MAX_COUNTED_CLASSES of them); NaN marks a row without a value."""
    result: dict[str, dict[str, int]] = {}
    for name, values in labels.items():
        present = [v for v in np.asarray(values, dtype=np.float64).tolist() if v == v]
        if present and all(v.is_integer() and v >= 0 for v in present) and \
                len(set(present)) <= MAX_COUNTED_CLASSES:
            result[name] = dict(sorted(Counter(str(int(v)) for v in present).items(), key=lambda kv: int(kv[0])))
    return result


# --- derived labels -------------------------------------------------------------------------------------------------

def label_values(planned: dict[str, LabelDefinition], name: str, tensors: dict[str, Any]) -> np.ndarray:
    """A label's values (float64, NaN where a row has none) from a split's tensors or arrays, stored or derived."""
    definition = planned[name]
    source = definition.derived_from
    if not source:
        return np.asarray(tensors[f"label.{name}"], dtype=np.float64)
    threshold = definition.params["threshold"]
    if threshold is None:
        raise UserError(f"label {name!r} has no threshold yet: it is chosen once every shard of the build is complete")
    values = np.asarray(tensors[f"label.{source}"], dtype=np.float64)
    return np.where(np.isnan(values), np.nan, (values > threshold).astype(np.float64))


def finish_derived(planned: dict[str, LabelDefinition], values_of: Callable[[str, str], np.ndarray],
                   splits: Sequence[str]) -> None:
    """Once every shard is complete: choose the thresholds not given (best split of the train values) and count the
    derived labels per split. `values_of(split, name)` reads a stored label of a split."""

    for name, definition in planned.items():
        source = definition.derived_from
        if not source:
            continue
        params = definition.params
        if params["threshold"] is None:
            train = [v for v in values_of("train", source).tolist() if not math.isnan(v)]
            if not train:
                continue
            params["threshold"] = best_split_threshold(train)
        definition.counts = {}
        for split in splits:
            derived = label_values(planned, name, {f"label.{source}": values_of(split, source)})
            definition.counts[split] = counts({name: derived}).get(name, {})

