"""The Binance USD-M client: the only way any part of mmfleet talks to an exchange.

Import the pieces from their modules (``fleet.binance.client``, ``.streams``, ``.errors``,
``.models``, ``.ratelimit``, ``.credentials``; the wire vocabulary in ``.enums``, the REST endpoints
and their weights in ``.endpoints``); this package module stays light on purpose.
"""
