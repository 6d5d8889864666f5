"""mmfleet: a multi-symbol market-making fleet for Binance USD-M perpetuals on Ray."""

__version__ = "0.1.0"
