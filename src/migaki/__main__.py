import sys

from migaki.cli import main

sys.exit(main())
