"""fleet.sim: a Binance USD-M compatible exchange simulator served on loopback."""
