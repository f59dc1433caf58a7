"""The prompt source registry: a spec's prefix picks its kind; each kind loads a split, offers the evaluation splits
a build gets from it unasked and seeds a build's splits; a mistyped kind is one line naming the kinds."""

import json

import pytest

from raypipe.errors import UserError
from raypipe.sources import DATASET, DEFAULT_SPEC, KINDS, PREFIXES, kind_of, load_split
from raypipe.sources.builtin import BuiltinSource
from raypipe.sources.dataset import SCHEMES, DatasetSource
from raypipe.sources.trigger import TriggerSource


@pytest.mark.parametrize("spec, kind", [
    ("builtin:arithmetic", BuiltinSource), ("builtin:geometry", BuiltinSource), ("trigger:runs/exp", TriggerSource),
    ("openai/gsm8k#main", DatasetSource), ("gsm8k", DatasetSource), ("data/x.jsonl", DatasetSource),
    ("/data/with:colon/x.parquet", DatasetSource), ("s3://bucket/x.parquet", DatasetSource),
])
def test_a_specs_prefix_picks_its_kind(spec, kind):
    assert isinstance(kind_of(spec), kind)


def test_the_kinds_prefixes_start_a_source_in_an_evaluation_split():
    assert set(KINDS) == {"builtin", "trigger"} and set(PREFIXES) == {*KINDS, *SCHEMES}


def test_an_unknown_prefix_is_one_line_listing_the_kinds():
    with pytest.raises(UserError) as error:
        load_split("builtn:arithmetic", "train", 8, 0)
    message = str(error.value)
    assert "\n" not in message and message.startswith("unknown prompt source kind 'builtn:' in 'builtn:arithmetic'")
    assert all(kind.usage in message for kind in (*KINDS.values(), DATASET))
    assert "builtin:arithmetic" in message and "trigger:EXP_DIR" in message and "a dataset (" in message


def test_a_file_named_like_a_prefix_is_a_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "v1:rows.jsonl").write_text(json.dumps({"prompt": "a"}) + "\n")
    assert kind_of("v1:rows.jsonl") is DATASET
    assert load_split("v1:rows.jsonl", "train", 0, 0).to_list() == [{"prompt": "a"}]


def test_the_builtin_kind_generates_other_rows_per_split_and_offers_none():
    builtin = kind_of(DEFAULT_SPEC)
    assert builtin.offered_splits(DEFAULT_SPEC, 3) == []
    assert [builtin.split_seed(3, offset) for offset in range(4)] == [3, 4, 5, 6]
    train = load_split(DEFAULT_SPEC, "train", 5, builtin.split_seed(3, 0)).to_list()
    test = load_split(DEFAULT_SPEC, "test", 5, builtin.split_seed(3, 1)).to_list()
    assert len(train) == len(test) == 5 and train != test
    assert train == load_split(DEFAULT_SPEC, "train", 5, 3).to_list()
    with pytest.raises(UserError, match=r"^unknown built-in prompt source 'builtin:geometry'; known: "
                                        r"builtin:arithmetic$"):
        load_split("builtin:geometry", "train", 5, 0)
    with pytest.raises(UserError, match=r"^builtin:arithmetic has no configs"):
        load_split(f"{DEFAULT_SPEC}#main", "train", 5, 0)


def test_the_dataset_kind_offers_no_splits_and_needs_no_seed(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(3)))
    dataset = kind_of(str(path))
    assert dataset.offered_splits(str(path), 0) == []
    assert {dataset.split_seed(7, offset) for offset in range(4)} == {7}
    assert load_split(str(path), "test", 0, 7).to_list() == load_split(str(path), "train", 0, 8).to_list()
    with pytest.raises(UserError, match=r"^cannot read .*missing\.jsonl: no such file or folder$"):
        load_split(str(tmp_path / "missing.jsonl"), "train", 0, 0)
    with pytest.raises(UserError, match=r"d\.jsonl has no configs"):
        load_split(f"{path}#main", "train", 0, 0)


def test_the_trigger_kind_offers_its_test_files_and_seeds_every_split_alike():
    from raypipe.finetune.experiments import templates_dir

    spec = f"trigger:{templates_dir() / '2d_1proxy_ntr1_actions'}"
    trigger = kind_of(spec)
    assert trigger.offered_splits(spec, 0) == [("objects_ID", "test_objects_ID"), ("objects_OOD", "test_objects_OOD"),
                                               ("actions_ID", "test_actions_ID"), ("actions_OOD", "test_actions_OOD")]
    assert {trigger.split_seed(5, offset) for offset in range(4)} == {5}  # one generation, its splits by name
    rows = load_split(spec, "test_actions_OOD", 0, 0)
    assert len(rows) and all(rows["is_ood"]) and set(rows["trigger_present"]) == {True, False}
    with pytest.raises(UserError, match="has no configs"):
        load_split(f"{spec}#main", "train", 0, 0)
    with pytest.raises(UserError, match=r"^trigger:.*: no data_config\.json at "):
        load_split("trigger:/nonexistent/experiment", "train", 0, 0)
