"""A finetune's log files, as the seed's logs/*.txt (console and file logging): each line goes to the console and
to results/<time>/logs/.

driver.txt     the driver's lines for this seed: each attempt, where it runs, how it ended
worker_<r>.txt Ray Train worker r's lines: model, rows, steps, every epoch, evaluations, hub pushes, a failure's
               traceback
A rerun of an interrupted seed appends to the same files, so one file tells the whole run.
"""

from __future__ import annotations

import logging
import os
import sys

LOG_DIR = "logs"


def open_log(results_dir: str, name: str) -> logging.Logger:
    """A logger writing `results_dir/logs/<name>.txt` (appended, timestamped) and the console (the line alone)."""
    folder = os.path.join(results_dir, LOG_DIR)
    os.makedirs(folder, exist_ok=True)
    logger = logging.getLogger(f"raypipe.finetune.run.{os.path.abspath(folder)}.{name}")
    close_log(logger)  # a second attempt in the same process starts clean
    logger.setLevel(logging.INFO)
    logger.propagate = False
    to_file = logging.FileHandler(os.path.join(folder, f"{name}.txt"), mode="a", encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    to_console = logging.StreamHandler(sys.stdout)
    to_console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(to_file)
    logger.addHandler(to_console)
    return logger


def close_log(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
