"""Train and evaluate a meta-learning CTR/CVR model on one interval of ETL episodes.

Runs the trainer (``python -m trainer``) in this process, or with --nproc N (and --nnodes) as a
torchrun job of N processes per host whose ranks shard the embedding rows and replicate the dense
layers: same config files, same overrides, same outputs.

Processes:
  --nproc N              ranks on this host (1: in this process; N > 1: torchrun, one per rank)
  --nnodes H             hosts; run the same command on each with --node-rank and the rendezvous
  --node-rank R          --master-addr/--master-port of host 0 (inside a Kubeflow PyTorchJob the
  --master-addr A        operator's PET_* variables supply all three; --standalone otherwise)
  --master-port P

A run is a config file plus overrides:
  --config FILE|NAME     a TOML file, or a packaged run: debug (CPU, seconds), default (issue-3
                         shape: 16 fields x dim 16, MLP 256-128-1, 64 episodes per step)
  section.key=value      overrides, values as TOML literals: train.steps=100, model.mlp=[64,32],
                         meta.mode=fomaml, data.path="s3://bucket/episodes/dt=2026-11-01"

Sections (every field is documented in trainer/config.py; --print-config shows them resolved):
  data        path (ETL output, required), train_split, batch_episodes, prefetch, seed, shuffle,
              shuffle_buffer, task_local_rows, verify_checksums
  model       arch (dlrm, deepfm, wide_deep, melu), embedding_dim, mlp, bottom_mlp, head_layers,
              label (click, conversion, clicked_conversion), embedding_init_std, task (ctr;
              esmm: CTR and CVR towers, CTR + CTCVR losses over all impressions)
  meta        mode: maml, fomaml, plain, film (a support-set encoder modulates the dense
              layers: encoder_hidden), metaemb (generated embeddings of cold ids: metaemb_id,
              metaemb_attributes, metaemb_alpha); inner_steps, inner_lr, adapt (head, dense,
              dense+emb), learn_inner_lr (off, layer, parameter: Meta-SGD, maml/fomaml only)
  optim       dense Adam (dense_lr, betas, eps, weight_decay, grad_clip_norm), sparse_lr (Adagrad)
  parallel    sharding (row_wise, table_wise), table_wise, dense_bucket_mb, backend, timeout_s,
              cache, des, dynamic
  train       steps, log_every, eval_every, seed, deterministic, threads, device, output_dir
  checkpoint  every, keep, resume, reshard, warm_start (another run; a method run may start from
              a plain or MAML one), warm_start_optimizer
  eval        splits, max_episodes, adapt_steps, adapt_lr, adapt

Outputs in train.output_dir: config.json, sharding_plan.json, metrics.jsonl (with the bytes and
calls of every collective per step), eval.json, report.png, checkpoints/ (one shard per rank).

data.batch_episodes is per rank: a step of N ranks trains on N x batch_episodes episodes. A run
resumes at the world size it was saved at (checkpoint.reshard=true re-places the rows otherwise).

examples:
  metarec train --config debug data.path=out/episodes/dt=2026-11-01
  metarec train --config default data.path=out/episodes/dt=2026-11-01 meta.mode=fomaml \\
      model.arch=deepfm train.output_dir=out/train/deepfm-fomaml
  metarec train --config default data.path=out/episodes/dt=2026-11-02 \\
      checkpoint.warm_start=out/train/deepfm-fomaml train.output_dir=out/train/day2
  metarec train --nproc 2 --config debug data.path=out/episodes/dt=2026-11-01
"""

from __future__ import annotations

import argparse
import sys


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """``--nproc`` and the rendezvous options, ``--config``, ``--print-config`` and the
    ``section.key=value`` overrides."""
    from trainer.__main__ import add_arguments  # argparse only: keeps `--help` fast

    add_arguments(parser)
    procs = parser.add_argument_group("processes")
    procs.add_argument("--nproc", type=int, default=1, help="ranks on this host (default 1)")
    procs.add_argument("--nnodes", type=int, default=None, help="hosts of the job")
    procs.add_argument("--node-rank", type=int, default=None, help="this host's rank")
    procs.add_argument("--master-addr", default=None, help="rendezvous host (host 0)")
    procs.add_argument("--master-port", type=int, default=None, help="rendezvous port")
    from components.launchers.backend import add_backend_arguments

    add_backend_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Train, evaluate and write the report, in this process or as a torchrun job; a user error
    is one line and exit code 2, a failed job one line naming torchrun's exit code."""
    if args.backend == "kubernetes":
        from components.launchers.backend import run_train_with_backend

        return run_train_with_backend(args, args.config, list(args.overrides))
    from components.train.launch import TorchrunOptions, run_torchrun, torchrun_command
    from trainer.__main__ import execute

    opts = TorchrunOptions(
        args.nproc, args.nnodes, args.node_rank, args.master_addr, args.master_port
    )
    if args.print_config or not opts.multi_process():
        return execute(args, prog="metarec train")

    from trainer.config import load_trainer_config

    load_trainer_config(args.config, list(args.overrides))  # refuse a bad config before launching
    trainer_args = [*(["--config", args.config] if args.config else []), *args.overrides]
    code = run_torchrun(torchrun_command(opts, [*trainer_args, *(["-v"] if args.verbose else [])]))
    if code != 0:
        sys.stderr.write(
            f"metarec train: error: the torchrun job of {opts.nproc} process(es) per host failed "
            f"(exit code {code}); the failing rank's error is above (torchrun's 'Root Cause' "
            "section, or its one-line 'trainer: error:')\n"
        )
    return code
