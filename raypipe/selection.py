"""Which layers and positions a command means: the one parser of `--layers` and `--positions` text, shared by the
build (which hidden states it stores), the probe commands (which stored cells they fit) and the finetune analysis
(which decoder blocks it patches).

    layers     'all', '-1', '0,10,-1'          comma-separated integers; 'all' (or nothing given): every layer
    positions  '-3,-1', 'eoi', 'marker:TEXT', 'answer:-N', 'rollout:TEXT'    comma-separated entries (see
               raypipe/positions.py for what each one is); 'all' (or nothing given): every stored position

What an integer indexes is the caller's: hidden states (0 = embeddings) for a build and a probe, decoder blocks for
the analysis; each resolves the parsed list against its own model or build.
"""

from __future__ import annotations

from raypipe.errors import UserError

MARKED = ("marker:", "rollout:")  # entries whose text follows the prefix


def parse_layers(text: str | None, option: str = "--layers") -> list[int] | None:
    """'0,10,-1' as [0, 10, -1]; 'all' (or None) as None: every layer there is."""
    if text is None or text.strip() == "all":
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"{option} must be 'all' or comma-separated integers, got {text!r}") from None


def parse_positions(text: str | None, option: str = "--positions", *, eoi: bool = True) -> list[int | str] | None:
    """The entries of a positions list, in order; 'all' (or None) as None: every stored position. eoi=False where
    positions select what a build stored: 'eoi' became offsets then."""
    if text is None or text.strip() == "all":
        return None
    return [_position(part.strip(), option, eoi) for part in text.split(",")]


def _position(part: str, option: str, eoi: bool) -> int | str:
    if part == "eoi":
        if eoi:
            return part
        raise UserError(f"{option}: a build stores 'eoi' as offsets from the prompt's end (such as -3,-2,-1); "
                        "select those")
    for prefix in MARKED:
        if part.startswith(prefix):
            if len(part) == len(prefix):
                raise UserError(f"{option} entries '{prefix}TEXT' need their text ('{prefix}</think>'), got {part!r}")
            return part
    if part.startswith("answer:"):
        offset = part.removeprefix("answer:")
        if not offset.startswith("-") or not offset[1:].isdigit() or int(offset) == 0:
            raise UserError(f"{option} answer entries are 'answer:-N' (N >= 1), got {part!r}")
        return part
    try:
        value = int(part)
    except ValueError:
        raise UserError(f"{option} entries are negative integers, 'eoi', 'marker:TEXT', 'answer:-N' or "
                        f"'rollout:TEXT', got {part!r}") from None
    if value >= 0:
        raise UserError(f"{option} are counted from the prompt's end and must be negative, got {value}")
    return value
