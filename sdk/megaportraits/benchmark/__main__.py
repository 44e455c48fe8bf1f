"""``python -m megaportraits.benchmark``: the same as ``megaportraits benchmark``."""
import sys

from .cli import main

sys.exit(main())
