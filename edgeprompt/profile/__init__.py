"""``edgeprompt profile``: what each way of deploying a soft prompt costs, measured, on this machine, and
projected onto device profiles (torch-free: it runs on the device).

Arms (:mod:`.arms`) run through the runtime's backend; one bundle is profiled in :mod:`.bundle_profile`,
memory and banks in child processes (:mod:`.children`); :mod:`.costmodel` calibrates an analytic model on
this machine, checks it against every figure and projects it onto :mod:`.devices`; :mod:`.report` writes
``results.json``, ``report.md`` and ``report.html``; :mod:`.run` runs the stages in order.
"""

from edgeprompt.profile.run import ProfileConfig, ProfileError, profile_bundles

__all__ = ["ProfileConfig", "ProfileError", "profile_bundles"]
