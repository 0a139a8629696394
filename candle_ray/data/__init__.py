"""The data layer: cache, readers, feeds. Where the cache lives unless a command is told otherwise:"""

CACHE_ENV = "CANDLE_RAY_CACHE"  # the environment variable naming the data cache's root
DEFAULT_CACHE = "~/.cache/candle-ray"  # the root where neither --cache-dir nor CANDLE_RAY_CACHE names one
