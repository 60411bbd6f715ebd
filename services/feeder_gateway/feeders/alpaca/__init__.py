"""``alpaca``: US stocks from Alpaca's market-data stream v2 (WebSocket, JSON or msgpack).

Owns the wire notes (``wire.py``), the pure frame parsers (``parse.py``) and the
connection, subscription registry and reconnect policy (``feeder.py``).
"""
