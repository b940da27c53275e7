"""The stage wrapper: `--help`, one-line errors, signals and the exit codes the README gives.

Exit codes: 0 done; 1 an `error: ...` line (a problem the user can fix); 130 Ctrl-C (SIGINT)
and 143 SIGTERM, each with one `interrupted: ...` line, the previous outputs kept.
Kept free of heavy imports (torch), so that `validate` starts fast and the signal handlers are
in place (see `pipeline/__init__.py`) before a stage imports torch.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.plumbing.errors import PipelineError

SIGNALS = (signal.SIGINT, signal.SIGTERM)
KEPT = "previous outputs kept"


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; raised where the stage is, so that it cleans up."""

    def __init__(self, signum: int, done: str = KEPT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.done = signum, done


def exit_code(signum: int) -> int:
    """The shell's code for a process stopped by `signum`: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


def _exit_at_once(signum: int, _frame: Any) -> None:
    """While a stage imports its libraries nothing has been written: stop without a traceback."""
    print(f"interrupted ({signal.Signals(signum).name}): nothing was written", file=sys.stderr)
    os._exit(exit_code(signum))


def _raise(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


def install_early_handlers() -> None:
    """Make SIGINT/SIGTERM stop a starting stage with one line (called before heavy imports)."""
    for signum in SIGNALS:
        signal.signal(signum, _exit_at_once)


@contextlib.contextmanager
def deferred_signals(done: str) -> Iterator[None]:
    """Hold SIGINT/SIGTERM while the block runs (the renames of a publish); raise
    :class:`Interrupted` for the first one that arrived, once the block is done (`done` says
    what the block achieved)."""
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda n, _f: pending.append(n)) for s in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if pending:
        raise Interrupted(pending[0], done)


def stage(
    main: Callable[..., None] | None = None, *, arguments: Callable[[Any], None] | None = None
) -> Any:
    """Decorate a stage's `main` (`@stage`, or `@stage(arguments=add)` where `add(parser)`
    declares its command-line arguments, passed to `main` by name).

    `--help` prints the module's docstring (what the stage reads and writes). An interrupted
    publish of an earlier run is finished first. A :class:`PipelineError` becomes `error: ...`
    and exit code 1; SIGINT and SIGTERM become one `interrupted` line and 130 or 143."""
    if main is None:
        return functools.partial(stage, arguments=arguments)
    module = sys.modules[main.__module__]
    name = module.__spec__.name if module.__spec__ else main.__module__

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> None:
        parser = argparse.ArgumentParser(
            prog=f"python -m {name}",
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if arguments:
            arguments(parser)
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        previous = {s: signal.signal(s, _raise) for s in SIGNALS}
        try:
            from pipeline.plumbing.publish import recover

            recover()
            main(**vars(args))
        except PipelineError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        except (Interrupted, KeyboardInterrupt) as e:
            signum, done = (e.signum, e.done) if isinstance(e, Interrupted) else (2, KEPT)
            print(f"interrupted ({signal.Signals(signum).name}): {done}", file=sys.stderr)
            sys.exit(exit_code(signum))
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    return run
