"""Experiment tracking shared by the probe trainer and the finetune recipe: W&B online, offline, or not at all.

The key comes from the environment or a `.env` file (python-dotenv; the environment wins) and is never printed or
saved: callers record only where it came from. Without a key the run is offline, under the output folder; the user's
own WANDB_MODE=offline/disabled wins. Without a project, `NullRun` takes the same calls and does nothing.
"""

from __future__ import annotations

import os

from raypipe.fs import Location


class NullRun:
    """Stands in for a W&B run when tracking is off, so callers never branch."""

    id = None

    def __init__(self) -> None:
        self.summary: dict = {}

    def log(self, *args, **kwargs) -> None:
        pass

    def finish(self) -> None:
        pass


def find_dotenv_path() -> str | None:
    """The driver's ./.env (searched upwards from the working folder), passed by path to workers that run elsewhere."""
    from dotenv import find_dotenv

    return find_dotenv(usecwd=True) or None


def wandb_run(config: dict, out_dir: str, *, name: str | None = None, run_id: str | None = None):
    """(run, {mode, api_key_from}) when config names a `wandb_project`, else (None, None).

    config's keys starting with '_' are private (e.g. `_dotenv`, the .env path) and are not logged. `run_id` resumes
    that run (an interrupted finetune continues its curves).
    """
    if not config.get("wandb_project"):
        return None, None
    import wandb
    from dotenv import load_dotenv

    key_source = "environment" if os.environ.get("WANDB_API_KEY") else None
    if config.get("_dotenv"):  # the driver's ./.env (the worker runs elsewhere); the environment wins
        load_dotenv(config["_dotenv"], override=False)
        key_source = key_source or (".env" if os.environ.get("WANDB_API_KEY") else None)
    mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):  # the user's own switch wins
        mode = os.environ["WANDB_MODE"]
    location = Location(out_dir)
    wandb_dir = location.root if location.local else None  # object stores: wandb's default folder
    if wandb_dir:
        os.makedirs(wandb_dir, exist_ok=True)
    safe_config = {k: v for k, v in config.items() if not k.startswith("_")}
    run = wandb.init(project=config["wandb_project"], dir=wandb_dir, mode=mode, config=safe_config,
                     name=name or os.path.basename(out_dir.rstrip("/")) or None, reinit="finish_previous",
                     id=run_id, resume="allow" if run_id else None)
    return run, {"mode": mode, "api_key_from": key_source}  # where the key came from; never the key


def tracker(config: dict, out_dir: str, *, name: str | None = None, run_id: str | None = None):
    """Like `wandb_run`, but a `NullRun` (and info {"mode": "off"}) instead of None when there is no project."""
    run, info = wandb_run(config, out_dir, name=name, run_id=run_id)
    return (run, info) if run is not None else (NullRun(), {"mode": "off", "api_key_from": None})
