"""Publishing a stage's outputs all together or not at all, safe against signals and kills.

    with publish("train@dae", files={"model": "m.pt"}, folders={"logs": "logs/dae"}) as out:
        write(out.model); write_into(out.logs)   # temporaries beside the targets

The protocol is a database's write-ahead journal:
1. Before any heavy work, every target is checked to be replaceable (nothing read-only, no
   file where a folder must be, no folder where a file must be).
2. The block writes each output to a temporary beside its target; an exception, Ctrl-C or a
   kill here leaves the previous outputs untouched (the temporaries are removed, or left for
   the next stage start to remove).
3. Commit: the temporaries are flushed to disk, then a journal naming every (target, new,
   old) triple is written atomically into `.publish/`. Signals are deferred from here on.
4. Each previous output is renamed aside and the new one renamed into place; then the journal
   is deleted and the previous outputs dropped.
A stage start calls :func:`recover` first: a journal left by a kill after step 3 is rolled
forward (every new output put in place), so the outputs are always all previous or all new.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

from pipeline.plumbing.cli import KEPT, deferred_signals
from pipeline.plumbing.errors import PipelineError

JOURNALS = Path(".publish")  # relative to the project root, where stages run (git-ignored)


@contextlib.contextmanager
def publish(
    stage: str,
    files: dict[str, Path | str] | None = None,
    folders: dict[str, Path | str] | None = None,
) -> Iterator[SimpleNamespace]:
    """Yield a namespace of temporary paths, one per named target (for `folders`, an existing
    empty folder); publish them all when the block succeeds. Writing is checked first; an
    OSError inside the block (disk full, say) becomes one `cannot write <target>` error."""
    recover()
    kinds = {name: (Path(p), False) for name, p in (files or {}).items()}
    kinds |= {name: (Path(p), True) for name, p in (folders or {}).items()}
    for target, is_folder in kinds.values():
        check_writable(target, is_folder)
    work = {name: _scratch_dir(target) for name, (target, _) in kinds.items()}
    new = {name: work[name] / target.name for name, (target, _) in kinds.items()}
    for name, (_, is_folder) in kinds.items():
        if is_folder:
            new[name].mkdir()
    try:
        try:
            yield SimpleNamespace(**new)
            for name, (target, _) in kinds.items():
                if not new[name].exists():
                    raise PipelineError(f"{stage} wrote no {target}; {KEPT}")
                _sync(new[name])
        except OSError as e:  # writing an output failed (a full disk): name the output
            written = next((kinds[n][0] for n in work if _inside(e.filename, work[n])), None)
            if written is None and e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise  # not a write of ours: the stage's own error
            where = written or "an output"
            raise PipelineError(f"cannot write {where}: {_reason(e)}; {KEPT}") from None
        moves = [
            (str(kinds[n][0]), str(new[n]), str(work[n] / f"{new[n].name}.old")) for n in kinds
        ]
        with deferred_signals(done="outputs published"):
            journal = _write_journal(stage, moves)
            try:
                _apply(moves)
            except OSError as e:
                _roll_back(moves)
                _remove_journal(journal)
                raise PipelineError(f"cannot publish: {_reason(e)}; {KEPT}") from None
            _remove_journal(journal)
    finally:
        for w in work.values():
            shutil.rmtree(w, ignore_errors=True)


def _inside(filename: object, folder: Path) -> bool:
    return isinstance(filename, str) and Path(filename).is_relative_to(folder)


def recover() -> None:
    """Finish every publish that a kill interrupted after its commit point (roll forward)."""
    if not JOURNALS.is_dir():
        return
    for journal in sorted(JOURNALS.glob("*.json")):
        try:
            moves = json.loads(journal.read_text())["moves"]
        except (OSError, ValueError, KeyError, TypeError):
            _remove_journal(journal)  # torn before its rename: the commit never happened
            continue
        with deferred_signals(done="outputs of the interrupted publish completed"):
            _apply(moves)
            _remove_journal(journal)
        for _target, new, _old in moves:
            shutil.rmtree(Path(new).parent, ignore_errors=True)
        print(f"recovered the outputs of an interrupted publish ({journal.stem})")


def check_writable(target: Path, is_folder: bool) -> None:
    """Raise a :class:`PipelineError` unless `target` (a file, or a folder and everything in
    it) can be replaced: its nearest existing folder is a writable folder, nothing in the way
    is read-only, and it is not a folder where a file must be or the reverse. Creates nothing."""
    if target.exists() and not target.is_symlink() and target.is_dir() != is_folder:
        found, needed = ("a folder", "a file") if target.is_dir() else ("a file", "a folder")
        raise PipelineError(
            f"cannot write {target}: it is {found} where {needed} must be; move it away and rerun"
        )
    ancestor = target.parent
    while not (ancestor.exists() or ancestor.is_symlink()) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PipelineError(f"cannot write {target}: {ancestor} is a file, not a folder")
    inside = target.rglob("*") if target.is_dir() and not target.is_symlink() else []
    for path in [ancestor, target, *inside]:
        if (path.exists() or path.is_symlink()) and not os.access(path, os.W_OK):
            what = "it" if path == target else str(path)
            raise PipelineError(f"cannot write {target}: {what} is read-only or immutable")


def _scratch_dir(target: Path) -> Path:
    """A fresh temporary folder beside `target` (removing leftovers of interrupted runs)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as e:
        raise PipelineError(f"cannot write {target}: {_reason(e)} ({target.parent})") from None


