"""Prompt sources as a registry. A spec's prefix names its kind (`builtin:arithmetic`, `trigger:EXP_DIR`); a spec
without one is a dataset (a local file or folder, a saved dataset, a hub dataset), SOURCE#CONFIG naming its config.

Each kind turns a spec into one split's rows, once, and answers for itself what a build would otherwise test
prefixes for: the evaluation splits it offers without being asked, and the seed each split of a build loads with.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

from raypipe.errors import UserError
from raypipe.sources import builtin, dataset, trigger

DEFAULT_SPEC = "builtin:arithmetic"  # a build's source when it names none


class SourceKind(Protocol):
    usage: str  # how its specs are written, for the error that lists the kinds

    def load(self, spec: str, config: str | None, split: str, size: int, seed: int):
        """One split of the spec as a `datasets.Dataset` (`size`: rows a generating kind makes); a mistake is one
        UserError line."""

    def offered_splits(self, spec: str, seed: int) -> list[tuple[str, str]]:
        """The evaluation splits, as (name, split of the spec), that a build training on the spec gets unasked."""

    def split_seed(self, seed: int, offset: int) -> int:
        """The seed a build's split loads the spec with: train is offset 0, test 1, evaluation splits 2, 3, ..."""


KINDS: dict[str, SourceKind] = {builtin.PREFIX: builtin.BuiltinSource(), trigger.PREFIX: trigger.TriggerSource()}
DATASET: SourceKind = dataset.DatasetSource()  # a spec without a kind's prefix
# Words that start a spec rather than name a source before a ':SPLIT' (parse_eval_split): the kinds and addresses.
PREFIXES = (*KINDS, *dataset.SCHEMES)


def split_config(spec: str) -> tuple[str, str | None]:
    """SOURCE#CONFIG -> (SOURCE, CONFIG): a dataset's config (`openai/gsm8k#main`, `mandarjoshi/trivia_qa#rc.nocontext`,
    `cais/mmlu#all`), what `datasets.load_dataset` takes as its second argument; (SOURCE, None) without one."""
    source, sep, config = spec.partition("#")
    if sep and (not source or not config.strip()):
        raise UserError(f"a source's config follows '#' (openai/gsm8k#main), got {spec!r}")
    return source, config.strip() if sep else None


def kind_of(spec: str) -> SourceKind:
    """The kind of a spec: its prefix's, else the dataset kind. A word before ':' that is no kind's prefix, no
    address scheme and no existing path is a mistyped kind, one line listing the kinds."""
    source = split_config(spec)[0]
    prefix, colon, _ = source.partition(":")
    if colon and prefix in KINDS:
        return KINDS[prefix]
    if (colon and re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", prefix) and prefix not in dataset.SCHEMES
            and not Path(source).expanduser().exists()):
        known = "; ".join(kind.usage for kind in (*KINDS.values(), DATASET))
        raise UserError(f"unknown prompt source kind {prefix + ':'!r} in {spec!r}; the kinds are: {known}")
    return DATASET


def load_split(spec: str, split: str, size: int, seed: int):
    """One split of a spec (SOURCE or SOURCE#CONFIG) as a `datasets.Dataset`, loaded by its kind."""
    source, config = split_config(spec)
    kind = kind_of(source)
    if config is not None and (kind is not DATASET or Path(source).expanduser().is_file()):
        raise UserError(f"{source} has no configs (a config follows '#' only for a hub dataset or a dataset folder)")
    return kind.load(source, config, split, size, seed)
