"""``python -m megaportraits``: the same as the ``megaportraits`` command."""
import sys

from .cli import main

sys.exit(main())
