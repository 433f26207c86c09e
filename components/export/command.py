"""Export a trained checkpoint (one rank or sharded) as a versioned model directory.

Writes <out>/<name>/v<N>/ (the next free version; an existing one is never overwritten) with the
dense network as a torch.export graph and as .npy parameters, the embedding tables merged from
every rank's shard (.npy, no pickle), the feature spec and hash contract of the training data's
manifest, the adaptation settings of the run's evaluation, eval.json, lineage.json (data
interval, manifest content hash, config, git commit, package versions) and CHECKSUMS, written
last. The directory is built aside and renamed into place. Exporting the same checkpoint again
returns the version that already holds it.

--checkpoint takes a run's output directory (its latest checkpoint), its checkpoints directory or
one step-XXXXXXXX directory. The manifest is read from the run's data.path unless --manifest
names the ETL output the run trained on (its content hash must match the checkpoint's).

examples:
  metarec export --checkpoint out/train/debug --out out/models
  metarec export --checkpoint out/train/day2/checkpoints/step-00000200 --out out/models \\
      --name ctr-campaign --manifest out/episodes/interval=20261102T00-20261103T00
"""

from __future__ import annotations

import argparse
import json
import sys


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="run dir, checkpoints dir or step dir")
    parser.add_argument("--out", required=True, help="models root")
    parser.add_argument("--name", default=None, help="model name (default <label>-<arch>)")
    parser.add_argument("--manifest", default=None, help="ETL output the run trained on")
    parser.add_argument("--no-graph", action="store_true", help="skip the torch.export graph")
    parser.add_argument("--delta", action="store_true",
                        help="write only the embedding rows changed since the newest version "
                        "(plus the dense parameters), naming it as the base; full when none fits")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from trainer.exported.export import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.out, name=args.name,
                               manifest=args.manifest, graph=not args.no_graph,
                               delta=args.delta)  # fmt: skip
    sys.stdout.write(json.dumps({"path": str(result.path), "name": result.name,
                                 "version": result.version, "created": result.created,
                                 "bytes": result.bytes, "base": result.base},
                                indent=2) + "\n")  # fmt: skip
    return 0
