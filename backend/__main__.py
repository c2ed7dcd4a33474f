"""``python -m backend``: the same as the ``signal-backend`` command."""

import sys

from backend.cli import main

sys.exit(main())
