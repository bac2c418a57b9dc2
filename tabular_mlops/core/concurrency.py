"""Another process created the same thing at the same moment.

Stores look a row up, then insert it: two processes doing that at once for the same new
row (a dataset, an experiment tag, Optuna's tables) both insert, and one fails on a unique
key. Done again, the write finds the other's row. One helper for every such write.
"""

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")


def again_if_created_meanwhile(
    write: Callable[[], T],
    what: str,
    raced: Callable[[Exception], bool],
    attempts: int = 4,
    pause_seconds: tuple[float, float] = (0.0, 0.0),
) -> T:
    """`write()` (safe to repeat), again when it fails with an error `raced` says another
    process's concurrent creation caused; after a pause drawn from `pause_seconds`."""
    for _ in range(attempts - 1):
        try:
            return write()
        except Exception as error:
            if not raced(error):
                raise
            logger.info("%s was created by another process meanwhile: again", what)
            time.sleep(random.uniform(*pause_seconds))
    return write()
