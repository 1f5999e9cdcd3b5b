import sys

from saekit.cli.main import main

sys.exit(main())
