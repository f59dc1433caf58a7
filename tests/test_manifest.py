"""The manifest on resume (no model, no Ray): complete shards are re-checked by sha256, a damaged one goes back to
pending and is the only one rebuilt, temporaries are removed, a changed configuration is refused."""

import json

import pytest
import torch

from raypipe.config import BuildConfig, get_preset
from raypipe.errors import UserError
from raypipe.manifest import Manifest
from raypipe.plan import BuildInputs, ShardPlan
from raypipe.store import write_shard


def _inputs() -> BuildInputs:
    return BuildInputs(None, 30, 4, [30], [-1], {"loop": {"kind": "binary", "counts": {}}}, {}, {})


def _build(out, shards=3):
    """A build whose shards were all written and recorded complete, as a finished run leaves it."""
    config = BuildConfig(out_dir=str(out), model=get_preset("smollm2_135m"))
    plans = [ShardPlan("train", i, "train", [2 * i, 2 * i + 1], [2 * i, 2 * i + 1]) for i in range(shards)]
    manifest = Manifest.open(config, _inputs(), plans, overwrite=False)
    for plan in plans:
        tensors = {"features": torch.zeros(2, 1, 1, 4), "row_id": torch.tensor(plan.row_ids),
                   "label.loop": torch.tensor([0, 1])}
        entry = write_shard(str(out), "train", plan.index, tensors, {"row_id": plan.row_ids})
        manifest.complete({**entry, "label_counts": {"loop": {"0": 1, "1": 1}}, "skipped": {}})
    return config, plans


def test_a_damaged_shard_goes_back_to_pending_and_alone(tmp_path, capsys):
    config, plans = _build(tmp_path / "out")
    victim, = (tmp_path / "out" / "train").glob("shard-00001-*.safetensors")
    victim.write_bytes(victim.read_bytes()[:-10])
    (tmp_path / "out" / "train" / ".shard-00002.safetensors.tmp-1234abcd").write_bytes(b"half a shard")
    manifest = Manifest.open(config, _inputs(), plans, overwrite=False)
    assert [p.name for p in manifest.pending(plans)] == ["shard-00001"]
    assert f"{victim.name} is corrupt" in capsys.readouterr().out
    assert not list((tmp_path / "out").rglob(".*.tmp-*"))  # temporaries are removed, never read
    assert manifest.data["labels"]["loop"]["counts"]["train"] == {"0": 2, "1": 2}  # counts only complete shards


def test_a_missing_shard_file_is_rebuilt_too(tmp_path):
    config, plans = _build(tmp_path / "out")
    next((tmp_path / "out" / "train").glob("shard-00000-*.rollouts.parquet")).unlink()
    assert [p.name for p in Manifest.open(config, _inputs(), plans, overwrite=False).pending(plans)] == ["shard-00000"]


def test_a_changed_configuration_is_refused_naming_the_field(tmp_path):
    config, plans = _build(tmp_path / "out")
    before = (tmp_path / "out" / "manifest.json").read_text()
    changed = BuildConfig(out_dir=str(tmp_path / "out"), model=get_preset("smollm2_135m"), shard_size=7)
    with pytest.raises(UserError, match="differs in: shard_size"):
        Manifest.open(changed, _inputs(), plans, overwrite=False)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == json.loads(before)


def test_a_shard_whose_rows_do_not_add_up_is_never_recorded_complete(tmp_path):
    config = BuildConfig(out_dir=str(tmp_path / "out"), model=get_preset("smollm2_135m"))
    plans = [ShardPlan("train", 0, "train", [0, 1, 2], [0, 1, 2])]
    manifest = Manifest.open(config, _inputs(), plans, overwrite=False)
    with pytest.raises(RuntimeError, match="planned 3"):
        manifest.complete({"split": "train", "name": "shard-00000", "rows": 2, "skipped": {}, "files": {}})
    manifest.complete({"split": "train", "name": "shard-00000", "rows": 2, "skipped": {"empty_prompt": 1},
                       "files": {}})
    assert manifest.data["skipped_rows"]["train"] == {"empty_prompt": 1}


def test_two_writes_of_one_shard_keep_their_own_files_and_the_unlisted_are_removed(tmp_path):
    """A task Ray runs again (its output was lost with a node) writes the shard a second time, perhaps with other
    bytes, while the first write may still finish: the manifest's entry must keep naming files with its hashes."""
    from raypipe.store import verify_shard
    from raypipe.reader import load_split

    config, plans = _build(tmp_path / "out")
    manifest = Manifest.open(config, _inputs(), plans, overwrite=False)
    recorded = manifest.data["splits"]["train"]["shards"]["shard-00000"]
    late = write_shard(str(tmp_path / "out"), "train", 0, {"features": torch.ones(2, 1, 1, 4),
                                                            "row_id": torch.tensor(plans[0].row_ids),
                                                            "label.loop": torch.tensor([1, 1])}, {"row_id": [9, 9]})
    assert set(late["files"]).isdisjoint(recorded["files"])
    verify_shard(str(tmp_path / "out"), {**recorded, "split": "train"})  # the late write changed nothing it names
    manifest.finish()
    names = {p.name for p in (tmp_path / "out" / "train").iterdir()}
    assert names == {f for shard in manifest.data["splits"]["train"]["shards"].values() for f in shard["files"]}
    assert load_split(str(tmp_path / "out"), "train")["features"].sum() == 0  # the recorded write's features
