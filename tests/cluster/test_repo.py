"""client/repo.h and `hbc key` / `hbc vault` on a real 4-node Raft cluster.

One cluster per module (n1 bootstraps, n2..n4 join through it), driven the
way a user drives it: `hbc` with a client config file and HBC_PASSPHRASE, and
hbc-repo-driver (tests/cluster/repo_driver.c) for chunks through the repo
API. The last tests kill one node with SIGKILL and read every chunk back
byte for byte through parity and the other copies.
"""
import json
import os
import resource
import stat
import subprocess
import time

import pytest

import hbctest

PASS = "correct horse battery staple"
CHUNKS = 200
SEED = 42


def run(cmd, env, check=None, timeout=300):
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    if check is not None:
        assert p.returncode == check, f"{cmd} exited {p.returncode}, wanted {check}\nstdout:\n{out}\nstderr:\n{err}"
    return p.returncode, out, err


def last_json(out):
    lines = [l for l in out.splitlines() if l.startswith("{")]
    assert lines, f"no JSON line in:\n{out}"
    return json.loads(lines[-1])


def start_raft_cluster(root, ca, count, scope="module", layout=None):
    """layout: per node (site, media, worm); default: sites site-0 and site-1 alternating, ssd."""
    nodes = []
    for i in range(count):
        site, media, worm = layout[i] if layout else (f"site-{i % 2}", "ssd", False)
        raft = {"listen": f"127.0.0.1:{hbctest.free_port()}", "segment_size": "1M"}
        if i == 0:
            raft["bootstrap"] = "true"
        else:
            raft["join"] = nodes[0].addr
        node = hbctest.Node(root, ca, f"n{i + 1}", site=site, media=media, worm=worm, extra={"raft": raft},
                            scope=scope)
        node.start()
        nodes.append(node)
    return nodes


class Cluster:
    def __init__(self, root, ca, count, scope="module", layout=None):
        self.root = str(root)
        self.nodes = start_raft_cluster(root, ca, count, scope, layout)
        self.tls = ca.client("alice", "backup")
        self.keyfile = os.path.join(self.root, "keys", "alice.key")
        self.config = os.path.join(self.root, "client.conf")
        with open(self.config, "w") as f:
            f.write("[cluster]\n")
            f.write("addresses = " + ", ".join(n.addr for n in self.nodes) + "\n")
            f.write(f"ca = {os.path.relpath(self.tls['ca'], self.root)}\n")
            f.write(f"cert = {os.path.relpath(self.tls['cert'], self.root)}\n")
            f.write(f"key = {os.path.relpath(self.tls['key'], self.root)}\n")
            f.write("[vault]\nkeyfile = keys/alice.key\nname = records\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HBC_") or k.endswith("_DIR")}
        self.env.update(HBC_CONFIG=self.config, HBC_PASSPHRASE=PASS, HOME=self.root)
        self.wait_members(count)

    def hbc(self, *args, check=0, env=None):
        return run([hbctest.binary("hbc"), "--timeout", "20", *args], env or self.env, check)

    def driver(self, *args, keyfile=None, vault="records", env=None, check=0, addrs=None):
        cmd = [hbctest.binary("hbc-repo-driver"),
               "--cluster", ",".join(addrs or [n.addr for n in self.nodes]),
               "--ca", self.tls["ca"], "--cert", self.tls["cert"], "--key", self.tls["key"],
               "--timeout", "20"]
        if keyfile is not False:
            cmd += ["--keyfile", keyfile or self.keyfile]
        if vault:
            cmd += ["--vault", vault]
        rc, out, err = run(cmd + [str(a) for a in args], env or self.env, check, timeout=600)
        return rc, last_json(out), err

    def wait_members(self, count, timeout=60):
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            rc, out, err = self.hbc("--json", "cluster", "status", check=None)
            if out.startswith("{"):
                s = json.loads(out)
                if s["leader_raft_id"] is not None and s["members"] == count and len(s["nodes"]) == count \
                        and all(n.get("address") for n in s["nodes"]):
                    return s
            last = out + err
            time.sleep(0.3)
        raise AssertionError(f"the cluster never had {count} members with a leader:\n{last}")

    def leader_name(self):
        s = self.wait_members(len(self.nodes))
        return next(n["node"] for n in s["nodes"] if n["state"] == "leader")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    ca = hbctest.CA(root)
    c = Cluster(root, ca, 4)
    yield c
    hbctest.stop_all("module")


