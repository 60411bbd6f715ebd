"""``fushu`` (HK): polls the old design's generic REST tick endpoint with a Bearer key.

Owns the wire models (``wire``), the pure response → PriceUpdate parsers (``parse``) and
the poller (``feeder``). No public service implements the contract; point ``base_url``
at whatever does.
"""
