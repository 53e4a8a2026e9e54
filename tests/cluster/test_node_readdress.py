"""A member restarted at new addresses, and a removed member restarted with its old data.

1. Three nodes; one is stopped and started again, same identity and data directory, on new
   loopback data and Raft ports. It checks in with the leader (JoinRequest.member_check),
   which records the new addresses (NodeUpdate); the Raft transport dials the address the
   state machine records (libraft 0.15 never changes the address it first dialled). Then
   `hbc cluster status --json` shows the new addresses, the cluster commits, and a backup
   and a restore through that node alone work.
2. A node removed with `hbc cluster remove` while stopped, then started with its old data
   directory, learns from the leader that it is not a member: it logs event=node_removed
   (naming what to do) and exits non-zero instead of running uselessly.
"""
import filecmp
import os
import subprocess
import time

import hbctest

PASS = "correct horse battery staple"


def hbc_env(root, tls, addrs):
    env = dict(os.environ, HBC_CLUSTER=",".join(addrs), HBC_CA=tls["ca"], HBC_CERT=tls["cert"],
               HBC_KEY=tls["key"], HBC_KEYFILE=os.path.join(str(root), "k.key"),
               HBC_PASSPHRASE=PASS, HBC_VAULT="moved", HBC_TIMEOUT="20")
    env.pop("HBC_CONFIG", None)
    return env


def hbc(env, *args, timeout=300):
    p = subprocess.run([hbctest.binary("hbc"), *args], env=env, capture_output=True,
                       timeout=timeout)
    assert p.returncode == 0, (args, p.stdout.decode(errors="replace"),
                               p.stderr.decode(errors="replace"))
    return p.stdout.decode(errors="replace")


def node_doc(doc, name):
    return next((n for n in doc.get("nodes", []) if n.get("node") == name), None)


def wait_status(tls, addrs, pred, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        rc, doc = hbctest.cluster_status(tls, addrs)
        last = (rc, doc)
        if rc == 0 and doc and pred(doc):
            return doc
        time.sleep(0.3)
    raise AssertionError(f"{what} not seen in {timeout}s: {last}")


def test_readdress_and_removed(tmp_path, ca):
    admin = ca.client("admin", "admin", "--role", "backup", "--role", "restore")
    n1 = hbctest.RaftNode(tmp_path, ca, "n1", bootstrap=True, site="site-a").start()
    n2 = hbctest.RaftNode(tmp_path, ca, "n2", join=n1.addr, site="site-b").start()
    n3 = hbctest.RaftNode(tmp_path, ca, "n3", join=n1.addr, site="site-c").start()
    nodes = [n1, n2, n3]
    hbctest.wait_cluster(admin, [n.addr for n in nodes], 3)

    # A follower moves: stop it, give it new ports, start it on the same data.
    doc = hbctest.cluster_status(admin, [n1.addr])[1]
    mover = next(n for n in (n3, n2) if n.name != hbctest.leader_name(doc))
    others = [n for n in nodes if n is not mover]
    old_addr, old_raft = mover.addr, mover.raft_addr
    assert mover.stop() == 0
    mover.port, mover.raft_port = hbctest.free_port(), hbctest.free_port()
    mover.set_option("data", "listen", mover.addr)
    mover.set_option("raft", "listen", mover.raft_addr)
    assert (mover.addr, mover.raft_addr) != (old_addr, old_raft)
    mover.start()
    mover.wait_event(lambda ev: ev.get("event") == "member_checked" and ev.get("code") == "OK",
                     timeout=60, what="a member check")

    def moved(doc):
        d = node_doc(doc, mover.name)
        return (d is not None and d.get("address") == mover.addr
                and d.get("raft_address") == mover.raft_addr and d.get("role") == "voter"
                and not doc.get("unreachable") and doc.get("members") == 3)

    doc = wait_status(admin, [n.addr for n in others], moved, "the new addresses")
    # The moved node itself follows the leader and has applied the change.
    doc = wait_status(admin, [mover.addr], lambda d: moved(d) and d.get("leader_raft_id"),
                      "the moved node's view")

    # The cluster commits (through the moved node alone), and backup and restore work.
    env = hbc_env(tmp_path, admin, [mover.addr])
    hbc(env, "key", "init", "--keyfile", env["HBC_KEYFILE"])
    hbc(env, "vault", "create", "moved", "--copies", "1", "--k", "2", "--m", "1")
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(20):
        (src / "d" / f"f{i}").write_bytes(os.urandom(1000 + 5000 * i))
    hbc(env, "backup", str(src))
    target = tmp_path / "restored"
    hbc(env, "restore", "latest", "--target", str(target), "--verify")
    restored = target / str(src).lstrip("/")
    if not restored.exists():
        restored = target
    cmp = filecmp.dircmp(str(src / "d"), str(restored / "d"))
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files, cmp.report()
    # A restart at the same addresses changes nothing (no second NodeUpdate).
    before = node_doc(doc, mover.name)
    assert mover.stop() == 0
    mover.start()
    mover.wait_event(lambda ev: ev.get("event") == "member_checked", timeout=60,
                     what="a second member check")
    doc = wait_status(admin, [n.addr for n in others], moved, "the addresses kept")

    # A removed node restarted with its old data directory refuses to run.
    doc = wait_status(admin, [n.addr for n in nodes], lambda d: hbctest.leader_name(d),
                      "a leader")
    victim = next(n for n in nodes if n.name != hbctest.leader_name(doc))
    live = [n for n in nodes if n is not victim]
    assert victim.stop() == 0
    for _ in range(20):  # the stop may have moved leadership: ask again once it settled
        rc, out, err = hbctest.hbc_json(admin, [n.addr for n in live], "cluster", "remove",
                                        victim.name, "--force")
        if rc == 0:
            break
        time.sleep(0.5)
    assert rc == 0 and out["removed"], (out, err)
    victim.start(wait=False)
    try:
        code = victim.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError("the removed node kept running:\n" + victim.log_text()[-3000:])
    assert code != 0
    ev = [e for e in victim.events("node_removed", run=-1)]
    assert ev and "wipe its data directory" in ev[0]["reason"], victim.log_text()[-3000:]
    victim.stop()
    assert before is not None

    # What the message says to do works: wipe the data directory and join again.
    victim.wipe()
    victim.set_option("raft", "join", live[0].addr)
    victim.start()
    victim.wait_event(lambda ev: ev.get("event") == "joined", timeout=60, what="an admission")
    hbctest.wait_cluster(admin, [n.addr for n in nodes], 3)
