"""The raypipe explorer: a marimo notebook over a build and, when given, its probe, sweep and evaluation outputs.

    raypipe explore runs/demo [--probe runs/demo-probe] [--sweep runs/demo-sweep] [--eval runs/demo-eval]
    marimo edit notebooks/explorer.py -- --data-dir runs/demo --sweep-dir runs/demo-sweep

Shows the manifest in words, label distributions, a rollout browser (prompt, the K samples, their labels; filter by
label), the (layer x position) heatmap and ROC curves of a sweep, the SEP table of an evaluation, and a probe fitted
live on the label, layer and position you pick.
"""

import marimo

__generated_with = "0.25.2"
app = marimo.App(width="medium", app_title="raypipe explorer")


@app.cell
def _():
    import marimo as mo

    return (mo,)


@app.cell
def _(mo):
    args = mo.cli_args()
    data_dir = args.get("data-dir")
    probe_dir, sweep_dir, eval_dir = args.get("probe-dir"), args.get("sweep-dir"), args.get("eval-dir")
    score_dir = args.get("score-dir")
    mo.stop(not data_dir, mo.md("Give a build: `raypipe explore DIR`, or `-- --data-dir DIR` after the notebook."))
    return data_dir, eval_dir, probe_dir, score_dir, sweep_dir


@app.cell
def _(data_dir, mo):
    from raypipe import explorer
    from raypipe.fs import Location
    from raypipe.output import read_manifest

    manifest = read_manifest(Location(data_dir))
    mo.md(f"# raypipe build `{data_dir}`\n\n" + explorer.describe(manifest))
    return explorer, manifest


@app.cell
def _(data_dir, explorer, manifest, mo, score_dir):
    table = explorer.rows_table(data_dir, score_dir)
    mo.vstack([mo.md("## Label distributions"), explorer.label_distributions(manifest, table)])
    return (table,)


@app.cell
def _(manifest, mo, table):
    filterable = [name for name in manifest.labels if name in table]
    label_filter = mo.ui.dropdown(options=["(every row)", *filterable], value="(every row)", label="rows where")
    value_filter = mo.ui.text(value="1", label="equals")
    mo.vstack([mo.md("## Rollouts"), mo.hstack([label_filter, value_filter], justify="start")])
    return label_filter, value_filter


@app.cell
def _(label_filter, mo, table, value_filter):
    shown = table
    if label_filter.value != "(every row)":
        try:
            shown = table[table[label_filter.value] == float(value_filter.value)]
        except ValueError:
            shown = table[table[label_filter.value].astype(str) == value_filter.value]
    columns = [c for c in shown.columns if c not in ("text", "finish_reason", "prompt")]
    browser = mo.ui.table(shown[columns], selection="single", page_size=8, label=f"{len(shown)} row(s)")
    browser
    return browser, shown


@app.cell
def _(browser, mo, shown):
    picked = browser.value
    mo.stop(len(picked) == 0, mo.md("Pick a row to read its prompt and samples."))
    row = shown[shown["row_id"] == picked["row_id"].iloc[0]].iloc[0]
    texts = list(row["text"]) if "text" in row and row["text"] is not None else []
    reasons = list(row["finish_reason"]) if "finish_reason" in row and row["finish_reason"] is not None else []
    samples = "\n\n".join(f"**sample {i + 1}** ({reason}):\n\n```\n{text}\n```"
                          for i, (text, reason) in enumerate(zip(texts, reasons)))
    mo.md(f"### row {row['row_id']} ({row['split']})\n\n**prompt**:\n\n```\n{row['prompt']}\n```\n\n"
          f"{samples or '(no rollouts: --backend none)'}")
    return


