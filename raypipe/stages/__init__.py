"""Pipeline stages: rollout (vLLM), label, prefill (Transformers). One stage a file, each a callable class."""
