"""The manifest on resume (no model, no Ray): complete shards are re-checked by sha256, a damaged one goes back to
pending and is the only one rebuilt, temporaries are removed, a changed configuration is refused."""

import json
from pathlib import Path

import pytest
import torch

from raypipe.config import BuildConfig, get_preset
from raypipe.errors import UserError
from raypipe.fs import Location
from raypipe.output import LabelDefinition, ShardRecord, write_shard
from raypipe.plan import BuildInputs, ShardPlan
from raypipe.resume import open_build


def _inputs() -> BuildInputs:
    return BuildInputs(None, 30, 4, [30], [-1], {"loop": LabelDefinition(kind="binary", counts={})}, {}, {})


def _build(out, shards=3):
    """A build whose shards were all written and recorded complete, as a finished run leaves it."""
    config = BuildConfig(out_dir=str(out), model=get_preset("smollm2_135m"))
    plans = [ShardPlan("train", i, "train", [2 * i, 2 * i + 1], [2 * i, 2 * i + 1]) for i in range(shards)]
    manifest = open_build(config, _inputs(), plans, overwrite=False)
    for plan in plans:
        tensors = {"features": torch.zeros(2, 1, 1, 4), "row_id": torch.tensor(plan.row_ids),
                   "label.loop": torch.tensor([0, 1])}
        shard = write_shard(Location(str(out)), "train", plan.index, tensors, {"row_id": plan.row_ids})
        shard.label_counts, shard.skipped = {"loop": {"0": 1, "1": 1}}, {}
        manifest.complete(shard)
    return config, plans


def test_a_damaged_shard_goes_back_to_pending_and_alone(tmp_path, capsys):
    config, plans = _build(tmp_path / "out")
    victim, = (tmp_path / "out" / "train").glob("shard-00001-*.safetensors")
    victim.write_bytes(victim.read_bytes()[:-10])
    (tmp_path / "out" / "train" / ".shard-00002.safetensors.tmp-1234abcd").write_bytes(b"half a shard")
    manifest = open_build(config, _inputs(), plans, overwrite=False)
    assert [p.name for p in manifest.pending(plans)] == ["shard-00001"]
    assert f"{victim.name} is corrupt" in capsys.readouterr().out
    assert not list((tmp_path / "out").rglob(".*.tmp-*"))  # temporaries are removed, never read
    assert manifest.record.labels["loop"].counts["train"] == {"0": 2, "1": 2}  # counts only complete shards


def test_a_missing_shard_file_is_rebuilt_too(tmp_path):
    config, plans = _build(tmp_path / "out")
    next((tmp_path / "out" / "train").glob("shard-00000-*.rollouts.parquet")).unlink()
    assert [p.name for p in open_build(config, _inputs(), plans, overwrite=False).pending(plans)] == ["shard-00000"]


def test_a_changed_configuration_is_refused_naming_the_field(tmp_path):
    config, plans = _build(tmp_path / "out")
    before = (tmp_path / "out" / "manifest.json").read_text()
    changed = BuildConfig(out_dir=str(tmp_path / "out"), model=get_preset("smollm2_135m"), shard_size=7)
    with pytest.raises(UserError, match="differs in: shard_size"):
        open_build(changed, _inputs(), plans, overwrite=False)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == json.loads(before)


def test_a_shard_whose_rows_do_not_add_up_is_never_recorded_complete(tmp_path):
    config = BuildConfig(out_dir=str(tmp_path / "out"), model=get_preset("smollm2_135m"))
    plans = [ShardPlan("train", 0, "train", [0, 1, 2], [0, 1, 2])]
    manifest = open_build(config, _inputs(), plans, overwrite=False)
    with pytest.raises(RuntimeError, match="planned 3"):
        manifest.complete(ShardRecord(split="train", name="shard-00000", rows=2, skipped={}, files={}))
    manifest.complete(ShardRecord(split="train", name="shard-00000", rows=2, skipped={"empty_prompt": 1}, files={}))
    assert manifest.record.skipped_rows["train"] == {"empty_prompt": 1}


def test_two_writes_of_one_shard_keep_their_own_files_and_the_unlisted_are_removed(tmp_path):
    """A task Ray runs again (its output was lost with a node) writes the shard a second time, perhaps with other
    bytes, while the first write may still finish: the manifest's entry must keep naming files with its hashes."""
    from raypipe.output import load_split, verify_shard

    config, plans = _build(tmp_path / "out")
    manifest = open_build(config, _inputs(), plans, overwrite=False)
    recorded = manifest.record.splits["train"].shards["shard-00000"]
    late = write_shard(Location(str(tmp_path / "out")), "train", 0, {"features": torch.ones(2, 1, 1, 4),
                                                            "row_id": torch.tensor(plans[0].row_ids),
                                                            "label.loop": torch.tensor([1, 1])}, {"row_id": [9, 9]})
    assert set(late.files).isdisjoint(recorded.files)
    verify_shard(Location(str(tmp_path / "out")), "train", recorded)  # the late write changed nothing it names
    manifest.finish()
    names = {p.name for p in (tmp_path / "out" / "train").iterdir()}
    assert names == {f for shard in manifest.record.splits["train"].shards.values() for f in shard.files}
    assert load_split(str(tmp_path / "out"), "train")["features"].sum() == 0  # the recorded write's features


