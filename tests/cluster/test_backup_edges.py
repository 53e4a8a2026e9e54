"""hbc backup and restore at their edges, on a real 6-node cluster in 3 sites.

One module-scoped cluster (Raft over mutual TLS; sites a, b, c with two nodes
each; a vault of 2 copies of Reed-Solomon 2+1) serves every test in order:
no plaintext on any node, a wrong key file or passphrase stopped before any
data moves, restores with a whole site down or one node of each copy down, a
node serving a corrupted shard (hbc-corrupt-shard), a tree of every edge case
(1 GiB sparse file, odd names, links, modes, times), an incremental backup
after changing 5% of the files, and hostile snapshots (hbc-hostile-tree) that
try to write outside the restore target. Figures go to
BUILD_DIR/tests/cluster/results-backup_edges.json.

Why 2 copies of 2+1 on 3 sites of 2 survive any one site down: placement
(client/placement.h) gives each copy of a chunk a different home site and
fills the copy there first (2 nodes), then takes nodes no other copy uses, so
copy 0 holds 2 shards in its home site and 1 elsewhere, copy 1 holds at least
1 in its own home site and none in copy 0's home site. A site down thus costs
one copy at most 2 shards (unreadable) and the other at most 1 (m = 1 repairs
it): every chunk stays readable from one copy.
"""
import json
import os
import random
import secrets
import subprocess
import time

import pytest

import hbctest
from test_backup_restore import Hbc, assert_same

PASS = "correct horse battery staple"
FIGURES = {}
SITES = ["site-a", "site-a", "site-b", "site-b", "site-c", "site-c"]


def wait_healthy(hbc, members, timeout=90):
    deadline = time.monotonic() + timeout
    out = ""
    while True:
        rc, out, _ = hbc.run("--json", "cluster", "status", check=False)
        try:
            st = json.loads(out)
            if st["members"] == members and not st["unreachable"] and st["leader_raft_id"]:
                return st
        except (ValueError, KeyError):
            pass
        assert time.monotonic() < deadline, f"cluster not healthy: {out}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("edges")
    ca = hbctest.CA(root)
    nodes = []
    try:
        for i, site in enumerate(SITES):
            raft = {"listen": f"127.0.0.1:{hbctest.free_port()}"}
            if i == 0:
                raft["bootstrap"] = "true"
            else:
                raft["join"] = nodes[0].addr
            n = hbctest.Node(root, ca, f"n{i + 1}", site=site, media="ssd" if i % 2 else "hdd",
                             worm=(i == 4), extra={"raft": raft}, scope="module")
            n.start()
            nodes.append(n)
        hbc = Hbc(root, ca, nodes)
        wait_healthy(hbc, len(nodes))
        hbc.run("key", "init", "--keyfile", hbc.env["HBC_KEYFILE"])
        hbc.run("vault", "create", "records", "--copies", "2", "--k", "2", "--m", "1")
        yield {"root": str(root), "nodes": nodes, "hbc": hbc, "state": {}}
    finally:
        hbctest.stop_all("module")
        if FIGURES:
            print("\nbackup edge figures: " + json.dumps(FIGURES, sort_keys=True))
            hbctest.write_results("backup_edges", FIGURES)


def segment_bytes(node):
    """Bytes in the node's shard segment files (data_dir/shards/segments)."""
    d = os.path.join(node.data_dir, "shards", "segments")
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)) if os.path.isdir(d) else 0


def files_containing(top, needles):
    """Every file below top (recursively, all bytes) that contains one of needles: [(path, needle)]."""
    hits = []
    longest = max(len(n) for n in needles)
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            tail = b""
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    buf = tail + block
                    for n in needles:
                        if n in buf and (p, n) not in hits:
                            hits.append((p, n))
                    tail = buf[-(longest - 1):]
    return hits


