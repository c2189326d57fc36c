"""The Lua engine's scripts: assembled from the shipped ``lua/*.lua`` files and, for ``cas``, the
schema's validation plan generated here by the C core (docs/PROTOCOL.md, "The validation plan").

A script is ``<the body's #!lua line> + prelude.lua + [plan] + <the body>``, with the header
blocks, comments and unneeded blanks left out and local names shortened
(:func:`shorten_names`: the largest plan scripts stay well under 32 KiB). The plan comes from
``ctx_Schema_LuaPlan`` run on the descriptor set the SDK read from the registry as data: the SDK
never runs code it read from Redis.
Everything here is pure (no I/O besides reading the shipped files once).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ctxlink._cache import LRU

__all__ = [
    "FLAVORS",
    "SCRIPT_NAMES",
    "Script",
    "assemble",
    "entry_script",
    "error_plan",
    "find_lua_dir",
    "load_scripts",
    "lua_quote",
    "plan_fragment",
    "plan_script",
    "null_plan_script",
]

#: The scripts the SDK runs (``lua/<name>.lua``); ``prelude.lua`` is part of each.
SCRIPT_NAMES = (
    "get", "cas", "del", "touch", "schema_set", "schema_get", "schema_list", "schema_del"
)
PRELUDE = "prelude"
#: Parts of cas.lua kept in files of their own (split by concept), put in place of its
#: ``-- [include <part>]`` lines: the fast walk, CTX.PATCH's splice, the validation walk, the
#: history entry (docs/PROTOCOL.md, "History"), the wait channel's publish.
PARTS = ("cas_fastwalk", "cas_splice", "cas_walk", "cas_history", "wait_publish")

#: How many generated plan scripts one process keeps (each is a few KiB for common schemas).
PLAN_CACHE_SIZE = 128
#: How many bytes of plan scripts one process keeps: a huge schema's plan runs to megabytes
#: (a 10,000-message schema: 2.6 MB), so the count alone does not bound the cache.
PLAN_CACHE_BYTES = 32 << 20

#: ``PLAN_ERR`` of an entry whose content does not hash to its digest (the module's text; the
#: script puts the schema name at ``%s``).
DAMAGED = (
    "registry entry for schema '%s' is damaged (edited outside CTX.SCHEMA.SET?); "
    "register the schema again"
)


@dataclass(frozen=True)
class Script:
    """One script as sent to Redis: its name, its source and the SHA-1 EVALSHA uses."""

    name: str
    source: bytes
    sha: str

    @classmethod
    def of(cls, name: str, source: bytes) -> "Script":
        return cls(name, source, hashlib.sha1(source).hexdigest())

    def without_shebang(self) -> "Script":
        """The script for Redis 6.2, which does not know the ``#!lua flags=...`` line (7.0+):
        the line becomes a comment, so line numbers in error messages stay the same."""
        if not self.source.startswith(b"#!"):
            return self
        first, _, rest = self.source.partition(b"\n")
        return Script.of(self.name, b"-- " + first[2:] + b"\n" + rest)


def find_lua_dir() -> Optional[Path]:
    """Where the scripts are: ``ctxlink/lua`` inside an installed package, else ``<repo>/lua``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "lua", here.parents[1] / "lua"):
        if all((candidate / f"{n}.lua").is_file() for n in (*SCRIPT_NAMES, PRELUDE, *PARTS)):
            return candidate
    return None


def _word(c: str) -> bool:
    return c.isalnum() or c == "_"


def _keep_space(a: str, b: str) -> bool:
    """Whether the blank between the characters ``a`` and ``b`` (outside strings) is needed:
    between two word characters, in ``- -`` (a comment), ``[ [`` / ``[ =`` (a long bracket),
    and next to a ``.`` whose other side is a digit or a ``.`` (a number, ``..``)."""
    if _word(a) and _word(b):
        return True
    if a == "-" and b == "-":
        return True
    if a == "[" and b in "[=":
        return True
    if a == "." or b == ".":
        other = b if a == "." else a
        return other.isdigit() or other == "."
    return False


