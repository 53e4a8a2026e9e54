"""Crash safety: kill -9 the node 10 times while clients write, restart it each
time; every acknowledged shard is present and intact afterwards, and nothing
torn is ever served.

Each kill comes after a random delay; in every other round it then waits for
the next append to the open segment, so that some kills surely land inside a
group commit (appended, not yet indexed) and the recovery's cut is exercised.

The writers run hbc-shardload in putget mode with --reconnect: every batch is
logged once acknowledged (--ack-log) and read back at once, byte for byte, so
reads of recovered stores happen throughout; requests cut off by a kill are
sent again on a new connection.
"""
import json
import os
import random
import time

import hbctest

ROUNDS = 10


def newest_segment_size(node):
    d = os.path.join(node.data_dir, "shards", "segments")
    names = sorted(n for n in os.listdir(d) if n.endswith(".seg"))
    return (names[-1], os.path.getsize(os.path.join(d, names[-1]))) if names else (None, 0)


def wait_for_append(node, timeout=5.0):
    """Return as soon as the node appends to its newest segment (or after timeout)."""
    first = newest_segment_size(node)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and newest_segment_size(node) == first:
        time.sleep(0.0005)


def test_kill9_ten_times_while_writing(tmp_path, ca):
    rng = random.Random(20240603)
    node = hbctest.Node(tmp_path, ca, "n1").start()
    alice = ca.client("alice")
    ack = str(tmp_path / "ack.log")
    # Far more shards than the rounds take: the writer is stopped after the last round.
    shards = 1000000
    seed = 11
    writer = hbctest.Shardload(node.addr, alice, "--mode", "putget", "--clients", 4, "--pipeline", 4,
                               "--batch", 4, "--shards", shards, "--max", "4M", "--seed", seed,
                               "--ack-log", ack, "--reconnect", 60).start()

    def acked():
        try:
            with open(ack) as f:
                return sum(1 for line in f if line.endswith("\n"))
        except FileNotFoundError:
            return 0

    rounds = []
    t0 = time.monotonic()
    for i in range(ROUNDS):
        # Let the writer (re)connect and get some puts acknowledged, then kill at a random moment.
        before = acked()
        deadline = time.monotonic() + 60
        while acked() < before + 20 and time.monotonic() < deadline:
            if writer.proc.poll() is not None:
                writer.finish()
                raise AssertionError(f"round {i}: the writer exited: " + writer.describe())
            time.sleep(0.05)
        assert acked() >= before + 20, f"round {i}: the writer made no progress"
        time.sleep(rng.uniform(0.3, 1.5))
        if i % 2 == 1:
            # Odd rounds aim at the middle of a group commit: kill as soon as the open segment
            # grows, i.e. between the append and the index batch that makes it durable.
            wait_for_append(node)
        node.kill9()
        node.start()
        started = node.events("hbcd_started", run=-1)
        assert started, node.log_text()[-2000:]
        cuts = [int(e["cut_bytes"]) for e in node.events("store_recover", run=-1)]
        rounds.append({"acked_before_kill": acked(), "cut_bytes": int(started[-1]["recovered_cut_bytes"]),
                       "store_recover_lines": len(cuts), "aimed": i % 2 == 1})
        # The log names each cut: the per-segment lines add up to the total reported at start.
        assert sum(cuts) == rounds[-1]["cut_bytes"], (cuts, started[-1])

    # Some writing on the last restart too, then stop the writer (SIGINT: it drains and reports).
    before = acked()
    deadline = time.monotonic() + 60
    while acked() < before + 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    w = writer.stop()
    assert w is not None, writer.describe()
    assert w["errors"] == 0 and w["mismatches"] == 0 and w["missing"] == 0, writer.describe()
    assert w["reconnects"] >= ROUNDS, "the writer lived through every kill"
    n_acked = acked()
    assert n_acked == w["put_shards"], "one ack log line per acknowledged shard"

    # Every acknowledged shard is present and byte-identical (length and SHA-256 as acknowledged).
    chk = hbctest.Shardload(node.addr, alice, "--mode", "check", "--check", ack, "--clients", 4)
    c = chk.run()
    assert chk.rc == 0, chk.describe()
    assert c["get_shards"] == n_acked and c["missing"] == 0 and c["mismatches"] == 0
    # Every shard ever sent, acknowledged or not, is either absent or intact: nothing torn is served.
    sweep = hbctest.Shardload(node.addr, alice, "--mode", "get", "--allow-missing", "--clients", 4,
                              "--shards", w["attempted_below"], "--max", "4M", "--seed", seed)
    s = sweep.run()
    assert sweep.rc == 0 and s["mismatches"] == 0 and s["errors"] == 0, sweep.describe()
    assert s["get_shards"] >= n_acked
    assert node.events("corrupt_shard_not_served") == [], "no torn record was found by a read"

    cut_rounds = sum(1 for r in rounds if r["cut_bytes"] > 0)
    # The rounds aimed at a commit land between an append and its index batch nearly always; the
    # recovery then cuts (and logs) the unindexed tail.
    assert cut_rounds > 0, rounds
    assert node.stop() == 0
    results = {
        "kill9_rounds": ROUNDS,
        "rounds_with_cut_tail": cut_rounds,
        "cut_bytes_total": sum(r["cut_bytes"] for r in rounds),
        "cut_bytes_per_round": [r["cut_bytes"] for r in rounds],
        "cut_rounds_among_aimed": sum(1 for r in rounds if r["aimed"] and r["cut_bytes"] > 0),
        "acked_shards": n_acked,
        "shards_present_unacked": s["get_shards"] - n_acked,
        "writer_retried_shards": w["retried"],
        "writer_reconnects": w["reconnects"],
        "test_seconds": round(time.monotonic() - t0, 1),
    }
    path = hbctest.write_results("crash", results)
    print(f"\ncrash: {json.dumps(results)}\n(written to {path})")
