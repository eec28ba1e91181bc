"""Named points where a test can kill the process, to prove recovery from a crash at that point.

Inactive unless ``B24WH_FAILPOINT`` names the point: then the process SIGKILLs itself there (no
cleanup, no flush: exactly what a power cut or the OOM killer does). With
``B24WH_FAILPOINT_ONCE=<path>`` it fires only while that file does not exist (it creates the file
first), so a long-running service crashes once and then recovers. The crash tests set these.
"""

from __future__ import annotations

import os
import signal

ENV = "B24WH_FAILPOINT"
ONCE_ENV = "B24WH_FAILPOINT_ONCE"

POINTS = (
    "after_reserve_response",  # event.offline.get answered, the journal does not know the process ids yet
    "after_reserve",  # reservations journalled, nothing fetched
    "during_fetch",  # some entities fetched and staged, not all
    "during_commit",  # the first chunk committed, the journal still at reserved
    "after_commit",  # data and journal committed, event.offline.clear not sent
    "writeback_after_intent",  # write-back: a batch's intents journalled, the batch not sent
    "writeback_after_batch",  # write-back: a batch applied by the portal, its outcome not journalled
    "stage_history_fetched",  # stage-history rows read, neither rows nor marks committed
    "product_rows_fetched",  # product rows of a chunk of deals read, not committed
)


def failpoint(name: str) -> None:
    if os.environ.get(ENV) != name:
        return
    marker = os.environ.get(ONCE_ENV)
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
