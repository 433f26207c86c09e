"""``metarec score``: raw events -> predictions with an exported model (no Spark).

``events.py`` reads JSONL/Parquet raw events into canonical batches, ``encode.py`` validates and
encodes them as the ETL does (the Python twin of the feature hash), ``run.py`` streams them
through :mod:`trainer.exported` (optionally adapting to each task's support events) and writes the
predictions, the rejected rows and the accounting; ``command.py`` is the CLI.
"""
