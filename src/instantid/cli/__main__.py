import sys

from instantid.cli import main

sys.exit(main())
