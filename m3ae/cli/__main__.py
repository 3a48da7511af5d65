"""``python -m m3ae.cli ...``: the same as the ``m3ae`` command (what torchrun launches)."""
import sys

from m3ae.cli import main

sys.exit(main())
