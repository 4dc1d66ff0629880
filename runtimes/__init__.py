"""edgeprompt.runtimes: the on-device runtimes (installed from the ``runtimes/`` folder). Imports no torch.

>>> from edgeprompt.runtimes import open_bundle
>>> rt = open_bundle("my-bundle")                       # doctest: +SKIP
>>> rt.classify("tweets", "so happy today").label       # doctest: +SKIP
"""

from edgeprompt.runtimes.backend import BACKENDS, Backend, BackendSequence, Prefix
from edgeprompt.runtimes.cache import PrefixCache
from edgeprompt.runtimes.runtime import Classification, Runtime, open_bundle

__all__ = ["open_bundle", "Runtime", "Classification", "PrefixCache", "Backend", "BackendSequence", "Prefix", "BACKENDS"]
