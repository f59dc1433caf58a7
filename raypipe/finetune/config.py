"""The finetune commands' knobs, each declared once with `knob`: the options of `raypipe finetune`
(`FinetuneCommandConfig`) and `raypipe experiments analyze` (`AnalyzeConfig`); raypipe/options.py derives their
command-line options, --config FILE and --print-config from them. An experiment's own config.json is
raypipe.tasks.config's.
"""

from __future__ import annotations

from dataclasses import dataclass

from raypipe.config import knob
from raypipe.errors import UserError
from raypipe.selection import parse_layers
from raypipe.tasks.config import at_least


@dataclass
class FinetuneCommandConfig:
    """`raypipe finetune`: which experiment folders and seeds run, on which cluster, and whether finished seeds run
    again."""

    exp_dirs: list[str] = knob(help="Experiment folders (config.json + data_config.json).", cli=False)
    seeds: list[int] = knob(help="Seeds to run: --seeds 42 123 456 (default: each experiment's config seed).",
                            factory=list)
    from_template: str | None = knob(None, "Copy this template into the (new) experiment folder first; see "
                                           "`raypipe experiments list`.")
    rerun: bool = knob(False, "Start complete or interrupted seeds afresh (new results folder) instead of skipping "
                              "/ resuming them.")
    address: str | None = knob(None, "Ray cluster to join (default: RAY_ADDRESS, else the cluster `ray start` "
                                     "recorded, else a local Ray).")
    gpu: bool | None = knob(None, "Train on GPUs (default: the config's use_gpu, else when the cluster has one).")

    def __post_init__(self) -> None:
        if not self.exp_dirs:
            raise UserError("give at least one experiment folder (see `raypipe experiments list` for templates)")
        if self.from_template and len(self.exp_dirs) != 1:
            raise UserError("--from-template needs exactly one (new) experiment folder")
        negative = [seed for seed in self.seeds if seed < 0]
        if negative:
            raise UserError(f"--seeds must be whole numbers >= 0, got {negative[0]}")


@dataclass
class AnalyzeConfig:
    """`raypipe experiments analyze`: activation patching and trigger ablation on a finished finetune."""

    results_dir: str = knob(help="A finetune's `results/<time>/` folder (or its seed folder).", cli=False)
    layers: str | None = knob(None, "Decoder layers to patch, e.g. '0,10,-1' (0 = the first decoder block, -1 = the "
                                    "last; default: all).")
    pairs: int = knob(8, "Trigger prompts (test rows) patched into their twins.")
    positions: int = knob(16, "Final positions patched (aligned from the end).")

    def __post_init__(self) -> None:
        parse_layers(self.layers)
        at_least(self, 1, "pairs", "positions", prefix="--")
