"""``python -m components.serve``: the model server (see :mod:`components.serve.server`)."""

import sys

from components.serve.server import main

sys.exit(main())
