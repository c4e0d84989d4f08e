"""The built-in model families, one package each (see assembler/family.py for the interface)."""
