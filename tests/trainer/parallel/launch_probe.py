"""What each process runs in the launch-contract tests: join the job from the variables its
launcher set (a PyTorchJob pod's operator variables, or torchrun's), train a few sharded steps,
write the result.

    python -m tests.trainer.parallel.launch_probe OUT_DIR
    torchrun --standalone --nproc_per_node=2 -m tests.trainer.parallel.launch_probe OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from tests.trainer.parallel.parity import Case, global_batch, layout, train_step
from trainer.optim import build_optimizers
from trainer.parallel.apply import build_parallel_model
from trainer.parallel.env import LaunchSpec, init_parallel

CASE = Case("dlrm", "fomaml", "dense+emb")
STEPS = 2


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    launcher = LaunchSpec.from_environ().launcher
    env = init_parallel(device="cpu", timeout_s=30)
    try:
        model, _ = build_parallel_model(CASE.model_cfg(), layout(), env, dtype=torch.float64)
        opt = build_optimizers(CASE.optim_cfg(), model)
        for s in range(STEPS):
            train_step(model, opt, global_batch(s, env.world_size, env.rank), CASE.meta_cfg(), env)
        result = {"launcher": launcher, "rank": env.rank, "world_size": env.world_size,
                  "dense": model.state_dict(), "emb": model.embeddings.state_dict()}  # fmt: skip
        torch.save(result, Path(out_dir) / f"rank-{env.rank}.pt")
    finally:
        env.close()


if __name__ == "__main__":
    main(sys.argv[1])
