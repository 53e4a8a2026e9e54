"""Graceful stop of a leader under write load: SIGTERM while proposals are in flight
makes hbcd exit 0, cleanly (libraft 0.15 can double-free when closed with several
appends in flight; node/raft_node.c waits for them to be stored first). Five times,
each time on whichever node leads, with the load running throughout; afterwards
every acknowledged record is on every node and the state digests agree.

With HBC_ASAN_BUILD_DIR set (scripts/test sets it to its build-asan), every hbcd is
that sanitizer build's, and its log must hold no sanitizer report.
"""
import json
import os
import signal
import time

import hbctest

VAULT = "shutdown"
ROUNDS = 5
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def hbcd_binary():
    d = os.environ.get("HBC_ASAN_BUILD_DIR")
    if not d:
        return None
    path = os.path.join(d, "node", "hbcd")
    assert os.path.exists(path), f"HBC_ASAN_BUILD_DIR={d} has no node/hbcd"
    return path


def write_results(name, results):
    path = os.path.join(hbctest.BUILD_DIR, "tests", "cluster", f"results-{name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    return path


def run_text(node, run):
    """The log text of one run of node (an index into node.starts)."""
    text = node.log_text().encode()
    begin = node.starts[run]
    end = node.starts[run + 1] if run != -1 and run + 1 < len(node.starts) else None
    return text[begin:end].decode(errors="replace")


def wait_acks(ml, ack, count, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(hbctest.read_ack_log(ack)) >= count:
            return
        assert ml.running(), "the load ended early: " + ml.describe()
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} acknowledgements after {timeout}s")


def test_sigterm_leader_with_writes_in_flight(tmp_path, ca):
    hbcd = hbcd_binary()
    admin = ca.client("admin", "admin")
    t_test = time.monotonic()
    n1 = hbctest.RaftNode(tmp_path, ca, "n1", bootstrap=True, site="site-a", hbcd=hbcd).start()
    nodes = [n1]
    for name, site in (("n2", "site-b"), ("n3", "site-c")):
        nodes.append(hbctest.RaftNode(tmp_path, ca, name, join=n1.addr, site=site,
                                      hbcd=hbcd).start())
    by_name = {n.name: n for n in nodes}
    addrs = [n.addr for n in nodes]
    hbctest.wait_cluster(admin, addrs, 3, timeout=120)

    ack = str(tmp_path / "ack.log")
    # Unthrottled, far more records than the rounds take: stopped with SIGINT at the end.
    ml = hbctest.Metaload(admin, addrs, VAULT, "--clients", 4, "--commits", 10000000,
                          "--ack-log", ack, "--timeout", 900).start()
    rounds = []
    for r in range(ROUNDS):
        wait_acks(ml, ack, len(hbctest.read_ack_log(ack)) + 200)
        status = hbctest.wait_cluster(admin, addrs, 3, timeout=120)
        name = hbctest.leader_name(status)
        assert name is not None, f"no leader in round {r + 1}: {status}"
        leader = by_name[name]
        acks_before = len(hbctest.read_ack_log(ack))
        t0 = time.monotonic()
        leader.proc.send_signal(signal.SIGTERM)
        code = leader.proc.wait(timeout=120)
        stop_s = time.monotonic() - t0
        text = run_text(leader, -1)
        leader.stop()
        assert code == 0, f"round {r + 1}: {name} exited {code}:\n{text[-4000:]}"
        for mark in SANITIZER_MARKS:
            assert mark not in text, f"round {r + 1}: {name} logged '{mark}':\n{text[-6000:]}"
        assert "event=raft_stopped" in text and "event=hbcd_stopped" in text
        unsettled = "event=raft_stop_unsettled" in text
        handed = [hbctest.parse_log_line(l) for l in text.splitlines()
                  if "event=raft_leadership_handed_over" in l]
        leader.start()
        hbctest.wait_cluster(admin, addrs, 3, timeout=120)
        rounds.append({"leader": name, "acks_before": acks_before, "stop_s": round(stop_s, 2),
                       "unsettled": unsettled,
                       "handed_over": bool(handed) and handed[-1].get("ok") == "1"})
    wait_acks(ml, ack, len(hbctest.read_ack_log(ack)) + 100)
    s = ml.stop(timeout=300)
    assert s is not None and s["failed"] == 0, "no record was given up: " + ml.describe()

    acks = hbctest.read_ack_log(ack)
    dumps = hbctest.wait_converged(admin, addrs, VAULT, timeout=180)
    assert len({d["state_digest"] for d in dumps.values()}) == 1, "state digests differ"
    lists = [d["snapshots"] for d in dumps.values()]
    assert all(lst == lists[0] for lst in lists), "every node lists the same records in one order"
    stored = [x[0] for x in lists[0]]
    assert len(set(stored)) == len(stored), "no record is committed twice"
    assert set(stored) == {a[0] for a in acks} and len(stored) == len(acks), \
        "exactly the acknowledged records are stored (every record taken was acknowledged)"

    for n in nodes:
        n.proc.send_signal(signal.SIGTERM)
    for n in nodes:
        code = n.proc.wait(timeout=120)
        text = run_text(n, -1)
        n.stop()
        assert code == 0, f"{n.name} exited {code} at the end:\n{text[-4000:]}"
        for mark in SANITIZER_MARKS:
            assert mark not in n.log_text(), f"{n.name} logged '{mark}'"

    results = {
        "hbcd": "asan" if hbcd else "normal",
        "rounds": rounds,
        "records_acked": len(acks),
        "commits_per_s": round(s["commits_per_s"], 1),
        "resent": s["resent"],
        "longest_ack_gap_ms": s["max_ack_gap_ms"],
        "latency_max_ms": s["latency_max_ms"],
        "acked_as_existing": s["acked_exists"],
        "test_seconds": round(time.monotonic() - t_test, 1),
    }
    path = write_results("raft-shutdown" + ("-asan" if hbcd else ""), results)
    print(f"\nraft shutdown: {json.dumps(results)}\n(written to {path})")
