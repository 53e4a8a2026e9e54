"""Helpers for cluster tests: certificates, real hbcd processes on loopback, cleanup.

Every process a test starts is registered and stopped at teardown, even when
the test fails. Only 127.0.0.1 is used.
"""
import os
import signal
import socket
import subprocess
import time

SOURCE_DIR = os.environ.get("HBC_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
BUILD_DIR = os.environ.get("HBC_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))


def binary(name):
    for sub in ("node", "client", "tests/cluster", "tests/bench"):
        p = os.path.join(BUILD_DIR, sub, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(f"{name} not built under {BUILD_DIR}")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class CA:
    """A cluster CA made with scripts/dev-ca in a temporary folder."""

    def __init__(self, root):
        self.dir = os.path.join(str(root), "pki")
        os.makedirs(self.dir, exist_ok=True)
        self._run("init")

    def _run(self, *args):
        subprocess.run([os.path.join(SOURCE_DIR, "scripts", "dev-ca"), self.dir, *args],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def node(self, name):
        self._run("node", name, "127.0.0.1")
        return self.paths(name)

    def client(self, name, role="backup", *extra):
        self._run("client", name, "--role", role, *extra)
        return self.paths(name)

    def paths(self, name):
        return {"ca": os.path.join(self.dir, "ca.crt"),
                "cert": os.path.join(self.dir, name + ".crt"),
                "key": os.path.join(self.dir, name + ".key")}


class Node:
    """One real hbcd process with its own config and data directory."""

    def __init__(self, root, ca, name, site="site-a", region="region-1", media="ssd", worm=False, extra=None):
        self.name = name
        self.dir = os.path.join(str(root), name)
        self.data_dir = os.path.join(self.dir, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        self.port = free_port()
        self.tls = ca.node(name)
        self.config = os.path.join(self.dir, "hbcd.conf")
        self.log_path = os.path.join(self.dir, "hbcd.log")
        sections = {
            "node": {"id": name, "data_dir": self.data_dir, "site": site, "region": region,
                     "media": media, "worm": "true" if worm else "false", "capacity": "64G"},
            "data": {"listen": f"127.0.0.1:{self.port}"},
            "tls": {"ca": self.tls["ca"], "cert": self.tls["cert"], "key": self.tls["key"]},
            "store": {"segment_size": "64M"},
        }
        for sec, kv in (extra or {}).items():
            sections.setdefault(sec, {}).update(kv)
        with open(self.config, "w") as f:
            for sec, kv in sections.items():
                f.write(f"[{sec}]\n")
                for k, v in kv.items():
                    f.write(f"{k} = {v}\n")
        self.proc = None
        self.log = None

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def start(self, wait=True):
        self.log = open(self.log_path, "ab")
        env = dict(os.environ, HBC_LOG=os.environ.get("HBC_LOG", "info"))
        self.proc = subprocess.Popen([binary("hbcd"), "--config", self.config],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        _live.add(self)
        if wait:
            wait_port(self.port, proc=self.proc)
        return self

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout=60):
        """SIGTERM and wait; returns the exit code. SIGKILL if it hangs."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _live.discard(self)
        if self.log:
            self.log.close()
            self.log = None
        return self.proc.returncode

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def rss_kib(self):
        """Current and peak resident memory of the process, from /proc."""
        cur = peak = 0
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1])
        return cur, peak


_live = set()


def stop_all():
    for n in list(_live):
        try:
            n.stop(timeout=10)
        except Exception:
            pass
