"""One module per subcommand: HELP, add_arguments(parser), run(args, config) -> exit code."""
