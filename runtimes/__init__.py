"""edgeprompt.runtimes: the on-device runtimes (installed from the ``runtimes/`` folder). Imports no torch."""
