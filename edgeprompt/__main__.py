import sys

from edgeprompt.cli import main

sys.exit(main())