def test_key_init_refuses_to_overwrite_and_passwd(cluster):
    rc, out, err = cluster.hbc("--json", "key", "init")
    doc = json.loads(out)
    assert doc == {"keyfile": cluster.keyfile, "created": True}
    assert stat.S_IMODE(os.stat(cluster.keyfile).st_mode) == 0o600
    with open(cluster.keyfile, "rb") as f:
        before = f.read()

    rc, out, err = cluster.hbc("key", "init", check=1)
    assert "refusing to overwrite" in err
    with open(cluster.keyfile, "rb") as f:
        assert f.read() == before

    # No passphrase from anywhere and no terminal: a clear usage error.
    env = dict(cluster.env)
    del env["HBC_PASSPHRASE"]
    rc, out, err = cluster.hbc("key", "init", "--keyfile", os.path.join(cluster.root, "k2"), check=2, env=env)
    assert "HBC_PASSPHRASE" in err

    # Change the passphrase and back; the old one stops working in between.
    env = dict(cluster.env, HBC_NEW_PASSPHRASE="another one")
    cluster.hbc("key", "passwd", env=env)
    rc, out, err = cluster.hbc("key", "passwd", check=1, env=env)
    assert "wrong passphrase" in err
    pfile = os.path.join(cluster.root, "pass.txt")
    with open(pfile, "w") as f:
        f.write("another one\n")
    env = dict(cluster.env, HBC_PASSPHRASE_FILE=pfile, HBC_NEW_PASSPHRASE=PASS)
    del env["HBC_PASSPHRASE"]
    cluster.hbc("key", "passwd", env=env)


def test_config_file_errors_are_usage_errors(cluster):
    bad = os.path.join(cluster.root, "bad.conf")
    with open(bad, "w") as f:
        f.write("[cluster]\naddress = 127.0.0.1:1\n")
    rc, out, err = cluster.hbc("--config", bad, "vault", "list", check=2)
    assert "line 2" in err and "unknown setting [cluster] address" in err
    rc, out, err = cluster.hbc("--config", os.path.join(cluster.root, "missing.conf"), "vault", "list", check=2)
    assert "missing.conf" in err


def test_vault_create_and_list(cluster):
    # Two sites, all ssd, no worm node: the default 3-2-1-1-0 policy cannot be met, and hbc
    # names the rule.
    rc, out, err = cluster.hbc("vault", "create", "policy-default", "--home-site", "site-0", check=1)
    assert "copy 1 (offsite, media different): no node with a media other than ssd outside site-0" in err
    rc, out, err = cluster.hbc("vault", "create", "policy-default", "--home-site", "site-z", check=1)
    assert "copy 0 (home): no node in site-z" in err
    rc, out, err = cluster.hbc("--json", "vault", "create", "records", "--policy", "none")
    doc = json.loads(out)
    # 4 nodes: the defaults (3 copies of 4+2) are fitted to 3 copies of 2+2, and hbc says so.
    assert (doc["copies"], doc["k"], doc["m"], doc["nodes"], doc["adjusted"]) == (3, 2, 2, 4, True)
    assert "note: the cluster has 4 nodes" in err
    assert len(doc["vault_id"]) == 32

    rc, out, err = cluster.hbc("vault", "create", "records", "--policy", "none", check=1)
    assert "already exists" in err
    # Explicit values that cannot fit are refused, not silently changed.
    rc, out, err = cluster.hbc("vault", "create", "wide", "--k", "4", "--m", "2", check=2)
    assert "do not fit a cluster of 4 nodes" in err
    cluster.hbc("vault", "create", "small", "--copies", "1", "--k", "3", "--m", "1")

    rc, out, err = cluster.hbc("--json", "vault", "list")
    vaults = {v["name"]: v for v in json.loads(out)["vaults"]}
    assert set(vaults) == {"records", "small"}
    assert vaults["records"]["vault_id"] == doc["vault_id"]
    assert (vaults["records"]["copies"], vaults["records"]["k"], vaults["records"]["m"]) == (3, 2, 2)
    assert vaults["records"]["keys"] is True and vaults["records"]["key_generation"] == 1
    assert vaults["records"]["created_by"].find("alice") >= 0
    assert (vaults["small"]["copies"], vaults["small"]["k"], vaults["small"]["m"]) == (1, 3, 1)

    rc, out, err = cluster.hbc("vault", "list")
    assert "records" in out and "2+2" in out and "wrapped" in out

    # A vault without rules fails the check, digit by digit.
    rc, out, err = cluster.hbc("--json", "policy", "check", "records", check=1)
    doc = json.loads(out)["vaults"][0]
    digits = {d["digit"]: d for d in doc["digits"]}
    assert digits["1 offsite"]["pass"] is False
    assert digits["1 offsite"]["reason"].startswith("no copy lies wholly outside the home site site-")
    assert digits["2 media"]["pass"] is False and digits["1 immutable"]["pass"] is False
    assert doc["copies"][0]["eligible_nodes"] == 4 and doc["copies"][0]["survives_nodes"] == 2
    assert digits["0 errors"]["reason"] == "unknown: no restore test recorded"
    rc, out, err = cluster.hbc("policy", "check", "records", check=1)
    assert "1 immutable" in out and "FAIL" in out


