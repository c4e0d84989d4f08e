"""The model layer: a Spec built into an nn.Module from registered blocks.

build.py       build_model: the op table, the family's build, dtype, device, initialisation
family.py      the ModelFamily interface and its lookups (family_of, family_of_model, ...)
towers.py      the tower builders families assemble their models from
initialize.py  the weights' initialisation (the family's std, each block's reset_parameters)
summary.py     the `assemble build --summary` table
"""
