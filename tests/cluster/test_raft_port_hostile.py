"""Hostile peers on the Raft port of real hbcd processes (3 voters), while hbc-metaload commits.

On each node's Raft port:
- a node certificate of the cluster's CA (n4's) with a preamble claiming n2's Raft id: the TLS
  handshake succeeds, the preamble is refused (event=raft_peer_refused, "certificate CN does
  not name this raft id") and no preamble reply comes back;
- a client certificate of the cluster's CA (not OU=node) claiming n2's id: refused alike;
- a node certificate named n2 from another CA: the TLS handshake fails
  (event=tls_handshake_failed);
- a plaintext connection speaking libraft's own cleartext handshake, and one sending random
  bytes: the TLS handshake fails.
Each attempt is matched to its log line by the attacker's own port. Throughout, the cluster
keeps its quorum: every record started is acknowledged, the three voters keep one leader,
and afterwards all nodes hold the same state.
"""
import hashlib
import json
import os
import socket
import ssl
import struct
import time

import hbctest

VAULT = "porthostile"
RATE = 100
MAGIC = b"HBCRAFT\x01"


def raft_id_of(name):
    """node/raft_id.c: SHA-256("hbc raft id v1\\0" || name), first 8 bytes BE, top bit cleared."""
    v = int.from_bytes(hashlib.sha256(b"hbc raft id v1\0" + name.encode()).digest()[:8], "big")
    v &= ~(1 << 63)
    return v or 1


def preamble(raft_id, address):
    a = address.encode()
    return MAGIC + struct.pack(">QH", raft_id, len(a)) + a


def tls_attempt(port, cluster_ca, tls, payload, timeout=10.0):
    """Connect over TLS 1.3 trusting cluster_ca (the server is genuine) and presenting tls's
    certificate, send payload, and read what comes back until the server closes. Returns
    (local port, handshake completed on our side, bytes received)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(cluster_ca)
    ctx.load_cert_chain(tls["cert"], tls["key"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    local = raw.getsockname()[1]
    got = b""
    shaken = False
    try:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            shaken = True
            s.sendall(payload)
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
    except (ssl.SSLError, OSError):
        pass  # the server's alert or reset: what a refused peer sees
    finally:
        raw.close()
    return local, shaken, got


def plain_attempt(port, payload, timeout=10.0):
    """Send payload in the clear and read until the server closes; (local port, bytes back)."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        local = s.getsockname()[1]
        try:
            s.sendall(payload)
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
    return local, got


def wait_log(node, local_port, event, timeout=20.0):
    """The node's log line of `event` for the connection from 127.0.0.1:local_port."""
    peer = f"127.0.0.1:{local_port}"
    return node.wait_event(lambda ev: ev.get("event") == event and ev.get("peer") == peer,
                           timeout=timeout, what=f"{event} for {peer}")


def wait_acks(ml, ack, count, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(hbctest.read_ack_log(ack)) >= count:
            return
        assert ml.running(), "the load ended early: " + ml.describe()
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} acknowledgements after {timeout}s")


