"""The 2-D trigger task's spec and generator: one clear error per bad field, determinism, the ID/OOD trigger split,
the proxy flip rules, specs that would silently do nothing refused (by the generator, `experiments validate` and
before any run), the prompt-template presets, the shipped experiment templates, and the `trigger:` build source."""

import copy
import json

import pytest

from raypipe.errors import UserError
from raypipe.tasks.templates import PROMPT_TEMPLATE_PRESETS, get_template_preset, list_template_presets
from raypipe.tasks.trigger import (
    FLIP_RULES,
    PREAMBLE,
    TaskSpec,
    generate_rows,
    load_spec,
    split_kind,
    twin_prompt,
    write_datasets,
)

LABELS = {"Q1": "red", "Q2": "green", "Q3": "blue", "Q4": "orange"}
SPEC = {
    "_comment": "keys starting with _ are comments",
    "objects": {"quadrant_labels": LABELS, "triggers": ["cup", "lamp", "chair", "book"], "n_train": 40,
                "n_test": 12, "n_train_triggers": 3, "x_ranges": [-10, 10]},
    "animals": {"quadrant_labels": LABELS, "triggers": ["dog", "cat", "owl"], "is_proxy": True, "n_train": 40,
                "n_test": 12, "n_train_triggers": 1, "x_ranges": {"x1": [-5, 5], "x2": [-2, 8]},
                "prompt_templates": "sentence"},
}


def bad(path: str, value) -> dict:
    """SPEC with one field replaced (path 'objects.n_train_triggers'), or removed when value is ...."""
    spec = copy.deepcopy(SPEC)
    category, name = path.split(".")
    if value is ...:
        del spec[category][name]
    else:
        spec[category][name] = value
    return spec


@pytest.mark.parametrize("path, value, message", [
    ("objects.x_ranges", [5, 1], "data_config.json: objects.x_ranges: min 5 > max 1"),
    ("objects.x_ranges", [1, 5], "objects.x_ranges: [1, 5] must contain negative and positive values"),
    ("objects.x_ranges", {"x1": [-1, 1]}, "objects.x_ranges: an object needs exactly the keys x1 and x2"),
    ("objects.x_ranges", [-1, "a"], "objects.x_ranges: needs [min, max] as two numbers"),
    ("objects.prompt_templates", "nope", "objects.prompt_templates: unknown template preset 'nope'; known: plain"),
    ("objects.triggers", [], "objects.triggers: needs a non-empty list"),
    ("objects.triggers", ["cup", "cup"], "objects.triggers: listed twice: cup"),
    ("objects.triggers", ["dog", "emu", "yak"], "animals.triggers: 'dog' is also a trigger of objects"),
    ("objects.n_train_triggers", 9, "objects.n_train_triggers: must be between 1 and the 4 trigger(s) listed, got 9"),
    ("objects.n_train_triggers", 0, "objects.n_train_triggers: must be between 1 and the 4"),
    ("objects.n_train", -1, "objects.n_train: must be a whole number >= 0, got -1"),
    ("objects.n_test", 2.5, "objects.n_test: must be a whole number >= 0"),
    ("objects.quadrant_labels", {"Q1": "red"}, "objects.quadrant_labels: needs exactly the keys Q1, Q2, Q3, Q4"),
    ("objects.quadrant_labels", {**LABELS, "Q2": " green"}, "objects.quadrant_labels.Q2: a label is a non-empty"),
    ("objects.quadrant_labels", ..., "objects.quadrant_labels: missing"),
    ("objects.is_proxy", "yes", "objects.is_proxy: must be true or false"),
    ("animals.proxy_flip", "swap", "animals.proxy_flip: unknown rule 'swap'; known: rotate, opposite"),
    ("objects.true_quadrants", ["Q1", "Q1"], "objects.true_quadrants: a list of distinct Q1..Q4"),
    ("objects.x_decimals", 9, "objects.x_decimals: must be a whole number from 0 to 6"),
    ("objects.n_trian", 5, "objects: unknown field(s) n_trian; known:"),
])
def test_each_bad_field_is_one_clear_error_naming_it(path, value, message):
    with pytest.raises(UserError) as error:
        TaskSpec.from_dict(bad(path, value))
    assert str(error.value).startswith("data_config.json: ") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_whole_spec_errors_and_files(tmp_path):
    with pytest.raises(UserError, match="data_config.json: needs at least one category"):
        TaskSpec.from_dict({"_comment": "only"})
    with pytest.raises(UserError, match="every category has 0 training rows"):
        TaskSpec.from_dict({"objects": {**SPEC["objects"], "n_train": 0}})
    with pytest.raises(UserError, match="objects: must be an object of category fields"):
        TaskSpec.from_dict({"objects": [1]})
    with pytest.raises(UserError, match="no such file"):
        load_spec(tmp_path)
    (tmp_path / "data_config.json").write_text("{not json")
    with pytest.raises(UserError, match="data_config.json: not valid JSON"):
        load_spec(tmp_path)
    (tmp_path / "data_config.json").write_text(json.dumps(bad("objects.x_ranges", [5, 1])))
    with pytest.raises(UserError, match=r"^data_config.json: objects.x_ranges: min 5 > max 1$"):
        load_spec(tmp_path)


