"""What a build will do, resolved on the driver before any Ray work: the model's shape, the feature layout, the
labels, the sources and each split's rows, and their fixed shards. The manifest is written from it.

The driver holds no prompt text: a shard is a list of row indices into an Arrow-backed source, and the prepare stage
reads, templates and tokenizes them on Ray. Shards are cut from each split's rows in order, before any row is
skipped, so a shard's membership is a pure function of the source, the split seed and the shard size: a rerun or a
resume plans exactly the same shards. A row skipped later (empty prompt, too long, marker absent) leaves its shard
one row shorter, counted in the manifest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from raypipe.config import BuildConfig
from raypipe.data import Source, SplitRows, open_sources, read_rows, to_prompt_rows
from raypipe.embedded import resolve_model_path
from raypipe.errors import UserError
from raypipe.labels import catalog, semantic_models
from raypipe.labels.answers import answer_match_default
from raypipe.output.layout import shard_name
from raypipe.output.records import LabelDefinition
from raypipe.positions import expand_positions, reads_rollout

SPLITS = ("train", "test")  # every build has these; evaluation splits come after them, named by the user


@dataclass
class BuildInputs:
    """Everything the driver resolves before Ray starts: a user error surfaces here, before any work."""

    local_model_path: str | None
    num_layers: int
    hidden_size: int
    layers: list[int]
    positions: list[int | str]  # negative offsets, 'marker:TEXT' / 'answer:-N' / 'rollout:TEXT', as the manifest records
    labels: dict[str, LabelDefinition]  # the labels this build has, defined (labels.catalog.plan)
    sources: dict[str, Source]
    splits: dict[str, SplitRows]
    absent_labels: dict[str, str] = field(default_factory=dict)  # label -> why this build does not have it


@dataclass
class ShardPlan:
    split: str
    index: int
    source: str  # key of the Source its rows come from
    indices: list[int]  # row indices in that source
    row_ids: list[int]

    @property
    def name(self) -> str:
        return shard_name(self.index)


def plan_shards(splits: dict[str, SplitRows], shard_size: int) -> list[ShardPlan]:
    """Cut each split (train, test, then the evaluation splits), in row order, into shards of shard_size rows (the
    last may be shorter)."""
    return [
        ShardPlan(split, start // shard_size, rows.source, rows.indices[start:start + shard_size],
                  rows.row_ids[start:start + shard_size])
        for split, rows in splits.items()
        for start in range(0, len(rows.indices), shard_size)
    ]


# --- resolving and checking the inputs, before any work ----------------------------------------------------------

def prepare(config: BuildConfig) -> BuildInputs:
    """Resolve sources, model shape, features and labels, and check every input a user gave, before any work."""
    from transformers import AutoConfig, AutoTokenizer

    sources, splits = open_sources(config.source)  # data mistakes surface before any model loads
    model_path = resolve_model_path(config.model.model_id)
    try:
        hf_config = AutoConfig.from_pretrained(model_path, trust_remote_code=config.model.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=config.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load model {config.model.model_id!r}: {str(exc).strip().splitlines()[0]}") from exc
    text_config = hf_config.get_text_config()
    num_layers, hidden_size = text_config.num_hidden_layers, text_config.hidden_size
    heads = getattr(text_config, "num_attention_heads", None)
    if config.backend == "vllm" and heads and heads % config.model.vllm.tp:
        raise UserError(f"--tp {config.model.vllm.tp} must divide the model's {heads} attention heads (tensor "
                        f"parallelism splits them); use a tp that does")
    layers = config.features.resolve_layers(num_layers)
    positions = expand_positions(config.features.position_specs(), tokenizer, config.features.eoi_tokens,
                                 config.source.template_args())
    if config.source.chat_template and not getattr(tokenizer, "chat_template", None):
        raise UserError("the model's tokenizer has no chat template; pass --no-chat-template for raw prompts")
    check_semantic_models(config)
    if config.features.missing_marker == "fail":
        check_markers(sources, splits, positions, tokenizer, config)
    has_answers = any(source.has_answers for source in sources.values())
    rollouts = config.backend != "none"
    if not rollouts and reads_rollout(positions):
        raise UserError("--positions answer:-N and rollout:TEXT read the first sample's tokens; --backend none "
                        "generates none")
    labels = catalog.plan(config.model, config.labels, config.source.label_columns, has_answers,
                          answer_match(config, sources) if has_answers else "math", rollouts=rollouts,
                          classes=sources["train"].classes,
                          multiple_choice=any(source.options is not None for source in sources.values()))
    absent = {} if rollouts else catalog.absent_without_rollouts(config.model, config.labels,
                                                                  config.source.label_columns, has_answers)
    return BuildInputs(_local_path(model_path), num_layers, hidden_size, layers, positions, labels, sources, splits,
                       absent)


def answer_match(config: BuildConfig, sources) -> str:
    """--answer-match, with auto resolved from (up to 1,000 of) the references: math when they look mathematical,
    else f1 (short free-form answers)."""
    if config.labels.answer_match != "auto":
        return config.labels.answer_match
    import pyarrow as pa

    references = []
    for source in sources.values():
        if source.answer is not None:
            part = source.table.take(pa.array(range(min(1000, len(source.table))), type=pa.int64()))
            references += [answer for reference in source.references(part) if reference is not None
                           for answer in reference.answers[:1]]
    return answer_match_default(references)


def check_markers(sources, splits, positions, tokenizer, config: BuildConfig) -> None:
    """--missing-marker fail: a prompt without a marker stops the build before any work (a text check over every
    prompt; the prepare stage counts the rare token-level miss)."""
    markers = [p.removeprefix("marker:") for p in positions if isinstance(p, str) and p.startswith("marker:")]
    for split, part in splits.items():
        rows, _ = read_rows(sources[part.source], part.indices, part.row_ids)
        for row in rows:
            missing = [m for m in markers if m not in row["question"]]
            if missing and config.source.chat_template:  # the template itself may hold the marker
                text = to_prompt_rows([row], tokenizer, True, config.source.template_args())[0].prompt
                missing = [m for m in missing if m not in text]
            if missing:
                raise UserError(f"row {row['row_id']}: its prompt does not contain the marker of --positions "
                                f"({', '.join('marker:' + m for m in missing)}); --missing-marker skip counts such "
                                "rows instead")


def check_semantic_models(config: BuildConfig) -> None:
    """An NLI or embedding model that will not load is a user error now, not a failed shard later."""
    labels = config.labels
    if config.model.num_samples < 2 or labels.semantic_method in ("off", "answer"):
        return

    try:
        if labels.semantic_method == "nli":
            semantic_models.load_nli(labels.nli_model)
        else:
            semantic_models.load_embedder(labels.embedding_model)
    except (OSError, ValueError, ImportError) as exc:
        which = f"NLI model {labels.nli_model!r}" if labels.semantic_method == "nli" else \
            f"embedding model {labels.embedding_model!r}"
        raise UserError(f"cannot load {which}: {str(exc).strip().splitlines()[0]}") from exc


def _local_path(model_path: str) -> str | None:
    """The folder the checkpoint is read from on this node (a hub id resolves to its cache snapshot)."""
    if os.path.isdir(model_path):
        return model_path
    try:
        from transformers.utils import cached_file

        return os.path.dirname(cached_file(model_path, "config.json"))
    except Exception:  # noqa: BLE001 - only informational
        return None
