"""The MCP server (the official ``mcp`` SDK's ``MCPServer``, stdio): the tools of
ctxlink.mcp.tools, and every context as the resource ``ctxlink://{key}``.

Each tool answers a ``CallToolResult`` whose ``structuredContent`` is the result object and whose
text is the same object as compact JSON (for clients that read text only); a refusal also sets
``isError``, so a model sees it as one and reads ``error.code``.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator, Awaitable, Callable, Optional
from urllib.parse import quote

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError, UnexpectedToolError
from mcp_types import CallToolResult, InputRequiredResult, TextContent, ToolAnnotations
from mcp_types import Resource as MCPResource
from pydantic import Field, ValidationError
from redis.exceptions import RedisError

from ctxlink import __version__
from ctxlink.mcp.tools import WAIT_MAX_S, Policy, Result, Tools, dumps, error

__all__ = ["build_server", "run_stdio"]

INSTRUCTIONS = """\
ctxlink: versioned, schema-validated shared contexts (protobuf messages on Redis) that several
agents read and write. Every context has a version; every write names the version it is based on
and is refused with error.code CONFLICT when someone else wrote first: the result then holds the
current state (current.version, current.message): decide again and retry with that version.
Messages are JSON in protobuf's JSON mapping; describe_schema tells the fields and types.
Prefer update_fields (writes only the fields you name, merges with other writers' changes to
other fields) over write_context (replaces the whole message)."""

Key = Annotated[str, Field(description="the context's key (a Redis key), e.g. 'order:42'")]
Version = Annotated[int, Field(ge=0, description="the version this write is based on: the "
                               "'version' get_context returned (0 creates a new context)")]
Reads = Annotated[list[str], Field(description="top-level fields whose values this change "
                                   "depends on: a change to one of them since that version is "
                                   "a conflict too")]
Inc = Annotated[Optional[str], Field(description="optional: the 'incarnation' get_context "
                                     "returned; the write is refused when the context was "
                                     "deleted and created again since")]


def _result(tools: Tools, result: Result) -> CallToolResult:
    result, text = tools.capped(result)
    return CallToolResult(content=[TextContent(type="text", text=text)],
                          structured_content=result, is_error=not result.get("ok", False))


WRITE_TOOLS = ("write_context", "update_fields", "append_items")


class _Server(MCPServer[Any]):
    """MCPServer whose refusals of a call are structured results too: arguments that do not
    match a tool's input schema (BAD_ARGUMENT naming the argument), on a read-only server the
    write tools it does not offer (READ_ONLY), anything unexpected (SERVER_ERROR); and whose
    resource list names the contexts it allows."""

    policy: Policy
    holder: dict[str, Tools]

    async def call_tool(self, name: str, arguments: dict[str, Any],
                        context: Optional[Context[Any, Any]] = None
                        ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            cause = exc.__cause__
            if isinstance(cause, ValidationError) and cause.errors():
                first = cause.errors()[0]
                field = ".".join(str(part) for part in first["loc"])
                more = len(cause.errors()) - 1
                text = f"{field}: {first['msg']}" + (f" (and {more} more)" if more else "")
                return _refusal(error("BAD_ARGUMENT", text, field))
            if name in WRITE_TOOLS and self.policy.read_only:
                return _refusal(error("READ_ONLY", "this server is read-only: it does not "
                                      "write contexts"))
            if isinstance(exc, UnexpectedToolError) and exc.__cause__ is not None:
                # a connection error, say: named, in the same shape as every other refusal
                cause = exc.__cause__
                return _refusal(error("SERVER_ERROR", f"{type(cause).__name__}: "
                                      + " ".join(str(cause).split())))
            raise


    async def list_resources(self) -> list[MCPResource]:
        """The contexts this server allows (at most LIST_MAX, by key), as ``ctxlink://{key}``
        resources; every other allowed key is readable through the template too."""
        listed = await super().list_resources()
        tools: Optional[Tools] = self.holder.get("tools")
        if tools is None:
            return listed
        try:
            keys = await tools.context_keys()
        except RedisError:  # the list is a convenience: the template still reads every key
            return listed
        for key in keys:
            listed.append(MCPResource(uri=f"ctxlink://{quote(key, safe=_SAFE)}", name=key,
                                      mime_type="application/json",
                                      description="a context (read: get_context's JSON)"))
        return listed


#: characters left as they are in a key's resource URI: RFC 6570's unreserved ones, and ":"
#: (common in keys; the template matches it as it is)
_SAFE = "-._~:"


def _refusal(result: Result) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=dumps(result))],
                          structured_content=result, is_error=True)


def build_server(connect: Callable[[], Awaitable[Any]], policy: Policy) -> MCPServer[Any]:
    """The server; ``connect()`` makes the asyncio Store when it starts (closed when it stops)."""
    holder: dict[str, Tools] = {}

    @asynccontextmanager
    async def lifespan(app: MCPServer[Any]) -> AsyncIterator[None]:
        store = await connect()
        holder["tools"] = Tools(store, policy)
        try:
            yield None
        finally:
            await store.close()

    server = _Server("ctxlink", version=__version__, instructions=INSTRUCTIONS,
                     lifespan=lifespan)
    server.policy = policy
    server.holder = holder

    def tools() -> Tools:
        return holder["tools"]

    read = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    write = ToolAnnotations(read_only_hint=False, destructive_hint=True,
                            idempotent_hint=False, open_world_hint=False)

    for fn in _read_tools(tools):
        server.add_tool(fn, annotations=read, structured_output=False)
    if not policy.read_only:
        for fn in _write_tools(tools):
            server.add_tool(fn, annotations=write, structured_output=False)
    _add_resources(server, tools)
    return server


def _read_tools(tools: Callable[[], Tools]) -> tuple[Callable[..., Any], ...]:
    """The tools that only read (listed on a --read-only server too)."""

    async def get_context(key: Key) -> CallToolResult:
        """Read the context at key: its message (JSON), version, incarnation, schema and last
        writer. An absent key answers exists=false, version 0."""
        return _result(tools(), await tools().get_context(key))

    async def context_history(
        key: Key,
        since_version: Annotated[Optional[int], Field(
            ge=0, description="only the changes after this version")] = None,
        limit: Annotated[Optional[int], Field(ge=0, description="only the newest N")] = None,
    ) -> CallToolResult:
        """The changes kept for the context at key, oldest first: version, kind (create,
        update, patch), writer, time, the fields a patch touched, and the message after each
        change when the schema keeps payloads."""
        return _result(tools(), await tools().context_history(key, since_version, limit))

    async def wait_for_change(
        key: Key,
        after_version: Annotated[int, Field(ge=0, description="the version you have")],
        timeout_s: Annotated[float, Field(gt=0, le=WAIT_MAX_S, description="how long to wait, "
                                          f"at most {WAIT_MAX_S:g} seconds")] = 30.0,
    ) -> CallToolResult:
        """Block until the context at key is past after_version (answers at once when it
        already is) and return it; changed=false after timeout_s."""
        return _result(tools(), await tools().wait_for_change(key, after_version, timeout_s))

    async def describe_schema(
        schema: Annotated[Optional[str], Field(description="a schema name")] = None,
        key: Annotated[Optional[str], Field(description="or a context's key: its "
                                            "schema")] = None,
    ) -> CallToolResult:
        """The fields and types of a schema's message (by name, or of the context at key),
        so you know what to write; with neither, the registered schemas."""
        return _result(tools(), await tools().describe_schema(schema, key))

    return (get_context, context_history, wait_for_change, describe_schema)


def _write_tools(tools: Callable[[], Tools]) -> tuple[Callable[..., Any], ...]:
    """The tools that write (left out with --read-only)."""

    async def write_context(
        key: Key,
        expected_version: Version,
        message: Annotated[dict[str, Any] | str, Field(
            description="the whole message, JSON in protobuf's JSON mapping (describe_schema "
            "lists the fields); the version field is set by the server")],
        schema: Annotated[Optional[str], Field(
            description="the schema name: required to create (expected_version 0), else "
            "must match the context's")] = None,
        incarnation: Inc = None,
    ) -> CallToolResult:
        """Replace the whole message of the context at key if its version is still
        expected_version (compare-and-swap; 0 creates it). On a conflict the result has
        error.code CONFLICT and current (the state now): re-read, decide, retry."""
        return _result(tools(), await tools().write_context(
            key, expected_version, message, schema, incarnation))

    async def update_fields(
        key: Key,
        base_version: Version,
        fields: Annotated[dict[str, Any] | str, Field(
            description="the top-level fields to set, JSON in protobuf's JSON mapping, e.g. "
            "{\"status\": \"ORDER_STATUS_PRICED\", \"discount\": 5}; a field given as null or "
            "its default is cleared; a repeated or message field is replaced whole")],
        reads: Reads = [],  # noqa: B006 - pydantic copies defaults
        incarnation: Inc = None,
    ) -> CallToolResult:
        """Set some top-level fields of the context at key, based on the version you read.
        Merges with other writers' changes to other fields; a conflict (CONFLICT, with current
        and changed) only when one of these fields, or of reads, changed since base_version."""
        return _result(tools(), await tools().update_fields(
            key, base_version, fields, reads, incarnation))

    async def append_items(
        key: Key,
        field: Annotated[str, Field(description="a repeated top-level field")],
        items: Annotated[list[Any], Field(description="the elements to append, each JSON in "
                                          "protobuf's JSON mapping")],
        reads: Reads = [],  # noqa: B006 - pydantic copies defaults
        base_version: Annotated[Optional[int], Field(
            ge=0, description="optional: the version reads are based on (default: the "
            "current one)")] = None,
    ) -> CallToolResult:
        """Append items to a repeated field of the context at key without conflicting with
        other appenders (only with writes to the fields in reads since base_version)."""
        return _result(tools(), await tools().append_items(key, field, items, reads,
                                                           base_version))

    return (write_context, update_fields, append_items)


def _add_resources(server: "_Server", tools: Callable[[], Tools]) -> None:
    """Every context as the resource ``ctxlink://{key}``."""

    @server.resource("ctxlink://{key}", name="context", mime_type="application/json",
                     description="a context: its message (protobuf's JSON mapping), version, "
                     "incarnation, schema and last writer, as get_context answers")
    async def context_resource(key: str) -> str:
        result, text = tools().capped(await tools().get_context(key))
        if not result.get("ok"):
            raise ResourceError(result["error"]["message"])
        return text


def run_stdio(connect: Callable[[], Awaitable[Any]], policy: Policy) -> None:
    """Serves on stdin/stdout until the client closes them."""
    build_server(connect, policy).run("stdio")
