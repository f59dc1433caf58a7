"""Options derived from the config dataclasses: config files (keys, sections, typos, types, workflow files), flags
over files, the YAML a config prints and reads back, `raypipe status --config`, and the docs' option tables."""

import dataclasses
import json
import textwrap

import pytest
import yaml

from raypipe import options
from raypipe.config import BuildConfig, FeatureConfig, SourceConfig, get_preset, knob
from raypipe.errors import UserError
from tests.conftest import assert_one_line_error, run_cli


def _file(tmp_path, text: str, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_a_config_file_sets_keys_in_every_section_and_flags_override_it(tmp_path):
    path = _file(tmp_path, """
        out_dir: runs/x
        shard_size: 8
        model:
          preset: openthinker3_7b
          max_tokens: 512
          vllm: {tp: 2}
          hf: {batch_tokens: 1000}
        source: {train_dataset: data.jsonl, label_columns: [a, b], chat_template: false}
        features: {layers: all, positions: eoi}
        labels: {answer_match: exact}
    """)
    config = options.resolve("build", {("model", "max_tokens"): 64, ("shard_size",): 4}, path)
    assert (config.out_dir, config.shard_size, config.model.name, config.model.max_tokens) == ("runs/x", 4,
                                                                                                "openthinker3_7b", 64)
    assert (config.model.vllm.tp, config.model.hf.batch_tokens, config.model.dp) == (2, 1000, 8)  # dp: the preset's
    assert (config.source.label_columns, config.source.chat_template) == (["a", "b"], False)
    assert (config.features.layers, config.features.positions, config.labels.answer_match) == ("all", "eoi", "exact")


@pytest.mark.parametrize("text, message", [
    ("model:\n  tmperature: 0.1\n", "unknown key 'model.tmperature' for `raypipe build`; did you mean "
                                    "'model.temperature'?"),
    ("model:\n  tp: 2\n", "unknown key 'model.tp' for `raypipe build`; did you mean 'model.vllm.tp'?"),
    ("sorce:\n  builtin_size: 3\n", "unknown key 'sorce' for `raypipe build`; did you mean 'source'?"),
    ("source:\n  label_column: [a]\n", "did you mean 'source.label_columns'?"),
    ("zzz: 1\n", "unknown key 'zzz' for `raypipe build`; the top level takes: out_dir, shard_size"),
    ("model: qwq_32b\n", "model is a section (keys below it), got 'qwq_32b'"),
    ("shard_size: many\n", "shard_size must be int, got 'many'"),
    ("source:\n  label_columns: [{a: 1}]\n", "source.label_columns must be list of str"),
    ("model:\n  preset: gpt5\n", "unknown preset 'gpt5'"),
    ("backend: vlm\n", "--backend must be one of vllm, hf, none, got 'vlm'"),
    ("- a\n- b\n", "a config file is a mapping of keys to values, got list"),
    ("out_dir: [unclosed\n", "not valid YAML"),
])
def test_mistakes_in_a_config_file_are_one_clear_error(tmp_path, text, message):
    with pytest.raises(UserError) as error:
        options.resolve("build", {("out_dir",): "o"}, _file(tmp_path, text))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_misspelt_key_ends_the_command_with_one_line(tmp_path):
    result = run_cli("raypipe.cli", "sweep", "--config", _file(tmp_path, "data_dir: d\nout_dir: o\nn_fold: 3\n"))
    assert_one_line_error(result, "unknown key 'n_fold' for `raypipe sweep`", "did you mean 'n_folds'?")


def test_a_workflow_file_gives_each_command_its_section_and_the_build_its_data_dir(tmp_path):
    path = _file(tmp_path, """
        build: {out_dir: runs/w, features: {layers: all}}
        train: {out_dir: runs/w-probe, epochs: 3}
        sweep: {data_dir: elsewhere, out_dir: runs/w-sweep, n_folds: 3}
    """)
    assert options.resolve("build", {}, path).features.layers == "all"
    train = options.resolve("train", {}, path)
    assert (train.data_dir, train.out_dir, train.epochs) == ("runs/w", "runs/w-probe", 3)
    assert options.resolve("sweep", {}, path).data_dir == "elsewhere"
    with pytest.raises(UserError, match="has no `evaluate:` section \\(it has: build, train, sweep\\)"):
        options.resolve("evaluate", {}, path)
    with pytest.raises(UserError, match="unknown key 'epochs' for `raypipe sweep`"):
        options.resolve("sweep", {}, _file(tmp_path, "sweep: {out_dir: o, data_dir: d, epochs: 3}", "w.yaml"))


def test_a_missing_required_option_names_its_flag_and_key():
    with pytest.raises(UserError, match=r"missing --out-dir \(or `out_dir:` in a --config file\)"):
        options.resolve("build", {})
    with pytest.raises(UserError, match="missing --data-dir"):
        options.resolve("evaluate", {("out_dir",): "o"})


@pytest.mark.parametrize("command, config", [
    ("build", BuildConfig(out_dir="runs/a b # c", model=get_preset("qwq_32b"), shard_size=7,
                          source=SourceConfig(label_columns=["x", "y"], max_samples=3, train_dataset="-1"),
                          features=FeatureConfig(layers="0,5,-1", positions="marker:</think>,answer:-2,-1"))),
    ("train", options.construct(options.TrainConfig, {("data_dir",): "d", ("out_dir",): "o",
                                                      ("position",): "marker:</think>", ("lr",): 1e-05}, "train")),
    ("evaluate", options.construct(options.EvaluateConfig, {("data_dir",): "d", ("out_dir",): "o",
                                                            ("positions",): "-1,answer:-2"}, "evaluate")),
])
def test_a_printed_config_read_back_is_the_same_config(tmp_path, command, config):
    text = options.to_yaml(command, config, "a header\nof two lines")
    assert text.startswith("# a header\n# of two lines\n") and "  # " in text  # each key with its help
    back = options.resolve(command, {}, _file(tmp_path, text))
    assert dataclasses.asdict(back) == dataclasses.asdict(config)


def test_status_config_prints_the_manifests_config_so_that_a_build_reruns_it(tmp_path):
    from typer.testing import CliRunner

    from raypipe.cli import app
    from raypipe.output import FORMAT

    config = BuildConfig(out_dir=str(tmp_path / "b"), model=get_preset("smollm2_135m"), backend="hf",
                         features=FeatureConfig(positions="eoi,-1"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text(json.dumps({"format": FORMAT, "config": config.to_dict()}))
    result = CliRunner().invoke(app, ["status", str(tmp_path / "b"), "--config"])
    assert result.exit_code == 0, result.output
    assert options.resolve("build", {}, _file(tmp_path, result.stdout)).to_dict() == config.to_dict()
    printed = CliRunner().invoke(app, ["build", "--config", _file(tmp_path, result.stdout), "--print-config"])
    assert yaml.safe_load(printed.stdout) == yaml.safe_load(result.stdout)


@pytest.mark.parametrize("command", sorted(options.COMMANDS))
def test_the_docs_table_lists_every_option_with_flags_type_default_and_help(command, capsys):
    table = options.options_table(command)
    for option in options.options(command):
        assert option.help, f"{command}: {option.key} has no help"
        row = next(line for line in table.splitlines() if line.startswith(f"| `{option.key}` |"))
        assert (option.flags[0] in row) == option.cli and option.help.split()[0] in row, row
    options.main([command])
    assert capsys.readouterr().out.startswith(
        f"### {options.title(command)}\n\n| key | flag(s) | type | default | help |")


def test_a_new_field_is_an_option_a_key_and_a_table_row_with_nothing_else_to_edit(monkeypatch, tmp_path):
    """What adding a knob takes: the field with its help. Its flag, file key and docs row follow."""
    import typer
    from typer.testing import CliRunner

    @dataclasses.dataclass
    class WithSplits(options.EvaluateConfig):
        eval_splits: list[str] = knob(help="Named evaluation splits to score.", factory=list, flags=("--eval-split",))

    monkeypatch.setitem(options.COMMANDS, "evaluate", options.Command("evaluate", WithSplits))
    options.fields_of.cache_clear()
    try:
        app = typer.Typer()
        app.command()(options.typer_command("evaluate", lambda config: print(config.eval_splits)))
        result = CliRunner().invoke(app, ["--data-dir", "d", "--out-dir", "o", "--eval-split", "ood"])
        assert result.exit_code == 0 and "['ood']" in result.stdout, result.output
        assert options.resolve("evaluate", {}, _file(tmp_path, "data_dir: d\nout_dir: o\neval_splits: [a]\n"))\
            .eval_splits == ["a"]
        assert "| `eval_splits` | `--eval-split` | list of str |" in options.options_table("evaluate")
    finally:
        options.fields_of.cache_clear()


def test_numbers_as_yaml_writes_them_become_the_fields_types(tmp_path):
    """`layers: -1` is a number to YAML and `lr: 1e-3` text (YAML 1.1 wants a dot): both become what the field is."""
    train = options.resolve("train", {}, _file(tmp_path, "data_dir: d\nout_dir: o\nlr: 1e-3\nposition: '-2'\n"))
    assert (train.lr, train.position) == (0.001, -2)
    build = options.resolve("build", {}, _file(tmp_path, "out_dir: o\nfeatures: {layers: -1, positions: -1}\n", "b"))
    assert (build.features.layers, build.features.positions) == ("-1", "-1")


def test_a_field_added_later_reads_as_its_default_in_an_older_config():
    """What a manifest written before a field existed lacks: its key, taken as the declared default (so that the
    resume check and `status --config` treat an older build as built with it)."""
    from raypipe.knobs import declared_defaults

    defaults = declared_defaults(BuildConfig)
    assert defaults["source.eval_splits"] == [] and defaults["shard_size"] == 64 and defaults["model.vllm.tp"] == 1
    old = BuildConfig(out_dir="o", model=get_preset("qwq_32b")).to_dict()
    del old["source"]["eval_splits"]
    assert options.from_dict("build", old).to_dict() == BuildConfig(out_dir="o", model=get_preset("qwq_32b")).to_dict()


def test_the_finetune_wing_reads_the_same_files_and_its_config_json_has_a_table(tmp_path):
    """`raypipe finetune` and `experiments analyze` take workflow sections like the probes (no data_dir from the
    build: they have none); an experiment's config.json (a file of no command) gets a docs table without flags."""
    path = _file(tmp_path, """
        build: {out_dir: runs/w}
        finetune: {exp_dirs: [runs/np], seeds: [1, '2']}
        analyze: {results_dir: runs/np/seed_1, layers: -1}
    """)
    finetune = options.resolve("finetune", {}, path)
    assert (finetune.exp_dirs, finetune.seeds, finetune.gpu) == (["runs/np"], [1, 2], None)
    assert options.resolve("analyze", {}, path).layers == "-1"
    with pytest.raises(UserError, match="unknown key 'sed' for `raypipe finetune`; did you mean 'seeds'?"):
        options.resolve("finetune", {}, _file(tmp_path, "exp_dirs: [a]\nsed: [1]\n", "f.yaml"))
    table = options.options_table("experiment")
    assert table.startswith("| key | type | default | help |\n")
    assert "| `finetune_config.learning_rate` | float | `0.001` | AdamW's learning rate. |" in table
    assert "| `exp_dirs` | `EXP_DIRS` (argument) | list of str | `required` |" in options.options_table("finetune")
