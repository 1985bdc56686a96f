"""The compiled replay kernel: state layout (:mod:`.layout`), the arenas unpacked (:mod:`.state`),
slot bookkeeping (:mod:`.slots`), clocks (:mod:`.engine`), oracle facts (:mod:`.future`), policy calls
(:mod:`.hooks`) and the loop itself (:mod:`.loop`). Everything here is numba-compiled and works on flat
arrays; no part of it knows any particular policy."""

from specmd_env.kernel.layout import *  # noqa: F401,F403  (the state's names are the kernel's vocabulary)
from specmd_env.kernel.loop import advance, prefetch_base  # noqa: F401
