"""hbc backup and hbc restore end to end on a real 4-node cluster in 3 sites (scripts/cluster).

One module-scoped cluster (Raft over mutual TLS, a vault of 2 copies of
Reed-Solomon 2+1) serves every test in order: a full backup of a generated
tree with every kind of entry, a byte-for-byte restore with --verify, an
incremental backup after changing a few files, a restore test recorded in the
cluster, and a restore after kill -9 of a node (parity fallback).
"""
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess

import pytest

import hbctest

PASS = "correct horse battery staple"
BIG = 50 * 1000 * 1000
FIGURES = {}


class Hbc:
    """The hbc command with the cluster's settings in its environment."""

    def __init__(self, root, ca, nodes=None):
        """Hbc(root, local_cluster): through its client config; Hbc(root, ca, nodes): a client
        certificate 'alice' from ca and the nodes' addresses (test_backup_edges.py)."""
        if nodes is None:
            env = ca.env
        else:
            tls = ca.client("alice", "admin", "--role", "backup", "--role", "restore")
            env = dict(os.environ, HBC_CLUSTER=",".join(n.addr for n in nodes),
                       HBC_CA=tls["ca"], HBC_CERT=tls["cert"], HBC_KEY=tls["key"])
            env.pop("HBC_CONFIG", None)
        self.env = dict(env, HBC_KEYFILE=os.path.join(str(root), "alice.key"),
                        HBC_PASSPHRASE=PASS, HBC_VAULT="records", HBC_TIMEOUT="20")

    def run(self, *args, check=True, timeout=600):
        p = subprocess.run([hbctest.binary("hbc"), *args], env=self.env, capture_output=True,
                           timeout=timeout)
        out = p.stdout.decode(errors="replace")
        err = p.stderr.decode(errors="replace")
        if check and p.returncode != 0:
            raise AssertionError(f"hbc {' '.join(args)} exited {p.returncode}\nstdout: {out}\nstderr: {err}")
        return p.returncode, out, err

    def json(self, *args, check=True, timeout=600):
        rc, out, err = self.run("--json", *args, check=check, timeout=timeout)
        lines = [l for l in out.splitlines() if l.startswith("{") or l.startswith("[")]
        assert lines, f"hbc {' '.join(args)} printed no JSON (exit {rc})\nstderr: {err}"
        return rc, json.loads(lines[-1]), err


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """scripts/cluster: n1 site-1 ssd, n2 site-2 hdd, n3 site-3 hdd worm, then n4 added to site-1."""
    root = tmp_path_factory.mktemp("backup")
    cl = hbctest.LocalCluster(root, scope="module")
    try:
        cl.up(sites=3, nodes_per_site=1)
        cl.add("site-1")
        hbc = Hbc(root, cl)
        rc, st = cl.status()
        assert rc == 0 and st["members"] == 4, st
        hbc.run("key", "init", "--keyfile", hbc.env["HBC_KEYFILE"])
        hbc.run("vault", "create", "records", "--copies", "2", "--k", "2", "--m", "1")
        yield {"root": root, "nodes": cl.nodes, "hbc": hbc, "cluster": cl}
    finally:
        hbctest.stop_all("module")
        if FIGURES:
            print("\nbackup/restore figures: " + json.dumps(FIGURES, sort_keys=True))