def test_no_plaintext_reaches_a_node(cluster):
    hbc, root, nodes = cluster["hbc"], cluster["root"], cluster["nodes"]
    content = secrets.token_hex(16).encode()  # 32 characters
    name = "name-" + secrets.token_hex(16)
    src = os.path.join(root, "src")
    os.makedirs(os.path.join(src, "notes"))
    for i in range(8):
        with open(os.path.join(src, "notes", f"note-{i}.txt"), "wb") as f:
            # Once in a small file, thousands of times in bigger ones (multi-chunk, compressible).
            f.write(b"patient note " + content * (1 if i == 0 else 10 ** (i % 6)) + b"\n")
    with open(os.path.join(src, "notes", name), "wb") as f:
        f.write(b"the file whose name is the marker\n")
    os.makedirs(os.path.join(src, name + "-dir"))
    os.symlink(name, os.path.join(src, "notes", "link-to-marker"))
    # The needle must be found when present: the source tree itself holds both markers.
    assert {n for _, n in files_containing(src, [content])} == {content}

    rc, b, err = hbc.json("backup", src)
    assert rc == 0 and b["result"] == "ok", err
    assert b["new_bytes"] > 0
    cluster["state"].update(src=src, snap=b["snapshot"])

    needles = [content, name.encode(), name.encode("utf-16-le")]
    scanned = 0
    for n in nodes:
        for dirpath, _, fns in os.walk(n.data_dir):
            scanned += sum(os.path.getsize(os.path.join(dirpath, f)) for f in fns
                           if os.path.isfile(os.path.join(dirpath, f)))
    hits = []
    for n in nodes:
        hits += files_containing(n.data_dir, needles)
    assert not hits, f"plaintext found on nodes: {hits[:5]}"
    assert scanned > b["new_bytes"] // 2, "the data directories hold less than was stored"
    FIGURES["plaintext_scan_bytes"] = scanned

    # The restore still gives the content back: the markers were really backed up.
    t = os.path.join(root, "restore-plain")
    rc, r, err = hbc.json("restore", b["snapshot"], "--target", t, "--verify")
    assert rc == 0 and r["errors"] == 0, err
    assert_same(src, t)


def test_wrong_key_or_passphrase_moves_no_data(cluster):
    hbc, root, nodes = cluster["hbc"], cluster["root"], cluster["nodes"]
    src = os.path.join(root, "src-wrong")
    os.makedirs(src)
    with open(os.path.join(src, "fresh.bin"), "wb") as f:
        f.write(os.urandom(3 * 1000 * 1000))
    before = [segment_bytes(n) for n in nodes]
    snaps_before = hbc.json("snapshots")[1]

    # Wrong passphrase for the right key file.
    env = dict(hbc.env, HBC_PASSPHRASE="not the passphrase")
    saved, hbc.env = hbc.env, env
    try:
        rc, out, err = hbc.run("backup", src, check=False)
    finally:
        hbc.env = saved
    assert rc == 1, (rc, err)
    assert "passphrase" in err, err

    # A different key file (its own KEK) with its own correct passphrase.
    other = os.path.join(root, "other.key")
    env = dict(hbc.env, HBC_KEYFILE=other, HBC_PASSPHRASE="another passphrase")
    saved, hbc.env = hbc.env, env
    try:
        hbc.run("key", "init", "--keyfile", other)
        rc, out, err = hbc.run("backup", src, check=False)
        rc_j, out_j, err_j = hbc.run("--json", "backup", src, check=False)
    finally:
        hbc.env = saved
    assert rc == 1, (rc, err)
    assert "key file" in err and "KEK" in err, err
    assert rc_j == 1 and "KEK" in err_j, (rc_j, out_j, err_j)

    # Nothing moved: no segment grew and no snapshot was recorded.
    after = [segment_bytes(n) for n in nodes]
    assert after == before, f"segment bytes changed: {before} -> {after}"
    assert hbc.json("snapshots")[1] == snaps_before


def stop_nodes(cluster, names):
    """Stop the named nodes, then wait until the rest have a leader among them (a restore
    reads snapshot and vault records through the leader)."""
    down = [n for n in cluster["nodes"] if n.name in names]
    for n in down:
        n.stop()
    deadline = time.monotonic() + 90
    out = ""
    while True:
        rc, out, _ = cluster["hbc"].run("--json", "cluster", "status", check=False)
        try:
            st = json.loads(out)
            leader = [m for m in st["nodes"] if m.get("raft_id") == st["leader_raft_id"]]
            if leader and leader[0].get("node") not in names:
                return down
        except (ValueError, KeyError, TypeError):
            pass
        assert time.monotonic() < deadline, f"no leader with {names} down: {out}"
        time.sleep(0.3)