def _squeeze(line: str) -> str:
    """``line`` without the blanks Lua does not need (outside string literals): the assembled
    scripts stay well under 32 KiB. A line holding a long bracket is left as it is."""
    if "[[" in line or "[=" in line:
        return line
    out: list[str] = []
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c in "'\"":  # a string literal, copied as it is
            j = i + 1
            while j < n and line[j] != c:
                j += 2 if line[j] == "\\" else 1
            out.append(line[i:j + 1])
            i = j + 1
            continue
        if c == " ":
            j = i
            while j < n and line[j] == " ":
                j += 1
            prev = out[-1][-1] if out and out[-1] else ""
            nxt = line[j] if j < n else ""
            if prev and nxt and _keep_space(prev, nxt):
                out.append(" ")
            i = j
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _cut_comment(line: str) -> str:
    """``line`` without a trailing ``-- comment`` when no quote comes before it."""
    at = line.find(" --")
    if at < 0 or "'" in line[:at] or '"' in line[:at] or "[[" in line[:at]:
        return line
    return line[:at].rstrip()


def _strip(text: str) -> tuple[str, str]:
    """(the ``#!`` line or "", the code): header blocks (``--[[`` to ``]]`` at a line start),
    comment-only and blank lines dropped, indentation and trailing blanks cut (no script holds a
    multi-line string)."""
    lines = text.splitlines()
    shebang = lines.pop(0) if lines and lines[0].startswith("#!") else ""
    out: list[str] = []
    in_block = False
    for line in lines:
        bare = line.strip()
        if in_block:
            in_block = "]]" not in bare
            continue
        if bare.startswith("--[["):
            in_block = "]]" not in bare[4:]
            continue
        if not bare or bare.startswith("--"):
            continue
        out.append(_squeeze(_cut_comment(bare)))
    return shebang, "".join(f"{line}\n" for line in out)


#: The flavors of cas.lua: one script per command, each without the other's regions.
FLAVORS = ("cas", "patch")


def _cut_regions(text: str, other: str) -> str:
    """``text`` without the lines from ``-- [<other>]`` to ``-- [/<other>]`` (markers included)."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        bare = line.strip()
        if bare == f"-- [{other}]":
            skipping = True
        elif bare == f"-- [/{other}]":
            skipping = False
        elif not skipping:
            out.append(line)
    return "".join(out)


def _include(body: str, parts: Mapping[str, str]) -> str:
    """``body`` with each ``-- [include <part>]`` line replaced by that part's text."""
    out: list[str] = []
    for line in body.splitlines(keepends=True):
        bare = line.strip()
        if bare.startswith("-- [include ") and bare.endswith("]"):
            out.append(parts[bare[len("-- [include ") : -1]])
        else:
            out.append(line)
    return "".join(out)


_FUNCTION = re.compile(r"^local function (\w+)\(.*?^end$\n?", re.M | re.S)


def _used_prelude(prelude: str, rest: str) -> str:
    """``prelude`` without its top-level ``local function`` blocks (``local function <name>(``
    to the next ``end`` at a line start) that ``rest`` does not name, directly or through
    another block it keeps: a closure is made on every call of a script."""
    blocks = {m.group(1): m for m in _FUNCTION.finditer(prelude)}
    outside = _strip(_FUNCTION.sub("", prelude))[1] + rest  # comments do not count
    words = set(re.findall(r"\w+", outside))
    keep = {name for name in blocks if name in words}
    todo = list(keep)
    while todo:
        for word in set(re.findall(r"\w+", blocks[todo.pop()].group())):
            if word in blocks and word not in keep:
                keep.add(word)
                todo.append(word)
    return _FUNCTION.sub(lambda m: m.group() if m.group(1) in keep else "", prelude)


def assemble(
    body: str,
    prelude: str,
    plan: str = "",
    flavor: Optional[str] = None,
    parts: Optional[Mapping[str, str]] = None,
) -> bytes:
    """One script: the body's ``#!lua`` line, the prelude, the plan fragment, the body (its
    ``-- [include <part>]`` lines replaced by ``parts``). With a ``flavor`` (cas.lua: "cas" or
    "patch") the body's regions of the other flavor are left out and ``FLAVOR`` is defined."""
    body = _include(body, parts or {})
    if flavor is not None:
        body = _cut_regions(body, "patch" if flavor == "cas" else "cas")
        plan += f"local FLAVOR = '{flavor}'\n"
    shebang, code = _strip(body)
    pre, code = _short_parts(_strip(_used_prelude(prelude, code))[1], code)
    head = f"{shebang}\n" if shebang else ""
    return (head + pre + plan + code).encode()