def _write_journal(stage: str, moves: list[tuple[str, str, str]]) -> Path:
    """Write the journal atomically (temporary, fsync, rename, fsync the folder)."""
    JOURNALS.mkdir(exist_ok=True)
    journal = JOURNALS / f"{stage}.json"
    tmp = JOURNALS / f".{stage}.json.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump({"stage": stage, "moves": moves}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, journal)
        _fsync(JOURNALS)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise PipelineError(f"cannot publish: {_reason(e)}; {KEPT}") from None
    return journal


def _remove_journal(journal: Path) -> None:
    """Delete a journal (the end of its publish) and the journal folder once empty."""
    journal.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        journal.parent.rmdir()


def _apply(moves: list[tuple[str, str, str]]) -> None:
    """Move each previous output aside and its new version into place. Idempotent: a move
    already done (its new version gone from the temporary) is skipped."""
    for target, new, old in map(lambda m: tuple(map(Path, m)), moves):
        if not (new.exists() or new.is_symlink()):
            continue
        if (target.exists() or target.is_symlink()) and not old.exists():
            os.replace(target, old)
        elif target.exists() or target.is_symlink():  # a leftover beside an aside copy
            _remove(target)
        os.replace(new, target)
        _fsync(target.parent)


def _roll_back(moves: list[tuple[str, str, str]]) -> None:
    """Put back the previous outputs that :func:`_apply` had already replaced."""
    for target, _new, old in map(lambda m: tuple(map(Path, m)), reversed(moves)):
        if old.exists() or old.is_symlink():
            if target.exists() or target.is_symlink():
                _remove(target)
            os.replace(old, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _sync(path: Path) -> None:
    """Flush a new output (a file, or every file of a folder) to disk before the commit."""
    for file in [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]:
        _fsync(file)


def _fsync(path: Path) -> None:
    """fsync a file, or a folder (which makes the renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reason(e: OSError) -> str:
    """`no space left on device` and the like, without errno numbers."""
    return (e.strerror or str(e)).lower()


def write_text(path: Path, text: str) -> None:
    """`path.write_text`, whose OSError (a full disk) names `path`."""
    try:
        path.write_text(text)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


def write_json(path: Path, obj: object) -> None:
    """Pretty, key-sorted JSON (stable diffs in git)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
