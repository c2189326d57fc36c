"""Backends for agent frameworks: ``ctxlink.integrations.<framework>``.

Each adapter is an optional extra (``pip install ctxlink[langgraph]``) and imports its framework
only when the adapter module itself is imported; this package imports nothing of a framework.

    from ctxlink.integrations.langgraph import CtxlinkSaver   # needs ctxlink[langgraph]
    from ctxlink.integrations.pydantic_ai import CtxlinkConversationStore   # ctxlink[pydantic-ai]
    from ctxlink.integrations.adk import CtxlinkSessionService   # ctxlink[adk]
    from ctxlink.integrations.openai_agents import CtxlinkSession   # ctxlink[openai-agents]

Shared pieces (schema registration, the adapters' protobuf messages, key prefixes) live in
``ctxlink.integrations._common``.
"""

from ctxlink.integrations._common import SetupRequiredError

__all__ = ["SetupRequiredError"]
