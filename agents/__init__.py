"""The symbol agent: a pure trading core (store, strategy, risk, grinding, orders) and its runtime."""
