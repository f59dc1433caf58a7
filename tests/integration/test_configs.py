"""The shipped configs that run the embedded model, planned in full (`plan.prepare`: sources, tokenizer, model
shape, positions, labels) without Ray; the trigger probe's finetuned model is the embedded model's architecture, so
the embedded model stands in for it, given as the config's comment says (--model-id)."""

import pytest

from raypipe import options
from raypipe.config import EMBEDDED_MODEL_ID
from tests.conftest import REPO
from tests.test_configs import write_inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("configs"))


@pytest.mark.parametrize("name, layers, positions, labels", [
    ("presets/smollm2_135m", [30], [-1], {"loop", "correct"}),
    ("loop_probe", [30], [-1], {"loop"}),
    ("probe_pipeline", list(range(1, 31)), [-6, -5, -4, -3, -2, -1], {"correct"}),
    ("sep", list(range(1, 31)), [-1, "answer:-2"], {"correct", "success_rate", "semantic_entropy",
                                                    "semantic_entropy_high"}),
    ("trigger_probe", list(range(1, 31)), [-1], {"quadrant", "label", "trigger_present"}),
])
def test_an_embedded_model_config_plans_in_full(inputs, monkeypatch, name, layers, positions, labels):
    from raypipe.plan import prepare

    monkeypatch.chdir(inputs)
    given = {("model", "model_id"): EMBEDDED_MODEL_ID} if name == "trigger_probe" else {}
    planned = prepare(options.resolve("build", given, str(REPO / "configs" / f"{name}.yaml")))
    assert (planned.layers, planned.positions) == (layers, positions)
    assert labels <= set(planned.labels), sorted(planned.labels)
    if name == "trigger_probe":
        assert planned.labels["quadrant"].classes == ["Q1", "Q2", "Q3", "Q4"]
        assert "loop" in planned.absent_labels  # backend none: no rollouts
