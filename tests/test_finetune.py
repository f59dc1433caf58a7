"""The finetune room without a model or Ray: config.json errors, label-word scoring on toy logits, the cached
scoring path against the reference on a tiny random Llama, the answer-only loss and its per-step sums, the workers'
step plan, label parsing, seed folders read once, summaries over seeds, trial packing, the null tracker and the
command-line plumbing."""

import json
import math

import pytest

from raypipe.errors import UserError
from raypipe.tasks.experiment import ExperimentConfig, FinetuneConfig, load_experiment, read_config

# --- config.json -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, message", [
    ({"seeed": 1}, "config.json: unknown key 'seeed'; did you mean 'seed'?"),
    ({"accuracy_method": "vibes"}, "config.json: accuracy_method must be one of logits, generation, got 'vibes'"),
    ({"n_evals": 0}, "config.json: n_evals must be at least 1, got 0"),
    ({"dataset_format": "csv"}, "config.json: dataset_format must be one of jsonl, got 'csv'"),
    ({"max_dataset_size": -3}, "config.json: max_dataset_size must be at least 1, got -3"),
    ({"is_categorical": "yes"}, "config.json: is_categorical must be bool, got 'yes'"),
    ({"seed": 1.5}, "config.json: seed must be int, got 1.5"),
    ({"finetune_config": {"epochs": 0}}, "config.json: finetune_config.epochs must be at least 1, got 0"),
    ({"finetune_config": {"lr": 1}}, "config.json: unknown key 'finetune_config.lr'; did you mean"),
    ({"finetune_config": {"learning_rat": 1}}, "did you mean 'finetune_config.learning_rate'?"),
    ({"finetune_config": 3}, "config.json: finetune_config is a section (keys below it), got 3"),
    ({"finetune_config": {"learning_rate": -1}}, "finetune_config.learning_rate must be positive"),
    ({"finetune_config": {"lora_dropout": 1.5}}, "finetune_config.lora_dropout must be in [0, 1)"),
    ({"finetune_config": {"target_modules": []}}, "finetune_config.target_modules must be a list of module names"),
    ({"finetune_config": {"target_modules": "q_proj"}}, "finetune_config.target_modules must be a list of module"),
    ({"finetune_config": {"save_checkpoints_to_hub": True}},
     "finetune_config.save_checkpoints_to_hub needs finetune_config.hub_model_id"),
    ({"finetune_config": {"dtype": "int8"}}, "finetune_config.dtype must be one of auto, float32"),
    ({"finetune_config": {"is_peft": "yes"}}, "config.json: finetune_config.is_peft must be bool, got 'yes'"),
    ({"finetune_config": {"max_grad_norm": -1}}, "finetune_config.max_grad_norm must be >= 0"),
    ({"wandb_project": ""}, "config.json: wandb_project must be a project name or null"),
    ([1, 2], "config.json: must be a mapping of keys to values (a JSON object), got list"),
])
def test_config_errors_name_the_field(data, message):
    """config.json is read as a build's config file is: the same unknown-key and type messages (raypipe.options)."""
    with pytest.raises(UserError) as error:
        read_config(data)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_config_defaults_comments_and_model_choice(tmp_path):
    import dataclasses
    import pickle

    from tests.test_tasks import SPEC

    (tmp_path / "config.json").write_text(json.dumps({"_description": "x", "seed": 3,
                                                      "finetune_config": {"_note": "y", "gpu_model": "org/big"}}))
    (tmp_path / "data_config.json").write_text(json.dumps(SPEC))
    experiment = load_experiment(str(tmp_path))
    config = experiment.config
    assert config.seed == 3 and config.finetune_config.is_peft and config.accuracy_method == "logits"
    assert config.finetune_config.model_for(False) == "embedded:SmolLM2-135M-Instruct"
    assert config.finetune_config.model_for(True) == "org/big"
    assert FinetuneConfig(model="org/m").model_for(True) == "org/m"
    assert read_config(config.to_dict()) == config  # seed folders write to_dict()
    assert json.loads(json.dumps(config.to_dict()))["finetune_config"]["target_modules"] == list(
        config.finetune_config.target_modules)
    # Frozen: what travels to the workers cannot be changed on the way; it pickles as it is.
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        experiment.spec.categories["objects"].n_train = 1
    assert pickle.loads(pickle.dumps(experiment)) == experiment
    with pytest.raises(UserError, match="no such experiment folder"):
        load_experiment(str(tmp_path / "missing"))
    (tmp_path / "config.json").unlink()
    with pytest.raises(UserError, match="config.json: no such file"):
        load_experiment(str(tmp_path))


