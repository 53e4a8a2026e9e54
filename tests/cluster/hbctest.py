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
            # The port opens just before the start line is written; tests read that line.
            deadline = time.monotonic() + 30
            while not self.events("hbcd_started", run=-1) and time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
                time.sleep(0.02)
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
    for o in sorted(objs, key=lambda o: isinstance(o, (Node, LocalCluster))):
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
        for d in n.data_dirs() if isinstance(n, LocalCluster) else [n.data_dir]:
            shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------
# Metadata plane (Raft): nodes with a [raft] section, `hbc cluster status`,
# hbc-metaload, and network namespaces for partitions.
# ---------------------------------------------------------------------------

# Short Raft timers for tests (ms), and small log segments.
RAFT_FAST = {"election_timeout": "500", "heartbeat_timeout": "50", "segment_size": "1M"}


def _netns_prefix(netns):
    return ["ip", "netns", "exec", netns] if netns else []


class RaftNode(Node):
    """An hbcd that runs the metadata plane: [raft] listen on its own port,
    bootstrap (the first node) or join = a member's data-plane address.

    raft: more [raft] keys (override RAFT_FAST). ip/netns: run inside that
    network namespace (see NetnsLab) at that address. hbcd: the binary to run
    (e.g. a sanitizer build's); default the build's.
    """

    def __init__(self, root, ca, name, bootstrap=False, join=None, raft=None, ip="127.0.0.1",
                 netns=None, hbcd=None, **kw):
        self.raft_port = free_port()
        section = dict(RAFT_FAST, listen=f"{ip}:{self.raft_port}")
        if bootstrap:
            section["bootstrap"] = "true"
        if join:
            section["join"] = join
        section.update(raft or {})
        extra = dict(kw.pop("extra", None) or {})
        extra["raft"] = {**extra.get("raft", {}), **section}
        super().__init__(root, ca, name, extra=extra, **kw)
        self.ip = ip
        self.netns = netns
        self.hbcd = hbcd
        self.ca = ca
        if ip != "127.0.0.1":
            ca._run("node", name, ip, "--force")
            self.set_option("data", "listen", f"{ip}:{self.port}")

    @property
    def addr(self):
        return f"{self.ip}:{self.port}"

    @property
    def raft_addr(self):
        return f"{self.ip}:{self.raft_port}"

    def set_option(self, section, key, value):
        """Set (value not None) or remove (None) one key of the config file."""
        with open(self.config) as f:
            lines = f.read().splitlines()
        out, cur, done = [], None, False
        for line in lines:
            if line.startswith("["):
                if cur == section and not done and value is not None:
                    out.append(f"{key} = {value}")
                    done = True
                cur = line.strip()[1:-1]
            elif cur == section and line.split("=")[0].strip() == key:
                if value is not None and not done:
                    out.append(f"{key} = {value}")
                done = True
                continue
            out.append(line)
        if not done and value is not None:
            if cur != section:
                out.append(f"[{section}]")
            out.append(f"{key} = {value}")
        with open(self.config, "w") as f:
            f.write("\n".join(out) + "\n")

    def start(self, wait=True):
        self.starts.append(os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0)
        self.log = open(self.log_path, "ab")
        env = dict(os.environ, HBC_LOG=os.environ.get("HBC_LOG", "info"))
        cmd = _netns_prefix(self.netns) + [self.hbcd or binary("hbcd"), "--config", self.config]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        _register(self)
        if wait:
            if self.netns:
                deadline = time.monotonic() + 30
                while not self.events("hbcd_started", run=-1):
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self.name} did not start in 30 s")
                    time.sleep(0.05)
            else:
                wait_port(self.port, proc=self.proc)
        return self

    def wipe(self):
        """Remove the whole data directory (the node must be stopped)."""
        assert self.proc is None or self.proc.poll() is not None
        shutil.rmtree(self.data_dir)
        os.makedirs(self.data_dir)


def hbc_json(tls, addrs, *args, netns=None, timeout_s=3, proc_timeout=120):
    """Run `hbc --json ARGS` against addrs; returns (exit code, parsed JSON or None, stderr)."""
    cmd = _netns_prefix(netns) + [binary("hbc"), "--json", "--cluster", ",".join(addrs),
                                  "--ca", tls["ca"], "--cert", tls["cert"], "--key", tls["key"],
                                  "--timeout", str(timeout_s), *args]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=proc_timeout)
    out = p.stdout.decode(errors="replace").strip().splitlines()
    doc = None
    for line in reversed(out):
        if line.startswith("{"):
            doc = json.loads(line)
            break
    return p.returncode, doc, p.stderr.decode(errors="replace")


