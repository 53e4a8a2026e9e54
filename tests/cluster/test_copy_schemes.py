"""Per-copy erasure schemes: a vault under the built-in 3-2-1-1-0 policy on sites of different
sizes keeps each copy's fitted scheme (home site 4 nodes -> 2+2, second site 3 nodes -> 2+1,
worm site 2 nodes -> 1+1). The backup writes each copy with its own scheme: `hbc policy check`
shows the three schemes and passes, hbc-placement-audit finds every shard of every copy where
the epoch says, restores verify with 0 errors (each copy alone too), and a copy still restores
byte for byte with m of its nodes stopped. A node added to the second site makes the mover copy
that copy's (tagged) shards to it; the audit and a verified restore pass again.
"""
import json
import os
import shutil
import time

import hbctest
import placetest
from test_topology import audit, same_tree, wait_settled

# (name, site, media, worm). The worm nodes share the home site's media, so that copy 1
# ("offsite", media "different") may use site-b only.
PLAN = [("a1", "site-a", "ssd", False), ("a2", "site-a", "ssd", False),
        ("a3", "site-a", "ssd", False), ("a4", "site-a", "ssd", False),
        ("b1", "site-b", "hdd", False), ("b2", "site-b", "hdd", False),
        ("b3", "site-b", "hdd", False),
        ("c1", "site-c", "ssd", True), ("c2", "site-c", "ssd", True)]
EXTRA = {"placement": {"move_interval": "500", "down_after": "15", "cleanup_after": "3"}}
SCHEMES = [(2, 2), (2, 1), (1, 1)]


def start(root, ca, plan, first=None):
    nodes = []
    for i, (name, site, media, worm) in enumerate(plan):
        if first is None and i == 0:
            n = hbctest.RaftNode(root, ca, name, bootstrap=True, site=site, media=media,
                                 worm=worm, extra=EXTRA).start()
        else:
            join = first.addr if first is not None else nodes[0].addr
            n = hbctest.RaftNode(root, ca, name, join=join, site=site, media=media, worm=worm,
                                 extra=EXTRA).start()
            n.wait_event(lambda ev: ev.get("event") == "joined", timeout=60, what="an admission")
        nodes.append(n)
    return nodes


def restore_same(hbc, snap, src, target, copy=None):
    args = ["restore", snap, "--target", target, "--verify"]
    if copy is not None:
        args += ["--copy", str(copy)]
    rc, r, err = hbc.json(*args)
    assert rc == 0 and r["errors"] == 0, (copy, r, err)
    same_tree(src, os.path.join(target, src.lstrip("/")))
    return r


