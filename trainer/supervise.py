"""``python -m trainer.supervise <torchrun arguments>``: torchrun, exiting with a code the
Kubernetes operators act on.

    python -m trainer.supervise --nproc-per-node=2 -m trainer --config /etc/metarec/trainer.toml ...

torchrun exits 1 whenever anything goes wrong: a rank killed (OOM, SIGKILL), aborted (an NCCL
abort), raising, exiting 2 on a bad config, or torchrun itself stopped by SIGTERM (preemption). The
Training Operator v1 with ``restartPolicy: ExitCode`` restarts a pod only for exit codes 128-255, so
under plain torchrun every rank failure would fail the job for good. This module runs the same
launch (``torch.distributed.run``'s own argument parser, so the same arguments and the same
``PET_*`` defaults the operators inject) and maps its outcome to:

=======  ==================================================================================
0        every rank succeeded
2        a rank exited 2, the trainer's "user error" (bad config or data): a restart would
         only repeat it, so the job fails at once. Invalid torchrun arguments also exit 2.
128+N    a rank was killed by signal N: SIGKILL 137 (OOM killer, a lost process), SIGABRT 134
         (an NCCL abort, ``TORCH_NCCL_ASYNC_ERROR_HANDLING``), SIGSEGV 139. Or this launcher
         got signal N: SIGTERM 143 (preemption, ``kubectl delete pod``), SIGINT 130; torchrun
         forwards it to the ranks and lets them stop (its ``--shutdown-timeout``) first.
138      any other failure: a rank exited non-zero without a signal (an exception, a collective
         error after a peer died), or the launch itself failed (e.g. a rendezvous timeout).
         138 = 128 + SIGUSR1, the code the Training Operator has long kept for "retryable".
=======  ==================================================================================

A rank's own exit code in 128-255 is kept as it is. When several ranks fail, a user error wins
(a restart would repeat it), then a signal (the root cause: the other ranks' errors follow from
it), then any other failure; the ranks that torchrun itself stopped with SIGTERM after the first
failure are not causes. One line on stderr says what happened and which code follows. Both
operators restart the job for 128-255 and fail it for 2: see the headers of manifests/base/pytorchjob and
manifests/base/trainjob; tests/reliability/test_restart_policy.py kills real ranks to show it.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Mapping, Sequence
from types import FrameType

USER_ERROR = 2
"""The trainer's exit code for a bad config or bad data (permanent)."""
OTHER_FAILURE = 128 + signal.SIGUSR1
"""138: a retryable failure without a signal."""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def exit_code_for(failures: Mapping[int, int]) -> tuple[int, str]:
    """The exit code for failed ranks, and what happened, in words.

    Args:
        failures: global rank -> that rank's exit code as torchrun reports it (negative: killed by
            that signal), for every rank that failed.

    >>> exit_code_for({1: -9, 0: -15})  # rank 1 killed; torchrun then stopped rank 0
    (137, 'rank 1 was killed by SIGKILL')
    >>> exit_code_for({1: 1, 0: -15})
    (138, 'rank 1 exited 1')
    >>> exit_code_for({1: 2, 0: -6})
    (2, 'rank 1 exited 2 (a user error: bad config or data)')
    """
    if not failures:
        raise ValueError("exit_code_for needs at least one failed rank")
    ranks = sorted(failures)
    for rank in ranks:
        if failures[rank] == USER_ERROR:
            return USER_ERROR, f"rank {rank} exited 2 (a user error: bad config or data)"
    # torchrun stops the other ranks with SIGTERM once one fails: those are not the cause
    causes = [r for r in ranks if failures[r] != -signal.SIGTERM] or ranks
    for rank in causes:
        if failures[rank] < 0:
            number = -failures[rank]
            return 128 + number, f"rank {rank} was killed by {_signal_name(number)}"
    for rank in causes:
        if failures[rank] >= 128:
            return failures[rank], f"rank {rank} exited {failures[rank]}"
    rank = causes[0]
    return OTHER_FAILURE, f"rank {rank} exited {failures[rank]}"


def _meaning(code: int) -> str:
    if code == 0:
        return "success"
    if code >= 128:
        return "retryable: the operator restarts the job"
    return "permanent: the operator fails the job"


def main(argv: Sequence[str] | None = None) -> int:
    """Run torchrun's launch with ``argv`` (torchrun's arguments) and return the exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(list(sys.argv[1:] if argv is None else argv))  # SystemExit(2) if invalid

    def stop(number: int, frame: FrameType | None) -> None:
        sig = signal.Signals(number)
        raise SignalException(f"the launcher got {sig.name}", sigval=sig)

    # torchrun installs the same handler once the ranks start; this one covers the rendezvous
    # before that (and Python as PID 1 in a container, which ignores an unhandled SIGTERM).
    for name in args.signals_to_handle.split(","):
        signal.signal(signal.Signals[name.strip()], stop)
    try:
        run(args)
    except ChildFailedError as e:
        code, cause = exit_code_for({rank: f.exitcode for rank, f in e.failures.items()})
    except SignalException as e:
        code = 128 + int(e.sigval)
        cause = f"the launcher got {e.sigval.name} (preempted or stopped); the ranks were stopped"
    except Exception as e:  # the launch itself: rendezvous timeout, lost store, ...
        code, cause = OTHER_FAILURE, f"the launch failed: {type(e).__name__}: {e}"
    else:
        code, cause = 0, "every rank succeeded"
    print(f"trainer.supervise: {cause}; exit {code} ({_meaning(code)})", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
