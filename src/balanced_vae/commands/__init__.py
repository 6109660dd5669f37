"""The subcommands of ``balanced-vae`` (:mod:`balanced_vae.cli`), grouped by what they read.

:mod:`.options` holds the option types and the options shared by several commands; each
other module holds ``_add_NAME`` / ``_run_NAME`` pairs that :data:`balanced_vae.cli.COMMANDS`
registers. Library modules are imported when a command runs, not when the parser is built.
"""
