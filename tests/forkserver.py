"""A fork server for the tests' ``python -m monai.bundle ...`` runs (and ``python -m robust_bundles...``, the tools'
scripts, the project's ``python -c``): each run is still its own process, but forked from a server that has already
imported torch, MONAI and ignite, instead of a fresh interpreter importing them.

Importing MONAI (which imports torch, torchvision, scipy, pandas, mlflow, ...) takes about 5.5 s of CPU in every
fresh interpreter, more than a tiny bundle run itself: with a few hundred bundle runs that import was most of the
suite's time. A forked run starts in milliseconds. What stays the same: the run is a separate process (its own
memory, working directory, environment, argv, exit code, stdout and stderr); ``monai.bundle``'s ``__main__`` runs as
``python -m monai.bundle`` would run it, an uncaught error goes through ``sys.excepthook``; the project's own modules
(``robust_bundles``, the bundle's ``scripts``) are imported fresh in each run. What differs: the third-party modules
above are already in ``sys.modules`` (and the string hash seed is the server's). Runs that change the interpreter
(another Python, ``PYTHONPATH``, warning or thread settings) start a fresh interpreter as before; so does everything
when ``ROBUST_BUNDLES_TEST_FORK=0``.

Used by ``tests/bundles/bundle_run.py`` (every bundle config run), by the tests that run ``scripts/experiment.py``
and ``scripts/amat_study.py`` (:func:`run`; the tool's own stages are forked too), through :func:`patch_popen` by
the experiment tool run in-process, and by test_foreign_bundles.py and test_contract.py. Other commands
(``torch.distributed.run``, a fresh venv's ``python -c``) are real subprocesses. The server runs a copy of this file as
a script, outside the checkout; each test process (xdist worker) starts its own on first use.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping

#: the packages whose ``python -m`` runs (of the package or a module in it) are forked; the project's own is imported
#: afresh by each run
MODULES = ("monai", "robust_bundles")
#: third-party modules imported once by the server (never the project's own)
PRELOAD = ("torch", "monai", "monai.bundle", "ignite")
#: environment variables the interpreter or the preloaded libraries read at start-up: a run whose values differ from
#: the server's gets a fresh interpreter
STARTUP_KEYS = ("PYTHONPATH", "PYTHONHOME", "PYTHONWARNINGS", "PYTHONHASHSEED", "PYTHONSAFEPATH", "PYTHONNOUSERSITE",
                "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "LD_PRELOAD", "LD_LIBRARY_PATH",
                "VIRTUAL_ENV")
_CODE = struct.Struct("!q")


# ------------------------------------------------------------------------------------------------------------ server
def _child(request: dict[str, Any], out_fd: int, err_fd: int) -> int:
    """In the forked process: become ``python -m <module> <args>`` (or ``python <path> <args>``) in the request's
    directory and environment; its own ``python`` runs are forked by the same server."""
    import runpy

    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    for fd in {out_fd, err_fd, devnull}:
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                                   errors="backslashreplace", line_buffering=unbuffered,
                                                   write_through=unbuffered)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                                   errors="backslashreplace", line_buffering=True)
    sys.excepthook = sys.__excepthook__
    if "numpy" in sys.modules:  # a fresh interpreter seeds numpy's global generator afresh (`random` reseeds itself)
        sys.modules["numpy"].random.seed()
    _SERVERS.clear()
    _PYTHONS.clear()
    _PYTHONS.add(sys.executable)
    _SERVERS[(sys.executable, *_startup(os.environ))] = ForkServer(os.environ, path=os.environ[SOCKET_VAR])
    subprocess.Popen = popen  # type: ignore[misc]  (the tools' stages: forked by the same server)
    code: Any = 0
    try:
        if request["code"] is not None:
            import types

            sys.path[0] = ""  # as `python -c` does
            sys.argv = ["-c", *request["args"]]
            main = types.ModuleType("__main__")
            sys.modules["__main__"] = main
            exec(compile(request["code"], "<string>", "exec"), main.__dict__)
        elif request["module"]:
            sys.path[0] = os.getcwd()  # as `python -m` does
            sys.argv = [request["module"], *request["args"]]
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        else:
            sys.path[0] = str(Path(request["path"]).parent)  # as `python <script>` does
            sys.argv = [request["path"], *request["args"]]
            runpy.run_path(request["path"], run_name="__main__")
    except SystemExit as e:
        code = e.code
    except BaseException:  # noqa: B036 (the interpreter's own behaviour: sys.excepthook, exit 1)
        sys.excepthook(*sys.exc_info())
        code = 1
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for t in threading.enumerate():  # a normal exit waits for the non-daemon threads, then runs the atexit hooks
        if t is not threading.main_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code


def _reap(*_: Any) -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def serve(path: str) -> None:
    """Import :data:`PRELOAD`, listen on the Unix socket ``path`` and fork one process per request."""
    for name in PRELOAD:
        __import__(name)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    signal.signal(signal.SIGCHLD, _reap)  # reaped by the server: their CPU time counts as the server's children's
    print("ready", flush=True)
    parent = os.getppid()
    server.settimeout(2.0)
    while True:
        try:
            conn, _ = server.accept()
        except socket.timeout:
            if os.getppid() != parent:  # the test process is gone (killed): so is its server, and its folder
                shutil.rmtree(os.path.dirname(path), ignore_errors=True)
                return
            continue
        conn.settimeout(None)
        try:
            msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 2)
        except OSError:
            conn.close()
            continue
        if not fds:
            conn.close()
            continue
        pid = os.fork()
        if pid == 0:
            server.close()
            code = 1
            try:
                conn.sendall(_CODE.pack(os.getpid()))
                code = _child(json.loads(msg), fds[0], fds[-1])
            finally:
                try:
                    conn.sendall(_CODE.pack(code))
                finally:
                    os._exit(code & 0xFF)
        conn.close()
        for fd in fds:
            os.close(fd)


# ------------------------------------------------------------------------------------------------------------ client
class ForkedProcess:
    """The part of :class:`subprocess.Popen` the tests and the experiment tool use, for a forked run."""

    def __init__(self, args: list[str], conn: socket.socket, out_fd: int, text: bool, err_fd: int | None = None
                 ) -> None:
        self.args = args
        self._conn = conn
        (self.pid,) = _CODE.unpack(_recv_exactly(conn, _CODE.size))
        self.stdout = _reader(out_fd, text)
        self.stderr = None if err_fd is None else _reader(err_fd, text)
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._conn.settimeout(timeout)
            try:
                data = _recv_exactly(self._conn, _CODE.size)
            except socket.timeout:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
            self.returncode = _CODE.unpack(data)[0] if data else -signal.SIGKILL
            self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        try:
            return self.wait(0.001)
        except subprocess.TimeoutExpired:
            return None

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __enter__(self) -> ForkedProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stdout.close()
        self.wait()

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:  # noqa: A002
        streams = [s for s in (self.stdout, self.stderr) if s is not None]
        out: dict[int, Any] = {}
        readers = [threading.Thread(target=lambda i=i, s=s: out.__setitem__(i, s.read()), daemon=True)
                   for i, s in enumerate(streams)]
        for r in readers:
            r.start()
        for r in readers:
            r.join(timeout)
        if any(r.is_alive() for r in readers):
            self.kill()
            for r in readers:
                r.join()
            self.wait()
            raise subprocess.TimeoutExpired(self.args, timeout, output=out.get(0))
        for s in streams:
            s.close()
        self.wait()
        return out.get(0), out.get(1)


def _reader(fd: int, text: bool) -> Any:
    return open(fd, "r", encoding="utf-8", errors="replace") if text else open(fd, "rb")  # noqa: SIM115


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


class ForkServer:
    """The server process of one test process (each xdist worker starts its own, on first use)."""

    def __init__(self, env: Mapping[str, str], path: str | None = None, python: str = sys.executable) -> None:
        self.env = dict(env)
        self.python = python
        self.proc: subprocess.Popen | None = None
        if path is not None:  # a forked run's client of the server it came from
            self.dir, self.path = "", path
            return
        self.dir = tempfile.mkdtemp(prefix="rb_fork_")
        self.path = str(Path(self.dir) / "socket")
        script = shutil.copy(__file__, self.dir)  # run from outside the checkout: nothing of it on the server's path
        self.proc = _REAL_POPEN([python, script, self.path], env=self.env, stdout=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True, cwd=self.dir)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the tests' fork server did not start (exit code {self.proc.poll()})")
        atexit.register(self.close)

    def accepts(self, cmd: list[str], env: Mapping[str, str]) -> bool:
        """Whether ``cmd`` is forkable (:func:`_forkable`), of this server's interpreter and start-up settings (other
        modules, e.g. ``torch.distributed.run``, get a fresh interpreter)."""
        return (_forkable(cmd) and cmd[0] == self.python and (self.proc is None or self.proc.poll() is None)
                and _startup(env) == _startup(self.env))

    def spawn(self, cmd: list[str], cwd: str | os.PathLike, env: Mapping[str, str], text: bool = True,
              stderr_apart: bool = False) -> ForkedProcess:
        r, w = os.pipe()
        re, we = os.pipe() if stderr_apart else (None, None)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(self.path)
            flag = cmd[1] in ("-m", "-c")
            cwd = str(Path(cwd).resolve())
            request = {"module": cmd[2] if cmd[1] == "-m" else None, "code": cmd[2] if cmd[1] == "-c" else None,
                       "path": None if flag else str(Path(cwd, cmd[1])), "args": [str(a) for a in cmd[2 + flag:]],
                       "cwd": cwd, "env": {**env, SOCKET_VAR: self.path}}
            socket.send_fds(conn, [json.dumps(request).encode()], [w] if we is None else [w, we])
        except BaseException:
            for fd in (r, re):
                if fd is not None:
                    os.close(fd)
            conn.close()
            raise
        finally:
            for fd in (w, we):
                if fd is not None:
                    os.close(fd)
        return ForkedProcess(cmd, conn, r, text, re)

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


_SERVERS: dict[tuple, ForkServer] = {}  #: (python, start-up settings) -> its server
_REAL_POPEN = subprocess.Popen
#: the environment variable that tells a forked run where its server listens (its own stages are forked too)
SOCKET_VAR = "ROBUST_BUNDLES_TEST_FORKSERVER"


def _startup(env: Mapping[str, str]) -> tuple:
    return tuple(env.get(k) for k in STARTUP_KEYS)


#: the interpreters whose runs may be forked: this one, and those a test allows (:func:`allow_python`)
_PYTHONS = {sys.executable}


def allow_python(python: str) -> None:
    """Let the runs of another interpreter (e.g. a fresh venv's) be forked from a server of that interpreter."""
    _PYTHONS.add(str(python))


def _forkable(cmd: Any) -> bool:
    """``python -m <one of MODULES> ...``, ``python <script>.py ...``, or this interpreter's ``python -c ...``."""
    if not (isinstance(cmd, (list, tuple)) and len(cmd) >= 3 and str(cmd[0]) in _PYTHONS):
        return False
    if cmd[1] == "-c":  # only in the project's environment: a fresh venv's `python -c` checks stay fresh
        return str(cmd[0]) == sys.executable
    return cmd[1] == "-m" and str(cmd[2]).split(".")[0] in MODULES or str(cmd[1]).endswith(".py")


def server(cmd: Any, env: Mapping[str, str]) -> ForkServer | None:
    """The fork server for ``cmd`` (``python -m <one of MODULES> ...``, ``python <script>.py ...``, the project's
    ``python -c ...``) with ``env``'s
    start-up settings: started on first use, at most one per interpreter and setting (four in all); None for other
    commands, a ``PYTHONPATH``, or when ``ROBUST_BUNDLES_TEST_FORK=0``."""
    if os.environ.get("ROBUST_BUNDLES_TEST_FORK", "1") == "0" or env.get("PYTHONPATH") or not _forkable(cmd):
        return None
    key = (str(cmd[0]), *_startup(env))
    if key not in _SERVERS:
        if len(_SERVERS) >= 4:
            return None
        _SERVERS[key] = ForkServer(env, python=str(cmd[0]))
    return _SERVERS[key]


def run(cmd: list[str], cwd: str | os.PathLike, env: Mapping[str, str] | None = None, timeout: float | None = None,
        stderr_apart: bool = False) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, stdout=PIPE, stderr=STDOUT or PIPE, text=True)``, forked when a server accepts ``cmd``.

    Args:
        cmd: the command; ``[sys.executable, "-c", code, ...]``, ``[sys.executable, "-m", <one of MODULES>, ...]`` and
            ``[sys.executable, "<script>.py", ...]`` are forked.
        cwd: its working directory.
        env: its environment (default: this process's).
        timeout: seconds until it is killed and :class:`subprocess.TimeoutExpired` raised.
        stderr_apart: stderr in its own pipe (``capture_output=True``) rather than into stdout.
    """
    env = dict(os.environ if env is None else env)
    srv = server(cmd, env)
    if srv is None or not srv.accepts(cmd, env):
        return subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE if stderr_apart else subprocess.STDOUT, text=True,
                              timeout=timeout)
    proc = srv.spawn(cmd, cwd, env, stderr_apart=stderr_apart)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def popen(cmd: Any, *args: Any, **kwargs: Any) -> Any:
    """A stand-in for :class:`subprocess.Popen` (see :func:`patch_popen`): the tools' ``python -m monai.bundle``
    stages with stdout piped and stderr into it are forked; anything else is a real Popen."""
    env = kwargs.get("env") or os.environ
    srv = server(cmd, env)
    simple = (not args and isinstance(cmd, list) and kwargs.get("stdout") == subprocess.PIPE
              and kwargs.get("stderr") == subprocess.STDOUT
              and set(kwargs) <= {"cwd", "env", "stdout", "stderr", "text", "bufsize", "errors"})
    if srv is None or not simple or not srv.accepts(cmd, env):
        return _REAL_POPEN(cmd, *args, **kwargs)
    return srv.spawn(cmd, kwargs.get("cwd") or os.getcwd(), env, text=bool(kwargs.get("text")))


def patch_popen(monkeypatch) -> None:
    """Make the tools run in-process by a test (the experiment and study tools) fork their bundle stages."""
    monkeypatch.setattr(subprocess, "Popen", popen)


if __name__ == "__main__":
    serve(sys.argv[1])
