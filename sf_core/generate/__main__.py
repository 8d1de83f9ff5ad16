import sys

from sf_core.generate.cli import main

sys.exit(main())
