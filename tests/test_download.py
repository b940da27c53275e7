"""`pipeline.download.fetch_mnist` and the `download` stage against mirrors on the loopback
interface: good, corrupt, truncated, erroring, refusing, silent, endless and slow servers, and
folders (one of them a symlink to /dev/zero)."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import MNIST

from pipeline.data import load_mnist
from pipeline.download import DEADLINE_FACTOR, RESOURCES, DownloadError, fetch_mnist
from tests.helpers import MNIST_FILES, SHARED_MNIST, run_stage, write_idx_gz, write_params

SIZES = {"train": 20, "t10k": 12}  # images per split in the synthetic files
FIRST = "train-images-idx3-ubyte.gz"  # the first file fetch_mnist asks for
TINY = 1000  # bytes: the expected size of the fake resource of the endless and slow mirrors
BRIEF = 0.5  # s: data.timeout_s of the endless-source tests, so that even without the size
# bound they would stop at the deadline (10 x 0.5 s) instead of filling the disk


class MirrorServer(ThreadingHTTPServer):
    """Serves `files` under /<mode>/<name>; the mode picks how the server misbehaves."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), MirrorHandler)
        self.files = files
        self.requests: list[str] = []

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{mode}/"

    def handle_error(self, request: object, client_address: object) -> None:
        """A client hanging up early (torchvision's redirect probe does) is not a failure."""


class MirrorHandler(BaseHTTPRequestHandler):
    """good: the file; corrupt: one bit flipped; truncated: half the body under a
    Content-Length for more; error500: HTTP 500; endless: zeros without end (no length);
    slow: one byte every 0.05 s; anything else: HTTP 404. The endless and slow bodies stop
    when the client hangs up, or after a bounded number of writes."""

    server: MirrorServer

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        mode, _, name = self.path.lstrip("/").partition("/")
        body = self.server.files.get(name)
        if mode == "error500":
            self.send_error(500)
        elif mode in ("endless", "slow"):
            self.send_response(200)
            if mode == "slow":
                self.send_header("Content-Length", str(100 * TINY))
            self.end_headers()
            chunk, pause, writes = (
                (b"\0" * 4096, 0, 25_000) if mode == "endless" else (b"x", 0.05, 400)
            )
            with contextlib.suppress(OSError):  # the client hung up: what the tests expect
                for _ in range(writes):  # at most 100 MB, or 20 s
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    time.sleep(pause)
        elif body is None or mode not in ("good", "corrupt", "truncated"):
            self.send_error(404)
        else:
            if mode == "corrupt":
                body = body[:-1] + bytes([body[-1] ^ 1])
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + 1000 * (mode == "truncated")))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if mode == "truncated" else body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests read stderr."""


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    """Small MNIST-format arrays under the official file names (without .gz)."""
    rng = np.random.default_rng(0)
    out = {}
    for name, shape in MNIST_FILES.items():
        n = SIZES[name.split("-")[0]]
        if "labels" in name:
            out[name] = rng.integers(0, 10, size=n).astype(np.uint8)
        else:
            out[name] = rng.integers(0, 256, size=(n, *shape[1:])).astype(np.uint8)
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, arrays: dict[str, np.ndarray]) -> Path:
    """A mirror folder holding the four synthetic .gz files."""
    path = tmp_path_factory.mktemp("mirror")
    for name, array in arrays.items():
        write_idx_gz(path / f"{name}.gz", array)
    return path


@pytest.fixture(scope="module")
def resources(folder: Path) -> list[tuple[str, str, int]]:
    """(file name, MD5, size) of the synthetic files, as fetch_mnist takes them."""
    out = []
    for name in MNIST_FILES:
        data = (folder / f"{name}.gz").read_bytes()
        out.append((f"{name}.gz", hashlib.md5(data).hexdigest(), len(data)))
    return out


@pytest.fixture
def server(folder: Path) -> Iterator[MirrorServer]:
    """A loopback HTTP mirror, served from a thread for the duration of one test."""
    srv = MirrorServer({p.name: p.read_bytes() for p in folder.iterdir()})
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture
def dead_url() -> str:
    """An http URL on a loopback port that nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """An http URL whose server accepts connections but never answers."""
    with socket.create_server(("127.0.0.1", 0)) as s:  # listens; the kernel completes connects
        yield f"http://127.0.0.1:{s.getsockname()[1]}/"


def raw_files(root: Path) -> list[str]:
    raw = root / "MNIST" / "raw"
    return sorted(p.name for p in raw.iterdir()) if raw.exists() else []


