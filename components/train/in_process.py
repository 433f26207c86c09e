"""Run a one-rank training job in this process: ``python -m trainer`` without the process spawn.

    train_in_process("debug", ["data.path=out/episodes/interval=...", "train.output_dir=..."])

The same run as :func:`components.launchers.local.train_locally` with ``nproc = 1`` (the trainer's
own entry, :func:`trainer.__main__.run`, on the same config and overrides; the outputs are the
same files with the same contents), minus the child's interpreter start and ``torch`` import:
seconds per run, which dominate a short incremental run. Failures raise the same
:class:`~components.launchers.local.LaunchError` (code 2: the trainer refused its config or data).
The process-wide torch settings the trainer changes (thread count, deterministic kernels, the
global RNG) are put back afterwards, so a run neither sees nor leaves another run's settings.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from components.launchers.local import USER_ERROR, LaunchError


def train_in_process(config: str | None, overrides: Sequence[str], *, verbose: bool = False):
    """Train, evaluate and write the report of a one-rank run in this process.

    Raises:
        LaunchError: the run failed; code 2 when the trainer refused its config or data (the
            subprocess's exit code for a user error), 1 for any other error (chained).
    """
    import torch

    from trainer.__main__ import run
    from trainer.checkpoint import CheckpointError

    args = argparse.Namespace(
        config=config, overrides=list(overrides), print_config=False, verbose=verbose
    )
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    rng = torch.random.get_rng_state()
    try:
        run(args)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        raise LaunchError(
            f"local training (in process) refused its config or data, exit code {USER_ERROR}: "
            f"trainer: error: {e}",
            USER_ERROR,
        ) from e
    except Exception as e:
        raise LaunchError(f"local training (in process) failed: {type(e).__name__}: {e}", 1) from e
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        torch.random.set_rng_state(rng)
