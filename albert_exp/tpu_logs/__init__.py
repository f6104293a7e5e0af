"""Console logs of google-research/albert `run_pretraining.py` on Cloud TPU -> one MLflow run.

    albert-exp tpu-logs command --config experiments/tpu_recipe.yaml      # the TPU command, ends in `| tee LOG`
    albert-exp tpu-logs ingest pretrain-*.log --experiment tpu-recipe    # parse + back-fill an MLflow run
    albert-exp tpu-logs ingest pretrain-*.log --follow                   # tail a growing log while it trains

Modules: `grammar` (one line at a time: the three line formats, tables of line patterns, blocks, restarts),
`years` (the year of year-less glog times), `parse` (files -> tidy pandas tables; the rules for duplicates,
overlapping attempts, file order, time zones), `summary` (what was parsed; headline figures; params),
`runs` (which run holds which files: identity, --append, grown files, the run's earlier table), `ingest`
(the stage: points, params, tables, plot and identity into MLflow through albert_exp.tracking),
`follow` (tail a growing log with the same rules and wrap-up), `plot`, `command` (the run_pretraining.py
command of an experiment), `cli`. Synthetic logs with their ground truth (tests, benchmark) are in
tests/tpu_logs_synth.py. Nothing heavy is imported here.
"""
