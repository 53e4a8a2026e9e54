"""Placement epochs under a changing topology: a 3-site cluster holds a backup; while a second
backup runs, a fourth site of nodes joins and a node is drained and removed. Afterwards every
group is settled in the current epoch, every shard sits where that epoch says
(hbc-placement-audit), `hbc restore --verify` finds 0 errors and `hbc policy check` passes on
every digit.
"""
import filecmp
import json
import os
import subprocess
import time

import hbctest
import placetest

PLAN = [("a1", "site-a", "ssd", False), ("a2", "site-a", "ssd", False),
        ("b1", "site-b", "hdd", False), ("b2", "site-b", "hdd", False),
        ("c1", "site-c", "hdd", True), ("c2", "site-c", "hdd", True)]
ADD = [("d1", "site-d", "hdd", False), ("d2", "site-d", "hdd", False)]


def same_tree(a, b):
    cmp = filecmp.dircmp(a, b)
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files, (
        cmp.left_only, cmp.right_only, cmp.diff_files)
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)


def placement(hbc):
    rc, st, _ = hbc.json("cluster", "status", check=False)
    return st.get("placement") or {}


def wait_settled(hbc, timeout=240.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = placement(hbc)
        if last.get("settled") and last.get("groups_total", 0) > 0:
            return last
        time.sleep(1)
    raise AssertionError(f"placement not settled in {timeout}s: {last}")


def audit(ca, addrs, vault):
    tls = ca.node("auditor")
    p = subprocess.run([hbctest.binary("hbc-placement-audit"), "--cluster", ",".join(addrs),
                        "--ca", tls["ca"], "--cert", tls["cert"], "--key", tls["key"],
                        "--vault", vault], capture_output=True, timeout=300)
    out = p.stdout.decode(errors="replace").strip().splitlines()
    assert out, p.stderr.decode(errors="replace")
    return p.returncode, json.loads(out[-1])


def test_add_site_drain_and_remove_during_backup(tmp_path, ca):
    t0 = time.monotonic()
    nodes = placetest.start_cluster(tmp_path, ca, PLAN)
    hbc = placetest.Hbc(tmp_path, ca, [n.addr for n in nodes])
    placetest.wait_members(hbc, 6)
    hbc.run("key", "init", "--keyfile", hbc.env["HBC_KEYFILE"])
    hbc.run("vault", "create", "records", "--home-site", "site-a")
    hbc.env["HBC_VAULT"] = "records"
    src1 = os.path.join(tmp_path, "src1")
    placetest.make_tree(src1, files=30, seed=1)
    rc, b1, err = hbc.json("backup", src1, "--vault", "records")
    epoch_before = placement(hbc)["epoch"]

    # A second backup runs while the topology changes under it.
    src2 = os.path.join(tmp_path, "src2")
    placetest.make_tree(src2, files=200, size=400_000, seed=2)
    backup = subprocess.Popen([hbctest.binary("hbc"), "--json", "backup", src2, "--vault",
                               "records"], env=hbc.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        # A fourth site joins.
        nodes += placetest.start_cluster(tmp_path, ca, ADD, first=nodes[0])
        hbc.set_cluster([n.addr for n in nodes])
        st = placetest.wait_members(hbc, 8)
        # Drain a site-b node that does not lead, then remove it once its groups have moved.
        leader = hbctest.leader_name(st)
        victim = "b1" if leader != "b1" else "b2"
        rc, out, err = hbc.json("cluster", "drain", victim)
        assert rc == 0 and out["draining"], (out, err)
        assert placement(hbc)["epoch"] > epoch_before
        refused = 0
        deadline = time.monotonic() + 300
        while True:
            rc, out, err = hbc.json("cluster", "remove", victim, check=False)
            if rc == 0:
                break
            assert out["code"] == "HBC_ENOTDRAINED", out
            assert "not yet moved" in out["message"], out
            refused += 1
            assert time.monotonic() < deadline, f"drain of {victim} did not finish: {out}"
            time.sleep(1)
        by = {n.name: n for n in nodes}
        assert by[victim].stop() == 0
        nodes = [n for n in nodes if n.name != victim]
        hbc.set_cluster([n.addr for n in nodes])
        out2, err2 = backup.communicate(timeout=900)
        assert backup.returncode == 0, err2.decode(errors="replace")
        b2 = json.loads([l for l in out2.decode().splitlines() if l.startswith("{")][-1])
    finally:
        if backup.poll() is None:
            backup.kill()
            backup.wait()

    settled = wait_settled(hbc)
    rc, a = audit(ca, [n.addr for n in nodes], "records")
    assert rc == 0 and a["shards_missing"] == 0 and a["unsettled_groups"] == 0, a
    assert a["chunks"] > 0

    # Both snapshots restore byte for byte with 0 errors, from the current epoch's nodes.
    for snap, src in ((b1["snapshot"], src1), (b2["snapshot"], src2)):
        target = os.path.join(tmp_path, "restore-" + snap[:8])
        rc, r, err = hbc.json("restore", snap, "--target", target, "--verify")
        assert rc == 0 and r["errors"] == 0, (r, err)
        same_tree(src, os.path.join(target, src.lstrip("/")))
    for copy in ("0", "1", "2"):
        rc, t, err = hbc.json("restore", "latest", "--verify", "--copy", copy)
        assert rc == 0 and t["errors"] == 0, (copy, t, err)
    rc, doc, _ = hbc.json("policy", "check", "records", check=False)
    d = placetest.digits(doc)
    assert rc == 0 and all(p for p, _ in d.values()), d
    # Evidence that the backup spanned the changes: puts the nodes' fence sent back for a new map.
    stale = sum(len([e for e in n.events("request_failed") if e.get("code") == "HBC_ESTALEEPOCH"])
                for n in nodes)
    print("\ntopology: " + json.dumps({
        "stale_puts_refused": stale,
        "epochs": settled["epoch"], "groups": settled["groups_total"],
        "remove_refused_while_moving": refused, "audit": {k: a[k] for k in
                                                          ("chunks", "shards_expected")},
        "test_seconds": round(time.monotonic() - t0, 1)}))


def test_node_down_is_rebuilt_elsewhere(tmp_path, ca):
    """A node unreachable for placement.down_after seconds is marked DOWN by the leader: a new
    epoch without it, whose shards the others rebuild from the remaining ones; when it comes
    back it is UP again (another epoch)."""
    plan = [(f"n{i}", "site-a", "ssd", False) for i in range(1, 6)]
    nodes = []
    for i, (name, site, media, worm) in enumerate(plan):
        extra = {"placement": {"down_after": "5", "move_interval": "500"}}
        if i == 0:
            n = hbctest.RaftNode(tmp_path, ca, name, bootstrap=True, site=site, extra=extra)
        else:
            n = hbctest.RaftNode(tmp_path, ca, name, join=nodes[0].addr, site=site, extra=extra)
        n.start()
        if i > 0:
            n.wait_event(lambda ev: ev.get("event") == "joined", timeout=60, what="an admission")
        nodes.append(n)
    hbc = placetest.Hbc(tmp_path, ca, [n.addr for n in nodes])
    placetest.wait_members(hbc, 5)
    hbc.run("key", "init", "--keyfile", hbc.env["HBC_KEYFILE"])
    hbc.run("vault", "create", "one", "--policy", "none", "--copies", "1", "--k", "2", "--m", "2")
    hbc.env["HBC_VAULT"] = "one"
    src = os.path.join(tmp_path, "src")
    placetest.make_tree(src, files=30, seed=3)
    rc, b, err = hbc.json("backup", src)
    epoch = placement(hbc)["epoch"]
    st = placetest.wait_members(hbc, 5)
    victim = next(n for n in nodes[1:] if n.name != hbctest.leader_name(st))
    victim.kill9()
    live = [n for n in nodes if n is not victim]
    hbc.set_cluster([n.addr for n in live])
    deadline = time.monotonic() + 120
    while True:
        p = placement(hbc)
        if victim.name in p.get("down", []) and p.get("settled"):
            break
        assert time.monotonic() < deadline, f"{victim.name} not marked down and rebuilt: {p}"
        time.sleep(1)
    assert p["epoch"] > epoch
    rc, a = audit(ca, [n.addr for n in live], "one")
    assert rc == 0 and a["shards_missing"] == 0, a
    target = os.path.join(tmp_path, "restore")
    rc, r, err = hbc.json("restore", b["snapshot"], "--target", target, "--verify")
    assert rc == 0 and r["errors"] == 0, (r, err)
    same_tree(src, os.path.join(target, src.lstrip("/")))
    rebuilt = sum(len([e for e in n.events("mover_pass") if e.get("chunks_completed") != "0"])
                  for n in live)
    assert rebuilt > 0
    # Back again: UP, a new epoch, settled again.
    victim.start()
    hbc.set_cluster([n.addr for n in nodes])
    deadline = time.monotonic() + 120
    while True:
        q = placement(hbc)
        if not q.get("down") and q.get("settled") and q["epoch"] > p["epoch"]:
            break
        assert time.monotonic() < deadline, f"{victim.name} not back up: {q}"
        time.sleep(1)
    print("\ntopology down: " + json.dumps({"epochs": [epoch, p["epoch"], q["epoch"]],
                                            "passes_with_rebuilds": rebuilt}))
