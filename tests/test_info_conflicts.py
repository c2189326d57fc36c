"""INFO ctx's "conflicts" section: conflicts by cause, the version-lag histogram and the hottest
keys by conflicts (docs/PROTOCOL.md, "Module arguments and INFO"). Module only: the Lua engine
has no server metrics. Each test starts its own server, so the figures start at zero."""

from __future__ import annotations

import pytest

from helpers import assert_error
from wire import f_varint

LAG_BOUNDS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]


def info_text(server) -> bytes:
    with server.raw() as c:
        return c.call("INFO", "ctx")


def info_ctx(server) -> dict[str, str]:
    text = info_text(server).decode()
    out = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k] = v
    return out


def hot_keys(info: dict[str, str]) -> list[dict[str, str]]:
    """The hotkey_<i> entries in order: key=...,len=...,conflicts=...,error=..."""
    out = []
    i = 0
    while f"ctx_hotkey_{i}" in info:
        out.append(dict(kv.split("=", 1) for kv in info[f"ctx_hotkey_{i}"].split(",")))
        i += 1
    return out


def unescape(s: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(s):
        if s[i] == "\\":
            assert s[i + 1] == "x", s
            out.append(int(s[i + 2:i + 4], 16))
            i += 4
        else:
            out += s[i].encode()
            i += 1
    return bytes(out)


class Raw:
    """Raw CTX.* commands on one server (what tests/backends.py sends for the module)."""

    def __init__(self, server, pb):
        self.server = server
        self.r = server.r
        self.pb = pb
        self.r.execute_command("CTX.SCHEMA.SET", "order", "ctxlink.example.Order",
                               pb.fds("order"))
        self.r.execute_command("CTX.SCHEMA.SET", "other", "ctxlink.example.Order",
                               pb.fds("order"))

    def cas(self, key, expected, version=None, **opts):
        args = ["CTX.CAS", key, expected, self.pb.order(expected + 1 if version is None
                                                        else version)]
        for k, v in opts.items():
            args += [k.upper(), v]
        return self.r.execute_command(*args)

    def create(self, key, versions=1):
        assert self.cas(key, 0, schema="order") == 1
        for v in range(1, versions):
            assert self.cas(key, v) == v + 1

    def patch(self, key, base, fields, reads=()):
        payload = b"".join(f_varint(f, 1) for f in fields)
        return self.r.execute_command("CTX.PATCH", key, base, payload, "FIELDS", len(fields),
                                      *fields, "READS", len(reads), *reads)


@pytest.fixture
def raw(servers, pb):
    return Raw(servers.start_module(), pb)


def causes(info):
    return {c: int(info[f"ctx_conflicts_{c}"])
            for c in ("stale_version", "changed_field", "changed_read", "schema")}


def test_info_ctx_has_a_conflicts_section_with_every_field_at_zero(raw):
    text = info_text(raw.server).decode()
    assert "# ctx_conflicts" in text, text
    info = info_ctx(raw.server)
    assert causes(info) == dict.fromkeys(causes(info), 0)
    for b in LAG_BOUNDS:
        assert info[f"ctx_conflict_lag_le_{b}"] == "0"
    for name in ("le_inf", "sum", "ahead"):
        assert info[f"ctx_conflict_lag_{name}"] == "0"
    assert hot_keys(info) == []


def test_each_conflict_is_counted_under_its_cause(raw):
    raw.create("k", 3)                                        # version 3
    assert raw.cas("k", 1) is not None                        # stale version (CAS)
    assert raw.r.execute_command("CTX.DEL", "k", 2) is not None  # stale version (DEL)
    assert raw.r.execute_command("CTX.DEL", "none", 1) is None   # stale: no context
    assert raw.patch("k", 3, [4])[0] == 4                     # field 4 changed at version 4
    assert raw.patch("k", 3, [4])[6] == [4]                   # changed field
    assert raw.patch("k", 3, [5], reads=[4])[6] == [4]        # changed read (only READS)
    assert raw.patch("k", 3, [4], reads=[4])[6] == [4]        # a field both: changed field
    assert raw.patch("k", 4, [6])[0] == 5                     # no conflict: disjoint fields
    assert_error("CTXSCHEMA", raw.cas, "k", 5, schema="other")  # schema mismatch, existing
    assert_error("CTXSCHEMA", raw.cas, "new", 0, schema="nosuch")  # create: not a conflict
    assert_error("CTXSCHEMA", raw.r.execute_command, "CTX.PATCH", "k", 5, f_varint(4, 2),
                 "FIELDS", 1, 4, "SCHEMA", "other")        # schema mismatch on a patch
    info = info_ctx(raw.server)
    assert causes(info) == {"stale_version": 3, "changed_field": 2, "changed_read": 1,
                            "schema": 2}
    # the version causes are the conflicts INFO ctx already counted
    assert int(info["ctx_cas_conflicts"]) == 6


def test_lag_histogram_has_cumulative_power_of_two_buckets(raw):
    raw.create("k", 1)
    for v in range(1, 130):
        raw.cas("k", v)
    cur = 130
    lags = [1, 3, 4, 100, 129]
    for lag in lags:
        assert raw.cas("k", cur - lag) is not None
    assert raw.patch("k", cur, [4])[0] == cur + 1            # not a conflict
    cur += 1
    assert raw.patch("k", cur - 1, [4])[6] == [4]            # field conflict, lag 1
    lags.append(1)
    assert raw.cas("k", cur + 7) is not None                 # ahead: outside the histogram
    assert raw.r.execute_command("CTX.DEL", "gone", 3) is None  # ahead too (no context)
    info = info_ctx(raw.server)
    for b in LAG_BOUNDS:
        assert int(info[f"ctx_conflict_lag_le_{b}"]) == sum(lag <= b for lag in lags), b
    assert int(info["ctx_conflict_lag_le_inf"]) == len(lags)
    assert int(info["ctx_conflict_lag_sum"]) == sum(lags)
    assert int(info["ctx_conflict_lag_ahead"]) == 2


def test_lags_over_1024_are_counted_in_le_inf_only(raw):
    raw.create("k", 1)
    pipe = raw.r.pipeline(transaction=False)
    for v in range(1, 1300):
        pipe.execute_command("CTX.CAS", "k", v, raw.pb.order(v + 1))
    assert pipe.execute()[-1] == 1300
    assert raw.cas("k", 1) is not None                       # lag 1299
    info = info_ctx(raw.server)
    assert info["ctx_conflict_lag_le_1024"] == "0"
    assert info["ctx_conflict_lag_le_inf"] == "1"
    assert info["ctx_conflict_lag_sum"] == "1299"


def test_the_hottest_keys_come_first_with_their_counts(raw):
    for key, n in (("hot", 9), ("warm", 4), ("cool", 1)):
        raw.create(key, 2)
        for _ in range(n):
            assert raw.cas(key, 1) is not None
    hot = hot_keys(info_ctx(raw.server))
    assert [(h["key"], h["conflicts"], h["error"], h["len"]) for h in hot] == [
        ("hot", "9", "0", "3"), ("warm", "4", "0", "4"), ("cool", "1", "0", "4")]


def test_hot_keys_stay_16_and_a_heavy_hitter_is_kept(raw):
    """Space-saving: at most 16 entries whatever the number of keys; a key with more than
    total/16 conflicts is always among them, its count over the truth by at most `error`."""
    raw.create("heavy", 2)
    pipe = raw.r.pipeline(transaction=False)
    heavy = 0
    for i in range(400):
        pipe.execute_command("CTX.DEL", f"cold:{i}", 1)      # 400 keys with one conflict each
        if i % 4 == 0:
            pipe.execute_command("CTX.CAS", "heavy", 0, raw.pb.order(1))
            heavy += 1
    pipe.execute()
    hot = hot_keys(info_ctx(raw.server))
    assert len(hot) == 16
    assert hot[0]["key"] == "heavy"
    count, error = int(hot[0]["conflicts"]), int(hot[0]["error"])
    assert count - error <= heavy <= count
    assert sum(int(h["conflicts"]) for h in hot) == 400 + heavy  # the sketch's invariant
    counts = [int(h["conflicts"]) for h in hot]
    assert counts == sorted(counts, reverse=True)


def test_key_names_are_escaped_and_cut_to_128_bytes(raw):
    odd = b"a b,c=d:e\r\nf\x00\"g\\h\xc3\xa9"
    long = b"L" * 300
    for key in (odd, long):
        assert raw.r.execute_command("CTX.DEL", key, 1) is None
    text = info_text(raw.server)
    assert b"\x00" not in text and b"\xc3" not in text
    hot = hot_keys(info_ctx(raw.server))
    assert len(hot) == 2
    by_len = {int(h["len"]): h for h in hot}
    assert unescape(by_len[len(odd)]["key"]) == odd
    assert by_len[len(odd)]["key"] == (
        "a\\x20b\\x2cc\\x3dd\\x3ae\\x0d\\x0af\\x00\\x22g\\x5ch\\xc3\\xa9")
    assert by_len[300]["key"] == "L" * 128


def test_long_keys_with_one_prefix_are_told_apart(raw):
    a, b = b"P" * 200 + b"a", b"P" * 200 + b"b"
    for key, n in ((a, 3), (b, 2)):
        for _ in range(n):
            raw.r.execute_command("CTX.DEL", key, 1)
    hot = hot_keys(info_ctx(raw.server))
    assert [(h["key"], h["conflicts"]) for h in hot] == [("P" * 128, "3"), ("P" * 128, "2")]


def test_config_resetstat_does_not_reset_them(raw):
    """Documented: Redis tells a module nothing on CONFIG RESETSTAT."""
    raw.r.execute_command("CTX.DEL", "k", 1)
    raw.r.execute_command("CONFIG", "RESETSTAT")
    info = info_ctx(raw.server)
    assert info["ctx_conflicts_stale_version"] == "1"
    assert len(hot_keys(info)) == 1


def test_hot_key_memory_is_bounded(raw):
    """Thousands of distinct long keys: the module's memory after the first 16 does not grow."""
    def used() -> int:
        return int(raw.r.info("memory")["used_memory"])

    def conflicts(fill: str, n: int) -> None:
        for start in range(0, n, 50):
            pipe = raw.r.pipeline(transaction=False)
            for i in range(start, start + 50):
                pipe.execute_command("CTX.DEL", f"{i:04d}" + fill * 500, 1)
            pipe.execute()

    conflicts("x", 100)
    before = used()
    conflicts("y", 3000)  # 3000 new keys: 384 KB if each kept its 128 bytes
    assert used() - before < 128 * 1024
    assert len(hot_keys(info_ctx(raw.server))) == 16
