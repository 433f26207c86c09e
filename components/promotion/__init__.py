"""Champion/challenger promotion with atomic pointer swaps, rollback and an append-only history.

``gate.py`` decides (typed verdicts, same-data check), ``registry.py`` moves the ``CHAMPION``
pointer in one ``os.replace`` and keeps ``HISTORY.jsonl``; ``promote_command.py`` and
``rollback_command.py`` are ``metarec promote`` and ``metarec rollback``. Standard library only
(``--evaluate-on`` imports the torch-based evaluator when it runs).
"""