#: Every name a plan fragment uses (ctx_luaplan.c and error_plan(); checked by a test): the
#: renaming of the prelude and the body keeps them and never picks them.
PLAN_NAMES = frozenset({
    "PLAN_DIGEST", "PLAN_ERR", "TYPE", "VF", "VK", "ANY_REQ", "FLAVOR", "plan", "ref", "enum_ok",
    "missing_req", "mi", "ei", "n", "v", "node",
})


@lru_cache(maxsize=64)
def _short_parts(pre: str, code: str) -> tuple[str, str]:
    """The prelude and the body, renamed together (:func:`shorten_names`) around a plan that is
    not: a plan runs to megabytes for huge schemas, the fixed parts to a few KiB."""
    out = _shorten([pre, code], PLAN_NAMES)
    return out[0], out[1]


# --------------------------------------------------------------------------- short local names

_KEYWORDS = frozenset(
    "and break do else elseif end false for function if in local nil not or repeat return "
    "then true until while".split()
)
#: Globals the scripts use (Lua's and Redis'): never renamed, never picked as a short name.
_GLOBALS = frozenset(
    "ARGV KEYS redis string math table bit struct cjson cmsgpack type tonumber tostring pairs "
    "ipairs unpack select error pcall assert next rawget rawset rawequal setmetatable "
    "getmetatable os _G".split()
)
#: Names tests look for in assembled scripts, kept as written.
_KEEP = frozenset({"fwalk", "read_ctx", "mode", "ANY_REQ", "PLAN_DIGEST", "PLAN_ERR"})

_TOKEN = re.compile(
    r"(?P<str>'(?:\\.|[^'\\\n])*'|\"(?:\\.|[^\"\\\n])*\")"
    r"|(?P<com>--[^\n]*)"
    r"|(?P<num>0[xX][0-9A-Fa-f]+|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"
    r"|(?P<name>[A-Za-z_]\w*)"
    r"|(?P<other>\.\.\.?|[\s\S])"
)
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SHORT = [*_LETTERS, *(a + b for a in _LETTERS for b in _LETTERS + "0123456789_")]


def _declared(toks: list[tuple[str, str]], sig: list[int]) -> tuple[set[str], set[str]]:
    """(names declared as locals, parameters or loop variables; names also used as table
    constructor keys, ``{x=`` / ``,x=`` inside braces, which must keep their spelling)."""
    declared: set[str] = set()
    keys: set[str] = set()
    depth = 0
    state = ""  # "local", "for", "fname" (after `function`), "params"
    for j, i in enumerate(sig):
        kind, text = toks[i]
        before = toks[sig[j - 1]][1] if j > 0 else ""
        after = toks[sig[j + 1]][1] if j + 1 < len(sig) else ""
        if kind != "name":
            depth += 1 if text == "{" else -1 if text == "}" else 0
            if state == "params" and text == ")" or state in ("local", "for") and text != ",":
                state = ""
            continue
        if before in (".", ":"):
            continue
        if depth > 0 and after == "=" and before in ("{", ","):
            keys.add(text)
        if text in ("local", "for"):
            state = text
        elif text == "function":
            state = "params" if after == "(" else "fname"
        elif state == "fname":
            state = "params" if after == "(" else ""
            if j > 1 and toks[sig[j - 2]][1] == "local":
                declared.add(text)
        elif state in ("local", "for", "params"):
            if text not in _KEYWORDS:
                declared.add(text)
            if state != "params" and after != ",":
                state = ""
    return declared, keys


def shorten_names(code: str) -> str:
    """``code`` with its local names (locals, parameters, loop variables) renamed to the
    shortest names it does not use, the most bytes saved first, and its comments dropped:
    strings, table fields (``a.b``, ``a:b``, ``{b = ...}``), globals and a few names tests look
    for keep their spelling. Each name is renamed everywhere it is a variable, so scopes and
    shadowing stay as written. Left as it is when a long bracket (``[[``, ``[=``) appears."""
    return _shorten([code], frozenset())[0]