def cluster_status(tls, addrs, netns=None):
    """`hbc cluster status --json`: (exit code, document or None)."""
    rc, doc, _ = hbc_json(tls, addrs, "cluster", "status", netns=netns)
    return rc, doc


def wait_cluster(tls, addrs, members, timeout=90.0, netns=None, voters=None):
    """Wait until `hbc cluster status` shows `members` members, every one reachable and
    recorded, a leader, and `voters` voters (default: all members); return the document."""
    voters = members if voters is None else voters
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        rc, doc = cluster_status(tls, addrs, netns=netns)
        last = (rc, doc)
        if rc == 0 and doc and doc.get("leader_raft_id") and doc.get("members") == members:
            nodes = doc.get("nodes", [])
            if (len(nodes) == members and not doc.get("unreachable")
                    and sum(1 for n in nodes if n.get("role") == "voter") == voters
                    and all(n.get("address") for n in nodes)):
                return doc
        time.sleep(0.3)
    raise AssertionError(f"cluster not formed in {timeout}s: last status {last}")


def leader_name(doc):
    """The node name of the leader in a cluster status document, or None."""
    lid = doc.get("leader_raft_id") if doc else None
    for n in (doc or {}).get("nodes", []):
        if lid is not None and n.get("raft_id") == lid:
            return n.get("node")
    return None


def metaload_dump(tls, addr, vault=None, current=False, netns=None, timeout=60):
    """hbc-metaload --dump ADDR: (exit code, document or None)."""
    cmd = _netns_prefix(netns) + [binary("hbc-metaload"), "--dump", addr, "--ca", tls["ca"],
                                  "--cert", tls["cert"], "--key", tls["key"],
                                  "--request-timeout", "3000"]
    if vault:
        cmd += ["--vault-name", vault]
    if current:
        cmd.append("--current")
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    lines = [l for l in p.stdout.decode(errors="replace").splitlines() if l.startswith("{")]
    return p.returncode, (json.loads(lines[-1]) if lines else None)


def wait_converged(tls, addrs, vault, timeout=120.0, netns=None):
    """Wait until every node at addrs answers, all have applied the same index (equal to
    their commit index) and it did not move between two rounds; return {addr: dump}."""
    deadline = time.monotonic() + timeout
    prev = None
    last = None
    while time.monotonic() < deadline:
        dumps = {}
        for a in addrs:
            rc, d = metaload_dump(tls, a, vault, netns=netns)
            if rc != 0 or d is None:
                break
            dumps[a] = d
        last = dumps
        if len(dumps) == len(addrs):
            idx = {(d["applied_index"], d["snapshots_applied_index"] if "snapshots_applied_index" in d
                    else d["applied_index"]) for d in dumps.values()}
            commits = {d["commit_index"] for d in dumps.values()}
            if len(idx) == 1 and len(commits) == 1:
                key = next(iter(idx))
                if key[0] == key[1] == next(iter(commits)) and prev == key:
                    return dumps
                prev = key
                time.sleep(0.3)
                continue
        prev = None
        time.sleep(0.3)
    summary = {a: (d.get("applied_index"), d.get("commit_index"), d.get("state")) for a, d in
               (last or {}).items()}
    raise AssertionError(f"nodes did not converge in {timeout}s: {summary}")


def read_ack_log(path):
    """hbc-metaload's ack log: a list of (snapshot id hex, raft index, client)."""
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break
            sid, idx, client = line.split()
            out.append((sid, int(idx), int(client)))
    return out


class Metaload:
    """hbc-metaload committing snapshot records; run() waits, start()/finish() run it in
    the background (registered for cleanup), stop() asks it to wind down (SIGINT)."""

    def __init__(self, tls, addrs, vault, *args, netns=None, scope="function"):
        self.cmd = _netns_prefix(netns) + [
            binary("hbc-metaload"), "--cluster", ",".join(addrs), "--ca", tls["ca"], "--cert",
            tls["cert"], "--key", tls["key"], "--vault-name", vault, "--json",
            *[str(a) for a in args]]
        self.scope = scope
        self.proc = None
        self.rc = None
        self.summary = None
        self.stderr = ""

    def start(self):
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _register(self)
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

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

    def run(self, timeout=900):
        self.start()
        return self.finish(timeout=timeout)

    def stop(self, timeout=120):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        if self.proc is not None and self.rc is None:
            return self.finish(timeout=timeout)
        return self.summary

    def describe(self):
        return f"hbc-metaload exit {self.rc}, summary {self.summary}, stderr:\n{self.stderr[-3000:]}"


