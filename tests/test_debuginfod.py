"""Stripped binaries, with their debug info from debuginfod: a real local server (Debian's
debuginfod) for what works, and a tiny loopback server of our own for each way a server
can answer badly. The target is the sqlite workload, stripped of every symbol; the oracle
is the same workload unstripped."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import markupsafe
import pytest
from conftest import ROOT, bpfcov, target
from debuginfod_server import LocalDebuginfod, only_debug_info, stripped_copy

from bpfcov.probes.elf import ElfObject

# Debian's sqlite library: no .symtab, no DWARF, no debug file on this machine; its .dynsym
# still names its functions.
LIBSQLITE = "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0"
WORKLOAD_N = "100"


def build_id(path: str | Path) -> str:
    with ElfObject(str(path)) as obj:
        found = obj.build_id()
    assert found
    return found


@dataclass
class Served:
    url: str
    stripped: Path       # the workload without a symbol
    debug_file: Path     # its debug info, only on the server
    build_id: str


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The sqlite workload stripped of every symbol; its debug info only on a local server."""
    tmp = tmp_path_factory.mktemp("debuginfod")
    folder = tmp / "served"
    folder.mkdir()
    workload = target("sqlite", "workload")
    only_debug_info(workload, folder / "workload.debug")
    stripped_copy(workload, tmp / "workload")
    with LocalDebuginfod(folder, tmp / "server") as server:
        yield Served(server.url, tmp / "workload", folder / "workload.debug", build_id(workload))


@pytest.fixture
def client_cache(tmp_path, monkeypatch) -> Path:
    """The debuginfod client's cache, this test's alone."""
    cache = tmp_path / "debuginfod-client"
    monkeypatch.setenv("DEBUGINFOD_CACHE_PATH", str(cache))
    return cache


def cached_files(cache: Path, build: str) -> dict[str, int]:
    """What the client's cache holds for `build`: file name -> size (0 is its 'not found')."""
    folder = cache / build
    return {p.name: p.stat().st_size for p in folder.iterdir()} if folder.is_dir() else {}


def comparable_symbols(path: str | Path, *args: str) -> list[tuple]:
    functions = json.loads(bpfcov("symbols", "--json", "--no-cache", path, *args).stdout)["functions"]
    return sorted((f["name"], f["offset"], f["size"], f["file"], f["line"], f["probe"]) for f in functions)


# -- a real server --------------------------------------------------------------------

def test_the_stripped_workload_is_indexed_from_the_servers_debug_info_as_if_unstripped(served, client_cache):
    alone = bpfcov("symbols", served.stripped, check=False)
    assert alone.returncode == 1 and "no function symbols to probe" in alone.stderr
    quick = bpfcov("symbols", "--no-cache", served.stripped, "--debuginfod", served.url)
    assert "downloading" not in quick.stderr  # under a second: no progress
    fetched = comparable_symbols(served.stripped, "--debuginfod", served.url)
    assert fetched == comparable_symbols(target("sqlite", "workload"))
    assert len(fetched) > 1000 and sum(1 for f in fetched if f[3]) > 1000  # with source files
    assert cached_files(client_cache, served.build_id) == {"debuginfo": served.debug_file.stat().st_size}
    # DEBUGINFOD_URLS is the other way to name it
    with_variable = json.loads(bpfcov("symbols", "--json", "--no-cache", served.stripped,
                                      env=dict(os.environ, DEBUGINFOD_URLS=served.url)).stdout)["functions"]
    assert len(with_variable) == len(fetched)


@pytest.fixture(scope="module")
def runs(served, tmp_path_factory):
    """Count mode with --lines: the unstripped workload, and the stripped one through the server."""
    from conftest import bpf_unavailable_reason
    reason = bpf_unavailable_reason()
    if reason:
        if os.environ.get("BPFCOV_REQUIRE_BPF") == "1":
            pytest.fail(f"BPF is required here but unavailable: {reason}")
        pytest.skip(f"BPF unavailable: {reason}")
    tmp = tmp_path_factory.mktemp("debuginfod-runs")
    env = dict(os.environ, DEBUGINFOD_CACHE_PATH=str(tmp / "client"))
    outs = {}
    for name, program, extra in (("unstripped", target("sqlite", "workload"), []),
                                 ("stripped", str(served.stripped), ["--debuginfod", served.url])):
        outs[name] = tmp / name
        bpfcov("run", "-q", "--mode", "count", "--lines", "--format", "json", *extra, "-o", outs[name], "--",
               program, WORKLOAD_N, env=env, cwd=tmp)
    return outs