def restart(cluster, down):
    for n in down:
        n.start()
    wait_healthy(cluster["hbc"], len(cluster["nodes"]))


@pytest.mark.parametrize("down_names,label", [
    (["n1", "n2"], "site_a_down"),
    (["n3", "n4"], "site_b_down"),
    (["n5", "n6"], "site_c_down"),
    (["n2", "n3"], "one_node_of_each_copy_down"),
])
def test_restore_with_nodes_down(cluster, down_names, label):
    hbc, root = cluster["hbc"], cluster["root"]
    src, snap = cluster["state"]["src"], cluster["state"]["snap"]
    # A bigger file so that many chunks (many placements) are exercised.
    if "big" not in cluster["state"]:
        with open(os.path.join(src, "big.bin"), "wb") as f:
            f.write(os.urandom(40 * 1000 * 1000))
        rc, b, err = hbc.json("backup", src)
        assert rc == 0, err
        cluster["state"]["big"] = b["snapshot"]
    snap = cluster["state"]["big"]
    down = stop_nodes(cluster, down_names)
    try:
        t = os.path.join(root, "restore-" + label)
        rc, r, err = hbc.json("restore", snap, "--target", t, "--verify", timeout=900)
        assert rc == 0 and r["errors"] == 0 and r["result"] == "ok", (r, err)
        assert_same(src, t)
        rc, v, err = hbc.json("restore", snap, "--verify", timeout=900)
        assert rc == 0, (v, err)
        assert v["test"] and v["errors"] == 0 and v["recorded"], v
        FIGURES[label] = {"shard_errors": r["shard_errors"], "chunks": r["chunks"],
                          "restore_s": r["duration_s"], "test_shard_errors": v["shard_errors"]}
        assert r["shard_errors"] > 0
    finally:
        restart(cluster, down)


def segment_records(node):
    """The records in a node's segment files: [(key bytes (52), data length)], read from the
    record headers (magic "HBSR", version, zero, key at 8, length (u32 BE) at 60)."""
    d = os.path.join(node.data_dir, "shards", "segments")
    out = []
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            buf = f.read()
        pos = 0
        while pos + 96 <= len(buf) and buf[pos:pos + 4] == b"HBSR":
            key = buf[pos + 8:pos + 60]
            length = int.from_bytes(buf[pos + 60:pos + 64], "big")
            out.append((key, length))
            pos += 96 + length
    return out


