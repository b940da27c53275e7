"""The stage wrapper: `--help`, one-line errors and Ctrl-C, with the exit codes the README
gives. Kept free of heavy imports (torch), so that `validate` starts fast."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from pipeline.errors import PipelineError

INTERRUPTED = 130  # the shell's exit code for a process stopped by SIGINT (Ctrl-C)


def stage(main: Callable[[], None]) -> Callable[[], None]:
    """Decorate a stage's `main`: `--help` prints the module's docstring (what the stage reads
    and writes); a :class:`PipelineError` becomes `error: ...` and exit code 1; Ctrl-C becomes
    `interrupted: nothing was written` and exit code 130 (outputs are published only at the
    end, all together, so an interrupted stage has written nothing)."""
    module = sys.modules[main.__module__]
    name = module.__spec__.name if module.__spec__ else main.__module__

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> None:
        parser = argparse.ArgumentParser(
            prog=f"python -m {name}",
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.parse_args(sys.argv[1:] if argv is None else argv)
        try:
            main()
        except PipelineError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("interrupted: nothing was written", file=sys.stderr)
            sys.exit(INTERRUPTED)

    return run
