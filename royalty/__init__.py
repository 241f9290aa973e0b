"""The application shell: the `royalty` command line, the runtime that wires the packages
together, the server, the database and its migrations, the workers, the demo bootstrap.

The top floor: it composes `gateway`, `serving`, `attribution`, `metering` and `factory`;
nothing imports it."""