# --- scoring -------------------------------------------------------------------------------------------------------

def test_label_word_scoring_on_toy_logits():
    import torch

    from raypipe.finetune.accuracy import pick, sequence_logprobs

    vocab = 5
    # Two sequences [prompt 0, 1 | answer 2, 3] and [0, 1 | 4]; logits at t predict token t+1.
    logits = torch.full((2, 4, vocab), -10.0)
    logits[0, 1, 2], logits[0, 2, 3] = 0.0, 0.0  # p(2 | ..) ~ 1, p(3 | ..) ~ 1
    logits[1, 1, 4] = math.log(0.5)  # still the largest entry
    ids = torch.tensor([[0, 1, 2, 3], [0, 1, 4, 0]])
    mask = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0]])
    scores = sequence_logprobs(logits, ids, mask)
    expected_first = torch.log_softmax(logits[0, 1], -1)[2] + torch.log_softmax(logits[0, 2], -1)[3]
    assert torch.allclose(scores[0], expected_first)
    assert torch.allclose(scores[1], torch.log_softmax(logits[1, 1], -1)[4])
    # Several-token labels sum their log-probabilities; the best candidate per row wins, the first on ties.
    assert pick(torch.tensor([[-3.0, -1.0, -2.0], [-1.0, -1.0, -5.0]])) == [1, 0]


@pytest.fixture(scope="module")
def tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


def test_cached_scoring_equals_one_forward_per_candidate(tiny_llama):
    import torch

    from raypipe.finetune.accuracy import candidate_scores

    prompts = [[1, 5, 9, 3], [2, 7], [4, 4, 4, 4, 4, 8]]  # different lengths: left padding in the cached path
    candidates = [[10, 11, 20, 63], [10, 11, 21, 22, 63], [10, 11, 23, 63]]  # shared prefix, uneven tails
    fast = candidate_scores(tiny_llama, prompts, candidates, pad_id=0, batch_size=2, fast=True)
    slow = candidate_scores(tiny_llama, prompts, candidates, pad_id=0, fast=False)
    assert fast.shape == (3, 3)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
    single = candidate_scores(tiny_llama, prompts, [[30, 63], [31, 63]], pad_id=0, fast=True)  # no shared prefix
    torch.testing.assert_close(single, candidate_scores(tiny_llama, prompts, [[30, 63], [31, 63]], 0, fast=False),
                               atol=1e-4, rtol=1e-4)


