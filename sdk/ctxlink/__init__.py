"""ctxlink: versioned, schema-validated shared context for cooperating agents, on Redis.

The Python SDK (engine detection, get / cas / update, the Lua fallback) is being
built; for now the package ships the embedded test server used by the demo,
the tests and the benchmarks.
"""

from ctxlink.embedded import EmbeddedRedis

__all__ = ["EmbeddedRedis", "__version__"]
__version__ = "0.1.0"
