"""scripts/cluster, the one launcher of a local cluster: up, the printed HBC_CONFIG line,
status, a backup and restore --verify through that client config, stopping and starting
one node, down (no hbcd of the directory left), and refusing `up` on a running cluster.
"""
import filecmp
import json
import os
import subprocess

import hbctest

PASS = "cluster script passphrase"


def dir_hbcd(d):
    """pids of live hbcd processes whose --config lies in directory d (from /proc)."""
    prefix = os.path.join(d, "")
    out = []
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/cmdline", "rb") as f:
                args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            with open(f"/proc/{e}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if (args and os.path.basename(args[0]) == "hbcd" and state != "Z"
                and any(a.startswith(prefix) for a in args)):
            out.append(int(e))
    return sorted(out)


def hbc(env, *args, check=True):
    p = subprocess.run([hbctest.binary("hbc"), *args], env=env, capture_output=True, timeout=300)
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    assert not check or p.returncode == 0, f"hbc {' '.join(args)} exited {p.returncode}\n{out}\n{err}"
    return p.returncode, out, err


def last_json(out):
    return json.loads([l for l in out.splitlines() if l.startswith("{") or l.startswith("[")][-1])


def test_up_backup_restore_down(tmp_path):
    cl = hbctest.LocalCluster(tmp_path)
    cl.up(sites=3, nodes_per_site=2, raft=hbctest.RAFT_FAST, json_out=False)
    conf = os.path.join(cl.dir, "client.conf")
    assert cl.up_stdout.strip().splitlines()[-1] == f"export HBC_CONFIG={conf}"

    # The layout: 6 nodes, 3 sites, two media classes, the last site worm; all running.
    rc, st = cl.status()
    assert rc == 0 and st["healthy"] and not st["problems"], st
    assert [n["name"] for n in st["nodes"]] == ["n1", "n2", "n3", "n4", "n5", "n6"]
    assert {n["site"] for n in st["nodes"]} == {"site-1", "site-2", "site-3"}
    assert {n["media"] for n in st["nodes"]} == {"ssd", "hdd"}
    assert {n["site"] for n in st["nodes"] if n["worm"]} == {"site-3"}
    assert all(n["running"] and n["member"] for n in st["nodes"])
    pids = cl.pids
    assert sorted(pids.values()) == dir_hbcd(cl.dir)

    # hbc through the printed client config alone (no other connection variables).
    env = dict(cl.env, HBC_PASSPHRASE=PASS)
    assert env["HBC_CONFIG"] == conf and "HBC_CLUSTER" not in env
    rc, out, _ = hbc(env, "--json", "cluster", "status")
    doc = json.loads(out)
    assert doc["members"] == 6 and not doc["unreachable"]
    seen = {n["node"]: (n["site"], n["media"], n["worm"]) for n in doc["nodes"]}
    assert seen == {n["name"]: (n["site"], n["media"], n["worm"]) for n in st["nodes"]}

    # The default policy (3-2-1-1-0) fits this layout; a backup and restore round trip.
    hbc(env, "key", "init")
    assert os.path.exists(os.path.join(cl.dir, "keys", "admin.key"))
    rc, out, err = hbc(env, "--json", "vault", "create", "records", "--home-site", "site-1")
    assert last_json(out)["policy"] == "3-2-1-1-0", out + err
    env["HBC_VAULT"] = "records"
    src = os.path.join(str(tmp_path), "src")
    os.makedirs(os.path.join(src, "ward-1"))
    for i in range(20):
        with open(os.path.join(src, "ward-1", f"patient-{i}.hl7"), "wb") as f:
            f.write(b"MSH|^~\\&|HIS|W1|%d\r" % i + os.urandom(1000 * i))
    rc, out, _ = hbc(env, "--json", "backup", src)
    b = last_json(out)
    assert b["result"] == "ok" and b["files"] == 20
    rc, out, _ = hbc(env, "--json", "restore", "latest", "--verify")
    t = last_json(out)
    assert t["errors"] == 0 and t["files"] == 20 and t["recorded"]
    target = os.path.join(str(tmp_path), "restore")
    rc, out, _ = hbc(env, "--json", "restore", "latest", "--target", target, "--verify")
    r = last_json(out)
    assert r["errors"] == 0 and r["verified"] == 20
    cmp = filecmp.dircmp(os.path.join(src, "ward-1"), os.path.join(target, src.lstrip("/"), "ward-1"))
    assert cmp.left_only == cmp.right_only == cmp.diff_files == [] and len(cmp.same_files) == 20

    # up on a running cluster is refused and changes nothing.
    rc, out, err = cl.run("up", cl.dir, check=False)
    assert rc == 1 and "already running" in err and "down" in err
    assert cl.pids == pids

    # One node killed: status names it; started again: healthy.
    cl.stop_node("n2", kill=True)
    assert cl.pids["n2"] is None and pids["n2"] not in dir_hbcd(cl.dir)
    rc, st = cl.status()
    assert rc == 1 and any(p.startswith("n2 ") for p in st["problems"]), st
    cl.start_node("n2")
    rc, st = cl.status()
    assert rc == 0, st

    # down stops every hbcd of the directory; a second down is harmless.
    cl.down()
    assert dir_hbcd(cl.dir) == []
    assert all(p is None for p in cl.pids.values())
    rc, _, err = cl.run("down", cl.dir)
    assert rc == 0 and dir_hbcd(cl.dir) == []

    # up on the stopped directory starts the same cluster again, with its data.
    cl.up(json_out=False)
    rc, out, _ = hbc(env, "--json", "snapshots")
    assert [s["id"] for s in last_json(out)] == [b["snapshot"]]
    cl.down()
    assert dir_hbcd(cl.dir) == []


def test_up_failure_names_the_node_and_stops_the_rest(tmp_path):
    cl = hbctest.LocalCluster(tmp_path)
    rc, out, err = cl.run("up", cl.dir, "--sites", "2", "--nodes-per-site", "1", "--build", hbctest.BUILD_DIR,
                          "--set", "data.max_frame=12Q", check=False)
    assert rc == 1 and out == ""
    assert "n1 exited with code 2" in err and os.path.join(cl.dir, "n1", "hbcd.log") in err
    assert "'12Q' is not a size" in err
    assert dir_hbcd(cl.dir) == []