class NetnsLab:
    """Network namespaces made for one test: a hub namespace holding a bridge
    (10.213.0.1/24; the test's own tools run there), and one namespace per node,
    each joined to the bridge by a veth pair whose hub end can be set down (cut)
    and up again (heal). Nothing is created in the test process's namespace.
    close() deletes every namespace it made (stop the processes first)."""

    SUBNET = "10.213.0"

    def __init__(self):
        self.tag = f"hbct{os.getpid()}"
        self.hub = f"{self.tag}-hub"
        self.spaces = []
        self.links = {}
        self.ips = {}
        try:
            self._new_netns(self.hub)
            self._ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            self._ip("-n", self.hub, "addr", "add", f"{self.SUBNET}.1/24", "dev", "br0")
            self._ip("-n", self.hub, "link", "set", "br0", "up")
        except Exception:
            self.close()
            raise

    def _new_netns(self, ns):
        # A namespace of this name can only be left over from a crashed run of this same pid.
        subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=30)
        self._ip("netns", "add", ns)
        self.spaces.append(ns)
        self._ip("-n", ns, "link", "set", "lo", "up")

    @staticmethod
    def _ip(*args):
        subprocess.run(["ip", *args], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=30)

    def add(self, name):
        """A namespace for node `name`; returns (namespace, ip)."""
        i = len(self.links) + 2
        ns = f"{self.tag}-{name}"
        link = f"hv{os.getpid() % 100000}x{i}"
        ip = f"{self.SUBNET}.{i}"
        self._new_netns(ns)
        self._ip("link", "add", link, "netns", self.hub, "type", "veth", "peer", "name", "eth0",
                 "netns", ns)
        self._ip("-n", self.hub, "link", "set", link, "master", "br0")
        self._ip("-n", self.hub, "link", "set", link, "up")
        self._ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        self._ip("-n", ns, "link", "set", "eth0", "up")
        self.links[name] = link
        self.ips[name] = ip
        return ns, ip

    def cut(self, name):
        """Partition node `name` from everyone (its link to the bridge goes down)."""
        self._ip("-n", self.hub, "link", "set", self.links[name], "down")

    def heal(self, name):
        self._ip("-n", self.hub, "link", "set", self.links[name], "up")

    def close(self):
        for ns in reversed(self.spaces):
            subprocess.run(["ip", "netns", "del", ns], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30)
        self.spaces = []


# ---------------------------------------------------------------------------
# A whole local cluster started by scripts/cluster (the launcher the demo and the
# benchmarks use): certificates, configs, client config, detached hbcd processes.
# ---------------------------------------------------------------------------

CLUSTER_SCRIPT = os.path.join(SOURCE_DIR, "scripts", "cluster")


class ClusterNode:
    """One node of a LocalCluster, by name: its facts from DIR/cluster.json and
    stop/kill9/start through scripts/cluster. Reads the state file on every access,
    so a pid is always the current one."""

    def __init__(self, cluster, name):
        self.cluster = cluster
        self.name = name

    def _info(self):
        return self.cluster.node_info(self.name)

    addr = property(lambda self: self._info()["addr"])
    port = property(lambda self: self._info()["data_port"])
    raft_addr = property(lambda self: self._info()["raft_addr"])
    site = property(lambda self: self._info()["site"])
    media = property(lambda self: self._info()["media"])
    worm = property(lambda self: self._info()["worm"])
    pid = property(lambda self: self._info()["pid"])
    config = property(lambda self: self._info()["config"])
    data_dir = property(lambda self: self._info()["data_dir"])
    log_path = property(lambda self: self._info()["log"])

    def kill9(self):
        self.cluster.stop_node(self.name, kill=True)

    def stop(self, timeout=60):
        self.cluster.stop_node(self.name, timeout=timeout)

    def start(self, wait=True):
        self.cluster.start_node(self.name, wait=wait)
        return self

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def events(self, event=None):
        """The log's lines as dicts of their key=value fields, optionally only one event."""
        out = []
        for line in self.log_text().splitlines():
            fields = parse_log_line(line)
            if fields and (event is None or fields.get("event") == event):
                out.append(fields)
        return out


