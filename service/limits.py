"""Limits of the domain that are not deployment settings, named once."""

ROLES = ("system", "user", "assistant", "tool")
# Versions a request may name: far past any head, well inside PostgreSQL's bigint,
# so a parameter or path past it is refused before it reaches SQL.
MAX_VERSION = 2**62
MAX_TOKEN_COUNT = 2**31 - 1  # a message's token_count is a PostgreSQL integer
MAX_WINDOW_TOKENS = 10_000_000
# orjson writes at most 254 levels and merge patches recurse per level: metadata
# deeper than this is refused.
MAX_JSON_DEPTH = 32
FLOAT32_MAX = 3.4028234663852886e38  # pgvector stores float4