def test_copy_schemes(tmp_path, ca):
    t0 = time.monotonic()
    nodes = start(tmp_path, ca, PLAN)
    hbc = placetest.Hbc(tmp_path, ca, [n.addr for n in nodes])
    st = placetest.wait_members(hbc, len(PLAN))
    hbc.run("key", "init", "--keyfile", hbc.env["HBC_KEYFILE"])
    rc, out, err = hbc.run("vault", "create", "scans", "--home-site", "site-a")
    assert "like copy" not in err, err  # no narrowing to one scheme any more
    hbc.env["HBC_VAULT"] = "scans"

    rc, doc, _ = hbc.json("policy", "check", "scans", check=False)
    d = placetest.digits(doc)
    rep = doc[0] if isinstance(doc, list) else doc
    rep = rep["vaults"][0] if "vaults" in rep else rep
    schemes = [(c["k"], c["m"]) for c in rep["copies"]]
    assert schemes == SCHEMES, rep["copies"]
    tolerance = [c["survives_nodes"] for c in rep["copies"]]
    assert tolerance == [m for _, m in SCHEMES], rep["copies"]

    src = os.path.join(tmp_path, "src")
    placetest.make_tree(src, files=40, size=600_000, seed=7)
    rc, b, err = hbc.json("backup", src)
    snap = b["snapshot"]

    rc, a = audit(ca, [n.addr for n in nodes], "scans")
    assert rc == 0 and a["shards_missing"] == 0 and a["unsettled_groups"] == 0, a
    assert [(c["k"], c["m"]) for c in a["copies"]] == SCHEMES, a
    assert all(c["shards_missing"] == 0 for c in a["copies"]), a
    chunks = a["chunks"]
    assert chunks > 0
    # Every chunk has k+m shards of each copy's scheme: 4 + 3 + 2.
    assert [c["shards_expected"] for c in a["copies"]] == [chunks * (k + m) for k, m in SCHEMES]

    # The same data under another path is found stored (HaveChunks per scheme): its large files
    # dedup; only trees (other paths) and some packs are new.
    src_copy = os.path.join(tmp_path, "src-copy")
    shutil.copytree(src, src_copy)
    rc, b2, err = hbc.json("backup", src_copy)
    assert b2["dedup_chunks"] >= 30 and b2["new_chunks"] < b2["dedup_chunks"], b2

    restore_same(hbc, snap, src, os.path.join(tmp_path, "r-all"))
    for copy in range(3):
        rc, t, err = hbc.json("restore", snap, "--verify", "--copy", str(copy))
        assert rc == 0 and t["errors"] == 0, (copy, t, err)
    rc, doc, _ = hbc.json("policy", "check", "scans", check=False)
    d = placetest.digits(doc)
    assert rc == 0 and all(p for p, _ in d.values()), d

    # m_c nodes of one copy stopped: that copy alone still restores byte for byte.
    leader = hbctest.leader_name(placetest.wait_members(hbc, len(PLAN)))
    by = {n.name: n for n in nodes}
    stops = {0: [x for x in ("a3", "a4", "a2") if x != leader][:2], 1: ["b2"], 2: ["c1"]}
    degraded = {}
    for copy, names in stops.items():
        assert len(names) == SCHEMES[copy][1]
        for name in names:
            assert by[name].stop() == 0
        live = [n.addr for n in nodes if n.name not in names]
        hbc.set_cluster(live)
        r = restore_same(hbc, snap, src, os.path.join(tmp_path, f"r-copy{copy}"), copy=copy)
        degraded[copy] = {"stopped": names, "shard_errors": r.get("shard_errors")}
        for name in names:
            by[name].start()
        hbc.set_cluster([n.addr for n in nodes])
        placetest.wait_members(hbc, len(PLAN))

    # A node joins site-b: copy 1 (2+1) has 4 eligible nodes now and the mover copies its
    # tagged shards to the new node where the new epoch puts them.
    epoch_before = wait_settled(hbc)["epoch"]
    rc, a1 = audit(ca, [n.addr for n in nodes], "scans")
    site_b = ("b1", "b2", "b3")
    held_before = {n: a1["shards_held"][n] for n in site_b}
    nodes += start(tmp_path, ca, [("b4", "site-b", "hdd", False)], first=nodes[0])
    hbc.set_cluster([n.addr for n in nodes])
    placetest.wait_members(hbc, len(nodes))
    settled = wait_settled(hbc)
    assert settled["epoch"] > epoch_before, settled
    # Once settled for cleanup_after (3 s here), the old site-b nodes delete the copy 1 shards
    # the new epoch gave b4: their counts drop, nothing the epoch assigns goes missing.
    deadline = time.monotonic() + 120
    while True:
        rc, a2 = audit(ca, [n.addr for n in nodes], "scans")
        assert a2["shards_missing"] == 0, a2
        if a2["shards_extra"] == 0:
            break
        assert time.monotonic() < deadline, f"old-epoch shards not cleaned up: {a2}"
        time.sleep(1)
    assert rc == 0 and a2["unsettled_groups"] == 0, a2
    held_after = {n: a2["shards_held"][n] for n in site_b}
    assert sum(held_after.values()) < sum(held_before.values()), (held_before, held_after)
    assert all(held_after[n] <= held_before[n] for n in site_b), (held_before, held_after)
    # A site-b node may also gain a shard (another index of a chunk: the slot cascade), so it
    # deletes at least what its count dropped by.
    cleaned = sum(int(e.get("count", "0")) for n in nodes for e in n.events("placement_cleanup"))
    assert cleaned >= sum(held_before.values()) - sum(held_after.values()) > 0, (
        cleaned, held_before, held_after)
    moved = sum(len([e for e in n.events("mover_groups_done")]) for n in nodes)
    assert moved > 0
    restore_same(hbc, snap, src, os.path.join(tmp_path, "r-after-add"), copy=1)
    rc, t, err = hbc.json("restore", snap, "--verify")
    assert rc == 0 and t["errors"] == 0, (t, err)

    b4 = nodes[-1]
    b4_moved = max([int(e.get("moved_shards", "0")) for e in b4.events("mover_groups_done")] + [0])
    assert b4_moved > 0, "the new site-b node received no shard"

    # A site-b node dies: after down_after the leader marks it DOWN, and copy 1's shards it held
    # are rebuilt (decoded and encoded again as 2+1) on the other site-b nodes.
    st = placetest.wait_members(hbc, len(nodes))
    victim = by["b2"] if hbctest.leader_name(st) != "b2" else by["b3"]
    epoch_before = settled["epoch"]
    victim.kill9()
    live = [n for n in nodes if n is not victim]
    hbc.set_cluster([n.addr for n in live])
    deadline = time.monotonic() + 180
    while True:
        rc, cs, _ = hbc.json("cluster", "status", check=False)
        p = cs.get("placement") or {}
        if victim.name in p.get("down", []) and p.get("settled") and p["epoch"] > epoch_before:
            break
        assert time.monotonic() < deadline, f"{victim.name} not marked down and rebuilt: {p}"
        time.sleep(1)
    rc, a3 = audit(ca, [n.addr for n in live], "scans")
    assert rc == 0 and a3["shards_missing"] == 0, a3
    rebuilt = sum(len([e for e in n.events("mover_pass") if e.get("chunks_completed") != "0"])
                  for n in live)
    assert rebuilt > 0
    restore_same(hbc, snap, src, os.path.join(tmp_path, "r-after-down"), copy=1)

    print("\ncopy schemes: " + json.dumps({
        "schemes": ["%d+%d" % s for s in schemes], "survives_nodes": tolerance,
        "chunks": chunks, "dedup_chunks_of_copied_tree": b2["dedup_chunks"], "shards_per_copy": [c["shards_expected"] for c in a["copies"]],
        "shards_expected": a["shards_expected"], "degraded_restores": degraded,
        "after_add": {"epoch": settled["epoch"], "shards_expected": a2["shards_expected"],
                      "groups_done_reports": moved, "shards_moved_to_new_node": b4_moved,
                      "site_b_held_before": held_before, "site_b_held_after": held_after,
                      "b4_held": a2["shards_held"]["b4"], "placement_cleanup_deleted": cleaned},
        "after_down": {"node": victim.name, "epoch": p["epoch"], "passes_with_rebuilds": rebuilt},
        "test_seconds": round(time.monotonic() - t0, 1)}))
