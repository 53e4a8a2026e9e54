"""Helpers of the placement cluster tests: a Raft cluster laid out by (name, site, media, worm)
and an `hbc` runner carrying the key file, passphrase and an admin+backup+restore certificate."""
import json
import os
import subprocess
import time

import hbctest

PASS = "correct horse battery staple"


class Hbc:
    """The hbc command with the cluster's settings in its environment."""

    def __init__(self, root, ca, addrs):
        self.tls = ca.client("alice", "admin", "--role", "backup", "--role", "restore")
        self.env = dict(os.environ,
                        HBC_CLUSTER=",".join(addrs),
                        HBC_CA=self.tls["ca"], HBC_CERT=self.tls["cert"], HBC_KEY=self.tls["key"],
                        HBC_KEYFILE=os.path.join(str(root), "alice.key"),
                        HBC_PASSPHRASE=PASS, HBC_TIMEOUT="20")
        self.env.pop("HBC_CONFIG", None)

    def set_cluster(self, addrs):
        self.env["HBC_CLUSTER"] = ",".join(addrs)

    def run(self, *args, check=True, timeout=600):
        p = subprocess.run([hbctest.binary("hbc"), *args], env=self.env, capture_output=True,
                           timeout=timeout)
        out = p.stdout.decode(errors="replace")
        err = p.stderr.decode(errors="replace")
        if check and p.returncode != 0:
            raise AssertionError(f"hbc {' '.join(args)} exited {p.returncode}\n"
                                 f"stdout: {out}\nstderr: {err}")
        return p.returncode, out, err

    def json(self, *args, check=True, timeout=600):
        rc, out, err = self.run("--json", *args, check=check, timeout=timeout)
        lines = [l for l in out.splitlines() if l.startswith("{") or l.startswith("[")]
        assert lines, f"hbc {' '.join(args)} printed no JSON (exit {rc})\nstderr: {err}"
        return rc, json.loads(lines[-1]), err


def start_cluster(root, ca, plan, first=None):
    """Start RaftNodes for plan [(name, site, media, worm)], the first bootstrapping (or all
    joining `first`'s address); wait until every one is a member. Returns the nodes."""
    nodes = []
    for i, (name, site, media, worm) in enumerate(plan):
        if first is None and i == 0:
            n = hbctest.RaftNode(root, ca, name, bootstrap=True, site=site, media=media,
                                 worm=worm).start()
        else:
            join = first.addr if first is not None else nodes[0].addr
            n = hbctest.RaftNode(root, ca, name, join=join, site=site, media=media,
                                 worm=worm).start()
            n.wait_event(lambda ev: ev.get("event") == "joined", timeout=60, what="an admission")
        nodes.append(n)
    return nodes


def wait_members(hbc, count, timeout=90.0):
    """Wait until cluster status lists `count` reachable members with a leader."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        rc, out, _ = hbc.run("--json", "cluster", "status", check=False)
        try:
            st = json.loads(out)
            last = st
            if st["members"] == count and not st["unreachable"] and st["leader_raft_id"]:
                return st
        except (ValueError, KeyError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"cluster of {count} not formed: {last}")


def make_tree(top, files=40, size=200_000, seed=1):
    """A small tree of random files."""
    import random
    rnd = random.Random(seed)
    os.makedirs(top, exist_ok=True)
    for i in range(files):
        with open(os.path.join(top, f"f{i:03d}.bin"), "wb") as f:
            f.write(rnd.randbytes(rnd.randint(size // 4, size)))


def digits(doc):
    """{digit name: (pass, reason)} of one vault's `hbc policy check --json` report."""
    rep = doc[0] if isinstance(doc, list) else doc
    if "vaults" in rep:
        rep = rep["vaults"][0]
    return {d["digit"]: (d["pass"], d["reason"]) for d in rep["digits"]}