def assert_fetched(root: Path, arrays: dict[str, np.ndarray]) -> None:
    """All four files are present, extracted, and parse to the served arrays."""
    assert raw_files(root) == sorted([*MNIST_FILES, *(f"{n}.gz" for n in MNIST_FILES)])
    for train, prefix in ((True, "train"), (False, "t10k")):
        images, labels = load_mnist(root / "MNIST", train=train)
        np.testing.assert_array_equal(images.numpy(), arrays[f"{prefix}-images-idx3-ubyte"])
        np.testing.assert_array_equal(labels.numpy(), arrays[f"{prefix}-labels-idx1-ubyte"])


# ---------------------------------------------------------------------------------- fetch_mnist


def test_good_http_mirror_fetches_checks_and_extracts(
    tmp_path: Path, server: MirrorServer, resources: list, arrays: dict
) -> None:
    fetch_mnist(tmp_path / "MNIST", [server.url("good")], 5, resources)
    assert_fetched(tmp_path, arrays)
    assert {p.rsplit("/", 1)[1] for p in server.requests} == {name for name, _, _ in resources}


@pytest.mark.parametrize(
    "as_url", [pytest.param(False, id="folder"), pytest.param(True, id="file-url")]
)
def test_local_folder_mirror_works(
    tmp_path: Path, folder: Path, resources: list, arrays: dict, as_url: bool
) -> None:
    mirror = folder.as_uri() if as_url else str(folder)
    fetch_mnist(tmp_path / "MNIST", [mirror], 5, resources)
    assert_fetched(tmp_path, arrays)
    assert sorted(p.name for p in folder.iterdir()) == [f"{n}.gz" for n in sorted(MNIST_FILES)]


@pytest.mark.parametrize(
    ("mode", "fragments"),
    [
        pytest.param("corrupt", ["ValueError: MD5 mismatch: got", "expected"], id="wrong-md5"),
        pytest.param("truncated", ["MD5 mismatch"], id="truncated-body"),
        pytest.param("missing", ["HTTPError: HTTP Error 404"], id="http-404"),
        pytest.param("error500", ["HTTPError: HTTP Error 500"], id="http-500"),
    ],
)
def test_bad_http_mirror_is_refused_and_leaves_no_file(
    tmp_path: Path,
    server: MirrorServer,
    resources: list,
    mode: str,
    fragments: list[str],
) -> None:
    mirror = server.url(mode)
    with pytest.raises(DownloadError) as info:
        fetch_mnist(tmp_path / "MNIST", [mirror], 5, resources)
    message = str(info.value)
    assert message.startswith(f"could not fetch {FIRST} from any mirror")
    assert f"  - {mirror}: " in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert raw_files(tmp_path) == []


def test_refused_connection_is_reported(tmp_path: Path, resources: list, dead_url: str) -> None:
    with pytest.raises(DownloadError, match="Connection refused") as info:
        fetch_mnist(tmp_path / "MNIST", [dead_url], 5, resources)
    assert dead_url in str(info.value)
    assert raw_files(tmp_path) == []


def test_silent_server_fails_after_the_timeout(
    tmp_path: Path, resources: list, silent_url: str
) -> None:
    start = time.monotonic()
    with pytest.raises(DownloadError, match="timed out") as info:
        fetch_mnist(tmp_path / "MNIST", [silent_url], 1, resources)
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 10, elapsed
    assert silent_url in str(info.value)
    assert raw_files(tmp_path) == []


@pytest.mark.parametrize(
    "mirror",
    [
        pytest.param("ftp://127.0.0.1/mnist/", id="ftp"),
        pytest.param("s3://bucket/mnist/", id="s3"),
    ],
)
def test_unsupported_scheme_is_refused(tmp_path: Path, resources: list, mirror: str) -> None:
    with pytest.raises(DownloadError, match="unsupported scheme") as info:
        fetch_mnist(tmp_path / "MNIST", [mirror], 5, resources)
    assert f"{mirror}: ValueError: unsupported scheme" in str(info.value)


def test_missing_folder_mirror_is_reported(tmp_path: Path, resources: list) -> None:
    mirror = str(tmp_path / "no-such-folder")
    with pytest.raises(DownloadError, match="FileNotFoundError") as info:
        fetch_mnist(tmp_path / "MNIST", [mirror], 5, resources)
    assert mirror in str(info.value)


