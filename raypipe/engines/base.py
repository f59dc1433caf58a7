"""What every generation backend shares: the engine interface and the per-row sampling seed."""

from __future__ import annotations

from typing import Protocol


class Engine(Protocol):
    async def generate(self, prompt_token_ids: list[list[int]], row_ids: list[int]) -> dict[str, list]: ...

    def shutdown(self) -> None: ...


def request_seed(seed: int, row_id: int) -> int:
    """A per-prompt sampling seed: a row's samples do not depend on which shard, batch or engine it lands in."""
    return (seed * 1_000_003 + row_id) % (2**31 - 1)