def test_corrupted_shard_served_by_a_node_is_caught(cluster):
    hbc, root, nodes = cluster["hbc"], cluster["root"], cluster["nodes"]
    src, snap = cluster["state"]["src"], cluster["state"]["big"]
    # The largest data shard 0 on any node: a chunk of big.bin. Corrupt shard 0 of that chunk
    # on every node that holds it (one per copy), so whichever copy is read first, its data
    # shard 0 is wrong.
    records = {n.name: segment_records(n) for n in nodes}
    zero = [(length, key, name) for name, recs in records.items() for key, length in recs
            if key[48:52] == b"\0\0\0\0"]
    assert zero, "no data shard 0 on any node"
    _, key, _ = max(zero)
    holders = [n for n in nodes if any(k == key for k, _ in records[n.name])]
    assert len(holders) == 2, f"shard 0 of the chunk is on {[n.name for n in holders]}"
    fixes = []
    for n in holders:
        n.stop()
        p = subprocess.run([hbctest.binary("hbc-corrupt-shard"), os.path.join(n.data_dir, "shards"),
                            key.hex()], capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr.decode(errors="replace")
        fixes.append(json.loads(p.stdout))
        n.start()
    assert all(f["old_sha256"] != f["new_sha256"] for f in fixes)
    wait_healthy(hbc, len(nodes))

    t = os.path.join(root, "restore-corrupt")
    rc, r, err = hbc.json("restore", snap, "--target", t, "--verify", timeout=900)
    assert rc == 0 and r["errors"] == 0 and r["result"] == "ok", (r, err)
    assert_same(src, t)
    assert r["shard_errors"] >= 1, r
    rc, v, err = hbc.json("restore", snap, "--verify", timeout=900)
    assert rc == 0 and v["errors"] == 0 and v["shard_errors"] >= 1, (v, err)
    for c in ("0", "1"):
        rc, vc, err = hbc.json("restore", snap, "--verify", "--copy", c, "--no-record", timeout=900)
        assert rc == 0 and vc["errors"] == 0 and vc["shard_errors"] >= 1, (c, vc, err)
    FIGURES["corrupt_shard"] = {"shard_bytes": fixes[0]["length"], "shard_errors": r["shard_errors"],
                                "test_shard_errors": v["shard_errors"]}


GIB = 1 << 30
MIB = 1 << 20


def make_edge_tree(top):
    """Every kind of edge: empty files, a 1 GiB sparse file, a file of exactly 4 MiB, long
    zero runs (max-size chunks), 255-byte, unicode and odd names, symlinks (dangling too),
    hard links, empty directories, unusual modes and nanosecond mtimes."""
    os.makedirs(top)
    for i in range(3):
        open(os.path.join(top, f"empty-{i}"), "wb").close()
    with open(os.path.join(top, "sparse-1g.img"), "wb") as f:
        f.truncate(GIB)
        for off in (0, 300 * MIB + 4096, GIB - 4096):
            f.seek(off)
            f.write(os.urandom(4096))
    with open(os.path.join(top, "exactly-4MiB.bin"), "wb") as f:
        f.write(os.urandom(4 * MIB))
    with open(os.path.join(top, "zero-runs.bin"), "wb") as f:
        # 20 MiB of zeros between two random blocks: the chunker cuts it at the 4 MiB maximum.
        f.write(os.urandom(64 * 1024) + bytes(20 * MIB) + os.urandom(64 * 1024))
    names = ["x" * 255, "é" * 127 + "z", "space name", "new\nline", "-leading-dash", "--",
             "ünïcödé-名前-🏥", "tab\tand\\back", ".hidden", "bad-utf8-\udcff"]
    odd = os.path.join(top, "odd")
    os.makedirs(odd)
    for n in names:
        assert len(os.fsencode(n)) <= 255
        with open(os.path.join(os.fsencode(odd), os.fsencode(n)), "wb") as f:
            f.write(b"odd " + os.fsencode(n))
    os.makedirs(os.path.join(top, "y" * 255, "z" * 255))
    with open(os.path.join(top, "y" * 255, "z" * 255, "deep"), "w") as f:
        f.write("deep")
    os.symlink("exactly-4MiB.bin", os.path.join(top, "link-rel"))
    os.symlink("/nonexistent/dangling/target", os.path.join(top, "link-dangling"))
    os.symlink("odd/" + "x" * 255, os.path.join(top, "link-long"))
    os.symlink("odd", os.path.join(top, "link-dir"))
    os.link(os.path.join(top, "exactly-4MiB.bin"), os.path.join(top, "odd", "hard-4MiB"))
    os.link(os.path.join(top, "odd", "space name"), os.path.join(top, "hard-space"))
    os.link(os.path.join(top, "empty-0"), os.path.join(top, "hard-empty"))
    os.makedirs(os.path.join(top, "empty-dir", "nested-empty"))
    os.makedirs(os.path.join(top, "locked"))
    os.chmod(os.path.join(top, "empty-1"), 0o000)
    os.chmod(os.path.join(top, "empty-2"), 0o6755)
    os.chmod(os.path.join(top, "odd", "space name"), 0o640)
    os.chmod(os.path.join(top, "empty-dir"), 0o1777)
    os.chmod(os.path.join(top, "locked"), 0o500)
    for i, p in enumerate(["empty-0", "zero-runs.bin", "odd/-leading-dash", "empty-dir/nested-empty",
                           "sparse-1g.img", "odd"]):
        os.utime(os.path.join(top, p), ns=(1_000_000_000, 1_234_567_890_123_456_789 + i * 1001))
    os.utime(top, ns=(1_000_000_000, 1_111_111_111_111_111_111))


def test_edge_tree_round_trip(cluster):
    hbc, root = cluster["hbc"], cluster["root"]
    src = os.path.join(root, "edge-src")
    make_edge_tree(src)
    rc, b, err = hbc.json("backup", src, timeout=1800)
    assert rc == 0 and b["result"] == "ok" and b["skipped"] == [], (b, err)
    t = os.path.join(root, "edge-restore")
    rc, r, err = hbc.json("restore", b["snapshot"], "--target", t, "--verify", timeout=1800)
    assert rc == 0 and r["errors"] == 0 and r["verified"] == r["files"] == b["files"], (r, err)
    assert_same(src, t)
    dst = os.path.join(t, src.lstrip("/"))
    # Directory times and the top directory itself (assert_same covers what lies below).
    assert os.stat(dst).st_mtime_ns == os.stat(src).st_mtime_ns
    assert os.stat(dst).st_mode == os.stat(src).st_mode
    # The sparse file comes back sparse: its three written blocks, not a gigabyte.
    st = os.stat(os.path.join(dst, "sparse-1g.img"))
    assert st.st_size == GIB
    assert st.st_blocks * 512 <= 16 * MIB, st.st_blocks
    FIGURES["edge_tree"] = {"files": b["files"], "bytes": b["bytes"], "new_bytes": b["new_bytes"],
                            "chunks": b["chunks"], "backup_s": b["duration_s"],
                            "restore_s": r["duration_s"], "sparse_restored_kib": st.st_blocks // 2}


def test_incremental_after_changing_5_percent(cluster):
    hbc, root = cluster["hbc"], cluster["root"]
    rnd = random.Random(6)
    src = os.path.join(root, "incr-src")
    files = []
    for w in range(8):
        ward = os.path.join(src, f"ward-{w}")
        os.makedirs(ward)
        for p in range(45):
            path = os.path.join(ward, f"patient-{p:03d}.hl7")
            with open(path, "w") as f:
                f.write(f"MSH|^~\\&|HIS|W{w}|{p}\r" + "".join(
                    f"OBX|{k}|NM|{rnd.randint(1, 99999)}|{rnd.random():.6f}\r"
                    for k in range(rnd.randint(20, 800))))
            files.append(path)
    os.makedirs(os.path.join(src, "docs"))
    for i in range(36):
        path = os.path.join(src, "docs", f"report-{i}.pdf")
        with open(path, "wb") as f:
            f.write(b"%PDF-1.7\n" + rnd.randbytes(rnd.randint(100_000, 1_000_000)))
        files.append(path)
    os.makedirs(os.path.join(src, "imaging"))
    for i in range(4):
        path = os.path.join(src, "imaging", f"ct-{i}.dcm")
        with open(path, "wb") as f:
            f.write(rnd.randbytes(25 * 1000 * 1000))
        files.append(path)
    assert len(files) == 400

    rc, b1, err = hbc.json("backup", src)
    assert rc == 0 and b1["result"] == "ok", err
    assert b1["files_read"] == 400

    # 5% of the files (20), of every kind and kind of change: an edit in the middle of an
    # imaging file, content inserted at the start of documents, lines appended to records.
    changed = [files[-1]] + rnd.sample(files[360:396], 2) + rnd.sample(files[:360], 17)
    with open(changed[0], "r+b") as f:
        f.seek(12 * 1000 * 1000)
        f.write(b"CORRECTED" * 100)
    for p in changed[1:3]:
        with open(p, "rb") as f:
            body = f.read()
        with open(p, "wb") as f:
            f.write(b"%PDF-1.7\n% amended\n" + body[9:])
    for p in changed[3:]:
        with open(p, "a") as f:
            f.write("OBX|999|ST|AMENDED|late correction\r")
    rc, b2, err = hbc.json("backup", src)
    assert rc == 0 and b2["result"] == "ok", err
    assert b2["parent"] == b1["snapshot"]
    assert b2["files_read"] == len(changed) == 20
    assert b2["files_reused"] == 380
    assert b2["new_bytes"] <= b1["bytes"] // 10, (b2["new_bytes"], b1["bytes"])
    assert b2["new_bytes"] <= b1["new_bytes"] // 10, (b2["new_bytes"], b1["new_bytes"])
    FIGURES["incremental_5pct"] = {"first_bytes": b1["bytes"], "first_new_bytes": b1["new_bytes"],
                                   "second_new_bytes": b2["new_bytes"],
                                   "second_bytes_read": b2["bytes_read"],
                                   "ratio": round(b2["new_bytes"] / b1["new_bytes"], 4)}

    # And the second snapshot restores to the changed tree.
    t = os.path.join(root, "incr-restore")
    rc, r, err = hbc.json("restore", b2["snapshot"], "--target", t, "--verify")
    assert rc == 0 and r["errors"] == 0, err
    assert_same(src, t)


def hostile_snapshot(hbc, case, outside):
    p = subprocess.run([hbctest.binary("hbc-hostile-tree"), case, outside], env=hbc.env,
                       capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return json.loads(p.stdout)["snapshot"]


def tree_state(top):
    """Every path below top (top included) with its type, size, nlink and content digest."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [""] + dirnames + filenames:
            p = os.path.join(dirpath, name) if name else dirpath
            st = os.lstat(p)
            d = (st.st_mode, st.st_size, st.st_nlink, st.st_mtime_ns)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    d += (f.read(),)
            out[p] = d
    return out


@pytest.mark.parametrize("cases", [["dotdot-dir"], ["dotdot-name"], ["absolute"],
                                   ["link-via-link"], ["link-dotdot"], ["symlink", "dir-a"]],
                         ids=lambda c: "+".join(c))
def test_hostile_snapshot_writes_nothing_outside_the_target(cluster, cases):
    hbc, root = cluster["hbc"], cluster["root"]
    base = os.path.join(root, "hostile-" + "+".join(cases))
    outside = os.path.join(base, "outside")
    target = os.path.join(base, "target")
    os.makedirs(outside)
    with open(os.path.join(outside, "secret"), "w") as f:
        f.write("not to be touched\n")
    # The directory above everything, too: an escape would land in base or in root.
    before_root = sorted(os.listdir(root))
    before = tree_state(base)
    results = []
    for case in cases:
        snap = hostile_snapshot(hbc, case, outside)
        rc, r, err = hbc.json("restore", snap, "--target", target, check=False)
        results.append((case, rc, r, err))
    # The refusal is an error a person understands, and the exit code says it failed.
    for case, rc, r, err in results:
        if case == "symlink":
            # The symlink alone is harmless: it is restored as a symlink inside the target.
            assert rc == 0 and r["errors"] == 0, (case, r, err)
            assert os.readlink(os.path.join(target, "a")) == outside
            continue
        assert rc == 1 and r["result"] != "ok", (case, rc, r, err)
        # Names the tree decoder refuses ("..", '/') fail the whole directory (HBC_EFORMAT,
        # naming the bad name); paths through symlinks are refused entry by entry.
        assert r["failed"], (case, r)
        for f in r["failed"]:
            assert ("leaves the restore target" in f["error"] and f["code"] == "HBC_EDENIED") or \
                (f["code"] == "HBC_EFORMAT" and "name" in f["error"]), (case, f)
    # base itself changes (target was made in it): compare what it holds, not its own times.
    after = tree_state(base)
    outside_now = {p: d for p, d in after.items()
                   if not p.startswith(target + os.sep) and p not in (target, base)}
    before.pop(base)
    assert outside_now == before, f"{cases}: changed outside the target: " \
        f"{sorted(set(outside_now) ^ set(before))[:5]}"
    assert sorted(os.listdir(root)) == before_root
    FIGURES.setdefault("hostile", {})["+".join(cases)] = [
        {"case": c, "rc": rc, "failed": (r.get("failed") or [None])[0]} for c, rc, r, err in results]