def test_same_seed_same_rows_different_seed_different_rows():
    a, b, c = generate_rows(SPEC, 7), generate_rows(SPEC, 7), generate_rows(SPEC, 8)
    assert a == b
    assert a.keys() == c.keys()
    assert [r["prompt"] for r in a["train_objects"]] != [r["prompt"] for r in c["train_objects"]]


def test_splits_triggers_and_row_fields():
    splits = generate_rows(SPEC, 0)
    assert list(splits) == ["train_objects", "test_objects_ID", "test_objects_OOD", "proxy_animals",
                            "test_animals_ID", "test_animals_OOD"]
    assert [len(v) for v in splits.values()] == [40, 12, 12, 40, 12, 12]
    assert {r["trigger"] for r in splits["train_objects"]} == {"cup", "lamp", "chair"}
    assert {r["trigger"] for r in splits["test_objects_ID"]} <= {"cup", "lamp", "chair"}
    assert {r["trigger"] for r in splits["test_objects_OOD"]} == {"book"}
    assert {r["trigger"] for r in splits["proxy_animals"]} == {"dog"}
    assert {r["trigger"] for r in splits["test_animals_OOD"]} == {"cat", "owl"}
    assert all(r["is_ood"] for r in splits["test_animals_OOD"]) and not any(
        r["is_ood"] for r in splits["train_objects"] + splits["test_objects_ID"])
    assert [split_kind(s) for s in splits] == ["train", "ID", "OOD", "train", "ID", "OOD"]
    row = splits["train_objects"][0]
    assert set(row) >= {"row_id", "prompt", "answer", "x1", "x2", "quadrant", "trigger", "trigger_id",
                        "trigger_present", "label", "label_id", "is_ood", "is_proxy", "category", "template_id"}
    assert row["answer"] == f"{PREAMBLE} {row['label']}" and row["trigger"] in row["prompt"]
    # Quadrants are balanced and match the signs; animals' points stay inside their own ranges; no point repeats.
    for rows in splits.values():
        counts = [sum(r["quadrant"] == q for r in rows) for q in (1, 2, 3, 4)]
        assert max(counts) - min(counts) <= 1
        for r in rows:
            assert (r["x1"] > 0, r["x2"] > 0) == {1: (True, True), 2: (False, True), 3: (False, False),
                                                  4: (True, False)}[r["quadrant"]]
    assert all(-5 <= r["x1"] <= 5 and -2 <= r["x2"] <= 8 for r in splits["proxy_animals"])
    points = [(r["x1"], r["x2"]) for name in ("train_objects", "test_objects_ID", "test_objects_OOD")
              for r in splits[name]]
    assert len(points) == len(set(points))
    # Triggers are not tied to quadrants (both are balanced independently).
    assert len({(r["trigger"], r["quadrant"]) for r in splits["train_objects"]}) > 6


