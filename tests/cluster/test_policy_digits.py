"""The 3-2-1-1-0 digits follow the topology: with the worm nodes removed the immutable digit
fails and says so; with every node in one site the offsite digit fails, and creating a vault
under the built-in policy is refused naming the rule and what is missing.
"""
import os

import hbctest
import placetest

SIX = [("n1", "site-a", "ssd", False), ("n2", "site-a", "ssd", False),
       ("n3", "site-b", "hdd", False), ("n4", "site-b", "hdd", False),
       ("n5", "site-c", "hdd", True), ("n6", "site-c", "hdd", True)]


def test_worm_nodes_removed_fails_immutable(tmp_path, ca):
    nodes = placetest.start_cluster(tmp_path, ca, SIX)
    by = {n.name: n for n in nodes}
    hbc = placetest.Hbc(tmp_path, ca, [n.addr for n in nodes])
    placetest.wait_members(hbc, 6)
    hbc.run("key", "init", "--keyfile", hbc.env["HBC_KEYFILE"])
    hbc.run("vault", "create", "records", "--home-site", "site-a")
    src = os.path.join(tmp_path, "src")
    placetest.make_tree(src, files=10)
    hbc.run("backup", src, "--vault", "records")
    rc, doc, _ = hbc.json("policy", "check", "records", check=False)
    d = placetest.digits(doc)
    for name in ("3 copies", "2 media", "1 offsite", "1 immutable"):
        assert d[name][0], (name, d)

    # Take both worm nodes out: stopped, then removed (they are up in the epoch: --force).
    st = placetest.wait_members(hbc, 6)
    live = [n for n in nodes if n.name not in ("n5", "n6")]
    hbc.set_cluster([n.addr for n in live])
    for name in ("n5", "n6"):
        assert name != hbctest.leader_name(st), "the bootstrap node leads; n5/n6 must not"
        rc, out, err = hbc.json("cluster", "remove", name, check=False)
        assert rc != 0 and out["code"] == "HBC_ENOTDRAINED" and "drain" in out["message"], out
        assert by[name].stop() == 0
        rc, out, err = hbc.json("cluster", "remove", name, "--force", check=False)
        assert rc == 0 and out["removed"], (out, err)
        assert "warning" in err
    placetest.wait_members(hbc, 4)
    rc, doc, _ = hbc.json("policy", "check", "records", check=False)
    assert rc != 0, doc
    d = placetest.digits(doc)
    assert not d["1 immutable"][0], d
    assert "worm" in d["1 immutable"][1], d["1 immutable"]
    assert d["1 offsite"][0] and d["2 media"][0], d
    _, out, _ = hbc.run("policy", "check", "records", check=False)
    assert "1 immutable" in out and "FAIL" in out, out


def test_one_site_fails_offsite(tmp_path, ca):
    plan = [("a1", "site-a", "ssd", False), ("a2", "site-a", "hdd", False),
            ("a3", "site-a", "hdd", True)]
    nodes = placetest.start_cluster(tmp_path, ca, plan)
    hbc = placetest.Hbc(tmp_path, ca, [n.addr for n in nodes])
    placetest.wait_members(hbc, 3)
    hbc.run("key", "init", "--keyfile", hbc.env["HBC_KEYFILE"])
    # The built-in policy cannot be met: the refusal names the copy's rule and what is missing.
    rc, out, err = hbc.run("vault", "create", "records", "--home-site", "site-a", check=False)
    assert rc != 0
    assert "copy 1 (offsite" in err and "outside site-a" in err, err
    # A vault without rules can be made; its offsite digit fails and says why.
    hbc.run("vault", "create", "plain", "--policy", "none", "--copies", "2", "--k", "1",
            "--m", "1")
    rc, doc, _ = hbc.json("policy", "check", "plain", check=False)
    assert rc != 0
    d = placetest.digits(doc)
    assert not d["1 offsite"][0], d
    assert "site-a" in d["1 offsite"][1], d["1 offsite"]
