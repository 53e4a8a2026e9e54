"""Garbage collection run by the cluster, on a real 3-node Raft cluster.

One module-scoped cluster (grace period 2 s, no GC timer, 1 MiB segments) and a
short-retention vault (each snapshot locked for 1 s, expiry margin max_skew = 60 s,
docs/retention.md) serve the tests in order:

- forget is refused with the state machine's reason while the lock holds;
- expiry and the dedup trap: snapshot A (shared + only-A data) expires and is
  forgotten while B (shared + only-B data, committed later, still locked)
  stays; GC removes exactly the chunks no remaining snapshot references (the
  nodes' listings equal B's reference list), the shared chunks stay, node
  status shows the freed space, and B restores with --verify and 0 errors;
- a rogue sweep (a node's certificate naming B's chunks) is accepted by the state
  machine but every node keeps the chunks its applied state's snapshots reference;
- GC racing backups: GC cycles run back to back while backups run; every
  backup either commits or fails with the GC fence's message, and every
  committed snapshot restores with --verify and 0 errors.
"""
import json
import os
import random
import subprocess
import threading
import time

import pytest

import hbctest

PASS = "correct horse battery staple"
FIGURES = {}


class Hbc:
    """The hbc command with the cluster's settings in its environment."""

    def __init__(self, root, ca, nodes):
        tls = ca.client("alice", "admin", "--role", "backup", "--role", "restore")
        self.env = dict(os.environ,
                        HBC_CLUSTER=",".join(n.addr for n in nodes),
                        HBC_CA=tls["ca"], HBC_CERT=tls["cert"], HBC_KEY=tls["key"],
                        HBC_KEYFILE=os.path.join(str(root), "alice.key"),
                        HBC_PASSPHRASE=PASS, HBC_VAULT="short", HBC_TIMEOUT="20")
        self.env.pop("HBC_CONFIG", None)

    def run(self, *args, check=True, timeout=600):
        p = subprocess.run([hbctest.binary("hbc"), *args], env=self.env, capture_output=True,
                           timeout=timeout)
        out = p.stdout.decode(errors="replace")
        err = p.stderr.decode(errors="replace")
        if check and p.returncode != 0:
            raise AssertionError(f"hbc {' '.join(args)} exited {p.returncode}\nstdout: {out}\nstderr: {err}")
        return p.returncode, out, err

    def json(self, *args, check=True, timeout=600):
        rc, out, err = self.run("--json", *args, check=check, timeout=timeout)
        lines = [l for l in out.splitlines() if l.startswith("{") or l.startswith("[")]
        assert lines, f"hbc {' '.join(args)} printed no JSON (exit {rc})\nstderr: {err}"
        return rc, json.loads(lines[-1]), err


