"""Which tokens the features come from: fixed offsets from the prompt's end, the chat template's post-instruction
tokens ('eoi', as in the probe-pipeline seed), the last token of a marker string in the prompt ('marker:TEXT'),
tokens of the first generated sample ('answer:-2', SEP's second-last answer token; -1 of the prompt is the token
before generation), and the last token of a marker's first occurrence in the first sample's generated text
('rollout:</think>': where a reasoning model ends its thinking, the SEP seed's traced position).

Every position ends up as a negative offset per row: fixed offsets and eoi are the same for every row; a marker's
depends on where the marker sits in that row's prompt; an answer position counts from the end of prompt + answer,
which only the prefill stage knows (see `with_answer`); so does a rollout marker's (see `rollout_marker_offset`). A
row whose first sample lacks a rollout marker is skipped and counted by the rollout stage (`rollout_marker_absent`),
or fails the build with --missing-marker fail.
"""

from __future__ import annotations

from raypipe.errors import UserError

SENTINEL = "RAYPIPE_INSTRUCTION_END_7f3a"


def detect_eoi_tokens(tokenizer, template_args: dict | None = None) -> int:
    """How many tokens the chat template puts after the user's text (end of turn, assistant header, ...)."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("--positions eoi needs a chat template; this tokenizer has none (use --eoi-tokens N)")
    text = tokenizer.apply_chat_template([{"role": "user", "content": SENTINEL}], add_generation_prompt=True,
                                         tokenize=False, **(template_args or {}))
    end = text.rindex(SENTINEL) + len(SENTINEL)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    # Tokens that start at or after the instruction's end; tokenizing in context keeps boundary merges honest.
    count = sum(1 for start, stop in encoded["offset_mapping"] if start >= end and stop > start)
    if count < 1:
        raise UserError("the chat template adds no token after the user turn; --positions eoi has nothing to take")
    return count


def expand_positions(specs: list[int | str], tokenizer, eoi_tokens: int | None,
                     template_args: dict | None = None) -> list[int | str]:
    """The manifest's position list: 'eoi' becomes -N..-1; ints and markers stay; duplicates dropped in order."""
    expanded: list[int | str] = []
    for spec in specs:
        if spec == "eoi":
            n = eoi_tokens if eoi_tokens is not None else detect_eoi_tokens(tokenizer, template_args)
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
ROLLOUT = "rollout:"


def is_answer_position(position: int | str) -> bool:
    return isinstance(position, str) and position.startswith(ANSWER)


def is_rollout_position(position: int | str) -> bool:
    return isinstance(position, str) and position.startswith(ROLLOUT)


def reads_rollout(positions: list[int | str]) -> bool:
    """Whether features need a forward over prompt + first sample (answer or rollout positions)."""
    return any(is_answer_position(p) or is_rollout_position(p) for p in positions)


def rollout_markers(positions: list[int | str]) -> list[str]:
    return [p.removeprefix(ROLLOUT) for p in positions if is_rollout_position(p)]


def rollout_marker_offset(tokenizer, answer_ids: list[int], marker: str) -> int | None:
    """Negative offset, from the end of prompt + answer, of the answer token that completes the first occurrence of
    `marker` in the answer's text: the shortest prefix of the answer whose decoded text holds the marker ends at it
    (binary search: a few decodes even for 30,000-token rollouts). None when the answer's text has no marker."""
    def holds(n: int) -> bool:
        return marker in tokenizer.decode(answer_ids[:n], skip_special_tokens=False)

    if not answer_ids or not holds(len(answer_ids)):
        return None
    low, high = 1, len(answer_ids)
    while low < high:
        middle = (low + high) // 2
        if holds(middle):
            high = middle
        else:
            low = middle + 1
    return (low - 1) - len(answer_ids)


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
        if is_rollout_position(position):
            offsets.append(0)  # placed by the prefill stage, once the sample exists (with_answer)
            continue
        offset = marker_offset(tokenizer, prompt, prompt_token_ids, position.removeprefix("marker:"))
        if offset is None:
            return None
        offsets.append(offset)
    return offsets


def with_answer(prompt_ids: list[int], answer_ids: list[int], offsets: list[int], positions: list[int | str],
                rollout_offsets: dict[str, int] | None = None):
    """(ids, offsets) for a forward over prompt + answer: prompt offsets move left by the answer's length; an
    answer offset counts from the new end, and is clamped to the prompt's last token when the answer is shorter; a
    rollout marker's offset is given (`rollout_offsets`, marker -> rollout_marker_offset)."""
    length = len(answer_ids)
    moved = [rollout_offsets[position.removeprefix(ROLLOUT)] if is_rollout_position(position)
             else max(offset, -length - 1) if is_answer_position(position) else offset - length
             for offset, position in zip(offsets, positions)]
    return list(prompt_ids) + list(answer_ids), moved