def _shorten(parts: list[str], keep: frozenset[str]) -> list[str]:
    """:func:`shorten_names` of ``"".join(parts)`` (each part ends at a line end), returned part
    by part; the names in ``keep`` are neither renamed nor picked."""
    code = "".join(parts)
    if "[[" in code or "[=" in code:
        return parts
    toks = [(m.lastgroup or "", m.group()) for m in _TOKEN.finditer(code)]
    sig = [i for i, (k, t) in enumerate(toks) if not (k == "other" and t.isspace())]
    declared, keys = _declared(toks, sig)
    field = set()
    for j, i in enumerate(sig):
        if j > 0 and toks[i][0] == "name" and toks[sig[j - 1]][1] in (".", ":"):
            field.add(i)
    counts: dict[str, int] = {}
    for i, (kind, text) in enumerate(toks):
        if kind == "name" and i not in field and text in declared and len(text) > 1:
            counts[text] = counts.get(text, 0) + 1
    for bad in (keys | _GLOBALS | _KEEP | _KEYWORDS | keep):
        counts.pop(bad, None)
    taken = {t for k, t in toks if k == "name"} | keep
    free = (s for s in _SHORT if s not in taken and s not in _KEYWORDS)
    new: dict[str, str] = {}
    short = next(free, None)
    for name in sorted(counts, key=lambda t: (-counts[t] * len(t), t)):
        if short is None or len(short) >= len(name):
            continue
        new[name] = short
        short = next(free, None)
    ends = []
    at = 0
    for part in parts:
        at += len(part)
        ends.append(at)
    out: list[list[str]] = [[] for _ in parts]
    k = pos = 0
    for i, (kind, text) in enumerate(toks):
        while k < len(ends) - 1 and pos >= ends[k]:
            k += 1
        pos += len(text)
        if kind == "com":
            continue
        out[k].append(new.get(text, text) if kind == "name" and i not in field else text)
    return ["".join(o) for o in out]


@lru_cache(maxsize=4)
def _sources(directory: Path) -> dict[str, str]:
    return {n: (directory / f"{n}.lua").read_text() for n in (*SCRIPT_NAMES, PRELUDE, *PARTS)}


def _dir(directory: Optional[Path]) -> Path:
    found = directory or find_lua_dir()
    if found is None:
        from ctxlink._exceptions import EngineError

        raise EngineError("the Lua scripts (lua/*.lua) were not found next to the ctxlink package")
    return found


def load_scripts(directory: Optional[Path] = None) -> dict[str, Script]:
    """The fixed scripts, assembled. ``cas`` needs a plan: see :func:`plan_script`."""
    src = _sources(_dir(directory))
    parts = {n: src[n] for n in PARTS}  # del.lua includes wait_publish
    return {
        n: Script.of(n, assemble(src[n], src[PRELUDE], parts=parts))
        for n in SCRIPT_NAMES
        if n != "cas"
    }


def lua_quote(text: Union[str, bytes]) -> str:
    """A Lua string literal of ``text`` (str: its UTF-8): every byte outside
    ``[A-Za-z0-9_.:-]`` as a three-digit decimal escape, as ctx_luaplan.c writes them."""
    raw = text.encode() if isinstance(text, str) else bytes(text)
    return "'" + "".join(chr(b) if b in _PLAIN else f"\\{b:03d}" for b in raw) + "'"


_PLAIN = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")


def error_plan(digest: Union[str, bytes], message: str) -> str:
    """The plan of an entry the SDK cannot make a plan from: any write answers ``CTXSCHEMA
    <message>`` (``%s``: the schema name) once the entry's digest is ``digest`` ("" for an
    entry without one, or none)."""
    return (
        f"local PLAN_DIGEST = {lua_quote(digest)}\n"
        f"local PLAN_ERR = {lua_quote(message)}\n"
        "local TYPE, VF, VK, ANY_REQ = '', 0, 'int64', false\n"
        "local function plan(mi) return '', '', false, '' end\n"
        "local function ref(mi, n) end\n"
        "local function enum_ok(ei, v) return false end\n"
        "local function missing_req(mi, node) end\n"
    )


def plan_fragment(schema: Any, digest: str) -> str:
    """The validation plan of a compiled schema (a ``ctx_Schema*`` or an object holding one in
    ``_ptr``), tied to the registry digest ``digest``, from ``ctx_Schema_LuaPlan``."""
    from ctxlink._native import ffi, lib, raise_status

    ptr = getattr(schema, "_ptr", schema)
    out = ffi.new("char**")
    out_len = ffi.new("size_t*")
    status = ffi.new("ctx_Status*")
    if not lib.ctx_Schema_LuaPlan(ptr, digest.encode("ascii"), out, out_len, status):
        raise_status(status)
    try:
        return bytes(ffi.buffer(out[0], out_len[0])).decode()
    finally:
        lib.ctx_free(out[0])


