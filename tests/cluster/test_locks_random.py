"""1,000 randomised attempts to forget, shorten or delete locked and held snapshots.

A real 3-node Raft cluster. Vault `clinic` (compliance lock, the default six
years) holds two backed-up snapshots that share data; vault `legal`
(governance lock, 30 days) holds one under legal hold, with one hold-release
request filed by officer so1 and never approved by a second officer.

Then ATTEMPTS (1,000) attempts, each by a randomly chosen holder of one of the
certificates (admin, the data owner with admin+backup+restore, backup,
restore, two security officers, a node's own certificate), each a randomly
chosen way to remove or weaken protection, through every `hbc` command that
could (forget, lock extend to an earlier date, lock shorten, lock
forget-early, hold release, approvals approve, gc run) and directly against a
randomly chosen node with raw proposals (SnapshotForget, GcSweep naming the
snapshots' chunks; hbc-lock-setup). Every attempt must be refused with a
reason. (A sweep proposed with a node's certificate is accepted by the state
machine, which cannot read reference lists, and refused by every node:
test_gc.py covers it.)

Afterwards every snapshot is present with its retain-until unchanged and the
hold still set, a legitimate GC cycle by the admin removes none of their
chunks, and `hbc restore --verify` of each has 0 errors. Figures: attempts per
kind and refusal code, and the time taken.
"""
import collections
import json
import os
import random
import subprocess
import time

import pytest

import hbctest

PASS = "correct horse battery staple"
DAY_MS = 86400 * 1000
ATTEMPTS = int(os.environ.get("HBC_LOCK_ATTEMPTS", "1000"))
SEED = int(os.environ.get("HBC_LOCK_SEED", "20261205"))


class Who:
    """One certificate holder running hbc and hbc-lock-setup."""

    def __init__(self, root, name, tls, subject, nodes):
        self.name = name
        self.tls = tls
        self.subject = subject
        self.addrs = [n.addr for n in nodes]
        self.env = dict(os.environ, HBC_CLUSTER=",".join(self.addrs), HBC_CA=tls["ca"],
                        HBC_CERT=tls["cert"], HBC_KEY=tls["key"],
                        HBC_KEYFILE=os.path.join(str(root), "owner.key"), HBC_PASSPHRASE=PASS,
                        HBC_TIMEOUT="20")
        self.env.pop("HBC_CONFIG", None)
        self.env.pop("HBC_VAULT", None)

    def hbc(self, *args, timeout=600):
        p = subprocess.run([hbctest.binary("hbc"), "--json", *args], env=self.env,
                           capture_output=True, timeout=timeout)
        out = p.stdout.decode(errors="replace")
        doc = None
        for line in reversed(out.splitlines()):
            if line.startswith("{") or line.startswith("["):
                doc = json.loads(line)
                break
        return p.returncode, doc, p.stderr.decode(errors="replace")

    def ok(self, *args):
        rc, doc, err = self.hbc(*args)
        assert rc == 0, f"{self.name}: hbc {' '.join(args)} exited {rc}: {doc} {err}"
        return doc

    def raw(self, addr, *args):
        p = subprocess.run([hbctest.binary("hbc-lock-setup"), addr, self.tls["ca"],
                            self.tls["cert"], self.tls["key"], *args], capture_output=True,
                           timeout=120)
        lines = p.stdout.decode(errors="replace").strip().splitlines()
        doc = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
        return p.returncode, doc, p.stderr.decode(errors="replace")


def make_tree(path, seed, shared=None):
    os.makedirs(path)
    rnd = random.Random(seed)
    for i in range(20):
        with open(os.path.join(path, f"record-{i:03d}.hl7"), "w") as f:
            f.write(f"MSH|^~\\&|LAB|HOSP|{seed}|{i}\r" * rnd.randint(5, 200))
    with open(os.path.join(path, "scan.bin"), "wb") as f:
        f.write(rnd.randbytes(1_500_000))
    if shared is not None:
        os.link(os.path.join(shared, "scan.bin"), os.path.join(path, "shared-scan.bin"))