def _workload_object(out: Path) -> dict:
    objects = json.loads((out / "coverage.json").read_text())["objects"]
    assert len(objects) == 1
    return objects[0]


def test_counts_and_lines_of_the_stripped_workload_equal_its_unstripped_build(runs):
    full, stripped = _workload_object(runs["unstripped"]), _workload_object(runs["stripped"])
    counts = {f["name"]: (f["count"], f["inlined_count"], f["status"]) for f in full["functions"]}
    assert {f["name"]: (f["count"], f["inlined_count"], f["status"]) for f in stripped["functions"]} == counts
    assert sum(1 for c, _, _ in counts.values() if c) > 300
    lines = {(row["file"], row["line"]): row["count"] for row in full["lines"]}
    assert {(row["file"], row["line"]): row["count"] for row in stripped["lines"]} == lines
    assert sum(1 for c in lines.values() if c) > 3000


def _source_page(html: Path, name: str) -> str:
    for page in html.glob("file*.html"):
        text = page.read_text()
        if name in text:
            return text
    raise AssertionError(f"no page for {name} in {html}")


def test_source_pages_come_from_the_server_only_with_debuginfod_sources(runs, served, tmp_path):
    elsewhere = tmp_path / "no-sources-here"
    elsewhere.mkdir()
    workload_c = (ROOT / "sample_targets/sqlite/workload.c").read_text().splitlines()
    a_line = next(t for t in workload_c if "sqlite3_exec" in t).strip()
    common = ["report", runs["stripped"] / "bpfcov.db", "--format", "html", "--source-root", elsewhere,
              "--debuginfod", served.url]
    bpfcov(*common, "-o", tmp_path / "off")
    assert a_line not in _source_page(tmp_path / "off/html", "workload.c")
    bpfcov(*common, "--debuginfod-sources", "-o", tmp_path / "on", env=dict(os.environ,
           DEBUGINFOD_CACHE_PATH=str(tmp_path / "client")))
    assert str(markupsafe.escape(a_line)) in _source_page(tmp_path / "on/html", "workload.c")


# -- a server that answers badly --------------------------------------------------------

