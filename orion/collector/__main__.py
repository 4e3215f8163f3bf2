"""`python -m orion.collector ARGS` is `orion collect ARGS`."""
import sys

from orion.collector.commands import main

sys.exit(main())
