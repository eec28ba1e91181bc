"""Named points where a test can kill the process, to prove recovery from a crash at that point.

Inactive unless ``B24WH_FAILPOINT`` names the point: then the process SIGKILLs itself there (no
cleanup, no flush: exactly what a power cut or the OOM killer does). The crash tests set it.
"""

from __future__ import annotations

import os
import signal

ENV = "B24WH_FAILPOINT"

POINTS = (
    "after_reserve_response",  # event.offline.get answered, the journal does not know the process ids yet
    "after_reserve",  # reservations journalled, nothing fetched
    "during_fetch",  # some entities fetched and staged, not all
    "after_commit",  # data and journal committed, event.offline.clear not sent
)


def failpoint(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
