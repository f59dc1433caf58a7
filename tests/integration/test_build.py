"""The embedded-default build end to end: real Ray, real vLLM (CPU), real Transformers, the real embedded model."""

import json
import re

import torch

from raypipe.labels.loop import has_ngram_loop
from raypipe.output import load_rollouts, load_split
from tests.conftest import manifest_json, run_cli
from tests.integration.conftest import BUILD_ARGS

# A line Ray itself logged at ERROR or WARNING: its C++ core ('[2026-... E 123 123] file.cc:...'), its Python
# loggers ('2026-... ERROR file.py:...'), its worker processes' forwarded output, or a Python warning it raised.
RAY_LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+ [EW] \d+ \d+\]|^\d{4}-\d\d-\d\d [\d:,]+\s+(ERROR|WARNING) "
                          r"|\((raylet|\w+ pid=\d+)[^)]*\).*(ERROR|WARNING|Error)|/ray/\S+: \w*Warning:")


def test_every_planned_shard_is_complete_and_verified(local_build):
    manifest = manifest_json(local_build)
    shards = {split: data["shards"] for split, data in manifest["splits"].items()}
    assert sorted(shards["train"]) == ["shard-00000", "shard-00001", "shard-00002"]
    assert sorted(shards["test"]) == ["shard-00000"]
    assert all(s["status"] == "complete" for split in shards.values() for s in split.values())
    assert manifest["features"]["layers"] == [0, 15, 30] and manifest["features"]["positions"] == [-3, -1]
    assert manifest["model"]["local_path"] and manifest["config"]["model"]["max_tokens"] == 128
    train, test = load_split(local_build, "train"), load_split(local_build, "test")  # checks every sha256
    assert train["features"].shape == (18, 3, 2, 576) and test["features"].shape == (2, 3, 2, 576)
    assert sorted(train["row_id"].tolist() + test["row_id"].tolist()) == list(range(20))
    counts = manifest["labels"]["loop"]["counts"]
    assert sum(counts["train"].values()) == 18 and sum(counts["test"].values()) == 2


