"""The trade journal: every order, fill, fee, funding payment and operator action of a fleet, kept.

Outside the trading core (``agents/`` never imports it, except the runtime's one sink attribute of
:mod:`journal.sink`): the agent runtime hands events to :class:`journal.recorder.AgentJournal`,
whose writer (:mod:`journal.writer`) drains them in batches on a thread into SQLite (WAL, under the
fleet's state directory) or PostgreSQL, spooling to a local file while the database is down; a
backfill from the exchange (userTrades, income) closes any gap. :mod:`journal.pnl` explains the P&L,
:mod:`journal.cli` is ``python -m fleet journal``, :mod:`journal.audit` records operator events.
"""
