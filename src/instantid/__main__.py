"""``python -m instantid ...``: the same as the ``instantid`` command."""

import sys

from instantid.cli import main

if __name__ == "__main__":
    sys.exit(main())
