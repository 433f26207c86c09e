"""``metarec export``: a training checkpoint -> a versioned, checksummed model directory
(:mod:`trainer.exported.export`)."""
