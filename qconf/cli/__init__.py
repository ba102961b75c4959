"""The `qconf` command line: one module per subcommand, dispatched by qconf.cli.main."""
