"""The `assemble` commands too big for cli.py (which lists them in COMMAND_MODULES and imports
each only when it runs): parse arguments, call the assembler, print; nothing else."""
