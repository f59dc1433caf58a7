"""Finetuning on the trigger task, the whole wing in one package: its knobs (`config`: an experiment's config.json
and the options of `raypipe finetune` and `raypipe experiments analyze`), the recipe on Ray Train (`recipe`: setup,
train_epoch, evaluate, save; `steps`: which rows each worker runs; `checkpoint`: epoch state as safetensors + JSON),
`run` (one seed, resumable, skipped when complete), `experiments` (seeds on Ray Tune, templates, summaries),
`analysis` and `patching` (looking inside the finetuned model), accuracy by label-word log-likelihood or generation
(`accuracy`), tokenization (`data`), plots, logs and the hub push. The experiment folder's format (config.json,
data_config.json) is read in raypipe.tasks.experiment."""
