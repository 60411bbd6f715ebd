"""``eastmoney`` / ``eastmoney_poll``: EastMoney push2 quotes (CN A-shares; HK/US codes too).

``settings`` (both source types), ``secid`` (canonical symbol ⇄ secid), ``wire`` (field
codes, envelope, SSE framing), ``parse`` (pure: envelopes, positional merging, quote →
PriceUpdate), ``request`` (the per-host pacer, routes, query, answer classes), ``stream``
(the SSE connection and its per-position caches) and ``feeder`` (the two thin feeders).
"""