class TinyServer(http.server.ThreadingHTTPServer):
    """Answers every /buildid/ID/... request as `self.answer` says."""

    daemon_threads = True

    def __init__(self, debug_file: Path, other_debug_file: Path):
        super().__init__(("127.0.0.1", 0), _Answerer)
        self.answer = "404"
        self.debug_file = debug_file.read_bytes()
        self.other = other_debug_file.read_bytes()
        self.source_text = b""
        self.requests: list[str] = []
        self.sending = threading.Event()  # set once a slow answer has begun

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Answerer(http.server.BaseHTTPRequestHandler):
    server: TinyServer

    def _send(self, body: bytes, length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        server = self.server
        server.requests.append(self.path)
        answer = server.answer
        if "/source/" in self.path:
            self._send(server.source_text)
        elif answer in ("404", "500"):
            self.send_error(int(answer))
        elif answer == "garbage":
            self._send(b"<html><body>Please log in to the captive portal</body></html>")
        elif answer == "other build-id":
            self._send(server.other)
        elif answer == "truncated":
            self._send(server.debug_file[:len(server.debug_file) // 2])
        elif answer == "cut short":
            self._send(server.debug_file[:65536], length=len(server.debug_file))
            self.close_connection = True
        elif answer == "silent":
            time.sleep(8)
        elif answer.startswith("slowly"):  # "slowly N": the whole file, in N seconds
            seconds = float(answer.split()[1])
            data = server.debug_file
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            step = max(1, len(data) // int(seconds * 20))
            try:
                for start in range(0, len(data), step):
                    self.wfile.write(data[start:start + step])
                    self.wfile.flush()
                    server.sending.set()
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the Ctrl-C test)
        else:
            self._send(server.debug_file)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def tiny(served):
    server = TinyServer(served.debug_file, ROOT / "sample_targets/build/O0/inventory")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


BAD_ANSWERS = {
    "404": "(HTTP 404)",
    "500": "answered HTTP 500",
    "garbage": "sent something that is not an ELF file",
    "other build-id": "sent the debug info of build-id ",
    "truncated": "sent a truncated ELF file",
    "cut short": "was cut short (65,536 of ",
    "silent": "sent less than 100 KiB/s for DEBUGINFOD_TIMEOUT (1 s), on every try",
}


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The error line: the last, after progress lines at most."""
    *before, last = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert last.startswith("bpfcov: error: "), result.stderr
    assert all(line.startswith("bpfcov: indexing ") for line in before), result.stderr
    return last


@pytest.mark.parametrize("answer", BAD_ANSWERS)
def test_a_bad_answer_is_an_error_where_nothing_is_left_and_is_not_cached(served, tiny, client_cache, answer):
    tiny.answer = answer
    env = dict(os.environ, DEBUGINFOD_TIMEOUT="1")
    result = bpfcov("symbols", "--no-cache", served.stripped, "--debuginfod", tiny.url, check=False, env=env)
    assert result.returncode == 1
    error = one_line_error(result)
    assert "no function symbols to probe: it is stripped, and debuginfod: " in error
    assert BAD_ANSWERS[answer] in error, error
    held = cached_files(client_cache, served.build_id)
    if answer == "404":
        # The client's own "not found" (an empty file), believed for 10 minutes, as gdb's is.
        assert held == {"debuginfo": 0}
        again = bpfcov("symbols", "--no-cache", served.stripped, "--debuginfod", tiny.url, check=False)
        assert "no server had it when last asked" in one_line_error(again)
        return
    assert held == {}, held
    tiny.answer = "good"  # nothing bad stayed behind: the next run asks and gets the real file
    assert comparable_symbols(served.stripped, "--debuginfod", tiny.url) == \
        comparable_symbols(target("sqlite", "workload"))


@pytest.mark.parametrize("answer", BAD_ANSWERS)
def test_a_bad_answer_is_a_warning_where_the_object_has_symbols_of_its_own(tiny, client_cache, answer):
    tiny.answer = answer
    env = dict(os.environ, DEBUGINFOD_TIMEOUT="1")
    result = bpfcov("symbols", LIBSQLITE, "--debuginfod", tiny.url, env=env)
    warnings = [line for line in result.stderr.strip().splitlines() if not line.startswith("bpfcov: indexing ")]
    assert len(warnings) == 1 and warnings[0].startswith(f"bpfcov: warning: {LIBSQLITE}: debuginfod: "), \
        result.stderr
    assert BAD_ANSWERS[answer] in warnings[0]
    assert warnings[0].endswith("traced from its own symbols, without its source lines")
    assert "sqlite3_exec " in result.stdout  # from .dynsym
    held = cached_files(client_cache, build_id(LIBSQLITE))
    assert held == ({"debuginfo": 0} if answer == "404" else {}), held


def test_one_servers_404_while_another_is_down_is_not_remembered_as_not_found(served, tiny, client_cache):
    down = "http://127.0.0.1:1"  # nothing listens on port 1
    result = bpfcov("symbols", "--no-cache", served.stripped, "--debuginfod", tiny.url, "--debuginfod", down,
                    check=False)
    error = one_line_error(result)
    assert f"{tiny.url} answered HTTP 404" in error and f"{down}: " in error, error
    assert cached_files(client_cache, served.build_id) == {}
    tiny.answer = "good"
    assert len(comparable_symbols(served.stripped, "--debuginfod", tiny.url)) > 1000


def _as_from_a_terminal() -> None:
    """Ctrl-C's default action, as a shell gives it: a job started in the background (CI
    under nohup, say) inherits SIGINT ignored, and bpfcov rightly leaves it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_during_a_download_stops_cleanly_and_caches_nothing(served, tiny, client_cache):
    tiny.answer = "slowly 60"
    env = dict(os.environ, DEBUGINFOD_TIMEOUT="0")  # no low-speed limit: the download just goes on
    proc = subprocess.Popen([sys.executable, "-m", "bpfcov", "symbols", "--no-cache", str(served.stripped),
                             "--debuginfod", tiny.url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=_as_from_a_terminal)
    assert tiny.sending.wait(30)
    time.sleep(1.5)  # past the second after which progress is shown
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "bpfcov: error: interrupted"
    assert "downloading debug info (" in stderr  # the progress line a log gets: the size, once
    assert cached_files(client_cache, served.build_id) == {}  # not even a "not found"


def test_download_progress_is_shown_after_a_second_and_quiet_silences_it(served, tiny, client_cache, capfd):
    from bpfcov.probes.debuginfod import servers
    from bpfcov.probes.index import index_object
    tiny.answer = "slowly 2"
    with servers([tiny.url]):
        index_object(str(served.stripped), use_cache=False, quiet=True)
        assert "downloading" not in capfd.readouterr().err
        (client_cache / served.build_id / "debuginfo").unlink()
        index = index_object(str(served.stripped), use_cache=False)
    shown = capfd.readouterr().err
    size = f"{served.debug_file.stat().st_size / 1e6:,.1f} MB"
    assert f"bpfcov: indexing workload: downloading debug info ({size})...\n" in shown
    assert len(index.functions) > 1000


def test_a_fetched_source_is_shown_escaped(runs, tiny, tmp_path, client_cache):
    tiny.source_text = b'<script>alert("from the server")</script> & more\n'
    out = tmp_path / "report"
    bpfcov("report", runs["stripped"] / "bpfcov.db", "--format", "html", "--source-root", tmp_path,
           "--debuginfod", tiny.url, "--debuginfod-sources", "-o", out)
    assert any("/source/" in r for r in tiny.requests)
    page = _source_page(out / "html", "workload.c")
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(" in page


def test_sources_are_not_asked_for_without_debuginfod_sources(runs, tiny, tmp_path):
    bpfcov("report", runs["stripped"] / "bpfcov.db", "--format", "html", "--source-root", tmp_path,
           "--debuginfod", tiny.url, "-o", tmp_path / "report")
    assert tiny.requests == []


def test_a_traced_command_gets_the_users_debuginfod_urls(bpf, tiny, tmp_path):
    seen = tmp_path / "seen"
    bpfcov("run", "-q", "--debuginfod", tiny.url, "-o", tmp_path / "out", "--", "sh", "-c",
           f'printf %s "$DEBUGINFOD_URLS" > {seen}', env=dict(os.environ, DEBUGINFOD_URLS="https://user.example"),
           cwd=tmp_path)
    assert seen.read_text() == "https://user.example"


def test_the_traced_command_sees_the_users_debuginfod_urls_not_the_option(monkeypatch):
    from bpfcov.probes.debuginfod import child_environment, servers
    monkeypatch.setenv("DEBUGINFOD_URLS", "https://debuginfod.example.org")
    with servers(["http://127.0.0.1:1"]):
        assert os.environ["DEBUGINFOD_URLS"] == "http://127.0.0.1:1"
        assert child_environment()["DEBUGINFOD_URLS"] == "https://debuginfod.example.org"
    assert os.environ["DEBUGINFOD_URLS"] == "https://debuginfod.example.org"
    monkeypatch.delenv("DEBUGINFOD_URLS")
    with servers(["http://127.0.0.1:1"]):
        assert "DEBUGINFOD_URLS" not in child_environment()


def test_a_bad_url_is_one_error_line(tmp_path):
    result = bpfcov("symbols", target("O0", "shapes"), "--debuginfod", "debuginfod.example.org", check=False)
    assert result.returncode == 2
    assert "expected an http://, https:// or file:// URL" in one_line_error(result)
    (tmp_path / ".bpfcov.toml").write_text('debuginfod = ["ftp://x"]\n')
    result = bpfcov("symbols", target("O0", "shapes"), check=False, cwd=tmp_path)
    assert "debuginfod must be a list of http://, https:// or file:// URLs" in one_line_error(result)