@app.cell
def _(eval_dir, explorer, mo, probe_dir, score_dir, sweep_dir):
    from raypipe.probes import plots

    outputs = {**explorer.probe_outputs(probe_dir), **explorer.probe_outputs(sweep_dir),
               **explorer.probe_outputs(eval_dir), **explorer.probe_outputs(score_dir)}
    shown_outputs = [mo.md("## Probes")]
    performance = outputs.get("performance")
    if performance:
        import numpy as np

        grid = np.array(performance["layer_performance"]["cv" if performance["k_fold"] else "train"], dtype=float)
        best = (performance["best"]["position_index"], performance["best"]["layer_index"])
        summary = performance["best"]
        shown_outputs.append(mo.md(
            f"### Sweep of `{performance['label']}`: {'CV' if performance['k_fold'] else 'train'} "
            f"{performance['metric']} per (layer, position)\n\nBest: layer {summary['layer']}, position "
            f"{summary['position']} ({summary['selected_by']} {summary[summary['selected_by'] + '_score']}, "
            f"test {summary['test_score']})"))
        shown_outputs.append(plots.score_heatmap_figure(grid, performance["layers"], performance["positions"],
                                                        performance["metric"], best))
        by_split = explorer.split_scores(performance)
        if by_split:
            shown_outputs.append(mo.md("The chosen probe on each split:\n\n" + by_split))
    predictions = outputs.get("best_probe_predictions")
    if (predictions and predictions.get("test") and predictions["task_type"] == "classification"
            and len(set(predictions["test"]["labels"])) == 2):
        test = predictions["test"]
        shown_outputs.append(plots.roc_figure(test["labels"], {"best probe": test["predictions"]},
                                              f"layer {predictions['layer']}, position {predictions['position']}"))
    if outputs.get("probe_eval"):
        rows = outputs["probe_eval"]["table"]
        shown_outputs.append(mo.md("### SEP evaluation (predicting incorrectness)\n\n"
                                   "| split | score | layer | position | ROC-AUC | 95% CI | p |\n"
                                   "|---|---|---|---|---|---|---|\n"
                                   + "\n".join(f"| {r.get('split', 'test')} | {r['score']} | {r['layer']} | "
                                               f"{r['position']} | {r['roc_auc']:.3f} | "
                                               f"{r['ci95'][0]:.2f}..{r['ci95'][1]:.2f} | {r['p_value']:.3f} |"
                                               for r in rows if r["roc_auc"] is not None)))
    if outputs.get("evaluation"):
        evaluation = outputs["evaluation"]
        scored = {split: found for split, found in evaluation.items()
                  if isinstance(found, dict) and "significance" in found}
        shown_outputs.append(mo.md("Ray Train probe: " + ", ".join(
            f"{split} {found.get('roc_auc', found.get('spearman'))}" for split, found in scored.items())))
    if outputs.get("score"):
        scored = outputs["score"]
        shown_outputs.append(mo.md(explorer.score_summary(scored)))
        calibrated = {split: entry["calibration"] for split, entry in scored["splits"].items()
                      if entry.get("calibration")}
        if calibrated:
            shown_outputs.append(plots.reliability_figure(calibrated, "the saved probe's reliability by split"))
    if len(shown_outputs) == 1:
        shown_outputs.append(mo.md("No probe outputs given (`--probe`, `--sweep`, `--eval`, `--score`)."))
    mo.vstack(shown_outputs)
    return


@app.cell
def _(manifest, mo):
    trainable = [name for name, label in manifest.labels.items() if label.has_values]
    probe_label = mo.ui.dropdown(options=trainable, value=trainable[0], label="label")
    probe_layer = mo.ui.dropdown(options=[str(x) for x in manifest.features.layers],
                                 value=str(manifest.features.layers[-1]), label="layer")
    probe_position = mo.ui.dropdown(options=[str(x) for x in manifest.features.positions],
                                    value=str(manifest.features.positions[-1]), label="position")
    mo.vstack([mo.md("## A probe, fitted live"), mo.hstack([probe_label, probe_layer, probe_position],
                                                              justify="start")])
    return probe_label, probe_layer, probe_position


@app.cell
def _(data_dir, explorer, mo, probe_label, probe_layer, probe_position):
    from raypipe.errors import UserError

    position = probe_position.value
    position = int(position) if position.lstrip("-").isdigit() else position
    try:
        fitted = explorer.live_probe(data_dir, probe_label.value, int(probe_layer.value), position)
        message = (f"**{fitted['label']}** at layer {fitted['layer']}, position {fitted['position']} "
                   f"({fitted['task']}, {fitted['train_rows']} train rows): test {fitted['metric']} "
                   f"**{fitted['test_score']:.3f}** on {fitted['test_rows']} rows")
    except UserError as exc:
        message = f"Cannot fit this probe: {exc}"
    mo.md(message)
    return


if __name__ == "__main__":
    app.run()