def test_wrapped_keys_of_wrong_length_are_refused(cluster):
    rc, doc, err = cluster.driver("badkeys", vault=None)
    assert doc["code"] == "HBC_EINVAL"
    rc, out, err = cluster.hbc("--json", "vault", "list")
    assert "bad-keys" not in [v["name"] for v in json.loads(out)["vaults"]]


def test_snapshot_commit_is_idempotent(cluster):
    rc, doc, err = cluster.driver("snapshot")
    assert doc["found"] is True and doc["index"] > 0


def test_wrong_passphrase_and_wrong_kek(cluster):
    env = dict(cluster.env, HBC_PASSPHRASE="not the passphrase")
    rc, doc, err = cluster.driver("open", env=env, check=1)
    assert doc["error"] == "HBC_EPASSPHRASE", doc
    # A key file holding another KEK opens, but cannot unwrap the vault's keys.
    other = os.path.join(cluster.root, "keys", "other.key")
    cluster.hbc("key", "init", "--keyfile", other)
    rc, doc, err = cluster.driver("open", keyfile=other, check=1)
    assert doc["error"] == "HBC_EWRONGKEY", doc
    assert "another key file" in doc["message"]
    rc, doc, err = cluster.driver("open", vault="no-such-vault", check=1)
    assert doc["error"] == "HBC_ENOTFOUND"
    # hbc says it too, before any data moves.
    env = dict(cluster.env, HBC_PASSPHRASE="not the passphrase")
    rc, out, err = cluster.hbc("vault", "create", "x", check=1, env=env)
    assert "wrong passphrase" in err


def test_chunks_survive_a_killed_node(cluster):
    rc, doc, err = cluster.driver("--threads", 2, "put", CHUNKS, SEED)
    assert doc["chunks"] == CHUNKS
    print(f"\nput {CHUNKS} chunks ({doc['bytes'] / 1e6:.1f} MB, 3 copies of 2+2 on 4 nodes): "
          f"{doc['mb_s']:.1f} MB/s")
    rc, doc, err = cluster.driver("have", CHUNKS, SEED, 50)
    assert doc["present"] == CHUNKS and doc["absent_reported_present"] == 0
    rc, doc, err = cluster.driver("--threads", 2, "get", CHUNKS, SEED)
    assert doc["mismatches"] == 0 and doc["shard_errors"] == 0
    print(f"get, all nodes up: {doc['mb_s']:.1f} MB/s, {doc['shards_read']} shards read")
    # Every node holds a shard of every copy of every chunk (4 nodes, width 4).

    # Putting again is idempotent.
    rc, doc, err = cluster.driver("put", 5, SEED)

    victim = next(n for n in cluster.nodes if n.name != cluster.leader_name())
    victim.kill9()
    addrs = [n.addr for n in cluster.nodes if n is not victim]

    rc, doc, err = cluster.driver("--threads", 2, "get", CHUNKS, SEED, addrs=addrs)
    assert doc["mismatches"] == 0
    # Roughly half the chunks had a data shard of copy 0 on the dead node: parity filled in.
    assert doc["shard_errors"] > 0
    print(f"get, {victim.name} killed: {doc['mb_s']:.1f} MB/s, {doc['shard_errors']} shard errors recovered")

    # Only copy 2, for a restore test of one copy.
    rc, doc, err = cluster.driver("--copy", 2, "get", CHUNKS, SEED, addrs=addrs)
    assert doc["mismatches"] == 0

    # Writes go on with one node down: each copy still gets k+1 = 3 of its 4 shards.
    rc, doc, err = cluster.driver("put", 20, SEED + 1, addrs=addrs)
    rc, doc, err = cluster.driver("get", 20, SEED + 1, addrs=addrs)
    assert doc["mismatches"] == 0
    rc, doc, err = cluster.driver("have", 20, SEED + 1, 5, addrs=addrs)
    assert doc["present"] == 20 and doc["absent_reported_present"] == 0

    # The dead node is still listed by the cluster: the client's address list may name it first.
    rc, doc, err = cluster.driver("get", 20, SEED)
    assert doc["mismatches"] == 0


