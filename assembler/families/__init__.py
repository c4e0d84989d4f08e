"""The built-in model families, one package each (see assembler/model/family.py for the interface)."""
