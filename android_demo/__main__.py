"""``python -m edgeprompt.android_demo BUNDLE -o DIR [--serve]``: the same as ``edgeprompt android-demo``."""

import sys

from edgeprompt.android_demo import main

sys.exit(main())
