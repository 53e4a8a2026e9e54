"""Hostile input against one hbcd: a plaintext client, a certificate from
another CA, an expired certificate, random bytes, a 4 GiB length prefix, a
truncated frame, frames of unknown types, 1,000 idle connections and more
than max_connections. Each is refused or closed with a reason in the node's
log, while a well-behaved client (hbc-shardload, running in the background
through the whole module, plus a short run after each attack) is served
throughout and the node's memory stays bounded.

Raw TLS and frames are made by hand: the ssl module with the test
certificates, and the few protobuf bytes needed written out below.
"""
import os
import random
import resource
import selectors
import socket
import ssl
import struct
import time

import pytest

import hbctest

HANDSHAKE_TIMEOUT = 5
IDLE_TIMEOUT = 3
MAX_CONNECTIONS = 1000
LOADER_CLIENTS = 2


class Hostile:
    """The module's node, certificates and background client."""

    def __init__(self, root):
        self.ca = hbctest.CA(os.path.join(root, "ca"))
        self.node = hbctest.Node(root, self.ca, "n1", scope="module", extra={
            "data": {"handshake_timeout": HANDSHAKE_TIMEOUT, "idle_timeout": IDLE_TIMEOUT,
                     "max_connections": MAX_CONNECTIONS}})
        self.alice = self.ca.client("alice")
        self.checks = 0
        self.root = root

    def ctx(self, tls=None, ca=None):
        """A TLS 1.3 client context presenting tls's certificate and trusting ca (the node's CA)."""
        tls = tls or self.alice
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        c.minimum_version = ssl.TLSVersion.TLSv1_3
        c.load_verify_locations(ca or self.alice["ca"])
        c.load_cert_chain(tls["cert"], tls["key"])
        return c

    def connect_tls(self, tls=None, timeout=10):
        raw = socket.create_connection(("127.0.0.1", self.node.port), timeout=timeout)
        return self.ctx(tls).wrap_socket(raw, server_hostname="127.0.0.1")

    def closed_event(self, port, timeout=30):
        """The node's conn_closed line for our local port (waits for it)."""
        peer = f"127.0.0.1:{port}"
        return self.node.wait_event(lambda e: e.get("event") == "conn_closed" and e.get("peer") == peer,
                                    timeout=timeout, what=f"conn_closed for {peer}")

    def assert_serving(self):
        """A short, well-behaved put-and-read-back run succeeds right now."""
        self.checks += 1
        run = hbctest.Shardload(self.node.addr, self.alice, "--mode", "putget", "--clients", 2,
                                "--shards", 60, "--max", "256K", "--seed", 1000 + self.checks,
                                scope="module")
        s = run.run(timeout=300)
        assert run.rc == 0 and s["get_shards"] == 60 and s["mismatches"] == 0, run.describe()


