"""Each image's default command (ENTRYPOINT + CMD, as `docker run <image>` runs it) works in the
image's environment."""

from __future__ import annotations

import pytest

from tests.images.image_env import ImageEnv

pytestmark = pytest.mark.image_contract


def test_trainer_image_default_command_runs_the_trainer(trainer_image: ImageEnv):
    # python -m trainer.supervise <torchrun arguments> -m trainer --help
    proc = trainer_image.run([*trainer_image.entrypoint, *trainer_image.cmd], timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "usage:" in proc.stdout and "--config" in proc.stdout, proc.stdout[-4000:]


def test_components_image_default_command_is_the_cli(components_image: ImageEnv):
    # Spark's /opt/entrypoint.sh (from the Spark image, not here) passes a non-Spark command
    # through unchanged (`*) exec "$@"`), so the container runs CMD as is.
    assert components_image.entrypoint == ("/opt/entrypoint.sh",)
    proc = components_image.run(components_image.cmd, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:]
    for command in ("etl", "train", "validate"):
        assert command in proc.stdout
