"""Membership: voters up to raft.max_voters and standbys after them; `hbc cluster remove`
takes a node out of the Raft configuration AND the state machine (so status no longer
lists it); the leader then promotes a standby, preferring one in a site without a voter.
"""
import json
import os
import time

import hbctest

VAULT = "membership"
RAFT = {"max_voters": "3"}


def roles(doc):
    return {n["node"]: n["role"] for n in doc["nodes"]}


def wait_roles(admin, addrs, pred, timeout=60.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        rc, doc = hbctest.cluster_status(admin, addrs)
        last = (rc, doc)
        if rc == 0 and doc and pred(doc):
            return doc
        time.sleep(0.2)
    raise AssertionError(f"roles not as expected after {timeout}s: {last}")


def test_standbys_remove_and_promotion(tmp_path, ca):
    admin = ca.client("admin", "admin")
    t_test = time.monotonic()
    plan = [("n1", "site-a"), ("n2", "site-a"), ("n3", "site-b"), ("n4", "site-a"),
            ("n5", "site-c")]
    first = hbctest.RaftNode(tmp_path, ca, "n1", bootstrap=True, site="site-a", raft=RAFT).start()
    nodes = [first]
    hbctest.wait_cluster(admin, [first.addr], 1)
    for name, site in plan[1:]:
        n = hbctest.RaftNode(tmp_path, ca, name, join=first.addr, site=site, raft=RAFT).start()
        n.wait_event(lambda ev: ev.get("event") == "joined", timeout=60, what="an admission")
        nodes.append(n)
    by_name = {n.name: n for n in nodes}
    addrs = [n.addr for n in nodes]
    doc = hbctest.wait_cluster(admin, addrs, 5, voters=3)
    assert roles(doc) == {"n1": "voter", "n2": "voter", "n3": "voter", "n4": "standby",
                          "n5": "standby"}, doc

    ml = hbctest.Metaload(admin, addrs, VAULT, "--clients", 2, "--commits", 200)
    s = ml.run(timeout=300)
    assert ml.rc == 0, ml.describe()

    # The leader cannot remove itself.
    leader = hbctest.leader_name(doc)
    rc, out, _ = hbctest.hbc_json(admin, addrs, "cluster", "remove", leader)
    assert rc != 0 and out and not out["removed"] and out["code"] == "HBC_EINVAL", out

    # Remove a stopped voter that is not the leader (n2 or n3; n3 is the only one in site-b).
    victim = by_name["n2"] if leader != "n2" else by_name["n3"]
    assert victim.stop() == 0
    rc, out, err = hbctest.hbc_json(admin, addrs, "cluster", "remove", victim.name)
    assert rc == 0 and out["removed"], (out, err)
    live = [n.addr for n in nodes if n is not victim]
    # A standby is promoted: n5 (site-c has no voter) rather than n4 (site-a has one), unless
    # the victim was n3: then site-b has no standby and either site-c's n5 is still preferred.
    doc = wait_roles(admin, live, lambda d: d["members"] == 4 and
                     sum(1 for n in d["nodes"] if n["role"] == "voter") == 3)
    assert victim.name not in roles(doc), "the removed node is gone from the state machine too"
    assert not doc["unreachable"], doc
    assert roles(doc)["n5"] == "voter" and roles(doc)["n4"] == "standby", roles(doc)

    # The cluster still commits, and the four agree.
    ml = hbctest.Metaload(admin, live, VAULT, "--clients", 2, "--commits", 200)
    ml.run(timeout=300)
    assert ml.rc == 0, ml.describe()
    dumps = hbctest.wait_converged(admin, live, VAULT)
    assert len({d["state_digest"] for d in dumps.values()}) == 1
    assert all(len(d["snapshots"]) == 400 for d in dumps.values())
    print(f"\nraft membership: {json.dumps({'test_seconds': round(time.monotonic() - t_test, 1)})}")
