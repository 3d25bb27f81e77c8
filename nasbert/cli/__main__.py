"""``python -m nasbert.cli``: the ``nasbert`` command."""

import sys

from . import main

sys.exit(main())