def make_tree(top):
    """Several hundred files of every kind: a 50 MB file, empty files, symlinks, hard links,
    empty directories, odd and long names, nanosecond times and unusual modes."""
    rnd = random.Random(5)
    os.makedirs(top)
    for w in range(12):
        ward = os.path.join(top, "wards", f"ward-{w:02d}")
        os.makedirs(ward)
        for p in range(30):
            body = "".join(f"OBX|{k}|NM|{rnd.randint(1, 9999)}|{rnd.random():.5f}\r"
                           for k in range(rnd.randint(1, 400)))
            with open(os.path.join(ward, f"patient-{p:03d}.hl7"), "w") as f:
                f.write(f"MSH|^~\\&|HIS|W{w}|{p}\r" + body)
    docs = os.path.join(top, "docs")
    os.makedirs(docs)
    for i in range(20):
        with open(os.path.join(docs, f"report-{i}.pdf"), "wb") as f:
            f.write(b"%PDF-1.7\n" + rnd.randbytes(rnd.randint(10_000, 400_000)))
    os.makedirs(os.path.join(top, "imaging"))
    with open(os.path.join(top, "imaging", "mri-0001.dcm"), "wb") as f:
        f.write(rnd.randbytes(BIG))
    for i in range(5):
        open(os.path.join(top, f"empty-{i}"), "w").close()
    os.makedirs(os.path.join(top, "empty", "nested", "dirs"))
    os.makedirs(os.path.join(top, "odd"))
    odd = ["space name", "tab\tname", "new\nline", "ünïcödé-名前", "bad-utf8-\xff".encode("latin-1"),
           "-leading-dash", ".hidden", "x" * 255, "quote'\"", "back\\slash"]
    for name in odd:
        path = os.path.join(os.fsencode(top), b"odd", name if isinstance(name, bytes) else name.encode())
        with open(path, "wb") as f:
            f.write(b"odd " + (name if isinstance(name, bytes) else name.encode()))
    os.symlink("../wards/ward-00/patient-000.hl7", os.path.join(top, "docs", "first-patient"))
    os.symlink("/nonexistent/dangling", os.path.join(top, "dangling"))
    os.symlink("wards", os.path.join(top, "wards-link"))
    os.link(os.path.join(top, "wards", "ward-01", "patient-001.hl7"), os.path.join(top, "docs", "hard-1"))
    os.link(os.path.join(top, "wards", "ward-01", "patient-001.hl7"), os.path.join(top, "odd", "hard-2"))
    os.chmod(os.path.join(top, "docs", "report-3.pdf"), 0o600)
    os.chmod(os.path.join(top, "docs", "report-4.pdf"), 0o4755)
    os.chmod(os.path.join(top, "empty", "nested"), 0o500)
    os.utime(os.path.join(top, "docs", "report-5.pdf"), ns=(1_000_000_000, 1_600_000_000_123_456_789))
    os.utime(os.path.join(top, "empty", "nested", "dirs"), ns=(1_000_000_000, 1_500_000_000_987_654_321))


def describe(top):
    """Every entry below top: type, mode, size, mtime, content digest or link target, link group."""
    out = {}
    inodes = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(top)):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, os.fsencode(top))
            st = os.lstat(p)
            d = {"mode": st.st_mode, "mtime": st.st_mtime_ns if not stat.S_ISLNK(st.st_mode) else None}
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                d["sha256"] = h.hexdigest()
                d["size"] = st.st_size
                if st.st_nlink > 1:
                    inodes.setdefault(st.st_ino, []).append(rel)
                    d["nlink"] = st.st_nlink
            elif stat.S_ISLNK(st.st_mode):
                d["target"] = os.readlink(p)
            out[rel] = d
    groups = sorted(sorted(g) for g in inodes.values())
    return out, groups


def restored(target, src):
    return os.path.join(target, src.lstrip("/"))


def assert_same(src, target):
    a, ga = describe(src)
    b, gb = describe(restored(target, src))
    missing = sorted(set(a) - set(b))
    extra = sorted(set(b) - set(a))
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    diffs = [(k, a[k], b[k]) for k in a if a[k] != b[k]]
    assert not diffs, f"{len(diffs)} entries differ, e.g. {diffs[:3]}"
    assert ga == gb, "hard-link groups differ"


