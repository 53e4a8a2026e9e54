"""Leader failover under load: 5 nodes in 3 sites, 4 concurrent clients commit 2,000
snapshot records while the leader is killed (SIGKILL) twice and restarted. Every
acknowledged record is then on every node exactly once, in the same order, and every
node's state digest is the same.
"""
import json
import os
import time

import hbctest

COMMITS = 2000
CLIENTS = 4
# Records started per second during the kills, so that the run spans them.
RATE = 150
VAULT = "failover"
SITES = [("n1", "site-a"), ("n2", "site-a"), ("n3", "site-b"), ("n4", "site-b"), ("n5", "site-c")]


def write_results(name, results):
    path = os.path.join(hbctest.BUILD_DIR, "tests", "cluster", f"results-{name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    return path


def wait_acks(ml, ack, count, timeout=120.0):
    """Wait until the ack log has `count` lines (or the load ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(hbctest.read_ack_log(ack)) >= count or not ml.running():
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} acknowledgements after {timeout}s")


def wait_leader(admin, addrs, what, timeout=60.0):
    """The leader's name as `hbc cluster status` reports it, once there is one."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        rc, status = hbctest.cluster_status(admin, addrs)
        name = hbctest.leader_name(status)
        if name is not None:
            return name
        time.sleep(0.1)
    raise AssertionError(f"no leader {what}: {status}")


def wait_new_leader(admin, nodes, old_leader, timeout=60.0):
    """Poll the live nodes until one of them, not old_leader, is leader; (name, status)."""
    deadline = time.monotonic() + timeout
    live = [n.addr for n in nodes if n.name != old_leader]
    last = None
    while time.monotonic() < deadline:
        for a in live:
            rc, d = hbctest.metaload_dump(admin, a)
            last = d
            if rc == 0 and d and d.get("state") == "leader" and d.get("node") != old_leader:
                return d["node"], d
        time.sleep(0.02)
    raise AssertionError(f"no new leader {timeout}s after killing {old_leader}: {last}")


def test_kill_leader_twice_under_load(tmp_path, ca):
    admin = ca.client("admin", "admin")
    t_test = time.monotonic()
    first = hbctest.RaftNode(tmp_path, ca, SITES[0][0], bootstrap=True, site=SITES[0][1]).start()
    nodes = [first]
    for name, site in SITES[1:]:
        nodes.append(hbctest.RaftNode(tmp_path, ca, name, join=first.addr, site=site).start())
    by_name = {n.name: n for n in nodes}
    addrs = [n.addr for n in nodes]
    t0 = time.monotonic()
    doc = hbctest.wait_cluster(admin, addrs, 5)
    formed_s = time.monotonic() - t0
    assert {n["site"] for n in doc["nodes"]} == {"site-a", "site-b", "site-c"}

    # Unthrottled throughput first (no kills), for the figures.
    warm = hbctest.Metaload(admin, addrs, VAULT, "--clients", CLIENTS, "--commits", 1000,
                            "--ack-log", str(tmp_path / "warm.log"))
    w = warm.run(timeout=300)
    assert warm.rc == 0 and w["acked"] == 1000, warm.describe()

    ack = str(tmp_path / "ack.log")
    ml = hbctest.Metaload(admin, addrs, VAULT, "--clients", CLIENTS, "--commits", COMMITS,
                          "--ack-log", ack, "--rate", RATE, "--seed", 7).start()
    kills = []
    for round_, at in enumerate((COMMITS // 5, COMMITS // 2)):
        wait_acks(ml, ack, at)
        assert ml.running(), "the load ended before the kills: " + ml.describe()
        leader = wait_leader(admin, addrs, f"before kill {round_ + 1}")
        victim = by_name[leader]
        t_kill = time.monotonic()
        victim.kill9()
        new_leader, _ = wait_new_leader(admin, nodes, leader)
        elect_ms = (time.monotonic() - t_kill) * 1000
        victim.start()
        kills.append({"killed": leader, "new_leader": new_leader,
                      "acks_before": len(hbctest.read_ack_log(ack)),
                      "elect_ms": round(elect_ms)})
    s = ml.finish(timeout=600)
    assert ml.rc == 0, ml.describe()
    assert s["acked"] == COMMITS and s["failed"] == 0, ml.describe()

    acks = hbctest.read_ack_log(ack)
    assert len(acks) == COMMITS, "one ack line per acknowledged record"
    ids = [a[0] for a in acks]
    assert len(set(ids)) == COMMITS, "every record has its own id"

    t_conv = time.monotonic()
    dumps = hbctest.wait_converged(admin, addrs, VAULT, timeout=180)
    converge_s = time.monotonic() - t_conv
    lists = {a: [tuple(x) for x in d["snapshots"]] for a, d in dumps.items()}
    reference = lists[addrs[0]]
    for a, lst in lists.items():
        assert lst == reference, f"{a} lists other snapshots (or another order) than {addrs[0]}"
    order = [sid for sid, _ in reference]
    indexes = [idx for _, idx in reference]
    assert len(set(order)) == len(order), "no record is committed twice"
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes), "commit order"
    # The warm-up's records plus this run's, nothing else (no record was given up).
    warm_ids = {a[0] for a in hbctest.read_ack_log(str(tmp_path / "warm.log"))}
    assert set(order) == set(ids) | warm_ids
    position = {sid: i for i, sid in enumerate(order)}
    index_of = dict(reference)
    for sid, idx, _client in acks:
        if idx != 0:
            assert index_of[sid] == idx, f"{sid}: acknowledged at index {idx}, stored at {index_of[sid]}"
    # Each client commits one record at a time: its records are stored in its ack order.
    for c in range(CLIENTS):
        mine = [position[sid] for sid, _, client in acks if client == c]
        assert mine == sorted(mine), f"client {c}'s records are out of order"

    digests = {d["state_digest"] for d in dumps.values()}
    assert len(digests) == 1, f"state digests differ: {[(d['node'], d['state_digest']) for d in dumps.values()]}"
    applied = next(iter(dumps.values()))["applied_index"]

    results = {
        "nodes": len(nodes),
        "clients": CLIENTS,
        "cluster_formed_s": round(formed_s, 2),
        "commits_per_s_unthrottled": round(w["commits_per_s"], 1),
        "latency_p50_ms_unthrottled": w["latency_p50_ms"],
        "latency_p99_ms_unthrottled": w["latency_p99_ms"],
        "commits_under_failover": COMMITS,
        "rate_limit_per_s": RATE,
        "commits_per_s_under_failover": round(s["commits_per_s"], 1),
        "latency_max_ms_under_failover": s["latency_max_ms"],
        "longest_ack_gap_ms": s["max_ack_gap_ms"],
        "resent": s["resent"],
        "acked_as_existing": s["acked_exists"],
        "redirects": s["redirects"],
        "kills": kills,
        "converge_after_load_s": round(converge_s, 2),
        "applied_index": applied,
        "test_seconds": round(time.monotonic() - t_test, 1),
    }
    path = write_results("raft-failover", results)
    print(f"\nraft failover: {json.dumps(results)}\n(written to {path})")
