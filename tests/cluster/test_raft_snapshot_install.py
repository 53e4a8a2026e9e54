"""Snapshot install: with small Raft snapshot settings the leader's log is compacted,
so a follower whose whole data directory was wiped, restarted with raft.join, is
admitted again and catches up from a snapshot (InstallSnapshot), not from the log.
"""
import json
import os
import time

import hbctest

VAULT = "snapinstall"
RAFT = {"snapshot_threshold": "64", "snapshot_trailing": "16"}


def write_results(name, results):
    path = os.path.join(hbctest.BUILD_DIR, "tests", "cluster", f"results-{name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    return path


def commit(admin, addrs, n, ack):
    ml = hbctest.Metaload(admin, addrs, VAULT, "--clients", 4, "--commits", n, "--ack-log", ack)
    s = ml.run(timeout=300)
    assert ml.rc == 0 and s["acked"] == n, ml.describe()
    return s


def test_wiped_follower_catches_up_by_snapshot(tmp_path, ca):
    admin = ca.client("admin", "admin")
    t_test = time.monotonic()
    n1 = hbctest.RaftNode(tmp_path, ca, "n1", bootstrap=True, site="site-a", raft=RAFT).start()
    nodes = [n1]
    for name, site in (("n2", "site-b"), ("n3", "site-c")):
        nodes.append(hbctest.RaftNode(tmp_path, ca, name, join=n1.addr, site=site,
                                      raft=RAFT).start())
    addrs = [n.addr for n in nodes]
    status = hbctest.wait_cluster(admin, addrs, 3)
    ack = str(tmp_path / "ack.log")
    commit(admin, addrs, 300, ack)

    leader = hbctest.leader_name(status)
    victim = next(n for n in nodes if n.name not in (leader, "n1"))
    assert victim.stop() == 0, victim.log_text()[-2000:]
    victim.wipe()
    # The others go on, and compact their logs well past anything the victim had.
    live = [n for n in nodes if n is not victim]
    commit(admin, [n.addr for n in live], 300, ack)
    hbctest.wait_converged(admin, [n.addr for n in live], VAULT)

    victim.set_option("raft", "join", live[0].addr)
    t_restart = time.monotonic()
    victim.start()
    victim.wait_event(lambda ev: ev.get("event") == "joined", timeout=60, what="an admission")
    dumps = hbctest.wait_converged(admin, addrs, VAULT, timeout=120)
    catch_up_s = time.monotonic() - t_restart

    restored = victim.events("fsm_restored", run=-1)
    assert restored, "the wiped follower caught up without installing a snapshot"
    assert int(restored[0]["applied_index"]) > 300, restored
    digests = {d["state_digest"] for d in dumps.values()}
    assert len(digests) == 1, f"state digests differ: {dumps}"
    lists = [d["snapshots"] for d in dumps.values()]
    assert all(lst == lists[0] for lst in lists)
    acked = [a[0] for a in hbctest.read_ack_log(ack)]
    assert sorted(x[0] for x in lists[0]) == sorted(acked) and len(acked) == 600

    # `hbc cluster status` shows the victim as a caught-up voter.
    rc, doc = hbctest.cluster_status(admin, addrs)
    assert rc == 0 and doc["members"] == 3 and not doc["unreachable"], doc
    views = {n["node"]: n for n in doc["nodes"]}
    assert views[victim.name]["role"] == "voter"
    assert views[victim.name]["applied_index"] == max(v["applied_index"] for v in views.values())
    assert len({v["state_digest"] for v in views.values()}) == 1
    assert len(doc["nodes"]) == 3 and all(v.get("address") for v in views.values())

    results = {
        "records": 600,
        "snapshot_threshold": int(RAFT["snapshot_threshold"]),
        "snapshot_trailing": int(RAFT["snapshot_trailing"]),
        "snapshot_bytes": int(restored[0]["bytes"]),
        "restored_at_index": int(restored[0]["applied_index"]),
        "catch_up_after_restart_s": round(catch_up_s, 2),
        "test_seconds": round(time.monotonic() - t_test, 1),
    }
    path = write_results("raft-snapshot-install", results)
    print(f"\nraft snapshot install: {json.dumps(results)}\n(written to {path})")
