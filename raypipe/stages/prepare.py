"""Prepare stage: a shard's prompts, from row indices to token ids, on Ray rather than on the driver.

It reads the shard's rows from their Arrow source (shared through Ray's object store), applies the chat template,
tokenizes once (vLLM and Transformers both get these exact ids) and finds each row's feature positions. Rows the
model cannot take (missing or empty prompts, prompts over the context, markers absent) are skipped and counted in
the shard's `skipped`, never failing the shard.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from raypipe.stages.base import ShardStage


class PrepareStage(ShardStage):
    """Adds row_id (the usable rows), prompt, prompt_token_ids, answer, columns, offsets and skipped."""

    name = "prepare"
    inputs = ("source", "source_rows", "row_id")

    def __init__(self, config, sources: dict, positions: list[int | str], retries: int = 0, progress=None):
        super().__init__(retries, progress)
        import ray
        from transformers import AutoTokenizer

        from raypipe.embedded import resolve_model_path

        self.config, self.positions = config, positions
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(config.model.model_id),
                                                       trust_remote_code=config.model.trust_remote_code)
        # The tables arrive as object references: zero-copy on this node, fetched once from another.
        self.sources = {key: dataclasses.replace(source, table=ray.get(source.table[0]))
                        for key, source in sources.items()}

    def work(self, shard: dict[str, Any]) -> dict[str, Any]:
        from raypipe.data import read_rows, to_prompt_rows, usable_rows

        rows, skipped = read_rows(self.sources[shard["source"]], shard["source_rows"], shard["row_id"])
        prompts = to_prompt_rows(rows, self.tokenizer, self.config.source.chat_template)
        kept, unusable = usable_rows(prompts, self.config, self.positions, self.tokenizer)
        for reason, count in unusable.items():
            skipped[reason] = skipped.get(reason, 0) + count
        shard.update(row_id=[r.row_id for r in kept], prompt=[r.prompt for r in kept],
                     prompt_token_ids=[r.prompt_token_ids for r in kept], answer=[r.answer for r in kept],
                     columns=[r.columns for r in kept], offsets=[r.offsets for r in kept], skipped=skipped)
        return {"tokens": sum(len(r.prompt_token_ids) for r in kept)}
