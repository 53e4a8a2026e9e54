"""common/node_client against a real hbcd and a TLS peer that never answers:
runs the cmocka binary test-node-client (tests/cluster/node_client_test.c)."""
import os
import socket
import ssl
import subprocess
import threading

import hbctest


class SilentTLSServer:
    """Completes mutual-TLS handshakes on 127.0.0.1 and then reads and discards forever."""

    def __init__(self, tls):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ctx.load_cert_chain(tls["cert"], tls["key"])
        self.ctx.load_verify_locations(tls["ca"])
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.conns = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping.is_set():
            try:
                raw, _ = self.sock.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self._hold, args=(raw,), daemon=True).start()

    def _hold(self, raw):
        raw.settimeout(0.2)
        try:
            s = self.ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            while not self.stopping.is_set():
                try:
                    s.do_handshake()
                    break
                except (socket.timeout, ssl.SSLWantReadError):
                    continue
            self.conns.append(s)
            while not self.stopping.is_set():
                try:
                    if not s.recv(65536):
                        return
                except (socket.timeout, ssl.SSLWantReadError):
                    continue
        except (ssl.SSLError, OSError):
            return
        finally:
            raw.close()

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=10)
        self.sock.close()


def test_node_client(tmp_path, ca):
    node = hbctest.Node(tmp_path, ca, "n1").start()
    alice = ca.client("alice")
    silent = SilentTLSServer(ca.node("silent"))
    try:
        env = dict(os.environ, HBC_NODE_ADDR=node.addr, HBC_SILENT_ADDR=f"127.0.0.1:{silent.port}",
                   HBC_TLS_CA=alice["ca"], HBC_TLS_CERT=alice["cert"], HBC_TLS_KEY=alice["key"])
        r = subprocess.run([hbctest.binary("test-node-client")], env=env, capture_output=True,
                           timeout=200)
        out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
        print(out)
        assert r.returncode == 0, out
    finally:
        silent.stop()
    assert node.stop() == 0
