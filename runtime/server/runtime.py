"""`sgl.Runtime`: start an sgl server as a subprocess on a free port, wait until it generates,
and stop it (with every process it started) on `shutdown()`.

    runtime = sgl.Runtime(max_total_tokens=4096)
    print(runtime.url, runtime.generate("Hi", {"max_new_tokens": 8}))
    runtime.shutdown()
"""
from __future__ import annotations

import atexit
import dataclasses
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional, Union

import requests

from sgl.runtime.config import ServerArgs
from sgl.runtime.server.launch import OWNER_PID_ENV, ipc_dir_prefix


class Runtime:
    def __init__(self, log_file: Optional[str] = None, timeout_s: float = 600.0,
                 **server_args: Any) -> None:
        """`server_args`: any ServerArgs field (model_path, api_key, ...). The port defaults to
        a free one; log_level to "error"; `log_file` receives the server's output (default:
        this process's stdout/stderr)."""
        server_args.setdefault("log_level", "error")
        if "port" not in server_args:
            server_args["port"] = free_port(server_args.get("host", "127.0.0.1"))
        self.server_args = ServerArgs.from_kwargs(**server_args)
        self.url = f"http://{self.server_args.host}:{self.server_args.port}"
        self.log_file = log_file
        self._log = open(log_file, "ab") if log_file else None
        env = dict(os.environ, **{OWNER_PID_ENV: str(os.getpid())})
        cmd = [sys.executable, "-m", "sgl.launch_server", *to_cli_args(self.server_args)]
        self.process: Optional[subprocess.Popen] = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT if self._log else None, env=env)
        self.pid = self.process.pid
        atexit.register(self.shutdown)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.shutdown()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.process.returncode} during "
                                   f"start-up{self._log_hint()}")
            try:
                url = self.url + "/health_generate"
                if requests.get(url, headers=self._headers(), timeout=30).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the server did not become ready in {timeout_s:.0f} s"
                           f"{self._log_hint()}")

    def _log_hint(self) -> str:
        return f"; see {self.log_file}" if self.log_file else ""

    def _headers(self) -> dict[str, str]:
        key = self.server_args.resolved_api_key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def generate(self, prompt: Union[str, list[str]], sampling_params: Optional[dict] = None,
                 **kwargs: Any) -> Any:
        """POST /generate; returns the JSON result (a list for a list of prompts)."""
        body = {"text": prompt, "sampling_params": sampling_params or {}, **kwargs}
        res = requests.post(self.url + "/generate", json=body, headers=self._headers(), timeout=600)
        res.raise_for_status()
        return res.json()

    def get_server_info(self) -> dict[str, Any]:
        res = requests.get(self.url + "/get_server_info", headers=self._headers(), timeout=60)
        return res.json()

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the server (it stops its children), then make sure nothing it started lives."""
        proc, self.process = getattr(self, "process", None), None
        if proc is None:
            return
        children = _descendants(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _wait_gone(children, timeout_s)
        pattern = os.path.join(tempfile.gettempdir(), ipc_dir_prefix(proc.pid) + "*")
        for leftover in glob.glob(pattern):  # only there when the server was SIGKILLed
            shutil.rmtree(leftover, ignore_errors=True)
        if self._log:
            self._log.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now and never returned before in this process: two servers started one
    after another (or from two threads) before either binds never get the same port."""
    with _HANDED_OUT_LOCK:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


def to_cli_args(args: ServerArgs) -> list[str]:
    """Flags for the fields that differ from their defaults."""
    out: list[str] = []
    for f in dataclasses.fields(ServerArgs):
        value = getattr(args, f.name)
        if value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            out += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def _descendants(pid: int) -> list[int]:
    try:
        import psutil
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except Exception:
        return _descendants_proc(pid)


def _descendants_proc(pid: int) -> list[int]:
    """Without psutil: walk /proc (Linux)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _wait_gone(pids: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False
