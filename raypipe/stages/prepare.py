"""Prepare stage: a shard's prompts, from row indices to token ids, on Ray rather than on the driver.

It reads the shard's rows from their Arrow source (shared through Ray's object store), applies the chat template,
tokenizes once (vLLM and Transformers both get these exact ids) and finds each row's feature positions. Rows the
model cannot take (missing or empty prompts, prompts over the context, markers absent) are skipped and counted in
the shard's `skipped`, never failing the shard.

The actor is built from small values alone (the config, the positions): Ray restarts an actor whose node was lost
by running its constructor again with the same arguments, so nothing it is built from may depend on an object in
the store. The sources' tables arrive with each call instead (`map_batches(fn_kwargs=...)`) and are fetched on first
use: a restarted actor starts at once, and a table that could not be fetched would fail a shard, never the actor.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from raypipe.data import read_rows, to_prompt_rows, usable_rows
from raypipe.embedded import resolve_model_path
from raypipe.stages.base import ShardStage


class PrepareStage(ShardStage):
    """Adds row_id (the usable rows), prompt, prompt_token_ids, answer, reference, columns, offsets and skipped."""

    name = "prepare"
    inputs = ("source", "source_rows", "row_id")

    def __init__(self, config, positions: list[int | str], retries: int = 0, progress=None):
        super().__init__(retries, progress)
        from transformers import AutoTokenizer

        self.config, self.positions = config, positions
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(config.model.model_id),
                                                       trust_remote_code=config.model.trust_remote_code)
        self.sources: dict[str, Any] = {}  # source key -> Source with its table, once fetched
        self.shared: dict[str, Any] = {}  # source key -> Source whose table is [ObjectRef] (this call's)

    def __call__(self, batch: dict[str, Any], sources: dict[str, Any]) -> dict[str, Any]:
        self.shared = sources
        return super().__call__(batch)

    def source(self, key: str):
        """The source's table from the object store: zero-copy on this node, fetched once from another."""
        if key not in self.sources:
            import ray

            shared = self.shared[key]
            self.sources[key] = dataclasses.replace(shared, table=ray.get(shared.table[0]))
        return self.sources[key]

    def work(self, shard: dict[str, Any]) -> dict[str, Any]:
        rows, skipped = read_rows(self.source(shard["source"]), shard["source_rows"], shard["row_id"])
        prompts = to_prompt_rows(rows, self.tokenizer, self.config.source.chat_template,
                                 self.config.source.template_args())
        kept, unusable = usable_rows(prompts, self.config, self.positions, self.tokenizer)
        for reason, count in unusable.items():
            skipped[reason] = skipped.get(reason, 0) + count
        shard.update(row_id=[r.row_id for r in kept], prompt=[r.prompt for r in kept],
                     prompt_token_ids=[r.prompt_token_ids for r in kept], answer=[r.answer for r in kept],
                     reference=[r.reference for r in kept], columns=[r.columns for r in kept],
                     offsets=[r.offsets for r in kept], skipped=skipped)
        return {"tokens": sum(len(r.prompt_token_ids) for r in kept)}
