"""The Binance USD-M client: the only way any part of mmfleet talks to an exchange.

Import the pieces from their modules (``fleet.binance.client``, ``.streams``, ``.errors``,
``.models``, ``.ratelimit``, ``.credentials``); this package module stays light on purpose.
"""
