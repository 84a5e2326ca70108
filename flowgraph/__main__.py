"""``python -m flowgraph``: the same as the ``flowgraph`` command."""

import sys

from .cli import main

sys.exit(main())
