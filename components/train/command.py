"""Train and evaluate a meta-learning CTR/CVR model on one interval of ETL episodes.

Runs the trainer (``python -m trainer``) in this process: same config files, same overrides,
same outputs and exit codes.

A run is a config file plus overrides:
  --config FILE|NAME     a TOML file, or a packaged run: debug (CPU, seconds), default (issue-3
                         shape: 16 fields x dim 16, MLP 256-128-1, 64 episodes per step)
  section.key=value      overrides, values as TOML literals: train.steps=100, model.mlp=[64,32],
                         meta.mode=fomaml, data.path="s3://bucket/episodes/dt=2026-11-01"

Sections (every field is documented in trainer/config.py; --print-config shows them resolved):
  data        ETL output path (required), train split, episodes per step, prefetch, shuffle seed
  model       arch (dlrm, deepfm, wide_deep, melu), embedding_dim, mlp, bottom_mlp, head_layers, label
  meta        mode (maml, fomaml, plain), inner_steps, inner_lr, adapt (head, dense, dense+emb)
  optim       dense Adam (dense_lr, betas, eps, weight_decay, grad_clip_norm), sparse_lr (Adagrad)
  train       steps, log_every, eval_every, seed, deterministic, threads, device, output_dir
  checkpoint  every, keep, resume, warm_start (another run's checkpoint), warm_start_optimizer
  eval        splits, max_episodes, adapt_steps, adapt_lr, adapt

Outputs in train.output_dir: config.json, metrics.jsonl, eval.json, report.png, checkpoints/.

examples:
  metarec train --config debug data.path=out/episodes/dt=2026-11-01
  metarec train --config default data.path=out/episodes/dt=2026-11-01 meta.mode=fomaml \\
      model.arch=deepfm train.output_dir=out/train/deepfm-fomaml
  metarec train --config default data.path=out/episodes/dt=2026-11-02 \\
      checkpoint.warm_start=out/train/deepfm-fomaml train.output_dir=out/train/day2
"""

from __future__ import annotations

import argparse


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--print-config`` and the ``section.key=value`` overrides."""
    from trainer.__main__ import add_arguments  # argparse only: keeps `--help` fast

    add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Train, evaluate and write the report (exit code 2 with one line on a user error)."""
    from trainer.__main__ import execute

    return execute(args, prog="metarec train")
