"""Network partitions: a node cut off from the others (its own network namespace,
its link to the others set down) can neither commit nor serve a current read, a
partitioned leader steps down, the majority goes on, and the cut-off node catches up
once the link is back.

Every node runs in a network namespace this test creates (NetnsLab), with an address
in 10.213.0.0/24 that exists only inside those namespaces. The test's own tools run in
the hub namespace (they reach every node) or, to act from the partitioned side, in the
cut-off node's namespace (they reach only that node).
"""
import json
import os
import time

import pytest

import hbctest

VAULT = "partition"


@pytest.fixture
def lab():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    lab = hbctest.NetnsLab()
    try:
        yield lab
    finally:
        hbctest.stop_all()
        lab.close()


def write_results(name, results):
    path = os.path.join(hbctest.BUILD_DIR, "tests", "cluster", f"results-{name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    return path


def commit(admin, addrs, n, ack, netns, **kw):
    ml = hbctest.Metaload(admin, addrs, VAULT, "--clients", 2, "--commits", n, "--ack-log", ack,
                          *kw.get("args", ()), netns=netns)
    s = ml.run(timeout=kw.get("timeout", 300))
    return ml, s


def wait_state(admin, node, pred, what, timeout=30.0):
    """Poll node's own view (asked from inside its namespace) until pred(dump); return it."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        rc, d = hbctest.metaload_dump(admin, node.addr, VAULT, netns=node.netns)
        last = d
        if rc == 0 and d is not None and pred(d):
            return d
        time.sleep(0.1)
    raise AssertionError(f"{node.name}: {what} not seen in {timeout}s; last view {last}")


def check_isolated(admin, node, tmp_path, tag):
    """From the cut-off side, node neither commits nor serves a current read."""
    ml = hbctest.Metaload(admin, [node.addr], VAULT, "--clients", 1, "--commits", 3,
                          "--request-timeout", 1500, "--commit-timeout", 6000, "--timeout", 20,
                          "--ack-log", str(tmp_path / f"minority-{tag}.log"), netns=node.netns)
    s = ml.run(timeout=120)
    assert ml.rc != 0 and s is not None and s["acked"] == 0, \
        f"{node.name} committed while cut off: {ml.describe()}"
    rc, d = hbctest.metaload_dump(admin, node.addr, VAULT, current=True, netns=node.netns)
    assert rc != 0, f"{node.name} served a current read while cut off: {d}"
    assert d is None or "snapshots" not in d, d
    return d.get("error_code") if d else "no answer"


def test_partitioned_follower_and_leader(tmp_path, ca, lab):
    admin = ca.client("admin", "admin")
    t_test = time.monotonic()
    spaces = {name: lab.add(name) for name in ("n1", "n2", "n3")}
    ns1, ip1 = spaces["n1"]
    n1 = hbctest.RaftNode(tmp_path, ca, "n1", bootstrap=True, site="site-a", ip=ip1,
                          netns=ns1).start()
    nodes = [n1]
    for name, site in (("n2", "site-b"), ("n3", "site-c")):
        ns, ip = spaces[name]
        nodes.append(hbctest.RaftNode(tmp_path, ca, name, join=n1.addr, site=site, ip=ip,
                                      netns=ns).start())
    by_name = {n.name: n for n in nodes}
    addrs = [n.addr for n in nodes]
    hub = lab.hub
    status = hbctest.wait_cluster(admin, addrs, 3, netns=hub)
    acked = set()
    acks = []

    def run_majority(live, n, tag):
        path = str(tmp_path / f"ack-{tag}.log")
        ml, s = commit(admin, [x.addr for x in live], n, path, hub)
        assert ml.rc == 0 and s["acked"] == n, ml.describe()
        got = hbctest.read_ack_log(path)
        acks.extend(got)
        acked.update(a[0] for a in got)
        return s

    run_majority(nodes, 100, "before")

    # Phase 1: a follower is cut off.
    leader = hbctest.leader_name(status)
    follower = by_name[next(n for n in ("n1", "n2", "n3") if n != leader)]
    others = [n for n in nodes if n is not follower]
    lab.cut(follower.name)
    s1 = run_majority(others, 200, "follower-cut")
    # The follower learns nothing while cut off (the 200 records all came after the cut).
    view = wait_state(admin, follower, lambda d: True, "an answer")
    assert len(view["snapshots"]) <= 100, "the cut-off follower applied entries it cannot have got"
    refusal_follower = check_isolated(admin, follower, tmp_path, "follower")
    t_heal = time.monotonic()
    lab.heal(follower.name)
    dumps = hbctest.wait_converged(admin, addrs, VAULT, timeout=120, netns=hub)
    catchup_follower_s = time.monotonic() - t_heal
    assert len({d["state_digest"] for d in dumps.values()}) == 1
    assert {tuple(x)[0] for x in dumps[follower.addr]["snapshots"]} == acked

    # Phase 2: the leader is cut off. It must step down and refuse; the others elect.
    rc, status = hbctest.cluster_status(admin, addrs, netns=hub)
    leader = by_name[hbctest.leader_name(status)]
    others = [n for n in nodes if n is not leader]
    t_cut = time.monotonic()
    lab.cut(leader.name)
    # A client on the leader's side right after the cut: its records must not be committed.
    minority = hbctest.Metaload(admin, [leader.addr], VAULT, "--clients", 1, "--commits", 5,
                                "--request-timeout", 1500, "--commit-timeout", 6000,
                                "--timeout", 20, "--ack-log", str(tmp_path / "minority-leader.log"),
                                netns=leader.netns).start()
    stepped = wait_state(admin, leader, lambda d: d["state"] != "leader", "a step-down")
    stepdown_s = time.monotonic() - t_cut
    deadline = time.monotonic() + 60
    new_leader = None
    while new_leader is None and time.monotonic() < deadline:
        for n in others:
            rc, d = hbctest.metaload_dump(admin, n.addr, netns=hub)
            if rc == 0 and d["state"] == "leader":
                new_leader = d["node"]
        time.sleep(0.05)
    assert new_leader is not None and new_leader != leader.name, "the majority elects a new leader"
    elect_s = time.monotonic() - t_cut
    s2 = run_majority(others, 200, "leader-cut")
    m = minority.finish(timeout=120)
    assert minority.rc != 0 and m["acked"] == 0, "the cut-off leader committed: " + minority.describe()
    refusal_leader = check_isolated(admin, leader, tmp_path, "leader")
    t_heal = time.monotonic()
    lab.heal(leader.name)
    dumps = hbctest.wait_converged(admin, addrs, VAULT, timeout=120, netns=hub)
    catchup_leader_s = time.monotonic() - t_heal
    assert len({d["state_digest"] for d in dumps.values()}) == 1, "state digests differ"
    lists = [[tuple(x) for x in d["snapshots"]] for d in dumps.values()]
    assert all(lst == lists[0] for lst in lists), "every node lists the same records in one order"
    # Exactly the acknowledged records: nothing the cut-off side tried got committed.
    indexes = [idx for _, idx in lists[0]]
    assert indexes == sorted(set(indexes)), "commit order, no record twice"
    assert {sid for sid, _ in lists[0]} == acked and len(lists[0]) == len(acked)
    rc, status = hbctest.cluster_status(admin, addrs, netns=hub)
    assert rc == 0 and len(status["nodes"]) == 3 and not status["unreachable"]
    old = next(n for n in status["nodes"] if n["node"] == leader.name)
    assert old["state"] == "follower"

    results = {
        "follower_cut_refusal": refusal_follower,
        "follower_catch_up_s": round(catchup_follower_s, 2),
        "majority_commits_per_s_follower_cut": round(s1["commits_per_s"], 1),
        "leader_step_down_s": round(stepdown_s, 2),
        "leader_step_down_state": stepped["state"],
        "new_leader_elected_s": round(elect_s, 2),
        "leader_cut_refusal": refusal_leader,
        "majority_commits_per_s_leader_cut": round(s2["commits_per_s"], 1),
        "old_leader_catch_up_s": round(catchup_leader_s, 2),
        "records": len(acked),
        "test_seconds": round(time.monotonic() - t_test, 1),
    }
    path = write_results("raft-partition", results)
    print(f"\nraft partition: {json.dumps(results)}\n(written to {path})")