def test_raft_port_refuses_impostors(tmp_path, ca):
    admin = ca.client("admin", "admin")
    t_test = time.monotonic()
    n1 = hbctest.RaftNode(tmp_path, ca, "n1", bootstrap=True, site="site-a").start()
    nodes = [n1]
    for name, site in (("n2", "site-b"), ("n3", "site-c")):
        nodes.append(hbctest.RaftNode(tmp_path, ca, name, join=n1.addr, site=site).start())
    addrs = [n.addr for n in nodes]
    hbctest.wait_cluster(admin, addrs, 3, timeout=120)

    # The attackers' credentials.
    n4 = ca.node("n4")  # a genuine node certificate, used to claim another node's id
    backup = ca.client("mallory", "backup")
    foreign = hbctest.CA(tmp_path / "other").node("n2")
    cluster_ca = admin["ca"]
    # libraft's own TCP transport handshake in the clear: protocol 1, id, address length (all
    # u64 little-endian), address padded to 8 bytes.
    addr = b"127.0.0.1:9" + b"\0" * 5
    libraft_hello = struct.pack("<QQQ", 1, raft_id_of("n2"), len(addr)) + addr
    # Random bytes; a first byte of 0x16 would read as a TLS handshake record that the server
    # waits to complete, so that one value is avoided (the refusal then comes at once).
    noise = os.urandom(4096)
    if noise[0] == 0x16:
        noise = b"\x17" + noise[1:]

    ack = str(tmp_path / "ack.log")
    ml = hbctest.Metaload(admin, addrs, VAULT, "--clients", 2, "--commits", 10000000,
                          "--rate", RATE, "--ack-log", ack, "--timeout", 900).start()
    wait_acks(ml, ack, 50)
    rc, before = hbctest.cluster_status(admin, addrs)
    assert rc == 0 and hbctest.leader_name(before), before

    n2_id = raft_id_of("n2")
    acks_before_attacks = len(hbctest.read_ack_log(ack))
    attempts = []
    ports = {n.name: set() for n in nodes}  # our local ports, per target
    for target in nodes:
        # Another node's (n4's) certificate, claiming to be n2.
        local, shaken, got = tls_attempt(target.raft_port, cluster_ca, n4, preamble(n2_id, "127.0.0.1:9"))
        assert shaken, "n4's certificate is from the cluster CA: the handshake itself succeeds"
        assert MAGIC not in got, f"{target.name} answered an impostor's preamble"
        ports[target.name].add(f"127.0.0.1:{local}")
        ev = wait_log(target, local, "raft_peer_refused")
        assert ev["cn"] == "n4" and int(ev["claimed_id"]) == n2_id, ev
        assert "does not name this raft id" in ev["reason"], ev
        attempts.append((target.name, "other node's certificate", ev["reason"]))

        # A client (not node) certificate of the cluster's CA, claiming to be n2.
        local, shaken, got = tls_attempt(target.raft_port, cluster_ca, backup, preamble(n2_id, "127.0.0.1:9"))
        assert MAGIC not in got
        ports[target.name].add(f"127.0.0.1:{local}")
        ev = wait_log(target, local, "raft_peer_refused")
        assert "not a node certificate" in ev["reason"], ev
        attempts.append((target.name, "client certificate", ev["reason"]))

        # A certificate named n2 from another CA.
        local, _, got = tls_attempt(target.raft_port, cluster_ca, foreign, preamble(n2_id, "127.0.0.1:9"))
        assert MAGIC not in got
        ports[target.name].add(f"127.0.0.1:{local}")
        ev = wait_log(target, local, "tls_handshake_failed")
        assert ev["role"] == "server", ev
        attempts.append((target.name, "another CA", ev["reason"]))

        # Plaintext: libraft's cleartext handshake, then random bytes.
        for what, payload in (("libraft cleartext handshake", libraft_hello),
                              ("random bytes", noise)):
            local, got = plain_attempt(target.raft_port, payload)
            assert MAGIC not in got
            ports[target.name].add(f"127.0.0.1:{local}")
            ev = wait_log(target, local, "tls_handshake_failed")
            attempts.append((target.name, what, ev["reason"]))

    # The cluster kept committing through all of it and still has its three voters.
    acks_after_attacks = len(hbctest.read_ack_log(ack))
    assert acks_after_attacks > acks_before_attacks, "records were committed during the attacks"
    wait_acks(ml, ack, acks_after_attacks + 50)
    doc = hbctest.wait_cluster(admin, addrs, 3, timeout=60)
    assert hbctest.leader_name(doc), doc
    same_leader = (doc["leader_raft_id"] == before["leader_raft_id"] and
                   {n["term"] for n in doc["nodes"]} == {n["term"] for n in before["nodes"]})
    s = ml.stop(timeout=300)
    assert s is not None and s["failed"] == 0, "no record was given up: " + ml.describe()
    acks = hbctest.read_ack_log(ack)
    dumps = hbctest.wait_converged(admin, addrs, VAULT, timeout=180)
    assert len({d["state_digest"] for d in dumps.values()}) == 1, "state digests differ"
    stored = [x[0] for x in next(iter(dumps.values()))["snapshots"]]
    assert set(stored) == {a[0] for a in acks} and len(stored) == len(acks)
    # None of these connections was handed to libraft.
    for n in nodes:
        let_in = [ev for ev in n.events("raft_peer_accepted")
                  if ev.get("peer") in ports[n.name] or ev.get("cn") in ("n4", "mallory")]
        assert not let_in, f"{n.name} accepted an impostor: {let_in}"

    results = {"attempts": len(attempts), "refusals": [list(a) for a in attempts],
               "records_acked": len(acks),
               "acked_during_attacks": acks_after_attacks - acks_before_attacks, "same_leader_and_term": same_leader,
               "longest_ack_gap_ms": s["max_ack_gap_ms"],
               "test_seconds": round(time.monotonic() - t_test, 1)}
    path = hbctest.write_results("raft-port-hostile", results)
    print(f"\nraft port hostile: {json.dumps(results)}\n(written to {path})")
