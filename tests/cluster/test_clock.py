"""The compliance clock against a leader whose wall clock is a year ahead (faketime).

Three voters: n1 (bootstrap) and n2 with honest clocks and slow elections,
n3 under `faketime -f +365d` with a fast election timeout. The cluster forms
with n1 leading and the clock set from the voters' median; a snapshot record
with a 0-day retention is committed (free one margin day after its commit).
Then n3 is made the leader (n2 stopped, n1 stopped, n2 restarted: n3 runs
for election first), and n1 rejoins. While n3 leads:
- its ClockTicks are refused (the voters' median is a year behind it) and
  it logs event=clock_alert; the committed clock does not jump;
- time-dependent commands (forget) are refused with HBC_ECLOCK and a reason
  naming the skew; the snapshot is not forgotten.
After n3 stops, n1 or n2 leads, the clock moves on, and forget is judged by
the lock again (HBC_ELOCKED, retained), not by a year-ahead clock.
"""
import json
import os
import stat
import subprocess
import time

import pytest

import hbctest

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
YEAR_MS = 365 * 86400 * 1000
HOUR_MS = 3600 * 1000
FIGURES = {}


def setup_cmd(tls, addrs, *args):
    cmd = [hbctest.binary("hbc-lock-setup"), ",".join(addrs), tls["ca"], tls["cert"], tls["key"],
           *args]
    p = subprocess.run(cmd, capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return json.loads(p.stdout.decode().strip().splitlines()[-1])


def clock_ms(tls, addrs):
    """The committed compliance clock as the cluster reports it (0 when unknown or no answer)."""
    rc, doc, _ = hbctest.hbc_json(tls, addrs, "approvals", "list", timeout_s=3)
    return doc["compliance_clock_ms"] if rc == 0 and doc else 0


def leader(tls, addrs):
    """The leader's node name (some members may be down: exit 3 is fine), or None."""
    rc, doc = hbctest.cluster_status(tls, addrs)
    return hbctest.leader_name(doc) if rc in (0, 3) else None


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    root = tmp_path_factory.mktemp("clock")
    ca = hbctest.CA(root)
    assert os.path.exists(LIBFAKETIME), "libfaketime missing: run scripts/install-deps (faketime)"
    wrapper = os.path.join(str(root), "hbcd-year-ahead")
    with open(wrapper, "w") as f:
        # LD_PRELOAD, not the faketime program: that one forks, and SIGTERM would not reach hbcd.
        f.write("#!/bin/sh\nLD_PRELOAD=" + LIBFAKETIME + " FAKETIME=+365d "
                "FAKETIME_DONT_FAKE_MONOTONIC=1 exec " f"'{hbctest.binary('hbcd')}' \"$@\"\n")
    os.chmod(wrapper, os.stat(wrapper).st_mode | stat.S_IXUSR)
    slow = {"election_timeout": "3000", "heartbeat_timeout": "100"}
    fast = {"election_timeout": "300", "heartbeat_timeout": "50"}
    try:
        n1 = hbctest.RaftNode(root, ca, "n1", bootstrap=True, raft=slow, scope="module")
        n1.start()
        n2 = hbctest.RaftNode(root, ca, "n2", join=n1.addr, raft=slow, scope="module")
        n3 = hbctest.RaftNode(root, ca, "n3", join=n1.addr, raft=fast, hbcd=wrapper,
                              scope="module")
        n2.start()
        n3.start()
        nodes = [n1, n2, n3]
        addrs = [n.addr for n in nodes]
        admin = ca.client("root", "admin")
        hbctest.wait_cluster(admin, addrs, 3)
        yield {"nodes": nodes, "addrs": addrs, "admin": admin}
    finally:
        hbctest.stop_all("module")
        if FIGURES:
            print("\nclock figures: " + json.dumps(FIGURES, sort_keys=True))


def test_skewed_voter_does_not_move_the_clock(cl):
    """n3's year-ahead clock is outvoted while n1 leads: the clock follows the median."""
    admin, addrs = cl["admin"], cl["addrs"]
    # A tick with all three voters' clocks must be accepted: the clock moves past the last value.
    first = wait_for(lambda: clock_ms(admin, addrs), 60, "compliance clock set")
    wait_for(lambda: clock_ms(admin, addrs) > first, 60, "compliance clock advancing")
    now = int(time.time() * 1000)
    assert abs(clock_ms(admin, addrs) - now) < HOUR_MS
    n1 = cl["nodes"][0]
    ticks = [e for e in n1.events("clock_sync_reply")]  # debug level: may be absent
    del ticks


def test_year_ahead_leader_is_refused(cl):
    admin, addrs = cl["admin"], cl["addrs"]
    n1, n2, n3 = cl["nodes"]
    v = setup_cmd(admin, addrs, "vault", "short", "0", "compliance")
    assert v["code"] == "OK", v
    s = setup_cmd(admin, addrs, "snapshot", v["vault_id"])
    assert s["code"] == "OK", s
    snap = s["snapshot_id"]
    f = setup_cmd(admin, addrs, "forget", snap)
    assert f["code"] == "HBC_ELOCKED", f
    before = clock_ms(admin, addrs)

    # Make n3 the leader: with n2 down, stopping n1 leaves n3 alone; n2 restarts without a
    # leader in mind and n3, whose election timeout is ten times shorter, runs first.
    for attempt in range(4):
        n2.stop()
        n1.stop()
        n2.start()
        try:
            wait_for(lambda: leader(admin, [n2.addr, n3.addr]), 30, "a leader")
        except AssertionError:
            pass
        if leader(admin, [n2.addr, n3.addr]) == "n3":
            break
        n1.start()
        hbctest.wait_cluster(admin, addrs, 3)
    assert leader(admin, [n2.addr, n3.addr]) == "n3", "could not make n3 the leader"
    n1.start()
    hbctest.wait_cluster(admin, addrs, 3)
    assert leader(admin, addrs) == "n3"
    led_at = time.monotonic()

    # Its ticks are refused with an alert naming the skew; the clock does not jump.
    ev = n3.wait_event(lambda e: e.get("event") == "clock_alert", timeout=60,
                       what="event=clock_alert")
    assert "clock skew" in ev.get("reason", ""), ev
    FIGURES["first_alert_after_leading_s"] = round(time.monotonic() - led_at, 1)
    for n in (n1, n2):
        n.wait_event(lambda e: e.get("event") == "alert" and e.get("kind") == "clock_skew",
                     timeout=30, what="a clock_skew alert")
    c = clock_ms(admin, addrs)
    assert c < int(time.time() * 1000) + HOUR_MS, "the compliance clock jumped ahead"
    assert c >= before

    # Time-dependent commands fail closed with the reason; the snapshot stays.
    f = setup_cmd(admin, addrs, "forget", snap)
    assert f["code"] == "HBC_ECLOCK" and "clock skew" in f["message"], f
    assert "max_skew" in f["message"], f
    # Several tick rounds later: still refused, still no jump, still there.
    time.sleep(12)
    assert leader(admin, addrs) == "n3"
    assert len(n3.events("clock_alert")) >= 2
    assert clock_ms(admin, addrs) < int(time.time() * 1000) + HOUR_MS
    f = setup_cmd(admin, addrs, "forget", snap)
    assert f["code"] == "HBC_ECLOCK", f

    # The skewed leader steps down (stopped): the others elect a leader and carry on.
    stuck = clock_ms(admin, addrs)
    t0 = time.monotonic()
    n3.stop()
    rest = [n1.addr, n2.addr]
    wait_for(lambda: leader(admin, rest) in ("n1", "n2"), 60, "a new leader")
    FIGURES["new_leader_s"] = round(time.monotonic() - t0, 1)
    wait_for(lambda: clock_ms(admin, rest) > stuck, 60, "the clock moving again")
    FIGURES["clock_moving_again_s"] = round(time.monotonic() - t0, 1)
    c = clock_ms(admin, rest)
    assert abs(c - int(time.time() * 1000)) < HOUR_MS
    # Forget is judged by the lock again: retained (0 days + one margin day), not expired.
    f = setup_cmd(admin, rest, "forget", snap)
    assert f["code"] == "HBC_ELOCKED" and "retained" in f["message"], f
    # Commands carry on: a new snapshot commits.
    s2 = setup_cmd(admin, rest, "snapshot", v["vault_id"])
    assert s2["code"] == "OK", s2
