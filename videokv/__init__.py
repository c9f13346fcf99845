"""videokv: upload a long video once, ask questions against its stored KV cache forever."""

__version__ = "0.1.0"
