"""Retention locks, legal holds and governance approvals through `hbc`, on a real hbcd.

One node (a Raft cluster of one) and four client certificates: an admin, two
security officers and a backup operator. The admin maps the officers' subjects
to their role with `hbc role assign`; hbc-lock-setup makes a governance-locked
and a compliance-locked vault with one snapshot record each. Then, all through
hbc: lock extend accepts later dates and refuses earlier ones; a governance
shorten needs a request by one officer and the approval of another (the same
officer twice, or a non-officer, is refused); a compliance lock cannot be
bypassed; a legal hold blocks forgetting and its release needs a second
officer. Every refusal must exit 1 with its reason on stderr and in --json.
"""
import json
import os
import subprocess
import time

import pytest

import hbctest

DAY_MS = 86400 * 1000


class Who:
    """hbc (and hbc-lock-setup) as one certificate holder."""

    def __init__(self, ca, name, roles, addrs):
        extra = []
        for r in roles[1:]:
            extra += ["--role", r]
        self.tls = ca.client(name, roles[0], *extra)
        self.addrs = addrs
        self.subject = f"CN={name}," + ",".join(f"OU={r}" for r in roles)

    def hbc(self, *args, json_out=True):
        cmd = [hbctest.binary("hbc")] + (["--json"] if json_out else []) + [
            "--cluster", ",".join(self.addrs), "--ca", self.tls["ca"], "--cert",
            self.tls["cert"], "--key", self.tls["key"], "--timeout", "5", *args]
        p = subprocess.run(cmd, capture_output=True, timeout=120)
        out = p.stdout.decode(errors="replace")
        doc = None
        for line in reversed(out.splitlines()):
            if line.startswith("{"):
                doc = json.loads(line)
                break
        return p.returncode, doc, p.stderr.decode(errors="replace"), out

    def setup(self, *args):
        cmd = [hbctest.binary("hbc-lock-setup"), ",".join(self.addrs), self.tls["ca"],
               self.tls["cert"], self.tls["key"], *args]
        p = subprocess.run(cmd, capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr.decode(errors="replace")
        return json.loads(p.stdout.decode().strip().splitlines()[-1])


def refused(res, code, reason):
    """An hbc result that is a refusal with code and a reason containing `reason`."""
    rc, doc, err, _ = res
    assert rc == 1, f"expected exit 1, got {rc}: {doc} {err}"
    assert doc is not None and doc["ok"] is False and doc["code"] == code, doc
    assert reason in doc["message"], doc
    assert "refused: " in err and reason in err, err


def ok(res):
    rc, doc, err, out = res
    assert rc == 0, f"exit {rc}: {doc} {err} {out}"
    assert doc is None or doc.get("ok", True) is True, doc
    return doc


@pytest.fixture(scope="module")
def cl(tmp_path_factory):
    root = tmp_path_factory.mktemp("locks")
    ca = hbctest.CA(root)
    try:
        n1 = hbctest.RaftNode(root, ca, "n1", bootstrap=True, scope="module")
        n1.start()
        addrs = [n1.addr]
        who = {
            "admin": Who(ca, "root", ["admin"], addrs),
            "so1": Who(ca, "olivia", ["security-officer"], addrs),
            "so2": Who(ca, "omar", ["security-officer"], addrs),
            "bob": Who(ca, "bob", ["backup"], addrs),
        }
        hbctest.wait_cluster(who["admin"].tls, addrs, 1)
        # The compliance clock starts with the leader's first tick.
        deadline = time.monotonic() + 60
        while True:
            rc, doc, err, _ = who["admin"].hbc("approvals", "list")
            if rc == 0 and doc["compliance_clock_ms"] > 0:
                break
            assert time.monotonic() < deadline, f"no compliance clock: {doc} {err}"
            time.sleep(0.5)
        yield {"node": n1, "who": who}
    finally:
        hbctest.stop_all("module")


def test_help_and_usage(cl):
    bob = cl["who"]["bob"]
    for cmd in (["lock"], ["hold"], ["approvals"], ["role"]):
        rc, _, _, out = bob.hbc(*cmd, "--help", json_out=False)
        assert rc == 0 and "Usage:" in out, (cmd, out)
        rc, _, err, _ = bob.hbc(*cmd, json_out=False)
        assert rc == 2 and "Usage:" in err, (cmd, err)
    rc, _, err, _ = bob.hbc("lock", "extend", "latest", "--until", "next tuesday")
    assert rc == 2 and "is not a date" in err


def test_roles(cl):
    w = cl["who"]
    # Only an admin maps subjects to roles; an officer cannot promote itself or others.
    refused(w["so1"].hbc("role", "assign", w["so1"].subject, "security-officer"), "HBC_EDENIED",
            "only an admin may assign roles")
    for so in ("so1", "so2"):
        doc = ok(w["admin"].hbc("role", "assign", w[so].subject, "security-officer"))
        assert doc["subject"] == w[so].subject and doc["role"] == "security-officer"
    # Separation of duties: an officer cannot also be an admin.
    refused(w["admin"].hbc("role", "assign", w["so1"].subject, "admin"), "HBC_EDENIED",
            "separation of duties")


def make_snapshot(cl, vault, days, mode):
    admin = cl["who"]["admin"]
    v = admin.setup("vault", vault, str(days), mode)
    assert v["code"] == "OK", v
    s = admin.setup("snapshot", v["vault_id"])
    assert s["code"] == "OK", s
    return s["snapshot_id"]


def test_lock_extend(cl):
    w = cl["who"]
    snap = make_snapshot(cl, "ext", 30, "compliance")
    later = int(time.time() * 1000) + 60 * DAY_MS
    doc = ok(w["admin"].hbc("lock", "extend", snap[:8], "--until", f"@{later}"))
    assert doc["snapshot"] == snap and doc["retain_until_ms"] == later
    # Earlier than the lock: refused, whoever asks.
    for who in ("admin", "so1"):
        refused(w[who].hbc("lock", "extend", snap[:8], "--until", f"@{later - DAY_MS}"),
                "HBC_ELOCKED", "can only be extended, never shortened")
    refused(w["admin"].hbc("lock", "extend", snap[:8], "--until", f"@{later}"), "HBC_EEXIST",
            "already retained until then")
    # A backup operator may not extend; an officer may, to a later date (ISO form).
    refused(w["bob"].hbc("lock", "extend", snap[:8], "--until", f"@{later + DAY_MS}"),
            "HBC_EDENIED", "needs an admin or a security officer")
    day = time.strftime("%Y-%m-%d", time.gmtime((later + 10 * DAY_MS) / 1000))
    ok(w["so1"].hbc("lock", "extend", snap[:8], "--until", day))
    # The same outcome for people: exit 0 and a line on stdout.
    rc, _, _, out = w["so1"].hbc("lock", "extend", snap[:8], "--until", f"@{later + 20 * DAY_MS}",
                                 json_out=False)
    assert rc == 0 and "retained until" in out


def test_governance_shorten(cl):
    w = cl["who"]
    snap = make_snapshot(cl, "gov", 30, "governance")
    soon = int(time.time() * 1000) + DAY_MS
    # Nobody shortens directly.
    refused(w["so1"].hbc("lock", "extend", snap[:8], "--until", f"@{soon}"), "HBC_ELOCKED",
            "never shortened")
    # Only officers may ask.
    refused(w["admin"].hbc("lock", "shorten", snap[:8], "--until", f"@{soon}"), "HBC_EDENIED",
            "a governance bypass needs a security officer")
    doc = ok(w["so1"].hbc("lock", "shorten", snap[:8], "--until", f"@{soon}"))
    req = doc["index"]
    rc, lst, _, _ = w["so2"].hbc("approvals", "list")
    assert rc == 0
    pending = [a for a in lst["approvals"] if a["request"] == req]
    assert pending and pending[0]["state"] == "pending" and pending[0]["kind"] == "shorten"
    assert pending[0]["requested_by"] == w["so1"].subject
    # One officer alone cannot: the same officer approving is refused, so is a non-officer.
    refused(w["so1"].hbc("approvals", "approve", str(req)), "HBC_EDENIED",
            "must come from a different security officer")
    refused(w["admin"].hbc("approvals", "approve", str(req)), "HBC_EDENIED",
            "approvals need a security officer")
    refused(w["so1"].hbc("approvals", "approve", "999999"), "HBC_ENOTFOUND", "no such request")
    # Two different officers can.
    doc = ok(w["so2"].hbc("approvals", "approve", str(req)))
    assert doc["request"] == req
    refused(w["so2"].hbc("approvals", "approve", str(req)), "HBC_EEXIST", "already approved")
    rc, lst, _, _ = w["so1"].hbc("approvals", "list", "--all")
    done = [a for a in lst["approvals"] if a["request"] == req][0]
    assert done["state"] == "done" and done["approved_by"] == w["so2"].subject
    rc, lst, _, _ = w["so1"].hbc("approvals", "list")
    assert all(a["request"] != req for a in lst["approvals"])
    # The lock now ends at `soon`: extending to just after it is accepted.
    ok(w["so1"].hbc("lock", "extend", snap[:8], "--until", f"@{soon + 1000}"))
    # forget-early: same two-officer rule; after approval the snapshot is gone.
    doc = ok(w["so2"].hbc("lock", "forget-early", snap[:8]))
    refused(w["so2"].hbc("approvals", "approve", str(doc["index"])), "HBC_EDENIED",
            "different security officer")
    ok(w["so1"].hbc("approvals", "approve", str(doc["index"])))
    rc, _, err, _ = w["so1"].hbc("lock", "extend", snap[:8], "--until", f"@{soon + 5000}")
    assert rc == 1, err


def test_compliance_cannot_be_bypassed(cl):
    w = cl["who"]
    snap = make_snapshot(cl, "comp", 30, "compliance")
    soon = int(time.time() * 1000) + DAY_MS
    refused(w["so1"].hbc("lock", "shorten", snap[:8], "--until", f"@{soon}"), "HBC_ELOCKED",
            "compliance lock: no role may bypass it")
    refused(w["so1"].hbc("lock", "forget-early", snap[:8]), "HBC_ELOCKED",
            "compliance lock: no role may bypass it")
    f = w["admin"].setup("forget", snap)
    assert f["code"] == "HBC_ELOCKED" and "retained" in f["message"], f


def test_legal_hold(cl):
    w = cl["who"]
    snap = make_snapshot(cl, "held", 0, "governance")
    refused(w["bob"].hbc("hold", "set", snap[:8]), "HBC_EDENIED",
            "a legal hold needs a security officer")
    refused(w["admin"].hbc("hold", "set", snap[:8]), "HBC_EDENIED",
            "a legal hold needs a security officer")
    doc = ok(w["so1"].hbc("hold", "set", snap[:8], "--case", "CASE-2026-17"))
    assert doc["snapshot"] == snap
    refused(w["so2"].hbc("hold", "set", snap[:8]), "HBC_EEXIST", "already under legal hold")
    # Held: not forgettable, and no governance bypass either.
    f = w["admin"].setup("forget", snap)
    assert f["code"] == "HBC_ELOCKED" and "under legal hold" in f["message"], f
    refused(w["so2"].hbc("lock", "forget-early", snap[:8]), "HBC_ELOCKED", "under legal hold")
    # Release: a request, then a second officer.
    doc = ok(w["so1"].hbc("hold", "release", snap[:8]))
    req = doc["index"]
    refused(w["so1"].hbc("approvals", "approve", str(req)), "HBC_EDENIED",
            "different security officer")
    f = w["admin"].setup("forget", snap)
    assert f["code"] == "HBC_ELOCKED" and "under legal hold" in f["message"], f
    ok(w["so2"].hbc("approvals", "approve", str(req)))
    refused(w["so1"].hbc("hold", "release", snap[:8]), "HBC_EINVAL", "no legal hold to release")
    # Lifted: the lock alone applies now (retention 0 days: free one margin day after commit).
    f = w["admin"].setup("forget", snap)
    assert f["code"] == "HBC_ELOCKED" and "retained" in f["message"], f


def test_clock_requests_need_a_node_certificate(cl):
    """Voters tell their clock only to node certificates (the leader's), not to clients."""
    w, n1 = cl["who"], cl["node"]
    for who in ("admin", "so1"):
        d = w[who].setup("clock")
        assert d["code"] == "HBC_EDENIED" and "node certificate" in d["message"], d
    cmd = [hbctest.binary("hbc-lock-setup"), n1.addr, n1.tls["ca"], n1.tls["cert"],
           n1.tls["key"], "clock"]
    p = subprocess.run(cmd, capture_output=True, timeout=60)
    d = json.loads(p.stdout.decode().strip().splitlines()[-1])
    assert d["code"] == "OK" and abs(d["wall_ms"] - time.time() * 1000) < 60000, d
