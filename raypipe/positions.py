"""Which tokens the features come from: fixed offsets from the prompt's end, the chat template's post-instruction
tokens ('eoi', as in the probe-pipeline seed), the last token of a marker string ('marker:</think>'), and tokens of
the first generated sample ('answer:-2', SEP's second-last answer token; -1 of the prompt is the token before
generation).

Every position ends up as a negative offset per row: fixed offsets and eoi are the same for every row; a marker's
depends on where the marker sits in that row's prompt; an answer position counts from the end of prompt + answer,
which only the prefill stage knows (see `with_answer`).
"""

from __future__ import annotations

from raypipe.errors import UserError

SENTINEL = "RAYPIPE_INSTRUCTION_END_7f3a"


def detect_eoi_tokens(tokenizer) -> int:
    """How many tokens the chat template puts after the user's text (end of turn, assistant header, ...)."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("--positions eoi needs a chat template; this tokenizer has none (use --eoi-tokens N)")
    text = tokenizer.apply_chat_template([{"role": "user", "content": SENTINEL}], add_generation_prompt=True,
                                         tokenize=False)
    end = text.rindex(SENTINEL) + len(SENTINEL)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    # Tokens that start at or after the instruction's end; tokenizing in context keeps boundary merges honest.
    count = sum(1 for start, stop in encoded["offset_mapping"] if start >= end and stop > start)
    if count < 1:
        raise UserError("the chat template adds no token after the user turn; --positions eoi has nothing to take")
    return count


def expand_positions(specs: list[int | str], tokenizer, eoi_tokens: int | None) -> list[int | str]:
    """The manifest's position list: 'eoi' becomes -N..-1; ints and markers stay; duplicates dropped in order."""
    expanded: list[int | str] = []
    for spec in specs:
        if spec == "eoi":
            n = eoi_tokens if eoi_tokens is not None else detect_eoi_tokens(tokenizer)
            expanded.extend(range(-n, 0))
        else:
            expanded.append(spec)
    return list(dict.fromkeys(expanded))


def marker_offset(tokenizer, prompt: str, prompt_token_ids: list[int], marker: str) -> int | None:
    """Negative offset of the token holding the last character of `marker`'s last occurrence; None if absent."""
    at = prompt.rfind(marker)
    if at < 0:
        return None
    last_char = at + len(marker) - 1
    encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    # The stored ids may carry special tokens the text encoding does not (e.g. a BOS): align on the end.
    shift = len(prompt_token_ids) - len(offsets)
    for index in range(len(offsets) - 1, -1, -1):
        start, stop = offsets[index]
        if start <= last_char < stop:
            return index + shift - len(prompt_token_ids)
    return None


ANSWER = "answer:"


def is_answer_position(position: int | str) -> bool:
    return isinstance(position, str) and position.startswith(ANSWER)


def row_offsets(positions: list[int | str], tokenizer, prompt: str, prompt_token_ids: list[int]) -> list[int] | None:
    """This row's negative offset for each manifest position; None when a marker is absent from its prompt.

    An answer position keeps its own offset (from the end of prompt + answer); `with_answer` places it.
    """
    offsets = []
    for position in positions:
        if isinstance(position, int):
            offsets.append(position)
            continue
        if is_answer_position(position):
            offsets.append(int(position.removeprefix(ANSWER)))
            continue
        offset = marker_offset(tokenizer, prompt, prompt_token_ids, position.removeprefix("marker:"))
        if offset is None:
            return None
        offsets.append(offset)
    return offsets


def with_answer(prompt_ids: list[int], answer_ids: list[int], offsets: list[int], positions: list[int | str]):
    """(ids, offsets) for a forward over prompt + answer: prompt offsets move left by the answer's length; an
    answer offset counts from the new end, and is clamped to the prompt's last token when the answer is shorter."""
    length = len(answer_ids)
    moved = [max(offset, -length - 1) if is_answer_position(position) else offset - length
             for offset, position in zip(offsets, positions)]
    return list(prompt_ids) + list(answer_ids), moved
