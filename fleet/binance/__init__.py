"""The Binance USD-M client: the only way any part of mmfleet talks to an exchange."""
