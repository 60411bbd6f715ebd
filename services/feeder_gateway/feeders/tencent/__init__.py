"""``tencent`` (HK): polls Tencent's public quote lines (``qt.gtimg.cn/q=r_hk00700,...``).

Owns the line format notes (``wire``), the pure line → PriceUpdate parsers (``parse``)
and the poller (``feeder``). The free HK data is delayed ~15 minutes: every tick carries
``delayed=True`` and the quote's own time (field 30), never the local clock.
"""