def probe(node, *args):
    """hbc-gc-probe against one node with that node's own certificate."""
    cmd = [hbctest.binary("hbc-gc-probe"), "--addr", node.addr, "--ca", node.tls["ca"],
           "--cert", node.tls["cert"], "--key", node.tls["key"], *args]
    p = subprocess.run(cmd, capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return json.loads(p.stdout.decode().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("gc")
    ca = hbctest.CA(root)
    nodes = []
    try:
        for i in range(3):
            extra = {"gc": {"grace": "2", "interval": "0"}, "store": {"segment_size": "1M"}}
            n = hbctest.RaftNode(root, ca, f"n{i + 1}", bootstrap=(i == 0),
                                 join=None if i == 0 else nodes[0].addr, extra=extra,
                                 scope="module")
            n.start()
            nodes.append(n)
        hbc = Hbc(root, ca, nodes)
        tls = ca.paths("alice")
        hbctest.wait_cluster(tls, [n.addr for n in nodes], 3)
        # Forget is time-dependent: it fails closed (HBC_ECLOCK) until the leader's first
        # clock tick, cross-checked with the voters' clocks, is committed.
        deadline = time.monotonic() + 90
        while True:
            rc, doc, err = hbc.json("approvals", "list", check=False)
            if rc == 0 and doc["compliance_clock_ms"] > 0:
                break
            assert time.monotonic() < deadline, f"no compliance clock: {doc} {err}"
            time.sleep(0.5)
        hbc.run("key", "init", "--keyfile", hbc.env["HBC_KEYFILE"])
        hbc.run("vault", "create", "short", "--copies", "1", "--k", "2", "--m", "1",
                "--retention-seconds", "1")
        yield {"root": root, "nodes": nodes, "hbc": hbc}
    finally:
        hbctest.stop_all("module")
        if FIGURES:
            print("\ngc figures: " + json.dumps(FIGURES, sort_keys=True))


def write_random(path, size, seed):
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.write(rnd.randbytes(size))


def backup(hbc, *paths):
    rc, doc, err = hbc.json("backup", *paths, check=False)
    return rc, doc, err


def restore_verify(hbc, snap):
    rc, doc, err = hbc.json("restore", snap, "--verify", check=False)
    assert rc == 0, f"restore --verify {snap} exited {rc}: {doc} {err}"
    return doc


def forget_when_expired(hbc, snap, timeout=180):
    """Propose forget until the state machine accepts it (the lock and its margin passed)."""
    deadline = time.monotonic() + timeout
    while True:
        rc, doc, err = hbc.json("forget", snap, check=False)
        if rc == 0:
            assert doc["forgotten"]
            return doc
        assert doc["error"] in ("HBC_ELOCKED", "HBC_ECLOCK"), doc
        assert time.monotonic() < deadline, f"{snap} never expired: {doc}"
        time.sleep(2)


def listed(nodes):
    return {n.name: set(probe(n, "--list", "short")["chunks"]) for n in nodes}


def test_forget_refused_while_locked(cluster):
    hbc, root = cluster["hbc"], cluster["root"]
    a = os.path.join(str(root), "a")
    os.makedirs(a)
    write_random(os.path.join(a, "shared.bin"), 3_000_000, 1)
    write_random(os.path.join(a, "only-a.bin"), 3_000_000, 2)
    rc, doc, err = backup(hbc, a)
    assert rc == 0, (doc, err)
    cluster["snap_a"] = doc["snapshot"]
    cluster["a_committed"] = time.monotonic()
    rc, doc, err = hbc.json("forget", cluster["snap_a"], check=False)
    assert rc == 1
    assert not doc["forgotten"] and doc["error"] == "HBC_ELOCKED", doc
    assert "lock" in doc["message"] or "retain" in doc["message"], doc


def test_expiry_and_dedup_trap(cluster):
    hbc, root, nodes = cluster["hbc"], cluster["root"], cluster["nodes"]
    a = os.path.join(str(root), "a")
    b = os.path.join(str(root), "b")
    os.makedirs(b)
    # B shares shared.bin with A (same bytes: same chunk ids) and has data of its own.
    os.link(os.path.join(a, "shared.bin"), os.path.join(b, "shared.bin"))
    write_random(os.path.join(b, "only-b.bin"), 2_000_000, 3)
    # Commit B just before A expires, so that B is still locked when A goes.
    wait = cluster["a_committed"] + 55 - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    rc, doc, err = backup(hbc, b)
    assert rc == 0, (doc, err)
    snap_b = doc["snapshot"]
    live_b = set(probe(nodes[0], "--live", "short")["chunks"])  # A and B present now
    forget_when_expired(hbc, cluster["snap_a"])
    rc, doc, _ = hbc.json("forget", snap_b, check=False)
    assert rc == 1 and doc["error"] == "HBC_ELOCKED", f"B must still be locked: {doc}"
    live = probe(nodes[0], "--live", "short")
    assert live["snapshots"] == [snap_b] or [s for s in live["snapshots"] if s.startswith(snap_b[:8])]
    live_b = set(live["chunks"])
    before = listed(nodes)
    status_before = {n.name: probe(n, "--status") for n in nodes}
    for name, ids in before.items():
        assert live_b <= ids, f"{name} lacks chunks of B before GC"
        assert ids - live_b, f"{name} holds nothing of A alone: nothing to collect"
    garbage = set().union(*before.values()) - live_b
    time.sleep(3)  # past the 2 s grace period for everything A wrote
    t0 = time.monotonic()
    rc, doc, err = hbc.json("gc", "run", check=False)
    FIGURES["gc_run_s"] = round(time.monotonic() - t0, 2)
    assert rc == 0, (doc, err)
    v = doc["vaults"][0]
    assert v["code"] == 0 and v["snapshots"] == 1, v
    assert v["swept_chunks"] == len(garbage), (v, len(garbage))
    FIGURES["swept_chunks"] = v["swept_chunks"]
    rc, st, err = hbc.json("gc", "status", check=False)
    assert rc == 0 and st["vaults"][0]["swept_chunks"] == len(garbage), (st, err)
    FIGURES["live_chunks"] = v["live_chunks"]
    # Every node deletes on its own; wait until each has carried out the sweeps.
    deadline = time.monotonic() + 60
    while True:
        after = listed(nodes)
        if all(ids == live_b for ids in after.values()):
            break
        assert time.monotonic() < deadline, {k: len(v) for k, v in after.items()}
        time.sleep(0.5)
    freed = 0
    for n in nodes:
        st = probe(n, "--status")
        assert st["gc_deleted_shards"] > 0, st
        assert st["used_bytes"] < status_before[n.name]["used_bytes"], (st, status_before[n.name])
        assert st["shard_count"] < status_before[n.name]["shard_count"]
        freed += status_before[n.name]["used_bytes"] - st["used_bytes"]
    FIGURES["freed_bytes_all_nodes"] = freed
    # The shared chunks (first written by A) are still there, and B reads back intact.
    doc = restore_verify(hbc, snap_b)
    assert doc.get("errors", 0) == 0, doc
    cluster["snap_b"] = snap_b


def test_rogue_sweep_keeps_referenced_chunks(cluster):
    """A sweep naming chunks that a present (locked) snapshot references, proposed with a
    node's own certificate (what a stolen node key or a root shell on one node could do): the
    state machine accepts it (it cannot read reference lists), but every node checks the
    sweep against the reference lists of the snapshots in its own applied state before it
    deletes, keeps every referenced chunk and logs the refusal; B still restores."""
    hbc, nodes = cluster["hbc"], cluster["nodes"]
    snap_b = cluster["snap_b"]
    live_b = sorted(probe(nodes[0], "--live", "short")["chunks"])
    assert live_b
    before = listed(nodes)
    _, vaults, _ = hbc.json("vault", "list")
    vid = [v for v in vaults["vaults"] if v["name"] == "short"][0]["vault_id"]
    _, ap, _ = hbc.json("approvals", "list")
    clock = ap["compliance_clock_ms"]
    assert clock > 0, ap
    refusals_before = sum(len(n.events("gc_sweep_live_refused")) for n in nodes)
    rogue = nodes[0].tls
    p = subprocess.run([hbctest.binary("hbc-lock-setup"), ",".join(n.addr for n in nodes),
                        rogue["ca"], rogue["cert"], rogue["key"], "sweep", vid, "now", str(clock),
                        *live_b[:1800]], capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    doc = json.loads(p.stdout.decode().strip().splitlines()[-1])
    assert doc["code"] == "OK", doc
    deadline = time.monotonic() + 60
    while sum(len(n.events("gc_sweep_live_refused")) for n in nodes) - refusals_before < len(nodes):
        assert time.monotonic() < deadline, "a node did not refuse the rogue sweep"
        time.sleep(0.5)
    assert listed(nodes) == before
    doc = restore_verify(hbc, snap_b)
    assert doc.get("errors", 0) == 0, doc


def test_gc_racing_backups(cluster):
    """Backups run back to back for a while; GC cycles run back to back beside them; every
    other snapshot is forgotten as soon as its lock expires, so that sweeps keep happening while
    backups are in flight. Every backup commits or fails with the fence's message, and every
    snapshot kept restores with 0 errors."""
    hbc, root, nodes = cluster["hbc"], cluster["root"], cluster["nodes"]
    stop = threading.Event()
    gc_runs = []
    kept, to_forget, forgotten, fenced = [], [], [], []
    lock = threading.Lock()

    def gc_loop():
        while not stop.is_set():
            rc, doc, err = hbc.json("gc", "run", check=False)
            gc_runs.append((rc, doc))
            with lock:
                todo = list(to_forget)
            for snap in todo:
                rc, doc, _ = hbc.json("forget", snap, check=False)
                if rc == 0:
                    with lock:
                        to_forget.remove(snap)
                        forgotten.append(snap)
            time.sleep(0.1)

    def swept_so_far():
        return sum(v["swept_chunks"] for _, d in list(gc_runs) if d for v in d.get("vaults", []))

    fence_before = sum(len(n.events("gc_fence")) for n in nodes)
    t = threading.Thread(target=gc_loop)
    t.start()
    try:
        base = os.path.join(str(root), "race")
        # Until several snapshots expired, were forgotten and swept under load (bounded).
        end = time.monotonic() + 400
        i = 0
        while time.monotonic() < end and i < 400:
            with lock:
                done = len(forgotten) >= 4 and swept_so_far() > 0
            if done:
                break
            d = os.path.join(base, f"r{i}")
            os.makedirs(d)
            # Some data shared with B (dedup against live chunks), some new.
            os.link(os.path.join(str(root), "a", "shared.bin"), os.path.join(d, "shared.bin"))
            write_random(os.path.join(d, "new.bin"), 1_000_000, 100 + i)
            rc, doc, err = backup(hbc, d)
            if rc == 0:
                with lock:
                    (kept if i % 2 == 0 else to_forget).append(doc["snapshot"])
            else:
                assert "garbage collection" in err, (rc, doc, err)
                fenced.append(i)
            i += 1
            time.sleep(0.3)
    finally:
        stop.set()
        t.join(timeout=300)
    fence_events = sum(len(n.events("gc_fence")) for n in nodes) - fence_before
    swept = swept_so_far()
    FIGURES["race_backups"] = i
    FIGURES["race_backups_kept"] = len(kept)
    FIGURES["race_backups_forgotten"] = len(forgotten)
    FIGURES["race_backups_failed_fence"] = len(fenced)
    FIGURES["race_commit_fence_refusals_seen_by_nodes"] = fence_events
    FIGURES["race_gc_cycles"] = len(gc_runs)
    FIGURES["race_chunks_swept"] = swept
    # A cycle may only stop because a backup committed between its mark and its sweep.
    bad = [d for rc, d in gc_runs
           if rc != 0 and not (d and d["vaults"] and all(v["code"] in (0, -4036) for v in d["vaults"]))]
    assert gc_runs and not bad, bad[:3]
    FIGURES["race_gc_cycles_stale"] = sum(1 for rc, _ in gc_runs if rc != 0)
    assert kept, "no backup committed"
    assert forgotten and swept > 0, "the race test never swept anything"
    for snap in kept + [cluster["snap_b"]]:
        doc = restore_verify(hbc, snap)
        assert doc.get("errors", 0) == 0, doc