def snapshots(who, vault):
    doc = who.ok("snapshots", "--vault", vault)
    return {s["id"]: s for s in (doc if isinstance(doc, list) else doc["snapshots"])}


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    root = tmp_path_factory.mktemp("locksrand")
    ca = hbctest.CA(root)
    try:
        nodes = []
        for i in range(3):
            n = hbctest.RaftNode(root, ca, f"n{i + 1}", bootstrap=(i == 0),
                                 join=None if i == 0 else nodes[0].addr,
                                 extra={"gc": {"interval": "0", "grace": "1"}}, scope="module")
            n.start()
            nodes.append(n)

        def person(name, roles):
            extra = []
            for r in roles[1:]:
                extra += ["--role", r]
            tls = ca.client(name, roles[0], *extra)
            return Who(root, name, tls, f"CN={name}," + ",".join(f"OU={r}" for r in roles), nodes)

        who = {
            "admin": person("root", ["admin"]),
            "owner": person("alice", ["admin", "backup", "restore"]),
            "backup": person("bob", ["backup"]),
            "restore": person("rita", ["restore"]),
            "so1": person("olivia", ["security-officer"]),
            "so2": person("omar", ["security-officer"]),
            "node": Who(root, "n1", nodes[0].tls, "CN=n1,OU=node", nodes),
        }
        hbctest.wait_cluster(who["admin"].tls, [n.addr for n in nodes], 3)
        deadline = time.monotonic() + 60
        while True:  # the compliance clock starts with the leader's first accepted tick
            rc, doc, _ = who["admin"].hbc("approvals", "list")
            if rc == 0 and doc["compliance_clock_ms"] > 0:
                break
            assert time.monotonic() < deadline, doc
            time.sleep(0.5)
        for so in ("so1", "so2"):
            who["admin"].ok("role", "assign", who[so].subject, "security-officer")
        owner = who["owner"]
        owner.ok("key", "init", "--keyfile", owner.env["HBC_KEYFILE"])
        owner.ok("vault", "create", "clinic", "--copies", "1", "--k", "2", "--m", "1")
        owner.ok("vault", "create", "legal", "--copies", "1", "--k", "2", "--m", "1",
                 "--lock-mode", "governance", "--retention-days", "30")
        d1, d2, d3 = (os.path.join(str(root), d) for d in ("d1", "d2", "d3"))
        make_tree(d1, 1)
        make_tree(d2, 2, shared=d1)
        make_tree(d3, 3, shared=d1)
        s1 = owner.ok("backup", "--vault", "clinic", d1)["snapshot"]
        s2 = owner.ok("backup", "--vault", "clinic", d2)["snapshot"]
        s3 = owner.ok("backup", "--vault", "legal", d3)["snapshot"]
        who["so1"].ok("hold", "set", s3[:12], "--case", "case-2026-114")
        req = who["so1"].ok("hold", "release", s3[:12])["index"]
        vaults = {v["name"]: v["vault_id"] for v in owner.ok("vault", "list")["vaults"]}
        yield {"root": root, "nodes": nodes, "who": who, "req": req, "vaults": vaults,
               "snaps": {s1: "clinic", s2: "clinic", s3: "legal"}}
    finally:
        hbctest.stop_all("module")


