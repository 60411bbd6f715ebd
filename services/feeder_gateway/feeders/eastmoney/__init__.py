"""``eastmoney``: EastMoney push2 quotes (CN A-shares; HK/US codes too) over SSE or HTTP polling.

``secid`` maps canonical symbols to EastMoney secids and back, ``wire`` holds the field
codes and SSE framing, ``parse`` turns merged field dicts into PriceUpdates (pure), and
``feeder`` owns the HTTP connections, rate limiting, backoff and the per-position caches.
"""
