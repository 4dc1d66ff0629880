"""edgeprompt.runtimes: the on-device runtimes (installed from the ``runtimes/`` folder). Imports no torch.

>>> from edgeprompt.runtimes import open_bundle
>>> rt = open_bundle("my-bundle")                       # doctest: +SKIP
>>> rt.classify("tweets", "so happy today").label       # doctest: +SKIP
"""

from .runtime import Classification, PrefixCache, Runtime, open_bundle

__all__ = ["open_bundle", "Runtime", "Classification", "PrefixCache"]
