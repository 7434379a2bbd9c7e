"""The store: tasks (the queue), API keys and the credit ledger, on SQLite or PostgreSQL.

``db`` (engine, transactions with retry, migrations), ``tables`` (the schema), ``keys``, ``ledger``
and ``tasks`` (functions over one connection). Import the submodules you need; this package imports
nothing so that ``import reelgen.store`` stays cheap.
"""
