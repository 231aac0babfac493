"""``python -m haikucache`` is the ``haikucache`` command."""

import sys

from ._cli import main

sys.exit(main())
