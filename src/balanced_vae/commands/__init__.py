"""The subcommands of ``balanced-vae`` (:mod:`balanced_vae.cli`), grouped by what they read.

:mod:`.options` holds the option types, the options shared by several commands and ``say``; each
other module holds ``add_NAME`` / ``run_NAME`` pairs that :data:`balanced_vae.cli.COMMANDS`
registers. Library modules are imported when a command runs, not when the parser is built.
"""
