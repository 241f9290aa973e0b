"""The bottom floor every other package may stand on: one classification of database errors
(`core.sqlstate`) and the dead-letter store (`core.deadletters`). It imports none of
`gateway`, `serving`, `attribution` or `metering`."""