@pytest.fixture(scope="module")
def h(tmp_path_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    h = Hostile(str(tmp_path_factory.mktemp("hostile")))
    h.node.start()
    # The well-behaved client: putget over small shards until told to stop at the end.
    h.loader = hbctest.Shardload(h.node.addr, h.alice, "--mode", "putget", "--clients", LOADER_CLIENTS,
                                 "--pipeline", 4, "--shards", 10000000, "--max", "64K", "--seed", 77,
                                 scope="module").start()
    try:
        yield h
    finally:
        hbctest.stop_all("module")


def frame(body):
    """A length prefix and a protobuf body."""
    return struct.pack(">I", len(body)) + body


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def parse_fields(buf):
    """A protobuf message's top-level fields as (number, value) pairs (varint or bytes)."""
    i, out = 0, []
    while i < len(buf):
        key, shift = 0, 0
        while True:
            b = buf[i]
            i += 1
            key |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, shift = 0, 0
            while True:
                b = buf[i]
                i += 1
                v |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
        elif wt == 2:
            n, shift = 0, 0
            while True:
                b = buf[i]
                i += 1
                n |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            v = buf[i:i + n]
            i += n
        else:
            raise ValueError(f"wire type {wt}")
        out.append((num, v))
    return out


def read_frame(s):
    def exactly(n):
        b = b""
        while len(b) < n:
            chunk = s.recv(n - len(b))
            if not chunk:
                raise EOFError("connection closed")
            b += chunk
        return b
    (n,) = struct.unpack(">I", exactly(4))
    return dict(parse_fields(exactly(n)))


def wait_closed(s, timeout=30):
    """Wait until the node ends the connection; True if it did (EOF, reset or TLS alert)."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError, EOFError, OSError) as exc:
        return not isinstance(exc, socket.timeout)


def test_plaintext_client(h):
    s = socket.create_connection(("127.0.0.1", h.node.port), timeout=10)
    port = s.getsockname()[1]
    s.sendall(b"GET / HTTP/1.1\r\nHost: hbc\r\n\r\n")
    assert wait_closed(s)
    s.close()
    ev = h.closed_event(port)
    assert ev["code"] == "HBC_ETLS", ev
    h.assert_serving()


def test_random_bytes_before_tls(h):
    s = socket.create_connection(("127.0.0.1", h.node.port), timeout=10)
    port = s.getsockname()[1]
    s.sendall(random.Random(1).randbytes(8192))
    assert wait_closed(s)
    s.close()
    assert h.closed_event(port)["code"] == "HBC_ETLS"
    h.assert_serving()


def handshake_refused(h, tls):
    """Connect with tls's certificate; the node must refuse it. Returns the node's log line."""
    raw = socket.create_connection(("127.0.0.1", h.node.port), timeout=10)
    port = raw.getsockname()[1]
    try:
        s = h.ctx(tls).wrap_socket(raw, server_hostname="127.0.0.1")
        # TLS 1.3: the client finishes first; the refusal arrives as an alert on the first read.
        s.sendall(frame(b"\x08\x01\x4a\x00"))
        assert wait_closed(s)
        s.close()
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        raw.close()
    return h.closed_event(port)


def test_client_certificate_from_another_ca(h):
    other = hbctest.CA(os.path.join(h.root, "other-ca"))
    mallory = other.client("mallory")
    ev = handshake_refused(h, mallory)
    assert ev["code"] == "HBC_ETLS" and "certificate" in ev["reason"], ev
    h.assert_serving()


def test_expired_client_certificate(h):
    old = h.ca.client("old", "backup", "--expired")
    ev = handshake_refused(h, old)
    assert ev["code"] == "HBC_ETLS" and "expired" in ev["reason"], ev
    h.assert_serving()


def test_random_bytes_after_tls(h):
    for seed in range(3):
        s = h.connect_tls()
        port = s.getsockname()[1]
        rnd = random.Random(seed)
        # A small length first, so that a random body (not only a random length) is seen too.
        data = frame(rnd.randbytes(200)) if seed == 0 else rnd.randbytes(4096)
        s.sendall(data)
        assert wait_closed(s)
        s.close()
        ev = h.closed_event(port)
        assert ev["code"] in ("HBC_EFORMAT", "HBC_ETOOBIG", "HBC_EPROTO"), ev
    h.assert_serving()


def test_length_prefix_of_4_gib(h):
    before = h.node.rss_kib()[0]
    s = h.connect_tls()
    port = s.getsockname()[1]
    s.sendall(b"\xff\xff\xff\xff" + b"\x08\x01" * 100)
    assert wait_closed(s)
    s.close()
    ev = h.closed_event(port)
    assert ev["code"] == "HBC_ETOOBIG" and "4294967295" in ev["reason"], ev
    after = h.node.rss_kib()[0]
    print(f"\n4 GiB prefix: node RSS {before} KiB before, {after} KiB after")
    h.assert_serving()


@pytest.mark.parametrize("goodbye", ["close_notify", "tcp_close"])
def test_truncated_frame(h, goodbye):
    s = h.connect_tls()
    port = s.getsockname()[1]
    s.sendall(struct.pack(">I", 4096) + b"\x08\x01" + b"\x00" * 98)  # 104 of 4100 bytes
    time.sleep(0.2)
    if goodbye == "close_notify":
        try:
            s.unwrap()
        except (ssl.SSLError, OSError):
            pass
    s.close()
    ev = h.closed_event(port)
    assert ev["code"] == "HBC_ETRUNCATED" and ev["truncated_frame_bytes"] == "104", ev
    h.assert_serving()


# unknown_field: field 999 (varint), a number no Frame body uses (100..189 are allotted).
@pytest.mark.parametrize("body", [b"\x08\x07", b"\x08\x07\xb8\x3e\x01"], ids=["id_only", "unknown_field"])
def test_frame_of_unknown_type(h, body):
    s = h.connect_tls()
    port = s.getsockname()[1]
    s.sendall(frame(body))
    assert wait_closed(s)
    s.close()
    ev = h.closed_event(port)
    assert ev["code"] == "HBC_EPROTO" and "unknown frame type" in ev["reason"], ev
    h.assert_serving()


def test_reply_type_sent_as_request_gets_error_frame(h):
    s = h.connect_tls()
    # Frame{request_id: 9, put_shards_reply: {stored: 1}}: a reply where a request belongs.
    s.sendall(frame(b"\x08\x09\x22\x02\x08\x01"))
    f = read_frame(s)
    assert f[1] == 9 and 2 in f, f  # field 2: Error
    err = dict(parse_fields(f[2]))
    assert err[1] == 1 and b"reply" in err[2], err  # ERROR_BAD_REQUEST with a message
    # The connection stays usable: a status request is answered.
    s.sendall(frame(b"\x08\x0a\x4a\x00"))
    f = read_frame(s)
    assert f[1] == 10 and 10 in f, f  # field 10: StatusReply
    status = dict(parse_fields(f[10]))
    assert status[1] == b"n1" and int(status[5]) > 0, status
    s.close()


def open_plain(port, n):
    """n non-blocking TCP connections to port, connected (bounded wait) and silent."""
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_WRITE)
    pending, deadline = len(socks), time.monotonic() + 30
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            sel.unregister(key.fileobj)
            pending -= 1
    sel.close()
    return socks


def wait_all_closed(socks, timeout):
    """Wait (bounded) until the node has ended every connection; return how many it did."""
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    closed = 0
    deadline = time.monotonic() + timeout
    while closed < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except ssl.SSLWantReadError:
                continue
            except (ssl.SSLError, OSError):
                data = b""
            if not data:
                sel.unregister(s)
                closed += 1
    sel.close()
    return closed


def test_1000_idle_plain_connections_and_max_connections(h):
    """1,000 TCP connections that never start TLS, plus a few beyond max_connections: each
    beyond the limit is refused at once, every other one is closed at the handshake timeout,
    each with its reason logged, while the background client goes on being served."""
    n = MAX_CONNECTIONS + 20
    socks = open_plain(h.node.port, n)
    ports = {s.getsockname()[1] for s in socks}
    closed = wait_all_closed(socks, timeout=HANDSHAKE_TIMEOUT + 30)
    for s in socks:
        s.close()
    assert closed == n, f"the node ended {closed} of {n} idle connections"
    events = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = {int(e["peer"].rsplit(":", 1)[1]): e for e in h.node.events("conn_closed")
                  if e.get("peer", "").rsplit(":", 1)[1].isdigit()
                  and int(e["peer"].rsplit(":", 1)[1]) in ports}
        if len(events) == n:
            break
        time.sleep(0.2)
    assert len(events) == n, f"{n - len(events)} idle connections closed without a logged reason"
    refused = [e for e in events.values() if e["code"] == "HBC_EBUSY"]
    timed_out = [e for e in events.values() if e["code"] == "ETIMEDOUT"]
    assert len(refused) + len(timed_out) == n, {e["code"] for e in events.values()}
    # LOADER_CLIENTS connections were open before: at least that many + 20 are over the limit.
    assert len(refused) >= 20 + LOADER_CLIENTS - 2, len(refused)
    assert all("max_connections" in e["reason"] for e in refused)
    assert all("handshake timed out" in e["reason"] for e in timed_out)
    print(f"\nidle plain connections: {n}, refused over max_connections: {len(refused)}, "
          f"closed at the handshake timeout: {len(timed_out)}")
    assert h.loader.proc.poll() is None, "the background client is still running"
    h.assert_serving()


def test_500_idle_tls_connections(h):
    """TLS connections that complete the handshake and then say nothing are closed at the
    idle timeout with a logged reason; a well-behaved client is served while they hang."""
    socks = [h.connect_tls() for _ in range(500)]
    ports = {s.getsockname()[1] for s in socks}
    h.assert_serving()
    for s in socks:
        s.setblocking(False)
    closed = wait_all_closed(socks, timeout=IDLE_TIMEOUT + 60)
    for s in socks:
        s.close()
    assert closed == len(socks)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        idle = [e for e in h.node.events("conn_closed")
                if int(e["peer"].rsplit(":", 1)[1]) in ports and e["code"] == "ETIMEDOUT"
                and "idle_timeout" in e["reason"]]
        if len(idle) == len(socks):
            break
        time.sleep(0.2)
    assert len(idle) == len(socks)
    h.assert_serving()


def test_background_client_served_throughout_with_bounded_memory(h):
    """Last: the background client stops cleanly with no error, and the node's peak memory
    over every attack stays bounded."""
    peak = hbctest.peak_rss_kib(h.node.proc.pid)
    s = h.loader.stop()
    assert h.loader.rc == 0 and s is not None, h.loader.describe()
    assert s["errors"] == 0 and s["mismatches"] == 0 and s["missing"] == 0, s
    assert s["put_shards"] > 0 and s["get_shards"] > 0, s
    assert s["reconnects"] == 0, "the background client never lost its connections"
    stats = {"node_peak_rss_mib": round(peak / 1024, 1), "loader_put_shards": s["put_shards"],
             "loader_get_shards": s["get_shards"], "loader_seconds": s["seconds"],
             "foreground_checks": h.checks}
    path = hbctest.write_results("hostile", stats)
    print(f"\nhostile: {stats}\n(written to {path})")
    assert peak < 1024 * 1024, f"node peak RSS {peak} KiB"
    assert h.node.stop() == 0
