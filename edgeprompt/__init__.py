"""edgeprompt: train soft prompts and prefixes on a frozen LLM, fold them into a prompt bank,
and (in later modules) export and serve them on CPUs and phones.

The top-level import is light (no torch); the training stack is imported where it is used.
"""

__version__ = "0.1.0"
