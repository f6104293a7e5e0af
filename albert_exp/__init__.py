"""albert-exp: pretrain ALBERT on your own corpus, fine-tune it to tag phrases, track it all in MLflow.

Nothing heavy is imported here: `albert-exp --help` must answer in well under a second.
"""

__version__ = "0.1.0"