# --- builds made by an earlier release --------------------------------------------------------------------------------

OLD_BUILD = Path(__file__).parent / "fixtures" / "build-0.1.0"  # a real build by raypipe 0.1.0 (dict manifests)


def test_a_build_made_by_an_earlier_release_is_read_and_written_back_unchanged(tmp_path):
    import shutil

    from raypipe.output import Build, read_manifest, write_manifest

    build_dir = tmp_path / "old"
    shutil.copytree(OLD_BUILD, build_dir)
    before = json.loads((build_dir / "manifest.json").read_text())
    build = Build(str(build_dir))
    build.verify()
    assert build.splits() == ["train", "test"] and build.rows("train") == 11 and build.rows("test") == 1
    assert build.features("train", None, None).shape == (11, len(before["features"]["layers"]),
                                                         len(before["features"]["positions"]), 128)
    assert build.labels["correct"].no_final_answer == before["labels"]["correct"]["no_final_answer"]
    write_manifest(Location(str(build_dir)), read_manifest(Location(str(build_dir))))
    assert json.loads((build_dir / "manifest.json").read_text()) == before  # no key lost, none added


def test_a_build_made_by_an_earlier_release_resumes_with_nothing_to_do(tmp_path):
    import shutil

    from raypipe.knobs import recorded_config
    from raypipe.options import from_dict

    build_dir = tmp_path / "old"
    shutil.copytree(OLD_BUILD, build_dir)
    recorded = json.loads((build_dir / "manifest.json").read_text())
    config = from_dict("build", {**recorded_config(BuildConfig, recorded["config"]), "out_dir": str(build_dir)})
    plans = [ShardPlan(split, int(name.split("-")[1]), split, list(range(shard["planned_rows"])),
                       [shard["row_id_range"][0], shard["row_id_range"][1]])
             for split, data in recorded["splits"].items() for name, shard in data["shards"].items()]
    inputs = BuildInputs(None, 2, 128, recorded["features"]["layers"], recorded["features"]["positions"], {}, {}, {})
    manifest = open_build(config, inputs, plans, overwrite=False)
    assert manifest.pending(plans) == []
    assert manifest.record.labels["loop"].counts == recorded["labels"]["loop"]["counts"]


def test_a_manifest_without_the_fields_added_since_reads_with_their_defaults(tmp_path):
    """The fields later releases added (the features' hidden size, absent labels, runs, a label's definition) are
    optional: a manifest without them reads, the hidden size coming from the model's."""
    import shutil

    from raypipe.output import Build

    build_dir = tmp_path / "old"
    shutil.copytree(OLD_BUILD, build_dir)
    data = json.loads((build_dir / "manifest.json").read_text())
    del data["features"]["hidden_size"], data["absent_labels"], data["runs"], data["finished_at"]
    for label in data["labels"].values():
        label.pop("definition"), label.pop("params", None)
    (build_dir / "manifest.json").write_text(json.dumps(data))
    build = Build(str(build_dir))
    assert build.hidden_size == 128 and build.labels["loop"].kind == "binary" and build.rows("train") == 11


def test_status_reads_a_build_made_by_an_earlier_release():
    """`raypipe status` counts its shards; `--config` prints a config that `raypipe build --config` accepts (the old
    release recorded null for a field that has a default now)."""
    from tests.test_cli import _invoke

    counts = _invoke("status", str(OLD_BUILD))
    assert counts.exit_code == 0 and counts.output.splitlines() == ["train: 6 complete", "test: 1 complete"]
    shown = _invoke("status", str(OLD_BUILD), "--config")
    assert shown.exit_code == 0 and "nli_model: mrm8488/deberta-v3-small-finetuned-mnli" in shown.output


def test_a_rebuilt_shard_keeps_why_it_was_rebuilt_and_an_unknown_model_path_is_null(tmp_path):
    config, plans = _build(tmp_path / "out")
    victim, = (tmp_path / "out" / "train").glob("shard-00001-*.safetensors")
    victim.unlink()
    manifest = open_build(config, _inputs(), plans, overwrite=False)
    tensors = {"features": torch.zeros(2, 1, 1, 4), "row_id": torch.tensor(plans[1].row_ids),
               "label.loop": torch.tensor([0, 1])}
    shard = write_shard(Location(str(tmp_path / "out")), "train", 1, tensors, {"row_id": plans[1].row_ids})
    shard.label_counts, shard.skipped = {"loop": {"0": 1, "1": 1}}, {}
    manifest.complete(shard)
    recorded = json.loads((tmp_path / "out" / "manifest.json").read_text())
    rebuilt = recorded["splits"]["train"]["shards"]["shard-00001"]
    assert rebuilt["status"] == "complete" and rebuilt["note"].startswith("rebuilt after: shard file")
    assert "error" not in rebuilt and rebuilt["planned_rows"] == 2
    assert recorded["model"]["local_path"] is None  # BuildInputs without a local path: null, as always written
