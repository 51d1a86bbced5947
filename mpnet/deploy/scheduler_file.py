"""The scheduler file, where deployment code has always imported it from.

It lives in :mod:`mpnet.scheduler_file`, below both the scheduler (which writes it) and
the deployers, clients and workers (which read it): this module only hands its names on.
"""

from ..scheduler_file import (DEFAULT_WAIT, InvalidSchedulerFileError,
                              SchedulerFileTimeoutError, StaleSchedulerFileError,
                              read_scheduler_file, remove_scheduler_file, write_scheduler_file)

__all__ = ["write_scheduler_file", "read_scheduler_file", "remove_scheduler_file",
           "StaleSchedulerFileError", "SchedulerFileTimeoutError",
           "InvalidSchedulerFileError", "DEFAULT_WAIT"]