def test_policy_vault_places_copies_by_rule(tmp_path):
    """3-2-1-1-0 on 6 nodes: copy 0 on site-a ssd, copy 1 on site-b tape, copy 2 on site-c worm."""
    ca = hbctest.CA(tmp_path)
    layout = [("site-a", "ssd", False), ("site-a", "ssd", False), ("site-b", "tape", False),
              ("site-b", "tape", False), ("site-c", "ssd", True), ("site-c", "ssd", True)]
    c = Cluster(tmp_path, ca, 6, scope="function", layout=layout)
    c.hbc("key", "init")
    rc, out, err = c.hbc("--json", "vault", "create", "records", "--home-site", "site-a")
    doc = json.loads(out)
    assert doc["policy"] == "3-2-1-1-0" and doc["home_site"] == "site-a"
    assert [(r["k"], r["m"]) for r in doc["rules"]] == [(1, 1)] * 3
    assert "2 eligible nodes: using 1+1 instead of 4+2" in err
    rc, out, err = c.hbc("--json", "vault", "list")
    v = json.loads(out)["vaults"][0]
    assert (v["policy"], v["home_site"], v["copies"], v["k"], v["m"]) == ("3-2-1-1-0", "site-a", 3, 1, 1)

    rc, out, err = c.hbc("--json", "policy", "check", "records", check=1)
    digits = {d["digit"]: d for d in json.loads(out)["vaults"][0]["digits"]}
    for d in ("3 copies", "2 media", "1 offsite", "1 immutable"):
        assert digits[d]["pass"] is True, digits[d]
    assert digits["0 errors"]["pass"] is False
    assert digits["0 errors"]["reason"] == "unknown: no restore test recorded"

    rc, doc, err = c.driver("put", 20, SEED)
    rc, doc, err = c.driver("get", 20, SEED)
    assert doc["mismatches"] == 0 and doc["shard_errors"] == 0

    # A passing restore test on record: every digit passes, and the check exits 0.
    c.driver("snapshot")
    rc, out, err = c.hbc("policy", "check", "records")
    assert "PASS" in out and "0 errors     pass" in out, out
    print("\n" + out)

    # Copy 1 lives on the two tape nodes only: without them it cannot be read, copies 0 and 2 can.
    tape = [n for n in c.nodes if n.name in ("n3", "n4")]
    for n in tape:
        n.kill9()
    addrs = [n.addr for n in c.nodes if n not in tape]
    for copy in (0, 2):
        rc, doc, err = c.driver("--copy", copy, "get", 20, SEED, addrs=addrs)
        assert doc["mismatches"] == 0
    rc, doc, err = c.driver("--copy", 1, "get", 20, SEED, addrs=addrs, check=None)
    print(f"\ncopy 1 with its tape nodes down: exit {rc}, {doc}")
    assert rc != 0


@pytest.mark.skipif(not os.environ.get("HBC_BENCH"), reason="set HBC_BENCH=1 to measure")
def test_throughput_three_nodes(tmp_path):
    """Put/get MB/s through client/repo.h on a 3-node cluster (1 copy of 2+1 and 3 copies of 2+1)."""
    ca = hbctest.CA(tmp_path)
    c = Cluster(tmp_path, ca, 3, scope="function")
    c.hbc("key", "init")
    c.hbc("vault", "create", "one", "--copies", "1")
    c.hbc("vault", "create", "three", "--copies", "3")
    mb = int(os.environ.get("HBC_BENCH_MB", "512"))

    def cpu():
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    for vault in ("one", "three"):
        for threads in (1, 2, 4):
            n = mb
            t0 = cpu()
            rc, put, err = c.driver("--threads", threads, "--chunk-size", 1 << 20, "put", n, threads,
                                    vault=vault)
            t1 = cpu()
            rc, get, err = c.driver("--threads", threads, "--chunk-size", 1 << 20, "get", n, threads,
                                    vault=vault)
            t2 = cpu()
            assert get["mismatches"] == 0
            gb = put["bytes"] / 1e9
            print(f"\n{vault} copy(ies), {threads} thread(s), {n} x 1 MiB random chunks: "
                  f"put {put['mb_s']:.0f} MB/s ({(t1 - t0) / gb:.1f} client CPU s/GB), "
                  f"get {get['mb_s']:.0f} MB/s ({(t2 - t1) / gb:.1f} client CPU s/GB)")


def test_put_again_completes_a_half_written_stripe(cluster):
    """A put that failed part-way left shards of one seal; putting the chunk again must finish
    that stripe from its own shards (nodes refuse a different shard under an existing key)."""
    for n in cluster.nodes:
        if n.proc is None or n.proc.poll() is not None:
            n.start()
    cluster.wait_members(4)
    # Vault "small": one copy of 3+1 on 4 nodes, so a put needs all 4 shards durable.
    victim = next(n for n in cluster.nodes if n.name != cluster.leader_name())
    victim.kill9()
    addrs = [n.addr for n in cluster.nodes if n is not victim]
    rc, doc, err = cluster.driver("put", 3, 7, vault="small", addrs=addrs, check=1)
    assert doc["error"] == "HBC_EUNAVAILABLE" and "needs 4" in doc["message"], doc
    victim.start()
    cluster.wait_members(4)
    rc, doc, err = cluster.driver("put", 3, 7, vault="small")
    assert "event=chunk_completed" in err
    rc, doc, err = cluster.driver("get", 3, 7, vault="small")
    assert doc["mismatches"] == 0 and doc["shard_errors"] == 0