def test_failing_first_mirror_falls_back_to_the_second_and_says_so(
    tmp_path: Path,
    server: MirrorServer,
    resources: list,
    arrays: dict,
    capfd: pytest.CaptureFixture[str],
) -> None:
    bad, good = server.url("missing"), server.url("good")
    fetch_mnist(tmp_path / "MNIST", [bad, good], 5, resources)
    assert_fetched(tmp_path, arrays)
    err = capfd.readouterr().err
    for name, _, _ in resources:  # each file tried the bad mirror first, reported on stderr
        assert f"mirror failed for {name}: {bad}: HTTPError: HTTP Error 404" in err


def test_good_first_mirror_leaves_the_others_alone(
    tmp_path: Path, server: MirrorServer, folder: Path, resources: list, dead_url: str
) -> None:
    fetch_mnist(tmp_path / "MNIST", [str(folder), server.url("good"), dead_url], 5, resources)
    assert server.requests == []
    assert len(raw_files(tmp_path)) == 2 * len(resources)


def test_all_mirrors_failing_lists_each_with_its_reason(
    tmp_path: Path, server: MirrorServer, resources: list, dead_url: str
) -> None:
    mirrors = [server.url("missing"), server.url("error500"), server.url("corrupt"), dead_url]
    with pytest.raises(DownloadError) as info:
        fetch_mnist(tmp_path / "MNIST", mirrors, 5, resources)
    lines = str(info.value).splitlines()
    assert lines[0] == f"could not fetch {FIRST} from any mirror:"
    reasons = ["HTTP Error 404", "HTTP Error 500", "MD5 mismatch", "Connection refused"]
    assert len(lines) == 1 + len(mirrors)
    for line, mirror, reason in zip(lines[1:], mirrors, reasons, strict=True):
        assert line.startswith(f"  - {mirror}: ") and reason in line, line
    assert raw_files(tmp_path) == []


def test_stale_file_in_the_way_is_replaced(
    tmp_path: Path, server: MirrorServer, resources: list, arrays: dict
) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / FIRST).write_bytes(b"left over from an interrupted run")
    fetch_mnist(tmp_path / "MNIST", [server.url("good")], 5, resources)
    assert_fetched(tmp_path, arrays)


# --------------------------------------------------------------------------- bounded downloads


@pytest.fixture
def deleted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """(name, size) of each file deleted during the test, taken just before its deletion:
    how many bytes a refused download had written."""
    seen: list[tuple[str, int]] = []
    unlink = Path.unlink

    def spy(self: Path, missing_ok: bool = False) -> None:
        if self.is_file():
            seen.append((self.name, self.stat().st_size))
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", spy)
    return seen


def zero_folder(path: Path, names: list[str]) -> Path:
    """A mirror folder whose files are symlinks to /dev/zero (endless local files)."""
    path.mkdir()
    for name in names:
        (path / name).symlink_to("/dev/zero")
    return path


@pytest.mark.skipif(
    not all((SHARED_MNIST / f"{name}.gz").exists() for name in MNIST_FILES),
    reason=f"no copy of the official MNIST files in {SHARED_MNIST}",
)
def test_resources_are_torchvisions_with_the_official_sizes() -> None:
    assert [(name, md5) for name, md5, _ in RESOURCES] == [tuple(r) for r in MNIST.resources]
    for name, _, size in RESOURCES:
        assert (SHARED_MNIST / name).stat().st_size == size, name


def test_endless_http_stream_is_refused_once_past_its_size(
    tmp_path: Path, server: MirrorServer, deleted: list[tuple[str, int]]
) -> None:
    mirror = server.url("endless")
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch_mnist(tmp_path / "MNIST", [mirror], BRIEF, [(FIRST, "0" * 32, TINY)])
    assert time.monotonic() - start < 3  # well before the deadline
    assert f"  - {mirror}: ValueError: larger than the expected {TINY} bytes" in str(info.value)
    assert deleted and all(name == FIRST and size <= TINY for name, size in deleted), deleted
    assert raw_files(tmp_path) == []


