import sys

from sparsetel.cli import main

sys.exit(main())
