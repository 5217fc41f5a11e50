"""``python -m binarydm.export ckpt=PATH out=FILE [verify=true] [overwrite=true] [ema=false]``

Writes the packed 1-bit checkpoint of a trained student (``binarydm.packing.export``) and prints its size,
the size of the same UNet as an FP32 diffusers checkpoint, their ratio and ``binarydm.summary``'s
theoretical storage. ``ckpt``: a student directory, a run directory holding ``student/``, any other form
``binarydm.load`` reads, or a packed file (re-export); ``ema=false`` packs a training .ckpt's raw weights
rather than its EMA. ``verify=true`` reloads the file and checks that its
output equals the student's (exit 1 otherwise). An existing ``out`` that is not a packed file is refused
(``overwrite=true`` replaces it). A bad argument prints one line, ``error: ...``, and exits 2.
"""

from __future__ import annotations

from typing import Optional, Sequence

from .cli import parse
from .errors import RunFailed, run_main
from .packing.export import ExportArgs, export, report_lines


def _main(argv: list[str]) -> None:
    args = parse(ExportArgs, argv, __doc__)
    report = export(args.ckpt, args.out, args.verify, args.overwrite, args.ema)
    print("\n".join(report_lines(report)))
    if report.get("verified_equal") is False:
        raise RunFailed(f"{report['file']}: the reloaded packed model's output differs from the student's "
                        "(verify=true)")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """A user error prints ``error: ...`` and raises SystemExit(2) (BINARYDM_DEBUG=1: the traceback)."""
    run_main(_main, argv, raise_exit=True)


if __name__ == "__main__":
    main()