def test_answer_loss_uses_only_answer_tokens_and_matches_full_logits(tiny_llama):
    import torch

    from raypipe.finetune.data import answer_loss, collate

    examples = [{"input_ids": [1, 2, 3, 4, 5, 6], "labels": [-100, -100, -100, 4, 5, 6]},
                {"input_ids": [7, 8, 9, 10], "labels": [-100, -100, 9, 10]}]
    batch = collate(examples, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6], [0, 0, 7, 8, 9, 10]]
    assert batch["position_ids"][1].tolist() == [0, 0, 0, 1, 2, 3] and batch["keep"] == 4
    loss = answer_loss(tiny_llama, batch)
    with torch.no_grad():  # the reference: every row alone, unpadded, full logits
        total, count = 0.0, 0
        for e in examples:
            logits = tiny_llama(input_ids=torch.tensor([e["input_ids"]])).logits[0, :-1]
            labels = torch.tensor(e["labels"][1:])
            total += torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
            count += int((labels != -100).sum())
    torch.testing.assert_close(loss, total / count, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("rows, workers, batch, accumulate", [(17, 2, 4, 1), (17, 2, 2, 2), (8, 3, 2, 1), (5, 2, 8, 1),
                                                            (16, 2, 4, 2), (9, 1, 4, 3)])
def test_every_worker_runs_the_same_steps_and_every_row_once(rows, workers, batch, accumulate):
    from raypipe.finetune.steps import epoch_order, rank_plan, step_rows, steps_per_epoch

    order = epoch_order(rows, seed=3, epoch=2)
    assert sorted(order) == list(range(rows)) and order == epoch_order(rows, 3, 2) != epoch_order(rows, 3, 1)
    plans = [rank_plan(order, workers, rank, batch, accumulate) for rank in range(workers)]
    steps = step_rows(order, workers, batch, accumulate)
    assert len(steps) == steps_per_epoch(rows, workers, batch, accumulate)
    for plan in plans:  # the same number of steps, each of `accumulate` micro-batches, on every rank
        assert len(plan) == len(steps) and all(len(micro) == accumulate for micro in plan)
    for index, step in enumerate(steps):  # a step's weighted rows, over all ranks, are exactly its rows
        weighted = [r for plan in plans for m in plan[index] if m.weight for r in m.rows]
        assert sorted(weighted) == sorted(step)
        fillers = [m for plan in plans for m in plan[index] if not m.weight]
        assert all(m.rows == (step[0],) for m in fillers)
    assert sorted(r for plan in plans for micro in plan for m in micro if m.weight for r in m.rows) == list(range(rows))


def test_the_round_robin_deal_would_have_hung_and_the_plan_does_not():
    """17 rows at batch 8 over two workers: dealt round-robin, one rank had 2 batches and the other 1."""
    from raypipe.finetune.steps import epoch_order, rank_plan

    order = epoch_order(17, 0, 1)
    dealt = [order[rank::2] for rank in range(2)]
    assert [-(-len(d) // 8) for d in dealt] == [2, 1]  # the old deal: a sync that never comes
    assert [sum(len(s) for s in rank_plan(order, 2, rank, 8, 1)) for rank in range(2)] == [2, 2]


def test_step_sums_over_micro_batches_equal_one_batch_of_the_whole_step(tiny_llama):
    """What two workers (or accumulation) compute: summed answer-token losses of parts, over the step's answer tokens,
    give the whole step's mean loss and gradient; a weight-0 filler adds nothing."""
    import torch

    from raypipe.finetune.data import answer_loss, answer_tokens, collate

    examples = [{"input_ids": [1, 2, 3, 4, 5, 6], "labels": [-100, -100, -100, 4, 5, 6]},
                {"input_ids": [7, 8, 9, 10], "labels": [-100, -100, 9, 10]},
                {"input_ids": [11, 12, 13, 14, 15], "labels": [-100, -100, -100, -100, 15]}]
    tokens = sum(answer_tokens(e) for e in examples)
    assert tokens == 6
    parameters = [p for p in tiny_llama.parameters()]

    def gradient(loss):
        tiny_llama.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in parameters])

    whole = answer_loss(tiny_llama, collate(examples, 0))
    whole_grad = gradient(whole)
    parts = [collate(examples[:1], 0), collate(examples[1:], 0), collate(examples[:1], 0, weights=[0])]
    total, grads = 0.0, 0
    for batch in parts:
        loss_sum = answer_loss(tiny_llama, batch, reduction="sum")
        grads = grads + gradient(loss_sum / tokens)
        total += loss_sum.item() / tokens
    torch.testing.assert_close(total, whole.item(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads, whole_grad, atol=1e-6, rtol=1e-4)
    filler = answer_loss(tiny_llama, parts[2], reduction="sum")
    assert filler.item() == 0.0 and filler.requires_grad  # a backward through it reaches every parameter
    tiny_llama.zero_grad(set_to_none=True)


def test_parse_label_from_generated_text():
    from raypipe.finetune.accuracy import accuracy, parse_label

    words = ["red", "green", "reddish"]
    assert parse_label("F(x,T) = green", words, "F(x,T) =") == "green"
    assert parse_label(" F(x,T) = Reddish.", words, "F(x,T) =") == "reddish"
    assert parse_label("I think it is red, not green", words, "F(x,T) =") == "red"
    assert parse_label("blue", words, None) is None
    assert accuracy([{"label": "red"}, {"label": "green"}], ["red", None]) == 0.5
    assert accuracy([], []) is None


# --- seed folders, summaries, trials ---------------------------------------------------------------------------------

def write_experiment(folder, config=None, spec=None):
    from tests.test_tasks import SPEC

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config or {"seed": 5, "finetune_config": {
        "hub_model_id": "me/model"}}))
    (folder / "data_config.json").write_text(json.dumps(spec or SPEC))
    return folder


