import sys

from medserve.cli import main

sys.exit(main())
