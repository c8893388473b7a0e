"""``python -m bridge`` is ``trigger-bridge``."""

import sys

from bridge.cli import main

sys.exit(main())
