"""``python -m echopanel``."""

import sys

from echopanel.cli.main import main

sys.exit(main())
