"""The SQL, in plain sight: one module per table, `async def verb_noun(connection, ...)`."""
