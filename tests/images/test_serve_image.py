"""The model server image's entry point (components/serve/Dockerfile: ``python -m
components.serve``) serves an export in the image's environment: the installed wheel with kserve
and the pins of components/serve/constraints.txt, nothing of the source tree. A delta export is
loaded through its chain, OIP v2 answers equal the exported scorer's scores (run here, in the dev
environment), and the default command's options are the server's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from components.promotion import registry
from components.serve.loopback import LocalServer
from tests.images.image_env import ImageEnv
from tests.trainer.exported.runs import train
from tests.trainer.run_helpers import write_episodes
from trainer.exported import export_checkpoint, load_exported, score_samples

pytestmark = pytest.mark.image_contract


def test_the_server_entry_point_serves_a_delta_export(serve_image: ImageEnv, tmp_path: Path):
    assert serve_image.entrypoint == ("python", "-m", "components.serve")
    run = train(write_episodes(tmp_path / "episodes"), tmp_path / "run")
    for step in ("step-00000002", "step-00000004"):
        export_checkpoint(run / "checkpoints" / step, tmp_path / "models", name="m", delta=True)
    registry.promote(tmp_path / "models", "m", "v2", reason="test")  # v2: a delta on v1
    model = load_exported(tmp_path / "models" / "m" / "v2")
    gen = np.random.default_rng(0)
    buckets = np.asarray([model.layout.feature_buckets[f]
                          for f in model.layout.slot_feature.tolist()])  # fmt: skip
    sparse = (gen.random((100, len(buckets))) * buckets).astype(np.int64)
    dense = gen.random((100, model.layout.dense_width)).astype(np.float32)

    server = LocalServer(tmp_path / "models" / "m", tmp_path / "server.log",
                         entrypoint=serve_image.entrypoint, env=serve_image.process_env(),
                         cwd=serve_image.workdir, ready_timeout_s=300)  # fmt: skip
    with server:
        got = server.infer(sparse, dense)
    assert got["version"] == "v2"
    np.testing.assert_allclose(got["logit"], score_samples(model, sparse, dense), rtol=1e-6,
                               atol=1e-6)  # fmt: skip
    where = serve_image.run(["python", "-c", "import kserve, components.serve as s; "
                             "print(kserve.__file__, s.__file__)"])  # fmt: skip
    assert all(path.startswith(str(serve_image.venv)) for path in where.stdout.split()), where
    helped = serve_image.run([*serve_image.entrypoint, "--help"], timeout=120)
    assert helped.returncode == 0, helped.stdout[-3000:]
    for option in serve_image.cmd[::2]:  # the default command's options exist
        assert option in helped.stdout