def _compile_entry(type_name: bytes, fds: bytes, vfield: bytes) -> tuple[Any, str]:
    """(the ``ctx_Schema*`` of an entry's content, "") or (None, why it does not compile), as
    the module compiles a registry entry (``ctx_Schema_Build``, no size limit)."""
    from ctxlink._native import NO_SCHEMA_LIMIT, ffi, lib

    status = ffi.new("ctx_Status*")
    ptr = lib.ctx_Schema_Build(fds, len(fds), type_name, len(type_name), vfield, len(vfield),
                               NO_SCHEMA_LIMIT, status)
    if ptr == ffi.NULL:
        return None, ffi.string(status.msg).decode("utf-8", "replace")
    return ffi.gc(ptr, lib.ctx_Schema_Free), ""


def _digest(type_name: bytes, vfield: bytes, fds: bytes) -> str:
    """``ctx_Digest`` of an entry's content, as bytes (a hand-edited entry need not be UTF-8)."""
    from ctxlink._native import ffi, lib

    out = ffi.new("char[41]")
    lib.ctx_Digest(type_name, len(type_name), vfield, len(vfield), fds, len(fds), out)
    return str(ffi.string(out).decode("ascii"))


def entry_script(
    type_name: Optional[bytes],
    fds: Optional[bytes],
    vfield: Optional[bytes],
    digest: Optional[bytes],
    flavor: str = "cas",
    directory: Optional[Path] = None,
) -> Script:
    """cas.lua (``flavor`` "cas" or "patch") for a registry entry as read (``HMGET <entry>
    type fds vfield digest``; all None: no entry). The entry's content must hash to its digest
    (``ctx_Digest``), as the module checks whenever it loads an entry: else the script answers
    the module's "damaged" error; an entry that does not compile answers the module's "does not
    compile" error; otherwise it carries the entry's plan (cached by digest)."""
    if digest is None:
        return null_plan_script("", DAMAGED, flavor, directory)
    if type_name is None or fds is None or vfield is None:
        return null_plan_script(digest, DAMAGED, flavor, directory)
    hex_digest = digest.decode("latin-1")
    if _digest(type_name, vfield, fds) != hex_digest:
        return null_plan_script(digest, DAMAGED, flavor, directory)
    cached = _PLANS.get(("plan", hex_digest, flavor, directory))
    if cached is not None:
        return cached
    schema, why = _compile_entry(type_name, fds, vfield)
    if schema is None:
        text = "registry entry for schema '%s' does not compile: " + why.replace("%", "%%")
        return null_plan_script(digest, text, flavor, directory)
    return plan_script(schema, hex_digest, flavor, directory)


def _source_bytes(script: Script) -> int:
    return len(script.source)


#: Plan scripts by what they were made from, bounded in count and in bytes of source.
_PLANS: LRU[tuple[Any, ...], Script] = LRU(
    PLAN_CACHE_SIZE, max_weight=PLAN_CACHE_BYTES, weight=_source_bytes
)


def _cas_script(plan: str, flavor: str, directory: Optional[Path]) -> Script:
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be 'cas' or 'patch', not {flavor!r}")
    src = _sources(_dir(directory))
    parts = {n: src[n] for n in PARTS}
    return Script.of(flavor, assemble(src["cas"], src[PRELUDE], plan, flavor, parts))


def plan_script(
    schema: Any, digest: str, flavor: str = "cas", directory: Optional[Path] = None
) -> Script:
    """cas.lua (``flavor`` "cas" or "patch") with the plan of ``schema`` (compiled from the
    registry entry whose content hashes to ``digest``: the caller checked that). Cached by
    digest: a digest names one definition."""
    key = ("plan", digest, flavor, directory)
    script = _PLANS.get(key)
    if script is None:
        script = _cas_script(plan_fragment(schema, digest), flavor, directory)
        _PLANS.put(key, script)
    return script


def null_plan_script(
    digest: Union[str, bytes] = "",
    message: str = DAMAGED,
    flavor: str = "cas",
    directory: Optional[Path] = None,
) -> Script:
    """``cas`` for an entry without a plan: none was found (``digest`` ""; the script answers
    "unknown schema", or "stale" once one exists), or it is damaged or does not compile
    (``message``)."""
    key = ("error", digest, message, flavor, directory)
    script = _PLANS.get(key)
    if script is None:
        script = _cas_script(error_plan(digest, message), flavor, directory)
        _PLANS.put(key, script)
    return script
