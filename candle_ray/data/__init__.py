
DEFAULT_CACHE = "~/.cache/candle-ray"  # the data cache's root where neither --cache-dir nor CANDLE_RAY_CACHE names one
