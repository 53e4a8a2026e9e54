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