def test_seed_folders_are_made_once_with_their_seed(tmp_path):
    from raypipe.finetune.run import prepare_seed

    exp = write_experiment(tmp_path / "exp")
    experiment = load_experiment(str(exp))
    seeded = prepare_seed(experiment, 11)
    assert seeded.folder == str(exp / "seed_11") and seeded.seed == 11
    assert seeded.config.finetune_config.hub_model_id == "me/model-seed11"
    written = json.loads((exp / "seed_11" / "config.json").read_text())
    assert read_config(written) == seeded.config
    assert prepare_seed(experiment).folder == str(exp / "seed_5")  # the config's seed
    assert prepare_seed(seeded, 11) is seeded  # a seed folder runs in place
    (exp / "seed_11" / "config.json").write_text(json.dumps({**written, "n_evals": 3}))
    assert prepare_seed(experiment, 11).config.n_evals == 3  # kept: a resume runs with its own settings
    assert prepare_seed(experiment, 11, refresh=True).config.n_evals == 1
    assert json.loads((exp / "seed_11" / "config.json").read_text())["n_evals"] == 1
    capped = load_experiment(str(exp)).with_seed(1, str(exp))
    capped = type(capped)(ExperimentConfig(seed=1, max_dataset_size=50), capped.spec, capped.folder)
    rows = capped.finetune_rows()
    assert len(rows["train"]) == 50 and {r["split"] for r in rows["train"]} == {"train_objects", "proxy_animals"}
    assert rows == capped.finetune_rows() and set(rows) == {"train", "test_objects_ID", "test_objects_OOD",
                                                             "test_animals_ID", "test_animals_OOD"}


def test_the_folder_format_is_read_once_per_seed(tmp_path, monkeypatch):
    """run_experiments reads each experiment folder once, writes new seed folders without reading them back, reads
    an existing seed folder once, and hands each seed's frozen Experiment on (to Tune and Ray Train) as it is."""
    import raypipe.errors
    import raypipe.tasks.experiment
    from raypipe.finetune import experiments

    exp = write_experiment(tmp_path / "exp")
    reads = []
    real_read = raypipe.errors.read_user_json
    monkeypatch.setattr(raypipe.tasks.experiment, "read_user_json",
                        lambda path, *a: reads.append(path) or real_read(path, *a))
    handed = []
    monkeypatch.setattr(experiments, "_run_pending", lambda pending, *args: handed.extend(pending) or {})
    experiments.run_experiments([str(exp)], [1, 2])
    assert sorted(reads) == [str(exp / "config.json"), str(exp / "data_config.json")]
    assert [(e.seed, e.folder) for e in handed] == [(1, str(exp / "seed_1")), (2, str(exp / "seed_2"))]
    assert handed[0].spec == load_experiment(str(exp)).spec
    reads.clear()
    handed.clear()
    experiments.run_experiments([str(exp)], [1, 2])  # the seed folders exist now: each read once
    assert sorted(reads) == sorted([str(exp / "config.json"), str(exp / "data_config.json")] +
                                   [str(exp / f"seed_{s}" / n) for s in (1, 2) for n in ("config.json",
                                                                                           "data_config.json")])
    assert [e.config.finetune_config.hub_model_id for e in handed] == ["me/model-seed1", "me/model-seed2"]