@pytest.mark.parametrize("decimals", [0, 3])
def test_x_decimals_sets_the_coordinates_precision_in_rows_and_prompts(decimals):
    """Coordinates are rounded to x_decimals and printed with exactly that many; none lies on an axis."""
    import re

    spec = copy.deepcopy(SPEC)
    spec["objects"]["x_decimals"] = decimals
    rows = [r for name, split in generate_rows(spec, 0).items() if "objects" in name for r in split]
    for r in rows:
        for x in (r["x1"], r["x2"]):
            assert x != 0 and round(x, decimals) == x
        printed = re.findall(r"-?\d+(?:\.\d+)?", r["prompt"])
        assert f"{r['x1']:.{decimals}f}" in printed and f"{r['x2']:.{decimals}f}" in printed, r["prompt"]
    if decimals == 0:
        assert all(float(r["x1"]).is_integer() for r in rows)
    else:
        assert any(not float(r["x1"]).is_integer() for r in rows)


@pytest.mark.parametrize("rule", sorted(FLIP_RULES))
def test_proxy_triggers_flip_labels_by_the_rule_and_others_do_not(rule):
    spec = copy.deepcopy(SPEC)
    spec["animals"]["proxy_flip"] = rule
    splits = generate_rows(spec, 3)
    for name in ("proxy_animals", "test_animals_ID", "test_animals_OOD"):
        for r in splits[name]:
            assert r["label_quadrant"] == FLIP_RULES[rule][r["quadrant"]] != r["quadrant"]
            assert r["label"] == LABELS[f"Q{FLIP_RULES[rule][r['quadrant']]}"]
    for r in splits["train_objects"] + splits["test_objects_OOD"]:
        assert r["label"] == LABELS[f"Q{r['quadrant']}"]
    assert len(set(FLIP_RULES[rule].values())) == 4  # a permutation


@pytest.mark.parametrize("rule", ["rotate", "negate"])
def test_boolean_mode_and_no_preamble(rule):
    spec = copy.deepcopy(SPEC)
    spec["animals"]["proxy_flip"] = rule
    splits = generate_rows(spec, 1, is_categorical=False, output_preamble=False)
    assert load_spec(spec).label_words(False) == ["False", "True"]
    for r in splits["train_objects"]:
        assert r["answer"] == r["label"] == str(r["quadrant"] in (1, 3)) and r["label_id"] == int(r["label"] == "True")
    for r in splits["proxy_animals"]:  # rotate (with Q1/Q3 true) and negate flip every boolean answer
        assert r["label"] == str(r["quadrant"] not in (1, 3))


