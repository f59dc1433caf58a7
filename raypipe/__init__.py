"""raypipe: probe datasets from LLM hidden states and the model's own rollouts, on Ray; linear probes on them.

Importing raypipe is light: torch, vLLM, transformers and Ray are imported only inside the functions that need them.
"""

__version__ = "0.1.0"