def live_chunks(node, vault):
    p = subprocess.run([hbctest.binary("hbc-gc-probe"), "--addr", node.addr, "--ca",
                        node.tls["ca"], "--cert", node.tls["cert"], "--key", node.tls["key"],
                        "--list", vault], capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return set(json.loads(p.stdout.decode().strip().splitlines()[-1])["chunks"])


def test_every_command_explains_itself(cl):
    w = cl["who"]["backup"]
    for cmd in (["backup"], ["snapshots"], ["ls"], ["restore"], ["forget"], ["gc"], ["lock"],
                ["hold"], ["approvals"], ["role"], ["vault", "create"], ["vault", "list"],
                ["policy", "check"], ["cluster", "status"], ["key", "init"]):
        p = subprocess.run([hbctest.binary("hbc"), *cmd, "--help"], env=w.env,
                           capture_output=True, timeout=60)
        assert p.returncode == 0 and b"Usage" in p.stdout.replace(b"usage", b"Usage"), (cmd, p)


def test_randomised_attempts_all_refused(cl):
    who, snaps, req, vaults, nodes = cl["who"], cl["snaps"], cl["req"], cl["vaults"], cl["nodes"]
    owner = who["owner"]
    before = {}
    for vault in ("clinic", "legal"):
        before.update(snapshots(owner, vault))
    assert set(before) == set(snaps)
    chunks = {v: sorted(live_chunks(nodes[0], v)) for v in ("clinic", "legal")}
    chunks_before = {n.name: {v: live_chunks(n, v) for v in chunks} for n in nodes}
    _, ap, _ = owner.hbc("approvals", "list")
    clock = ap["compliance_clock_ms"]

    rnd = random.Random(SEED)
    actors = list(who)
    kinds = ["forget", "extend-earlier", "shorten", "forget-early", "hold-release", "approve",
             "gc-run", "raw-forget", "raw-sweep"]
    tally = collections.Counter()
    codes = collections.Counter()
    accepted = []
    t0 = time.monotonic()
    for i in range(ATTEMPTS):
        kind = kinds[i % len(kinds)] if i < len(kinds) else rnd.choice(kinds)
        name = rnd.choice(actors)
        snap = rnd.choice(sorted(snaps))
        vault = snaps[snap]
        w = who[name]
        # Legitimate moves are not attacks: a second officer approving so1's release request,
        # officers filing release requests, an admin's GC cycle, a node's sweep (test_gc.py).
        if kind == "approve" and name == "so2":
            name, w = "so1", who["so1"]
        if kind == "hold-release" and name in ("so1", "so2"):
            name, w = "backup", who["backup"]
        if kind == "gc-run" and name in ("admin", "owner"):
            name, w = "restore", who["restore"]
        if kind == "raw-sweep" and name == "node":
            name, w = "admin", who["admin"]
        if kind == "forget":
            rc, doc, err = w.hbc("forget", snap, "--vault", vault)
        elif kind == "extend-earlier":
            earlier = before[snap]["retain_until_ms"] - DAY_MS
            rc, doc, err = w.hbc("lock", "extend", snap[:12], "--until", f"@{earlier}")
        elif kind == "shorten":
            rc, doc, err = w.hbc("lock", "shorten", snap[:12], "--until",
                                 f"@{clock + rnd.randint(1, 10) * DAY_MS}")
        elif kind == "forget-early":
            rc, doc, err = w.hbc("lock", "forget-early", snap[:12])
        elif kind == "hold-release":
            rc, doc, err = w.hbc("hold", "release", snap[:12])
        elif kind == "approve":
            rc, doc, err = w.hbc("approvals", "approve", str(req))
        elif kind == "gc-run":
            rc, doc, err = w.hbc("gc", "run")
        elif kind == "raw-forget":
            rc, doc, err = w.raw(rnd.choice(nodes).addr, "forget", snap)
        else:
            sample = rnd.sample(chunks[vault], min(len(chunks[vault]), rnd.randint(1, 50)))
            rc, doc, err = w.raw(rnd.choice(nodes).addr, "sweep", vaults[vault], "now",
                                 str(clock), *sample)
        tally[(kind, name)] += 1
        if kind.startswith("raw"):
            # The node answered; the state machine refused, with a reason.
            ok = rc == 0 and doc is not None and doc["code"] != "OK" and doc.get("message")
            code = doc["code"] if doc else f"rc={rc}"
        else:
            msg = ""
            if doc is not None and isinstance(doc, dict):
                msg = doc.get("message") or doc.get("reason") or ""
                if not msg and doc.get("vaults"):
                    msg = doc["vaults"][0].get("message", "")
            ok = rc == 1 and bool(msg or "refused" in err or "denied" in err)
            code = (doc or {}).get("code") or (doc or {}).get("error") or f"rc={rc}"
        codes[str(code)] += 1
        if not ok:
            accepted.append((i, kind, name, snap[:12], rc, doc, err[-300:]))
    elapsed = time.monotonic() - t0
    print(f"\nlocks random: {ATTEMPTS} attempts in {elapsed:.1f} s; refusal codes "
          f"{dict(codes)}; attempts per kind "
          f"{dict(collections.Counter(k for k, _ in tally.elements()))}")
    assert not accepted, accepted[:5]
    assert len({n for _, n in tally}) == len(who), "every certificate must have tried"

    # Nothing changed: same snapshots, same retain-until, the hold still set.
    after = {}
    for vault in ("clinic", "legal"):
        after.update(snapshots(owner, vault))
    assert set(after) == set(before)
    for s, b in before.items():
        assert after[s]["retain_until_ms"] == b["retain_until_ms"], (s, b, after[s])
        assert after[s]["legal_hold"] == b["legal_hold"], (s, b, after[s])
    assert [s for s in after if after[s]["legal_hold"]] == [s for s, v in snaps.items()
                                                            if v == "legal"]
    # A legitimate GC cycle sweeps nothing of theirs; every node still holds every chunk.
    time.sleep(1.5)
    owner.ok("gc", "run")
    for n in nodes:
        for v in chunks:
            assert chunks_before[n.name][v] <= live_chunks(n, v), (n.name, v)
    for s in snaps:
        doc = owner.ok("restore", s[:12], "--verify", "--vault", snaps[s])
        assert doc.get("errors", 0) == 0, doc