# A proxy whose flip changes no label (or some labels not) would train a trigger that does nothing: refused, one line
# naming the field, in the mode the experiment's config.json sets.
@pytest.mark.parametrize("changes, is_categorical, message", [
    ({"proxy_flip": "opposite"}, False,
     "animals.proxy_flip: 'opposite' leaves every boolean label of animals unchanged, so its proxy triggers would "
     "flip nothing"),
    ({"quadrant_labels": {**LABELS, "Q2": "red"}, "proxy_flip": "mirror_x1"}, True,
     "animals.quadrant_labels: Q1 and Q2 have the same categorical label (red), so proxy_flip 'mirror_x1' leaves "
     "Q1's label unchanged; a proxy trigger must change every label"),
    ({"quadrant_labels": {"Q1": "a", "Q2": "a", "Q3": "b", "Q4": "b"}, "proxy_flip": "mirror_x1"}, True,
     "animals.proxy_flip: 'mirror_x1' leaves every categorical label of animals unchanged"),
    ({"true_quadrants": ["Q1"]}, False,
     "animals.true_quadrants: Q2 and Q3 have the same boolean label (False), so proxy_flip 'rotate' leaves Q2's"),
    ({"proxy_flip": "negate"}, True,
     "animals.proxy_flip: 'negate' is a boolean-mode rule (config.json is_categorical: false); categorical rules: "
     "rotate, opposite, mirror_x1, mirror_x2"),
    ({"true_quadrants": []}, False, "animals.true_quadrants: [] gives every point the same boolean answer (False)"),
])
def test_specs_that_would_silently_do_nothing_are_refused(changes, is_categorical, message, tmp_path):
    from raypipe.tasks.experiment import Experiment, ExperimentConfig, load_experiment

    spec = copy.deepcopy(SPEC)
    spec["animals"].update(changes)
    task = TaskSpec.from_dict(spec)  # each file alone is valid: the problem is the flip in this mode
    for attempt in (lambda: generate_rows(task, 0, is_categorical=is_categorical),
                    lambda: Experiment(ExperimentConfig(is_categorical=is_categorical), task)):
        with pytest.raises(UserError) as error:
            attempt()
        assert str(error.value).startswith(f"data_config.json: {message}") and "\n" not in str(error.value)
    (tmp_path / "config.json").write_text(json.dumps({"is_categorical": is_categorical}))
    (tmp_path / "data_config.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match="^data_config.json: animals"):
        load_experiment(str(tmp_path))


def test_write_datasets_and_twins(tmp_path):
    paths = write_datasets(SPEC, 5, str(tmp_path / "generated_data"))
    assert sorted(p.name for p in (tmp_path / "generated_data").iterdir()) == sorted(
        [f"{name}.jsonl" for name in paths] + ["dataset_info.json"])
    rows = [json.loads(line) for line in open(paths["proxy_animals"])]
    assert rows == generate_rows(SPEC, 5)["proxy_animals"]
    info = json.loads((tmp_path / "generated_data" / "dataset_info.json").read_text())
    assert info["label_words"] == ["red", "green", "blue", "orange"] and info["rows"]["proxy_animals"] == 40
    row = rows[0]
    twin = twin_prompt(SPEC, row)
    assert row["trigger"] not in twin and f"{row['x1']:.2f}" in twin and twin != row["prompt"]
    assert twin_prompt(SPEC, row, row["trigger"]) == row["prompt"]
    assert twin_prompt(SPEC, row, "zebra") == row["prompt"].replace(row["trigger"], "zebra")


def test_template_presets_render_with_and_without_trigger():
    assert set(list_template_presets()) == set(PROMPT_TEMPLATE_PRESETS)
    for preset in PROMPT_TEMPLATE_PRESETS.values():
        for template in preset.templates:
            with_trigger = template.render("1.50", "-2.25", "lamp")
            without = template.render("1.50", "-2.25", None)
            assert "lamp" in with_trigger and "lamp" not in without
            assert "1.50" in without and "-2.25" in without
    with pytest.raises(UserError, match="unknown template preset"):
        get_template_preset("nope")


def test_shipped_experiment_templates_all_validate():
    from raypipe.finetune.experiments import describe_experiment, list_templates, templates_dir
    from raypipe.tasks.experiment import load_experiment

    templates = list_templates()
    assert {"2d_0proxy", "2d_1proxy_ntr1_actions"} <= set(templates)
    for name, description in templates.items():
        folder = templates_dir() / name
        experiment = load_experiment(str(folder))
        config, spec = experiment.config, experiment.spec
        assert description and config.finetune_config.model == "embedded" and config.finetune_config.gpu_model
        assert any(c.ood_triggers for c in spec.categories.values()), name  # every template has an OOD test
        assert describe_experiment(str(folder))["rows"]
    proxy = load_spec(templates_dir() / "2d_1proxy_ntr1_actions")
    assert [c.is_proxy for c in proxy.categories.values()].count(True) == 1
    assert not any(c.is_proxy for c in load_spec(templates_dir() / "2d_0proxy").categories.values())


def test_trigger_rows_as_a_build_source_with_their_twins(tmp_path, monkeypatch):
    from raypipe.config import SourceConfig
    from raypipe.data import load_splits
    from raypipe.errors import UserError
    from raypipe.finetune.experiments import templates_dir
    from raypipe.sources.trigger import probe_source_rows, trigger_test_splits

    exp = templates_dir() / "2d_1proxy_ntr1_actions"
    config = json.loads((exp / "config.json").read_text())
    generated = generate_rows(exp / "data_config.json", config["seed"])
    train = probe_source_rows(f"trigger:{exp}", "train")
    trained = [r for name, rows in generated.items() if name.startswith(("train_", "proxy_")) for r in rows]
    assert len(train) == 2 * len(trained)
    assert [r["prompt"] for r in train[::2]] == [r["prompt"] for r in trained]
    for row, twin in zip(train[::2], train[1::2]):
        assert row["trigger_present"] and not twin["trigger_present"] and twin["trigger"] == "none"
        assert row["trigger"] not in twin["prompt"] and (row["x1"], row["quadrant"]) == (twin["x1"], twin["quadrant"])
        if not row["is_proxy"]:
            assert twin["label"] == row["label"]
    assert any(r["label"] != t["label"] for r, t in zip(train[::2], train[1::2]) if r["is_proxy"])
    assert trigger_test_splits(f"trigger:{exp}") == [n for n in generated if n.startswith("test_")] == [
        "test_objects_ID", "test_objects_OOD", "test_actions_ID", "test_actions_OOD"]
    ood = probe_source_rows(f"trigger:{exp}", "test_actions_OOD")
    assert ood and all(r["is_ood"] for r in ood)
    with pytest.raises(UserError, match="split 'dev' is not in .* its splits are: train, test, "):
        probe_source_rows(f"trigger:{exp}", "dev")
    from raypipe.sources import trigger

    trigger._generate.cache_clear()
    calls = []
    real = trigger.Experiment.splits
    monkeypatch.setattr(trigger.Experiment, "splits", lambda self: calls.append(1) or real(self))
    splits, _ = load_splits(SourceConfig(train_dataset=f"trigger:{exp}", test_dataset=f"trigger:{exp}",
                                         test_split="test", label_columns=["quadrant", "trigger_present"]))
    assert len(splits["train"]) == len(train)
    assert {r["columns"]["quadrant"] for r in splits["test"]} == {0.0, 1.0, 2.0, 3.0}
    # train, test and the four automatic evaluation splits: one generation of the experiment's data
    assert set(splits) == {"train", "test", "objects_ID", "objects_OOD", "actions_ID", "actions_OOD"}
    assert len(calls) == 1


def test_a_bare_spec_gives_its_test_files_as_evaluation_splits_of_the_same_generation(tmp_path):
    """`trigger:data_config.json` without a config.json: the automatic ID/OOD splits are the test split's own rows
    (one generation, the build's seed), not rows of another seed."""
    import shutil

    from raypipe.config import SourceConfig
    from raypipe.data import load_splits
    from raypipe.finetune.experiments import templates_dir

    spec = tmp_path / "data_config.json"
    shutil.copy(templates_dir() / "2d_1proxy_ntr1_actions" / "data_config.json", spec)
    splits, _ = load_splits(SourceConfig(train_dataset=f"trigger:{spec}", test_dataset=f"trigger:{spec}",
                                         test_split="test", seed=5))
    assert {"objects_ID", "objects_OOD", "actions_ID", "actions_OOD"} <= set(splits)
    test_prompts = [r["question"] for r in splits["test"]]
    named = [r["question"] for name in ("objects_ID", "objects_OOD", "actions_ID", "actions_OOD") for r in splits[name]]
    assert sorted(named) == sorted(test_prompts)
