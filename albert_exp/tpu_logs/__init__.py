"""Console logs of google-research/albert `run_pretraining.py` on Cloud TPU -> one MLflow run.

    albert-exp tpu-logs command --config experiments/tpu_recipe.yaml      # the TPU command, ends in `| tee LOG`
    albert-exp tpu-logs ingest pretrain-*.log --experiment tpu-recipe    # parse + back-fill an MLflow run
    albert-exp tpu-logs ingest pretrain-*.log --follow                   # tail a growing log while it trains

Modules: `grammar` (one line at a time: absl/glog/TF C++ formats, blocks, restarts), `parse` (files -> tidy
pandas tables: years, restarts, duplicates), `ingest` (MLflow: idempotent, --append, --follow), `plot`,
`command` (the run_pretraining.py command of an experiment), `synth` (realistic synthetic logs for tests and
the benchmark), `cli`. Nothing heavy is imported here.
"""
