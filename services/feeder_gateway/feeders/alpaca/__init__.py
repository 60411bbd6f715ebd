"""``alpaca``: US stocks from Alpaca's market-data stream v2 (WebSocket, JSON or msgpack).

``settings`` (the source's settings), ``wire`` (message types, keys, error codes),
``parse`` (pure frame parsers), ``subscription`` (pure subscription state: desired,
requested, the server's echo, the symbol limit), ``connection`` (one WebSocket: welcome,
auth, subscribe diffs, error classes), ``feeder`` (the thin feeder on the reconnect
driver), ``history_parse`` (the historical bars API's wire format, pure parsers) and
``history`` (the minute history for gap repair: paged, paced, classified).
"""
