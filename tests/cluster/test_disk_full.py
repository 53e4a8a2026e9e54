"""Disk full: the node's data directory is a small filesystem made for the test.

Puts fill it until they fail; the failure must be a clear "no space" error to
the client (never a success), and every acknowledged shard must stay present
and intact. Then space is freed (a filler file the test wrote beforehand on the
same filesystem is deleted) and the node must take new puts without a restart,
and again after one, with everything acknowledged still intact.

The filesystem (256 MiB: RocksDB fallocates about 70 MiB ahead for its write-ahead
log) is a loop-mounted ext4 image (so RocksDB's own files meet
ENOSPC as on a real disk), or tmpfs when loop devices are unavailable; the
test is skipped, saying why, only when neither can be mounted (not root).
"""
import os
import subprocess

import pytest

import hbctest

FS_MIB = 256
FILLER_MIB = 48


def _run(*cmd):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)


@pytest.fixture
def small_fs_node(tmp_path, ca):
    """A node whose data directory is a FS_MIB filesystem; yields (node, fs kind)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    node = hbctest.Node(tmp_path, ca, "n1", extra={"store": {"segment_size": "8M"}})
    image = str(tmp_path / "disk.img")
    kind = None
    with open(image, "wb") as f:
        f.truncate(FS_MIB << 20)
    mk = _run("mkfs.ext4", "-q", "-F", "-m", "0", image)
    if mk.returncode == 0 and _run("mount", "-o", "loop", image, node.data_dir).returncode == 0:
        kind = "ext4"
    else:
        os.unlink(image)
        tm = _run("mount", "-t", "tmpfs", "-o", f"size={FS_MIB}m", "tmpfs", node.data_dir)
        if tm.returncode != 0:
            pytest.skip("cannot mount a small filesystem: ext4 loop: "
                        f"{mk.stdout.decode(errors='replace').strip()}; tmpfs: "
                        f"{tm.stdout.decode(errors='replace').strip()}")
        kind = "tmpfs"
    try:
        yield node, kind
    finally:
        node.stop(timeout=30)
        hbctest.stop_all()
        if _run("umount", node.data_dir).returncode != 0:
            _run("umount", "-l", node.data_dir)
        if os.path.exists(image):
            os.unlink(image)


def free_mib(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / (1 << 20)


def check(node, alice, ack, seed):
    """Every shard in the ack log is present and intact."""
    load = hbctest.Shardload(node.addr, alice, "--mode", "check", "--check", ack, "--seed", seed,
                             "--clients", 2)
    s = load.run(timeout=300)
    assert load.rc == 0 and s and s["errors"] == 0 and s["mismatches"] == 0 and s["missing"] == 0, \
        load.describe()
    return s


def put(node, alice, ack, seed, shards):
    load = hbctest.Shardload(node.addr, alice, "--mode", "put", "--clients", 4, "--pipeline", 4,
                             "--batch", 4, "--shards", shards, "--min", "64K", "--max", "1M",
                             "--seed", seed, "--ack-log", ack)
    return load, load.run(timeout=600)


def acked(ack):
    with open(ack) as f:
        return sum(1 for line in f if line.endswith("\n"))


def test_disk_full_then_space_returns(tmp_path, ca, small_fs_node):
    node, kind = small_fs_node
    filler = os.path.join(node.data_dir, "filler")
    with open(filler, "wb") as f:
        for _ in range(FILLER_MIB):
            f.write(os.urandom(1 << 20))
        os.fsync(f.fileno())
    node.start()
    alice = ca.client("alice")
    ack1 = str(tmp_path / "ack1.log")

    # 1. Fill: far more data (about 400 MB) than the filesystem holds.
    load, s = put(node, alice, ack1, 1, 1000)
    assert load.rc != 0 and s is not None, load.describe()
    assert s["put_shards"] > 0, "nothing was stored before the disk filled: " + load.describe()
    assert s["errors"] > 0 and s["put_shards"] < 1000, load.describe()
    assert acked(ack1) == s["put_shards"]
    # The client is told plainly why: the node's ERROR_NO_SPACE (-ENOSPC) with a message.
    # Either the reserve check (SERVER_DISK_RESERVE) or the segment write itself says so.
    assert "no space" in load.stderr.lower() and "(ENOSPC)" in load.stderr, load.describe()
    failed = node.events("request_failed")
    assert failed, node.log_text()[-3000:]
    codes = {ev.get("code") for ev in failed}
    assert codes <= {"ENOSPC"}, f"puts failed with other codes than ENOSPC: {codes}"
    print(f"\ndisk_full: {kind}, {s['put_shards']} shards ({s['put_bytes'] / 1e6:.1f} MB) "
          f"acknowledged, {s['errors']} failed, {free_mib(node.data_dir):.1f} MiB free")

    # 2. Nothing acknowledged is lost, and the node still serves.
    check(node, alice, ack1, 1)

    # 3. Space returns: new puts succeed without a restart.
    os.unlink(filler)
    ack2 = str(tmp_path / "ack2.log")
    load, s2 = put(node, alice, ack2, 2, 40)
    assert load.rc == 0 and s2["put_shards"] == 40 and s2["errors"] == 0, load.describe()
    check(node, alice, ack1, 1)
    check(node, alice, ack2, 2)

    # 4. And after a restart: everything acknowledged is there, and puts still work.
    assert node.stop() == 0
    node.start()
    check(node, alice, ack1, 1)
    check(node, alice, ack2, 2)
    ack3 = str(tmp_path / "ack3.log")
    load, s3 = put(node, alice, ack3, 3, 10)
    assert load.rc == 0 and s3["put_shards"] == 10 and s3["errors"] == 0, load.describe()
    check(node, alice, ack3, 3)
    hbctest.write_results("disk_full", {"fs": kind, "fs_mib": FS_MIB, "acked_when_full": s["put_shards"],
                                        "failed_when_full": s["errors"]})


def test_capacity_reached_says_no_space(tmp_path, ca):
    """The [node] capacity limit fails puts the same way: ERROR_NO_SPACE with a message."""
    node = hbctest.Node(tmp_path, ca, "n1", extra={"node": {"capacity": "16M"}}).start()
    alice = ca.client("alice")
    ack = str(tmp_path / "ack.log")
    load, s = put(node, alice, ack, 4, 100)
    assert load.rc != 0 and s["put_shards"] > 0 and s["errors"] > 0, load.describe()
    assert "no space: the node is full ([node] capacity)" in load.stderr, load.describe()
    assert "(ENOSPC)" in load.stderr, load.describe()
    assert {ev.get("code") for ev in node.events("request_failed")} == {"ENOSPC"}
    check(node, alice, ack, 4)