def test_slow_http_server_trips_the_per_file_deadline(
    tmp_path: Path, server: MirrorServer, deleted: list[tuple[str, int]]
) -> None:
    mirror, timeout = server.url("slow"), 0.2  # each wait (0.05 s) is within the timeout
    deadline = DEADLINE_FACTOR * timeout
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch_mnist(tmp_path / "MNIST", [mirror], timeout, [(FIRST, "0" * 32, TINY)])
    elapsed = time.monotonic() - start
    assert deadline <= elapsed < deadline + 3, elapsed
    reason = (
        f"  - {mirror}: TimeoutError: no complete file within {deadline:g} s "
        f"(data.timeout_s = {timeout:g}: deadline {DEADLINE_FACTOR} x {timeout:g})"
    )
    assert reason in str(info.value), str(info.value)
    assert deleted and all(0 < size < TINY for _, size in deleted), deleted  # a partial file
    assert raw_files(tmp_path) == []


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
@pytest.mark.parametrize(
    "as_url", [pytest.param(False, id="folder"), pytest.param(True, id="file-url")]
)
def test_folder_mirror_symlinked_to_dev_zero_is_refused(
    tmp_path: Path, deleted: list[tuple[str, int]], as_url: bool
) -> None:
    folder = zero_folder(tmp_path / "mirror", [FIRST])
    mirror = folder.as_uri() if as_url else str(folder)
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch_mnist(tmp_path / "MNIST", [mirror], BRIEF, [(FIRST, "0" * 32, TINY)])
    assert time.monotonic() - start < 3  # well before the deadline
    assert f"  - {mirror}: ValueError: larger than the expected {TINY} bytes" in str(info.value)
    assert deleted and all(size <= TINY for _, size in deleted), deleted
    assert raw_files(tmp_path) == []


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_oversized_mirrors_fall_back_to_the_next_and_say_so(
    tmp_path: Path,
    server: MirrorServer,
    folder: Path,
    resources: list,
    arrays: dict,
    capfd: pytest.CaptureFixture[str],
) -> None:
    zeros = zero_folder(tmp_path / "zeros", [name for name, _, _ in resources])
    endless = server.url("endless")
    fetch_mnist(tmp_path / "MNIST", [endless, str(zeros), str(folder)], BRIEF, resources)
    assert_fetched(tmp_path, arrays)
    err = capfd.readouterr().err
    for name, _, size in resources:
        for mirror in (endless, zeros):
            reason = f"ValueError: larger than the expected {size} bytes"
            assert f"mirror failed for {name}: {mirror}: {reason}" in err, err


# ------------------------------------------------------------------------- the download stage


def project(path: Path, mirrors: list[str]) -> Path:
    """A folder holding only a copy of params.yaml with the given mirrors and a 1 s timeout."""
    path.mkdir()
    write_params(path, {"data.mirrors": mirrors, "data.timeout_s": 1})
    return path


@pytest.mark.slow
def test_download_stage_with_dead_mirrors_fails_cleanly(tmp_path: Path) -> None:
    mirrors = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            mirrors.append(f"http://127.0.0.1:{s.getsockname()[1]}/mnist/")
    repo = project(tmp_path / "project", mirrors)
    proc = run_stage(repo, "download", env={"MNIST_MIRROR": None})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    final = proc.stderr[proc.stderr.index("error: ") :]
    assert final.startswith(f"error: could not fetch {FIRST} from any mirror")
    for mirror in mirrors:
        assert f"  - {mirror}: URLError" in final and "Connection refused" in final
    assert "MNIST_MIRROR" in final
    assert not (repo / "data" / "MNIST").exists()
    assert list((repo / "data").glob(".*")) == []  # no temporary left behind


@pytest.mark.slow
def test_download_stage_refuses_an_unsupported_mnist_mirror(tmp_path: Path) -> None:
    repo = project(tmp_path / "project", ["http://127.0.0.1:9/"])
    proc = run_stage(repo, "download", env={"MNIST_MIRROR": "ftp://127.0.0.1/mnist/"})
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: MNIST_MIRROR: unsupported scheme 'ftp'"), proc.stderr
    assert not (repo / "data").exists()


@pytest.mark.slow
@pytest.mark.skipif(
    not all((SHARED_MNIST / f"{name}.gz").exists() for name in MNIST_FILES),
    reason=f"no copy of the official MNIST files in {SHARED_MNIST}",
)
def test_download_stage_uses_mnist_mirror_first(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in MNIST_FILES:
        shutil.copyfile(SHARED_MNIST / f"{name}.gz", mirror / f"{name}.gz")
    with socket.socket() as s:  # the configured mirror is dead: only MNIST_MIRROR can work
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    repo = project(tmp_path / "project", [dead])
    proc = run_stage(repo, "download", env={"MNIST_MIRROR": str(mirror)})
    assert proc.returncode == 0, proc.stderr
    assert "MNIST ready in data/MNIST/raw" in proc.stdout
    # paths are relative to the working directory: the data lands beside its params.yaml
    raw = repo / "data" / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        [*MNIST_FILES, *(f"{n}.gz" for n in MNIST_FILES)]
    )
    images, labels = load_mnist(repo / "data" / "MNIST", train=False)
    assert images.shape == (10_000, 28, 28) and labels.shape == (10_000,)
    assert [p.name for p in (repo / "data").iterdir()] == ["MNIST"]