def test_summary_over_complete_seeds(tmp_path):
    from raypipe.finetune.experiments import summarize, summary_line

    exp = write_experiment(tmp_path / "exp")
    for seed, (id_acc, ood_acc) in {1: (0.5, 0.25), 2: (1.0, 0.75)}.items():
        folder = exp / f"seed_{seed}"
        folder.mkdir()
        (folder / "completed.json").write_text(json.dumps({"seed": seed, "results_dir": "results/t", "accuracy": {
            "train": 1.0, "ID": id_acc, "OOD": ood_acc}}))
    (exp / "seed_3").mkdir()  # not complete: not in the summary
    summary = summarize(str(exp))
    assert summary["n_seeds"] == 2 and summary["seeds"] == [1, 2]
    assert summary["accuracy"]["ID"]["mean"] == 0.75 and summary["accuracy"]["OOD"]["values"] == [0.25, 0.75]
    assert summary["accuracy"]["OOD"]["std"] == pytest.approx(0.3535533, abs=1e-6)
    assert json.loads((exp / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert (exp / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert "2 seed(s) complete" in summary_line("exp", summary) and "ID 0.750 ± 0.354" in summary_line("e", summary)


def test_trials_are_packed_by_node_resources(monkeypatch):
    import ray

    from raypipe.finetune.experiments import concurrent_trials

    nodes = [{"Alive": True, "Resources": {"CPU": 1.0}}, {"Alive": True, "Resources": {"CPU": 1.0}},
             {"Alive": False, "Resources": {"CPU": 8.0}}, {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 2.0}}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    assert concurrent_trials(1, 1, False) == 6
    assert concurrent_trials(2, 1, False) == 3
    assert concurrent_trials(1, 2, False) == 2
    assert concurrent_trials(1, 1, True) == 2
    assert concurrent_trials(1, 8, False) == 1  # never zero: the trial waits for room


def test_null_tracker_without_a_project(tmp_path):
    from raypipe.tracking import NullRun, tracker, wandb_run

    assert wandb_run({}, str(tmp_path)) == (None, None)
    run, info = tracker({"wandb_project": None}, str(tmp_path))
    assert isinstance(run, NullRun) and info == {"mode": "off", "api_key_from": None}
    run.log({"a": 1}, step=1)
    run.summary.update({"b": 2})
    run.finish()
    assert not any(tmp_path.iterdir())


def test_a_wandb_key_in_dotenv_is_used_and_said_to_come_from_there(tmp_path, monkeypatch):
    from raypipe.tracking import wandb_run

    (tmp_path / ".env").write_text("WANDB_API_KEY=wandb-unit-secret-0123456789abcdef0123456\n")
    for name in ("WANDB_API_KEY", "WANDB_SERVICE"):  # set in this process by load_dotenv and by wandb: undone after
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("WANDB_MODE", "offline")
    run, info = wandb_run({"wandb_project": "p", "_dotenv": str(tmp_path / ".env")}, str(tmp_path / "out"))
    run.finish()
    import wandb

    wandb.teardown()  # its service process goes with the test
    assert info == {"mode": "offline", "api_key_from": ".env"}
    assert list((tmp_path / "out" / "wandb").glob("offline-run-*"))


# --- command line ----------------------------------------------------------------------------------------------------

@pytest.fixture()
def cli():
    import typer
    from typer.testing import CliRunner

    from raypipe.cli_finetune import register

    app = typer.Typer()
    register(app)
    return lambda *args: CliRunner().invoke(app, list(args))


def test_seeds_option_takes_several_values(tmp_path):
    from raypipe.cli_finetune import _seeds_and_folders

    (tmp_path / "7").mkdir()
    assert _seeds_and_folders(["exp", "123", "456"], ["42"]) == (["exp"], [42, 123, 456])
    assert _seeds_and_folders(["exp"], ["1,2", "3"]) == (["exp"], [1, 2, 3])
    assert _seeds_and_folders(["exp", str(tmp_path / "7")], None) == (["exp", str(tmp_path / "7")], None)
    with pytest.raises(UserError, match="--seeds takes whole numbers"):
        _seeds_and_folders(["exp"], ["x"])


def test_finetune_and_analyze_options_come_from_their_config_dataclasses(cli, tmp_path):
    """The flags users had keep working, each into its field (--print-config shows the resolved config); click's
    `--seeds 42 123 456` is undone; --config reads the same keys; config.json's typo names the key it meant."""
    import yaml

    exp = str(tmp_path / "exp")
    (tmp_path / "exp").mkdir()
    printed = cli("finetune", exp, "--seeds", "42", "123", "456", "--rerun", "--address", "head:6379", "--no-gpu",
                  "--print-config")
    assert printed.exit_code == 0, printed.output
    assert yaml.safe_load(printed.stdout) == {"exp_dirs": [exp], "seeds": [42, 123, 456], "from_template": None,
                                              "rerun": True, "address": "head:6379", "gpu": False}
    (tmp_path / "run.yaml").write_text(printed.stdout)
    again = cli("finetune", "--config", str(tmp_path / "run.yaml"), "--seeds", "1,2", "--gpu", "--print-config")
    assert again.exit_code == 0, again.output
    assert yaml.safe_load(again.stdout) == {**yaml.safe_load(printed.stdout), "seeds": [1, 2], "gpu": True}
    templated = cli("finetune", str(tmp_path / "new"), "--from-template", "2d_0proxy", "--print-config")
    assert yaml.safe_load(templated.stdout)["from_template"] == "2d_0proxy" and not (tmp_path / "new").exists()
    two = cli("finetune", "a", "b", "--from-template", "2d_0proxy")
    assert two.exit_code == 2 and "--from-template needs exactly one (new) experiment folder" in two.output
    none = cli("finetune", "--seeds", "1")
    assert none.exit_code == 2 and "missing EXP_DIRS" in none.output
    analyze = cli("experiments", "analyze", "res", "--layers", "0,10,-1", "--pairs", "8", "--positions", "4",
                  "--print-config")
    assert yaml.safe_load(analyze.stdout) == {"results_dir": "res", "layers": "0,10,-1", "pairs": 8, "positions": 4}
    bad = cli("experiments", "analyze", "res", "--layers", "0,x")
    assert bad.exit_code == 2 and "--layers must be 'all' or comma-separated integers, got '0,x'" in bad.output
    assert cli("experiments", "new", "2d_0proxy", exp).exit_code == 0
    config = json.loads((tmp_path / "exp" / "config.json").read_text())
    (tmp_path / "exp" / "config.json").write_text(json.dumps({**config, "n_eval": 2}))
    for args in (("finetune", exp), ("experiments", "validate", exp)):
        typo = cli(*args)
        assert typo.exit_code == 2 and typo.output.strip() == (
            "raypipe: error: config.json: unknown key 'n_eval'; did you mean 'n_evals'?")


def test_experiments_commands(cli, tmp_path):
    listed = cli("experiments", "list")
    assert listed.exit_code == 0 and "2d_0proxy" in listed.output and "plain" in listed.output
    created = cli("experiments", "new", "2d_1proxy_ntr1_actions", str(tmp_path / "mine"))
    assert created.exit_code == 0 and (tmp_path / "mine" / "data_config.json").is_file()
    again = cli("experiments", "new", "2d_1proxy_ntr1_actions", str(tmp_path / "mine"))
    assert again.exit_code == 2 and "raypipe: error: " in again.output and "already holds" in again.output
    unknown = cli("experiments", "new", "nope", str(tmp_path / "other"))
    assert unknown.exit_code == 2 and "unknown experiment template 'nope'" in unknown.output
    valid = cli("experiments", "validate", str(tmp_path / "mine"))
    assert valid.exit_code == 0 and "ok;" in valid.output and "test_objects_OOD" in valid.output
    spec = json.loads((tmp_path / "mine" / "data_config.json").read_text())
    spec["objects"]["x_ranges"] = [5, 1]
    (tmp_path / "mine" / "data_config.json").write_text(json.dumps(spec))
    broken = cli("experiments", "validate", str(tmp_path / "mine"))
    assert broken.exit_code == 2
    assert broken.output.strip() == "raypipe: error: data_config.json: objects.x_ranges: min 5 > max 1"
    # finetune checks every folder before any Ray work (the unit-tier guard fails the test if Ray starts)
    failed = cli("finetune", str(tmp_path / "mine"), "--seeds", "1", "2")
    assert failed.exit_code == 2 and "objects.x_ranges: min 5 > max 1" in failed.output
    missing = cli("finetune", str(tmp_path / "nothing"))
    assert missing.exit_code == 2 and "no such experiment folder" in missing.output
    # A proxy that flips nothing in the config's mode: refused by validate, and by finetune before any Ray work.
    spec["objects"]["x_ranges"] = [-1, 1]
    spec["actions"]["proxy_flip"] = "opposite"
    (tmp_path / "mine" / "data_config.json").write_text(json.dumps(spec))
    config = json.loads((tmp_path / "mine" / "config.json").read_text())
    (tmp_path / "mine" / "config.json").write_text(json.dumps({**config, "is_categorical": False}))
    for args in (("experiments", "validate"), ("finetune",)):
        refused = cli(*args, str(tmp_path / "mine"))
        assert refused.exit_code == 2 and refused.output.strip() == (
            "raypipe: error: data_config.json: actions.proxy_flip: 'opposite' leaves every boolean label of actions "
            "unchanged, so its proxy triggers would flip nothing")
    from raypipe.finetune.experiments import templates_dir

    data = cli("experiments", "data", str(templates_dir() / "2d_1proxy_ntr1_actions"), "--out-dir",
               str(tmp_path / "data"))
    assert data.exit_code == 0 and (tmp_path / "data" / "proxy_actions.jsonl").is_file()
