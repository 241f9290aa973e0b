"""The bottom floor every other package may stand on: the `accounts` table (`core.accounts`),
the domain error kinds (`core.errors`), one classification of database errors
(`core.sqlstate`) and the dead-letter store (`core.deadletters`). It imports none of
`royalty`, `gateway`, `serving`, `attribution`, `metering` or `factory`."""
