"""One folder per method (as PEFT's ``tuners/``). Each folder's ``__init__`` registers the method's
facts (torch-free, see :mod:`edgeprompt.core.methods`); its ``model.py`` is the training half (torch)."""
