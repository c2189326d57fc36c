"""``ctxlink mcp``: an MCP server (stdio) through which LLM agents share contexts directly.

Needs the ``ctxlink[mcp]`` extra (the official ``mcp`` Python SDK); ``import ctxlink`` does not
import this package, and importing it imports ``mcp`` only in :mod:`ctxlink.mcp.server`.

- :mod:`ctxlink.mcp.tools`: what the tools do, as JSON-ready results (no ``mcp`` import);
- :mod:`ctxlink.mcp.server`: the ``MCPServer`` with the tools and the ``ctxlink://{key}``
  resources;
- ctxlink/cli/mcp_cmd.py: the ``ctxlink mcp`` command (connection options, ``--prefix``,
  ``--read-only``, ``--max-reply-bytes``).
"""

MCP_EXTRA = "pip install 'ctxlink[mcp]'"

__all__ = ["MCP_EXTRA"]
