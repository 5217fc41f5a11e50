"""What the entry points print: third-party lines that are not the user's to act on, filtered precisely.

Each filter names one message of one library, so a new warning (binarydm's own, or a library's that a user
should see) still prints:

* Lightning's advertisement, "💡 Tip: For seamless cloud logging ... try installing litlogger ...", logged by
  its trainer on every run;
* torch's FutureWarning "`isinstance(treespec, LeafSpec)` is deprecated", raised inside Lightning's own
  ``_pytree`` helper on every fit;
* torch's FutureWarning "`torch.jit.load` is deprecated", raised by the FID feature extractor's loader.
"""

from __future__ import annotations

import logging
import warnings

_LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
_DEPRECATIONS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"`torch\.jit\.load` is deprecated")


class _DropAdvert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("💡 Tip:") and "litlogger" in message)


def quiet_third_party() -> None:
    """Install the filters (idempotent); called by every entry point before it runs."""
    for message in _DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    for name in _LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropAdvert) for f in logger.filters):
            logger.addFilter(_DropAdvert())


__all__ = ["quiet_third_party"]
