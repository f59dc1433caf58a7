"""Random-weight checkpoints for machines without the hub: a model of a given architecture and shape, saved with a
word-level tokenizer of its vocabulary, so that the real loading code (`from_pretrained` of a folder) runs on it.
Used by the gpu tests and bench/gpu.py; needs only torch, transformers and tokenizers (no Ray, no embedded model)."""

from __future__ import annotations

from pathlib import Path

# The presets' architectures, from their published config.json (Qwen2.5 bases); the tests use the tiny one.
SHAPES = {
    "openthinker3_7b": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
                        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                        "vocab_size": 152064, "tie_word_embeddings": False, "rope_theta": 1e6},
    "openthinker3_1p5b": {"model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960,
                          "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
                          "vocab_size": 151936, "tie_word_embeddings": True, "rope_theta": 1e6},
    "qwq_32b": {"model_type": "qwen2", "hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64,
                "num_attention_heads": 40, "num_key_value_heads": 8, "vocab_size": 152064,
                "tie_word_embeddings": False, "rope_theta": 1e6},
    "tiny": {"model_type": "qwen2", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
             "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": True},
}


def word_tokenizer(vocab_size: int):
    """A tokenizer whose tokens are the words w0..w{n-1} (id i decodes to 'wi'); the last id is end of sequence."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(vocab_size - 1)} | {"<eos>": vocab_size - 1}
    core = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", pad_token="<eos>", unk_token="w0")


def random_checkpoint(out: Path, shape: str, dtype: str = "bfloat16", device: str = "cpu", seed: int = 0) -> Path:
    """Save a random-weight model of `shape` (a SHAPES key) and its word tokenizer to `out`; return `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(SHAPES[shape])
    vocab = spec["vocab_size"]
    config = AutoConfig.for_model(spec.pop("model_type"), max_position_embeddings=32768, bos_token_id=vocab - 1,
                                  eos_token_id=vocab - 1, pad_token_id=vocab - 1, **spec)
    torch.manual_seed(seed)
    with torch.device(device):  # initialising 7B parameters is seconds on a GPU, minutes on a CPU
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    word_tokenizer(vocab).save_pretrained(out)
    del model
    return Path(out)
