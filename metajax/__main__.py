"""``python -m metajax`` is the ``metajax`` console script."""
import sys

from metajax.harness.cli import main

sys.exit(main())