class LocalCluster:
    """A cluster run by scripts/cluster in ROOT/NAME. up() starts it and waits until it
    is healthy; it is registered at once, so stop_all(scope) runs `scripts/cluster down`
    even when up() or the test fails. env is the environment that points `hbc` at it
    (HBC_CONFIG, no other HBC_* connection variables); tls and addrs suit hbc_json()."""

    def __init__(self, root, name="cluster", scope="function"):
        self.dir = os.path.join(str(root), name)
        self.scope = scope
        self.state = None
        _created.setdefault(scope, []).append(self)

    def run(self, *args, check=True, timeout=600):
        """scripts/cluster ARGS: (exit code, stdout, stderr); check raises on a nonzero exit."""
        p = subprocess.run([CLUSTER_SCRIPT, *[str(a) for a in args]], capture_output=True, timeout=timeout,
                           env=dict(os.environ, HBC_BUILD_DIR=BUILD_DIR))
        out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
        if check and p.returncode != 0:
            raise AssertionError(f"scripts/cluster {' '.join(map(str, args))} exited {p.returncode}\n"
                                 f"stdout: {out}\nstderr: {err}")
        return p.returncode, out, err

    def up(self, sites=3, nodes_per_site=2, worm_sites=None, worm_site=(), media=None, regions=None,
           raft=None, extra=None, args=(), timeout=180, json_out=True):
        """Start the cluster (scripts/cluster up): sites x nodes_per_site nodes; raft: more
        [raft] keys (e.g. RAFT_FAST); extra: {section: {key: value}} for every node.
        json_out=False: plain output, kept in self.up_stdout (the `export HBC_CONFIG=` line)."""
        cmd = ["up", self.dir, *(["--json"] if json_out else []), "--build", BUILD_DIR, "--sites", sites,
               "--nodes-per-site",
               nodes_per_site, "--timeout", timeout, "--log-level", os.environ.get("HBC_LOG", "info")]
        if worm_sites is not None:
            cmd += ["--worm-sites", worm_sites]
        for w in worm_site:
            cmd += ["--worm-site", w]
        if media:
            cmd += ["--media", media]
        if regions:
            cmd += ["--regions", regions]
        sections = {"raft": dict(raft or {})}
        for sec, kv in (extra or {}).items():
            sections.setdefault(sec, {}).update(kv)
        for sec, kv in sections.items():
            for k, v in kv.items():
                cmd += ["--set", f"{sec}.{k}={v}"]
        _register(self)
        _, out, _ = self.run(*cmd, *args, timeout=timeout + 120)
        self.up_stdout = out
        self.state = json.loads(out) if json_out else self.reload()
        return self

    def reload(self):
        with open(os.path.join(self.dir, "cluster.json")) as f:
            self.state = json.load(f)
        return self.state

    def down(self, timeout=30):
        """scripts/cluster down: every node stopped (SIGTERM, then SIGKILL)."""
        if os.path.exists(os.path.join(self.dir, "cluster.json")):
            self.run("down", self.dir, "--timeout", timeout, timeout=timeout + 60)
        _unregister(self)

    def stop(self, timeout=30):
        """For stop_all(): the same as down()."""
        self.down(timeout=timeout)

    def status(self):
        """scripts/cluster status --json: (exit code 0 when healthy, document)."""
        rc, out, _ = self.run("status", self.dir, "--json", check=False, timeout=120)
        return rc, (json.loads(out) if out.strip().startswith("{") else None)

    def add(self, site, count=1, worm=False, media=None, timeout=180):
        """Start and join count more nodes in site; returns their ClusterNodes."""
        before = {n["name"] for n in self.reload()["nodes"]}
        cmd = ["add", self.dir, "--site", site, "--count", count, "--timeout", timeout]
        if worm:
            cmd.append("--worm")
        if media:
            cmd += ["--media", media]
        self.run(*cmd, timeout=timeout + 120)
        return [ClusterNode(self, n["name"]) for n in self.reload()["nodes"] if n["name"] not in before]

    def stop_node(self, name, kill=False, timeout=60):
        self.run("stop-node", self.dir, name, "--timeout", timeout, *(["--kill"] if kill else []),
                 timeout=timeout + 60)

    def start_node(self, name, wait=True, timeout=180):
        self.run("start-node", self.dir, name, "--timeout", timeout, *([] if wait else ["--no-wait"]),
                 timeout=timeout + 120)

    def node_info(self, name):
        for n in self.reload()["nodes"]:
            if n["name"] == name:
                return n
        raise KeyError(name)

    @property
    def nodes(self):
        return [ClusterNode(self, n["name"]) for n in self.reload()["nodes"]]

    def node(self, name):
        self.node_info(name)
        return ClusterNode(self, name)

    @property
    def pids(self):
        """{node name: pid or None (stopped)}."""
        return {n["name"]: n["pid"] for n in self.reload()["nodes"]}

    @property
    def addrs(self):
        return [n["addr"] for n in self.reload()["nodes"]]

    @property
    def client_conf(self):
        return os.path.join(self.dir, "client.conf")

    @property
    def tls(self):
        c = self.reload()["client"]
        return {"ca": c["ca"], "cert": c["cert"], "key": c["key"]}

    @property
    def env(self):
        env = {k: v for k, v in os.environ.items()
               if k not in ("HBC_CLUSTER", "HBC_CA", "HBC_CERT", "HBC_KEY", "HBC_KEYFILE", "HBC_VAULT")}
        env["HBC_CONFIG"] = self.client_conf
        return env

    def data_dirs(self):
        try:
            return [n["data_dir"] for n in self.reload()["nodes"]]
        except (OSError, ValueError):
            return []
