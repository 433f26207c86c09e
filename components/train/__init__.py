"""``metarec train``: run the PyTorch trainer (``trainer/``) in this process."""
