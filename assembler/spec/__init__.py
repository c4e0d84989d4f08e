"""The spec layer: a YAML spec loaded (`extends`, overrides), validated against the schema the
registry assembles, and handed on as a `Spec` with every default filled in.

loading.py     load_spec / load_spec_from_dict: read, merge `extends`, apply overrides, fill defaults
validation.py  the JSON Schema check plus the relations the schema cannot state, each at its path
schema.py      the schema assembled from spec.base.schema.json and the registered blocks (assembler/schema/)
sections.py    frozen, schema-default-filled views of the sections (OptimizerSettings.of(...))
spec.py        the `Spec` itself; errors.py: Problem, SpecError, UserError, USER_ERROR_EXIT_CODE
"""

from assembler.spec.errors import SpecError
from assembler.spec.spec import Spec

__all__ = ["Spec", "SpecError"]