def test_features_equal_a_direct_forward_over_the_stored_prompt_ids(local_build, embedded_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(embedded_path, dtype=torch.float32)
    for split in ("train", "test"):
        tensors, rollouts = load_split(local_build, split), load_rollouts(local_build, split)
        assert rollouts["row_id"].to_pylist() == tensors["row_id"].tolist()
        for i, ids in enumerate(rollouts["prompt_token_ids"].to_pylist()):
            with torch.inference_mode():
                states = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
            expected = torch.stack([torch.stack([states[layer][0, p] for p in (-3, -1)]) for layer in (0, 15, 30)])
            torch.testing.assert_close(tensors["features"][i], expected, atol=1e-4, rtol=1e-4)


def test_stored_prompts_are_what_the_model_saw(local_build, tokenizer):
    rollouts = load_rollouts(local_build, "train").to_pylist()
    for row in rollouts:
        assert row["prompt"].endswith("<|im_start|>assistant\n")
        assert tokenizer(row["prompt"], add_special_tokens=False)["input_ids"] == row["prompt_token_ids"]
        (sample_ids,), (text,) = row["token_ids"], row["text"]
        assert 0 < len(sample_ids) <= 128 and text == tokenizer.decode(sample_ids, skip_special_tokens=True)


def test_labels_equal_the_detector_on_the_stored_rollouts(local_build):
    manifest = manifest_json(local_build)
    n, k = manifest["labels"]["loop"]["params"]["n"], manifest["labels"]["loop"]["params"]["k"]
    for split in ("train", "test"):
        labels = load_split(local_build, split)["label.loop"].tolist()
        rollouts = load_rollouts(local_build, split)["token_ids"].to_pylist()
        assert labels == [int(has_ngram_loop(samples[0], n, k)) for samples in rollouts]


def test_rollouts_are_the_models_greedy_continuations(local_build, embedded_path):
    """vLLM's greedy rollout starts as transformers' greedy generation from the same prompt ids."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(embedded_path, dtype=torch.float32)
    for row in load_rollouts(local_build, "test").to_pylist():
        with torch.inference_mode():
            out = model.generate(torch.tensor([row["prompt_token_ids"]]), max_new_tokens=8, do_sample=False)
        assert out[0, len(row["prompt_token_ids"]):].tolist() == row["token_ids"][0][:8]


def test_it_streams_first_shard_written_before_the_last_rollout_ends(local_build):
    shards = [s for split in manifest_json(local_build)["splits"].values() for s in split["shards"].values()]
    assert min(s["stats"]["write"]["end"] for s in shards) < max(s["stats"]["rollout"]["end"] for s in shards)


def test_its_config_from_status_reruns_it_exactly_and_skips_every_complete_shard(local_build, tmp_path, shared_ray):
    """`raypipe build --config <(raypipe status DIR --config)`: the manifest's config, printed and read back, is the
    same config (the flags that made the build resolve to it too); the manifest's config check takes it, and the
    rerun skips every complete shard and changes nothing."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from raypipe.options import resolve

    raypipe = Path(sys.executable).parent / "raypipe"
    printed = subprocess.run([str(raypipe), "status", str(local_build), "--config"], capture_output=True, text=True)
    assert printed.returncode == 0, printed.stderr[-2000:]
    (tmp_path / "build.yaml").write_text(printed.stdout)
    assert resolve("build", {}, str(tmp_path / "build.yaml")).to_dict() == manifest_json(local_build)["config"]
    flags = run_cli("raypipe.build", *BUILD_ARGS, "--out-dir", str(local_build), "--print-config")
    assert yaml.safe_load(flags.stdout) == yaml.safe_load(printed.stdout)
    before = {p.name: p.stat().st_mtime_ns for p in local_build.rglob("*.safetensors")}
    result = subprocess.run(["bash", "-c", f'"{raypipe}" build --config <("{raypipe}" status "{local_build}" --config)'],
                            capture_output=True, text=True, timeout=900, env={**os.environ, **shared_ray})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "4 already complete, 0 to build" in result.stdout
    assert before == {p.name: p.stat().st_mtime_ns for p in local_build.rglob("*.safetensors")}


def test_rerun_with_another_config_is_refused_naming_the_fields(local_build, shared_ray):
    manifest_before = (local_build / "manifest.json").read_text()
    result = run_cli("raypipe.build", *BUILD_ARGS, "--temperature", "0.5", "--out-dir", str(local_build),
                     env=shared_ray)
    assert result.returncode == 2
    assert "model.temperature" in result.stderr and "--overwrite" in result.stderr
    assert json.loads((local_build / "manifest.json").read_text()) == json.loads(manifest_before)


def test_status_reports_shards(local_build):
    result = run_cli("raypipe.cli", "status", str(local_build))
    assert result.returncode == 0 and "train: 3 complete" in result.stdout and "test: 1 complete" in result.stdout


def test_the_console_shows_one_line_per_stage_and_the_next_commands(local_build):
    """What a user sees: raypipe's progress per stage and the commands to run next, not Ray Data's blocks."""
    stdout = (local_build.parent / "console.stdout").read_text()
    stderr = (local_build.parent / "console.stderr").read_text()
    assert re.search(r"raypipe: prepare 4/4, [\d,]+ tok/s \| rollout 4/4, [\d,]+ tok/s \| label 4/4 \| "
                     r"prefill 4/4, [\d,]+ tok/s \| write 4/4", stdout)
    for command in (f"raypipe status {local_build}", f"raypipe train --data-dir {local_build} --out-dir",
                    f"raypipe sweep --data-dir {local_build} --out-dir"):
        assert command in stdout
    for noise in ("Running Dataset", "Active & requested resources", "- MapBatches(", "INFO streaming_executor"):
        assert noise not in stdout + stderr, noise
    # No Ray-internal ERROR or WARNING line but one: Ray Data 2.60 creates every actor-pool worker with its
    # DataContext and MapTransformer as ObjectRefs and max_restarts=-1, which Ray Core reports once per process
    # (ray-project/ray#57733) whatever a pipeline hands its stages; raypipe's stages take no object in their
    # constructors (test_gpu_placement.py loses the prepare actor's node).
    upstream = "has constructor arguments in the object store and max_restarts > 0"
    ray_lines = [line for line in (stdout + stderr).splitlines() if RAY_LOG_LINE.search(line)]
    assert [line for line in ray_lines if not ("'MapWorker(MapBatches(" in line and upstream in line)] == []
    assert len(ray_lines) <= 1


def test_greedy_hf_rollouts_equal_greedy_vllm_rollouts(local_build, embedded_path):
    """The hf backend's greedy samples are vLLM's, token for token, for their first 64 tokens (six rows)."""
    from raypipe.config import apply_overrides, get_preset
    from raypipe.engines.hf import HfEngine

    engine = HfEngine(embedded_path, apply_overrides(get_preset("smollm2_135m"), {"max_tokens": 64}), seed=0)
    rows = load_rollouts(local_build, "test").to_pylist() + load_rollouts(local_build, "train").to_pylist()[:4]
    hf = engine.generate_now([r["prompt_token_ids"] for r in rows], [r["row_id"] for r in rows])
    for row, samples in zip(rows, hf["token_ids"]):
        assert samples[0] == row["token_ids"][0][:64], row["row_id"]


def test_backend_none_generates_nothing_and_its_features_equal_the_vllm_builds(local_build, tmp_path, shared_ray):
    out = tmp_path / "none"
    result = run_cli("raypipe.build", *BUILD_ARGS, "--backend", "none", "--out-dir", str(out), env=shared_ray)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    manifest = manifest_json(out)
    assert manifest["labels"] == {} and set(manifest["absent_labels"]) >= {"loop", "correct", "mean_logprob"}
    shards = [s for d in manifest["splits"].values() for s in d["shards"].values()]
    assert all("rollout" not in s["stats"] for s in shards)  # no stage generated a token
    assert "rollout" not in result.stdout
    for split in ("train", "test"):
        none, vllm = load_split(out, split), load_split(local_build, split)
        assert none["row_id"].tolist() == vllm["row_id"].tolist()
        torch.testing.assert_close(none["features"], vllm["features"], atol=1e-4, rtol=1e-4)
        assert "token_ids" not in load_rollouts(out, split).column_names