def test_backup_restore_incremental_and_node_loss(cluster):
    hbc = cluster["hbc"]
    root = str(cluster["root"])
    src = os.path.join(root, "src")
    make_tree(src)
    nfiles = sum(len(f) for _, _, f in os.walk(src))
    assert nfiles >= 400

    # Full backup.
    rc, b1, err = hbc.json("backup", src)
    assert rc == 0, err
    assert b1["result"] == "ok" and b1["skipped"] == []
    assert b1["bytes_read"] == b1["bytes"] > BIG
    assert b1["peak_rss_kib"] < 512 * 1024
    FIGURES["backup_mb_s"] = round(b1["bytes_read"] / b1["duration_s"] / 1e6, 1)
    FIGURES["backup_peak_rss_mib"] = round(b1["peak_rss_kib"] / 1024, 1)
    FIGURES["backup_bytes"] = b1["bytes"]

    rc, snaps, _ = hbc.json("snapshots")
    assert [s["id"] for s in snaps] == [b1["snapshot"]]
    assert snaps[0]["files"] == b1["files"]

    rc, ls, _ = hbc.json("ls", b1["snapshot"][:8], src + "/imaging")
    assert [e["type"] for e in ls] == ["dir", "file"]
    assert ls[1]["size"] == BIG

    # Restore with --verify, byte for byte and metadata.
    t1 = os.path.join(root, "restore1")
    rc, r1, err = hbc.json("restore", b1["snapshot"], "--target", t1, "--verify")
    assert rc == 0, err
    assert r1["errors"] == 0 and r1["verified"] == r1["files"] == b1["files"]
    assert r1["peak_rss_kib"] < 512 * 1024
    assert_same(src, t1)
    FIGURES["restore_mb_s"] = round(r1["chunk_bytes"] / r1["duration_s"] / 1e6, 1)
    FIGURES["restore_peak_rss_mib"] = round(r1["peak_rss_kib"] / 1024, 1)

    # Incremental: change 5 files; only they are read, and little is stored.
    changed = [os.path.join(src, "wards", f"ward-0{i}", "patient-010.hl7") for i in range(4)]
    changed.append(os.path.join(src, "docs", "report-7.pdf"))
    size = 0
    for p in changed:
        with open(p, "ab") as f:
            f.write(b"OBX|999|ST|AMENDED|late correction\r")
        size += os.path.getsize(p)
    rc, b2, err = hbc.json("backup", src)
    assert rc == 0, err
    assert b2["parent"] == b1["snapshot"]
    assert b2["files_read"] == len(changed)
    assert b2["bytes_read"] == size
    assert b2["files_reused"] == b1["files"] - len(changed)
    assert b2["new_bytes"] <= b1["bytes"] // 10
    FIGURES["incremental"] = {k: b2[k] for k in ("bytes", "bytes_read", "files_read", "files_reused",
                                                 "chunks", "new_chunks", "new_bytes", "dedup_chunks")}
    FIGURES["incremental"]["first_new_bytes"] = b1["new_bytes"]

    # A restore test records its result in the cluster.
    rc, t, err = hbc.json("restore", "latest", "--verify")
    assert rc == 0, err
    assert t["test"] and t["recorded"] and t["errors"] == 0 and t["files"] == b2["files"]
    assert not os.path.exists(os.path.join(root, "latest"))
    FIGURES["restore_test_mb_s"] = round(t["chunk_bytes"] / t["duration_s"] / 1e6, 1)
    rc, t0, err = hbc.json("restore", "latest", "--verify", "--copy", "1")
    assert rc == 0 and t0["errors"] == 0, err

    # kill -9 a node: the restore falls back to parity and still verifies every byte.
    victim = cluster["nodes"][-1]
    victim.kill9()
    t2 = os.path.join(root, "restore2")
    rc, r2, err = hbc.json("restore", "latest", "--target", t2, "--verify", timeout=900)
    assert rc == 0, err
    assert r2["errors"] == 0
    assert_same(src, t2)
    rc, t3, err = hbc.json("restore", "latest", "--verify")
    assert rc == 0 and t3["recorded"] and t3["errors"] == 0, err
    FIGURES["degraded_restore_mb_s"] = round(r2["chunk_bytes"] / r2["duration_s"] / 1e6, 1)
    FIGURES["degraded_shard_errors"] = r2["shard_errors"]

    # An --include restore writes only what it names.
    t4 = os.path.join(root, "restore3")
    rc, r4, err = hbc.json("restore", "latest", "--target", t4, "--include", src + "/docs")
    assert rc == 0, err
    assert os.path.exists(os.path.join(restored(t4, src), "docs", "report-7.pdf"))
    assert not os.path.exists(os.path.join(restored(t4, src), "wards"))

    # Human output and exit codes.
    rc, out, err = hbc.run("restore", "no-such-snapshot", "--verify", check=False)
    assert rc == 1 and "snapshot" in err
    shutil.rmtree(t1, ignore_errors=True)
