"""The README's SDK example and redis-cli session run as written and print what they show."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from ctxlink.embedded import find_module, free_port
from sdk_support import REPO  # type: ignore[import-not-found]


def _env() -> dict[str, str]:
    """The environment with this checkout's SDK first on the path (whatever .venv installed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "sdk"), env.get("PYTHONPATH", "")) if p
    )
    return env


def test_readme_sdk_example_runs_as_written() -> None:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no python example"
    example = blocks[0]
    assert len(example.strip().splitlines()) <= 11
    out = subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, cwd=REPO, timeout=60,
        env=_env(),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "1000", "pricing"]


def _cli_session() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of the README's redis-cli session, in order."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Use it from redis-cli") :]
    block = re.search(r"```console\n(.*?)```", section, flags=re.S)
    assert block, "README.md has no redis-cli session"
    steps: list[tuple[str, list[str]]] = []
    lines = block.group(1).splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        assert line.startswith("$ "), f"README session: expected a command, got {line!r}"
        cmd = [line[2:]]
        i += 1
        heredoc = re.search(r"<<'(\w+)'", line)
        if heredoc:  # the here-document belongs to the command
            while lines[i] != heredoc.group(1):
                cmd.append(lines[i])
                i += 1
            cmd.append(lines[i])
            i += 1
        out = []
        while i < len(lines) and not lines[i].startswith("$ "):
            out.append(lines[i])
            i += 1
        steps.append(("\n".join(cmd), out))
    return steps


def _ms(lines: list[str]) -> list[str]:
    """The lines with what differs between runs replaced: times in ms, and incarnations (16 hex
    digits the module mints at random for each new context)."""
    return [re.sub(r'"[0-9a-f]{16}"', '"<inc>"', re.sub(r"\b1\d{12}\b", "<ms>", line))
            for line in lines]


def test_readme_redis_cli_session_runs_as_written(tmp_path: Path) -> None:
    """Each command of the session runs unchanged in bash, from a directory that looks like the
    repository root; ``redis-server`` / ``redis-cli`` only get a free port (and the server a
    scratch directory) added, and redis-cli prints as it does on a terminal (--no-raw)."""
    find_module()  # built
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the venv running the tests
    (tmp_path / "build").symlink_to(REPO / "build")
    port = free_port()
    steps = _cli_session()
    assert steps[0][0].startswith("redis-server --loadmodule ./build/ctxlink.so")
    marker = "@@ctxlink-step@@"
    script = [
        f'redis-server() {{ command redis-server "$@" --port {port} --save "" --dir "{tmp_path}" '
        f'--pidfile "{tmp_path}/redis.pid" --logfile "{tmp_path}/redis.log"; '
        f"for i in $(seq 50); do command redis-cli -p {port} PING >/dev/null 2>&1 && return; "
        "sleep 0.1; done; }",
        f'redis-cli() {{ command redis-cli -p {port} --no-raw "$@"; }}',
    ]
    for cmd, _ in steps:
        script += [cmd, f"echo {marker}"]
    try:
        run = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True,
                             cwd=tmp_path, timeout=60, env=_env())
    finally:
        pid = tmp_path / "redis.pid"
        if pid.exists():
            os.kill(int(pid.read_text()), signal.SIGTERM)
    assert run.returncode == 0, run.stderr
    outputs = run.stdout.split(marker + "\n")
    assert len(outputs) == len(steps) + 1 and outputs[-1] == "", run.stdout + run.stderr
    for (cmd, expected), got in zip(steps, outputs):
        assert _ms(got.splitlines()) == _ms(expected), f"$ {cmd}\n{got}{run.stderr}"
    assert (tmp_path / "order.pb").exists() and (tmp_path / "order-v1.bin").exists()


def test_readme_shows_how_to_decode_a_snapshot() -> None:
    """The snippet under "Reading a context" runs after the ten-line example (inside its
    ``with`` block, where ``store`` and ``Order`` exist) and prints what the context holds."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    decode = next(b for b in blocks if ".decode(" in b)
    example = blocks[0].rsplit("\n    print(", 1)[0]  # up to the update, inside the with block
    body = "".join("    " + line + "\n" for line in decode.strip().splitlines())
    out = subprocess.run(
        [sys.executable, "-c", example + "\n" + body], capture_output=True, text=True, cwd=REPO,
        timeout=60, env=_env(),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "pricing", "1000"]


def test_readme_says_a_message_needs_a_version_field_and_names_version_field() -> None:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## The SDK in ten lines") : text.index("## Speed")]
    assert "top-level integer field" in section and 'version_field="rev"' in section
    assert "int64 version = 2;" in section  # the .proto shape to copy
