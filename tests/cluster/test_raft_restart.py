"""Restart from the data directory: a follower and then the leader are stopped with SIGTERM
and, in other rounds, killed with SIGKILL, while hbc-metaload commits, and each is started
again with the same configuration and data directory. Each time the node keeps its identity
(the same node id and Raft id), does not ask to be admitted again (it holds a Raft
configuration: no join attempt, no second NodeJoin record, the state machine's node records
unchanged) and rejoins by itself: it catches up past the records committed while it was down
and, once the load ends, every node holds the same state (same digest, same records).
"""
import hashlib
import json
import time

import hbctest

VAULT = "restart"
# Records started per second: enough to keep commits flowing across every stop and start.
RATE = 100
# (which node, how it is stopped)
ROUNDS = [("follower", "sigterm"), ("follower", "sigkill"), ("leader", "sigterm"),
          ("leader", "sigkill")]


def raft_id_of(name):
    """node/raft_id.c's rule: SHA-256("hbc raft id v1\\0" || name), first 8 bytes BE, top bit
    cleared."""
    v = int.from_bytes(hashlib.sha256(b"hbc raft id v1\0" + name.encode()).digest()[:8], "big")
    v &= ~(1 << 63)
    return v or 1


def wait_acks(ml, ack, count, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(hbctest.read_ack_log(ack)) >= count:
            return
        assert ml.running(), "the load ended early: " + ml.describe()
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} acknowledgements after {timeout}s")


def dump(admin, node):
    rc, d = hbctest.metaload_dump(admin, node.addr)
    return d if rc == 0 and d and "error" not in d else None


def leader_of(admin, nodes, exclude=None, timeout=60.0):
    """The node that reports itself leader (not `exclude`), once there is one."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for n in nodes:
            if n is exclude:
                continue
            d = dump(admin, n)
            last = d
            if d and d["state"] == "leader":
                return n, d
        time.sleep(0.05)
    raise AssertionError(f"no leader after {timeout}s (excluding {exclude and exclude.name}): {last}")


def node_records(d):
    return sorted((n["node"], n["raft_id"], n["data_address"], n["raft_address"], n["site"],
                   n["joined_ms"], n["updated_ms"]) for n in d["nodes"])


def test_restart_keeps_identity_and_rejoins(tmp_path, ca):
    admin = ca.client("admin", "admin")
    t_test = time.monotonic()
    n1 = hbctest.RaftNode(tmp_path, ca, "n1", bootstrap=True, site="site-a").start()
    nodes = [n1]
    for name, site in (("n2", "site-b"), ("n3", "site-c")):
        nodes.append(hbctest.RaftNode(tmp_path, ca, name, join=n1.addr, site=site).start())
    addrs = [n.addr for n in nodes]
    hbctest.wait_cluster(admin, addrs, 3, timeout=120)

    ack = str(tmp_path / "ack.log")
    ml = hbctest.Metaload(admin, addrs, VAULT, "--clients", 2, "--commits", 10000000,
                          "--rate", RATE, "--ack-log", ack, "--timeout", 900).start()
    wait_acks(ml, ack, 100)
    # Every node's record, as the state machine holds it once all three are in.
    before = dump(admin, n1)
    assert before is not None and len(before["nodes"]) == 3, before
    records = node_records(before)
    for n in nodes:
        assert any(r[0] == n.name and r[1] == raft_id_of(n.name) for r in records), records

    rounds = []
    followers_used = set()
    for which, how in ROUNDS:
        leader, _ = leader_of(admin, nodes)
        if which == "leader":
            victim = leader
        else:
            victim = next(n for n in nodes if n is not leader and n.name not in followers_used)
            followers_used.add(victim.name)
        acks_at_stop = len(hbctest.read_ack_log(ack))
        if how == "sigterm":
            code = victim.stop()
            assert code == 0, f"{victim.name} exited {code} on SIGTERM"
            assert "event=hbcd_stopped" in victim.log_text().encode()[victim.starts[-1]:].decode(
                errors="replace")
        else:
            victim.kill9()
        others = [n for n in nodes if n is not victim]
        new_leader, _ = leader_of(admin, others)
        # The cluster commits without it.
        wait_acks(ml, ack, acks_at_stop + 50)
        new_leader, d = leader_of(admin, others)
        commit_while_down = d["commit_index"]

        victim.start()  # same configuration, same data directory: nobody does anything else
        deadline = time.monotonic() + 60
        while True:
            d = dump(admin, victim)
            if (d and d["state"] in ("follower", "leader") and d["leader_raft_id"]
                    and d["applied_index"] >= commit_while_down):
                break
            assert time.monotonic() < deadline, f"{victim.name} did not catch up: {d}"
            time.sleep(0.1)
        assert d["node"] == victim.name and d["raft_id"] == raft_id_of(victim.name), d
        assert d["members"] == 3, d
        run = victim.events(run=-1)
        started = [ev for ev in run if ev.get("event") == "raft_started"]
        assert started and started[0]["node"] == victim.name, started
        assert int(started[0]["raft_id"]) == raft_id_of(victim.name), started
        kinds = {ev.get("event") for ev in run}
        assert not kinds & {"join_start", "joined", "raft_bootstrapped"}, \
            f"{victim.name} asked to be admitted again or bootstrapped: {sorted(kinds)}"
        # The state machine's node records did not change (no second NodeJoin, no update).
        assert node_records(d) == records, (node_records(d), records)
        rounds.append({"node": victim.name, "role": which, "signal": how,
                       "acks_before_stop": acks_at_stop, "new_leader": new_leader.name,
                       "caught_up_to": d["applied_index"]})

    wait_acks(ml, ack, len(hbctest.read_ack_log(ack)) + 50)
    s = ml.stop(timeout=300)
    assert s is not None and s["failed"] == 0, "no record was given up: " + ml.describe()
    acks = hbctest.read_ack_log(ack)

    doc = hbctest.wait_cluster(admin, addrs, 3, timeout=120)
    assert {n["node"]: n["raft_id"] for n in doc["nodes"]} == \
        {n.name: raft_id_of(n.name) for n in nodes}, doc
    dumps = hbctest.wait_converged(admin, addrs, VAULT, timeout=180)
    assert len({d["state_digest"] for d in dumps.values()}) == 1, \
        f"state digests differ: {[(d['node'], d['state_digest']) for d in dumps.values()]}"
    for d in dumps.values():
        assert node_records(d) == records, f"{d['node']}: node records changed"
    lists = [d["snapshots"] for d in dumps.values()]
    assert all(lst == lists[0] for lst in lists), "every node lists the same records in one order"
    stored = [x[0] for x in lists[0]]
    assert len(set(stored)) == len(stored), "no record is committed twice"
    assert set(stored) == {a[0] for a in acks} and len(stored) == len(acks), \
        "exactly the acknowledged records are stored"

    results = {"rounds": rounds, "records_acked": len(acks), "resent": s["resent"],
               "longest_ack_gap_ms": s["max_ack_gap_ms"],
               "test_seconds": round(time.monotonic() - t_test, 1)}
    path = hbctest.write_results("raft-restart", results)
    print(f"\nraft restart: {json.dumps(results)}\n(written to {path})")
