"""Helpers for cluster tests: certificates, real hbcd processes on loopback, cleanup.

Every process a test starts is registered and stopped at teardown, even when
the test fails. Only 127.0.0.1 is used.
"""
import json
import os
import re
import shutil
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
    """One real hbcd process with its own config and data directory.

    scope: "function" (stopped after each test by conftest) or "module" (the
    fixture that made it calls stop_all("module") itself).
    """

    def __init__(self, root, ca, name, site="site-a", region="region-1", media="ssd", worm=False, extra=None,
                 scope="function"):
        self.name = name
        self.scope = scope
        _created.setdefault(scope, []).append(self)
        self.starts = []  # log offset at each start, so that one run's lines can be told apart
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
        self.starts.append(os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0)
        self.log = open(self.log_path, "ab")
        env = dict(os.environ, HBC_LOG=os.environ.get("HBC_LOG", "info"))
        self.proc = subprocess.Popen([binary("hbcd"), "--config", self.config],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        _register(self)
        if wait:
            wait_port(self.port, proc=self.proc)
        return self

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        _unregister(self)
        if self.log:
            self.log.close()
            self.log = None

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
        _unregister(self)
        if self.log:
            self.log.close()
            self.log = None
        return self.proc.returncode

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def events(self, event=None, run=None):
        """The log's lines as dicts of their key=value fields, optionally only one event and
        only the lines of one run (an index into self.starts: -1 is the latest start)."""
        text = self.log_text()
        if run is not None:
            begin = self.starts[run]
            end = self.starts[run + 1] if run != -1 and run + 1 < len(self.starts) else None
            text = text.encode()[begin:end].decode(errors="replace")
        out = []
        for line in text.splitlines():
            fields = parse_log_line(line)
            if fields and (event is None or fields.get("event") == event):
                out.append(fields)
        return out

    def wait_event(self, pred, timeout=30.0, what="a log line"):
        """Wait until some parsed log line satisfies pred; return it."""
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.events():
                if pred(ev):
                    return ev
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.name}: no {what} in the log after {timeout}s")
            time.sleep(0.1)

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


_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_log_line(line):
    """hbcd's 'TIME level=info event=x key=value key="quoted value"' as a dict."""
    fields = {}
    for k, v in _FIELD.findall(line):
        fields[k] = v[1:-1] if v.startswith('"') and v.endswith('"') and len(v) >= 2 else v
    return fields


class Shardload:
    """hbc-shardload against one node with one client certificate.

    run() waits and returns the parsed JSON summary; start() runs it in the
    background (registered for cleanup) until finish() or stop() (SIGINT: it
    stops issuing requests, waits for those in flight and prints its summary).
    """

    def __init__(self, addr, tls, *args, scope="function"):
        self.cmd = [binary("hbc-shardload"), "--addr", addr, "--ca", tls["ca"], "--cert", tls["cert"],
                    "--key", tls["key"], "--json", *[str(a) for a in args]]
        self.scope = scope
        self.proc = None
        self.rc = None
        self.summary = None
        self.stderr = ""

    def run(self, timeout=900):
        self.start()
        return self.finish(timeout=timeout)

    def start(self):
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _register(self)
        return self

    def finish(self, timeout=900):
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            _unregister(self)
        self.rc = self.proc.returncode
        self.stderr = err.decode(errors="replace")
        lines = [l for l in out.decode(errors="replace").splitlines() if l.startswith("{")]
        self.summary = json.loads(lines[-1]) if lines else None
        return self.summary

    def stop(self, timeout=120):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        if self.proc is not None and self.rc is None:
            return self.finish(timeout=timeout)
        return self.summary

    def describe(self):
        return f"hbc-shardload exit {self.rc}, summary {self.summary}, stderr:\n{self.stderr[-3000:]}"


def write_results(name, results):
    """Keep a test's measured figures in BUILD_DIR/tests/cluster/results-NAME.json."""
    path = os.path.join(BUILD_DIR, "tests", "cluster", f"results-{name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    return path


def peak_rss_kib(pid):
    """VmHWM of a live process, KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


_live = {}
_created = {}


def _register(obj):
    _live.setdefault(getattr(obj, "scope", "function"), set()).add(obj)


def _unregister(obj):
    _live.get(getattr(obj, "scope", "function"), set()).discard(obj)


def stop_all(scope="function"):
    """Stop every process registered in scope (shard loads first, then nodes)."""
    objs = list(_live.get(scope, ()))
    for o in sorted(objs, key=lambda o: isinstance(o, Node)):
        try:
            if isinstance(o, Shardload):
                if o.proc is not None and o.proc.poll() is None:
                    o.proc.kill()
                    o.proc.wait(timeout=10)
                _unregister(o)
            else:
                o.stop(timeout=10)
        except Exception:
            pass
    # Shard data runs to gigabytes: remove it; configs and logs stay for a post-mortem.
    for n in _created.pop(scope, []):
        shutil.rmtree(n.data_dir, ignore_errors=True)
